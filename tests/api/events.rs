//! The outbox and the embedded event bus: relays that never share a row, publishes that only
//! count when acknowledged, consumer groups that see everything once, and dead letters.

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use firstcome_admission::QueueItem;
use firstcome_bus::embedded::LogBus;
use firstcome_bus::{BusError, ConsumerSpec, Delivered, EventBus, Handler, Message, RetryPolicy};
use firstcome_platform::config::OutboxConfig;
use firstcome_platform::outbox::Relay;
use firstcome_store::Store;
use tokio_util::sync::CancellationToken;

use crate::helpers::{Backend, Backends, Recorder, spawn_app, spec, unique, wait_for};
use crate::on_all_backends;

/// A bus that records what it was given, slowly, and can be told to fail.
#[derive(Debug, Default)]
struct RecordingBus {
    published: Mutex<Vec<String>>,
    fail: std::sync::atomic::AtomicBool,
}

#[async_trait]
impl EventBus for RecordingBus {
    fn kind(&self) -> &'static str {
        "recording"
    }
    async fn publish(&self, _topic: &str, messages: &[Message]) -> Result<(), BusError> {
        tokio::time::sleep(Duration::from_millis(20)).await;
        if self.fail.load(Ordering::SeqCst) {
            return Err(BusError::Publish("broker unreachable".into()));
        }
        self.published
            .lock()
            .unwrap()
            .extend(messages.iter().map(|m| m.event_id.clone()));
        Ok(())
    }
    async fn run_consumer(
        &self,
        _: ConsumerSpec,
        _: Arc<dyn Handler>,
        _: CancellationToken,
    ) -> Result<(), BusError> {
        unreachable!("not consumed")
    }
    async fn fetch(&self, _: &str, _: usize) -> Result<Vec<Delivered>, BusError> {
        unreachable!("not read")
    }
    async fn lag(&self, _: &str, _: &str) -> Result<i64, BusError> {
        unreachable!("not consumed")
    }
    async fn ping(&self) -> Result<(), BusError> {
        Ok(())
    }
}

/// Issues `n` coupons straight through the store: `n` unpublished outbox rows.
async fn unpublished_rows(store: &Store, n: usize) -> Vec<String> {
    let id = unique("c");
    let campaign = firstcome_core::campaign::Campaign::new(&id, spec(n as i64)).unwrap();
    store.upsert_campaign(&campaign).await.unwrap();
    let items: Vec<QueueItem> = (0..n)
        .map(|i| QueueItem {
            id: i.to_string(),
            user_id: format!("u{i}"),
            position: i as i64 + 1,
            request_id: format!("r{i}"),
            admitted_at: 0,
        })
        .collect();
    let outcome = store
        .issue_chunk(&id, &items, "test", "coupon-issued")
        .await
        .unwrap();
    outcome.events.into_iter().map(|e| e.event_id).collect()
}

fn relay(store: &Store, bus: Arc<dyn EventBus>) -> Relay {
    let config = OutboxConfig {
        republish_after_ms: 0,
        relay_batch: 10,
        ..OutboxConfig::default()
    };
    Relay {
        store: store.clone(),
        bus,
        config,
    }
}

async fn two_relays_never_publish_a_row_twice(backend: Backend) {
    let dir = tempfile::tempdir().unwrap();
    let backends = Backends::open(backend, dir.path()).await;
    let ids = unpublished_rows(&backends.store, 200).await;
    let bus = Arc::new(RecordingBus::default());
    let run = |relay: Relay| async move {
        let mut passes = 0;
        while relay.run_once().await.unwrap() > 0 {
            passes += 1;
        }
        passes
    };
    let one = relay(&backends.store, bus.clone());
    let two = relay(&backends.reopen().await.store, bus.clone());
    let (a, b) = tokio::join!(run(one), run(two));
    assert!(a > 0 && b > 0, "both relays worked ({a} and {b} passes)");
    let published = bus.published.lock().unwrap().clone();
    let mut counts: HashMap<&String, usize> = HashMap::new();
    for id in &published {
        *counts.entry(id).or_default() += 1;
    }
    assert!(
        counts.values().all(|&n| n == 1),
        "a row was published twice"
    );
    assert_eq!(counts.len(), 200);
    for id in &ids {
        assert_eq!(backends.store.is_published(id).await.unwrap(), Some(true));
    }
    assert_eq!(backends.store.outbox_backlog().await.unwrap().0, 0);
}

