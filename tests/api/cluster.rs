//! Admission on a Redis Cluster: the headline storm on the shared cluster of `tests/run.sh`,
//! and, on clusters of the tests' own (`tests/redis-cluster.sh`, three primaries with a
//! replica each), a failover in the middle of a storm: a manual `CLUSTER FAILOVER` and a
//! primary killed with `SIGKILL`. Every invariant is checked after each: exactly `capacity`
//! coupons, no user twice, every `202` issued at its position.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use firstcome_admission::redis::RedisAdmission;
use rand::seq::SliceRandom;

use crate::helpers::{Backend, Backends, TestApp, coupons, spawn_app_on, spec, wait_for};

/// The script that starts, restarts and stops test clusters.
const SCRIPT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../tests/redis-cluster.sh");

/// A Redis Cluster of a test's own, stopped when dropped.
pub struct OwnCluster {
    dir: PathBuf,
    pub url: String,
}

impl OwnCluster {
    /// Three primaries with one replica each, in `dir`.
    pub fn start(dir: &Path) -> Self {
        let out = std::process::Command::new("bash")
            .arg(SCRIPT)
            .arg("start")
            .arg(dir)
            .output()
            .expect("bash runs");
        assert!(
            out.status.success(),
            "the cluster starts: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        Self {
            dir: dir.to_path_buf(),
            url: String::from_utf8(out.stdout).unwrap().trim().to_owned(),
        }
    }

    /// The ports of the primary serving `key`'s slot and of its replica, if it has one.
    pub async fn primary_and_replica_of(&self, key: &str) -> (u16, Option<u16>) {
        // Any node that answers (one may have been killed).
        let mut conn = None;
        for seed in self.url.trim_start_matches("redis+cluster://").split(',') {
            let client = redis::Client::open(format!("redis://{seed}")).unwrap();
            if let Ok(c) = client.get_multiplexed_async_connection().await {
                conn = Some(c);
                break;
            }
        }
        let mut conn = conn.expect("a node of the cluster answers");
        let slot: u16 = redis::cmd("CLUSTER")
            .arg("KEYSLOT")
            .arg(key)
            .query_async(&mut conn)
            .await
            .unwrap();
        let nodes: String = redis::cmd("CLUSTER")
            .arg("NODES")
            .query_async(&mut conn)
            .await
            .unwrap();
        let port_of = |address: &str| -> u16 {
            let host_port = address.split('@').next().unwrap();
            host_port.rsplit(':').next().unwrap().parse().unwrap()
        };
        let lines: Vec<Vec<&str>> = nodes
            .lines()
            .map(|l| l.split_whitespace().collect())
            .collect();
        let primary = lines
            .iter()
            .find(|f| {
                f[2].contains("master")
                    && !f[2].contains("fail")
                    && f[8..].iter().any(|range| {
                        let (from, to) = range.split_once('-').unwrap_or((range, range));
                        from.parse::<u16>().is_ok_and(|from| from <= slot)
                            && to.parse::<u16>().is_ok_and(|to| slot <= to)
                    })
            })
            .expect("a primary serves the slot");
        let replica = lines
            .iter()
            .find(|f| f[3] == primary[0] && !f[2].contains("fail"));
        (port_of(primary[1]), replica.map(|r| port_of(r[1])))
    }

    /// Starts the node on `port` again: it rejoins, as a replica when its replica took over.
    pub fn restart(&self, port: u16) {
        let status = std::process::Command::new("bash")
            .arg(SCRIPT)
            .arg("restart")
            .arg(&self.dir)
            .arg(port.to_string())
            .status()
            .unwrap();
        assert!(status.success(), "node {port} starts again");
    }

    /// Kills the node on `port` with SIGKILL (no shutdown, no last replication).
    pub fn kill(&self, port: u16) {
        self.signal(port, "-KILL");
    }

    /// Freezes (SIGSTOP) or thaws (SIGCONT) the node on `port`.
    pub fn freeze(&self, port: u16, frozen: bool) {
        self.signal(port, if frozen { "-STOP" } else { "-CONT" });
    }

    fn signal(&self, port: u16, signal: &str) {
        let pid = std::fs::read_to_string(self.dir.join(port.to_string()).join("redis.pid"))
            .expect("the node's pid file");
        let status = std::process::Command::new("kill")
            .args([signal, pid.trim()])
            .status()
            .unwrap();
        assert!(status.success());
    }
}

