//! Backends that stop answering without closing anything: a Redis frozen with SIGSTOP, a
//! table locked by another session, the embedded queue's record file locked. Nothing hangs: admissions answer `503 unavailable` within
//! a few seconds, readiness answers within its own deadline and names what is down, reads
//! answer `503` (never `500`), and every `202` given before or after is still honoured.

use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::StreamExt;
use serde_json::Value;
use sqlx::{Connection, Executor};

use crate::durability::OwnRedis;
use crate::helpers::{Backend, Backends, TestApp, spawn_app_on, spec, wait_for};

/// Sends `n` requests at once with `send`; returns each one's status and how long it took.
async fn at_once<F, Fut>(n: usize, send: F) -> Vec<(u16, Duration)>
where
    F: Fn(usize) -> Fut,
    Fut: std::future::Future<Output = u16>,
{
    futures::stream::iter(0..n)
        .map(|i| {
            let answer = send(i);
            async move {
                let started = Instant::now();
                let status = answer.await;
                (status, started.elapsed())
            }
        })
        .buffer_unordered(n)
        .collect()
        .await
}

async fn status_of(app: &TestApp, path: &str) -> u16 {
    app.client
        .get(app.url(path))
        .timeout(Duration::from_secs(30))
        .send()
        .await
        .map(|r| r.status().as_u16())
        .unwrap_or(0)
}

pub(crate) async fn admit(app: &TestApp, id: &str, user: &str) -> u16 {
    app.client
        .post(app.url(&format!("/api/v1/campaigns/{id}/requests")))
        .json(&serde_json::json!({ "user_id": user }))
        .timeout(Duration::from_secs(30))
        .send()
        .await
        .map(|r| r.status().as_u16())
        .unwrap_or(0)
}

