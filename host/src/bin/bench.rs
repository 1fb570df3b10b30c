//! `firstcome-bench`: the issuance benchmark, in one run on one machine.
//!
//! 1. Admission through the HTTP API against `GET /health/live` on the same server (the ratio
//!    is the figure), with p50/p99 latency; for the in-process queue and, with `--redis-url`,
//!    for Redis.
//! 2. Coupons per second by the chunk issuer draining a full queue into SQLite and, with
//!    `--mysql-url`, into MariaDB/MySQL.
//!
//! Run: `cargo run --release --bin firstcome-bench -- --redis-url redis://127.0.0.1:6379/
//! --mysql-url mysql://root@127.0.0.1:3306` (see BENCHMARKS.md).

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::Parser;
use firstcome::admission::Admission;
use firstcome::admission::embedded::EmbeddedAdmission;
use firstcome::admission::redis::RedisAdmission;
use firstcome::app::App;
use firstcome::campaign::{Campaign, CampaignSpec};
use firstcome::config::Config;
use firstcome::store::Store;
use futures::StreamExt;
use hdrhistogram::Histogram;

#[derive(Debug, Parser)]
#[command(about = "Benchmarks admission and issuance")]
struct Args {
    /// Requests per HTTP phase.
    #[arg(long, default_value_t = 20_000)]
    requests: usize,
    /// Requests in flight at once.
    #[arg(long, default_value_t = 64)]
    concurrency: usize,
    /// Coupons per issuer run.
    #[arg(long, default_value_t = 5_000)]
    coupons: usize,
    /// Also measure admission on this Redis.
    #[arg(long)]
    redis_url: Option<String>,
    /// Also measure issuing into this MySQL/MariaDB server (a scratch database is created).
    #[arg(long)]
    mysql_url: Option<String>,
}

struct Phase {
    per_second: f64,
    p50_ms: f64,
    p99_ms: f64,
}

fn spec(capacity: usize, chunk: u32) -> CampaignSpec {
    CampaignSpec {
        name: "Bench".into(),
        capacity: capacity as i64,
        value: 1000,
        opens_at: None,
        closes_at: None,
        coupon_expires_at: None,
        chunk_size: Some(chunk),
    }
}

async fn load(
    client: &reqwest::Client,
    n: usize,
    concurrency: usize,
    request: impl Fn(&reqwest::Client, usize) -> reqwest::RequestBuilder,
    expect: u16,
) -> anyhow::Result<Phase> {
    let started = Instant::now();
    let latencies: Vec<anyhow::Result<u64>> = futures::stream::iter(0..n)
        .map(|i| {
            let req = request(client, i);
            async move {
                let t = Instant::now();
                let r = req.send().await?;
                anyhow::ensure!(r.status().as_u16() == expect, "got {}", r.status());
                r.bytes().await?;
                Ok(t.elapsed().as_micros() as u64)
            }
        })
        .buffer_unordered(concurrency)
        .collect()
        .await;
    let elapsed = started.elapsed();
    let mut h = Histogram::<u64>::new(3)?;
    for l in latencies {
        h.record(l?.max(1))?;
    }
    Ok(Phase {
        per_second: n as f64 / elapsed.as_secs_f64(),
        p50_ms: h.value_at_quantile(0.5) as f64 / 1000.0,
        p99_ms: h.value_at_quantile(0.99) as f64 / 1000.0,
    })
}

fn quiet_config(dir: &std::path::Path) -> Config {
    let mut config = Config {
        listen: "127.0.0.1:0".parse().unwrap(),
        data_dir: dir.to_path_buf(),
        ..Config::default()
    };
    config.consumers.history = true;
    config
}

/// HTTP admission vs. a trivial endpoint on one server.
async fn http_phase(args: &Args, label: &str, admission: Arc<dyn Admission>) -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let config = quiet_config(dir.path());
    let store = Store::open(&config.database_url()).await?;
    let app = App::build_with(config, store, admission).await?;
    let base = format!("http://{}", app.local_addr());
    let platform = app.platform();
    let stop = app.shutdown_token();
    let server = tokio::spawn(app.run_until_stopped());
    let id = format!("bench-{}", &uuid::Uuid::new_v4().simple().to_string()[..8]);
    platform
        .apply_campaign(Campaign::new(&id, spec(args.requests, 10))?)
        .await?;
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(args.concurrency)
        .build()?;
    // Warm the connection pool and the code paths.
    load(
        &client,
        500,
        args.concurrency,
        |c, _| c.get(format!("{base}/health/live")),
        200,
    )
    .await?;

    let url = format!("{base}/api/v1/campaigns/{id}/requests");
    let admit = load(
        &client,
        args.requests,
        args.concurrency,
        |c, i| {
            c.post(&url)
                .json(&serde_json::json!({ "user_id": format!("user-{i}") }))
        },
        202,
    )
    .await?;
    let live = load(
        &client,
        args.requests,
        args.concurrency,
        |c, _| c.get(format!("{base}/health/live")),
        200,
    )
    .await?;
    println!(
        "| {label} | {:.0} | {:.2} / {:.2} | {:.0} | {:.2} / {:.2} | {:.2} |",
        admit.per_second,
        admit.p50_ms,
        admit.p99_ms,
        live.per_second,
        live.p50_ms,
        live.p99_ms,
        admit.per_second / live.per_second
    );
    stop.cancel();
    server.await??;
    Ok(())
}

