//! The stats plugin as a sandboxed component, as a consumer group runs it (a fresh instance per
//! event, and with `reuse`), against the same logic compiled natively into this harness.

use std::sync::Arc;
use std::time::Instant;

use firstcome_plugin::recording::Recording;
use firstcome_plugin::services::Services;
use firstcome_plugin::{Capability, Event, PluginSpec, Runtime};
use firstcome_store::Scope;
use hdrhistogram::Histogram;

use super::Args;

const GENDERS: [&str; 3] = ["f", "m", "x"];
const AGES: [&str; 5] = ["10s", "20s", "30s", "40s", "50s"];

/// A map as the native harness's stats sink.
#[derive(Default)]
pub(crate) struct Counts(pub(crate) std::collections::HashMap<String, i64>);

impl stats::Sink for Counts {
    fn increment(&mut self, name: &str, delta: i64) {
        *self.0.entry(name.to_owned()).or_default() += delta;
    }
}

/// `n` coupon.issued events as the host hands them to a plugin, with their ids.
pub(crate) fn events(n: usize) -> anyhow::Result<Vec<(String, Event)>> {
    (0..n)
        .map(|i| {
            let envelope = serde_json::json!({
                "event_id": uuid::Uuid::now_v7().to_string(),
                "event_type": "coupon.issued",
                "schema_version": 1,
                "campaign_id": "bench",
                "occurred_at": "2026-11-24T00:00:00Z",
                "payload": {
                    "user_id": format!("user-{i}"), "email": null, "fcm_token": null,
                    "gender": GENDERS[i % 3], "age_group": AGES[i % 5],
                    "campaign_name": "Bench", "campaign_value": 1000,
                    "coupon_id": format!("c-{i}"), "coupon_code": format!("CODE{i}"),
                    "position": i as i64 + 1, "request_id": "r",
                    "issued_at": "2026-11-24T00:00:00Z", "expires_at": null
                }
            });
            let id = envelope["event_id"].as_str().unwrap_or_default().to_owned();
            let event =
                firstcome_plugin::host::wit_event(serde_json::from_value(envelope)?, n as i64)
                    .map_err(|e| anyhow::anyhow!("{e}"))?;
            Ok((id, event))
        })
        .collect()
}

/// Binds a compiled stats component as the campaign `bench`'s role `stats`, granted `stats`,
/// with the host's default limits.
pub(crate) fn bind_stats(
    runtime: &Runtime,
    path: &std::path::Path,
    compiled: Arc<firstcome_plugin::Compiled>,
    reuse: Option<u32>,
) -> firstcome_plugin::Plugin {
    let spec = PluginSpec {
        path: path.to_owned(),
        sha256: None,
        grants: [Capability::Stats].into_iter().collect(),
        recipients: Default::default(),
        settings: Default::default(),
        timeout_ms: None,
        memory_mb: None,
        reuse,
    };
    let scope = Scope {
        campaign_id: "bench".into(),
        role: "stats".into(),
    };
    runtime.bind(scope, path.to_owned(), compiled, spec)
}

/// One run of the component over `events`, after `warm_up` of them: events/s, per-call p50
/// and p99 (µs), and the counters it produced.
pub(crate) async fn component(
    runtime: &Arc<Runtime>,
    path: &std::path::Path,
    reuse: Option<u32>,
    events: &[(String, Event)],
    warm_up: usize,
) -> anyhow::Result<(f64, f64, f64, Counts)> {
    let compiled = runtime.compile(&Runtime::read(path, None)?)?;
    let plugin = bind_stats(runtime, path, compiled, reuse);
    let services: Arc<dyn Services> = Arc::new(Recording::default());
    // Warm up: the first instances fault their pool slots in.
    for (id, event) in events.iter().take(warm_up) {
        runtime.call(&plugin, id, event, services.clone()).await?;
    }
    let mut counts = Counts::default();
    let mut per_call = Histogram::<u64>::new(3)?;
    let started = Instant::now();
    for (id, event) in events {
        let t = Instant::now();
        let effects = runtime.call(&plugin, id, event, services.clone()).await?;
        per_call.record(t.elapsed().as_nanos().max(1) as u64)?;
        for (name, delta) in effects.stats {
            stats::Sink::increment(&mut counts, &name, delta);
        }
    }
    let elapsed = started.elapsed();
    Ok((
        events.len() as f64 / elapsed.as_secs_f64(),
        per_call.value_at_quantile(0.5) as f64 / 1000.0,
        per_call.value_at_quantile(0.99) as f64 / 1000.0,
        counts,
    ))
}

/// The counters of the first `n` events of [`events`] counted by the stats plugin's logic
/// compiled natively, and its rate (events/s).
pub(crate) fn native(n: usize) -> (Counts, f64) {
    let inputs: Vec<(i64, &str, &str)> = (0..n)
        .map(|i| (1000, GENDERS[i % 3], AGES[i % 5]))
        .collect();
    let mut counts = Counts::default();
    let started = Instant::now();
    for (value, gender, age) in &inputs {
        let issued = stats::Issued {
            value: *value,
            gender: Some(gender),
            age_group: Some(age),
        };
        stats::count_issued(std::hint::black_box(&issued), &mut counts);
    }
    (counts, n as f64 / started.elapsed().as_secs_f64())
}

/// The stats plugin as a component (fresh instance per event, then `reuse = 128`) against its
/// logic compiled natively; every run must produce the same counters.
pub async fn phase(args: &Args, dir: &std::path::Path) -> anyhow::Result<()> {
    let n = args.plugin_events;
    let path = dir.join("stats.wasm");
    let runtime = Arc::new(Runtime::new(Default::default())?);
    let events = events(n)?;

    let (native_counts, native) = native(n);

    println!(
        "| instances | events | component events/s | native events/s | component / native | call p50 µs | p99 µs |"
    );
    println!("|---|---|---|---|---|---|---|");
    for (label, reuse) in [("fresh per event", None), ("reuse = 128", Some(128))] {
        let (rate, p50, p99, counts) = component(&runtime, &path, reuse, &events, 1_000).await?;
        anyhow::ensure!(
            counts.0 == native_counts.0,
            "the component ({label}) and the native logic disagree"
        );
        println!(
            "| {label} | {n} | {rate:.0} | {native:.0} | {:.4} | {p50:.1} | {p99:.1} |",
            rate / native
        );
    }
    Ok(())
}
