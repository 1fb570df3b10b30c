//! Issuing at the database's speed: a storm through the whole host, the issuer draining a full
//! queue, and the same rows written by raw multi-row `INSERT`s on the same server (the
//! baseline the issuer is compared with).

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use firstcome::app::App;
use firstcome_admission::Admission;
use firstcome_admission::embedded::EmbeddedAdmission;
use firstcome_admission::redis::RedisAdmission;
use firstcome_core::campaign::Campaign;
use firstcome_core::event::{CouponIssued, Envelope};
use firstcome_store::{Dialect, Store};
use futures::{StreamExt, TryStreamExt};
use sqlx::{ConnectOptions, Connection};

use super::{Args, admit_users, metric, quiet_config, spec, unique, warmed_client};

/// A database made for one run and dropped after it (MySQL/MariaDB, PostgreSQL), or an SQLite
/// file in a temporary folder.
pub struct Scratch {
    pub label: &'static str,
    pub url: String,
    admin: Option<(Store, String)>,
    _dir: Option<tempfile::TempDir>,
}

impl Scratch {
    /// A new empty database on the server at `server_url` (no database name in it), or a new
    /// SQLite file when `server_url` is `None`.
    pub async fn new(server_url: Option<&str>) -> anyhow::Result<Self> {
        let Some(server_url) = server_url else {
            let dir = tempfile::tempdir()?;
            let url = format!("sqlite:{}", dir.path().join("bench.db").display());
            return Ok(Self {
                label: "SQLite",
                url,
                admin: None,
                _dir: Some(dir),
            });
        };
        let name = format!(
            "fcbench_{}",
            &uuid::Uuid::new_v4().simple().to_string()[..8]
        );
        let (label, admin_db) = match Dialect::from_url(server_url)? {
            Dialect::MySql => ("MariaDB", "test"),
            Dialect::Postgres => ("PostgreSQL", "postgres"),
            Dialect::Sqlite => anyhow::bail!("an SQLite URL names a file, not a server"),
        };
        let admin = Store::connect(&format!("{server_url}/{admin_db}"))
            .await
            .with_context(|| format!("connecting to {label}"))?;
        sqlx::query(&format!("CREATE DATABASE {name}"))
            .execute(admin.pool())
            .await?;
        Ok(Self {
            label,
            url: format!("{server_url}/{name}"),
            admin: Some((admin, name)),
            _dir: None,
        })
    }

    pub async fn drop(self) -> anyhow::Result<()> {
        if let Some((admin, name)) = self.admin {
            sqlx::query(&format!("DROP DATABASE {name}"))
                .execute(admin.pool())
                .await?;
        }
        Ok(())
    }
}

/// Where a storm runs: the database, and optionally Redis admission, a Kafka bus and the
/// folder of the built reference plugins (then the campaign runs all three, `reuse = 128`).
pub struct Setup<'a> {
    pub database_url: &'a str,
    pub redis_url: Option<&'a str>,
    pub kafka_brokers: Option<&'a str>,
    pub plugins: Option<&'a std::path::Path>,
    pub coupons: usize,
}

/// One storm's figures.
pub struct Storm {
    pub admit_per_second: f64,
    pub admit_p50_ms: f64,
    pub admit_p99_ms: f64,
    /// From the first request to the last `202`.
    pub admitted: Duration,
    /// From the first request to the commit of the last coupon.
    pub issued: Duration,
    pub chunks: f64,
    /// With plugins: how the consumer groups kept up.
    pub consumers: Option<Consumers>,
}

/// How the consumer groups kept up with a storm.
pub struct Consumers {
    /// Per coupon, from its commit to the last of the groups having handled it (ms).
    pub lag_p50_ms: u64,
    pub lag_p99_ms: u64,
    pub lag_max_ms: u64,
    /// Coupons/s from the first commit to the last.
    pub issuer_rate: f64,
    /// The groups' events/s from the first commit to the last event handled by any group.
    pub slowest_group_rate: f64,
    /// From the first request to the last event handled by every group.
    pub handled: Duration,
}

