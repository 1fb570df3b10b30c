//! The fault soak: round after round, a storm of coupon requests against `firstcome serve`
//! processes, with one fault injected at a random moment, then a check of every promise.
//!
//! Two set-ups: the embedded default (one host, SQLite, in-process queue and event log), and
//! two hosts on Redis (a `redis-server` of the soak's own, AOF with `appendfsync always`) +
//! MariaDB + Kafka (tansu; the embedded log when `tansu` is not installed). Faults: SIGKILL a
//! host, SIGKILL and restart Redis, kill the hosts' database sessions, freeze and resume the
//! broker (SIGSTOP/SIGCONT), and a plugin that traps, loops or returns a 70 KB error.
//!
//! After each round: exactly `capacity` coupons (more users than that ask), no user with two,
//! every user answered `202` or `409 duplicate_request` holds one, every coupon's event handled
//! exactly once by the history and stats groups (one history row per event; the additive
//! `issued` statistic equals the coupons), every group's lag 0, the faulty plugin's events all
//! dead-lettered, and no host log line over 16 KiB nor a round's log growth over 1 MB.
//!
//! `FC_SOAK_ROUNDS` (default 2) rounds per fault kind; `FC_SOAK_SEED` replays a run;
//! `FC_SOAK_FAULTS` (e.g. `FreezeBroker,KillHost`) runs only those kinds.
//! `bash tests/soak.sh --rounds N` runs it alone.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use futures::StreamExt;
use rand::{Rng, SeedableRng};
use serde_json::Value;

use crate::durability::OwnRedis;
use crate::helpers::{
    ADMIN_TOKEN, Backend, free_port, fresh_database, mysql_url, unique, wait_for, wait_ready, wasm,
};

const CAPACITY: i64 = 60;
const USERS: usize = 120;
/// Pause of each storm worker between two requests (16 workers: a storm of about 1 s).
const PACE: Duration = Duration::from_millis(120);
/// Longest host log line allowed, and the most a round may add to a host's log.
const MAX_LOG_LINE: usize = 16 * 1024;
const MAX_LOG_GROWTH: u64 = 1024 * 1024;

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum Fault {
    /// No fault: a round that only checks the promises.
    Nothing,
    KillHost,
    KillRedis,
    KillDbSessions,
    FreezeBroker,
    PluginTrap,
    PluginLoop,
    PluginHugeError,
    /// `SIGSTOP` to Redis for 1–3 s (it keeps its connections open), then `SIGCONT`.
    FreezeRedis,
    /// Another session holds `coupons` locked (`LOCK TABLES ... WRITE`) for 1–3 s.
    LockCoupons,
    /// The round's campaign deleted through one host's admin API mid-storm: what it
    /// admitted is still issued, and no more than that.
    RemoveCampaign,
}

impl Fault {
    fn plugin_mode(self) -> Option<&'static str> {
        match self {
            Self::PluginTrap => Some("trap"),
            Self::PluginLoop => Some("loop"),
            Self::PluginHugeError => Some("huge"),
            _ => None,
        }
    }
}

/// One `firstcome serve` process, restartable on the same port.
pub(crate) struct Host {
    env: Vec<(String, String)>,
    pub(crate) port: u16,
    log: PathBuf,
    child: Option<tokio::process::Child>,
}

impl Host {
    pub(crate) fn base(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    async fn start(&mut self, client: &reqwest::Client) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .unwrap();
        let child = tokio::process::Command::new(env!("CARGO_BIN_EXE_firstcome"))
            .arg("serve")
            .envs(self.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .env("FIRSTCOME_LISTEN", format!("127.0.0.1:{}", self.port))
            .stdout(std::process::Stdio::null())
            .stderr(log)
            .kill_on_drop(true)
            .spawn()
            .unwrap();
        self.child = Some(child);
        wait_ready(client, &self.base(), 60).await;
    }

    async fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            child.start_kill().unwrap();
            child.wait().await.unwrap();
        }
    }

    fn log_size(&self) -> u64 {
        std::fs::metadata(&self.log).map_or(0, |m| m.len())
    }
}

