//! # firstcome-admission
//!
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
//! A queue can also come back *older* than the database (Redis restarted from an earlier
//! snapshot, or a replica that lagged was promoted): every admission therefore carries the
//! campaign's [`Floor`], the database's issue mark as the host last read it, and a queue below
//! it answers [`Admit::Behind`] instead of handing out positions other users already hold; the
//! host then rebuilds the campaign from the database.
//!
//! Layout: [`redis`] (one Lua script per operation over a stream with a consumer group, on one
//! Redis server or a Redis Cluster) and [`embedded`] (the same semantics in process), both
//! tested by one shared suite; [`config`] holds the `[admission]` settings.

pub mod config;
pub mod embedded;
#[cfg(feature = "redis")]
pub mod redis;

use std::collections::HashMap;
use std::fmt::Debug;
use std::time::Duration;

use async_trait::async_trait;

pub use config::AdmissionConfig;
use firstcome_core::campaign::Campaign;
pub use firstcome_core::queue::{Admit, Floor, ISSUER_GROUP, QueueCounts, QueueItem};

#[derive(Debug, thiserror::Error)]
pub enum AdmissionError {
    #[cfg(feature = "redis")]
    #[error("redis: {0}")]
    Redis(#[from] ::redis::RedisError),
    /// `FIRSTCOME_REDIS_URL` cannot be used; the message says what to fix.
    #[error("bad Redis URL: {0}")]
    BadUrl(String),
    #[error("unexpected reply from the admission queue: {0}")]
    Protocol(String),
    /// The script call that carried this request with others failed (Redis's error, as text:
    /// every request of the batch gets it).
    #[error("redis: {0}")]
    Batch(String),
    /// The request could not be written to the durable record in time; it was not answered
    /// `202` (it may still be admitted once the database answers: its status tells).
    #[error("the admission could not be recorded: {0}")]
    NotRecorded(String),
    #[error("database: {0}")]
    Store(#[from] firstcome_store::StoreError),
    /// A campaign's `shards` changed while its queue held admissions made with the old
    /// count: they live, and hold positions, where the old count put them.
    #[error(
        "shards cannot change from {was} to {now} once requests were admitted: it decides \
         where their admissions live; keep {was}, or start a new campaign"
    )]
    ShardsChanged { was: u32, now: u32 },
    /// The queue holds nothing for the campaign any more (Redis lost its data): it must be
    /// rebuilt.
    #[error("the admission queue lost campaign {0}")]
    Lost(String),
}

pub type Result<T, E = AdmissionError> = std::result::Result<T, E>;

/// An admission queue implementation.
#[async_trait]
pub trait Admission: Send + Sync + Debug {
    /// "redis" or "embedded", for logs and readiness.
    fn kind(&self) -> &'static str;

    /// How many buckets this queue splits the campaign's state into (its `shards`; a queue in
    /// this process keeps one). Positions name their bucket
    /// ([`firstcome_core::queue::bucket_of_position`]), and each bucket has its own [`Floor`].
    fn buckets(&self, _campaign: &Campaign) -> u32 {
        1
    }

    /// Writes a campaign's capacity and window. First, when the queue holds nothing for it
    /// (or `force`), rebuilds it from `issued`: the users holding a coupon and their
    /// positions, as the database has them (and, for the embedded queue, its durable record
    /// of requests not yet issued). When it holds less than the [`Floor`] of `issued` (it
    /// went back in time), brings it up to the database: Redis merges the holders it does
    /// not know, keeping the requests it still queues. The check and the change are one
    /// atomic step, so that hosts finding the same stale state change it once. Returns
    /// whether it rebuilt or merged.
    async fn sync_campaign(
        &self,
        campaign: &Campaign,
        issued: &[(String, i64)],
        force: bool,
    ) -> Result<bool>;

    /// Admits one request, unless the queue's state of the campaign is below `floor`, the
    /// floor of the user's bucket ([`Admit::Behind`]). `Admitted` is answered only once the request is as durable as the
    /// queue keeps anything.
    async fn admit(
        &self,
        campaign_id: &str,
        user_id: &str,
        request_id: &str,
        now_ms: i64,
        floor: Floor,
    ) -> Result<Admit>;

    /// The position at which a user was admitted, if they were: the place they hold in the
    /// queue (on the embedded queue also while its record is being written, since it is
    /// written and issued unless the process dies first).
    async fn position(&self, campaign_id: &str, user_id: &str) -> Result<Option<i64>>;

    async fn counts(&self, campaign_id: &str) -> Result<QueueCounts>;

    /// Claims up to `max` items for `consumer`, in queue order. With `reclaim_idle`, items
    /// claimed by anyone at least that long ago and never acknowledged come first. Fails with
    /// [`AdmissionError::Lost`] when the queue lost the campaign.
    async fn claim(
        &self,
        campaign_id: &str,
        consumer: &str,
        max: usize,
        reclaim_idle: Option<Duration>,
    ) -> Result<Vec<QueueItem>>;

    /// Removes committed items from the queue.
    async fn ack(&self, campaign_id: &str, items: &[QueueItem]) -> Result<()>;

    /// Makes sure the queue knows users who now hold a coupon, `(user, position)`: a chunk
    /// claimed before the queue lost its data and committed after the rebuild holds users the
    /// rebuilt state never saw. Returns how many it added. A queue that cannot lose its data
    /// has nothing to do.
    async fn settle(&self, _campaign_id: &str, _holders: &[(String, i64)]) -> Result<u64> {
        Ok(0)
    }

    /// Drops users' admission marks (they were refused by the database): their status reads
    /// "none" again.
    async fn forget(&self, campaign_id: &str, user_ids: &[String]) -> Result<()>;

    /// Every user the queue admitted to the campaign, with their position, for a host's
    /// sold-out flag; `None` when the queue is in this process and answers as fast as a copy
    /// would. Read once a campaign sold out, when the set no longer grows.
    async fn admitted_users(&self, _campaign_id: &str) -> Result<Option<HashMap<String, i64>>> {
        Ok(None)
    }

    async fn ping(&self) -> Result<()>;

    /// The queue's own clock, as UTC epoch milliseconds, where the queue is shared by several
    /// hosts (Redis's `TIME`): the one clock their windows are judged by. `None` for a queue
    /// in this process.
    async fn clock_ms(&self) -> Result<Option<i64>> {
        Ok(None)
    }

    /// What an answered `202` survives with this queue as it is configured, in one sentence,
    /// for the start-up log and readiness (Redis: read with `CONFIG GET` where allowed).
    async fn durability(&self) -> String;
}
