//! The admission queue's vocabulary, shared by the queues (`firstcome-admission`), the store
//! that records admissions and issues coupons, and the issuer: a request waiting in a
//! campaign's queue ([`QueueItem`]), the answer to one admission ([`Admit`]), a queue's live
//! counts ([`QueueCounts`]), where a user's request stands ([`RequestState`]) and the floor the database sets under every queue ([`Floor`]).
//!
//! A campaign's admission state may be split into buckets (`shards` in its file): a user maps
//! to one bucket ([`bucket_of`]), and positions interleave the buckets' own counters, so a
//! position names its bucket ([`bucket_of_position`]) and positions stay unique.

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
    /// Coupons the whole campaign issued, over every bucket (`issued` itself when the
    /// campaign is one bucket): a bucket admits nobody new once it reaches `capacity`, even
    /// when its own stock says otherwise (a bucket that came back from an older snapshot with
    /// stock it had given away).
    pub campaign_issued: i64,
}

impl Floor {
    /// The floor that a list of `(user, position)` holding coupons sets.
    pub fn of_issued(issued: &[(String, i64)]) -> Self {
        Self {
            issued: issued.len() as i64,
            last_position: issued.iter().map(|(_, p)| *p).max().unwrap_or(0),
            campaign_issued: issued.len() as i64,
        }
    }

    /// The floor of each bucket (indexed by bucket) that a list of `(user, position)` holding
    /// coupons sets, for a campaign split into `buckets` (see [`bucket_of_position`]).
    pub fn per_bucket(issued: &[(String, i64)], buckets: u32) -> Vec<Self> {
        let mut floors = vec![
            Self {
                campaign_issued: issued.len() as i64,
                ..Self::default()
            };
            buckets.max(1) as usize
        ];
        for (_, position) in issued {
            let f = &mut floors[bucket_of_position(*position, buckets) as usize];
            f.issued += 1;
            f.last_position = f.last_position.max(*position);
        }
        floors
    }

    /// The higher of two floors, field by field (floors only rise).
    pub fn max(self, other: Self) -> Self {
        Self {
            issued: self.issued.max(other.issued),
            last_position: self.last_position.max(other.last_position),
            campaign_issued: self.campaign_issued.max(other.campaign_issued),
        }
    }
}

/// The bucket (`0..buckets`) that holds a user's admission: CRC-32 (IEEE) of the user id's
/// UTF-8 bytes, modulo `buckets`. Every host must agree, so this is a fixed, documented hash,
/// not the standard library's (which may change between Rust versions). `buckets` 0 counts
/// as 1.
pub fn bucket_of(user_id: &str, buckets: u32) -> u32 {
    if buckets <= 1 {
        return 0;
    }
    crc32fast::hash(user_id.as_bytes()) % buckets
}

/// The position of a bucket's `seq`-th admission (both 1-based for seq; bucket 0-based):
/// `(seq - 1) · buckets + bucket + 1`, so that the buckets' positions interleave and never
/// collide; with one bucket it is `seq`.
pub fn position_of(seq: i64, bucket: u32, buckets: u32) -> i64 {
    let buckets = i64::from(buckets.max(1));
    (seq - 1) * buckets + i64::from(bucket) + 1
}

/// The bucket that handed out `position` (see [`position_of`]).
pub fn bucket_of_position(position: i64, buckets: u32) -> u32 {
    let buckets = i64::from(buckets.max(1));
    (position - 1).rem_euclid(buckets) as u32
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn positions_interleave_buckets_and_name_them() {
        assert_eq!(position_of(1, 0, 1), 1);
        assert_eq!(position_of(7, 0, 1), 7);
        let mut seen = std::collections::HashSet::new();
        for bucket in 0..3 {
            for seq in 1..=50 {
                let p = position_of(seq, bucket, 3);
                assert!(seen.insert(p), "position {p} handed out twice");
                assert_eq!(bucket_of_position(p, 3), bucket);
            }
        }
        assert_eq!(seen.len(), 150);
        assert_eq!((1..=150).filter(|p| seen.contains(p)).count(), 150);
    }

    #[test]
    fn users_map_to_a_fixed_bucket() {
        // CRC-32 (IEEE) of "u1" is 0x424f9f76: a pinned value, as every host must agree.
        assert_eq!(crc32fast::hash(b"u1"), 0x424f_9f76);
        assert_eq!(bucket_of("u1", 3), 0x424f_9f76 % 3);
        assert_eq!(bucket_of("anyone", 1), 0);
        let spread: std::collections::HashSet<u32> =
            (0..100).map(|i| bucket_of(&format!("u{i}"), 3)).collect();
        assert_eq!(spread.len(), 3);
    }

    #[test]
    fn floors_split_by_bucket() {
        let issued = vec![
            ("a".to_owned(), 1),
            ("b".to_owned(), 4),
            ("c".to_owned(), 2),
        ];
        let floors = Floor::per_bucket(&issued, 3);
        let f = |issued, last_position| Floor {
            issued,
            last_position,
            campaign_issued: 3,
        };
        assert_eq!(floors, vec![f(2, 4), f(1, 2), f(0, 0)]);
    }
}