impl Drop for OwnCluster {
    fn drop(&mut self) {
        let _ = std::process::Command::new("bash")
            .arg(SCRIPT)
            .arg("stop")
            .arg(&self.dir)
            .status();
    }
}

/// The headline property on the shared cluster: 5,000 requests from 1,000 users, 100 coupons.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn exactly_capacity_under_a_storm() {
    crate::concurrency::exactly_capacity_under_a_storm(Backend::RedisClusterMariaDb).await;
}

/// Sends the requests (200 at a time) and returns every place promised: the position of each
/// `202`, and of each `409 duplicate_request` (its message names it). A user promised two
/// different places fails the test. `503 unavailable` is allowed (the failover).
pub(crate) async fn storm_promises(
    app: &TestApp,
    campaign: &str,
    users: Vec<String>,
) -> HashMap<String, i64> {
    use futures::StreamExt;
    let answers: Vec<(String, u16, serde_json::Value)> = futures::stream::iter(users)
        .map(|user| async move {
            let (status, body) = app.request(campaign, &user).await;
            (user, status, body)
        })
        .buffer_unordered(200)
        .collect()
        .await;
    let mut promised: HashMap<String, i64> = HashMap::new();
    for (user, status, body) in answers {
        let position = match status {
            202 => body["position"].as_i64().unwrap(),
            409 => {
                assert_eq!(body["code"], "duplicate_request");
                let message = body["message"].as_str().unwrap();
                let digits = message.rsplit("(position ").next().unwrap();
                digits.trim_end_matches(')').parse().unwrap()
            }
            410 => {
                assert_eq!(body["code"], "sold_out");
                continue;
            }
            503 if body["code"] == "unavailable" => continue,
            other => panic!("unexpected {other}: {body}"),
        };
        if let Some(before) = promised.insert(user.clone(), position) {
            assert_eq!(before, position, "{user} was promised two places");
        }
    }
    promised
}

/// Checks every invariant once the storm is over: exactly `capacity` coupons (the demand was
/// more than enough), no user twice, every `202` and `409` issued at the position it named.
pub(crate) async fn check_invariants(
    app: &TestApp,
    campaign: &str,
    capacity: i64,
    accepted: &HashMap<String, i64>,
) {
    app.wait_issued(campaign, accepted.len() as i64, 60).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let issued = coupons(&app.backends.store, campaign).await;
    let users: HashSet<&String> = issued.iter().map(|(u, _)| u).collect();
    assert_eq!(users.len(), issued.len(), "no user holds two coupons");
    assert!(issued.len() as i64 <= capacity, "never more than capacity");
    let holders: HashMap<&String, i64> = issued.iter().map(|(u, p)| (u, *p)).collect();
    for (user, position) in accepted {
        assert_eq!(
            holders.get(user),
            Some(position),
            "{user} was promised {position}: its coupon is there"
        );
    }
    assert_eq!(issued.len() as i64, capacity, "exactly capacity coupons");
}

/// How a test breaks the campaign's primary in the middle of the storm.
#[derive(Clone, Copy, Debug)]
enum Failover {
    /// `CLUSTER FAILOVER` on its replica: the two swap roles once the replica caught up.
    Manual,
    /// SIGKILL of the primary: its replica is promoted after the node timeout (1 s).
    Kill,
}

/// A host on a cluster of its own and MariaDB, each admission acknowledged by a replica within
/// `wait_ms`. The folder comes first so that it is dropped last: the cluster's nodes are stopped
/// by their pid files in it.
async fn host_on_own_cluster(wait_ms: u64) -> (Arc<tempfile::TempDir>, OwnCluster, TestApp) {
    let dir = Arc::new(tempfile::tempdir().unwrap());
    let cluster = OwnCluster::start(&dir.path().join("cluster"));
    let mut backends =
        Backends::open_with_redis(Backend::RedisClusterMariaDb, dir.path(), &cluster.url).await;
    backends.admission = Arc::new(
        RedisAdmission::connect(&cluster.url)
            .await
            .unwrap()
            .with_replica_acks(1, Duration::from_millis(wait_ms)),
    );
    let app = spawn_app_on(backends, dir.clone(), |_| {}).await;
    (dir, cluster, app)
}

