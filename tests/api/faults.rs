//! Faults: several hosts, failing transactions, dead hosts, Redis losing its data. In every
//! case: no request lost, no coupon twice, never more than capacity.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use firstcome_admission::Admission;
use firstcome_store::Dialect;
use futures::StreamExt;

use crate::helpers::{
    Backend, Backends, coupons, lose_queue_data, spawn_app_on, spec, storm, unique, wait_for,
    wait_ready,
};
use crate::on_all_backends;

fn assert_no_duplicates(issued: &[(String, i64)]) {
    let users: HashSet<&String> = issued.iter().map(|(u, _)| u).collect();
    assert_eq!(users.len(), issued.len(), "a user holds two coupons");
}

async fn two_hosts_drain_one_campaign(backend: Backend) {
    let dir = Arc::new(tempfile::tempdir().unwrap());
    let backends = Backends::open(backend, dir.path()).await;
    let one = spawn_app_on(backends.clone(), dir.clone(), |_| {}).await;
    let two = spawn_app_on(backends.reopen().await, dir.clone(), |_| {}).await;
    let id = one.campaign(spec(300)).await;
    let mut spec = spec(300);
    spec.chunk_size = Some(7);
    one.platform
        .apply_campaign(firstcome_core::campaign::Campaign::new(&id, spec.clone()).unwrap())
        .await
        .unwrap();
    two.platform
        .apply_campaign(firstcome_core::campaign::Campaign::new(&id, spec).unwrap())
        .await
        .unwrap();

    let users: Vec<String> = (0..1000).flat_map(|u| vec![format!("u{u}"); 2]).collect();
    let accepted = storm(&[&one, &two], &id, users, false).await;
    // The embedded queue lives in one process: there, both hosts share one instance.
    assert_eq!(accepted.len(), 300);
    one.wait_issued(&id, 300, 30).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let issued = coupons(&backends.store, &id).await;
    assert_eq!(issued.len(), 300);
    assert_no_duplicates(&issued);
    for (user, position) in &issued {
        assert_eq!(accepted.get(user), Some(position));
    }
    two.stop().await;
    one.stop().await;
}

on_all_backends!(two_hosts, two_hosts_drain_one_campaign);

/// Creates a campaign and admits `users` straight into its queue, before any issuer runs.
async fn queue_before_issuing(backends: &Backends, capacity: i64, users: &[String]) -> String {
    let id = unique("c");
    let campaign = firstcome_core::campaign::Campaign::new(&id, spec(capacity)).unwrap();
    backends.store.upsert_campaign(&campaign).await.unwrap();
    backends
        .admission
        .sync_campaign(&campaign, &[], false)
        .await
        .unwrap();
    for u in users {
        let admitted = backends
            .admission
            .admit(&id, u, "r", 0, Default::default())
            .await
            .unwrap();
        assert!(matches!(
            admitted,
            firstcome_admission::Admit::Admitted { .. }
        ));
    }
    id
}

/// Makes every outbox insert for `user` fail, inside the chunk transaction.
async fn poison(store: &firstcome_store::Store, user: &str) {
    let sql = match store.dialect() {
        Dialect::Sqlite => format!(
            "CREATE TRIGGER poison BEFORE INSERT ON outbox WHEN NEW.event_key = '{user}' \
             BEGIN SELECT RAISE(ABORT, 'poisoned'); END"
        ),
        Dialect::MySql | Dialect::Postgres => {
            format!("ALTER TABLE outbox ADD CONSTRAINT poison CHECK (event_key <> '{user}')")
        }
    };
    sqlx::raw_sql(&sql).execute(store.pool()).await.unwrap();
}

async fn cure(store: &firstcome_store::Store) {
    let sql = match store.dialect() {
        Dialect::Sqlite => "DROP TRIGGER poison",
        Dialect::MySql => "ALTER TABLE outbox DROP CONSTRAINT poison",
        Dialect::Postgres => "ALTER TABLE outbox DROP CONSTRAINT poison",
    };
    sqlx::raw_sql(sql).execute(store.pool()).await.unwrap();
}

