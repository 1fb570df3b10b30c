//! The bus's sections of the host's configuration (`[kafka]`, `[consumers]`).

use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::RetryPolicy;

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct KafkaConfig {
    /// Partitions of topics the host creates (their `.DLT` twins get as many).
    pub partitions: i32,
    pub replication_factor: i32,
    /// A publish not acknowledged within this is failed (librdkafka's `message.timeout.ms`);
    /// the outbox row stays unpublished for the relay.
    pub delivery_timeout_ms: u64,
    /// Consumer group session timeout: how soon a dead member's partitions move.
    pub session_timeout_ms: u64,
}

impl Default for KafkaConfig {
    fn default() -> Self {
        Self {
            partitions: 6,
            replication_factor: 1,
            delivery_timeout_ms: 30_000,
            session_timeout_ms: 10_000,
        }
    }
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct ConsumerConfig {
    pub retry_backoff_ms: u64,
    pub max_retries: u32,
    pub poll_ms: u64,
    /// Lanes (campaigns) of one group member whose handler runs at once (default: the CPU
    /// cores, at least 2): a slow campaign takes one, the others go on in the rest. Plugin
    /// timeouts are wall-clock: more calls at once than cores make each take longer.
    pub busy_lanes: usize,
}

/// [`ConsumerConfig::busy_lanes`] unless configured: the CPU cores, at least 2.
pub fn default_busy_lanes() -> usize {
    std::thread::available_parallelism().map_or(2, |n| n.get().max(2))
}

impl Default for ConsumerConfig {
    fn default() -> Self {
        let retry = RetryPolicy::default();
        Self {
            retry_backoff_ms: retry.backoff.as_millis() as u64,
            max_retries: retry.max_retries,
            poll_ms: 200,
            busy_lanes: default_busy_lanes(),
        }
    }
}

impl ConsumerConfig {
    pub fn retry(&self) -> RetryPolicy {
        RetryPolicy {
            backoff: Duration::from_millis(self.retry_backoff_ms),
            max_retries: self.max_retries,
        }
    }
}
