//! The Kafka bus against a real Kafka-protocol broker (tansu). `tests/run.sh` starts a shared
//! broker (`FC_TEST_KAFKA_BROKERS`, default 127.0.0.1:9092); tests that stop or restart
//! a broker start one of their own.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use firstcome_bus::kafka::KafkaBus;
use firstcome_bus::{ConsumerSpec, EventBus, Message, RetryPolicy};
use firstcome_platform::config::KafkaConfig;
use firstcome_store::Store;
use tokio_util::sync::CancellationToken;

use crate::helpers::{Backend, Backends, Recorder, spawn_app_on, spec, unique, wait_for};

pub fn shared_brokers() -> String {
    std::env::var("FC_TEST_KAFKA_BROKERS").unwrap_or_else(|_| "127.0.0.1:9092".into())
}

fn tansu() -> String {
    std::env::var("FC_TEST_TANSU").unwrap_or_else(|_| "tansu".into())
}

/// Durable storage for brokers that restart: tansu's `sqlite://` (libSQL) engine. Known bug in
/// tansu 0.6: after a restart, a consumer that stayed in its group across it sends an update
/// that makes the engine's `query_one` panic ("more or less than one row", lite.rs:503, in
/// `update_group`: its select passes `(group_id, cluster)` where the insert passes `(cluster,
/// group_id)`); the engine's worker dies and every later storage call hits `unreachable!()` in
/// `tansu_storage::service`. The `turso://` engine fails on its own DDL and `postgres://` ships
/// no schema. So the outage test stops the broker with SIGSTOP instead of restarting it, and
/// the restart test has its consumer leave before the restart.
fn durable_storage() -> String {
    std::env::var("FC_TEST_TANSU_STORAGE").unwrap_or_else(|_| "sqlite://tansu.db".into())
}

/// A broker of one test's own, with durable storage so that it survives a restart.
#[derive(Debug)]
pub struct Broker {
    pub address: String,
    port: u16,
    storage: String,
    dir: tempfile::TempDir,
    child: Option<tokio::process::Child>,
}

impl Broker {
    pub async fn start(storage: &str) -> Self {
        let port = crate::helpers::free_port();
        let mut broker = Self {
            address: format!("127.0.0.1:{port}"),
            port,
            storage: storage.to_owned(),
            dir: tempfile::tempdir().unwrap(),
            child: None,
        };
        broker.resume().await;
        broker
    }

    /// Starts the broker process (again) on the same port and storage.
    pub async fn resume(&mut self) {
        let url = format!("tcp://127.0.0.1:{}", self.port);
        let child = tokio::process::Command::new(tansu())
            .args([
                "broker",
                "--listener-url",
                &url,
                "--advertised-listener-url",
                &url,
            ])
            .args(["--storage-engine", &self.storage])
            .current_dir(self.dir.path())
            .stdout(std::process::Stdio::null())
            .stderr(std::fs::File::create(self.dir.path().join("broker.log")).unwrap())
            .kill_on_drop(true)
            .spawn()
            .expect("tansu runs (tests/run.sh installs it)");
        self.child = Some(child);
        let address = self.address.clone();
        wait_for(30, || {
            let address = address.clone();
            async move { tokio::net::TcpStream::connect(address).await.is_ok() }
        })
        .await
        .expect("the broker listens");
    }

    /// Freezes the broker process (SIGSTOP): it holds its connections and answers nothing.
    pub fn pause(&self) {
        self.signal("-STOP");
    }

    /// Lets a paused broker go on (SIGCONT).
    pub fn unpause(&self) {
        self.signal("-CONT");
    }

    fn signal(&self, signal: &str) {
        let pid = self
            .child
            .as_ref()
            .and_then(|c| c.id())
            .expect("the broker runs");
        let status = std::process::Command::new("kill")
            .args([signal, &pid.to_string()])
            .status()
            .unwrap();
        assert!(status.success(), "kill {signal} {pid}");
    }

    pub async fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            child.kill().await.unwrap();
        }
    }
}

impl Drop for Broker {
    /// When a test fails, the broker's own account of it is the first thing to read.
    fn drop(&mut self) {
        if std::thread::panicking() {
            let log =
                std::fs::read_to_string(self.dir.path().join("broker.log")).unwrap_or_default();
            eprintln!("--- broker panics ---");
            for line in log.lines().filter(|l| l.contains("panicked")) {
                eprintln!("{line}");
            }
            let tail: Vec<&str> = log.lines().rev().take(40).collect();
            eprintln!("--- broker log (last lines) ---");
            for line in tail.iter().rev() {
                eprintln!("{line}");
            }
        }
    }
}