/// Everything one set-up runs on.
pub(crate) struct Rig {
    /// The Redis Cluster of the cluster set-up (three primaries with a replica each). First,
    /// so that it is dropped (its nodes stopped, by their pid files) before `dir` is deleted.
    _cluster: Option<crate::cluster::OwnCluster>,
    pub(crate) name: &'static str,
    pub(crate) dir: tempfile::TempDir,
    campaigns: PathBuf,
    database_url: String,
    pub(crate) store: firstcome_store::Store,
    redis: Option<OwnRedis>,
    pub(crate) broker: Option<crate::kafka::Broker>,
    topic: String,
    pub(crate) hosts: Vec<Host>,
    /// Where storms are sent when not to the hosts themselves (a load balancer in front).
    pub(crate) entry: Option<String>,
    pub(crate) client: reqwest::Client,
    /// The round's campaign, once written.
    current: Option<String>,
}

fn tansu_installed() -> bool {
    std::process::Command::new(std::env::var("FC_TEST_TANSU").unwrap_or_else(|_| "tansu".into()))
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success())
}

impl Rig {
    async fn embedded() -> Self {
        Self::start("embedded", Backend::Embedded, 1).await
    }

    async fn redis_mariadb() -> Self {
        Self::start("redis+mariadb", Backend::RedisMariaDb, 2).await
    }

    /// `hosts` hosts on `backend`: for [`Backend::RedisClusterMariaDb`] a Redis Cluster of the
    /// rig's own, each admission acknowledged by a replica.
    pub(crate) async fn start(name: &'static str, backend: Backend, hosts: usize) -> Self {
        let dir = tempfile::Builder::new()
            .prefix("firstcome-soak-")
            .tempdir()
            .unwrap();
        let campaigns = dir.path().join("campaigns");
        std::fs::create_dir_all(&campaigns).unwrap();
        let database_url = fresh_database(backend, dir.path()).await;
        let store = firstcome_store::Store::open(&database_url).await.unwrap();
        let topic = unique("soak");
        let mut env = vec![
            (
                "FIRSTCOME_CAMPAIGNS_DIR".to_owned(),
                campaigns.display().to_string(),
            ),
            ("FIRSTCOME_DATABASE_URL".into(), database_url.clone()),
            // The soak's storms come from one address.
            ("FIRSTCOME_LIMITS__PER_ADDRESS_PER_S".into(), "0".into()),
            ("FIRSTCOME_LIMITS__PER_USER_PER_S".into(), "0".into()),
            ("FIRSTCOME_ADMIN_TOKEN".into(), ADMIN_TOKEN.into()),
            ("FIRSTCOME_PLUGINS__DIR".into(), "/".into()),
            ("FIRSTCOME_OUTBOX__TOPIC".into(), topic.clone()),
            ("FIRSTCOME_CAMPAIGNS_POLL_MS".into(), "100".into()),
            ("FIRSTCOME_CAMPAIGNS_SETTLE_MS".into(), "200".into()),
            ("FIRSTCOME_CONSUMERS__MAX_RETRIES".into(), "1".into()),
            ("FIRSTCOME_CONSUMERS__RETRY_BACKOFF_MS".into(), "20".into()),
            ("FIRSTCOME_CONSUMERS__POLL_MS".into(), "50".into()),
            ("FIRSTCOME_ISSUER__RECLAIM_IDLE_MS".into(), "1000".into()),
            ("FIRSTCOME_OUTBOX__REPUBLISH_AFTER_MS".into(), "2000".into()),
            ("FIRSTCOME_OUTBOX__RELAY_INTERVAL_MS".into(), "200".into()),
            ("RUST_LOG".into(), "info".into()),
        ];
        let (mut redis, mut cluster, mut broker) = (None, None, None);
        if backend == Backend::RedisClusterMariaDb {
            let own = crate::cluster::OwnCluster::start(&dir.path().join("redis-cluster"));
            env.push(("FIRSTCOME_REDIS_URL".into(), own.url.clone()));
            env.push((
                "FIRSTCOME_ADMISSION__REDIS_WAIT_REPLICAS".into(),
                "1".into(),
            ));
            cluster = Some(own);
        } else if backend != Backend::Embedded {
            let data = dir.path().join("redis");
            std::fs::create_dir_all(&data).unwrap();
            let own =
                OwnRedis::start(&data, &["--appendonly", "yes", "--appendfsync", "always"]).await;
            env.push(("FIRSTCOME_REDIS_URL".into(), own.url()));
            redis = Some(own);
        }
        if backend != Backend::Embedded && tansu_installed() {
            let b = crate::kafka::Broker::start("memory://tansu/").await;
            env.push(("FIRSTCOME_KAFKA_BROKERS".into(), b.address.clone()));
            // Two partitions per host: every member of a group gets some.
            env.push((
                "FIRSTCOME_KAFKA__PARTITIONS".into(),
                (2 * hosts).to_string(),
            ));
            env.push(("FIRSTCOME_KAFKA__SESSION_TIMEOUT_MS".into(), "6000".into()));
            broker = Some(b);
        }
        let client = reqwest::Client::builder()
            .timeout(Duration::from_secs(10))
            .build()
            .unwrap();
        let mut rig = Self {
            name,
            campaigns,
            database_url,
            store,
            redis,
            _cluster: cluster,
            broker,
            topic,
            hosts: Vec::new(),
            entry: None,
            client,
            dir,
            current: None,
        };
        for i in 0..hosts {
            let data = rig.dir.path().join(format!("host-{i}"));
            std::fs::create_dir_all(&data).unwrap();
            let mut env = env.clone();
            env.push(("FIRSTCOME_DATA_DIR".into(), data.display().to_string()));
            if backend == Backend::Embedded {
                // The embedded host keeps its SQLite database in its data folder.
                env.retain(|(k, _)| k != "FIRSTCOME_DATABASE_URL");
                env.push(("FIRSTCOME_DATABASE_URL".into(), rig.database_url.clone()));
            }
            let mut host = Host {
                env,
                port: free_port(),
                log: rig.dir.path().join(format!("host-{i}.log")),
                child: None,
            };
            host.start(&rig.client).await;
            rig.hosts.push(host);
        }
        rig
    }

