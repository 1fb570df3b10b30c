//! `firstcome-bench`: the issuance benchmark, in one run on one machine.
//!
//! 1. Admission through the HTTP API against `GET /health/live` on the same server (the ratio
//!    is the figure), with p50/p99 latency; for the in-process queue and, with `--redis-url`,
//!    for Redis. Then the same path once the campaign has sold out and its last coupon is
//!    committed (every answer `410`): admission with nothing issued behind it.
//! 2. Issuing ([`issuing`]): a storm of distinct users through HTTP, timed from the first
//!    request to the last coupon committed, the issuer draining a full queue, and raw
//!    multi-row `INSERT`s of the same rows on the same server (the ratio is the figure); into
//!    SQLite and, with `--mysql-url` / `--postgres-url`, MariaDB/MySQL and PostgreSQL.
//! 3. With `--plugins DIR`: the three reference plugins behind a storm, on the embedded bus
//!    and, with `--kafka-brokers`, on Kafka: how far the consumer groups trail the issuer.
//! 4. With `--kafka-brokers`: events per second from the outbox through Kafka into a consumer
//!    group against `kcat` reading the same topic from the same broker (the ratio is the
//!    figure), and end-to-end latency from commit to handled under a steady trickle.
//! 5. Issuance with 1,000 idle subscribers on the campaign's statistics stream (SSE) against
//!    none (the ratio is the figure).
//! 6. With `--plugins DIR` (the built reference plugins): events per second through the stats
//!    plugin as a sandboxed component (a fresh instance per event, then `reuse = 128`) against
//!    the same logic compiled natively into this harness (the ratio is the figure), with the
//!    time of one call (instantiation included) p50/p99.
//! 7. With `--redis-cluster-url`: one campaign with `shards = 1` and `shards = 3` admitted
//!    through the queue itself ([`shards`]): admissions/s and how far positions stray from
//!    arrival order.
//!
//! Run: see BENCHMARKS.md.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::Parser;
use firstcome::app::App;
use firstcome_admission::Admission;
use firstcome_admission::embedded::EmbeddedAdmission;
use firstcome_admission::redis::RedisAdmission;
use firstcome_bus::kafka::KafkaBus;
use firstcome_bus::{ConsumerSpec, Delivered, EventBus, Handler, HandlerError, RetryPolicy};
use firstcome_core::campaign::{Campaign, CampaignSpec};
use firstcome_platform::config::Config;
use firstcome_platform::config::{KafkaConfig, OutboxConfig};
use firstcome_platform::outbox::Relay;
use firstcome_store::Store;
use futures::StreamExt;
use hdrhistogram::Histogram;

mod issuing;
mod languages;
mod plugin;
mod shards;
mod shoppers;