on_all_backends!(two_relays, two_relays_never_publish_a_row_twice);

async fn unacknowledged_publish_stays_unpublished(backend: Backend) {
    let dir = tempfile::tempdir().unwrap();
    let backends = Backends::open(backend, dir.path()).await;
    let ids = unpublished_rows(&backends.store, 15).await;
    let bus = Arc::new(RecordingBus::default());
    bus.fail.store(true, Ordering::SeqCst);
    let r = relay(&backends.store, bus.clone());
    assert!(r.run_once().await.is_err(), "the failure is reported");
    for id in &ids {
        assert_eq!(
            backends.store.is_published(id).await.unwrap(),
            Some(false),
            "{id}"
        );
    }
    assert_eq!(backends.store.outbox_backlog().await.unwrap().0, 15);
    // The broker comes back; on SQLite the failed claim's lease must lapse first.
    bus.fail.store(false, Ordering::SeqCst);
    if backends.store.dialect() == firstcome_store::Dialect::Sqlite {
        sqlx::query("UPDATE outbox SET claimed_until = NULL")
            .execute(backends.store.pool())
            .await
            .unwrap();
    }
    while r.run_once().await.unwrap() > 0 {}
    let mut published = bus.published.lock().unwrap().clone();
    published.sort();
    let mut expected = ids.clone();
    expected.sort();
    assert_eq!(
        published, expected,
        "every event re-sent with its original id"
    );
    assert_eq!(backends.store.outbox_backlog().await.unwrap().0, 0);
}

on_all_backends!(unacked_publish, unacknowledged_publish_stays_unpublished);

fn consumer(group: &str, topic: &str) -> ConsumerSpec {
    ConsumerSpec {
        group: group.into(),
        topic: topic.into(),
        retry: RetryPolicy {
            backoff: Duration::from_millis(5),
            max_retries: 3,
        },
        poll_interval: Duration::from_millis(20),
        busy_lanes: firstcome_bus::default_busy_lanes(),
    }
}

fn message(i: usize) -> Message {
    Message {
        event_id: format!("e{i}"),
        key: format!("u{i}"),
        payload: format!("{{\"n\":{i}}}"),
        ..Message::default()
    }
}

async fn consumer_groups_see_every_event_once(backend: Backend) {
    let dir = tempfile::tempdir().unwrap();
    let backends = Backends::open(backend, dir.path()).await;
    let bus = Arc::new(LogBus::new(backends.store.clone()));
    let topic = unique("t");
    let stop = CancellationToken::new();
    let mut handlers = Vec::new();
    for group in ["notification", "history", "stats"] {
        let h = Arc::new(Recorder::default());
        handlers.push(h.clone());
        let (bus, spec, stop) = (bus.clone(), consumer(group, &topic), stop.clone());
        tokio::spawn(async move { bus.run_consumer(spec, h, stop).await.unwrap() });
    }
    let messages: Vec<Message> = (0..50).map(message).collect();
    bus.publish(&topic, &messages[..25]).await.unwrap();
    bus.publish(&topic, &messages[25..]).await.unwrap();
    // The same events again, as a relay re-send would.
    bus.publish(&topic, &messages[..10]).await.unwrap();
    wait_for(10, || async {
        handlers.iter().all(|h| h.seen.lock().unwrap().len() >= 50)
            && backends
                .store
                .group_position("stats", &topic)
                .await
                .unwrap()
                == 61
    })
    .await
    .expect("every group reads to the end");
    tokio::time::sleep(Duration::from_millis(100)).await;
    for h in &handlers {
        let seen = h.seen.lock().unwrap().clone();
        let expected: Vec<String> = (0..50).map(|i| format!("e{i}")).collect();
        assert_eq!(seen, expected, "all events, in order, duplicates dropped");
    }
    stop.cancel();
}

on_all_backends!(groups, consumer_groups_see_every_event_once);

