//! Typed configuration: defaults, then a TOML file (`--config` / `FIRSTCOME_CONFIG`), then
//! `FIRSTCOME_*` environment variables (`__` separates nested keys, e.g.
//! `FIRSTCOME_OUTBOX__REPUBLISH_AFTER_MS`), then command-line flags. Secrets (the admin token,
//! passwords in URLs) never appear in `Debug` output or logs.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use figment::Figment;
use figment::providers::{Env, Format, Serialized, Toml};
use serde::{Deserialize, Serialize};

pub use firstcome_admission::AdmissionConfig;
pub use firstcome_bus::{ConsumerConfig, KafkaConfig};
pub use firstcome_plugin::{EmailConfig, PluginConfig, PushConfig, SmtpTls};

/// Everything a host needs to run.
#[derive(Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Address of the HTTP API.
    pub listen: SocketAddr,
    /// Embedded state (the SQLite database, default campaign folder).
    pub data_dir: PathBuf,
    /// Watched folder of campaign files; `{data_dir}/campaigns` when unset.
    pub campaigns_dir: Option<PathBuf>,
    /// Bearer token of the admin API; unset refuses every admin call.
    pub admin_token: Option<String>,
    /// `sqlite:...`, `mysql://...` or `postgres://...`; unset: `{data_dir}/firstcome.db`.
    pub database_url: Option<String>,
    /// Unset: the in-process admission queue. `redis://host:port/db` for one Redis server,
    /// `redis+cluster://host:port,host:port` for a Redis Cluster.
    pub redis_url: Option<String>,
    pub admission: AdmissionConfig,
    /// Comma-separated `host:port` list; unset: the embedded event log.
    pub kafka_brokers: Option<String>,
    pub kafka: KafkaConfig,
    /// `text` or `json` log lines.
    pub log_format: LogFormat,
    pub issuer: IssuerConfig,
    pub outbox: OutboxConfig,
    pub consumers: ConsumerConfig,
    pub plugins: PluginConfig,
    pub email: EmailConfig,
    pub push: PushConfig,
    /// How often the campaign folder is scanned for changes.
    pub campaigns_poll_ms: u64,
    /// How long a campaign file's content must stay the same before it is applied (a file
    /// last modified longer ago than this is applied when first read).
    pub campaigns_settle_ms: u64,
    pub http: HttpConfig,
}

/// How the HTTP server treats slow and numerous clients.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct HttpConfig {
    /// A connection that has not sent a whole request head (request line and headers) this
    /// long after it opened, or after its previous response, is closed. It is therefore also
    /// how long an idle keep-alive connection stays open: a load balancer's idle timeout
    /// towards the hosts should be shorter.
    pub header_read_timeout_ms: u64,
    /// A request whose body has not arrived whole this long after its head is answered
    /// `408 request_timeout`.
    pub body_read_timeout_ms: u64,
    /// Open connections at most; more wait in the listen backlog until one closes. Lowered at
    /// start-up to fit the process's open-file limit (raised to its hard limit first).
    pub max_connections: usize,
}

impl Default for HttpConfig {
    fn default() -> Self {
        Self {
            header_read_timeout_ms: 10_000,
            body_read_timeout_ms: 10_000,
            max_connections: 10_000,
        }
    }
}

#[derive(Clone, Copy, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct IssuerConfig {
    /// How often an idle issuer looks at its queue for requests admitted by other hosts
    /// (requests admitted by this host wake it at once).
    pub poll_ms: u64,
    /// Pause before retrying a chunk whose transaction failed.
    pub retry_backoff_ms: u64,
    /// Claimed items unacknowledged for this long belong to a dead host and are reclaimed.
    pub reclaim_idle_ms: u64,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct OutboxConfig {
    pub topic: String,
    /// The relay republishes rows still unpublished after this age.
    pub republish_after_ms: u64,
    pub relay_interval_ms: u64,
    /// Rows claimed per relay pass.
    pub relay_batch: u32,
    /// Published rows are deleted after this long.
    pub retention_ms: u64,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 8080)),
            data_dir: PathBuf::from("data"),
            campaigns_dir: None,
            admin_token: None,
            database_url: None,
            redis_url: None,
            admission: AdmissionConfig::default(),
            kafka_brokers: None,
            kafka: KafkaConfig::default(),
            log_format: LogFormat::Text,
            issuer: IssuerConfig::default(),
            outbox: OutboxConfig::default(),
            consumers: ConsumerConfig::default(),
            plugins: PluginConfig::default(),
            email: EmailConfig::default(),
            push: PushConfig::default(),
            campaigns_poll_ms: 500,
            campaigns_settle_ms: 2_000,
            http: HttpConfig::default(),
        }
    }
}

