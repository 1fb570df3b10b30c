//! `firstcome-bench`: the issuance benchmark, in one run on one machine.
//!
//! 1. Admission through the HTTP API against `GET /health/live` on the same server (the ratio
//!    is the figure), with p50/p99 latency; for the in-process queue and, with `--redis-url`,
//!    for Redis.
//! 2. Coupons per second by the chunk issuer draining a full queue into SQLite and, with
//!    `--mysql-url`, into MariaDB/MySQL.
//! 3. With `--kafka-brokers`: events per second from the outbox through Kafka into a consumer
//!    group against `kcat` reading the same topic from the same broker (the ratio is the
//!    figure), and end-to-end latency from commit to handled under a steady trickle.
//! 4. Issuance with 1,000 idle subscribers on the campaign's statistics stream (SSE) against
//!    none (the ratio is the figure).
//! 5. With `--plugins DIR` (the built reference plugins): events per second through the stats
//!    plugin as a sandboxed component (fresh instance per event, as the host runs it) against
//!    the same logic compiled natively into this harness (the ratio is the figure), with the
//!    instantiation-plus-call time p50/p99 per event.
//!
//! Run: see BENCHMARKS.md.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::Parser;
use firstcome::admission::Admission;
use firstcome::admission::embedded::EmbeddedAdmission;
use firstcome::admission::redis::RedisAdmission;
use firstcome::app::App;
use firstcome::bus::kafka::KafkaBus;
use firstcome::bus::{ConsumerSpec, Delivered, EventBus, Handler, HandlerError, RetryPolicy};
use firstcome::campaign::{Campaign, CampaignSpec};
use firstcome::config::Config;
use firstcome::config::{KafkaConfig, OutboxConfig};
use firstcome::outbox::Relay;
use firstcome::store::Store;
use futures::{StreamExt, TryStreamExt};
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
    /// Also measure the event path through this Kafka cluster (needs `kcat` on the PATH).
    #[arg(long)]
    kafka_brokers: Option<String>,
    /// Events per Kafka throughput run.
    #[arg(long, default_value_t = 20_000)]
    events: usize,
    /// Folder of the built reference plugins (`history.wasm`, `stats.wasm`).
    #[arg(long)]
    plugins: Option<std::path::PathBuf>,
    /// Events per plugin run.
    #[arg(long, default_value_t = 50_000)]
    plugin_events: usize,
    /// Idle subscribers on the statistics stream in the SSE phase.
    #[arg(long, default_value_t = 1_000)]
    subscribers: usize,
    /// Runs of the SSE phase, alternating without and with subscribers.
    #[arg(long, default_value_t = 10)]
    sse_rounds: usize,
    /// Half-open connections in the slow-clients phase.
    #[arg(long, default_value_t = 1_000)]
    slow_clients: usize,
    /// Run only these phases (comma-separated: admission, slow, issuer, sse, kafka, plugin).
    #[arg(long, value_delimiter = ',')]
    only: Option<Vec<String>>,
}

impl Args {
    fn runs(&self, phase: &str) -> bool {
        self.only
            .as_ref()
            .is_none_or(|o| o.iter().any(|p| p == phase))
    }
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
        plugins: Default::default(),
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
    Config {
        listen: "127.0.0.1:0".parse().unwrap(),
        data_dir: dir.to_path_buf(),
        ..Config::default()
    }
}