/// `coupons` distinct users storm a campaign of `coupons` coupons (the default chunk size)
/// through HTTP; the clock runs from the first request to the commit of the last coupon, and
/// with plugins until every group has handled every event.
pub async fn storm(args: &Args, setup: &Setup<'_>) -> anyhow::Result<Storm> {
    let coupons = setup.coupons;
    let dir = tempfile::tempdir()?;
    let mut config = quiet_config(dir.path());
    config.database_url = Some(setup.database_url.to_owned());
    config.kafka_brokers = setup.kafka_brokers.map(str::to_owned);
    config.outbox.topic = unique("storm-events");
    let store = Store::open(setup.database_url).await?;
    let admission: Arc<dyn Admission> = match setup.redis_url {
        Some(url) => Arc::new(RedisAdmission::connect(url).await?),
        None => Arc::new(EmbeddedAdmission::new(store.clone())),
    };
    let app = App::build_with(config, store.clone(), admission).await?;
    let base = format!("http://{}", app.local_addr());
    let platform = app.platform();
    let stop = app.shutdown_token();
    let server = tokio::spawn(app.run_until_stopped());
    let id = unique("storm");
    let mut campaign = spec(coupons);
    const ROLES: [(&str, &str); 3] = [
        ("notification", r#"["email", "push"]"#),
        ("history", r#"["history"]"#),
        ("stats", r#"["stats"]"#),
    ];
    if let Some(plugins) = setup.plugins {
        for (role, grants) in ROLES {
            let path = plugins.join(format!("{role}.wasm"));
            anyhow::ensure!(
                path.exists(),
                "{} is missing: build the plugins",
                path.display()
            );
            campaign.plugins.insert(
                role.into(),
                toml::from_str(&format!(
                    "path = {:?}\ngrants = {grants}\nreuse = 128",
                    path.display().to_string()
                ))?,
            );
        }
    }
    platform
        .apply_campaign(Campaign::new(&id, campaign)?)
        .await?;
    let client = warmed_client(args, &base).await?;
    if setup.kafka_brokers.is_some() {
        // Let the consumer groups join before the storm.
        tokio::time::sleep(Duration::from_secs(3)).await;
    }

    let started = Instant::now();
    let started_ms = firstcome_core::clock::now_ms();
    let watcher = {
        let (store, id) = (store.clone(), id.clone());
        tokio::spawn(async move {
            while store.issued_count(&id).await? < coupons as i64 {
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
            anyhow::Ok(started.elapsed())
        })
    };
    let url = format!("{base}/api/v1/campaigns/{id}/requests");
    let admit = admit_users(args, &client, &url, ("user", 0, coupons), 202).await?;
    let admitted = started.elapsed();
    let issued = watcher.await??;
    let consumers = match setup.plugins {
        Some(_) => Some(consumers(&store, coupons, ROLES.len(), started_ms).await?),
        None => None,
    };
    let metrics = client
        .get(format!("{base}/metrics"))
        .send()
        .await?
        .text()
        .await?;
    stop.cancel();
    server.await??;
    store.close().await;
    Ok(Storm {
        admit_per_second: admit.per_second,
        admit_p50_ms: admit.p50_ms,
        admit_p99_ms: admit.p99_ms,
        admitted,
        issued,
        chunks: metric(&metrics, "firstcome_chunk_size_count"),
        consumers,
    })
}

/// Waits until `groups` groups have handled `coupons` events, then reads from the database
/// when each coupon was committed (its outbox row) and when each group handled it.
async fn consumers(
    store: &Store,
    coupons: usize,
    groups: usize,
    started_ms: i64,
) -> anyhow::Result<Consumers> {
    use sqlx::Row;
    let deadline = Instant::now() + Duration::from_secs(600);
    loop {
        let row = sqlx::query("SELECT COUNT(*) FROM processed_events")
            .fetch_one(store.pool())
            .await?;
        if row.try_get::<i64, _>(0)? >= (coupons * groups) as i64 {
            break;
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "the consumer groups did not finish"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let (first_commit, last_commit): (i64, i64) = {
        let row = sqlx::query("SELECT MIN(created_at), MAX(created_at) FROM outbox")
            .fetch_one(store.pool())
            .await?;
        (row.try_get(0)?, row.try_get(1)?)
    };
    let slowest_last: i64 = sqlx::query("SELECT MAX(processed_at) FROM processed_events")
        .fetch_one(store.pool())
        .await?
        .try_get(0)?;
    // Per coupon: from its chunk's commit to the last group having handled it.
    let mut lags = hdrhistogram::Histogram::<u64>::new(3)?;
    let rows = sqlx::query(
        "SELECT MAX(p.processed_at) - MIN(o.created_at) FROM processed_events p \
         JOIN outbox o ON o.event_id = p.event_id GROUP BY o.id",
    )
    .fetch_all(store.pool())
    .await?;
    for row in &rows {
        lags.record(row.try_get::<i64, _>(0)?.max(0) as u64)?;
    }
    let issuer_span = ((last_commit - first_commit).max(1)) as f64 / 1000.0;
    let slowest_span = ((slowest_last - first_commit).max(1)) as f64 / 1000.0;
    Ok(Consumers {
        lag_p50_ms: lags.value_at_quantile(0.5),
        lag_p99_ms: lags.value_at_quantile(0.99),
        lag_max_ms: lags.max(),
        issuer_rate: coupons as f64 / issuer_span,
        slowest_group_rate: coupons as f64 / slowest_span,
        handled: Duration::from_millis((slowest_last - started_ms).max(0) as u64),
    })
}

/// The issuer of a host over `database_url` draining `coupons` requests already queued (in
/// the embedded queue) at the campaign's default chunk size: coupons per second.
pub async fn drain(database_url: &str, coupons: usize) -> anyhow::Result<f64> {
    let dir = tempfile::tempdir()?;
    let mut config = quiet_config(dir.path());
    config.database_url = Some(database_url.to_owned());
    let store = Store::open(database_url).await?;
    let admission: Arc<dyn Admission> = Arc::new(EmbeddedAdmission::new(store.clone()));
    let id = unique("drain");
    let campaign = spec(coupons);
    let campaign = Campaign::new(&id, campaign)?;
    store.upsert_campaign(&campaign).await?;
    admission.sync_campaign(&campaign, &[], false).await?;
    // Admitted concurrently, so that they are recorded in group commits as a storm would be.
    futures::stream::iter(0..coupons)
        .map(|i| {
            let (admission, id) = (admission.clone(), id.clone());
            async move {
                admission
                    .admit(&id, &format!("user-{i}"), "r", 0, Default::default())
                    .await
            }
        })
        .buffer_unordered(256)
        .try_collect::<Vec<_>>()
        .await?;
    let app = App::build_with(config, store.clone(), admission).await?;
    let platform = app.platform();
    let stop = app.shutdown_token();
    let server = tokio::spawn(app.run_until_stopped());
    let started = Instant::now();
    platform.apply_campaign(campaign).await?;
    while store.issued_count(&id).await? < coupons as i64 {
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    let elapsed = started.elapsed();
    stop.cancel();
    server.await??;
    store.close().await;
    Ok(coupons as f64 / elapsed.as_secs_f64())
}

/// A coupon row and its outbox row, as the issuer writes them.
struct Row {
    coupon_id: String,
    user_id: String,
    code: String,
    request_id: String,
    position: i64,
    event_id: String,
    payload: String,
}

fn rows(campaign_id: &str, n: usize, now: i64) -> Vec<Row> {
    (0..n)
        .map(|i| {
            let user_id = format!("user-{i}");
            let coupon_id = uuid::Uuid::now_v7().to_string();
            let code = format!("{:012X}", rand::random::<u64>() >> 16);
            let request_id = uuid::Uuid::now_v7().to_string();
            let envelope = Envelope::coupon_issued(
                campaign_id,
                now,
                CouponIssued {
                    user_id: user_id.clone(),
                    email: None,
                    fcm_token: None,
                    gender: None,
                    age_group: None,
                    campaign_name: "Bench".into(),
                    campaign_value: 1000,
                    coupon_id: coupon_id.clone(),
                    coupon_code: code.clone(),
                    position: i as i64 + 1,
                    request_id: request_id.clone(),
                    issued_at: firstcome_core::clock::Timestamp::from_millis(now),
                    expires_at: None,
                },
            );
            Row {
                event_id: envelope.event_id.clone(),
                payload: serde_json::to_string(&envelope).expect("an envelope serialises"),
                coupon_id,
                user_id,
                code,
                request_id,
                position: i as i64 + 1,
            }
        })
        .collect()
}

/// The baseline: the rows the issuer would write for `n` coupons (a coupon and an outbox row
/// each), built before the clock starts, written by multi-row `INSERT`s of 100 rows per table
/// and transaction over one connection of the engine's own driver (SQLite: `synchronous =
/// FULL`, as the issuer commits). The schema is the host's own (migrated first). Rows/s.
pub async fn raw_inserts(database_url: &str, n: usize) -> anyhow::Result<f64> {
    const PER_TRANSACTION: usize = 100;
    let store = Store::open(database_url).await?;
    let id = unique("raw");
    store.upsert_campaign(&Campaign::new(&id, spec(n))?).await?;
    store.close().await;
    let dialect = Dialect::from_url(database_url)?;
    let now = firstcome_core::clock::now_ms();
    let rows = rows(&id, n, now);
    let coupons = |k: usize| {
        let values = vec!["(?, ?, ?, ?, ?, ?, ?, ?, ?)"; k].join(", ");
        dialect
            .sql(&format!(
                "INSERT INTO coupons (id, campaign_id, user_id, code, request_id, position, \
                 issued_at, expires_at, issued_by) VALUES {values}"
            ))
            .into_owned()
    };
    let outbox = |k: usize| {
        let values = vec!["(?, ?, ?, ?, ?)"; k].join(", ");
        dialect
            .sql(&format!(
                "INSERT INTO outbox (event_id, topic, event_key, payload, created_at) \
                 VALUES {values}"
            ))
            .into_owned()
    };
    // One body for the three drivers: the binds are the same types on each.
    macro_rules! write_all {
        ($conn:expr) => {{
            let started = Instant::now();
            for batch in rows.chunks(PER_TRANSACTION) {
                let mut tx = $conn.begin().await?;
                let sql = coupons(batch.len());
                let mut q = sqlx::query(&sql);
                for r in batch {
                    q = q
                        .bind(&r.coupon_id)
                        .bind(&id)
                        .bind(&r.user_id)
                        .bind(&r.code)
                        .bind(&r.request_id)
                        .bind(r.position)
                        .bind(now)
                        .bind(None::<i64>)
                        .bind("raw");
                }
                q.execute(&mut *tx).await?;
                let sql = outbox(batch.len());
                let mut q = sqlx::query(&sql);
                for r in batch {
                    q = q
                        .bind(&r.event_id)
                        .bind("raw")
                        .bind(&r.user_id)
                        .bind(&r.payload)
                        .bind(now);
                }
                q.execute(&mut *tx).await?;
                tx.commit().await?;
            }
            started.elapsed()
        }};
    }
    let elapsed = match dialect {
        Dialect::MySql => {
            let mut conn = sqlx::MySqlConnection::connect(database_url).await?;
            write_all!(conn)
        }
        Dialect::Postgres => {
            let mut conn = sqlx::PgConnection::connect(database_url).await?;
            write_all!(conn)
        }
        Dialect::Sqlite => {
            use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqliteSynchronous};
            let options: SqliteConnectOptions = database_url.parse()?;
            let mut conn = options
                .journal_mode(SqliteJournalMode::Wal)
                .synchronous(SqliteSynchronous::Full)
                .connect()
                .await?;
            write_all!(conn)
        }
    };
    Ok(n as f64 / elapsed.as_secs_f64())
}