/// Every user answered `202` holds a coupon, once, and nobody else does.
async fn every_202_issued(app: &TestApp, id: &str, admitted: &[String]) {
    let store = &app.backends.store;
    let queue = &app.backends.admission;
    wait_for(60, || async {
        queue.counts(id).await.is_ok_and(|c| c.queued == 0)
            && store.count_coupons(id).await.unwrap() >= admitted.len() as i64
    })
    .await
    .expect("the queue drains");
    let issued = crate::helpers::coupons(store, id).await;
    let holders: std::collections::HashSet<&String> = issued.iter().map(|(u, _)| u).collect();
    assert_eq!(holders.len(), issued.len(), "a user holds two coupons");
    for user in admitted {
        assert!(
            holders.contains(user),
            "{user} was answered 202 and holds no coupon"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_frozen_redis_hangs_nothing() {
    let dir = Arc::new(tempfile::tempdir().unwrap());
    let redis = OwnRedis::start(dir.path(), &[]).await;
    let backends =
        Backends::open_with_redis(Backend::RedisPostgres, dir.path(), &redis.url()).await;
    let app = spawn_app_on(backends, dir.clone(), |_| {}).await;
    let id = app.campaign(spec(100)).await;
    let mut admitted = Vec::new();
    for i in 0..5 {
        let user = format!("before-{i}");
        assert_eq!(admit(&app, &id, &user).await, 202);
        admitted.push(user);
    }

    redis.freeze();
    let frozen_at = Instant::now();
    let (admissions, ready, campaign) = tokio::join!(
        at_once(20, |i| {
            let (app, id) = (&app, &id);
            async move { admit(app, id, &format!("frozen-{i}")).await }
        }),
        async {
            let started = Instant::now();
            let r = app
                .client
                .get(app.url("/health/ready"))
                .timeout(Duration::from_secs(30))
                .send()
                .await
                .unwrap();
            let status = r.status().as_u16();
            let body: Value = r.json().await.unwrap();
            (status, body, started.elapsed())
        },
        async {
            let started = Instant::now();
            (
                status_of(&app, &format!("/api/v1/campaigns/{id}")).await,
                started.elapsed(),
            )
        },
    );
    for (status, took) in &admissions {
        assert_eq!(*status, 503, "an admission while Redis is frozen");
        assert!(
            *took < Duration::from_secs(8),
            "answered within a few seconds: {took:?}"
        );
    }
    let (status, body, took) = ready;
    assert_eq!(status, 503, "{body}");
    assert!(
        took < Duration::from_secs(4),
        "readiness within its deadline: {took:?}"
    );
    assert!(
        body["backends"]["admission"]
            .as_str()
            .unwrap()
            .starts_with("down"),
        "{body}"
    );
    assert!(
        body["backends"]["database"]
            .as_str()
            .unwrap()
            .starts_with("ok"),
        "{body}"
    );
    let (status, took) = campaign;
    assert_eq!(
        status, 503,
        "the campaign's counts come from the frozen queue"
    );
    assert!(took < Duration::from_secs(8), "{took:?}");
    assert!(frozen_at.elapsed() < Duration::from_secs(12));

    redis.thaw();
    wait_for(30, || async {
        status_of(&app, "/health/ready").await == 200
    })
    .await
    .expect("ready again once Redis answers");
    for i in 0..5 {
        let user = format!("after-{i}");
        assert_eq!(admit(&app, &id, &user).await, 202);
        admitted.push(user);
    }
    // An admission answered 503 may still have reached Redis ("it may be admitted; its status
    // tells"): it is issued like any other, and counted in what the queue admitted.
    every_202_issued(&app, &id, &admitted).await;
    app.stop().await;
    drop(redis);
}

/// Another session holds `coupons` locked for longer than the host's lock timeout.
async fn lock_coupons(database_url: &str) -> sqlx::AnyConnection {
    sqlx::any::install_default_drivers();
    let mut conn = sqlx::AnyConnection::connect(database_url).await.unwrap();
    if database_url.starts_with("postgres") {
        conn.execute("BEGIN").await.unwrap();
        conn.execute("LOCK TABLE coupons IN ACCESS EXCLUSIVE MODE")
            .await
            .unwrap();
    } else {
        conn.execute("LOCK TABLES coupons WRITE").await.unwrap();
    }
    conn
}

async fn unlock(mut conn: sqlx::AnyConnection, database_url: &str) {
    let release = if database_url.starts_with("postgres") {
        "ROLLBACK"
    } else {
        "UNLOCK TABLES"
    };
    conn.execute(release).await.unwrap();
    conn.close().await.unwrap();
}

async fn a_locked_table_answers_503_not_500(backend: Backend) {
    let dir = Arc::new(tempfile::tempdir().unwrap());
    let backends = Backends::open(backend, dir.path()).await;
    let database_url = backends.database_url.clone();
    let app = spawn_app_on(backends, dir.clone(), |_| {}).await;
    let id = app.campaign(spec(200)).await;
    let mut admitted = Vec::new();
    for i in 0..5 {
        let user = format!("before-{i}");
        assert_eq!(admit(&app, &id, &user).await, 202);
        admitted.push(user);
    }
    app.wait_issued(&id, 5, 30).await;

    let lock = lock_coupons(&database_url).await;
    let (reads, admissions) = tokio::join!(
        // More reads than the pool has connections, all parked behind the lock.
        at_once(40, |i| {
            let (app, id) = (&app, &id);
            async move {
                let path = if i % 2 == 0 {
                    format!("/api/v1/campaigns/{id}/requests/before-{}", i % 5)
                } else {
                    format!("/api/v1/campaigns/{id}")
                };
                status_of(app, &path).await
            }
        }),
        async {
            // Admission does not wait on the coupons table: it goes on, on its own connections.
            tokio::time::sleep(Duration::from_millis(500)).await;
            at_once(10, |i| {
                let (app, id) = (&app, &id);
                async move { admit(app, id, &format!("locked-{i}")).await }
            })
            .await
        }
    );
    for (status, took) in &reads {
        assert!(
            *status == 200 || *status == 503,
            "a read behind a locked table answers 200 or 503, not {status}"
        );
        assert!(*took < Duration::from_secs(20), "{took:?}");
    }
    assert!(
        reads.iter().any(|(s, _)| *s == 503),
        "reads behind the lock time out as 503"
    );
    for (i, (status, _)) in admissions.iter().enumerate() {
        assert_eq!(*status, 202, "admission {i} while coupons is locked");
    }
    admitted.extend((0..10).map(|i| format!("locked-{i}")));
    unlock(lock, &database_url).await;
    every_202_issued(&app, &id, &admitted).await;
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_locked_table_answers_503_not_500_on_postgres() {
    a_locked_table_answers_503_not_500(Backend::RedisPostgres).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_locked_table_answers_503_not_500_on_mariadb() {
    a_locked_table_answers_503_not_500(Backend::RedisMariaDb).await;
}

/// The embedded queue's record cannot be written (another session holds its SQLite file
/// locked, as a full disk or a stalled volume would stop writes): an admission is answered
/// `503` within the queue's wait, readiness says the queue is down, and the request that
/// held a place meanwhile is issued once the record can be written again.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_stalled_admission_record_makes_the_host_unready() {
    let dir = Arc::new(tempfile::tempdir().unwrap());
    let backends = Backends::open(Backend::Embedded, dir.path()).await;
    let record = backends
        .store
        .record_file()
        .expect("the embedded queue's record file")
        .to_path_buf();
    let app = spawn_app_on(backends, dir.clone(), |_| {}).await;
    let id = app.campaign(spec(10)).await;
    assert_eq!(admit(&app, &id, "before").await, 202);

    sqlx::any::install_default_drivers();
    let mut lock = sqlx::AnyConnection::connect(&format!("sqlite:{}", record.display()))
        .await
        .unwrap();
    lock.execute("BEGIN EXCLUSIVE").await.unwrap();
    let started = Instant::now();
    assert_eq!(admit(&app, &id, "stalled").await, 503);
    // "It may still be admitted; its status tells": it holds its place in memory.
    let (_, stalled) = app
        .get(&format!("/api/v1/campaigns/{id}/requests/stalled"))
        .await;
    assert_eq!(stalled["status"], "queued", "{stalled}");
    assert!(
        started.elapsed() < Duration::from_secs(8),
        "{:?}",
        started.elapsed()
    );
    // Down once an admission has waited longer than the queue's wait for its record.
    wait_for(5, || async {
        status_of(&app, "/health/ready").await == 503
    })
    .await
    .expect("readiness says the queue cannot take a 202");
    let (_, body) = app.get("/health/ready").await;
    assert!(
        body["backends"]["admission"]
            .as_str()
            .unwrap()
            .contains("waited"),
        "{body}"
    );

    lock.execute("ROLLBACK").await.unwrap();
    lock.close().await.unwrap();
    wait_for(30, || async {
        status_of(&app, "/health/ready").await == 200
    })
    .await
    .expect("ready again once the record is written");
    // "It may still be admitted; its status tells": it held its place and is issued.
    every_202_issued(&app, &id, &["before".to_owned(), "stalled".to_owned()]).await;
    app.stop().await;
}