async fn failing_chunk_is_retried_whole(backend: Backend) {
    let dir = Arc::new(tempfile::tempdir().unwrap());
    let backends = Backends::open(backend, dir.path()).await;
    poison(&backends.store, "poisoned-user").await;
    let app = spawn_app_on(backends.clone(), dir, |_| {}).await;
    // The poisoned user is 5th in the first chunk (all 30: the default chunk takes up to
    // 500): the queue is filled before the issuer starts, so that chunk is whole.
    let mut users: Vec<String> = (1..=30).map(|i| format!("u{i}")).collect();
    users[4] = "poisoned-user".into();
    let id = queue_before_issuing(&backends, 30, &users).await;
    app.platform
        .apply_campaign(firstcome_core::campaign::Campaign::new(&id, spec(30)).unwrap())
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(800)).await;
    // The chunk failed as a whole: not one of its coupons, outbox rows or count survived.
    assert_eq!(backends.store.count_coupons(&id).await.unwrap(), 0);
    assert_eq!(backends.store.outbox_backlog().await.unwrap().0, 0);
    assert_eq!(backends.store.issued_count(&id).await.unwrap(), 0);
    let (_, status) = app
        .get(&format!("/api/v1/campaigns/{id}/requests/u1"))
        .await;
    assert_eq!(status["status"], "queued", "still waiting, not lost");

    cure(&backends.store).await;
    app.wait_issued(&id, 30, 20).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let issued = coupons(&backends.store, &id).await;
    assert_eq!(issued.len(), 30);
    assert_no_duplicates(&issued);
    let positions: Vec<i64> = issued.iter().map(|(_, p)| *p).collect();
    assert_eq!(positions, (1..=30).collect::<Vec<_>>());
    app.stop().await;
}

on_all_backends!(failing_chunk, failing_chunk_is_retried_whole);

async fn dead_hosts_claims_are_reclaimed(backend: Backend) {
    let dir = Arc::new(tempfile::tempdir().unwrap());
    let backends = Backends::open(backend, dir.path()).await;
    let app = spawn_app_on(backends.clone(), dir, |c| c.issuer.reclaim_idle_ms = 400).await;
    // A second "host" claims half the queue before this one's issuer starts, and dies.
    let users: Vec<String> = (0..20).map(|i| format!("u{i}")).collect();
    let id = queue_before_issuing(&backends, 20, &users).await;
    let campaign = firstcome_core::campaign::Campaign::new(&id, spec(20)).unwrap();
    let dead: &Arc<dyn Admission> = &backends.admission;
    let claimed = dead.claim(&id, "dead-host", 10, None).await.unwrap();
    assert_eq!(claimed.len(), 10);

    app.platform.apply_campaign(campaign).await.unwrap();
    app.wait_issued(&id, 20, 20).await;
    tokio::time::sleep(Duration::from_millis(600)).await;
    let issued = coupons(&backends.store, &id).await;
    assert_eq!(issued.len(), 20);
    assert_no_duplicates(&issued);
    assert_eq!(
        backends.admission.counts(&id).await.unwrap().queued,
        0,
        "all acknowledged"
    );
    app.stop().await;
}

on_all_backends!(dead_host, dead_hosts_claims_are_reclaimed);

