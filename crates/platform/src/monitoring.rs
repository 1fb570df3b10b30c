//! Prometheus metrics (served at `GET /metrics` by the API).
//!
//! Events are counted where they happen (admissions, chunks, publishes, deliveries, HTTP
//! requests) through the `metrics` facade; levels that already live somewhere (queue depth,
//! outbox backlog, consumer lag, plugin counters) are read when Prometheus scrapes. One
//! recorder per process: hosts sharing a process (tests) share it, which is why every series
//! that can differ between campaigns carries the campaign's id.

use std::sync::OnceLock;

use metrics::{counter, gauge};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

use crate::platform::Platform;
use firstcome_core::campaign::Counts;
use firstcome_core::clock::now_ms;

/// Latency buckets, seconds.
const SECONDS: [f64; 14] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];
/// Chunk-size buckets.
const SIZES: [f64; 9] = [1.0, 2.0, 5.0, 10.0, 20.0, 50.0, 100.0, 500.0, 1000.0];

/// The process's recorder, installed on first use.
pub fn handle() -> &'static PrometheusHandle {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    HANDLE.get_or_init(|| {
        let recorder = PrometheusBuilder::new()
            .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), &SECONDS)
            .and_then(|b| b.set_buckets_for_metric(Matcher::Suffix("_size".into()), &SIZES))
            .expect("bucket lists are not empty")
            .build_recorder();
        let handle = recorder.handle();
        if metrics::set_global_recorder(recorder).is_err() {
            tracing::warn!("a metrics recorder was already installed; /metrics stays empty");
        }
        describe();
        handle
    })
}

/// HELP lines, and zeros for the process-wide counters (a dashboard shows 0, not "no data").
fn describe() {
    use metrics::{describe_counter, describe_gauge, describe_histogram};
    describe_counter!(
        "firstcome_admissions_total",
        "Admission requests by campaign and result"
    );
    describe_histogram!(
        "firstcome_http_request_duration_seconds",
        "HTTP request latency by route, method and status"
    );
    describe_gauge!(
        "firstcome_queue_depth",
        "Requests admitted and not yet issued"
    );
    describe_gauge!("firstcome_admitted", "Requests admitted so far");
    describe_gauge!("firstcome_issued", "Coupons issued");
    describe_gauge!("firstcome_remaining", "Coupons still to issue");
    describe_counter!(
        "firstcome_admission_stock_moved_total",
        "Coupons of stock moved between a split campaign's buckets (shards), by campaign"
    );
    describe_counter!(
        "firstcome_admissions_sold_out_flag_total",
        "Requests answered by this host's sold-out flag, without Redis"
    );
    describe_histogram!("firstcome_chunk_size", "Requests per issuing transaction");
    describe_histogram!(
        "firstcome_chunk_commit_seconds",
        "Time to commit one chunk, retries included"
    );
    describe_counter!(
        "firstcome_chunk_failures_total",
        "Chunk transactions that failed and were retried"
    );
    describe_gauge!(
        "firstcome_outbox_unpublished",
        "Outbox rows not yet acknowledged by the bus"
    );
    describe_gauge!(
        "firstcome_outbox_oldest_age_seconds",
        "Age of the oldest unpublished outbox row"
    );
    describe_counter!(
        "firstcome_events_published_total",
        "Events the bus acknowledged"
    );
    describe_counter!(
        "firstcome_publish_failures_total",
        "Publish attempts the bus did not acknowledge"
    );
    describe_counter!(
        "firstcome_relay_republished_total",
        "Stale outbox rows the relay published again"
    );
    describe_gauge!(
        "firstcome_consumer_lag",
        "Events a consumer group has not yet moved past"
    );
    describe_counter!(
        "firstcome_events_handled_total",
        "Events a consumer group handled"
    );
    describe_counter!(
        "firstcome_events_retried_total",
        "Failed attempts that were retried, by group"
    );
    describe_counter!(
        "firstcome_events_dead_lettered_total",
        "Events sent to the dead-letter topic, by group"
    );
    describe_counter!(
        "firstcome_events_waiting_total",
        "Tries of an event whose handler was not ready for it (its campaign's plugins loading), by group; spend no retries"
    );
    describe_gauge!(
        "firstcome_kafka_topics_missing",
        "Topics this host uses that the Kafka brokers do not have (deleted?), at the last readiness check"
    );
    describe_counter!(
        "firstcome_plugin_calls_total",
        "Plugin calls by campaign, role and version"
    );
    describe_counter!(
        "firstcome_plugin_errors_total",
        "Plugin calls that returned an error"
    );
    describe_counter!(
        "firstcome_plugin_traps_total",
        "Plugin calls stopped by a trap or a memory or output limit"
    );
    describe_counter!(
        "firstcome_plugin_timeouts_total",
        "Plugin calls stopped at their time limit"
    );
    describe_counter!(
        "firstcome_plugin_denied_total",
        "Plugin calls stopped for an ungranted or invalid capability call"
    );
    describe_counter!(
        "firstcome_plugin_busy_microseconds_total",
        "Wall-clock time in plugin calls"
    );
    describe_counter!(
        "firstcome_plugin_epochs_total",
        "Epoch ticks (10 ms) spent running plugin code"
    );
    describe_gauge!(
        "firstcome_plugin_info",
        "The plugin version in service per campaign and role"
    );
    describe_counter!(
        "firstcome_plugin_swaps_total",
        "Running plugins replaced by another version"
    );
    describe_histogram!(
        "firstcome_admission_write_batch_size",
        "Admissions the embedded queue recorded per group commit"
    );
    describe_histogram!(
        "firstcome_admission_write_seconds",
        "Time to record one group commit of admissions"
    );
    describe_counter!(
        "firstcome_admission_write_failures_total",
        "Group commits of admissions the database refused (retried)"
    );
    describe_counter!(
        "firstcome_admission_rebuilds_total",
        "Admission states rebuilt from the database (missing, or behind it)"
    );
    describe_counter!(
        "firstcome_admissions_lost_total",
        "Requests answered 202 that the admission queue lost with its data"
    );
    for name in [
        "firstcome_events_published_total",
        "firstcome_publish_failures_total",
        "firstcome_relay_republished_total",
        "firstcome_admission_write_failures_total",
    ] {
        counter!(name).increment(0);
    }
}

