//! `spawn_app` and friends: a host on port 0 over fresh backends, one per test.
//!
//! Services come from `FC_TEST_REDIS_URL`, `FC_TEST_MYSQL_URL` and
//! `FC_TEST_POSTGRES_URL` (defaults: the local servers). Each test gets its own MariaDB
//! or PostgreSQL database (`fct_...`) or SQLite file, and campaign ids unique to it, so Redis
//! keys never collide. (Not `FIRSTCOME_TEST_*`: `FIRSTCOME_*` is the host's configuration, which
//! refuses keys it does not know, and the tests run the `firstcome` binary.)

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use firstcome::app::App;
use firstcome_admission::Admission;
use firstcome_admission::embedded::EmbeddedAdmission;
use firstcome_admission::redis::RedisAdmission;
use firstcome_core::campaign::{Campaign, CampaignSpec};
use firstcome_platform::Platform;
use firstcome_platform::config::Config;
use firstcome_store::Store;
use futures::StreamExt;
use serde_json::Value;
use tokio_util::sync::CancellationToken;

pub const ADMIN_TOKEN: &str = "test-admin-token-of-thirty-two-chars-or-more";

/// Which backends a test host runs on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Backend {
    /// SQLite + in-process admission: the default with no configuration.
    Embedded,
    RedisMariaDb,
    RedisPostgres,
    /// The shared Redis Cluster of `FC_TEST_REDIS_CLUSTER_URL` + MariaDB.
    RedisClusterMariaDb,
}

pub fn redis_url() -> String {
    std::env::var("FC_TEST_REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379/".into())
}

/// The Redis Cluster `tests/run.sh` starts (`tests/redis-cluster.sh`), as
/// `redis+cluster://host:port,...`.
pub fn redis_cluster_url() -> String {
    std::env::var("FC_TEST_REDIS_CLUSTER_URL").expect(
        "FC_TEST_REDIS_CLUSTER_URL names a Redis Cluster: run `bash tests/redis-cluster.sh start \
         DIR` and export the URL it prints (tests/run.sh does)",
    )
}

pub fn mysql_url() -> String {
    std::env::var("FC_TEST_MYSQL_URL").unwrap_or_else(|_| "mysql://root@127.0.0.1:3306".into())
}

fn postgres_url() -> String {
    std::env::var("FC_TEST_POSTGRES_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432".into())
}

/// A port nobody listens on now, for a server a test starts.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

pub fn unique(prefix: &str) -> String {
    format!(
        "{prefix}-{}",
        &uuid::Uuid::new_v4().simple().to_string()[..12]
    )
}

/// A fresh database of the backend's engine; returns its URL.
pub async fn fresh_database(backend: Backend, dir: &std::path::Path) -> String {
    let name = format!("fct_{}", &uuid::Uuid::new_v4().simple().to_string()[..16]);
    let (admin_url, url) = match backend {
        Backend::Embedded => return format!("sqlite:{}", dir.join("firstcome.db").display()),
        Backend::RedisMariaDb | Backend::RedisClusterMariaDb => (
            format!("{}/test", mysql_url()),
            format!("{}/{name}", mysql_url()),
        ),
        Backend::RedisPostgres => (
            format!("{}/postgres", postgres_url()),
            format!("{}/{name}", postgres_url()),
        ),
    };
    let admin = Store::connect(&admin_url)
        .await
        .expect("the test database server answers");
    sqlx::query(&format!("CREATE DATABASE {name}"))
        .execute(admin.pool())
        .await
        .unwrap();
    admin.close().await;
    url
}

/// Backends opened for a test, shareable between several hosts.
#[derive(Clone, Debug)]
pub struct Backends {
    pub database_url: String,
    pub redis_url: Option<String>,
    pub store: Store,
    pub admission: Arc<dyn Admission>,
    /// Set for the embedded backend, to simulate a restart.
    pub embedded: Option<Arc<EmbeddedAdmission>>,
}