/// The issuer draining `coupons` queued requests into one database.
async fn issuer_phase(
    args: &Args,
    label: &str,
    database_url: &str,
    chunk: u32,
) -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let mut config = quiet_config(dir.path());
    config.database_url = Some(database_url.to_owned());
    let store = Store::open(database_url).await?;
    let admission: Arc<dyn Admission> = Arc::new(EmbeddedAdmission::new());
    let id = format!("issue-{}", &uuid::Uuid::new_v4().simple().to_string()[..8]);
    let campaign = Campaign::new(&id, spec(args.coupons, chunk))?;
    store.upsert_campaign(&campaign).await?;
    admission.sync_campaign(&campaign, &[], false).await?;
    for i in 0..args.coupons {
        admission.admit(&id, &format!("user-{i}"), "r", 0).await?;
    }
    let app = App::build_with(config, store.clone(), admission).await?;
    let platform = app.platform();
    let stop = app.shutdown_token();
    let server = tokio::spawn(app.run_until_stopped());
    let started = Instant::now();
    platform.apply_campaign(campaign).await?;
    while store.count_coupons(&id).await? < args.coupons as i64 {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let elapsed = started.elapsed();
    println!(
        "| {label} | {chunk} | {} | {:.2} | {:.0} |",
        args.coupons,
        elapsed.as_secs_f64(),
        args.coupons as f64 / elapsed.as_secs_f64()
    );
    stop.cancel();
    server.await??;
    Ok(())
}

fn machine() -> String {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .map(|l| l.split(':').nth(1).unwrap_or("").trim().to_owned())
        })
        .unwrap_or_else(|| "unknown CPU".into());
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    format!("{cpu}, {cores} cores")
}

async fn scratch_mysql(url: &str) -> anyhow::Result<(String, Store)> {
    let name = format!(
        "fcbench_{}",
        &uuid::Uuid::new_v4().simple().to_string()[..8]
    );
    let admin = Store::connect(&format!("{url}/test"))
        .await
        .context("connecting to MySQL")?;
    sqlx::query(&format!("CREATE DATABASE {name}"))
        .execute(admin.pool())
        .await?;
    Ok((format!("{url}/{name}"), admin))
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    println!(
        "firstcome-bench on {} ({} requests, {} in flight)\n",
        machine(),
        args.requests,
        args.concurrency
    );
    println!("Admission through HTTP vs. GET /health/live on the same server:\n");
    println!(
        "| queue | admit req/s | admit p50 / p99 ms | live req/s | live p50 / p99 ms | ratio |"
    );
    println!("|---|---|---|---|---|---|");
    http_phase(&args, "embedded", Arc::new(EmbeddedAdmission::new())).await?;
    if let Some(url) = &args.redis_url {
        http_phase(
            &args,
            "redis",
            Arc::new(RedisAdmission::connect(url).await?),
        )
        .await?;
    }
    println!("\nChunk issuer draining a full queue:\n");
    println!("| database | chunk | coupons | seconds | coupons/s |");
    println!("|---|---|---|---|---|");
    let dir = tempfile::tempdir()?;
    for chunk in [10, 100] {
        let sqlite = format!(
            "sqlite:{}",
            dir.path().join(format!("bench-{chunk}.db")).display()
        );
        issuer_phase(&args, "sqlite", &sqlite, chunk).await?;
        if let Some(url) = &args.mysql_url {
            let (db, admin) = scratch_mysql(url).await?;
            issuer_phase(&args, "mariadb", &db, chunk).await?;
            let name = db.rsplit('/').next().unwrap_or_default();
            sqlx::query(&format!("DROP DATABASE {name}"))
                .execute(admin.pool())
                .await?;
        }
    }
    Ok(())
}