    /// The fault kinds this set-up can inject, narrowed to `FC_SOAK_FAULTS` (comma-separated
    /// names as the table prints them) when set.
    fn faults(&self) -> Vec<Fault> {
        let mut faults = self.possible_faults();
        if let Ok(only) = std::env::var("FC_SOAK_FAULTS") {
            let only: Vec<String> = only.split(',').map(|f| f.trim().to_lowercase()).collect();
            faults.retain(|f| only.contains(&format!("{f:?}").to_lowercase()));
        }
        faults
    }

    fn possible_faults(&self) -> Vec<Fault> {
        let mut faults = vec![Fault::KillHost];
        if self.redis.is_some() {
            faults.extend([
                Fault::KillRedis,
                Fault::KillDbSessions,
                Fault::FreezeRedis,
                Fault::LockCoupons,
            ]);
        }
        faults.push(Fault::RemoveCampaign);
        if self.broker.is_some() {
            faults.push(Fault::FreezeBroker);
        }
        faults.extend([Fault::PluginTrap, Fault::PluginLoop, Fault::PluginHugeError]);
        faults
    }

    /// Writes the round's campaign file and waits until every host serves it.
    pub(crate) async fn campaign(&self, fault: Fault) -> String {
        let id = unique("soak");
        let mut text = format!(
            "name = \"Soak\"\ncapacity = {CAPACITY}\nvalue = 100\nchunk_size = 10\n\n\
             [plugins.history]\npath = \"{}\"\ngrants = [\"history\"]\n\n\
             [plugins.stats]\npath = \"{}\"\ngrants = [\"stats\"]\n",
            wasm("history").display(),
            wasm("stats").display()
        );
        if let Some(mode) = fault.plugin_mode() {
            text.push_str(&format!(
                "\n[plugins.faulty]\npath = \"{}\"\ngrants = [\"kv\"]\ntimeout_ms = 100\n\
                 settings = {{ mode = \"{mode}\" }}\n",
                wasm("misbehave").display()
            ));
        }
        std::fs::write(self.campaigns.join(format!("{id}.toml")), text).unwrap();
        for host in &self.hosts {
            let url = format!("{}/api/v1/campaigns/{id}", host.base());
            wait_for(30, || async {
                self.client
                    .get(&url)
                    .send()
                    .await
                    .is_ok_and(|r| r.status() == 200)
            })
            .await
            .expect("every host serves the round's campaign");
        }
        id
    }

