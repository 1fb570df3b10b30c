//! The admission queue's section of the host's configuration (`[admission]`).

use serde::{Deserialize, Serialize};

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct AdmissionConfig {
    /// How long a host, having seen a campaign sold out, answers its requests `sold_out`
    /// itself, without asking the queue, in ms. After that the next request asks the queue
    /// again, so that stock that comes back (a raised capacity, a queue rebuilt after Redis
    /// lost requests that were never issued) is offered within this time. 0 turns the flag off.
    pub sold_out_recheck_ms: u64,
    /// Redis replicas that must acknowledge an admission (Redis `WAIT`) before it is answered
    /// `202`, so that the `202` survives the loss of the primary (a failover promotes a replica
    /// that has it). 0: answered once the primary has it. Set it to the replicas each primary
    /// has (1 on a cluster created with `--cluster-replicas 1`).
    pub redis_wait_replicas: u32,
    /// How long an admission waits for those replicas, in ms (at most 4,000: below the Redis
    /// connection's 5 s response timeout). A batch that is not acknowledged in time is answered
    /// `503 unavailable`, as a request the embedded queue could not record: the script ran, so
    /// it may still be admitted, and its status tells. Counted in
    /// `firstcome_admissions_unreplicated_total` and logged. A primary left without a replica
    /// (its replica was promoted and the old primary is not back) answers no `202` until one is
    /// attached, which keeps every `202` a promise; Redis's `min-replicas-to-write` on the
    /// nodes makes it refuse the writes themselves.
    pub redis_wait_timeout_ms: u64,
}

impl Default for AdmissionConfig {
    fn default() -> Self {
        Self {
            sold_out_recheck_ms: 1_000,
            redis_wait_replicas: 0,
            redis_wait_timeout_ms: 500,
        }
    }
}