/// Redis loses everything (FLUSHDB) three times during a storm. The database stays the
/// arbiter: never more than capacity, never a user twice; afterwards the campaign fills.
async fn queue_data_loss_never_over_issues(backend: Backend) {
    let dir = Arc::new(tempfile::tempdir().unwrap());
    // A Redis database of its own: this test flushes it.
    let db = match backend {
        Backend::RedisMariaDb => 9,
        _ => 10,
    };
    let redis = format!("{}{db}", crate::helpers::redis_url());
    let backends = Backends::open_with_redis(backend, dir.path(), &redis).await;
    let app = spawn_app_on(backends.clone(), dir, |_| {}).await;
    let id = app.campaign(spec(50)).await;

    let lose_data = || lose_queue_data(&backends);
    // First wave: 30 users, all issued; then the queue forgets everything.
    let first: Vec<String> = (0..30).map(|i| format!("early{i}")).collect();
    let accepted = storm(&[&app], &id, first.clone(), false).await;
    assert_eq!(accepted.len(), 30);
    app.wait_issued(&id, 30, 20).await;
    lose_data().await;
    // The early users are still known: rebuilt from the database.
    for u in &first[..5] {
        let (status, body) = app.request(&id, u).await;
        assert_eq!(
            (status, body["code"].as_str()),
            (409, Some("duplicate_request")),
            "{u}"
        );
    }
    // Second wave with losses in the middle of it.
    let second: Vec<String> = (0..300).map(|i| format!("late{i}")).collect();
    let hosts = [&app];
    let storm_task = storm(&hosts, &id, second.clone(), true);
    let chaos = async {
        for _ in 0..3 {
            tokio::time::sleep(Duration::from_millis(15)).await;
            lose_data().await;
        }
    };
    let (_, ()) = tokio::join!(storm_task, chaos);
    // Everyone asks again once; the campaign ends exactly full.
    let _ = storm(
        &[&app],
        &id,
        second.iter().chain(&first).cloned().collect(),
        false,
    )
    .await;
    wait_for(20, || async {
        backends.store.count_coupons(&id).await.unwrap() == 50
            && backends.admission.counts(&id).await.unwrap().queued == 0
    })
    .await
    .expect("the campaign fills");
    tokio::time::sleep(Duration::from_millis(300)).await;
    let issued = coupons(&backends.store, &id).await;
    assert_eq!(issued.len(), 50, "never past capacity");
    assert_no_duplicates(&issued);
    assert_eq!(backends.store.issued_count(&id).await.unwrap(), 50);
    app.stop().await;
}

on_all_backends!(queue_data_loss, queue_data_loss_never_over_issues);

/// The race behind over-issue: a host claims a chunk, Redis loses its data, the rebuilt queue
/// admits a full campaign of new users, then the slow host commits. The database refuses the
/// late chunk; the campaign holds exactly capacity.
async fn late_chunk_after_data_loss_is_refused(backend: Backend) {
    let dir = Arc::new(tempfile::tempdir().unwrap());
    let db = match backend {
        Backend::RedisMariaDb => 11,
        _ => 12,
    };
    let redis = format!("{}{db}", crate::helpers::redis_url());
    let backends = Backends::open_with_redis(backend, dir.path(), &redis).await;
    let early: Vec<String> = (0..10).map(|i| format!("early{i}")).collect();
    let id = queue_before_issuing(&backends, 10, &early).await;
    let in_flight = backends
        .admission
        .claim(&id, "slow-host", 10, None)
        .await
        .unwrap();
    assert_eq!(in_flight.len(), 10);
    lose_queue_data(&backends).await;
    let app = spawn_app_on(backends.clone(), dir, |_| {}).await;
    app.platform
        .apply_campaign(firstcome_core::campaign::Campaign::new(&id, spec(10)).unwrap())
        .await
        .unwrap();
    for i in 0..10 {
        assert_eq!(app.request(&id, &format!("late{i}")).await.0, 202);
    }
    app.wait_issued(&id, 10, 20).await;

    let outcome = backends
        .store
        .issue_chunk(&id, &in_flight, "slow-host", "coupon-issued")
        .await
        .unwrap();
    assert_eq!(
        outcome.refused.len(),
        10,
        "the late chunk is refused, not issued"
    );
    assert!(outcome.events.is_empty());
    let issued = coupons(&backends.store, &id).await;
    assert_eq!(issued.len(), 10);
    assert!(issued.iter().all(|(u, _)| u.starts_with("late")));
    app.stop().await;
}