impl Backends {
    pub async fn open(backend: Backend, dir: &std::path::Path) -> Self {
        let redis = match backend {
            Backend::RedisClusterMariaDb => redis_cluster_url(),
            _ => redis_url(),
        };
        Self::open_with_redis(backend, dir, &redis).await
    }

    /// New connections to the same database and Redis: what a second host would have.
    pub async fn reopen(&self) -> Self {
        let store = Store::open(&self.database_url)
            .await
            .expect("database answers");
        let admission: Arc<dyn Admission> = match &self.redis_url {
            Some(url) => Arc::new(RedisAdmission::connect(url).await.expect("Redis answers")),
            None => self.admission.clone(),
        };
        Self {
            store,
            admission,
            ..self.clone()
        }
    }

    pub async fn open_with_redis(backend: Backend, dir: &std::path::Path, redis: &str) -> Self {
        let database_url = fresh_database(backend, dir).await;
        let store = Store::open(&database_url).await.expect("migrations apply");
        let (admission, embedded, redis_url): (Arc<dyn Admission>, _, _) = match backend {
            Backend::Embedded => {
                let e = Arc::new(EmbeddedAdmission::new(store.clone()));
                (e.clone(), Some(e), None)
            }
            _ => (
                Arc::new(RedisAdmission::connect(redis).await.expect("Redis answers")),
                None,
                Some(redis.to_owned()),
            ),
        };
        Self {
            database_url,
            redis_url,
            store,
            admission,
            embedded,
        }
    }
}

/// A running host and an HTTP client for it.
#[derive(Debug)]
pub struct TestApp {
    pub address: String,
    /// Where the admin plane is served (`address` unless `admin_listen` names its own).
    pub admin_address: String,
    pub client: reqwest::Client,
    pub platform: Arc<Platform>,
    pub backends: Backends,
    pub shutdown: CancellationToken,
    /// Keeps the host's data directory until the test ends.
    _dir: Arc<tempfile::TempDir>,
    task: tokio::task::JoinHandle<anyhow::Result<()>>,
}

pub fn test_config(dir: &std::path::Path) -> Config {
    let mut config = Config {
        listen: "127.0.0.1:0".parse().unwrap(),
        data_dir: dir.to_path_buf(),
        admin_token: Some(ADMIN_TOKEN.into()),
        campaigns_poll_ms: 100,
        campaigns_settle_ms: 300,
        ..Config::default()
    };
    config.issuer.poll_ms = 20;
    config.issuer.retry_backoff_ms = 100;
    config.consumers.retry_backoff_ms = 20;
    config.consumers.poll_ms = 50;
    // The suite's storms come from one address and retry one user many times: admission rates
    // are off here, and on in the tests of limits (`shoppers.rs`).
    config.limits.per_user_per_s = 0;
    config.limits.per_address_per_s = 0;
    // The suite loads components from the build's target folder and from temporary folders:
    // any folder but the host's data folder (the tests of confinement set their own).
    config.plugins.dir = Some("/".into());
    config
}

pub async fn spawn_app(backend: Backend) -> TestApp {
    let dir = Arc::new(tempfile::tempdir().unwrap());
    let backends = Backends::open(backend, dir.path()).await;
    spawn_app_on(backends, dir, |_| {}).await
}

/// Starts a host over `backends`; `tune` adjusts the configuration first.
pub async fn spawn_app_on(
    backends: Backends,
    dir: Arc<tempfile::TempDir>,
    tune: impl FnOnce(&mut Config),
) -> TestApp {
    init_logs();
    let mut config = test_config(dir.path());
    config.database_url = Some(backends.database_url.clone());
    config.redis_url = backends.redis_url.clone();
    tune(&mut config);
    let app = App::build_with(config, backends.store.clone(), backends.admission.clone())
        .await
        .expect("the host starts");
    let address = format!("http://{}", app.local_addr());
    let admin_address = format!("http://{}", app.admin_addr());
    let platform = app.platform();
    let shutdown = app.shutdown_token();
    let task = tokio::spawn(app.run_until_stopped());
    TestApp {
        address,
        admin_address,
        client: reqwest::Client::builder()
            .pool_max_idle_per_host(256)
            .build()
            .unwrap(),
        platform,
        backends,
        shutdown,
        _dir: dir,
        task,
    }
}

