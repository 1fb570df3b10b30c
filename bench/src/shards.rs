//! The sharded-campaign phase: one campaign on a Redis Cluster with `shards = 1` and
//! `shards = 3`, admitted straight through the admission queue (no HTTP, so that the host's
//! request handling on two cores does not hide Redis), and how far the positions handed out
//! stray from the order the requests were sent in.
//!
//! Each run sends `requests` admissions from distinct users, `concurrency` at a time, to a
//! campaign of `requests / 2` coupons: half are admitted, half sold out. A request's arrival
//! rank is the order it was sent in. For the admitted ones:
//! - **rank deviation**: |rank among the admitted by arrival − rank by position|, mean and p99,
//!   in places;
//! - **admitted after a refusal**: admitted requests sent after the first request that was
//!   refused (0 when first come is exact at the cut; with requests in flight together, a few
//!   even with one bucket).

use std::sync::Arc;
use std::time::Instant;

use firstcome_admission::redis::RedisAdmission;
use firstcome_admission::{Admission, Admit, Floor};
use firstcome_core::campaign::{Campaign, CampaignSpec};
use futures::StreamExt;
use hdrhistogram::Histogram;

/// What one run measured.
struct Run {
    /// Script calls (`EVALSHA`) the cluster ran for the run, over every node: admissions per
    /// call is the batch size the buckets' batch loops reached.
    script_calls: u64,
    per_second: f64,
    p50_ms: f64,
    p99_ms: f64,
    mean_deviation: f64,
    p99_deviation: u64,
    after_refusal: usize,
}

/// Prints the table: `rounds` runs alternating `shards = 1` and `shards = 3`, then the ratio
/// of the means.
pub async fn phase(
    cluster_url: &str,
    requests: usize,
    concurrency: usize,
    rounds: usize,
) -> anyhow::Result<()> {
    println!(
        "\nOne campaign on the Redis Cluster, admitted through the admission queue itself (no \
         HTTP): {requests} requests from distinct users, {concurrency} at a time, capacity \
         {}:\n",
        requests / 2
    );
    println!(
        "| shards | admissions/s | p50 / p99 ms | script calls (requests per call) | rank deviation mean / p99 (places) | admitted after the first refusal |"
    );
    println!("|---|---|---|---|---|---|");
    let queue = Arc::new(RedisAdmission::connect(cluster_url).await?);
    let mut rates = [Vec::new(), Vec::new()];
    for round in 0..rounds.max(2) {
        let shards = if round % 2 == 0 { 1 } else { 3 };
        let before = script_calls(cluster_url).await?;
        let mut run = one_run(&queue, shards, requests, concurrency).await?;
        run.script_calls = script_calls(cluster_url).await? - before;
        println!(
            "| {shards} | {:.0} | {:.2} / {:.2} | {} ({:.1}) | {:.1} / {} | {} |",
            run.per_second,
            run.p50_ms,
            run.p99_ms,
            run.script_calls,
            requests as f64 / run.script_calls.max(1) as f64,
            run.mean_deviation,
            run.p99_deviation,
            run.after_refusal
        );
        rates[round % 2].push(run.per_second);
    }
    let mean = |v: &[f64]| v.iter().sum::<f64>() / v.len() as f64;
    println!(
        "\nshards = 3 against shards = 1, admissions/s: {:.2}",
        mean(&rates[1]) / mean(&rates[0])
    );
    Ok(())
}

async fn one_run(
    queue: &Arc<RedisAdmission>,
    shards: u32,
    requests: usize,
    concurrency: usize,
) -> anyhow::Result<Run> {
    let id = format!("shards-{}", &uuid::Uuid::new_v4().simple().to_string()[..8]);
    let spec = CampaignSpec {
        shards: Some(shards),
        ..crate::spec(requests / 2)
    };
    let campaign = Campaign::new(&id, spec)?;
    queue.sync_campaign(&campaign, &[], false).await?;
    let started = Instant::now();
    let answers: Vec<anyhow::Result<(usize, Admit, u64)>> = futures::stream::iter(0..requests)
        .map(|i| {
            let (queue, id) = (queue.clone(), id.clone());
            async move {
                let t = Instant::now();
                let user = format!("user-{i}");
                let answer = queue
                    .admit(&id, &user, "bench", 0, Floor::default())
                    .await?;
                Ok((i, answer, t.elapsed().as_micros() as u64))
            }
        })
        .buffer_unordered(concurrency)
        .collect()
        .await;
    let elapsed = started.elapsed();
    let mut latency = Histogram::<u64>::new(3)?;
    let mut admitted: Vec<(usize, i64)> = Vec::new();
    let mut first_refused = usize::MAX;
    for answer in answers {
        let (i, answer, micros) = answer?;
        latency.record(micros.max(1))?;
        match answer {
            Admit::Admitted { position } => admitted.push((i, position)),
            Admit::SoldOut => first_refused = first_refused.min(i),
            other => anyhow::bail!("unexpected answer {other:?}"),
        }
    }
    anyhow::ensure!(
        admitted.len() == requests / 2,
        "{} admitted of {} coupons",
        admitted.len(),
        requests / 2
    );
    // Rank by arrival among the admitted, against rank by position.
    admitted.sort_by_key(|(i, _)| *i);
    let mut by_position: Vec<(usize, i64)> = admitted
        .iter()
        .enumerate()
        .map(|(arrival_rank, (_, p))| (arrival_rank, *p))
        .collect();
    by_position.sort_by_key(|(_, p)| *p);
    let mut deviation = Histogram::<u64>::new(3)?;
    let mut sum = 0u64;
    for (position_rank, (arrival_rank, _)) in by_position.iter().enumerate() {
        let d = position_rank.abs_diff(*arrival_rank) as u64;
        sum += d;
        deviation.record(d)?;
    }
    Ok(Run {
        script_calls: 0,
        per_second: requests as f64 / elapsed.as_secs_f64(),
        p50_ms: latency.value_at_quantile(0.5) as f64 / 1000.0,
        p99_ms: latency.value_at_quantile(0.99) as f64 / 1000.0,
        mean_deviation: sum as f64 / admitted.len() as f64,
        p99_deviation: deviation.value_at_quantile(0.99),
        after_refusal: admitted.iter().filter(|(i, _)| *i > first_refused).count(),
    })
}

/// `EVALSHA` calls so far over every node of the cluster at `cluster_url` (`INFO
/// commandstats` of each node that `CLUSTER NODES` lists).
async fn script_calls(cluster_url: &str) -> anyhow::Result<u64> {
    let seed = cluster_url
        .trim_start_matches("redis+cluster://")
        .split(',')
        .next()
        .unwrap_or_default();
    let mut conn = redis::Client::open(format!("redis://{seed}"))?
        .get_multiplexed_async_connection()
        .await?;
    let nodes: String = redis::cmd("CLUSTER")
        .arg("NODES")
        .query_async(&mut conn)
        .await?;
    let mut calls = 0;
    for line in nodes.lines() {
        let Some(addr) = line.split(' ').nth(1).and_then(|a| a.split('@').next()) else {
            continue;
        };
        let mut node = redis::Client::open(format!("redis://{addr}"))?
            .get_multiplexed_async_connection()
            .await?;
        let info: String = redis::cmd("INFO")
            .arg("commandstats")
            .query_async(&mut node)
            .await?;
        calls += info
            .lines()
            .find_map(|l| l.strip_prefix("cmdstat_evalsha:calls="))
            .and_then(|rest| rest.split(',').next())
            .and_then(|n| n.parse::<u64>().ok())
            .unwrap_or(0);
    }
    Ok(calls)
}