/// Quick timeouts, and consumer groups of this test's own: tests share a broker as
/// deployments share a cluster, and the same role's members of two tests in one group would
/// rebalance each other (`kafka.group_prefix`).
pub fn settings() -> KafkaConfig {
    KafkaConfig {
        delivery_timeout_ms: 5_000,
        session_timeout_ms: 6_000,
        group_prefix: format!("{}.", unique("test")),
        ..KafkaConfig::default()
    }
}

/// A bus on `brokers` with [`settings`] (consumer groups of its own), its topics created.
async fn bus_on(brokers: &str, store: &Store, topic: &str) -> Arc<KafkaBus> {
    bus_with(brokers, store, topic, settings()).await
}

async fn bus_with(
    brokers: &str,
    store: &Store,
    topic: &str,
    settings: KafkaConfig,
) -> Arc<KafkaBus> {
    let bus = KafkaBus::new(brokers, settings, store.clone()).unwrap();
    bus.ensure_topics(&[topic])
        .await
        .expect("topics are created");
    Arc::new(bus)
}

fn consumer(group: &str, topic: &str) -> ConsumerSpec {
    ConsumerSpec {
        group: group.into(),
        topic: topic.into(),
        retry: RetryPolicy {
            backoff: Duration::from_millis(10),
            max_retries: 3,
        },
        poll_interval: Duration::from_millis(50),
        busy_lanes: firstcome_bus::default_busy_lanes(),
    }
}

/// Runs one member as the platform does (`Platform::start_consumers`): a member that returns an
/// error is started again after a second. The bus returns one by design when its group made no
/// progress for 30 s with events waiting (a partition the broker left without an owner after a
/// rebalance): the member rejoins, and the coordinator assigns every partition again.
fn run(
    bus: &Arc<KafkaBus>,
    spec: ConsumerSpec,
    h: Arc<Recorder>,
    stop: &CancellationToken,
) -> tokio::task::JoinHandle<()> {
    let (bus, stop) = (bus.clone(), stop.clone());
    tokio::spawn(async move {
        loop {
            let result = bus
                .run_consumer(spec.clone(), h.clone(), stop.clone())
                .await;
            if stop.is_cancelled() {
                return;
            }
            eprintln!("member of {} restarts: {result:?}", spec.group);
            tokio::select! {
                () = tokio::time::sleep(Duration::from_secs(1)) => {}
                () = stop.cancelled() => return,
            }
        }
    })
}

fn messages(range: std::ops::Range<usize>) -> Vec<Message> {
    range
        .map(|i| Message {
            event_id: format!("e{i}"),
            key: format!("user{i}"),
            payload: format!("{{\"event_id\":\"e{i}\"}}"),
            ..Message::default()
        })
        .collect()
}

fn sorted(mut v: Vec<String>) -> Vec<String> {
    v.sort();
    v
}