impl Default for IssuerConfig {
    fn default() -> Self {
        Self {
            poll_ms: 50,
            retry_backoff_ms: 500,
            reclaim_idle_ms: 30_000,
        }
    }
}

impl Default for OutboxConfig {
    fn default() -> Self {
        Self {
            topic: "coupon-issued".into(),
            republish_after_ms: 60_000,
            relay_interval_ms: 5_000,
            relay_batch: 500,
            retention_ms: 7 * 24 * 3_600_000,
        }
    }
}

impl Config {
    /// Defaults, then `file` (when given), then `FIRSTCOME_*` variables.
    pub fn load(file: Option<&Path>) -> Result<Self, Box<figment::Error>> {
        let mut figment = Figment::from(Serialized::defaults(Config::default()));
        if let Some(file) = file {
            if !file.exists() {
                return Err(Box::new(figment::Error::from(format!(
                    "configuration file {} does not exist",
                    file.display()
                ))));
            }
            figment = figment.merge(Toml::file(file));
        }
        let config: Self = figment
            .merge(Env::prefixed("FIRSTCOME_").ignore(&["config"]).split("__"))
            .extract()
            .map_err(Box::new)?;
        config
            .check_numbers()
            .map_err(|e| Box::new(figment::Error::from(e)))?;
        Ok(config)
    }

    /// Checks that every number is within the range the host works in: a zero interval would
    /// spin, a huge one would overflow a deadline or never fire. The message names the setting
    /// and its range.
    pub fn check_numbers(&self) -> Result<(), String> {
        const DAY_MS: i128 = 86_400_000;
        let plugin_timeout = i128::from(firstcome_core::plugin_spec::MAX_TIMEOUT_MS);
        let plugin_memory = i128::from(firstcome_core::plugin_spec::MAX_MEMORY_MB);
        let checks: [(&str, i128, i128, i128); 28] = [
            (
                "admission.sold_out_recheck_ms",
                self.admission.sold_out_recheck_ms as i128,
                0,
                60_000,
            ),
            (
                "admission.redis_wait_replicas",
                self.admission.redis_wait_replicas as i128,
                0,
                16,
            ),
            (
                "admission.redis_wait_timeout_ms",
                self.admission.redis_wait_timeout_ms as i128,
                1,
                // Below the Redis connection's 5 s response timeout.
                4_000,
            ),
            (
                "campaigns_poll_ms",
                self.campaigns_poll_ms as i128,
                10,
                60_000,
            ),
            (
                "campaigns_settle_ms",
                self.campaigns_settle_ms as i128,
                0,
                600_000,
            ),
            (
                "plugins.timeout_ms",
                self.plugins.timeout_ms as i128,
                1,
                plugin_timeout,
            ),
            (
                "plugins.memory_mb",
                self.plugins.memory_mb as i128,
                1,
                plugin_memory,
            ),
            (
                "plugins.max_output_bytes",
                self.plugins.max_output_bytes as i128,
                1024,
                64 << 20,
            ),
            (
                "email.timeout_ms",
                self.email.timeout_ms as i128,
                100,
                600_000,
            ),
            (
                "push.timeout_ms",
                self.push.timeout_ms as i128,
                100,
                600_000,
            ),
            ("issuer.poll_ms", self.issuer.poll_ms as i128, 1, 60_000),
            (
                "issuer.retry_backoff_ms",
                self.issuer.retry_backoff_ms as i128,
                1,
                600_000,
            ),
            (
                "issuer.reclaim_idle_ms",
                self.issuer.reclaim_idle_ms as i128,
                100,
                DAY_MS,
            ),
            (
                "outbox.republish_after_ms",
                self.outbox.republish_after_ms as i128,
                0,
                DAY_MS,
            ),
            (
                "outbox.relay_interval_ms",
                self.outbox.relay_interval_ms as i128,
                10,
                600_000,
            ),
            (
                "outbox.relay_batch",
                self.outbox.relay_batch as i128,
                1,
                10_000,
            ),
            (
                "outbox.retention_ms",
                self.outbox.retention_ms as i128,
                0,
                3_650 * DAY_MS,
            ),
            ("kafka.partitions", self.kafka.partitions as i128, 1, 10_000),
            (
                "kafka.replication_factor",
                self.kafka.replication_factor as i128,
                1,
                16,
            ),
            (
                "kafka.delivery_timeout_ms",
                self.kafka.delivery_timeout_ms as i128,
                1_000,
                600_000,
            ),
            (
                "kafka.session_timeout_ms",
                self.kafka.session_timeout_ms as i128,
                1_000,
                3_600_000,
            ),
            (
                "consumers.retry_backoff_ms",
                self.consumers.retry_backoff_ms as i128,
                1,
                600_000,
            ),
            (
                "consumers.max_retries",
                self.consumers.max_retries as i128,
                0,
                100,
            ),
            (
                "consumers.poll_ms",
                self.consumers.poll_ms as i128,
                1,
                60_000,
            ),
            (
                "http.header_read_timeout_ms",
                self.http.header_read_timeout_ms as i128,
                100,
                600_000,
            ),
            (
                "http.body_read_timeout_ms",
                self.http.body_read_timeout_ms as i128,
                100,
                600_000,
            ),
            (
                "http.max_connections",
                self.http.max_connections as i128,
                1,
                1 << 20,
            ),
            (
                "email.smtp_port",
                self.email.smtp_port.map_or(25, i128::from),
                1,
                65_535,
            ),
        ];
        for (name, value, min, max) in checks {
            if !(min..=max).contains(&value) {
                return Err(format!(
                    "setting {name} = {value} is out of range: use {min} to {max}"
                ));
            }
        }
        Ok(())
    }