async fn failing_handler_dead_letters(backend: Backend) {
    let dir = tempfile::tempdir().unwrap();
    let backends = Backends::open(backend, dir.path()).await;
    let bus = Arc::new(LogBus::new(backends.store.clone()));
    let topic = unique("t");
    // Four failures: the first event is tried 1 + 3 times and dead-lettered.
    let h = Arc::new(Recorder::failing(4));
    let stop = CancellationToken::new();
    let (b, s, st, hh) = (
        bus.clone(),
        consumer("notification", &topic),
        stop.clone(),
        h.clone(),
    );
    tokio::spawn(async move { b.run_consumer(s, hh, st).await.unwrap() });
    bus.publish(&topic, &[message(1), message(2)])
        .await
        .unwrap();
    let dlt = format!("{topic}.DLT");
    wait_for(10, || async {
        backends.store.log_head(&dlt).await.unwrap() == 1 && h.seen.lock().unwrap().len() == 1
    })
    .await
    .expect("one dead letter, the next event handled");
    let dead = backends.store.read_log(&dlt, 1, 10).await.unwrap();
    let m = &dead[0].message;
    assert_eq!(m.event_id, "e1");
    assert_eq!(m.payload, message(1).payload);
    assert_eq!(m.headers["dlt.original_topic"], topic);
    assert_eq!(m.headers["dlt.original_offset"], "1");
    assert_eq!(m.headers["dlt.consumer_group"], "notification");
    assert_eq!(m.headers["dlt.attempts"], "4");
    assert!(m.headers["dlt.error"].contains("downstream unavailable"));
    assert!(m.headers.contains_key("dlt.original_timestamp"));
    assert_eq!(*h.seen.lock().unwrap(), vec!["e2".to_owned()]);
    assert_eq!(h.tries.load(Ordering::SeqCst), 5);
    stop.cancel();
}

on_all_backends!(dead_letters, failing_handler_dead_letters);

async fn a_group_member_takes_over(backend: Backend) {
    let dir = tempfile::tempdir().unwrap();
    let backends = Backends::open(backend, dir.path()).await;
    let bus = Arc::new(LogBus::new(backends.store.clone()));
    let topic = unique("t");
    let h = Arc::new(Recorder::default());
    let first = CancellationToken::new();
    let second = CancellationToken::new();
    let a = {
        let (b, s, st, hh) = (
            bus.clone(),
            consumer("history", &topic),
            first.clone(),
            h.clone(),
        );
        tokio::spawn(async move { b.run_consumer(s, hh, st).await.unwrap() })
    };
    let (b, s, st, hh) = (
        bus.clone(),
        consumer("history", &topic),
        second.clone(),
        h.clone(),
    );
    tokio::spawn(async move { b.run_consumer(s, hh, st).await.unwrap() });
    let messages: Vec<Message> = (0..40).map(message).collect();
    bus.publish(&topic, &messages[..20]).await.unwrap();
    wait_for(10, || async { h.seen.lock().unwrap().len() == 20 })
        .await
        .expect("first half");
    // One member leaves; the other carries on with the rest.
    first.cancel();
    a.await.unwrap();
    bus.publish(&topic, &messages[20..]).await.unwrap();
    wait_for(10, || async { h.seen.lock().unwrap().len() == 40 })
        .await
        .expect("second half");
    tokio::time::sleep(Duration::from_millis(100)).await;
    let seen = h.seen.lock().unwrap().clone();
    assert_eq!(
        seen,
        (0..40).map(|i| format!("e{i}")).collect::<Vec<_>>(),
        "no loss, no repeat"
    );
    second.cancel();
}

on_all_backends!(takeover, a_group_member_takes_over);

