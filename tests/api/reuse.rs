//! Instance reuse (`reuse = N` in a plugin section): an instance keeps its memory for at most N
//! events of one campaign and version, one at a time, and is thrown away after any failed call
//! (error, trap, timeout). The fixture (`misbehave`, mode `remember`) counts the events its
//! instance served in memory and adds 1 to the kv counter `served.{n}` for its n-th, so the
//! counters show exactly which instance handled what.

use std::sync::Arc;

use firstcome_plugin::recording::Recording;
use firstcome_plugin::services::Services;
use firstcome_plugin::{CallError, Capability, Event, Plugin, PluginSpec, Runtime};
use firstcome_store::Scope;
use serde_json::json;

use crate::helpers::{Backend, spawn_app, spec, wait_for, wasm, with_plugin};

fn event(i: usize) -> (String, Event) {
    let id = uuid::Uuid::now_v7().to_string();
    let envelope = json!({
        "event_id": id, "event_type": "coupon.issued", "schema_version": 1,
        "campaign_id": "c", "occurred_at": "2026-11-29T00:00:00Z",
        "payload": {
            "user_id": format!("u{i}"), "email": null, "fcm_token": null, "gender": null,
            "age_group": null, "campaign_name": "C", "campaign_value": 1,
            "coupon_id": format!("k{i}"), "coupon_code": format!("CODE{i}"), "position": i,
            "request_id": "r", "issued_at": "2026-11-29T00:00:00Z", "expires_at": null
        }
    });
    let event =
        firstcome_plugin::host::wit_event(serde_json::from_value(envelope).unwrap(), 10).unwrap();
    (id, event)
}

/// The misbehave fixture in mode `remember` for one campaign.
fn plugin(
    runtime: &Runtime,
    campaign: &str,
    reuse: Option<u32>,
    settings: &[(&str, &str)],
) -> Plugin {
    let path = wasm("misbehave");
    let compiled = runtime
        .compile(&Runtime::read(&path, None).unwrap())
        .unwrap();
    let mut settings: std::collections::BTreeMap<String, String> = settings
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect();
    settings.insert("mode".into(), "remember".into());
    let spec = PluginSpec {
        path: path.clone(),
        sha256: None,
        grants: [Capability::Kv].into_iter().collect(),
        recipients: Default::default(),
        settings,
        timeout_ms: Some(300),
        memory_mb: None,
        reuse,
    };
    let scope = Scope {
        campaign_id: campaign.into(),
        role: "memory".into(),
    };
    runtime.bind(scope, path, compiled, spec)
}

/// Which event of its instance each call was (`served.{n}`), or the error's kind.
async fn calls(runtime: &Runtime, plugin: &Plugin, n: usize) -> Vec<String> {
    let services: Arc<dyn Services> = Arc::new(Recording::default());
    let mut seen = Vec::new();
    for i in 0..n {
        let (id, event) = event(i);
        seen.push(
            match runtime.call(plugin, &id, &event, services.clone()).await {
                Ok(effects) => {
                    let keys: Vec<&String> = effects.counters.keys().collect();
                    assert_eq!(keys.len(), 1, "{keys:?}");
                    keys[0].trim_start_matches("served.").to_owned()
                }
                Err(CallError::Retryable(_)) => "error".into(),
                Err(CallError::Trap(_)) => "trap".into(),
                Err(CallError::Timeout(_)) => "timeout".into(),
                Err(e) => panic!("unexpected {e}"),
            },
        );
    }
    seen
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_instance_serves_at_most_reuse_events_of_its_own_campaign() {
    let runtime = Runtime::new(Default::default()).unwrap();
    // A fresh instance per event by default: each call is its instance's first.
    let fresh = plugin(&runtime, "a", None, &[]);
    assert_eq!(calls(&runtime, &fresh, 3).await, ["1", "1", "1"]);
    assert_eq!(fresh.warm_instances(), 0);

    // reuse = 4: one instance for four events, then a new one.
    let a = plugin(&runtime, "a", Some(4), &[]);
    assert_eq!(calls(&runtime, &a, 6).await, ["1", "2", "3", "4", "1", "2"]);
    assert_eq!(a.warm_instances(), 1);

    // Another campaign with the same component, interleaved: its own instances.
    let b = plugin(&runtime, "b", Some(4), &[]);
    let mut interleaved = Vec::new();
    for _ in 0..2 {
        interleaved.extend(calls(&runtime, &a, 1).await);
        interleaved.extend(calls(&runtime, &b, 1).await);
    }
    assert_eq!(interleaved, ["3", "1", "4", "2"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_call_throws_its_instance_away() {
    let runtime = Runtime::new(Default::default()).unwrap();
    // Each instance fails its second event; the next call starts on a fresh instance (had the
    // failed one been kept, the next call would be its third event).
    for (setting, failure) in [
        ("fail_at", "error"),
        ("trap_at", "trap"),
        ("loop_at", "timeout"),
    ] {
        let p = plugin(&runtime, "a", Some(10), &[(setting, "2")]);
        assert_eq!(
            calls(&runtime, &p, 4).await,
            ["1", failure, "1", failure],
            "{setting}"
        );
        assert_eq!(p.warm_instances(), 0, "{setting}");
    }
}

/// Through a consumer group on each backend: twelve events on instances of at most four
/// events each, every event applied once.
async fn a_consumer_group_reuses_instances_up_to_the_bound(backend: Backend) {
    let app = spawn_app(backend).await;
    let mut s = with_plugin(
        spec(12),
        "memory",
        &wasm("misbehave"),
        &["kv"],
        &[("mode", "remember")],
    );
    s.plugins.get_mut("memory").unwrap().reuse = Some(4);
    let id = app.campaign(s).await;
    for i in 0..12 {
        assert_eq!(app.request(&id, &format!("u{i}")).await.0, 202);
    }
    let scope = Scope {
        campaign_id: id.clone(),
        role: "memory".into(),
    };
    let store = app.backends.store.clone();
    let served = |n: usize| {
        let (store, scope) = (store.clone(), scope.clone());
        async move {
            store
                .kv_counter(&scope, &format!("served.{n}"))
                .await
                .unwrap()
        }
    };
    wait_for(60, || async {
        let mut sum = 0;
        for n in 1..=4 {
            sum += served(n).await;
        }
        sum == 12
    })
    .await
    .expect("every event handled");
    for n in 5..=12 {
        assert_eq!(served(n).await, 0, "an instance served more than 4 events");
    }
    assert!(served(2).await > 0, "no instance was reused");
    let status = crate::plugins::plugin_statuses(&app)
        .await
        .into_iter()
        .find(|p| p["campaign_id"] == id.as_str())
        .unwrap();
    assert_eq!(status["reuse"], 4, "{status}");
    assert!(status["warm_instances"].as_u64().unwrap() <= 1, "{status}");
    // A campaign that is over keeps its plugins for late events, but no instances.
    assert!(app.platform.remove_campaign(&id).await.unwrap());
    let plugin = app.platform.plugins().plugin(&id, "memory").unwrap();
    assert_eq!(plugin.warm_instances(), 0);
    app.stop().await;
}

crate::on_all_backends!(
    consumer_group_reuse,
    a_consumer_group_reuses_instances_up_to_the_bound
);