    /// Injects the fault and heals it (a killed process is started again).
    async fn inject(&mut self, fault: Fault, rng: &mut rand::rngs::StdRng) {
        match fault {
            Fault::KillHost => {
                let i = rng.random_range(0..self.hosts.len());
                self.hosts[i].kill().await;
                tokio::time::sleep(Duration::from_millis(500)).await;
                let client = self.client.clone();
                self.hosts[i].start(&client).await;
            }
            Fault::KillRedis => {
                self.redis.as_mut().unwrap().crash_and_restart().await;
            }
            Fault::KillDbSessions => {
                let name = self.database_url.rsplit('/').next().unwrap().to_owned();
                let admin = firstcome_store::Store::connect(&format!("{}/test", mysql_url()))
                    .await
                    .unwrap();
                let ids: Vec<i64> = sqlx::query_scalar(
                    "SELECT CAST(id AS SIGNED) FROM information_schema.processlist WHERE db = ?",
                )
                .bind(name)
                .fetch_all(admin.pool())
                .await
                .unwrap();
                for id in ids {
                    // A session may end on its own in between.
                    let _ = sqlx::query(&format!("KILL {id}"))
                        .execute(admin.pool())
                        .await;
                }
                admin.close().await;
            }
            Fault::FreezeBroker => {
                let broker = self.broker.as_ref().unwrap();
                broker.pause();
                tokio::time::sleep(Duration::from_millis(rng.random_range(500..2_000))).await;
                broker.unpause();
            }
            Fault::FreezeRedis => {
                let redis = self.redis.as_ref().unwrap();
                redis.freeze();
                tokio::time::sleep(Duration::from_millis(rng.random_range(1_000..3_000))).await;
                redis.thaw();
            }
            Fault::LockCoupons => {
                use sqlx::{Connection, Executor};
                let mut conn = sqlx::AnyConnection::connect(&self.database_url)
                    .await
                    .unwrap();
                conn.execute("LOCK TABLES coupons WRITE").await.unwrap();
                tokio::time::sleep(Duration::from_millis(rng.random_range(1_000..3_000))).await;
                conn.execute("UNLOCK TABLES").await.unwrap();
                conn.close().await.unwrap();
            }
            Fault::RemoveCampaign => {
                let host = &self.hosts[rng.random_range(0..self.hosts.len())];
                let campaign = self.current.clone().unwrap();
                let r = self
                    .client
                    .delete(format!("{}/api/v1/admin/campaigns/{campaign}", host.base()))
                    .bearer_auth(ADMIN_TOKEN)
                    .send()
                    .await
                    .unwrap();
                assert_eq!(r.status(), 204, "the removal is answered at once");
            }
            Fault::Nothing => {}
            // The faulty plugin is in the campaign file from the start.
            Fault::PluginTrap | Fault::PluginLoop | Fault::PluginHugeError => {}
        }
    }

