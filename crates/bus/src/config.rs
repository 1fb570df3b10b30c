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
    /// Put before each role to name its Kafka consumer group (`group.id`): with `"shop-a."`
    /// the history role's group is `shop-a.history`. Empty (the default) names the groups by
    /// role alone. Two deployments on one Kafka cluster need different prefixes, or their
    /// members join each other's groups: every start or stop of one rebalances the other, and
    /// a member of one can be left with the other's partitions. Letters, digits, `.`, `_` and
    /// `-`, at most [`GROUP_PREFIX_MAX`] bytes.
    pub group_prefix: String,
}

/// The longest [`KafkaConfig::group_prefix`], in bytes.
pub const GROUP_PREFIX_MAX: usize = 100;

impl KafkaConfig {
    /// The Kafka consumer group (`group.id`) of a role.
    pub fn group_id(&self, role: &str) -> String {
        format!("{}{role}", self.group_prefix)
    }

    /// Refuses a [`KafkaConfig::group_prefix`] that is too long or holds a character outside
    /// Kafka's name set, saying what to change.
    pub fn check_group_prefix(&self) -> Result<(), String> {
        let prefix = &self.group_prefix;
        if prefix.len() > GROUP_PREFIX_MAX {
            return Err(format!(
                "setting kafka.group_prefix is {} bytes long: use at most {GROUP_PREFIX_MAX}",
                prefix.len()
            ));
        }
        if let Some(c) = prefix
            .chars()
            .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-')))
        {
            return Err(format!(
                "setting kafka.group_prefix holds {c:?}: use letters, digits, '.', '_' and '-'"
            ));
        }
        Ok(())
    }
}

impl Default for KafkaConfig {
    fn default() -> Self {
        Self {
            partitions: 6,
            replication_factor: 1,
            delivery_timeout_ms: 30_000,
            session_timeout_ms: 10_000,
            group_prefix: String::new(),
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