/// HTTP admission vs. a trivial endpoint on one server.
/// Admission through HTTP against `/health/live` on one server: the embedded queue (recorded
/// in the host's SQLite database), or Redis at `redis_url`.
async fn http_phase(args: &Args, label: &str, redis_url: Option<&str>) -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let config = quiet_config(dir.path());
    let store = Store::open(&config.database_url()).await?;
    let admission: Arc<dyn Admission> = match redis_url {
        Some(url) => Arc::new(RedisAdmission::connect(url).await?),
        None => Arc::new(EmbeddedAdmission::new(store.clone())),
    };
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
    let batches = match redis_url {
        Some(_) => "-".to_owned(),
        None => group_commits(&client, &base).await?,
    };
    println!(
        "| {label} | {:.0} | {:.2} / {:.2} | {:.0} | {:.2} / {:.2} | {:.2} | {batches} |",
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

/// Admission with and without `--slow-clients` half-open connections held against the server,
/// and how many of those the header read timeout has closed 3 s later.
async fn slow_phase(args: &Args) -> anyhow::Result<()> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let dir = tempfile::tempdir()?;
    let mut config = quiet_config(dir.path());
    config.http.header_read_timeout_ms = 2_000;
    let store = Store::open(&config.database_url()).await?;
    let admission: Arc<dyn Admission> = Arc::new(EmbeddedAdmission::new(store.clone()));
    let app = App::build_with(config, store, admission).await?;
    let addr = app.local_addr();
    let base = format!("http://{addr}");
    let platform = app.platform();
    let stop = app.shutdown_token();
    let server = tokio::spawn(app.run_until_stopped());
    let id = format!("bench-{}", &uuid::Uuid::new_v4().simple().to_string()[..8]);
    platform
        .apply_campaign(Campaign::new(&id, spec(args.requests * 2, 10))?)
        .await?;
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(args.concurrency)
        .build()?;
    let url = format!("{base}/api/v1/campaigns/{id}/requests");
    let admit = |from: usize| {
        let (client, url) = (client.clone(), url.clone());
        async move {
            load(
                &client,
                args.requests / 2,
                args.concurrency,
                |c, i| {
                    c.post(&url)
                        .json(&serde_json::json!({ "user_id": format!("user-{}", from + i) }))
                },
                202,
            )
            .await
        }
    };
    let calm = admit(0).await?;
    let mut slow = Vec::with_capacity(args.slow_clients);
    for _ in 0..args.slow_clients {
        let mut s = tokio::net::TcpStream::connect(addr).await?;
        s.write_all(b"POST /api/v1/campaigns/x/requests HTTP/1.1\r\nHost: x\r\nContent-")
            .await?;
        slow.push(s);
    }
    let besieged = admit(args.requests).await?;
    tokio::time::sleep(std::time::Duration::from_secs(3)).await;
    let mut open = 0;
    for s in &mut slow {
        let mut buf = [0u8; 256];
        let read = tokio::time::timeout(std::time::Duration::from_millis(1), s.read(&mut buf));
        if read.await.is_err() {
            open += 1;
        }
    }
    for (label, p, open) in [
        ("calm", calm, "-".to_owned()),
        ("besieged", besieged, open.to_string()),
    ] {
        println!(
            "| {label} | {:.0} | {:.2} / {:.2} | {open} |",
            p.per_second, p.p50_ms, p.p99_ms
        );
    }
    stop.cancel();
    server.await??;
    Ok(())
}

/// The embedded queue's group commits as the host's `/metrics` counts them: how many,
/// admissions per commit (mean, and the histogram's median bucket bound), and the mean time
/// of one (deletes of handled requests included).
async fn group_commits(client: &reqwest::Client, base: &str) -> anyhow::Result<String> {
    let text = client
        .get(format!("{base}/metrics"))
        .send()
        .await?
        .text()
        .await?;
    let value = |series: &str| -> f64 {
        text.lines()
            .find_map(|l| l.strip_prefix(series)?.trim().parse().ok())
            .unwrap_or(0.0)
    };
    let count = value("firstcome_admission_write_batch_size_count");
    let sum = value("firstcome_admission_write_batch_size_sum");
    let median = text
        .lines()
        .filter_map(|l| {
            let rest = l.strip_prefix("firstcome_admission_write_batch_size_bucket{le=\"")?;
            let (le, n) = rest.split_once("\"} ")?;
            Some((le.to_owned(), n.trim().parse::<f64>().ok()?))
        })
        .find(|(_, n)| *n >= count / 2.0)
        .map_or_else(|| "?".to_owned(), |(le, _)| le);
    let seconds = value("firstcome_admission_write_seconds_sum")
        / value("firstcome_admission_write_seconds_count").max(1.0);
    Ok(format!(
        "{count:.0} commits, {:.1} per commit (median <= {median}), {:.2} ms each",
        sum / count.max(1.0),
        seconds * 1000.0
    ))
}