    /// The lag of every group on every host (`None` while a host cannot say).
    async fn lags(&self) -> Option<BTreeMap<String, i64>> {
        let mut lags = BTreeMap::new();
        for host in &self.hosts {
            let r = self
                .client
                .get(format!("{}/api/v1/admin/consumers", host.base()))
                .bearer_auth(ADMIN_TOKEN)
                .send()
                .await
                .ok()?;
            let body: Value = r.json().await.ok()?;
            for c in body["consumers"].as_array()? {
                let group = c["group"].as_str()?.to_owned();
                let lag = c["lag"].as_i64()?;
                let entry = lags.entry(group).or_insert(0);
                *entry = (*entry).max(lag);
            }
        }
        Some(lags)
    }

    /// Dead letters of the round's campaign.
    async fn dead_letters(&self, campaign: &str) -> usize {
        let dlt = firstcome_bus::dlt_topic(&self.topic);
        let letters: Vec<firstcome_bus::Message> = match &self.broker {
            Some(broker) => {
                let bus = firstcome_bus::kafka::KafkaBus::new(
                    &broker.address,
                    firstcome_platform::config::KafkaConfig::default(),
                    self.store.clone(),
                )
                .unwrap();
                use firstcome_bus::EventBus;
                match bus.fetch(&dlt, 10_000).await {
                    Ok(d) => d.into_iter().map(|d| d.message).collect(),
                    Err(_) => Vec::new(),
                }
            }
            None => self
                .store
                .read_log(&dlt, 1, 10_000)
                .await
                .unwrap()
                .into_iter()
                .map(|r| r.message)
                .collect(),
        };
        letters
            .iter()
            .filter(|m| {
                m.payload
                    .contains(&format!("\"campaign_id\":\"{campaign}\""))
            })
            .map(|m| &m.event_id)
            .collect::<HashSet<_>>()
            .len()
    }