/// Through the whole host: every issued coupon's event is published, marked, and recorded
/// once by the history plugin, and counted once by the stats plugin.
async fn every_coupon_reaches_history_once(backend: Backend) {
    let app = spawn_app(backend).await;
    let stats = crate::helpers::with_plugin(
        crate::helpers::with_history(spec(40)),
        "stats",
        &crate::helpers::wasm("stats"),
        &["stats"],
        &[],
    );
    let id = app.campaign(stats).await;
    for i in 0..60 {
        app.request(&id, &format!("u{i}")).await;
    }
    app.wait_issued(&id, 40, 20).await;
    let store = &app.backends.store;
    wait_for(20, || async {
        store.history_of_campaign(&id).await.unwrap().len() == 40
    })
    .await
    .expect("history complete");
    assert_eq!(
        store.outbox_backlog().await.unwrap().0,
        0,
        "all marked published"
    );
    let consumers = || async { app.admin_get("/api/v1/admin/consumers").await.1 };
    // The group's position is stored just after the writes it follows.
    wait_for(10, || async {
        consumers().await["consumers"][0]["lag"] == 0
    })
    .await
    .expect("the history group's lag reaches 0");
    let lag = consumers().await;
    assert_eq!(lag["consumers"][0]["group"], "history", "{lag}");
    assert_eq!(lag["consumers"][1]["group"], "stats", "{lag}");
    wait_for(20, || async {
        store.campaign_stats(&id).await.unwrap().get("issued") == Some(&40)
    })
    .await
    .expect("stats complete");
    let counters = store.campaign_stats(&id).await.unwrap();
    assert_eq!(counters["revenue"], 40 * 1000, "{counters:?}");
    let history = store.history_of_campaign(&id).await.unwrap();
    let mut events: Vec<&String> = history.iter().map(|h| &h.event_id).collect();
    events.sort();
    events.dedup();
    assert_eq!(events.len(), 40);
    let payload: serde_json::Value = serde_json::from_str(
        &store.read_log("coupon-issued", 1, 1).await.unwrap()[0]
            .message
            .payload,
    )
    .unwrap();
    for field in [
        "event_id",
        "event_type",
        "schema_version",
        "campaign_id",
        "occurred_at",
    ] {
        assert!(
            payload.get(field).is_some(),
            "envelope has {field}: {payload}"
        );
    }
    for field in [
        "user_id",
        "email",
        "fcm_token",
        "gender",
        "age_group",
        "campaign_name",
        "campaign_value",
        "coupon_id",
        "coupon_code",
        "issued_at",
    ] {
        assert!(
            payload["payload"].get(field).is_some(),
            "payload has {field}: {payload}"
        );
    }
    app.stop().await;
}

on_all_backends!(history, every_coupon_reaches_history_once);

/// `firstcome dlt list | show | replay`: a dead letter is visible with its origin and error,
/// and after the fix a replay reaches the group that failed it, once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dead_letters_can_be_listed_and_replayed() {
    let dir = tempfile::tempdir().unwrap();
    let backends = Backends::open(Backend::Embedded, dir.path()).await;
    let bus = Arc::new(LogBus::new(backends.store.clone()));
    let topic = unique("t");
    let h = Arc::new(Recorder::failing(4));
    let stop = CancellationToken::new();
    let (b, s, st, hh) = (
        bus.clone(),
        consumer("notification", &topic),
        stop.clone(),
        h.clone(),
    );
    tokio::spawn(async move { b.run_consumer(s, hh, st).await.unwrap() });
    bus.publish(&topic, &[message(1), message(2)])
        .await
        .unwrap();
    wait_for(10, || async { h.seen.lock().unwrap().len() == 1 })
        .await
        .expect("e2 handled");

    let db = backends.database_url.clone();
    let data = dir.path().display().to_string();
    let cli = |args: &[&str]| {
        let args: Vec<&str> = ["dlt"].iter().chain(args).copied().collect();
        let env = [
            ("FIRSTCOME_DATABASE_URL", db.as_str()),
            ("FIRSTCOME_OUTBOX__TOPIC", topic.as_str()),
            ("FIRSTCOME_DATA_DIR", data.as_str()),
        ];
        crate::helpers::firstcome(&args, &env)
    };
    let listed = cli(&["list"]);
    assert!(listed.contains("1 dead letters"), "{listed}");
    assert!(
        listed.contains("e1") && listed.contains("group notification"),
        "{listed}"
    );
    assert!(listed.contains("downstream unavailable"), "{listed}");
    assert!(cli(&["show", "e1"]).contains("dlt.original_offset"));
    assert!(cli(&["replay", "e1"]).contains("replayed 1"));
    wait_for(10, || async { h.seen.lock().unwrap().len() == 2 })
        .await
        .expect("replay handled");
    // Settled: off the open list, on the settled one, not replayed twice.
    assert!(cli(&["list"]).contains("0 dead letters"));
    let settled = cli(&["list", "--show", "settled"]);
    assert!(settled.contains("[replayed by cli]"), "{settled}");
    let env = [
        ("FIRSTCOME_DATABASE_URL", db.as_str()),
        ("FIRSTCOME_OUTBOX__TOPIC", topic.as_str()),
        ("FIRSTCOME_DATA_DIR", data.as_str()),
    ];
    let (code, _, err) = crate::helpers::firstcome_run(&["dlt", "replay", "e1"], &env);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("already replayed or discarded: e1"), "{err}");
    let (code, _, err) = crate::helpers::firstcome_run(&["dlt", "discard", "nope"], &env);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("no dead letter with event id nope"), "{err}");
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(
        *h.seen.lock().unwrap(),
        vec!["e2".to_owned(), "e1".to_owned()]
    );
    stop.cancel();
}

