//! Several hosts behind a real load balancer: three `firstcome serve` processes on a Redis
//! Cluster of the test's own (three primaries, a replica each; every `202` acknowledged by a
//! replica) + MariaDB + Kafka (tansu), behind HAProxy (Debian's package). The storms go to the
//! balancer, which spreads them round-robin and takes a host out when its readiness check
//! fails.
//!
//! Two rounds of the soak's (`soak.rs`): one with no fault, after which every host must have
//! handled events of every consumer group (the groups spread their partitions across the
//! hosts), and one with a host killed with SIGKILL in the middle of the storm (and started
//! again). After each: exactly `capacity` coupons, no user with two, every `202` and every
//! `409 duplicate_request` holding a coupon, every event handled exactly once per group, and
//! every group's lag 0.

use std::path::Path;
use std::time::Duration;

use rand::SeedableRng;

use crate::helpers::{Backend, free_port, wait_for};
use crate::soak::{Fault, Rig};

/// HAProxy in front of the hosts, stopped when dropped.
struct Balancer {
    child: std::process::Child,
    base: String,
}

impl Balancer {
    /// Starts HAProxy on a free port, balancing round-robin over `hosts` (ports on 127.0.0.1)
    /// with a readiness check every 500 ms. A request whose connection to a host fails is sent
    /// to another one (`option redispatch`, `retry-on conn-failure`: it never reached the
    /// dead host, so it is not sent twice; a request the host took and then died on is
    /// answered `502`/`503` by HAProxy, and its user asks again).
    fn start(dir: &Path, hosts: &[u16]) -> Self {
        let port = free_port();
        let servers: String = hosts
            .iter()
            .enumerate()
            .map(|(i, p)| format!("    server host-{i} 127.0.0.1:{p} check\n"))
            .collect();
        let config = format!(
            "global\n    maxconn 4096\n\n\
             defaults\n    mode http\n    timeout connect 1s\n    timeout client 30s\n\
             \x20   timeout server 30s\n    timeout http-keep-alive 5s\n    retries 3\n\
             \x20   retry-on conn-failure\n    option redispatch\n\n\
             frontend api\n    bind 127.0.0.1:{port}\n    default_backend hosts\n\n\
             backend hosts\n    balance roundrobin\n    option httpchk GET /health/ready\n\
             \x20   http-check expect status 200\n    default-server inter 500ms fall 2 rise 1\n\
             {servers}"
        );
        let file = dir.join("haproxy.cfg");
        std::fs::write(&file, config).unwrap();
        let child = std::process::Command::new("haproxy")
            .arg("-db")
            .arg("-f")
            .arg(&file)
            .stdout(std::fs::File::create(dir.join("haproxy.log")).unwrap())
            .stderr(std::fs::File::create(dir.join("haproxy.err")).unwrap())
            .spawn()
            .expect("haproxy runs (Debian's haproxy package; tests/run.sh installs it)");
        Self {
            child,
            base: format!("http://127.0.0.1:{port}"),
        }
    }
}

impl Drop for Balancer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Per host, the events its history and stats group members handled.
async fn handled_per_host(client: &reqwest::Client, rig: &Rig) -> Vec<[u64; 2]> {
    // The last events' counters settle with the lag (checked by the round).
    tokio::time::sleep(Duration::from_millis(500)).await;
    let mut counts = Vec::new();
    for host in &rig.hosts {
        counts.push([
            handled_by(client, &host.base(), "history").await,
            handled_by(client, &host.base(), "stats").await,
        ]);
    }
    counts
}

/// A host's count of events its consumer group members handled, for `group`.
async fn handled_by(client: &reqwest::Client, base: &str, group: &str) -> u64 {
    let Ok(r) = client.get(format!("{base}/metrics")).send().await else {
        return 0;
    };
    let text = r.text().await.unwrap_or_default();
    let prefix = format!("firstcome_events_handled_total{{group=\"{group}\"}} ");
    text.lines()
        .find_map(|l| l.strip_prefix(&prefix))
        .and_then(|v| v.trim().parse::<f64>().ok())
        .map_or(0, |v| v as u64)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn three_hosts_behind_haproxy_on_a_redis_cluster() {
    let mut rig = Rig::start("cluster+mariadb", Backend::RedisClusterMariaDb, 3).await;
    assert!(
        rig.broker.is_some(),
        "the test needs tansu (tests/run.sh installs it)"
    );
    let ports: Vec<u16> = rig.hosts.iter().map(|h| h.port).collect();
    let balancer = Balancer::start(rig.dir.path(), &ports);
    let client = rig.client.clone();
    wait_for(30, || async {
        client
            .get(format!("{}/health/ready", balancer.base))
            .send()
            .await
            .is_ok_and(|r| r.status() == 200)
    })
    .await
    .expect("HAProxy answers with a ready host behind it");
    rig.entry = Some(balancer.base.clone());
    let mut rng = rand::rngs::StdRng::seed_from_u64(rand::random());

    // The first round's campaign starts the consumer groups: their members join while its
    // events flow. The second round's events flow through settled groups.
    let (violations, _) = rig.round(Fault::Nothing, &mut rng).await;
    assert!(violations.is_empty(), "no fault: {violations:?}");
    let before = handled_per_host(&client, &rig).await;
    let (violations, _) = rig.round(Fault::Nothing, &mut rng).await;
    assert!(
        violations.is_empty(),
        "no fault, settled groups: {violations:?}"
    );
    let after = handled_per_host(&client, &rig).await;
    // Each consumer group spread its partitions: every host handled some of each group's
    // events of the second round (its campaign has the history and stats plugins).
    for (host, (b, a)) in before.iter().zip(&after).enumerate() {
        for (group, (b, a)) in ["history", "stats"].iter().zip(b.iter().zip(a)) {
            assert!(
                a > b,
                "host {host} handled no event of group {group} in the second round: the group \
                 did not spread (per host, before: {before:?}, after: {after:?})"
            );
        }
    }

    let (violations, _) = rig.round(Fault::KillHost, &mut rng).await;
    assert!(
        violations.is_empty(),
        "a host killed mid-storm: {violations:?}"
    );
    drop(balancer);
    if let Some(broker) = rig.broker.as_mut() {
        broker.stop().await;
    }
    tokio::time::sleep(Duration::from_millis(100)).await;
}
