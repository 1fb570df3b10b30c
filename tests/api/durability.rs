//! Every `202` is honoured: the embedded queue survives a killed process, a Redis that comes
//! back from an older snapshot is rebuilt instead of trusted, a Redis with AOF loses nothing
//! when killed, and a Redis without persistence loses its queue truthfully (statuses read
//! `none`, the users may ask again, the loss is counted).
//!
//! Real processes throughout: `firstcome serve`, and `redis-server`s of the tests' own on free
//! ports with the persistence each test needs.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use futures::StreamExt;
use serde_json::Value;

use crate::helpers::{
    Backend, Backends, TestApp, coupons, free_port, spawn_app_on, spec, unique, wait_for,
    wait_ready,
};

/// A `redis-server` of a test's own, on a free port, its data in a folder of the test's.
pub struct OwnRedis {
    dir: PathBuf,
    port: u16,
    args: Vec<String>,
    child: Option<std::process::Child>,
}

impl OwnRedis {
    /// Starts one with the given persistence settings (`redis-server` options).
    pub async fn start(dir: &Path, persistence: &[&str]) -> Self {
        let mut redis = Self {
            dir: dir.to_path_buf(),
            port: free_port(),
            args: persistence.iter().map(|a| a.to_string()).collect(),
            child: None,
        };
        redis.spawn().await;
        redis
    }

    async fn spawn(&mut self) {
        let child = std::process::Command::new("redis-server")
            .args(["--port", &self.port.to_string(), "--bind", "127.0.0.1"])
            .arg("--dir")
            .arg(&self.dir)
            .args(["--save", "", "--appendonly", "no"])
            .args(&self.args)
            .arg("--logfile")
            .arg(self.dir.join("redis.log"))
            .spawn()
            .expect("redis-server runs (Debian's redis-server package)");
        self.child = Some(child);
        let url = self.url();
        wait_for(30, || async {
            let Ok(client) = redis::Client::open(url.as_str()) else {
                return false;
            };
            let Ok(mut conn) = client.get_multiplexed_async_connection().await else {
                return false;
            };
            // Still loading its data answers LOADING.
            redis::cmd("PING")
                .query_async::<String>(&mut conn)
                .await
                .is_ok()
        })
        .await
        .expect("redis-server answers");
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/", self.port)
    }

    /// SIGKILL: nothing is written on the way out.
    fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            child.kill().unwrap();
            child.wait().unwrap();
        }
    }

    /// SIGSTOP: it stops answering but keeps its connections open, as a frozen or
    /// partitioned server does; [`OwnRedis::thaw`] lets it go on.
    pub fn freeze(&self) {
        self.signal("-STOP");
    }

    /// SIGCONT after [`OwnRedis::freeze`].
    pub fn thaw(&self) {
        self.signal("-CONT");
    }

    fn signal(&self, signal: &str) {
        let pid = self.child.as_ref().expect("running").id().to_string();
        let sent = std::process::Command::new("kill")
            .args([signal, &pid])
            .status()
            .unwrap();
        assert!(sent.success(), "kill {signal} {pid}");
    }

    /// Killed, then started again on the same data.
    pub async fn crash_and_restart(&mut self) {
        self.kill();
        self.spawn().await;
    }

    async fn cmd(&self, args: &[&str]) -> redis::Value {
        let client = redis::Client::open(self.url()).unwrap();
        let mut conn = client.get_multiplexed_async_connection().await.unwrap();
        let mut cmd = redis::cmd(args[0]);
        for a in &args[1..] {
            cmd.arg(*a);
        }
        cmd.query_async(&mut conn).await.unwrap()
    }
}