fn ids(range: std::ops::Range<usize>) -> Vec<String> {
    sorted(range.map(|i| format!("e{i}")).collect())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn three_groups_each_handle_every_event_once() {
    let dir = tempfile::tempdir().unwrap();
    let backends = Backends::open(Backend::Embedded, dir.path()).await;
    let topic = unique("k");
    let config = settings();
    let bus = bus_with(&shared_brokers(), &backends.store, &topic, config.clone()).await;
    let stop = CancellationToken::new();
    let groups: Vec<Arc<Recorder>> = ["notification", "history", "stats"]
        .iter()
        .map(|g| {
            let h = Arc::new(Recorder::default());
            run(&bus, consumer(g, &topic), h.clone(), &stop);
            h
        })
        .collect();
    bus.publish(&topic, &messages(0..60)).await.unwrap();
    // The same events again, as a relay re-send would.
    bus.publish(&topic, &messages(0..10)).await.unwrap();
    wait_for(60, || async { groups.iter().all(|h| h.seen().len() >= 60) })
        .await
        .expect("every group handles every event");
    wait_for(30, || async {
        bus.lag("stats", &topic).await.unwrap() == 0
    })
    .await
    .expect("offsets committed");
    tokio::time::sleep(Duration::from_millis(500)).await;
    for h in &groups {
        assert_eq!(
            sorted(h.seen()),
            ids(0..60),
            "each event once, duplicates dropped"
        );
    }
    // On the broker, as its tools list them, the groups carry the configured prefix: the
    // stats group committed past all 70 records, and the bare role names no group.
    assert_eq!(
        committed(&format!("{}stats", config.group_prefix), &topic),
        70
    );
    assert_eq!(committed("stats", &topic), 0);
    stop.cancel();
}

/// The sum of the offsets a Kafka consumer group (by its `group.id`) committed on `topic` of
/// the shared broker, read with a plain librdkafka client.
fn committed(group: &str, topic: &str) -> i64 {
    use rdkafka::consumer::{BaseConsumer, Consumer};
    let consumer: BaseConsumer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", shared_brokers())
        .set("group.id", group)
        .create()
        .unwrap();
    let metadata = consumer
        .fetch_metadata(Some(topic), Duration::from_secs(10))
        .unwrap();
    let mut partitions = rdkafka::TopicPartitionList::new();
    for p in metadata.topics()[0].partitions() {
        partitions.add_partition(topic, p.id());
    }
    consumer
        .committed_offsets(partitions, Duration::from_secs(10))
        .unwrap()
        .elements()
        .iter()
        .map(|e| match e.offset() {
            rdkafka::Offset::Offset(o) => o,
            _ => 0,
        })
        .sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn failing_events_reach_the_dead_letter_topic_and_replay() {
    let dir = tempfile::tempdir().unwrap();
    let backends = Backends::open(Backend::Embedded, dir.path()).await;
    let topic = unique("k");
    let bus = bus_on(&shared_brokers(), &backends.store, &topic).await;
    let stop = CancellationToken::new();
    let h = Arc::new(Recorder {
        fail: 4,
        ..Recorder::default()
    });
    run(&bus, consumer("notification", &topic), h.clone(), &stop);
    bus.publish(&topic, &messages(0..1)).await.unwrap();
    let dlt = format!("{topic}.DLT");
    wait_for(60, || async {
        !bus.fetch(&dlt, 10).await.unwrap().is_empty()
    })
    .await
    .expect("the event is dead-lettered");
    let dead = bus.fetch(&dlt, 10).await.unwrap();
    let m = &dead[0].message;
    assert_eq!(m.event_id, "e0");
    assert_eq!(m.headers["dlt.original_topic"], topic);
    assert_eq!(m.headers["dlt.consumer_group"], "notification");
    assert_eq!(m.headers["dlt.attempts"], "4");
    for key in [
        "dlt.original_partition",
        "dlt.original_offset",
        "dlt.original_timestamp",
        "dlt.error",
    ] {
        assert!(m.headers.contains_key(key), "{key} in {:?}", m.headers);
    }
    assert!(h.seen().is_empty());

    let brokers = shared_brokers();
    let data = dir.path().display().to_string();
    crate::helpers::firstcome(
        &["dlt", "replay", "--all"],
        &[
            ("FIRSTCOME_KAFKA_BROKERS", brokers.as_str()),
            ("FIRSTCOME_OUTBOX__TOPIC", topic.as_str()),
            ("FIRSTCOME_DATABASE_URL", backends.database_url.as_str()),
            ("FIRSTCOME_DATA_DIR", data.as_str()),
        ],
    );
    wait_for(60, || async { h.seen() == vec!["e0".to_owned()] })
        .await
        .expect("the replay is handled");
    stop.cancel();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn one_group_splits_partitions_and_a_survivor_takes_over() {
    let dir = tempfile::tempdir().unwrap();
    let backends = Backends::open(Backend::Embedded, dir.path()).await;
    let topic = unique("k");
    let bus = bus_on(&shared_brokers(), &backends.store, &topic).await;
    let (stop_a, stop_b) = (CancellationToken::new(), CancellationToken::new());
    let (a, b) = (Arc::new(Recorder::default()), Arc::new(Recorder::default()));
    let task_a = run(&bus, consumer("history", &topic), a.clone(), &stop_a);
    run(&bus, consumer("history", &topic), b.clone(), &stop_b);
    // Publish in rounds until both members have handled something: the group has split.
    let mut sent = 0;
    let split = wait_for(60, || {
        let (bus, topic, a, b) = (bus.clone(), topic.clone(), a.clone(), b.clone());
        let batch = messages(sent..sent + 30);
        sent += 30;
        async move {
            bus.publish(&topic, &batch).await.unwrap();
            tokio::time::sleep(Duration::from_millis(500)).await;
            !a.seen().is_empty() && !b.seen().is_empty()
        }
    })
    .await;
    assert!(split.is_some(), "both members get partitions");
    // One member leaves; the other takes its partitions over.
    stop_a.cancel();
    task_a.await.unwrap();
    bus.publish(&topic, &messages(sent..sent + 60))
        .await
        .unwrap();
    let total = sent + 60;
    // Within the bus's stall window (30 s) and a rejoin, should the broker leave a partition
    // without an owner after the member left.
    wait_for(120, || async { a.seen().len() + b.seen().len() >= total })
        .await
        .expect("all handled");
    tokio::time::sleep(Duration::from_millis(500)).await;
    let all: Vec<String> = a.seen().into_iter().chain(b.seen()).collect();
    assert_eq!(sorted(all), ids(0..total), "no loss, nothing twice");
    stop_b.cancel();
}

/// The broker is stopped (SIGSTOP) for several seconds while coupons are issued: publishes
/// time out, rows stay in the outbox, the relay sends them when the broker is back; the history
/// group, which stays in its group throughout, records every coupon once, and every event is
/// on the topic.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn broker_outage_while_issuing_loses_nothing() {
    let broker = Broker::start("memory://tansu/").await;
    let dir = Arc::new(tempfile::tempdir().unwrap());
    let backends = Backends::open(Backend::Embedded, dir.path()).await;
    let topic = unique("k");
    let topic_name = topic.clone();
    let address = broker.address.clone();
    let app = spawn_app_on(backends.clone(), dir, move |c| {
        c.kafka_brokers = Some(address);
        c.kafka = settings();
        c.outbox.topic = topic_name;
        c.outbox.republish_after_ms = 1_000;
        c.outbox.relay_interval_ms = 300;
    })
    .await;
    let store = &backends.store;
    let id = app.campaign(crate::helpers::with_history(spec(80))).await;
    for i in 0..40 {
        assert_eq!(app.request(&id, &format!("before{i}")).await.0, 202);
    }
    wait_for(60, || async {
        store.history_of_campaign(&id).await.unwrap().len() == 40
    })
    .await
    .expect("history before the outage");

    broker.pause();
    for i in 0..40 {
        assert_eq!(
            app.request(&id, &format!("during{i}")).await.0,
            202,
            "admission goes on"
        );
    }
    app.wait_issued(&id, 80, 20).await;
    tokio::time::sleep(Duration::from_secs(4)).await;
    assert!(
        store.outbox_backlog().await.unwrap().0 > 0,
        "unacknowledged events stay unpublished"
    );
    broker.unpause();

    wait_for(90, || async {
        store.outbox_backlog().await.unwrap().0 == 0
            && store.history_of_campaign(&id).await.unwrap().len() == 80
    })
    .await
    .expect("every event published and handled after the outage");
    tokio::time::sleep(Duration::from_secs(1)).await;
    let history = store.history_of_campaign(&id).await.unwrap();
    let users: HashSet<&String> = history.iter().map(|h| &h.user_id).collect();
    assert_eq!(
        (history.len(), users.len()),
        (80, 80),
        "each coupon recorded once"
    );
    let on_topic: HashSet<String> = app
        .platform
        .bus()
        .fetch(&topic, 10_000)
        .await
        .unwrap()
        .into_iter()
        .map(|d| d.message.event_id)
        .collect();
    for entry in &history {
        assert!(
            on_topic.contains(&entry.event_id),
            "{} is on the topic",
            entry.event_id
        );
    }
    app.stop().await;
}

/// With durable broker storage, a restart keeps the topic and the group's committed offsets:
/// the group resumes where it was, reading only what came after.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn consumers_resume_from_committed_offsets_after_a_broker_restart() {
    let mut broker = Broker::start(&durable_storage()).await;
    let topic = unique("k");
    let dir = tempfile::tempdir().unwrap();
    let first_store = Backends::open(Backend::Embedded, dir.path()).await.store;
    // The two buses are one deployment before and after: the same consumer groups.
    let groups = settings();
    let bus = bus_with(&broker.address, &first_store, &topic, groups.clone()).await;
    let stop = CancellationToken::new();
    let first = Arc::new(Recorder::default());
    let task = run(&bus, consumer("stats", &topic), first.clone(), &stop);
    bus.publish(&topic, &messages(0..30)).await.unwrap();
    wait_for(60, || async { first.seen().len() == 30 })
        .await
        .expect("first half handled");
    stop.cancel();
    task.await.unwrap();

    broker.stop().await;
    broker.resume().await;
    bus.publish(&topic, &messages(30..60)).await.unwrap();
    // A new member with an empty dedupe table: anything it is given twice would show.
    let other = tempfile::tempdir().unwrap();
    let fresh_store = Backends::open(Backend::Embedded, other.path()).await.store;
    let bus = bus_with(&broker.address, &fresh_store, &topic, groups).await;
    let stop = CancellationToken::new();
    let second = Arc::new(Recorder::default());
    let task = run(&bus, consumer("stats", &topic), second.clone(), &stop);
    wait_for(60, || async { second.seen().len() >= 30 })
        .await
        .expect("second half handled");
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(
        sorted(second.seen()),
        ids(30..60),
        "resumed at the committed offsets"
    );
    // The member leaves while its broker runs: librdkafka's close waits for the coordinator.
    stop.cancel();
    task.await.unwrap();
}

/// An event the handler cannot decode is permanent: dead-lettered at the first try.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn undecodable_events_go_straight_to_the_dead_letter_topic() {
    let dir = tempfile::tempdir().unwrap();
    let backends = Backends::open(Backend::Embedded, dir.path()).await;
    let topic = unique("k");
    let bus = bus_on(&shared_brokers(), &backends.store, &topic).await;
    let stop = CancellationToken::new();
    let config = crate::helpers::test_config(dir.path());
    let handler = Arc::new(firstcome_plugin::host::RoleHandler {
        host: Arc::new(
            firstcome::app::plugin_host(&config, &backends.store, Default::default()).unwrap(),
        ),
        role: "history".into(),
    });
    let (b, s, st) = (bus.clone(), consumer("history", &topic), stop.clone());
    tokio::spawn(async move { b.run_consumer(s, handler, st).await.unwrap() });
    let garbage = Message {
        event_id: "garbled".into(),
        key: "u".into(),
        payload: "{not json".into(),
        ..Message::default()
    };
    bus.publish(&topic, &[garbage]).await.unwrap();
    let dlt = format!("{topic}.DLT");
    wait_for(60, || async {
        !bus.fetch(&dlt, 10).await.unwrap().is_empty()
    })
    .await
    .expect("dead-lettered");
    let dead = bus.fetch(&dlt, 10).await.unwrap();
    assert_eq!(dead[0].message.headers["dlt.attempts"], "1", "no retries");
    assert!(dead[0].message.headers["dlt.error"].contains("undecodable"));
    stop.cancel();
}