/// Embedded log retention: old entries go, newer ones and the offsets stay.
async fn event_log_keeps_entries_for_the_retention_only(backend: Backend) {
    let dir = tempfile::tempdir().unwrap();
    let backends = Backends::open(backend, dir.path()).await;
    let store = &backends.store;
    let topic = unique("t");
    store
        .append_log(&topic, &[message(1), message(2)], 1_000)
        .await
        .unwrap();
    store
        .append_log(&topic, &[message(3)], 5_000)
        .await
        .unwrap();
    assert_eq!(store.purge_log(2_000).await.unwrap(), 2);
    let left = store.read_log(&topic, 1, 10).await.unwrap();
    assert_eq!(left.len(), 1);
    assert_eq!(
        (left[0].offset, left[0].message.event_id.as_str()),
        (3, "e3")
    );
    assert_eq!(
        store.log_head(&topic).await.unwrap(),
        3,
        "offsets keep counting"
    );

    // Dead letters go only once settled, however old.
    let dlt = firstcome_bus::dlt_topic(&topic);
    store
        .append_log(&dlt, &[message(1), message(2)], 1_000)
        .await
        .unwrap();
    assert_eq!(store.purge_log(2_000).await.unwrap(), 0, "both open");
    let settled = firstcome_store::Settled {
        outcome: firstcome_store::Settlement::Discarded,
        actor: "cli".into(),
        at_ms: 1_500,
    };
    let first = firstcome_store::LetterPlace {
        topic: dlt.clone(),
        partition: 0,
        offset: 1,
    };
    let marked = store
        .settle_dead_letters(&[(first.clone(), "e1".into())], &settled)
        .await
        .unwrap();
    assert_eq!(marked, [0]);
    let again = store
        .settle_dead_letters(&[(first, "e1".into())], &settled)
        .await
        .unwrap();
    assert!(again.is_empty(), "a letter is settled once");
    assert_eq!(store.purge_log(2_000).await.unwrap(), 1, "the settled one");
    let left = store.read_log(&dlt, 1, 10).await.unwrap();
    assert_eq!(left.len(), 1);
    assert_eq!(left[0].message.event_id, "e2");
    assert_eq!(
        store.purge_settled_dead_letters(2_000).await.unwrap(),
        1,
        "marks go after their retention"
    );
}

on_all_backends!(
    log_retention,
    event_log_keeps_entries_for_the_retention_only
);

/// A batch of plugin writes in which one event was processed already (another member of the
/// group handled it): the events before it are applied, it writes nothing, and the answer
/// ends there, so that the events after it (which read its writes as pending) run again.
async fn a_batch_stops_at_an_event_processed_elsewhere(backend: Backend) {
    use firstcome_store::{Effects, PluginWrites, Scope};
    let dir = tempfile::tempdir().unwrap();
    let store = Backends::open(backend, dir.path()).await.store;
    let group = unique("g");
    let scope = Scope {
        campaign_id: unique("c"),
        role: group.clone(),
    };
    let count = |n: i64| Effects {
        counters: [("n".to_owned(), n)].into_iter().collect(),
        ..Effects::default()
    };
    let (one, two, three) = (count(1), count(10), count(100));
    // "b" was handled by another member.
    assert!(
        store
            .commit_effects(&group, "b", &scope, &two, 1)
            .await
            .unwrap()
    );
    let writes =
        [("a", &one), ("b", &two), ("c", &three)].map(|(event_id, effects)| PluginWrites {
            event_id,
            scope: &scope,
            effects,
        });
    let applied = store
        .commit_effects_batch(&group, &writes, 2)
        .await
        .unwrap();
    assert_eq!(
        applied,
        [true, false],
        "a applied, b done elsewhere, c to run again"
    );
    assert_eq!(store.kv_counter(&scope, "n").await.unwrap(), 11);
    let done = store
        .processed_among(&group, &["a", "b", "c"])
        .await
        .unwrap();
    assert!(done.contains("a") && done.contains("b") && !done.contains("c"));
    // Run again, c alone is applied.
    let again = store
        .commit_effects_batch(&group, &writes[2..], 3)
        .await
        .unwrap();
    assert_eq!(again, [true]);
    assert_eq!(store.kv_counter(&scope, "n").await.unwrap(), 111);
}

on_all_backends!(
    batch_after_elsewhere,
    a_batch_stops_at_an_event_processed_elsewhere
);