impl Drop for OwnRedis {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A counter of the host's `/metrics` for one campaign (0 when absent).
async fn metric(app: &TestApp, name: &str, campaign: &str) -> u64 {
    let text = app.text("/metrics").await;
    let series = format!("{name}{{campaign=\"{campaign}\"}} ");
    text.lines()
        .find_map(|l| l.strip_prefix(&series)?.trim().parse().ok())
        .unwrap_or(0)
}

/// Asks until the answer is not `503` (the queue restarting): what a user's retry sees.
async fn ask(app: &TestApp, campaign: &str, user: &str) -> (u16, Value) {
    for _ in 0..100 {
        let (status, body) = app.request(campaign, user).await;
        if status != 503 {
            return (status, body);
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("{user}: still 503 after 5 s");
}

/// A user's request status, asked again while the answer is `503` (the queue restarting).
async fn status_of(app: &TestApp, campaign: &str, user: &str) -> Value {
    for _ in 0..100 {
        let (status, body) = app
            .get(&format!("/api/v1/campaigns/{campaign}/requests/{user}"))
            .await;
        if status != 503 {
            assert_eq!(status, 200, "{body}");
            return body;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("{user}: status still 503 after 5 s");
}

// --- the embedded default, a real process killed ---------------------------------------------

/// When the process is killed.
#[derive(Clone, Copy, Debug, PartialEq)]
enum KillAt {
    /// While requests are being admitted (after 300 answers of 202).
    Admitting,
    /// After the last answer, once coupons are being issued but not all are.
    Draining,
    /// Right after the last answer.
    AfterLastAnswer,
}

/// A real `firstcome serve` on the embedded default: 3,000 users ask at once for 2,000
/// coupons, the process is killed with SIGKILL, and started again on the same data. Every
/// user answered `202` then holds exactly one coupon, at the position they were told; a
/// coupon goes to no one else but users whose answer the kill cut off.
async fn embedded_process_killed(at: KillAt) {
    const USERS: usize = 3_000;
    const CAPACITY: usize = 2_000;
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let campaigns = dir.path().join("campaigns");
    std::fs::create_dir_all(&campaigns).unwrap();
    let id = unique("durable");
    std::fs::write(
        campaigns.join(format!("{id}.toml")),
        format!("name = \"Durable\"\ncapacity = {CAPACITY}\nvalue = 1\nchunk_size = 1\n"),
    )
    .unwrap();
    let start = || {
        let port = free_port();
        let child = tokio::process::Command::new(env!("CARGO_BIN_EXE_firstcome"))
            .arg("serve")
            .env("FIRSTCOME_LISTEN", format!("127.0.0.1:{port}"))
            .env("FIRSTCOME_DATA_DIR", &data)
            .env("FIRSTCOME_CAMPAIGNS_DIR", &campaigns)
            .env("FIRSTCOME_PLUGINS__DIR", "/")
            .env("RUST_LOG", "warn")
            .kill_on_drop(true)
            .spawn()
            .unwrap();
        (child, format!("http://127.0.0.1:{port}"))
    };
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(256)
        .build()
        .unwrap();

    let (mut first, base) = start();
    wait_ready(&client, &base, 60).await;
    let store =
        firstcome_store::Store::connect(&format!("sqlite:{}", data.join("firstcome.db").display()))
            .await
            .unwrap();
    let answered = Arc::new(AtomicUsize::new(0));
    let storm = futures::stream::iter(0..USERS)
        .map(|i| {
            let (client, answered) = (client.clone(), answered.clone());
            let url = format!("{base}/api/v1/campaigns/{id}/requests");
            async move {
                let user = format!("user{i}");
                let r = client
                    .post(url)
                    .json(&serde_json::json!({ "user_id": user }))
                    .timeout(Duration::from_secs(30))
                    .send()
                    .await;
                let answer = match r {
                    Ok(r) => {
                        let status = r.status().as_u16();
                        let body: Value = r.json().await.unwrap_or(Value::Null);
                        Some((status, body["position"].as_i64()))
                    }
                    Err(_) => None,
                };
                if matches!(answer, Some((202, _))) {
                    answered.fetch_add(1, Ordering::Relaxed);
                }
                (user, answer)
            }
        })
        .buffer_unordered(200)
        .collect::<Vec<_>>();
    let answers = if at == KillAt::Admitting {
        let killer = async {
            wait_for(60, || async { answered.load(Ordering::Relaxed) >= 300 })
                .await
                .expect("admissions start");
            first.start_kill().unwrap();
        };
        let (answers, ()) = tokio::join!(storm, killer);
        answers
    } else {
        let answers = storm.await;
        if at == KillAt::Draining {
            wait_for(60, || async {
                store.count_coupons(&id).await.unwrap() >= 100
            })
            .await
            .expect("issuing starts");
        }
        first.start_kill().unwrap();
        answers
    };
    first.wait().await.unwrap();
    let at_kill = store.count_coupons(&id).await.unwrap();
    let accepted: HashMap<String, i64> = answers
        .iter()
        .filter_map(|(u, a)| match a {
            Some((202, Some(p))) => Some((u.clone(), *p)),
            _ => None,
        })
        .collect();
    let cut_off: HashSet<&String> = answers
        .iter()
        .filter(|(_, a)| a.is_none())
        .map(|(u, _)| u)
        .collect();
    assert!(!accepted.is_empty());
    if at == KillAt::Admitting {
        assert!(!cut_off.is_empty(), "killed while requests were in flight");
    }
    if at != KillAt::AfterLastAnswer || at_kill < accepted.len() as i64 {
        assert!(
            at_kill < accepted.len() as i64,
            "killed before everything was issued: {at_kill} of {}",
            accepted.len()
        );
    }

    let (_second, base) = start();
    wait_ready(&client, &base, 60).await;
    wait_for(120, || async {
        let issued: HashSet<String> = coupons(&store, &id)
            .await
            .into_iter()
            .map(|(u, _)| u)
            .collect();
        accepted.keys().all(|u| issued.contains(u))
    })
    .await
    .unwrap_or_else(|| panic!("{at:?}: not every 202 was issued after the restart"));
    // Whatever else was recorded is handled too: the durable record empties.
    wait_for(60, || async {
        store.recorded_admissions(&id).await.unwrap().is_empty()
    })
    .await
    .expect("every recorded admission is handled");

    let issued = coupons(&store, &id).await;
    let holders: HashMap<&String, i64> = issued.iter().map(|(u, p)| (u, *p)).collect();
    assert_eq!(holders.len(), issued.len(), "a user holds two coupons");
    assert!(issued.len() <= CAPACITY);
    for (user, position) in &accepted {
        assert_eq!(
            holders.get(user),
            Some(position),
            "{at:?}: {user} was answered 202 at position {position}"
        );
    }
    for (user, _) in &issued {
        assert!(
            accepted.contains_key(user) || cut_off.contains(user),
            "{at:?}: {user} holds a coupon but was refused"
        );
    }
    assert_eq!(store.issued_count(&id).await.unwrap(), issued.len() as i64);
    eprintln!(
        "{at:?}: {} answered 202, {} cut off by the kill, {at_kill} issued at the kill, {} issued \
         in the end",
        accepted.len(),
        cut_off.len(),
        issued.len()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn embedded_process_killed_while_admitting_honours_every_202() {
    embedded_process_killed(KillAt::Admitting).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn embedded_process_killed_while_draining_honours_every_202() {
    embedded_process_killed(KillAt::Draining).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn embedded_process_killed_after_the_last_answer_honours_every_202() {
    embedded_process_killed(KillAt::AfterLastAnswer).await;
}

/// The embedded queue on each database: 60 admitted at once (group commits), 10 issued, the
/// queue dropped as a process would be; a new one comes back from the record with the other
/// 50 in line, in order, the claimed-but-never-committed first, and the 10 holders known.
async fn embedded_queue_comes_back_from_its_record(backend: Backend) {
    use firstcome_admission::embedded::EmbeddedAdmission;
    use firstcome_admission::{Admission, Admit, Floor};
    let dir = tempfile::tempdir().unwrap();
    let url = crate::helpers::fresh_database(backend, dir.path()).await;
    let store = firstcome_store::Store::open(&url).await.unwrap();
    let campaign = firstcome_core::campaign::Campaign::new(&unique("c"), spec(100)).unwrap();
    store.upsert_campaign(&campaign).await.unwrap();
    let first = Arc::new(EmbeddedAdmission::new(store.clone()));
    first.sync_campaign(&campaign, &[], false).await.unwrap();
    let answers: Vec<Admit> = futures::stream::iter(0..60)
        .map(|i| {
            let (q, id) = (first.clone(), campaign.id().to_owned());
            async move {
                q.admit(&id, &format!("u{i}"), "r", 0, Floor::default())
                    .await
                    .unwrap()
            }
        })
        .buffer_unordered(60)
        .collect()
        .await;
    assert!(answers.iter().all(|a| matches!(a, Admit::Admitted { .. })));
    let issued_chunk = first.claim(campaign.id(), "h", 10, None).await.unwrap();
    let outcome = store
        .issue_chunk(campaign.id(), &issued_chunk, "h", "coupon-issued")
        .await
        .unwrap();
    assert_eq!(outcome.events.len(), 10);
    first.ack(campaign.id(), &issued_chunk).await.unwrap();
    let claimed = first.claim(campaign.id(), "h", 5, None).await.unwrap();
    drop(first);

    let second = EmbeddedAdmission::new(store.clone());
    let holders = store.issued_users(campaign.id()).await.unwrap();
    assert!(
        second
            .sync_campaign(&campaign, &holders, false)
            .await
            .unwrap()
    );
    let counts = second.counts(campaign.id()).await.unwrap();
    assert_eq!((counts.admitted, counts.queued), (60, 50), "{backend:?}");
    // Claimed but never committed: back in line, first.
    let again = second.claim(campaign.id(), "h", 100, None).await.unwrap();
    assert_eq!(again[..5], claimed[..], "{backend:?}");
    let positions: Vec<i64> = again.iter().map(|i| i.position).collect();
    assert_eq!(positions, (11..=60).collect::<Vec<_>>(), "{backend:?}");
    for item in issued_chunk.iter().chain(&again[..3]) {
        assert_eq!(
            second
                .admit(campaign.id(), &item.user_id, "r", 0, Floor::default())
                .await
                .unwrap(),
            Admit::Duplicate {
                position: item.position
            }
        );
    }
    // What was handled leaves the record (the 10 issued, whether the first queue's writer
    // deleted them before it was dropped or the second one did): 50 rows are left.
    wait_for(10, || async {
        store
            .recorded_admissions(campaign.id())
            .await
            .unwrap()
            .len()
            == 50
    })
    .await
    .unwrap_or_else(|| panic!("{backend:?}: the issued rows stay in the record"));
}

crate::on_all_backends!(
    embedded_queue_record,
    embedded_queue_comes_back_from_its_record
);

// --- Redis -------------------------------------------------------------------------------------

/// Redis with RDB snapshots: 10 issued, `SAVE`, 10 more issued (sold out), Redis killed and
/// started from the older snapshot. New users are told `410 sold_out`, never `202` with a
/// position someone holds; every holder is told `409` with their position. With `shards`,
/// each bucket is checked against its own floor (the database's marks per bucket).
async fn redis_restored_from_an_older_snapshot(backend: Backend, shards: u32) {
    let dir = Arc::new(tempfile::tempdir().unwrap());
    let mut redis = OwnRedis::start(dir.path(), &[]).await;
    let backends = Backends::open_with_redis(backend, dir.path(), &redis.url()).await;
    let app = spawn_app_on(backends.clone(), dir.clone(), |_| {}).await;
    let spec = firstcome_core::campaign::CampaignSpec {
        shards: Some(shards),
        ..spec(20)
    };
    let id = app.campaign(spec.clone()).await;
    let mut positions = HashMap::new();
    for i in 0..10 {
        let (status, body) = app.request(&id, &format!("early{i}")).await;
        assert_eq!(status, 202);
        positions.insert(format!("early{i}"), body["position"].as_i64().unwrap());
    }
    app.wait_issued(&id, 10, 20).await;
    assert_eq!(redis.cmd(&["SAVE"]).await, redis::Value::Okay);
    // A second host, which will issue nothing of what follows itself: after the restart it
    // knows the floor only from the database.
    let other = spawn_app_on(backends.reopen().await, dir.clone(), |_| {}).await;
    other
        .platform
        .apply_campaign(firstcome_core::campaign::Campaign::new(&id, spec).unwrap())
        .await
        .unwrap();
    for i in 0..10 {
        let (status, body) = app.request(&id, &format!("late{i}")).await;
        assert_eq!(status, 202);
        positions.insert(format!("late{i}"), body["position"].as_i64().unwrap());
    }
    app.wait_issued(&id, 20, 20).await;
    redis.crash_and_restart().await;
    let mut admitted = 0;
    for k in &firstcome_admission::redis::layout::Layout::new(&id, shards).keys {
        if let redis::Value::BulkString(n) = redis.cmd(&["HGET", &k.meta, "admitted"]).await {
            admitted += String::from_utf8(n).unwrap().parse::<i64>().unwrap();
        }
    }
    assert_eq!(admitted, 10, "the older snapshot");

    // Both hosts refuse the stale state, the second one asked first.
    for (i, host) in [&other, &app, &other, &app].iter().enumerate() {
        for j in 0..5 {
            let user = format!("new{i}-{j}");
            let (status, body) = ask(host, &id, &user).await;
            assert_eq!(
                (status, body["code"].as_str()),
                (410, Some("sold_out")),
                "{user}: {body}"
            );
            assert_eq!(status_of(host, &id, &user).await["status"], "none");
        }
    }
    for (user, position) in &positions {
        for host in [&app, &other] {
            let (status, body) = ask(host, &id, user).await;
            assert_eq!(
                (status, body["code"].as_str()),
                (409, Some("duplicate_request")),
                "{user}: {body}"
            );
            assert!(
                body["message"]
                    .as_str()
                    .unwrap()
                    .contains(&format!("(position {position})")),
                "{body}"
            );
            let status = status_of(host, &id, user).await;
            assert_eq!(
                (status["status"].as_str(), status["position"].as_i64()),
                (Some("issued"), Some(*position))
            );
        }
    }
    let issued = coupons(&backends.store, &id).await;
    assert_eq!(issued.len(), 20);
    assert!(metric(&app, "firstcome_admission_rebuilds_total", &id).await >= 1);
    assert_eq!(
        metric(&app, "firstcome_admissions_lost_total", &id).await,
        0
    );
    other.stop().await;
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn redis_restored_from_an_older_snapshot_is_rebuilt_on_mariadb() {
    redis_restored_from_an_older_snapshot(Backend::RedisMariaDb, 1).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn redis_restored_from_an_older_snapshot_is_rebuilt_on_postgres() {
    redis_restored_from_an_older_snapshot(Backend::RedisPostgres, 1).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_split_campaign_restored_from_an_older_snapshot_is_rebuilt_on_mariadb() {
    redis_restored_from_an_older_snapshot(Backend::RedisMariaDb, 3).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_split_campaign_restored_from_an_older_snapshot_is_rebuilt_on_postgres() {
    redis_restored_from_an_older_snapshot(Backend::RedisPostgres, 3).await;
}

/// A split campaign (capacity 12, 3 buckets of 4) on Redis with RDB snapshots: bucket 0's four
/// users are issued, `SAVE`, then six more of bucket 0 are issued with stock granted by buckets 1
/// and 2. Redis is killed and started from the snapshot, which has none of the grants: buckets
/// 1 and 2 hold their 4 again and are not behind their own floors (nobody of theirs was
/// issued). Their users, asking first, must get only the 2 coupons left, never 8.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_giver_restored_from_an_older_snapshot_does_not_reuse_its_grants() {
    use firstcome_core::queue::bucket_of;
    let dir = Arc::new(tempfile::tempdir().unwrap());
    let mut redis = OwnRedis::start(dir.path(), &[]).await;
    let backends = Backends::open_with_redis(Backend::RedisMariaDb, dir.path(), &redis.url()).await;
    let app = spawn_app_on(backends.clone(), dir.clone(), |_| {}).await;
    let id = app
        .campaign(firstcome_core::campaign::CampaignSpec {
            shards: Some(3),
            ..spec(12)
        })
        .await;
    let users_of = |bucket: u32, n: usize| -> Vec<String> {
        (0..)
            .map(|i| format!("user-{i}"))
            .filter(|u| bucket_of(u, 3) == bucket)
            .take(n)
            .collect()
    };
    let zero = users_of(0, 10);
    for user in &zero[..4] {
        assert_eq!(app.request(&id, user).await.0, 202);
    }
    app.wait_issued(&id, 4, 20).await;
    assert_eq!(redis.cmd(&["SAVE"]).await, redis::Value::Okay);
    for user in &zero[4..] {
        assert_eq!(
            app.request(&id, user).await.0,
            202,
            "{user}: stock from the others"
        );
    }
    app.wait_issued(&id, 10, 20).await;
    redis.crash_and_restart().await;
    let mut admitted = 0;
    for user in users_of(1, 4).iter().chain(&users_of(2, 4)) {
        let (status, body) = ask(&app, &id, user).await;
        match status {
            202 => admitted += 1,
            410 => {}
            other => panic!("{user}: {other} {body}"),
        }
    }
    assert_eq!(admitted, 2, "only the 2 coupons left");
    app.wait_issued(&id, 12, 20).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(coupons(&backends.store, &id).await.len(), 12);
    app.platform
        .guard()
        .sweep(std::time::Instant::now() + Duration::from_secs(120))
        .await
        .unwrap();
    assert_eq!(
        metric(&app, "firstcome_admissions_lost_total", &id).await,
        0,
        "no 202 was refused by the database"
    );
    app.stop().await;
}

/// Redis with an append-only file, killed with SIGKILL in the middle of a storm and started
/// again: with `always`, every request answered `202` is issued and nothing is counted lost;
/// with `everysec` the same, unless Redis postponed its AOF write behind a slow fsync, and then
/// every lost answer is counted.
async fn redis_with_aof_killed_mid_storm(appendfsync: &str) {
    const USERS: usize = 1_500;
    const CAPACITY: i64 = 1_000;
    let dir = Arc::new(tempfile::tempdir().unwrap());
    let mut redis = OwnRedis::start(
        dir.path(),
        &["--appendonly", "yes", "--appendfsync", appendfsync],
    )
    .await;
    let backends = Backends::open_with_redis(Backend::RedisMariaDb, dir.path(), &redis.url()).await;
    let app = spawn_app_on(backends.clone(), dir.clone(), |_| {}).await;
    let guarantee = app.get("/health/ready").await.1["admission_guarantee"].clone();
    assert!(
        guarantee
            .as_str()
            .unwrap()
            .contains(&format!("appendonly yes, appendfsync {appendfsync}")),
        "{guarantee}"
    );
    let mut campaign = spec(CAPACITY);
    campaign.chunk_size = Some(1);
    let id = app.campaign(campaign).await;
    let answered = Arc::new(AtomicUsize::new(0));
    let storm = futures::stream::iter(0..USERS)
        .map(|i| {
            let (app, id, answered) = (&app, &id, answered.clone());
            async move {
                let user = format!("user{i}");
                let (status, body) = app.request(id, &user).await;
                if status == 202 {
                    answered.fetch_add(1, Ordering::Relaxed);
                }
                (user, status, body["position"].as_i64())
            }
        })
        .buffer_unordered(100)
        .collect::<Vec<_>>();
    let killer = async {
        wait_for(60, || async { answered.load(Ordering::Relaxed) >= 400 })
            .await
            .expect("admissions start");
        redis.crash_and_restart().await;
    };
    let (answers, ()) = tokio::join!(storm, killer);
    let accepted: HashMap<String, i64> = answers
        .iter()
        .filter(|(_, s, _)| *s == 202)
        .map(|(u, _, p)| (u.clone(), p.unwrap()))
        .collect();
    for (_, status, _) in &answers {
        assert!(matches!(status, 202 | 410 | 503), "{status}");
    }
    // Those told 503 ask again; the campaign then ends exactly full.
    for (user, status, _) in &answers {
        if *status == 503 {
            let (status, _) = ask(&app, &id, user).await;
            assert!(matches!(status, 202 | 409 | 410), "{user}: {status}");
        }
    }
    app.wait_issued(&id, CAPACITY, 60).await;
    let issued = coupons(&backends.store, &id).await;
    assert_eq!(issued.len() as i64, CAPACITY);
    let holders: HashMap<&String, i64> = issued.iter().map(|(u, p)| (u, *p)).collect();
    assert_eq!(holders.len(), issued.len(), "a user holds two coupons");
    let missing: Vec<(&String, &i64)> = accepted
        .iter()
        .filter(|(user, position)| holders.get(user) != Some(*position))
        .collect();
    if appendfsync == "always" || missing.is_empty() {
        assert!(
            missing.is_empty(),
            "appendfsync {appendfsync}: answered 202 and not issued at their place: {missing:?}"
        );
        assert_eq!(
            metric(&app, "firstcome_admissions_lost_total", &id).await,
            0
        );
    } else {
        // With `everysec`, Redis postpones its AOF write (for up to 2 s) while a background
        // fsync is still running on a busy disk, and answers meanwhile: a SIGKILL then loses
        // those answers. The promise is then that every such loss is detected and counted.
        let counted = wait_for(30, || async {
            metric(&app, "firstcome_admissions_lost_total", &id).await >= missing.len() as u64
        })
        .await;
        assert!(
            counted.is_some(),
            "appendfsync everysec: {} answered 202 were lost and not all counted: {missing:?}",
            missing.len()
        );
        eprintln!(
            "appendfsync everysec: Redis postponed its AOF write; {} answered 202 lost, all counted",
            missing.len()
        );
    }
    eprintln!(
        "appendfsync {appendfsync}: {} answered 202 before and after the kill, {} lost",
        accepted.len(),
        missing.len()
    );
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn redis_with_aof_everysec_killed_mid_storm_honours_every_202() {
    redis_with_aof_killed_mid_storm("everysec").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn redis_with_aof_always_killed_mid_storm_honours_every_202() {
    redis_with_aof_killed_mid_storm("always").await;
}

/// Redis without persistence, restarted while 50 admitted requests wait for their coupons:
/// their statuses read `none` (not `queued`), the loss is counted, and the users may ask again
/// and are admitted; the 30 issued before are untouched.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn redis_without_persistence_loses_its_queue_truthfully() {
    let dir = Arc::new(tempfile::tempdir().unwrap());
    let mut redis = OwnRedis::start(dir.path(), &[]).await;
    let backends =
        Backends::open_with_redis(Backend::RedisPostgres, dir.path(), &redis.url()).await;
    let app = spawn_app_on(backends.clone(), dir.clone(), |_| {}).await;
    let guarantee = app.get("/health/ready").await.1["admission_guarantee"].clone();
    assert!(
        guarantee
            .as_str()
            .unwrap()
            .contains("keeps nothing on disk"),
        "{guarantee}"
    );
    let id = app.campaign(spec(100)).await;
    for i in 0..30 {
        assert_eq!(app.request(&id, &format!("early{i}")).await.0, 202);
    }
    app.wait_issued(&id, 30, 20).await;
    // The issuer pauses, so that the next 50 wait in the queue when Redis goes.
    app.platform.issuers().stop(&id);
    for i in 0..50 {
        assert_eq!(app.request(&id, &format!("queued{i}")).await.0, 202);
        assert_eq!(
            status_of(&app, &id, &format!("queued{i}")).await["status"],
            "queued"
        );
    }
    redis.crash_and_restart().await;
    for i in 0..50 {
        assert_eq!(
            status_of(&app, &id, &format!("queued{i}")).await["status"],
            "none",
            "a lost request does not read queued"
        );
    }
    // The issuer finds the queue gone, rebuilds it and counts what this host had promised.
    let campaign = app.platform.campaign(&id).unwrap();
    app.platform.issuers().run(campaign);
    wait_for(20, || async {
        metric(&app, "firstcome_admissions_lost_total", &id).await == 50
    })
    .await
    .expect("the 50 lost admissions are counted");
    for i in 0..30 {
        let s = status_of(&app, &id, &format!("early{i}")).await;
        assert_eq!(s["status"], "issued");
    }
    for i in 0..50 {
        let user = format!("queued{i}");
        assert_eq!(status_of(&app, &id, &user).await["status"], "none");
        let (status, body) = ask(&app, &id, &user).await;
        assert_eq!(status, 202, "{user} may ask again: {body}");
    }
    app.wait_issued(&id, 80, 20).await;
    assert_eq!(
        metric(&app, "firstcome_admissions_lost_total", &id).await,
        50
    );
    wait_for(10, || async { app.platform.guard().unconfirmed(&id) == 0 })
        .await
        .expect("the host has seen every coupon it promised");
    app.stop().await;
}

/// Lowering a campaign's capacity below the requests already answered `202` would break their
/// promise: refused with the reason, whether they are issued yet or still queued.
async fn capacity_below_admitted_is_refused(backend: Backend) {
    let dir = Arc::new(tempfile::tempdir().unwrap());
    let backends = Backends::open(backend, dir.path()).await;
    let app = spawn_app_on(backends, dir, |_| {}).await;
    let id = app.campaign(spec(10)).await;
    app.platform.issuers().stop(&id);
    for i in 0..5 {
        assert_eq!(app.request(&id, &format!("u{i}")).await.0, 202);
    }
    let apply = |capacity: i64| {
        app.platform
            .apply_campaign(firstcome_core::campaign::Campaign::new(&id, spec(capacity)).unwrap())
    };
    let refused = apply(4).await.unwrap_err();
    assert!(
        refused
            .to_string()
            .contains("capacity 4 is below the 5 requests already admitted"),
        "{refused}"
    );
    assert_eq!(
        app.get(&format!("/api/v1/campaigns/{id}")).await.1["capacity"],
        10
    );
    apply(5).await.unwrap();
    app.platform
        .issuers()
        .run(app.platform.campaign(&id).unwrap());
    app.wait_issued(&id, 5, 20).await;
    assert_eq!(app.request(&id, "late").await.1["code"], "sold_out");
    app.stop().await;
}

crate::on_all_backends!(capacity_below_admitted, capacity_below_admitted_is_refused);

/// The ledger of one host's `202`s against a Redis that loses a campaign while a chunk is in
/// flight: the late chunk's holders are settled into the rebuilt state (a holder is told
/// `409`, never a new place), they are not counted lost, and a user lost with the queue and
/// answered again at a reused place is counted once.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_chunk_in_flight_across_a_loss_is_settled_and_the_ledger_counts_right() {
    use firstcome_admission::redis::RedisAdmission;
    use firstcome_admission::{Admission, Admit};
    use firstcome_platform::queue_guard::{QueueGuard, SETTLE};
    // The process's metrics recorder, before anything counts.
    let metrics = firstcome_platform::monitoring::handle();
    let dir = tempfile::tempdir().unwrap();
    let redis = OwnRedis::start(dir.path(), &[]).await;
    let url = crate::helpers::fresh_database(Backend::RedisPostgres, dir.path()).await;
    let store = firstcome_store::Store::open(&url).await.unwrap();
    let queue: Arc<dyn Admission> = Arc::new(RedisAdmission::connect(&redis.url()).await.unwrap());
    let guard = QueueGuard::new(store.clone(), queue.clone());
    let campaign = firstcome_core::campaign::Campaign::new(&unique("c"), spec(5)).unwrap();
    store.upsert_campaign(&campaign).await.unwrap();
    guard.resync(&campaign, false).await.unwrap();
    let id = campaign.id().to_owned();
    let admit = |user: &str| {
        let (queue, guard, id, user) = (queue.clone(), &guard, id.clone(), user.to_owned());
        async move {
            let floor = guard.floor(&id, 1, 0).await;
            let outcome = queue.admit(&id, &user, "r", 0, floor).await.unwrap();
            if let Admit::Admitted { position } = outcome {
                guard.answered(&id, &user, position);
            }
            outcome
        }
    };
    for user in ["a1", "a2", "lost"] {
        assert!(matches!(admit(user).await, Admit::Admitted { .. }));
    }
    // A slow host claims a1 and a2; then Redis loses everything.
    let in_flight = queue.claim(&id, "slow", 2, None).await.unwrap();
    assert_eq!(in_flight.len(), 2);
    assert_eq!(redis.cmd(&["FLUSHALL"]).await, redis::Value::Okay);
    assert!(
        guard.resync(&campaign, false).await.unwrap(),
        "rebuilt from nothing issued"
    );
    // The lost user asks again before anything was swept: admitted at a reused place.
    let again = admit("lost").await;
    assert!(matches!(again, Admit::Admitted { .. }), "{again:?}");
    // The slow chunk commits after the rebuild and is settled into the new state.
    let outcome = store
        .issue_chunk(&id, &in_flight, "slow", "t")
        .await
        .unwrap();
    assert_eq!(outcome.events.len(), 2);
    let holders: Vec<(String, i64)> = in_flight
        .iter()
        .map(|i| (i.user_id.clone(), i.position))
        .collect();
    assert_eq!(queue.settle(&id, &holders).await.unwrap(), 2);
    guard.raise(&id, 1, outcome.mark, &[]);
    for item in &in_flight {
        assert_eq!(
            admit(&item.user_id).await,
            Admit::Duplicate {
                position: item.position
            },
            "a holder is told 409 at their place"
        );
    }
    // Capacity 5: a1, a2 (issued), lost (again) and two more; the sixth is sold out, and no
    // admitted request is refused by the database.
    for user in ["b1", "b2"] {
        assert!(matches!(admit(user).await, Admit::Admitted { .. }));
    }
    assert_eq!(admit("b3").await, Admit::SoldOut);
    let rest = queue.claim(&id, "h", 10, None).await.unwrap();
    let outcome = store.issue_chunk(&id, &rest, "h", "t").await.unwrap();
    assert!(outcome.refused.is_empty(), "{:?}", outcome.refused);
    guard.issued(&id, rest.iter().map(|i| i.user_id.as_str()));
    // a1 and a2 are issued, not lost; `lost` was counted when answered again.
    let swept = guard
        .sweep(std::time::Instant::now() + SETTLE)
        .await
        .unwrap();
    assert_eq!(swept, 0, "nothing more is lost");
    assert_eq!(guard.unconfirmed(&id), 0);
    let series = format!("firstcome_admissions_lost_total{{campaign=\"{id}\"}} ");
    let counted: Vec<String> = metrics
        .render()
        .lines()
        .filter_map(|l| l.strip_prefix(&series).map(str::to_owned))
        .collect();
    assert_eq!(counted, ["1"], "the lost user, once");
}
