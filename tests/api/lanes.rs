//! Per-campaign lanes in a consumer group: a campaign whose plugin works 10 s per event holds
//! back no other campaign's events of the same role, on the embedded bus and on Kafka.

use std::sync::Arc;
use std::time::{Duration, Instant};

use firstcome_store::Scope;

use crate::helpers::{Backend, Backends, spawn_app_on, spec, unique, wait_for, wasm, with_plugin};
use crate::kafka::{settings, shared_brokers};

/// Campaign A's plugin works 10 s on its one event; campaign B's three events, issued while
/// it works, are handled before A's call ends. Returns how long B's events took from their
/// `202`s to their plugin's writes.
async fn a_slow_campaign_holds_back_no_other(kafka: bool) -> Duration {
    let dir = Arc::new(tempfile::tempdir().unwrap());
    let backends = Backends::open(Backend::Embedded, dir.path()).await;
    let topic = unique("lanes");
    let app = spawn_app_on(backends, dir, move |c| {
        if kafka {
            c.kafka_brokers = Some(shared_brokers());
            c.kafka = settings();
            c.outbox.topic = topic;
        }
    })
    .await;
    let worker = |ms: &str| {
        let mut campaign = with_plugin(
            spec(5),
            "worker",
            &wasm("misbehave"),
            &["kv"],
            &[("mode", "slow"), ("ms", ms)],
        );
        campaign.plugins.get_mut("worker").unwrap().timeout_ms = Some(20_000);
        campaign
    };
    let a = app.campaign(worker("10000")).await;
    let b = app.campaign(worker("0")).await;
    let store = app.backends.store.clone();
    let seen = |campaign: &str| {
        let (store, scope) = (
            store.clone(),
            Scope {
                campaign_id: campaign.to_owned(),
                role: "worker".into(),
            },
        );
        async move { store.kv_counter(&scope, "seen").await.unwrap() }
    };

    assert_eq!(app.request(&a, "ann").await.0, 202);
    app.wait_issued(&a, 1, 20).await;
    // A's event reaches its plugin (over Kafka, once the group has joined).
    tokio::time::sleep(Duration::from_secs(if kafka { 3 } else { 1 })).await;
    let started = Instant::now();
    for i in 0..3 {
        assert_eq!(app.request(&b, &format!("bo{i}")).await.0, 202);
    }
    wait_for(30, || async { seen(&b).await == 3 })
        .await
        .expect("B's events handled");
    let took = started.elapsed();
    assert_eq!(
        seen(&a).await,
        0,
        "B's events were handled while A's plugin was still working on its event ({took:?})"
    );
    wait_for(30, || async { seen(&a).await == 1 })
        .await
        .expect("A's event handled in the end");
    app.stop().await;
    took
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_campaign_holds_back_no_other_on_the_embedded_bus() {
    let took = a_slow_campaign_holds_back_no_other(false).await;
    eprintln!("embedded bus: B's events handled {took:?} after their 202s");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_slow_campaign_holds_back_no_other_on_kafka() {
    let took = a_slow_campaign_holds_back_no_other(true).await;
    eprintln!("Kafka: B's events handled {took:?} after their 202s");
}