fn init_logs() {
    if std::env::var_os("TEST_LOG").is_some() {
        firstcome::telemetry::init(firstcome_platform::config::LogFormat::Text);
    }
}

pub fn spec(capacity: i64) -> CampaignSpec {
    CampaignSpec {
        name: "Test campaign".into(),
        capacity,
        value: 1000,
        opens_at: None,
        closes_at: None,
        coupon_expires_at: None,
        chunk_size: None,
        shards: None,
        plugins: Default::default(),
        announce_at: None,
        public_stats: false,
        limits: Default::default(),
    }
}

/// A built component: the reference plugins (`notification`, `history`, `stats`) and the
/// test fixtures of `tests/plugins` (`misbehave`, `rogue`) and the example of
/// `examples/plugins` (`fraud_watch`). The workspaces are built once per test run, for
/// wasm32-wasip2, into the test build's target folder.
pub fn wasm(name: &str) -> std::path::PathBuf {
    static BUILT: std::sync::OnceLock<std::path::PathBuf> = std::sync::OnceLock::new();
    let dir = BUILT.get_or_init(|| {
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap();
        let target = std::env::var_os("CARGO_TARGET_DIR")
            .map(std::path::PathBuf::from)
            .unwrap_or_else(|| root.join("target"));
        let target = if target.is_absolute() { target } else { root.join(target) };
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        for workspace in ["plugins", "tests/plugins", "examples/plugins"] {
            let out = std::process::Command::new(&cargo)
                .current_dir(root.join(workspace))
                .args(["build", "--release", "--locked", "--target", "wasm32-wasip2", "--target-dir"])
                .arg(&target)
                .output()
                .expect("running cargo");
            assert!(
                out.status.success(),
                "building the {workspace} components failed (is the wasm32-wasip2 target installed?):\n{}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        target.join("wasm32-wasip2/release")
    });
    let path = dir.join(format!("{name}.wasm"));
    assert!(path.exists(), "{} was not built", path.display());
    path
}

/// Lets `role`'s plugin email `address` besides the event's shopper.
pub fn recipient(spec: &mut CampaignSpec, role: &str, address: &str) {
    spec.plugins
        .get_mut(role)
        .expect("the role has a plugin")
        .recipients
        .insert(address.to_owned());
}

/// `spec` with a `[plugins.{role}]` section.
pub fn with_plugin(
    mut spec: CampaignSpec,
    role: &str,
    wasm: &std::path::Path,
    grants: &[&str],
    settings: &[(&str, &str)],
) -> CampaignSpec {
    let plugin = firstcome_plugin::PluginSpec {
        path: wasm.to_owned(),
        sha256: None,
        grants: grants
            .iter()
            .map(|g| serde_json::from_value(Value::String((*g).to_owned())).expect("a capability"))
            .collect(),
        recipients: Default::default(),
        settings: settings
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect(),
        timeout_ms: None,
        memory_mb: None,
        reuse: None,
    };
    spec.plugins.insert(role.to_owned(), plugin);
    spec
}

/// The history plugin, as most campaigns in these tests run it.
pub fn with_history(spec: CampaignSpec) -> CampaignSpec {
    with_plugin(spec, "history", &wasm("history"), &["history"], &[])
}

impl TestApp {
    /// Applies a campaign with a fresh id; returns the id.
    pub async fn campaign(&self, spec: CampaignSpec) -> String {
        let id = unique("c");
        self.platform
            .apply_campaign(Campaign::new(&id, spec).unwrap())
            .await
            .expect("campaign applies");
        id
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.address)
    }

    /// `POST .../requests`; returns (status, body).
    pub async fn request(&self, campaign: &str, user: &str) -> (u16, Value) {
        let r = self
            .client
            .post(self.url(&format!("/api/v1/campaigns/{campaign}/requests")))
            .json(&serde_json::json!({ "user_id": user }))
            .send()
            .await
            .expect("the host answers");
        let status = r.status().as_u16();
        (status, r.json().await.unwrap_or(Value::Null))
    }

    /// The body of a `GET` as text.
    pub async fn text(&self, path: &str) -> String {
        let r = self
            .client
            .get(self.url(path))
            .send()
            .await
            .expect("the host answers");
        r.text().await.unwrap()
    }

    /// A `GET` with the admin token; returns (status, body).
    pub async fn admin_get(&self, path: &str) -> (u16, Value) {
        let r = self
            .client
            .get(self.url(path))
            .bearer_auth(ADMIN_TOKEN)
            .send()
            .await
            .expect("the host answers");
        let status = r.status().as_u16();
        (status, r.json().await.unwrap_or(Value::Null))
    }

    pub async fn get(&self, path: &str) -> (u16, Value) {
        let r = self
            .client
            .get(self.url(path))
            .send()
            .await
            .expect("the host answers");
        let status = r.status().as_u16();
        (status, r.json().await.unwrap_or(Value::Null))
    }

    /// The value of an unlabelled metric in `/metrics` (0 when absent).
    pub async fn metric(&self, name: &str) -> f64 {
        let text = self.text("/metrics").await;
        text.lines()
            .find(|l| l.split(' ').next() == Some(name))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|n| n.parse().ok())
            .unwrap_or_default()
    }

    /// Waits until the campaign has `n` coupons in the database (or panics after `secs`).
    pub async fn wait_issued(&self, campaign: &str, n: i64, secs: u64) {
        wait_for(secs, || async {
            self.backends.store.count_coupons(campaign).await.unwrap() >= n
        })
        .await
        .unwrap_or_else(|| panic!("{n} coupons of {campaign} not issued within {secs}s"));
    }

    pub async fn stop(self) {
        self.shutdown.cancel();
        self.task.await.unwrap().unwrap();
    }
}

