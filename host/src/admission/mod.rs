//! The admission queue: the fast gate in front of the database.
//!
//! `admit` atomically refuses a request when the campaign's window is shut, when the user was
//! already admitted, or when `capacity` requests were admitted; otherwise it appends the request
//! to the campaign's FIFO queue and returns its position. The chunk issuer then `claim`s items,
//! commits them to the database and only then `ack`s them, so an item leaves the queue only
//! after its coupon exists. Items claimed by a host that died are reclaimed after they sat idle.
//!
//! The queue is a gate, not the arbiter: the database refuses any coupon past `capacity` and any
//! second coupon per user. When the queue loses its data, `sync_campaign` rebuilds a campaign
//! from the coupons in the database (the users who hold one, and the admitted count).
//!
//! Layout: [`redis`] (one Lua script per operation over a stream with a consumer group) and
//! [`embedded`] (the same semantics in process), both tested by one shared suite.

pub mod embedded;
pub mod redis;

use std::fmt::Debug;
use std::time::Duration;

use async_trait::async_trait;

use crate::campaign::Campaign;

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
}

/// Live counts of a campaign's queue.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct QueueCounts {
    /// Requests admitted so far (after a rebuild: the coupons issued before it).
    pub admitted: i64,
    /// Requests in the queue, claimed or not, whose coupon is not yet committed.
    pub queued: i64,
}

#[derive(Debug, thiserror::Error)]
pub enum AdmissionError {
    #[error("redis: {0}")]
    Redis(#[from] ::redis::RedisError),
    #[error("unexpected reply from the admission queue: {0}")]
    Protocol(String),
}

pub type Result<T, E = AdmissionError> = std::result::Result<T, E>;

/// An admission queue implementation.
#[async_trait]
pub trait Admission: Send + Sync + Debug {
    /// "redis" or "embedded", for logs and readiness.
    fn kind(&self) -> &'static str;

    /// Writes a campaign's capacity and window. When the queue holds nothing for it (or
    /// `force`), first rebuilds it from `issued`: the users holding a coupon and their
    /// positions, as the database has them. Returns whether it rebuilt.
    async fn sync_campaign(
        &self,
        campaign: &Campaign,
        issued: &[(String, i64)],
        force: bool,
    ) -> Result<bool>;

    async fn admit(
        &self,
        campaign_id: &str,
        user_id: &str,
        request_id: &str,
        now_ms: i64,
    ) -> Result<Admit>;

    /// The position at which a user was admitted, if they were.
    async fn position(&self, campaign_id: &str, user_id: &str) -> Result<Option<i64>>;

    async fn counts(&self, campaign_id: &str) -> Result<QueueCounts>;

    /// Claims up to `max` items for `consumer`, in queue order. With `reclaim_idle`, items
    /// claimed by anyone at least that long ago and never acknowledged come first.
    async fn claim(
        &self,
        campaign_id: &str,
        consumer: &str,
        max: usize,
        reclaim_idle: Option<Duration>,
    ) -> Result<Vec<QueueItem>>;

    /// Removes committed items from the queue.
    async fn ack(&self, campaign_id: &str, items: &[QueueItem]) -> Result<()>;

    /// Drops users' admission marks (they were refused by the database): their status reads
    /// "none" again.
    async fn forget(&self, campaign_id: &str, user_ids: &[String]) -> Result<()>;

    async fn ping(&self) -> Result<()>;
}