/// On Redis only: the embedded queue does not lose what it admitted (its record brings the
/// claimed chunk back in line; see `durability.rs`).
mod late_chunk {
    use super::*;
    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn redis_mariadb() {
        late_chunk_after_data_loss_is_refused(Backend::RedisMariaDb).await
    }
    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn redis_postgres() {
        late_chunk_after_data_loss_is_refused(Backend::RedisPostgres).await
    }
}

/// A real `firstcome serve` process on Redis + MariaDB, killed with SIGKILL while it drains;
/// a second process finishes the job. Every accepted request is issued, and so is every
/// request Redis admitted whose answer was lost in the crash; no user gets two.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn killed_process_loses_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let backends = Backends::open(Backend::RedisMariaDb, dir.path()).await;
    let campaigns = dir.path().join("campaigns");
    std::fs::create_dir_all(&campaigns).unwrap();
    let id = unique("crash");
    std::fs::write(
        campaigns.join(format!("{id}.toml")),
        "name = \"Crash\"\ncapacity = 1500\nvalue = 1\nchunk_size = 1\n",
    )
    .unwrap();
    let start = || {
        let port = crate::helpers::free_port();
        let child = tokio::process::Command::new(env!("CARGO_BIN_EXE_firstcome"))
            .arg("serve")
            .env("FIRSTCOME_LISTEN", format!("127.0.0.1:{port}"))
            .env("FIRSTCOME_DATA_DIR", dir.path())
            .env("FIRSTCOME_CAMPAIGNS_DIR", &campaigns)
            .env("FIRSTCOME_PLUGINS__DIR", "/")
            .env("FIRSTCOME_DATABASE_URL", &backends.database_url)
            .env("FIRSTCOME_REDIS_URL", backends.redis_url.as_ref().unwrap())
            .env("FIRSTCOME_ISSUER__RECLAIM_IDLE_MS", "500")
            .env("RUST_LOG", "warn")
            .kill_on_drop(true)
            .spawn()
            .unwrap();
        (child, format!("http://127.0.0.1:{port}"))
    };
    let client = reqwest::Client::new();

    let (mut first, base) = start();
    wait_ready(&client, &base, 30).await;
    let store = backends.store.clone();
    let storm = futures::stream::iter(0..1500)
        .map(|i| {
            let (client, url) = (
                client.clone(),
                format!("{base}/api/v1/campaigns/{id}/requests"),
            );
            async move {
                let user = format!("user{i}");
                let r = client
                    .post(url)
                    .json(&serde_json::json!({"user_id": user}))
                    .send()
                    .await;
                (user, r.map(|r| r.status().as_u16()).ok())
            }
        })
        .buffer_unordered(50)
        .collect::<Vec<_>>();
    let killer = async {
        wait_for(60, || async {
            store.count_coupons(&id).await.unwrap() >= 100
        })
        .await
        .expect("issuing starts");
        first.kill().await.unwrap();
        store.count_coupons(&id).await.unwrap()
    };
    let (answers, at_kill) = tokio::join!(storm, killer);
    let accepted: Vec<&String> = answers
        .iter()
        .filter(|(_, s)| *s == Some(202))
        .map(|(u, _)| u)
        .collect();
    assert!(
        (at_kill as usize) < accepted.len(),
        "killed mid-drain: {at_kill} of {}",
        accepted.len()
    );

    let (_second, base) = start();
    wait_ready(&client, &base, 30).await;
    let admitted = backends.admission.counts(&id).await.unwrap().admitted;
    wait_for(60, || async {
        store.count_coupons(&id).await.unwrap() == admitted
            && backends.admission.counts(&id).await.unwrap().queued == 0
    })
    .await
    .expect("the second process drains everything the first admitted");
    let issued = coupons(&store, &id).await;
    assert_no_duplicates(&issued);
    let holders: HashSet<&String> = issued.iter().map(|(u, _)| u).collect();
    for user in accepted {
        assert!(
            holders.contains(user),
            "{user} was accepted and never issued"
        );
    }
    assert_eq!(store.issued_count(&id).await.unwrap(), issued.len() as i64);
}