/// Waits up to `secs` for a host at `base` (a `firstcome serve` just started) to answer ready.
pub async fn wait_ready(client: &reqwest::Client, base: &str, secs: u64) {
    wait_for(secs, || async {
        client
            .get(format!("{base}/health/ready"))
            .send()
            .await
            .is_ok_and(|r| r.status() == 200)
    })
    .await
    .expect("the process becomes ready");
}

/// Polls `cond` every 20 ms for up to `secs`; `None` on timeout.
pub async fn wait_for<F, Fut>(secs: u64, mut cond: F) -> Option<()>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + Duration::from_secs(secs);
    while tokio::time::Instant::now() < deadline {
        if cond().await {
            return Some(());
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    None
}

/// Every coupon of a campaign as (user, position), straight from the database.
pub async fn coupons(store: &Store, campaign: &str) -> Vec<(String, i64)> {
    store.issued_users(campaign).await.unwrap()
}

/// Runs a test body once per backend.
#[macro_export]
macro_rules! on_all_backends {
    ($name:ident, $body:path) => {
        mod $name {
            use super::*;
            #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
            async fn embedded() {
                $body($crate::helpers::Backend::Embedded).await
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
            async fn redis_mariadb() {
                $body($crate::helpers::Backend::RedisMariaDb).await
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
            async fn redis_postgres() {
                $body($crate::helpers::Backend::RedisPostgres).await
            }
        }
    };
}

/// Sends the requests, spread over the hosts; returns the users accepted with their positions.
/// With `chaos`, a `503 unavailable` (the queue lost its data on every retry) is allowed too.
pub async fn storm(
    apps: &[&TestApp],
    campaign: &str,
    users: Vec<String>,
    chaos: bool,
) -> HashMap<String, i64> {
    let answers: Vec<(String, u16, serde_json::Value)> =
        futures::stream::iter(users.into_iter().enumerate())
            .map(|(i, user)| {
                let app = apps[i % apps.len()];
                async move {
                    let (status, body) = app.request(campaign, &user).await;
                    (user, status, body)
                }
            })
            .buffer_unordered(200)
            .collect()
            .await;
    let mut accepted = HashMap::new();
    for (user, status, body) in answers {
        match status {
            202 => {
                assert!(
                    accepted
                        .insert(user, body["position"].as_i64().unwrap())
                        .is_none()
                );
            }
            409 => assert_eq!(body["code"], "duplicate_request"),
            410 => assert_eq!(body["code"], "sold_out"),
            503 if chaos && body["code"] == "unavailable" => {}
            other => panic!("unexpected {other}: {body}"),
        }
    }
    accepted
}

/// Makes the admission queue lose its data, as a Redis restart without persistence or FLUSHALL
/// would; for the embedded queue, as a restart would (what it recorded comes back). Only for
/// tests whose Redis database is their own.
pub async fn lose_queue_data(backends: &Backends) {
    match (&backends.embedded, &backends.redis_url) {
        (Some(embedded), _) => embedded.clear().await,
        (None, Some(url)) => {
            let mut conn = redis::Client::open(url.as_str())
                .unwrap()
                .get_multiplexed_async_connection()
                .await
                .unwrap();
            let _: () = redis::cmd("FLUSHDB").query_async(&mut conn).await.unwrap();
        }
        (None, None) => unreachable!("a queue is either embedded or on Redis"),
    }
}

/// A consumer handler that records the event ids it handled, failing its first `fail` tries
/// with a retryable error.
#[derive(Debug, Default)]
pub struct Recorder {
    pub seen: std::sync::Mutex<Vec<String>>,
    pub tries: std::sync::atomic::AtomicUsize,
    pub fail: usize,
}

#[async_trait::async_trait]
impl firstcome_bus::Handler for Recorder {
    async fn handle(
        &self,
        event: &firstcome_bus::Delivered,
    ) -> Result<(), firstcome_bus::HandlerError> {
        use std::sync::atomic::Ordering;
        if self.tries.fetch_add(1, Ordering::SeqCst) < self.fail {
            return Err(firstcome_bus::HandlerError::Retryable(
                "downstream unavailable".into(),
            ));
        }
        self.seen
            .lock()
            .unwrap()
            .push(event.message.event_id.clone());
        Ok(())
    }
}

impl Recorder {
    pub fn failing(fail: usize) -> Self {
        Self {
            fail,
            ..Self::default()
        }
    }

    pub fn seen(&self) -> Vec<String> {
        self.seen.lock().unwrap().clone()
    }
}

/// Runs the `firstcome` binary with `FIRSTCOME_*` settings; asserts it succeeded and returns
/// what it printed.
pub fn firstcome(args: &[&str], env: &[(&str, &str)]) -> String {
    let (code, out, err) = firstcome_run(args, env);
    assert_eq!(code, 0, "firstcome {args:?}: {err}");
    out
}

/// Runs the `firstcome` binary; returns its exit code, standard output and standard error.
pub fn firstcome_output(args: &[&str]) -> (i32, String, String) {
    firstcome_run(args, &[])
}

/// Runs the `firstcome` binary with `FIRSTCOME_*` settings; returns its exit code, standard
/// output and standard error.
pub fn firstcome_run(args: &[&str], env: &[(&str, &str)]) -> (i32, String, String) {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_firstcome"))
        .args(args)
        .envs(env.iter().copied())
        .output()
        .expect("the firstcome binary runs");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}