    /// One round: a storm with `fault` at a random moment, then every check. Returns the
    /// violations found.
    pub(crate) async fn round(
        &mut self,
        fault: Fault,
        rng: &mut rand::rngs::StdRng,
    ) -> (Vec<String>, usize) {
        let logs_before: Vec<u64> = self.hosts.iter().map(Host::log_size).collect();
        let campaign = self.campaign(fault).await;
        self.current = Some(campaign.clone());
        let users: Vec<String> = (0..USERS).map(|i| format!("user-{i}")).collect();
        let bases: Vec<String> = match &self.entry {
            Some(entry) => vec![entry.clone()],
            None => self.hosts.iter().map(Host::base).collect(),
        };
        let delay = Duration::from_millis(rng.random_range(0..900));
        let mut fault_rng = rand::rngs::StdRng::seed_from_u64(rng.random());
        let client = self.client.clone();
        let first = storm(&client, &bases, &campaign, &users, 16);
        let injected = async {
            tokio::time::sleep(delay).await;
            self.inject(fault, &mut fault_rng).await;
        };
        let (mut answers, ()) = tokio::join!(first, injected);
        // Users with no definite answer (no answer, or 503) ask again until they get one.
        let deadline = Instant::now() + Duration::from_secs(90);
        loop {
            let open: Vec<String> = answers
                .iter()
                .filter(|(_, a)| !definite(a))
                .map(|(u, _)| u.clone())
                .collect();
            if open.is_empty() || Instant::now() > deadline {
                break;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
            for (user, answer) in storm(&self.client, &bases, &campaign, &open, 8).await {
                answers.insert(user, answer);
            }
        }
        let mut violations = Vec::new();
        let undecided = answers.values().filter(|a| !definite(a)).count();
        if undecided > 0 {
            violations.push(format!("{undecided} users never got a definite answer"));
        }
        self.check_round(&campaign, fault, &answers, &mut violations)
            .await;
        let mut restarts = 0;
        for (host, before) in self.hosts.iter().zip(logs_before) {
            check_log(host, before, &mut violations);
            restarts += member_restarts(host, before);
        }
        (violations, restarts)
    }

    async fn check_round(
        &self,
        campaign: &str,
        fault: Fault,
        answers: &HashMap<String, Option<(u16, String)>>,
        violations: &mut Vec<String>,
    ) {
        let store = &self.store;
        // A campaign removed mid-storm issues what it admitted, which may be fewer than its
        // capacity: every promise kept, never more than capacity.
        let removed = fault == Fault::RemoveCampaign;
        let promised: HashSet<&String> = answers
            .iter()
            .filter(|(_, answer)| {
                matches!(answer, Some((202, _)))
                    || matches!(answer, Some((409, code)) if code == "duplicate_request")
            })
            .map(|(user, _)| user)
            .collect();
        let issued = wait_for(60, || async {
            let holders = crate::helpers::coupons(store, campaign).await;
            if removed {
                let held: HashSet<&String> = holders.iter().map(|(u, _)| u).collect();
                promised.iter().all(|u| held.contains(*u))
            } else {
                holders.len() as i64 >= CAPACITY
            }
        })
        .await;
        let holders = crate::helpers::coupons(store, campaign).await;
        let expected = if removed {
            holders.len() as i64
        } else {
            CAPACITY
        };
        if issued.is_none() || holders.len() as i64 != expected || expected > CAPACITY {
            violations.push(format!(
                "{} coupons, not {expected} (capacity {CAPACITY})",
                holders.len()
            ));
        }
        let mut seen = HashSet::new();
        for (user, _) in &holders {
            if !seen.insert(user.clone()) {
                violations.push(format!("{user} holds two coupons"));
            }
        }
        for user in &promised {
            if !seen.contains(*user) {
                violations.push(format!("{user} was promised a coupon and holds none"));
            }
        }
        // Every event handled exactly once by the history and stats groups.
        let handled = wait_for(90, || async {
            let history = store
                .history_of_campaign(campaign)
                .await
                .unwrap_or_default();
            let stats = store.campaign_stats(campaign).await.unwrap_or_default();
            history.len() as i64 >= expected && stats.get("issued").copied() >= Some(expected)
        })
        .await;
        let history = store.history_of_campaign(campaign).await.unwrap();
        let events: HashSet<&String> = history.iter().map(|h| &h.event_id).collect();
        let stats = store.campaign_stats(campaign).await.unwrap();
        if handled.is_none() || history.len() as i64 != expected || events.len() as i64 != expected
        {
            violations.push(format!(
                "history holds {} rows of {} events for {expected} coupons",
                history.len(),
                events.len()
            ));
        }
        if stats.get("issued").copied() != Some(expected) {
            violations.push(format!(
                "stats counted {:?} issued for {expected} coupons (an event applied twice or never)",
                stats.get("issued")
            ));
        }
        if fault.plugin_mode().is_some() {
            let lettered = wait_for(120, || async {
                self.dead_letters(campaign).await as i64 >= expected
            })
            .await;
            if lettered.is_none() {
                let n = self.dead_letters(campaign).await;
                violations.push(format!("{n} of {expected} faulty events dead-lettered"));
            }
        }
        let settled = wait_for(90, || async {
            self.lags()
                .await
                .is_some_and(|lags| lags.values().all(|lag| *lag == 0))
        })
        .await;
        if settled.is_none() {
            violations.push(format!(
                "a consumer group is stuck: {:?}",
                self.lags().await
            ));
        }
    }
}

/// Whether an answer settles the user's request: admitted, already admitted, sold out.
fn definite(answer: &Option<(u16, String)>) -> bool {
    matches!(answer, Some((202 | 409 | 410, _)))
}

/// Sends one request per user, spread over the hosts, `concurrency` at a time.
async fn storm(
    client: &reqwest::Client,
    bases: &[String],
    campaign: &str,
    users: &[String],
    concurrency: usize,
) -> HashMap<String, Option<(u16, String)>> {
    futures::stream::iter(users.iter().enumerate())
        .map(|(i, user)| async move {
            let base = &bases[i % bases.len()];
            let answer = async {
                let r = client
                    .post(format!("{base}/api/v1/campaigns/{campaign}/requests"))
                    .json(&serde_json::json!({ "user_id": user }))
                    .send()
                    .await
                    .ok()?;
                let status = r.status().as_u16();
                let body: Value = r.json().await.ok()?;
                Some((status, body["code"].as_str().unwrap_or_default().to_owned()))
            };
            let answer = answer.await;
            // Paced, so that the storm lasts about a second and the fault lands inside it.
            tokio::time::sleep(PACE).await;
            (user.clone(), answer)
        })
        .buffer_unordered(concurrency)
        .collect()
        .await
}

/// The host's log stays within bounds: no line over [`MAX_LOG_LINE`], and the round added at
/// most [`MAX_LOG_GROWTH`].
fn check_log(host: &Host, before: u64, violations: &mut Vec<String>) {
    let after = host.log_size();
    if after.saturating_sub(before) > MAX_LOG_GROWTH {
        violations.push(format!(
            "{} grew by {} bytes in one round",
            host.log.display(),
            after - before
        ));
    }
    let text = std::fs::read(&host.log).unwrap_or_default();
    if let Some(line) = text.split(|b| *b == b'\n').find(|l| l.len() > MAX_LOG_LINE) {
        violations.push(format!(
            "{} has a line of {} bytes: {}...",
            host.log.display(),
            line.len(),
            String::from_utf8_lossy(&line[..200])
        ));
    }
}

/// Consumer group members the host restarted since byte `from` of its log (a member that
/// failed, or left a stuck group to rejoin it).
fn member_restarts(host: &Host, from: u64) -> usize {
    let text = std::fs::read(&host.log).unwrap_or_default();
    let from = (from as usize).min(text.len());
    String::from_utf8_lossy(&text[from..])
        .matches("consumer group member failed; restarting it")
        .count()
}

/// The soak; a short version runs with the suite (two rounds per fault kind and set-up).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn fault_soak() {
    let rounds: usize = std::env::var("FC_SOAK_ROUNDS")
        .ok()
        .and_then(|r| r.parse().ok())
        .unwrap_or(2);
    let seed: u64 = std::env::var("FC_SOAK_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(rand::random);
    eprintln!("fault soak: {rounds} round(s) per fault kind, FC_SOAK_SEED={seed}");
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    // (set-up, fault) → (rounds, violations, consumer group members restarted)
    let mut table: BTreeMap<(&str, Fault), (usize, usize, usize)> = BTreeMap::new();
    let mut all = Vec::new();
    let started = Instant::now();
    for mut rig in [Rig::embedded().await, Rig::redis_mariadb().await] {
        for _ in 0..rounds {
            for fault in rig.faults() {
                let round = Instant::now();
                let (violations, restarts) = rig.round(fault, &mut rng).await;
                eprintln!(
                    "  {:<14} {:<16} {:>5.1} s  {}",
                    rig.name,
                    format!("{fault:?}"),
                    round.elapsed().as_secs_f64(),
                    if violations.is_empty() {
                        "ok".to_owned()
                    } else {
                        violations.join("; ")
                    }
                );
                let entry = table.entry((rig.name, fault)).or_default();
                entry.0 += 1;
                entry.1 += violations.len();
                entry.2 += restarts;
                all.extend(
                    violations
                        .into_iter()
                        .map(|v| format!("{} {fault:?}: {v}", rig.name)),
                );
            }
        }
        if let Some(broker) = rig.broker.as_mut() {
            broker.stop().await;
        }
        if all.iter().any(|v| v.starts_with(rig.name)) {
            // The hosts' logs (and Redis's) are what explain a violation.
            let kept = rig.dir.keep();
            eprintln!("{}: logs kept in {}", rig.name, kept.display());
        }
    }
    eprintln!(
        "\nfault soak, seed {seed}, {:.0} s",
        started.elapsed().as_secs_f64()
    );
    eprintln!(
        "| set-up | fault | rounds | violations | group members restarted |\n|---|---|---:|---:|---:|"
    );
    for ((rig, fault), (n, bad, restarts)) in &table {
        eprintln!("| {rig} | {fault:?} | {n} | {bad} | {restarts} |");
    }
    assert!(all.is_empty(), "violations:\n{}", all.join("\n"));
}