/// `firstcome campaign rebuild` restores a flushed campaign from the database.
#[tokio::test]
async fn rebuild_command_restores_redis_from_the_database() {
    let dir = tempfile::tempdir().unwrap();
    let redis = format!("{}13", crate::helpers::redis_url());
    let backends = Backends::open_with_redis(Backend::RedisPostgres, dir.path(), &redis).await;
    let users: Vec<String> = (0..7).map(|i| format!("u{i}")).collect();
    let id = queue_before_issuing(&backends, 10, &users).await;
    let items = backends.admission.claim(&id, "h", 10, None).await.unwrap();
    backends
        .store
        .issue_chunk(&id, &items, "h", "coupon-issued")
        .await
        .unwrap();
    let file = dir.path().join(format!("{id}.toml"));
    std::fs::write(
        &file,
        "name = \"Test campaign\"\ncapacity = 10\nvalue = 1000\n",
    )
    .unwrap();
    lose_queue_data(&backends).await;

    let (file, data) = (file.display().to_string(), dir.path().display().to_string());
    let rebuild = |force: bool| {
        let mut args = vec!["campaign", "rebuild", file.as_str()];
        if force {
            args.push("--force");
        }
        let env = [
            ("FIRSTCOME_DATABASE_URL", backends.database_url.as_str()),
            ("FIRSTCOME_REDIS_URL", redis.as_str()),
            ("FIRSTCOME_DATA_DIR", data.as_str()),
        ];
        crate::helpers::firstcome(&args, &env)
    };
    assert!(rebuild(false).contains("rebuilt from 7 issued coupons"));
    assert_eq!(
        backends.admission.position(&id, "u3").await.unwrap(),
        Some(4)
    );
    assert_eq!(backends.admission.counts(&id).await.unwrap().admitted, 7);
    assert!(rebuild(false).contains("Redis holds the campaign"));
    assert!(rebuild(true).contains("rebuilt from 7"));

    // A file the hosts do not run is refused, and Redis keeps the version in force.
    std::fs::write(
        &file,
        "name = \"Test campaign\"\ncapacity = 12\nvalue = 1000\nshards = 2\n",
    )
    .unwrap();
    let (code, _, err) = crate::helpers::firstcome_run(
        &["campaign", "rebuild", file.as_str()],
        &[
            ("FIRSTCOME_DATABASE_URL", backends.database_url.as_str()),
            ("FIRSTCOME_REDIS_URL", redis.as_str()),
            ("FIRSTCOME_DATA_DIR", data.as_str()),
        ],
    );
    assert_ne!(code, 0);
    assert!(
        err.contains("capacity: file 12, in force 10")
            && err.contains("shards: file 2, in force 1"),
        "{err}"
    );
    let unknown = format!("{data}/never-applied.toml");
    std::fs::write(&unknown, "name = \"x\"\ncapacity = 1\nvalue = 1\n").unwrap();
    let (code, _, err) = crate::helpers::firstcome_run(
        &["campaign", "rebuild", unknown.as_str()],
        &[
            ("FIRSTCOME_DATABASE_URL", backends.database_url.as_str()),
            ("FIRSTCOME_REDIS_URL", redis.as_str()),
            ("FIRSTCOME_DATA_DIR", data.as_str()),
        ],
    );
    assert_ne!(code, 0);
    assert!(err.contains("was ever applied"), "{err}");
    assert_eq!(backends.admission.counts(&id).await.unwrap().admitted, 7);
}