/// Zeros for a consumer group's counters.
pub fn group_started(group: &str) {
    for name in [
        "firstcome_events_handled_total",
        "firstcome_events_retried_total",
        "firstcome_events_dead_lettered_total",
        "firstcome_consumer_restarts_total",
    ] {
        counter!(name, "group" => group.to_owned()).increment(0);
    }
}

/// Zeros for a campaign's counters.
pub fn campaign_started(campaign: &str) {
    counter!("firstcome_campaign_applies_total", "campaign" => campaign.to_owned()).increment(1);
    for name in [
        "firstcome_chunk_failures_total",
        "firstcome_admission_rebuilds_total",
        "firstcome_admissions_lost_total",
    ] {
        counter!(name, "campaign" => campaign.to_owned()).increment(0);
    }
}

/// Samples the levels that live elsewhere (queue depth, outbox backlog, consumer lag, plugin
/// counters) and renders every series in the Prometheus text format 0.0.4.
pub async fn render(platform: &Platform) -> String {
    sample(platform).await;
    let handle = handle();
    handle.run_upkeep();
    handle.render()
}

/// Reads the levels that live elsewhere into gauges.
async fn sample(platform: &Platform) {
    for c in platform.campaigns() {
        // The queue and the database are read apart: one that is down leaves the other's
        // gauges current.
        let (queue, issued) = tokio::join!(
            platform.admission.counts(c.id()),
            platform.store.issued_count(c.id())
        );
        if let Ok(queue) = queue {
            gauge!("firstcome_queue_depth", "campaign" => c.id().to_owned())
                .set(queue.queued as f64);
            gauge!("firstcome_admitted", "campaign" => c.id().to_owned())
                .set(queue.admitted as f64);
        }
        if let Ok(issued) = issued {
            let counts = Counts {
                capacity: c.capacity(),
                issued,
                ..Counts::default()
            };
            gauge!("firstcome_issued", "campaign" => c.id().to_owned()).set(issued as f64);
            gauge!("firstcome_remaining", "campaign" => c.id().to_owned())
                .set(counts.unissued() as f64);
        }
    }
    if let Ok((unpublished, oldest)) = platform.store.outbox_backlog().await {
        gauge!("firstcome_outbox_unpublished").set(unpublished as f64);
        let age = oldest.map_or(0.0, |t| (now_ms() - t).max(0) as f64 / 1000.0);
        gauge!("firstcome_outbox_oldest_age_seconds").set(age);
    }
    for (group, topic) in platform.consumer_groups() {
        if let Ok(lag) = platform.bus.lag(&group, &topic).await {
            gauge!("firstcome_consumer_lag", "group" => group).set(lag as f64);
        }
    }
    for p in platform.plugins.statuses() {
        let labels = [
            ("campaign", p.campaign_id.clone()),
            ("role", p.role.clone()),
            ("version", p.version.clone()),
        ];
        let c = &p.counters;
        counter!("firstcome_plugin_calls_total", &labels).absolute(c.calls);
        counter!("firstcome_plugin_errors_total", &labels).absolute(c.errors);
        counter!("firstcome_plugin_traps_total", &labels).absolute(c.traps);
        counter!("firstcome_plugin_timeouts_total", &labels).absolute(c.timeouts);
        counter!("firstcome_plugin_denied_total", &labels).absolute(c.denied);
        counter!("firstcome_plugin_busy_microseconds_total", &labels).absolute(c.busy_us);
        counter!("firstcome_plugin_epochs_total", &labels).absolute(c.epochs);
        gauge!("firstcome_plugin_info", &labels).set(1.0);
    }
    counter!("firstcome_plugin_swaps_total").absolute(platform.plugins.swaps());
}
