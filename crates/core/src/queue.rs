//! The admission queue's vocabulary, shared by the queues (`firstcome-admission`), the store
//! that records admissions and issues coupons, and the issuer: a request waiting in a
//! campaign's queue ([`QueueItem`]), the answer to one admission ([`Admit`]), a queue's live
//! counts ([`QueueCounts`]), where a user's request stands ([`RequestState`]) and the floor the database sets under every queue ([`Floor`]).

/// Consumer group of the chunk issuers in each campaign's queue.
pub const ISSUER_GROUP: &str = "issuers";

/// A request waiting in (or claimed from) a campaign's queue.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct QueueItem {
    /// The queue's own id of the item (the stream entry id in Redis).
    pub id: String,
    pub user_id: String,
    /// 1-based arrival order within the campaign.
    pub position: i64,
    pub request_id: String,
    pub admitted_at: i64,
}

/// What the database has issued of a campaign: no admission queue may hold less. A queue that
/// has admitted fewer than `issued` requests, or handed out no position as high as
/// `last_position`, has gone back in time.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Floor {
    /// Coupons issued.
    pub issued: i64,
    /// The highest position a coupon was issued at.
    pub last_position: i64,
}

impl Floor {
    /// The floor that a list of `(user, position)` holding coupons sets.
    pub fn of_issued(issued: &[(String, i64)]) -> Self {
        Self {
            issued: issued.len() as i64,
            last_position: issued.iter().map(|(_, p)| *p).max().unwrap_or(0),
        }
    }

    /// The higher of two floors, field by field (floors only rise).
    pub fn max(self, other: Self) -> Self {
        Self {
            issued: self.issued.max(other.issued),
            last_position: self.last_position.max(other.last_position),
        }
    }
}

/// The answer to one admission request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Admit {
    Admitted {
        position: i64,
    },
    /// The user was admitted before, at this position.
    Duplicate {
        position: i64,
    },
    SoldOut,
    Closed,
    NotOpen,
    /// The queue holds nothing for the campaign (never synced, or its data was lost).
    Unknown,
    /// The queue's state of the campaign is older than the database's [`Floor`]: it must be
    /// rebuilt before it admits anyone.
    Behind,
}

/// Live counts of a campaign's queue.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct QueueCounts {
    /// Requests admitted so far (after a rebuild: the coupons issued before it).
    pub admitted: i64,
    /// Requests in the queue, claimed or not, whose coupon is not yet committed.
    pub queued: i64,
}

/// Where a user's request for a campaign's coupon stands. Serialised in snake case.
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize, utoipa::ToSchema,
)]
#[serde(rename_all = "snake_case")]
pub enum RequestState {
    /// Admitted, waiting for its coupon.
    Queued,
    /// Its coupon was issued.
    Issued,
    /// The user has no request for this campaign.
    None,
}

impl RequestState {
    /// Nothing more will happen to the request: issued, or no request at all.
    pub fn is_final(self) -> bool {
        self != Self::Queued
    }
}