#[derive(Debug, Default)]
struct Count(std::sync::atomic::AtomicUsize);

#[async_trait::async_trait]
impl Handler for Count {
    async fn handle(&self, _: &Delivered) -> Result<(), HandlerError> {
        self.0.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        Ok(())
    }
}

fn unique(prefix: &str) -> String {
    format!(
        "{prefix}-{}",
        &uuid::Uuid::new_v4().simple().to_string()[..8]
    )
}

/// Outbox rows through the relay and Kafka into a consumer group, against kcat on the topic.
async fn kafka_throughput(args: &Args, brokers: &str) -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let store = Store::open(&format!("sqlite:{}", dir.path().join("k.db").display())).await?;
    let topic = unique("bench-events");
    let bus = Arc::new(KafkaBus::new(
        brokers,
        KafkaConfig::default(),
        store.clone(),
    )?);
    bus.ensure_topics(&[&topic]).await?;
    // The outbox, filled the way the issuer fills it.
    let id = unique("k");
    let campaign = Campaign::new(&id, spec(args.events, 500))?;
    store.upsert_campaign(&campaign).await?;
    for start in (0..args.events).step_by(500) {
        let items: Vec<firstcome::admission::QueueItem> = (start..(start + 500).min(args.events))
            .map(|i| firstcome::admission::QueueItem {
                id: i.to_string(),
                user_id: format!("user-{i}"),
                position: i as i64 + 1,
                request_id: format!("r{i}"),
                admitted_at: 0,
            })
            .collect();
        store.issue_chunk(&id, &items, "bench", &topic).await?;
    }
    let counted = Arc::new(Count::default());
    let stop = tokio_util::sync::CancellationToken::new();
    let spec = ConsumerSpec {
        group: "bench".into(),
        topic: topic.clone(),
        retry: RetryPolicy::default(),
        poll_interval: Duration::from_millis(50),
    };
    let consumer = {
        let (bus, counted, stop) = (bus.clone(), counted.clone(), stop.clone());
        tokio::spawn(async move { bus.run_consumer(spec, counted, stop).await })
    };
    let relay = Relay {
        store: store.clone(),
        bus: bus.clone(),
        config: OutboxConfig {
            republish_after_ms: 0,
            relay_batch: 1000,
            ..OutboxConfig::default()
        },
    };
    let started = Instant::now();
    while relay.run_once().await? > 0 {}
    let published = started.elapsed();
    while counted.0.load(std::sync::atomic::Ordering::Relaxed) < args.events {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let ours = started.elapsed();
    stop.cancel();
    consumer.await??;

    let started = Instant::now();
    let out = tokio::process::Command::new("kcat")
        .args([
            "-C",
            "-b",
            brokers,
            "-t",
            &topic,
            "-o",
            "beginning",
            "-e",
            "-q",
            "-f",
            "%o\\n",
        ])
        .output()
        .await
        .context("running kcat (apt-get install kcat)")?;
    let theirs = started.elapsed();
    let read = String::from_utf8_lossy(&out.stdout).lines().count();
    anyhow::ensure!(
        read == args.events,
        "kcat read {read} of {} messages",
        args.events
    );
    let (a, b) = (
        args.events as f64 / ours.as_secs_f64(),
        args.events as f64 / theirs.as_secs_f64(),
    );
    println!(
        "| {} | {:.2} | {:.0} | {:.2} | {:.0} | {:.2} |",
        args.events,
        published.as_secs_f64(),
        a,
        theirs.as_secs_f64(),
        b,
        a / b
    );
    Ok(())
}

