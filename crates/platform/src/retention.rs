//! How long each kind of data is kept, and the sweep that deletes the rest
//! (`retention.*`, every [`SWEEP_EVERY`]):
//!
//! | Data | Kept |
//! |---|---|
//! | consumer groups' processed marks | `processed_days` (14): at least as long as the bus can redeliver an event (the embedded log's `outbox.retention_ms`, a Kafka topic's retention) |
//! | sends made per event (email, push) | `deliveries_days` (14), for the same reason |
//! | history | `history_days` (0: for ever) |
//! | plugin kv, counters and statistics of a removed campaign | `removed_campaign_days` (30) after its removal |
//! | the audit log, and which dead letters were settled (replayed or discarded) | `audit_days` (365) |
//! | published outbox rows, the embedded event log | `outbox.retention_ms` (7 days); dead letters until replayed or discarded |
//! | campaigns, coupons, users | for ever |

use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;

use firstcome_store::Store;

/// How often the sweep runs.
pub const SWEEP_EVERY: Duration = Duration::from_secs(3_600);
const DAY_MS: i64 = 86_400_000;

/// `retention.*`: days each kind of data is kept (0: for ever, where allowed).
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct RetentionConfig {
    pub processed_days: u32,
    pub deliveries_days: u32,
    pub history_days: u32,
    pub removed_campaign_days: u32,
    pub audit_days: u32,
}

impl Default for RetentionConfig {
    fn default() -> Self {
        Self {
            processed_days: 14,
            deliveries_days: 14,
            history_days: 0,
            removed_campaign_days: 30,
            audit_days: 365,
        }
    }
}

impl RetentionConfig {
    /// Refuses marks kept for less time than the event log keeps events (a redelivered event
    /// would be handled twice), naming both settings.
    pub fn check(&self, log_retention_ms: u64) -> Result<(), String> {
        let log_days = log_retention_ms.div_ceil(DAY_MS as u64);
        for (name, days) in [
            ("retention.processed_days", self.processed_days),
            ("retention.deliveries_days", self.deliveries_days),
        ] {
            if u64::from(days) < log_days.max(1) {
                return Err(format!(
                    "{name} = {days} is below the event log's retention (outbox.retention_ms, \
                     {log_days} days): an event redelivered after its mark is gone would be \
                     handled again. Keep it at least {} days",
                    log_days.max(1)
                ));
            }
        }
        // A settled dead letter stays in the embedded log up to the log's retention: its mark
        // must outlive it, or it would be listed as open (and replayed) again.
        if self.audit_days > 0 && u64::from(self.audit_days) < log_days.max(1) {
            return Err(format!(
                "retention.audit_days = {} is below the event log's retention \
                 (outbox.retention_ms, {log_days} days): a settled dead letter would be listed \
                 as open again. Keep it at least {} days, or 0 (for ever)",
                self.audit_days,
                log_days.max(1)
            ));
        }
        Ok(())
    }
}

/// How long after start-up the first sweep runs: not while the host applies its campaigns.
pub const FIRST_SWEEP_AFTER: Duration = Duration::from_secs(300);

/// Sweeps [`FIRST_SWEEP_AFTER`] start-up, then every [`SWEEP_EVERY`], until `shutdown`.
pub async fn run(store: Store, config: RetentionConfig, shutdown: CancellationToken) {
    let first = tokio::time::Instant::now() + FIRST_SWEEP_AFTER;
    let mut tick = tokio::time::interval_at(first, SWEEP_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            () = shutdown.cancelled() => return,
        }
        sweep(&store, &config, firstcome_core::clock::now_ms()).await;
    }
}

/// Deletes what is older than its retention at `now` (ms); a failing purge is logged and
/// tried again at the next sweep.
pub async fn sweep(store: &Store, config: &RetentionConfig, now: i64) {
    let before = |days: u32| now - i64::from(days) * DAY_MS;
    let purges = [
        ("processed marks", Some(before(config.processed_days))),
        ("sends", Some(before(config.deliveries_days))),
        (
            "history",
            (config.history_days > 0).then(|| before(config.history_days)),
        ),
        (
            "removed campaigns' plugin state",
            Some(before(config.removed_campaign_days)),
        ),
        (
            "audit log",
            (config.audit_days > 0).then(|| before(config.audit_days)),
        ),
        (
            "dead-letter settlements",
            (config.audit_days > 0).then(|| before(config.audit_days)),
        ),
    ];
    for (what, cutoff) in purges {
        let Some(cutoff) = cutoff else { continue };
        let done = match what {
            "processed marks" => store.purge_processed(cutoff).await,
            "sends" => store.purge_deliveries(cutoff).await,
            "history" => store.purge_history(cutoff).await,
            "removed campaigns' plugin state" => store.purge_removed_campaigns(cutoff).await,
            "audit log" => store.purge_audit(cutoff).await,
            _ => store.purge_settled_dead_letters(cutoff).await,
        };
        match done {
            Ok(0) => {}
            Ok(n) => tracing::info!(what, deleted = n, "retention sweep"),
            Err(e) => tracing::warn!(what, error = %e, "retention sweep failed; tried again later"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn marks_kept_for_less_than_the_log_are_refused_naming_both_settings() {
        let week = 7 * DAY_MS as u64;
        assert_eq!(RetentionConfig::default().check(week), Ok(()));
        for (config, name) in [
            (
                RetentionConfig {
                    processed_days: 3,
                    ..RetentionConfig::default()
                },
                "retention.processed_days = 3",
            ),
            (
                RetentionConfig {
                    audit_days: 2,
                    ..RetentionConfig::default()
                },
                "retention.audit_days = 2",
            ),
        ] {
            let refused = config.check(week).unwrap_err();
            assert!(refused.starts_with(name), "{refused}");
            assert!(refused.contains("outbox.retention_ms, 7 days"), "{refused}");
        }
        let for_ever = RetentionConfig {
            audit_days: 0,
            ..RetentionConfig::default()
        };
        assert_eq!(for_ever.check(week), Ok(()));
    }
}