    pub fn campaigns_dir(&self) -> PathBuf {
        self.campaigns_dir
            .clone()
            .unwrap_or_else(|| self.data_dir.join("campaigns"))
    }

    pub fn database_url(&self) -> String {
        self.database_url
            .clone()
            .unwrap_or_else(|| format!("sqlite:{}", self.data_dir.join("firstcome.db").display()))
    }
}

impl std::fmt::Debug for Config {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Config")
            .field("listen", &self.listen)
            .field("data_dir", &self.data_dir)
            .field("campaigns_dir", &self.campaigns_dir())
            .field(
                "admin_token",
                &self.admin_token.as_ref().map(|_| "<redacted>"),
            )
            .field("database_url", &redact_url(&self.database_url()))
            .field("redis_url", &self.redis_url.as_deref().map(redact_url))
            .field("admission", &self.admission)
            .field("kafka_brokers", &self.kafka_brokers)
            .field("kafka", &self.kafka)
            .field("log_format", &self.log_format)
            .field("issuer", &self.issuer)
            .field("outbox", &self.outbox)
            .field("consumers", &self.consumers)
            .field("plugins", &self.plugins)
            .field("email", &self.email)
            .field("push", &self.push)
            .finish()
    }
}

pub use firstcome_core::bounded::redact_url;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_are_redacted() {
        assert_eq!(
            redact_url("mysql://root:s3cret@db/x"),
            "mysql://root:***@db/x"
        );
        assert_eq!(redact_url("redis://127.0.0.1/"), "redis://127.0.0.1/");
        let config = Config {
            admin_token: Some("tok-123".into()),
            database_url: Some("postgres://u:pw@h/d".into()),
            email: EmailConfig {
                password: Some("mail-pw".into()),
                ..EmailConfig::default()
            },
            ..Config::default()
        };
        let shown = format!("{config:?}");
        assert!(
            !shown.contains("tok-123") && !shown.contains(":pw@") && !shown.contains("mail-pw"),
            "{shown}"
        );
    }

    #[test]
    #[allow(clippy::result_large_err)] // figment's Jail closure returns its own error type
    fn file_then_environment() {
        figment::Jail::expect_with(|jail| {
            jail.create_file(
                "c.toml",
                "listen = \"0.0.0.0:9000\"\n[issuer]\npoll_ms = 7\n",
            )?;
            jail.set_env("FIRSTCOME_ISSUER__POLL_MS", "9");
            jail.set_env("FIRSTCOME_REDIS_URL", "redis://r/");
            let c = Config::load(Some(Path::new("c.toml"))).map_err(|e| *e)?;
            assert_eq!(c.listen.port(), 9000);
            assert_eq!(c.issuer.poll_ms, 9);
            assert_eq!(c.redis_url.as_deref(), Some("redis://r/"));
            Ok(())
        });
    }
}