/// Commit-to-handled latency through the whole host on Kafka, under a steady trickle.
async fn kafka_latency(brokers: &str, plugins: &std::path::Path) -> anyhow::Result<()> {
    const REQUESTS: usize = 2_000;
    const PER_SECOND: u64 = 200;
    let dir = tempfile::tempdir()?;
    let mut config = quiet_config(dir.path());
    config.kafka_brokers = Some(brokers.to_owned());
    config.outbox.topic = unique("bench-latency");
    let history = plugins.join("history.wasm");
    anyhow::ensure!(
        history.exists(),
        "{} is missing: build the plugins (see BENCHMARKS.md)",
        history.display()
    );
    let store = Store::open(&config.database_url()).await?;
    let app = App::build_with(
        config,
        store.clone(),
        Arc::new(EmbeddedAdmission::new(store.clone())),
    )
    .await?;
    let platform = app.platform();
    let stop = app.shutdown_token();
    let server = tokio::spawn(app.run_until_stopped());
    let id = unique("lat");
    let mut with_history = spec(REQUESTS, 10);
    with_history.plugins.insert(
        "history".into(),
        toml::from_str(&format!(
            "path = {:?}\ngrants = [\"history\"]",
            history.display().to_string()
        ))?,
    );
    let campaign = Campaign::new(&id, with_history)?;
    platform.apply_campaign(campaign.clone()).await?;
    let mut tick = tokio::time::interval(Duration::from_micros(1_000_000 / PER_SECOND));
    for i in 0..REQUESTS {
        tick.tick().await;
        platform
            .admit(&campaign, &format!("user-{i}"), firstcome::clock::now_ms())
            .await?;
    }
    let history = loop {
        let h = store.history_of_campaign(&id).await?;
        if h.len() == REQUESTS {
            break h;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let mut latency = Histogram::<u64>::new(3)?;
    for entry in &history {
        latency.record((entry.recorded_at - entry.issued_at).max(0) as u64)?;
    }
    println!(
        "| {REQUESTS} at {PER_SECOND}/s | {} | {} | {} |",
        latency.value_at_quantile(0.5),
        latency.value_at_quantile(0.99),
        latency.max()
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
    let admission: Arc<dyn Admission> = Arc::new(EmbeddedAdmission::new(store.clone()));
    let id = format!("issue-{}", &uuid::Uuid::new_v4().simple().to_string()[..8]);
    let campaign = Campaign::new(&id, spec(args.coupons, chunk))?;
    store.upsert_campaign(&campaign).await?;
    admission.sync_campaign(&campaign, &[], false).await?;
    // Admitted concurrently, so that they are recorded in group commits as a storm would be.
    futures::stream::iter(0..args.coupons)
        .map(|i| {
            let admission = admission.clone();
            let id = id.clone();
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

/// Coupons per second issued while `subscribers` clients hold the statistics stream open.
async fn sse_phase(args: &Args, subscribers: usize) -> anyhow::Result<f64> {
    let dir = tempfile::tempdir()?;
    let config = quiet_config(dir.path());
    let store = Store::open(&config.database_url()).await?;
    let app = App::build_with(
        config,
        store.clone(),
        Arc::new(EmbeddedAdmission::new(store.clone())),
    )
    .await?;
    let base = format!("http://{}", app.local_addr());
    let platform = app.platform();
    let stop = app.shutdown_token();
    let server = tokio::spawn(app.run_until_stopped());
    let id = format!("sse-{}", &uuid::Uuid::new_v4().simple().to_string()[..8]);
    let campaign = Campaign::new(&id, spec(args.coupons, 10))?;
    platform.apply_campaign(campaign.clone()).await?;
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(subscribers)
        .build()?;
    let connected = Arc::new(tokio::sync::Semaphore::new(0));
    let listeners = tokio_util::sync::CancellationToken::new();
    for _ in 0..subscribers {
        let (client, url) = (
            client.clone(),
            format!("{base}/api/v1/campaigns/{id}/stats/stream"),
        );
        let (connected, listeners) = (connected.clone(), listeners.clone());
        tokio::spawn(async move {
            let Ok(mut r) = client.get(url).send().await else {
                return;
            };
            let mut first = true;
            loop {
                tokio::select! {
                    chunk = r.chunk() => match chunk {
                        Ok(Some(_)) if first => { first = false; connected.add_permits(1); }
                        Ok(Some(_)) => {}
                        _ => return,
                    },
                    () = listeners.cancelled() => return,
                }
            }
        });
    }
    let _all = connected.acquire_many(subscribers as u32).await?;
    let started = Instant::now();
    for i in 0..args.coupons {
        platform
            .admit(&campaign, &format!("user-{i}"), firstcome::clock::now_ms())
            .await?;
    }
    while store.count_coupons(&id).await? < args.coupons as i64 {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let elapsed = started.elapsed();
    let rate = args.coupons as f64 / elapsed.as_secs_f64();
    println!(
        "| {subscribers} | {:.2} | {rate:.0} |",
        elapsed.as_secs_f64()
    );
    listeners.cancel();
    stop.cancel();
    server.await??;
    Ok(rate)
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
    if args.runs("admission") {
        println!("Admission through HTTP vs. GET /health/live on the same server:\n");
        println!(
            "| queue | admit req/s | admit p50 / p99 ms | live req/s | live p50 / p99 ms | ratio | group commits |"
        );
        println!("|---|---|---|---|---|---|---|");
        http_phase(&args, "embedded", None).await?;
        if let Some(url) = &args.redis_url {
            http_phase(&args, "redis", Some(url)).await?;
        }
    }
    if args.runs("slow") {
        println!(
            "\nEmbedded admission with {} connections that sent half a request head and stopped \
             (header read timeout 2 s):\n",
            args.slow_clients
        );
        println!("| phase | admit req/s | admit p50 / p99 ms | half requests still open |");
        println!("|---|---|---|---|");
        slow_phase(&args).await?;
    }
    if args.runs("issuer") {
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
    }
    if args.runs("sse") {
        println!(
            "\nIssuance of {} coupons (admitted in process, drained into SQLite) with idle SSE subscribers:\n",
            args.coupons
        );
        println!("| subscribers | seconds | coupons/s |");
        println!("|---|---|---|");
        let mut rates = [Vec::new(), Vec::new()];
        for round in 0..args.sse_rounds.max(2) {
            let subscribers = if round % 2 == 0 { 0 } else { args.subscribers };
            rates[round % 2].push(sse_phase(&args, subscribers).await?);
        }
        let mean = |v: &Vec<f64>| v.iter().sum::<f64>() / v.len() as f64;
        println!(
            "\nmean with {} subscribers / mean with none: **{:.3}**",
            args.subscribers,
            mean(&rates[1]) / mean(&rates[0])
        );
    }
    if let Some(brokers) = args.kafka_brokers.as_ref().filter(|_| args.runs("kafka")) {
        println!("\nOutbox → relay → Kafka → consumer group, against kcat on the same topic:\n");
        println!("| events | publish s | group events/s | kcat s | kcat events/s | ratio |");
        println!("|---|---|---|---|---|---|");
        kafka_throughput(&args, brokers).await?;
        println!("\nCommit to handled (history consumer on Kafka), ms:\n");
        println!("| load | p50 | p99 | max |");
        println!("|---|---|---|---|");
        let plugins = args
            .plugins
            .as_deref()
            .context("--plugins DIR is needed for the latency run")?;
        kafka_latency(brokers, plugins).await?;
    }
    if let Some(plugins) = args.plugins.as_ref().filter(|_| args.runs("plugin")) {
        println!(
            "\nStats plugin: sandboxed component (fresh instance per event) vs. the same logic native:\n"
        );
        plugin_phase(&args, plugins).await?;
    }
    Ok(())
}

/// A map as the native harness's stats sink.
#[derive(Default)]
struct Counts(std::collections::HashMap<String, i64>);

impl stats::Sink for Counts {
    fn increment(&mut self, name: &str, delta: i64) {
        *self.0.entry(name.to_owned()).or_default() += delta;
    }
}

/// The stats plugin as a component against its logic compiled natively.
async fn plugin_phase(args: &Args, dir: &std::path::Path) -> anyhow::Result<()> {
    use firstcome::plugin::recording::Recording;
    use firstcome::plugin::{Capability, PluginSpec, Runtime};
    use firstcome::store::Scope;

    const GENDERS: [&str; 3] = ["f", "m", "x"];
    const AGES: [&str; 5] = ["10s", "20s", "30s", "40s", "50s"];
    let n = args.plugin_events;
    let path = dir.join("stats.wasm");
    let runtime = Arc::new(Runtime::new(Default::default())?);
    let compiled = runtime.compile(&Runtime::read(&path, None)?)?;
    let spec = PluginSpec {
        path: path.clone(),
        sha256: None,
        grants: [Capability::Stats].into_iter().collect(),
        settings: Default::default(),
        timeout_ms: None,
        memory_mb: None,
    };
    let scope = Scope {
        campaign_id: "bench".into(),
        role: "stats".into(),
    };
    let plugin = runtime.bind(scope, path, compiled, spec);
    let services: Arc<dyn firstcome::plugin::services::Services> = Arc::new(Recording::default());
    let events: Vec<_> = (0..n)
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
                firstcome::plugin::host::wit_event(serde_json::from_value(envelope)?, n as i64)
                    .map_err(|e| anyhow::anyhow!("{e}"))?;
            Ok((id, event))
        })
        .collect::<anyhow::Result<_>>()?;
    // Warm up: the first instances fault their pool slots in.
    for (id, event) in events.iter().take(1_000) {
        runtime.call(&plugin, id, event, services.clone()).await?;
    }
    let mut wasm_counts = Counts::default();
    let mut per_call = Histogram::<u64>::new(3)?;
    let started = Instant::now();
    for (id, event) in &events {
        let t = Instant::now();
        let effects = runtime.call(&plugin, id, event, services.clone()).await?;
        per_call.record(t.elapsed().as_nanos().max(1) as u64)?;
        for (name, delta) in effects.stats {
            stats::Sink::increment(&mut wasm_counts, &name, delta);
        }
    }
    let wasm = started.elapsed();

    let inputs: Vec<(i64, &str, &str)> = (0..n)
        .map(|i| (1000, GENDERS[i % 3], AGES[i % 5]))
        .collect();
    let mut native_counts = Counts::default();
    let started = Instant::now();
    for (value, gender, age) in &inputs {
        let issued = stats::Issued {
            value: *value,
            gender: Some(gender),
            age_group: Some(age),
        };
        stats::count_issued(std::hint::black_box(&issued), &mut native_counts);
    }
    let native = started.elapsed();
    anyhow::ensure!(
        wasm_counts.0 == native_counts.0,
        "the component and the native logic disagree"
    );

    let (w, nat) = (
        n as f64 / wasm.as_secs_f64(),
        n as f64 / native.as_secs_f64(),
    );
    println!(
        "| events | component events/s | native events/s | component / native | instantiate+call p50 µs | p99 µs |"
    );
    println!("|---|---|---|---|---|---|");
    println!(
        "| {n} | {w:.0} | {nat:.0} | {:.4} | {:.1} | {:.1} |",
        w / nat,
        per_call.value_at_quantile(0.5) as f64 / 1000.0,
        per_call.value_at_quantile(0.99) as f64 / 1000.0
    );
    Ok(())
}