/// The same allocator as the `firstcome` binary, so that the figures are the host's.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Debug, Parser)]
#[command(about = "Benchmarks admission and issuance")]
struct Args {
    /// Requests per HTTP phase.
    #[arg(long, default_value_t = 20_000)]
    requests: usize,
    /// Requests in flight at once.
    #[arg(long, default_value_t = 64)]
    concurrency: usize,
    /// Coupons per issuing run (storm, drain, raw inserts) and per SSE round.
    #[arg(long, default_value_t = 20_000)]
    coupons: usize,
    /// Also measure admission on this Redis.
    #[arg(long)]
    redis_url: Option<String>,
    /// Also measure admission on this Redis Cluster (`redis+cluster://host:port,...`; start
    /// one with `bash tests/redis-cluster.sh start DIR`), with and without a replica's
    /// acknowledgement of each admission.
    #[arg(long)]
    redis_cluster_url: Option<String>,
    /// Also measure issuing into this MySQL/MariaDB server (a scratch database is created),
    /// e.g. `mysql://root@127.0.0.1:3306`.
    #[arg(long)]
    mysql_url: Option<String>,
    /// Also measure issuing into this PostgreSQL server (a scratch database is created), e.g.
    /// `postgres://postgres@127.0.0.1:5432`.
    #[arg(long)]
    postgres_url: Option<String>,
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
    /// Folder of the stats plugin built from Python and JavaScript (`python_stats.wasm`,
    /// `js_stats.wasm`; bench/languages.sh builds them), for the languages phase.
    #[arg(long)]
    language_plugins: Option<std::path::PathBuf>,
    /// Events per run of the languages phase.
    #[arg(long, default_value_t = 5_000)]
    language_events: usize,
    /// Idle subscribers on the statistics stream in the SSE phase.
    #[arg(long, default_value_t = 1_000)]
    subscribers: usize,
    /// Runs of the SSE phase, alternating without and with subscribers.
    #[arg(long, default_value_t = 10)]
    sse_rounds: usize,
    /// Half-open connections in the slow-clients phase.
    #[arg(long, default_value_t = 1_000)]
    slow_clients: usize,
    /// Rounds of the shoppers phase (open, jwt and signed-header in each).
    #[arg(long, default_value_t = 5)]
    shopper_rounds: usize,
    /// Run only these phases (comma-separated: admission, shoppers, slow, issuer, consumers,
    /// sse, kafka, plugin, shards, languages).
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

/// A campaign of `capacity` coupons at the default chunk size.
fn spec(capacity: usize) -> CampaignSpec {
    CampaignSpec {
        name: "Bench".into(),
        capacity: capacity as i64,
        value: 1000,
        opens_at: None,
        closes_at: None,
        coupon_expires_at: None,
        chunk_size: None,
        shards: None,
        plugins: Default::default(),
        announce_at: None,
        // The statistics stream's watchers read without the admin token.
        public_stats: true,
        limits: Default::default(),
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

/// `n` admission requests to `url` (a campaign's `…/requests`) from users `{prefix}-{i}`, `i`
/// from `first`, each expected to answer `expect`.
async fn admit_users(
    args: &Args,
    client: &reqwest::Client,
    url: &str,
    (prefix, first, n): (&str, usize, usize),
    expect: u16,
) -> anyhow::Result<Phase> {
    let request = |c: &reqwest::Client, i: usize| {
        c.post(url)
            .json(&serde_json::json!({ "user_id": format!("{prefix}-{}", first + i) }))
    };
    load(client, n, args.concurrency, request, expect).await
}

/// `n` requests to the trivial route `GET /health/live` of the host at `base`.
async fn live_route(
    args: &Args,
    client: &reqwest::Client,
    base: &str,
    n: usize,
) -> anyhow::Result<Phase> {
    let request = |c: &reqwest::Client, _| c.get(format!("{base}/health/live"));
    load(client, n, args.concurrency, request, 200).await
}

/// A client with `args.concurrency` pooled connections to the host at `base`, warmed (and the
/// host's code paths with it) by 500 requests to the trivial route.
async fn warmed_client(args: &Args, base: &str) -> anyhow::Result<reqwest::Client> {
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(args.concurrency)
        .build()?;
    live_route(args, &client, base, 500).await?;
    Ok(client)
}

fn quiet_config(dir: &std::path::Path) -> Config {
    let mut config = Config {
        listen: "127.0.0.1:0".parse().unwrap(),
        data_dir: dir.to_path_buf(),
        ..Config::default()
    };
    // Every benchmark client shares one address and sends as fast as it can: admission rates
    // are off (the shoppers phase measures them on).
    config.limits.per_user_per_s = 0;
    config.limits.per_address_per_s = 0;
    config
}

/// HTTP admission vs. a trivial endpoint on one server.
/// Admission through HTTP against `/health/live` on one server: the embedded queue (recorded
/// in the host's SQLite database), or Redis at `redis_url`.
async fn http_phase(args: &Args, label: &str, redis_url: Option<&str>) -> anyhow::Result<()> {
    http_phase_with(args, label, redis_url, 0, true).await
}

/// [`http_phase`] with `wait_replicas` Redis replicas acknowledging each admission (`WAIT`,
/// 500 ms), and the hosts' sold-out flag on or off.
async fn http_phase_with(
    args: &Args,
    label: &str,
    redis_url: Option<&str>,
    wait_replicas: u32,
    sold_out_flag: bool,
) -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let mut config = quiet_config(dir.path());
    if !sold_out_flag {
        config.admission.sold_out_recheck_ms = 0;
    }
    let store = Store::open(&config.database_url()).await?;
    let admission: Arc<dyn Admission> = match redis_url {
        Some(url) => Arc::new(
            RedisAdmission::connect(url)
                .await?
                .with_replica_acks(wait_replicas, Duration::from_millis(500)),
        ),
        None => Arc::new(EmbeddedAdmission::new(store.clone())),
    };
    let app = App::build_with(config, store, admission).await?;
    let base = format!("http://{}", app.local_addr());
    let platform = app.platform();
    let stop = app.shutdown_token();
    let server = tokio::spawn(app.run_until_stopped());
    let id = format!("bench-{}", &uuid::Uuid::new_v4().simple().to_string()[..8]);
    platform
        .apply_campaign(Campaign::new(&id, spec(args.requests))?)
        .await?;
    let client = warmed_client(args, &base).await?;

    let url = format!("{base}/api/v1/campaigns/{id}/requests");
    let n = args.requests;
    let admit = admit_users(args, &client, &url, ("user", 0, n), 202).await?;
    let live = live_route(args, &client, &base, n).await?;
    // The campaign is sold out now (capacity = requests). Once its last coupon is committed,
    // the same path again with new users, then the trivial route again: every answer is
    // `410 sold_out`, so nothing is written, issued or published — the admission path alone,
    // with no pipeline working beside it.
    let deadline = Instant::now() + Duration::from_secs(120);
    while platform.store().issued_count(&id).await? < n as i64 {
        anyhow::ensure!(
            Instant::now() < deadline,
            "the campaign's coupons were not all issued within 120 s"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let sold_out = admit_users(args, &client, &url, ("late", 0, n), 410).await?;
    let quiet_live = live_route(args, &client, &base, n).await?;
    let batches = match redis_url {
        Some(_) => "-".to_owned(),
        None => group_commits(&client, &base).await?,
    };
    println!(
        "| {label} | {:.0} | {:.2} / {:.2} | {:.0} | {:.2} / {:.2} | {:.2} | {:.0} | {:.2} | {batches} |",
        admit.per_second,
        admit.p50_ms,
        admit.p99_ms,
        live.per_second,
        live.p50_ms,
        live.p99_ms,
        admit.per_second / live.per_second,
        sold_out.per_second,
        sold_out.per_second / quiet_live.per_second,
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
        .apply_campaign(Campaign::new(&id, spec(args.requests * 2))?)
        .await?;
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(args.concurrency)
        .build()?;
    let url = format!("{base}/api/v1/campaigns/{id}/requests");
    let admit = |from: usize| {
        let (client, url) = (client.clone(), url.clone());
        async move { admit_users(args, &client, &url, ("user", from, args.requests / 2), 202).await }
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
    let value = |series: &str| metric(&text, series);
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

/// The three reference plugins (`reuse = 128`) behind a storm: on the embedded bus over SQLite,
/// and with `--kafka-brokers` on Kafka over MariaDB (`--mysql-url`, else SQLite) and Redis
/// admission (`--redis-url`, else embedded). How far the consumer groups trail the issuer.
async fn consumers_phase(args: &Args, plugins: &std::path::Path) -> anyhow::Result<()> {
    let n = args.coupons;
    println!(
        "\nConsumer groups (notification, history, stats; reuse = 128) behind a storm of {n} \
         coupons: per coupon, from its chunk's commit to the last group having handled it:\n"
    );
    println!(
        "| bus | database | last commit s | every group done s | issuer coupons/s | groups events/s | commit → all handled p50 / p99 / max ms |"
    );
    println!("|---|---|---|---|---|---|---|");
    let mut runs = vec![(None, None)];
    if let Some(brokers) = args.kafka_brokers.as_deref() {
        runs.push((Some(brokers), args.mysql_url.as_deref()));
    }
    for (brokers, server) in runs {
        let scratch = issuing::Scratch::new(server).await?;
        let setup = issuing::Setup {
            database_url: &scratch.url,
            redis_url: brokers.and(args.redis_url.as_deref()),
            kafka_brokers: brokers,
            plugins: Some(plugins),
            coupons: n,
        };
        let storm = issuing::storm(args, &setup).await?;
        let c = storm.consumers.context("consumers measured")?;
        println!(
            "| {} | {} | {:.2} | {:.2} | {:.0} | {:.0} | {} / {} / {} |",
            if brokers.is_some() {
                "Kafka"
            } else {
                "embedded"
            },
            scratch.label,
            storm.issued.as_secs_f64(),
            c.handled.as_secs_f64(),
            c.issuer_rate,
            c.slowest_group_rate,
            c.lag_p50_ms,
            c.lag_p99_ms,
            c.lag_max_ms,
        );
        scratch.drop().await?;
    }
    Ok(())
}

/// A series' value in Prometheus text, summed over its labels (0 when absent).
fn metric(text: &str, series: &str) -> f64 {
    text.lines()
        .filter_map(|l| {
            let rest = l.strip_prefix(series)?;
            let value = match rest.strip_prefix('{') {
                Some(labelled) => labelled.split_once("} ")?.1,
                None => rest.strip_prefix(' ')?,
            };
            value.trim().parse::<f64>().ok()
        })
        .sum()
}

/// Issuing into each database given: a storm through the host (Redis admission when
/// `--redis-url` is given), the issuer draining a full queue, and the raw-INSERT baseline,
/// each database's three back to back.
async fn issuing_phase(args: &Args) -> anyhow::Result<()> {
    let n = args.coupons;
    let queue = if args.redis_url.is_some() {
        "redis"
    } else {
        "embedded"
    };
    println!(
        "\nIssuing {n} coupons at the default chunk size ({}): a storm of {n} distinct users \
         ({queue} admission, {} in flight) timed from the first request to the last commit; the \
         issuer draining {n} queued requests; raw multi-row INSERTs of the same rows (100 per \
         transaction, one connection):\n",
        firstcome_core::campaign::DEFAULT_CHUNK_SIZE,
        args.concurrency
    );
    println!(
        "| database | storm admit req/s (p50 / p99 ms) | last 202 s | last commit s | storm coupons/s | chunks | drain coupons/s | raw rows/s | storm / raw | drain / raw |"
    );
    println!("|---|---|---|---|---|---|---|---|---|---|");
    let servers = [
        Some(None),
        args.mysql_url.as_deref().map(Some),
        args.postgres_url.as_deref().map(Some),
    ];
    for server in servers.into_iter().flatten() {
        let scratch = issuing::Scratch::new(server).await?;
        let setup = issuing::Setup {
            database_url: &scratch.url,
            redis_url: args.redis_url.as_deref(),
            kafka_brokers: None,
            plugins: None,
            coupons: n,
        };
        let storm = issuing::storm(args, &setup).await?;
        let drain = issuing::drain(&scratch.url, n).await?;
        let raw = issuing::raw_inserts(&scratch.url, n).await?;
        let storm_rate = n as f64 / storm.issued.as_secs_f64();
        println!(
            "| {} | {:.0} ({:.2} / {:.2}) | {:.2} | {:.2} | **{storm_rate:.0}** | {:.0} | {drain:.0} | {raw:.0} | **{:.2}** | {:.2} |",
            scratch.label,
            storm.admit_per_second,
            storm.admit_p50_ms,
            storm.admit_p99_ms,
            storm.admitted.as_secs_f64(),
            storm.issued.as_secs_f64(),
            storm.chunks,
            storm_rate / raw,
            drain / raw,
        );
        scratch.drop().await?;
    }
    Ok(())
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
    let campaign = Campaign::new(&id, spec(args.events))?;
    store.upsert_campaign(&campaign).await?;
    for start in (0..args.events).step_by(500) {
        let items: Vec<firstcome_admission::QueueItem> = (start..(start + 500).min(args.events))
            .map(|i| firstcome_admission::QueueItem {
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
        busy_lanes: firstcome_bus::default_busy_lanes(),
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
    let mut with_history = spec(REQUESTS);
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
            .admit(
                &campaign,
                &firstcome_core::user::UserId::parse(&format!("user-{i}"))?,
                firstcome_core::clock::now_ms(),
            )
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
    let campaign = Campaign::new(&id, spec(args.coupons))?;
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
            .admit(
                &campaign,
                &firstcome_core::user::UserId::parse(&format!("user-{i}"))?,
                firstcome_core::clock::now_ms(),
            )
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
        println!(
            "Admission through HTTP vs. GET /health/live on the same server; `admit` while the \
             issuer, the relay and the history group work behind it, `sold out` the same path \
             with nothing behind it, against the trivial route measured right after it:\n"
        );
        println!(
            "| queue | admit req/s | admit p50 / p99 ms | live req/s | live p50 / p99 ms | ratio | sold-out req/s | sold-out ratio | group commits |"
        );
        println!("|---|---|---|---|---|---|---|---|---|");
        http_phase(&args, "embedded", None).await?;
        if let Some(url) = &args.redis_url {
            http_phase(&args, "redis", Some(url)).await?;
            http_phase_with(&args, "redis, no sold-out flag", Some(url), 0, false).await?;
        }
        if let Some(url) = &args.redis_cluster_url {
            http_phase(&args, "redis cluster", Some(url)).await?;
            http_phase_with(&args, "redis cluster, WAIT 1", Some(url), 1, true).await?;
        }
    }
    if args.runs("shoppers") {
        println!(
            "\nAdmission with the shopper verified (auth.mode jwt, RS256; signed-header) against \
             open, on the embedded queue:\n"
        );
        shoppers::phase(args.requests, args.concurrency, args.shopper_rounds).await?;
    }
    if let Some(url) = args
        .redis_cluster_url
        .as_ref()
        .filter(|_| args.runs("shards"))
    {
        shards::phase(url, args.requests, args.concurrency, 4).await?;
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
        issuing_phase(&args).await?;
    }
    if let Some(plugins) = args.plugins.as_ref().filter(|_| args.runs("consumers")) {
        consumers_phase(&args, plugins).await?;
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
            "\nStats plugin: sandboxed component (fresh instance per event, and reuse = 128) vs. the same logic native:\n"
        );
        plugin::phase(&args, plugins).await?;
    }
    if args.runs("languages")
        && let (Some(plugins), Some(languages)) = (&args.plugins, &args.language_plugins)
    {
        println!(
            "\nThe stats logic in Rust, Python and JavaScript ({} events per run):\n",
            args.language_events
        );
        languages::phase(
            &plugins.join("stats.wasm"),
            &languages.join("python_stats.wasm"),
            &languages.join("js_stats.wasm"),
            args.language_events,
        )
        .await?;
    }
    Ok(())
}