/// `shards`: the campaign's buckets (the failover hits bucket 0's primary).
async fn storm_through_a_failover(how: Failover, shards: u32) {
    // A 202 waits for the replica, so that it survives the primary (without it, this test sees
    // users answered 202 twice after a kill). Until the killed node is back as the new
    // primary's replica, admissions cannot be acknowledged and are answered 503.
    let (_dir, cluster, app) = host_on_own_cluster(1_000).await;
    let capacity = 600;
    let campaign = app
        .campaign(firstcome_core::campaign::CampaignSpec {
            shards: Some(shards),
            ..spec(capacity)
        })
        .await;
    let (primary, replica) = cluster
        .primary_and_replica_of(&format!("fc:{{{campaign}}}:meta"))
        .await;
    let replica = replica.expect("the campaign's primary has a replica");
    // 2,000 users asking three times each: enough demand to sell out after the failover.
    let mut requests: Vec<String> = (0..2000)
        .flat_map(|u| vec![format!("user-{u}"); 3])
        .collect();
    requests.shuffle(&mut rand::rng());
    let break_it = async {
        wait_for(60, || async {
            app.backends
                .admission
                .counts(&campaign)
                .await
                .is_ok_and(|c| c.admitted >= 100)
        })
        .await
        .expect("the storm admits");
        match how {
            Failover::Manual => {
                let mut conn = redis::Client::open(format!("redis://127.0.0.1:{replica}"))
                    .unwrap()
                    .get_multiplexed_async_connection()
                    .await
                    .unwrap();
                let _: () = redis::cmd("CLUSTER")
                    .arg("FAILOVER")
                    .query_async(&mut conn)
                    .await
                    .unwrap();
            }
            Failover::Kill => cluster.kill(primary),
        }
    };
    let (accepted, ()) = tokio::join!(storm_promises(&app, &campaign, requests), break_it);
    let (now_primary, _) = cluster
        .primary_and_replica_of(&format!("fc:{{{campaign}}}:meta"))
        .await;
    assert_eq!(now_primary, replica, "the replica took over");
    if let Failover::Kill = how {
        cluster.restart(primary);
        wait_for(30, || async {
            cluster
                .primary_and_replica_of(&format!("fc:{{{campaign}}}:meta"))
                .await
                .1
                == Some(primary)
        })
        .await
        .expect("the killed node rejoins as the new primary's replica");
    }
    assert!(accepted.len() as i64 <= capacity);
    // Users whose request failed during the failover ask again until the campaign sells out.
    let again: Vec<String> = (0..2000).map(|u| format!("user-{u}")).collect();
    let more = storm_promises(&app, &campaign, again).await;
    let mut all = accepted.clone();
    for (user, position) in more {
        if let Some(before) = all.insert(user.clone(), position) {
            assert_eq!(before, position, "{user} was promised two places");
        }
    }
    check_invariants(&app, &campaign, capacity, &all).await;
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_manual_failover_mid_storm_keeps_every_promise() {
    storm_through_a_failover(Failover::Manual, 1).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_killed_primary_mid_storm_keeps_every_promise() {
    storm_through_a_failover(Failover::Kill, 1).await;
}

/// The same with the campaign split over the three primaries: one bucket's primary is killed.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_killed_primary_mid_storm_keeps_every_promise_of_a_split_campaign() {
    storm_through_a_failover(Failover::Kill, 3).await;
}

/// With a replica's acknowledgement required, a request its replica did not acknowledge is not
/// answered `202` (nor `409`): it is `503` ("may still be admitted"), and once the replica is
/// back the same user is answered with the place Redis holds for them.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn no_202_without_the_replica() {
    let (_dir, cluster, app) = host_on_own_cluster(300).await;
    let campaign = app.campaign(spec(10)).await;
    assert_eq!(app.request(&campaign, "early").await.0, 202);
    let (_, replica) = cluster
        .primary_and_replica_of(&format!("fc:{{{campaign}}}:meta"))
        .await;
    let replica = replica.expect("the campaign's primary has a replica");

    cluster.freeze(replica, true);
    let (status, body) = app.request(&campaign, "late").await;
    assert_eq!(
        (status, body["code"].as_str()),
        (503, Some("unavailable")),
        "{body}"
    );
    let (status, body) = app.request(&campaign, "early").await;
    assert_eq!(status, 503, "a 409 is a promise too: {body}");
    cluster.freeze(replica, false);

    // Redis did admit "late" (the primary ran the script): once acknowledged, it is a 409.
    let (status, body) = app.request(&campaign, "late").await;
    assert_eq!(
        (status, body["code"].as_str()),
        (409, Some("duplicate_request")),
        "{body}"
    );
    assert_eq!(app.request(&campaign, "third").await.0, 202);
    app.wait_issued(&campaign, 3, 30).await;
    app.stop().await;
}