/// A topic deleted under live consumer groups (an operator's mistake, a migration gone
/// wrong): the host (the `firstcome` binary, in a process of its own so that a crash is seen)
/// keeps running, readiness says the topic is missing, admissions go on with their events
/// waiting in the outbox, and once the topic is created again readiness is back, the outbox
/// is published and the consumer group handles every event once. (librdkafka 2.12.1 crashed 0.1–0.5 s after such a deletion:
/// `host/src/kafka_guard.rs`.)
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_deleted_topic_crashes_no_host() {
    use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
    use rdkafka::client::DefaultClientContext;

    let dir = tempfile::tempdir().unwrap();
    let campaigns = dir.path().join("campaigns");
    std::fs::create_dir_all(&campaigns).unwrap();
    let campaign = unique("deleted");
    let text = crate::helpers::with_history(spec(100)).to_toml();
    std::fs::write(campaigns.join(format!("{campaign}.toml")), text).unwrap();
    let topic = unique("deleted-topic");
    let brokers = shared_brokers();
    let port = crate::helpers::free_port();
    let data = dir.path().join("data");
    let mut host = tokio::process::Command::new(env!("CARGO_BIN_EXE_firstcome"))
        .arg("serve")
        .env("FIRSTCOME_LISTEN", format!("127.0.0.1:{port}"))
        .env("FIRSTCOME_DATA_DIR", &data)
        .env("FIRSTCOME_CAMPAIGNS_DIR", &campaigns)
        .env("FIRSTCOME_PLUGINS__DIR", "/")
        .env("FIRSTCOME_KAFKA_BROKERS", &brokers)
        .env("FIRSTCOME_OUTBOX__TOPIC", &topic)
        .env("FIRSTCOME_KAFKA__SESSION_TIMEOUT_MS", "6000")
        .env("FIRSTCOME_KAFKA__GROUP_PREFIX", settings().group_prefix)
        // What waited in the outbox is sent again by the relay within a second.
        .env("FIRSTCOME_OUTBOX__REPUBLISH_AFTER_MS", "1000")
        .env(
            "RUST_LOG",
            std::env::var("FC_TEST_HOST_LOG").unwrap_or_else(|_| "warn".into()),
        )
        .kill_on_drop(true)
        .spawn()
        .expect("the firstcome binary runs");
    let base = format!("http://127.0.0.1:{port}");
    let client = reqwest::Client::new();
    crate::helpers::wait_ready(&client, &base, 60).await;
    let store = Store::open(&format!("sqlite:{}", data.join("firstcome.db").display()))
        .await
        .unwrap();
    let ask = |user: String| {
        let (client, url) = (
            client.clone(),
            format!("{base}/api/v1/campaigns/{campaign}/requests"),
        );
        async move {
            let r = client
                .post(url)
                .json(&serde_json::json!({ "user_id": user }))
                .send()
                .await
                .unwrap();
            r.status().as_u16()
        }
    };
    let handled = || async {
        let history = store.history_of_campaign(&campaign).await.unwrap();
        let users: HashSet<String> = history.iter().map(|h| h.user_id.clone()).collect();
        assert_eq!(
            users.len(),
            history.len(),
            "an event handled twice: {history:?}"
        );
        users.len()
    };
    for i in 0..5 {
        assert_eq!(ask(format!("before{i}")).await, 202);
    }
    wait_for(60, || async { handled().await == 5 })
        .await
        .expect("the first events handled");

    let admin: AdminClient<DefaultClientContext> = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", &brokers)
        .create()
        .unwrap();
    let options = AdminOptions::new();
    for result in admin.delete_topics(&[&topic], &options).await.unwrap() {
        result.expect("the topic is deleted");
    }
    let ready = || async {
        let r = client
            .get(format!("{base}/health/ready"))
            .send()
            .await
            .unwrap();
        let status = r.status().as_u16();
        (status, r.text().await.unwrap_or_default())
    };
    let reported = wait_for(30, || async {
        let (status, body) = ready().await;
        status == 503 && body.contains("does not exist")
    })
    .await;
    assert!(
        reported.is_some(),
        "readiness reports the missing topic: {:?}",
        ready().await
    );
    for i in 0..5 {
        assert_eq!(ask(format!("during{i}")).await, 202, "admissions go on");
    }
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert!(
        host.try_wait().unwrap().is_none(),
        "the host died after its topic was deleted"
    );
    let (waiting, _) = store.outbox_backlog().await.unwrap();
    assert!(
        waiting >= 5,
        "nothing is sent to the deleted topic: {waiting} events wait in the outbox"
    );

    let new = NewTopic::new(&topic, 6, TopicReplication::Fixed(1));
    for result in admin.create_topics(&[new], &options).await.unwrap() {
        result.expect("the topic is created again");
    }
    wait_for(60, || async { ready().await.0 == 200 })
        .await
        .expect("ready again once the topic is back");
    // What was admitted while the topic was gone waited in the outbox and is published once
    // it is back, and the history group, rewound to the new topic's beginning, handles it and
    // what comes after, every event once (`handled` fails on a duplicate).
    wait_for(60, || async {
        store
            .outbox_backlog()
            .await
            .is_ok_and(|(backlog, _)| backlog == 0)
    })
    .await
    .expect("the outbox's backlog is published once the topic is back");
    for i in 0..5 {
        assert_eq!(ask(format!("after{i}")).await, 202);
    }
    let resumed = wait_for(60, || async { handled().await == 15 }).await;
    assert!(
        resumed.is_some(),
        "the group handles what waited and what came after: {} of 15",
        handled().await
    );
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(handled().await, 15, "nothing handled twice");
    assert!(
        host.try_wait().unwrap().is_none(),
        "the host is still running"
    );
    host.kill().await.unwrap();
}
