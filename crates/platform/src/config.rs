//! Typed configuration: defaults, then a TOML file (`--config` / `FIRSTCOME_CONFIG`), then
//! `FIRSTCOME_*` environment variables (`__` separates nested keys, e.g.
//! `FIRSTCOME_OUTBOX__REPUBLISH_AFTER_MS`), then command-line flags. Secrets (the admin token,
//! passwords in URLs) never appear in `Debug` output or logs.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use figment::Figment;
use figment::providers::{Env, Format, Serialized, Toml};
use serde::{Deserialize, Serialize};

pub use firstcome_core::secret::Secret;

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
    /// Where the admin plane (admin routes, `/metrics`, the live page, Swagger UI and the
    /// OpenAPI document) is served: an address (`127.0.0.1:8081`), or `shared` for one
    /// listener serving everything. Unset: shared while `listen` is a loopback address; a host
    /// listening on any other address refuses to start until this is set.
    pub admin_listen: Option<String>,
    /// A single admin credential named `admin` with the `admin` role (at least 32
    /// characters); `admin_tokens` names more. Neither set: every admin call is refused.
    pub admin_token: Option<Secret>,
    /// Named admin credentials, each stored as the SHA-256 of its token.
    pub admin_tokens: Vec<AdminTokenConfig>,
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
    /// How shoppers prove who they are (`auth.mode`).
    pub auth: AuthConfig,
    /// Admission requests and live streams per shopper and per client address.
    pub limits: LimitsConfig,
    /// Addresses or CIDR blocks (`10.0.0.0/8`, `::1`) of the load balancers and gateways in
    /// front of the hosts: only from these is a client address taken from `X-Forwarded-For`
    /// or `Forwarded`. Empty: the socket's address is the client's.
    pub trusted_proxies: Vec<String>,
    /// How long each kind of data is kept (`crate::retention`).
    pub retention: crate::retention::RetentionConfig,
}

/// One named admin credential (`admin_tokens`): the operator's name (in the audit log), what
/// it may do, and the hex SHA-256 of its bearer token (`printf %s "$TOKEN" | sha256sum`).
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct AdminTokenConfig {
    /// 1-64 of `a-z 0-9 . _ -`; recorded as the actor of every change it makes.
    pub name: String,
    pub role: AdminRole,
    /// 64 hexadecimal digits.
    pub sha256: String,
}

/// What an admin credential may do; each role includes the ones before it.
#[derive(Clone, Copy, Debug, Serialize, Deserialize, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[serde(rename_all = "lowercase")]
pub enum AdminRole {
    /// Reads: campaigns, consumer groups, plugins, the audit log, metrics.
    Viewer,
    /// Campaigns (create, change, remove), dead letters and replays.
    Operator,
    /// Everything, user profiles included.
    Admin,
}

impl AdminRole {
    pub fn name(self) -> &'static str {
        match self {
            Self::Viewer => "viewer",
            Self::Operator => "operator",
            Self::Admin => "admin",
        }
    }
}

/// How the admin plane is reached, from `listen` and `admin_listen`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Listeners {
    /// One listener serves the shopper API and the admin plane.
    Shared,
    /// The admin plane has a listener of its own at this address.
    Apart(SocketAddr),
}

/// Shortest `admin_token` accepted.
pub const MIN_ADMIN_TOKEN_CHARS: usize = 32;

/// How a shopper's identity is established on the shopper routes (admission, request status
/// and stream, a user's coupons, the replaced system's routes).
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub enum AuthMode {
    /// `Authorization: Bearer <JWT>`, verified against `auth.jwks` or `auth.hs256_secret`;
    /// the shopper is the token's `auth.user_claim`.
    Jwt,
    /// A gateway or storefront backend in front names the shopper in `X-Firstcome-User`, with
    /// `X-Firstcome-Timestamp` and an HMAC-SHA256 signature in `X-Firstcome-Signature`.
    SignedHeader,
    /// The client names the shopper (`user_id` in the body or path), unverified. The default
    /// only while the host listens on loopback.
    Open,
}

/// `auth.*`: how shoppers are verified. Secrets never appear in `Debug` output.
#[derive(Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct AuthConfig {
    /// `jwt`, `signed-header` or `open`. Unset: `open` on a loopback `listen` address; on any
    /// other address the host refuses to start.
    pub mode: Option<AuthMode>,
    /// A JWKS document: a file path, or an `http(s)://` URL fetched and cached.
    pub jwks: Option<String>,
    /// The shared secret of HS256 tokens (at least 32 bytes).
    pub hs256_secret: Option<Secret>,
    /// Accepted `alg` values (`RS256`, `RS384`, `RS512`, `PS256`, `ES256`, `ES384`, `EdDSA`,
    /// `HS256`). Empty: the asymmetric ones when `jwks` is set, plus `HS256` when
    /// `hs256_secret` is.
    pub algorithms: Vec<String>,
    /// The `iss` a token must carry; unset: not checked.
    pub issuer: Option<String>,
    /// An `aud` a token must carry; unset: not checked.
    pub audience: Option<String>,
    /// The claim naming the shopper (default `sub`).
    pub user_claim: String,
    /// Clock skew allowed on `exp` and `nbf`, in seconds (default 30).
    pub leeway_s: u64,
    /// A JWKS is read again after this many seconds (default 300), so that removed keys stop
    /// working.
    pub jwks_max_age_s: u64,
    /// A token naming a key the JWKS lacks makes the host read it again, at most once per
    /// this many seconds (default 30).
    pub jwks_refetch_s: u64,
    pub signed_header: SignedHeaderConfig,
}

/// `auth.signed_header.*`.
#[derive(Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct SignedHeaderConfig {
    /// The shared HMAC-SHA256 secret (at least 32 bytes).
    pub secret: Option<Secret>,
    /// A signature older (or further in the future) than this many seconds is refused
    /// (default 60).
    pub max_age_s: u64,
}

impl Default for AuthConfig {
    fn default() -> Self {
        Self {
            mode: None,
            jwks: None,
            hs256_secret: None,
            algorithms: Vec::new(),
            issuer: None,
            audience: None,
            user_claim: "sub".into(),
            leeway_s: 30,
            jwks_max_age_s: 300,
            jwks_refetch_s: 30,
            signed_header: SignedHeaderConfig::default(),
        }
    }
}

impl Default for SignedHeaderConfig {
    fn default() -> Self {
        Self {
            secret: None,
            max_age_s: 60,
        }
    }
}

impl std::fmt::Debug for AuthConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AuthConfig")
            .field("mode", &self.mode)
            .field("jwks", &self.jwks.as_deref().map(redact_url))
            .field("hs256_secret", &self.hs256_secret)
            .field("algorithms", &self.algorithms)
            .field("issuer", &self.issuer)
            .field("audience", &self.audience)
            .field("user_claim", &self.user_claim)
            .field("leeway_s", &self.leeway_s)
            .field("jwks_max_age_s", &self.jwks_max_age_s)
            .field("jwks_refetch_s", &self.jwks_refetch_s)
            .field("signed_header", &self.signed_header)
            .finish()
    }
}

impl std::fmt::Debug for SignedHeaderConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SignedHeaderConfig")
            .field("secret", &self.secret)
            .field("max_age_s", &self.max_age_s)
            .finish()
    }
}

/// `limits.*`: token buckets on admission requests and caps on live streams. A rate of 0
/// turns that bucket off. A campaign's `[limits]` replaces the admission rates for its own
/// requests.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct LimitsConfig {
    /// Admission requests per second one shopper may send, sustained (default 2).
    pub per_user_per_s: u32,
    /// Admission requests one shopper may send at once (default 10).
    pub per_user_burst: u32,
    /// Admission requests per second from one client address, sustained (default 1,000: a
    /// mobile carrier's shared address carries many shoppers).
    pub per_address_per_s: u32,
    /// Admission requests at once from one client address (default 5,000).
    pub per_address_burst: u32,
    /// Live streams open at once from one client address (default 16).
    pub streams_per_address: u32,
    /// Live streams open at once for one shopper (default 4).
    pub streams_per_user: u32,
    /// A live stream ends after this many seconds (default 300); the client reconnects.
    pub stream_max_lifetime_s: u64,
    /// Campaigns one host runs at most (default 1,000); another is refused (`409
    /// too_many_campaigns` through the admin API, a refused file from the folder).
    pub max_campaigns: usize,
    /// Wrong admin credentials one client address may send at once (default 10)...
    pub admin_auth_failures_burst: u32,
    /// ...then one more per this many milliseconds (default 6,000); meanwhile `429`.
    pub admin_auth_failure_period_ms: u64,
}

impl Default for LimitsConfig {
    fn default() -> Self {
        Self {
            per_user_per_s: 2,
            per_user_burst: 10,
            per_address_per_s: 1_000,
            per_address_burst: 5_000,
            streams_per_address: 16,
            streams_per_user: 4,
            stream_max_lifetime_s: 300,
            max_campaigns: 1_000,
            admin_auth_failures_burst: 10,
            admin_auth_failure_period_ms: 6_000,
        }
    }
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
            admin_listen: None,
            admin_token: None,
            admin_tokens: Vec::new(),
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
            auth: AuthConfig::default(),
            limits: LimitsConfig::default(),
            trusted_proxies: Vec::new(),
            retention: crate::retention::RetentionConfig::default(),
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
            .and_then(|()| config.kafka.check_group_prefix())
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
        let checks: [(&str, i128, i128, i128); 42] = [
            ("auth.leeway_s", self.auth.leeway_s as i128, 0, 600),
            (
                "auth.jwks_max_age_s",
                self.auth.jwks_max_age_s as i128,
                1,
                DAY_MS / 1000,
            ),
            (
                "auth.jwks_refetch_s",
                self.auth.jwks_refetch_s as i128,
                1,
                3_600,
            ),
            (
                "auth.signed_header.max_age_s",
                self.auth.signed_header.max_age_s as i128,
                1,
                3_600,
            ),
            (
                "limits.streams_per_address",
                self.limits.streams_per_address as i128,
                1,
                1 << 20,
            ),
            (
                "limits.streams_per_user",
                self.limits.streams_per_user as i128,
                1,
                1 << 20,
            ),
            (
                "limits.stream_max_lifetime_s",
                self.limits.stream_max_lifetime_s as i128,
                1,
                DAY_MS / 1000,
            ),
            (
                "limits.admin_auth_failures_burst",
                self.limits.admin_auth_failures_burst as i128,
                1,
                1 << 20,
            ),
            (
                "limits.admin_auth_failure_period_ms",
                self.limits.admin_auth_failure_period_ms as i128,
                1,
                DAY_MS,
            ),
            (
                "limits.max_campaigns",
                self.limits.max_campaigns as i128,
                1,
                100_000,
            ),
            (
                "limits.per_user_burst",
                self.limits.per_user_burst as i128,
                0,
                1 << 24,
            ),
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
                "plugins.compile_timeout_ms",
                self.plugins.compile_timeout_ms as i128,
                100,
                3_600_000,
            ),
            (
                "plugins.memory_budget_mb",
                self.plugins.memory_budget_mb as i128,
                i128::from(self.plugins.memory_mb),
                1 << 20,
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
                "consumers.busy_lanes",
                self.consumers.busy_lanes as i128,
                1,
                256,
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
        self.retention.check(self.outbox.retention_ms)
    }

    /// Whether the admin plane shares the public listener or has its own. Refuses (saying what
    /// to set) an `admin_listen` that is neither `shared` nor an address, and a shared plane
    /// unless chosen with `admin_listen = "shared"` on a `listen` address that is not
    /// loopback, or behind `trusted_proxies` (a proxy on the machine).
    pub fn listeners(&self) -> Result<Listeners, String> {
        match self.admin_listen.as_deref().map(str::trim) {
            Some("shared") => Ok(Listeners::Shared),
            Some(address) => address.parse().map(Listeners::Apart).map_err(|_| {
                format!(
                    "admin_listen = {address:?} is neither an address (127.0.0.1:8081) nor \
                     \"shared\""
                )
            }),
            // A proxy on this machine would hand the admin plane to whoever reaches it.
            None if self.listen.ip().is_loopback() && self.trusted_proxies.is_empty() => {
                Ok(Listeners::Shared)
            }
            None if self.listen.ip().is_loopback() => Err(format!(
                "listening on {} behind trusted_proxies with no admin_listen: the proxy would \
                 serve the admin API, metrics and Swagger UI to whoever reaches it. Set \
                 admin_listen to an address the proxy does not forward to, or admin_listen = \
                 \"shared\" if it forwards only the shopper routes",
                self.listen
            )),
            None => Err(format!(
                "listening on {} (not loopback) with no admin_listen: the admin API, metrics \
                 and Swagger UI would be served to shoppers. Set admin_listen to an address \
                 only operators reach (FIRSTCOME_ADMIN_LISTEN=10.0.0.5:8081), or \
                 admin_listen = \"shared\" to serve both on one listener deliberately",
                self.listen
            )),
        }
    }

    /// Checks the admin credentials: `admin_token` at least [`MIN_ADMIN_TOKEN_CHARS`] long,
    /// every `admin_tokens` entry with a valid name, unique, and a 64-digit hex digest. The
    /// message names the entry, never a token.
    pub fn check_admin_tokens(&self) -> Result<(), String> {
        if let Some(token) = self
            .admin_token
            .as_ref()
            .map(Secret::expose)
            .filter(|t| !t.is_empty())
            && token.chars().count() < MIN_ADMIN_TOKEN_CHARS
        {
            return Err(format!(
                "admin_token is shorter than {MIN_ADMIN_TOKEN_CHARS} characters: anyone could \
                 guess it. Use a random one, e.g. `openssl rand -hex 32`"
            ));
        }
        if let Some(token) = self.admin_token.as_ref().map(Secret::expose)
            && token.matches('.').count() == 2
        {
            return Err(
                "admin_token is shaped like a JWT (two dots): on a shared listener it \
                        would be taken for a shopper's token. Use a random one, e.g. \
                        `openssl rand -hex 32`"
                    .into(),
            );
        }
        let mut names = std::collections::BTreeSet::new();
        for (i, entry) in self.admin_tokens.iter().enumerate() {
            let valid_name = !entry.name.is_empty()
                && entry.name.len() <= 64
                && entry.name.bytes().all(|b| {
                    b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'.' | b'_' | b'-')
                });
            if !valid_name {
                return Err(format!(
                    "admin_tokens[{i}].name: 1 to 64 of a-z, 0-9, '.', '_' and '-'"
                ));
            }
            if !names.insert(entry.name.as_str()) {
                return Err(format!(
                    "admin_tokens[{i}].name: {:?} is named twice",
                    entry.name
                ));
            }
            if entry.sha256.len() != 64 || !entry.sha256.bytes().all(|b| b.is_ascii_hexdigit()) {
                return Err(format!(
                    "admin_tokens[{i}].sha256 ({}): must be the 64 hexadecimal digits of the \
                     token's SHA-256 (`printf %s \"$TOKEN\" | sha256sum`)",
                    entry.name
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
            .field("admin_listen", &self.admin_listen)
            .field("admin_token", &self.admin_token)
            .field("admin_tokens", &self.admin_tokens)
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
            .field("http", &self.http)
            .field("auth", &self.auth)
            .field("limits", &self.limits)
            .field("trusted_proxies", &self.trusted_proxies)
            .field("retention", &self.retention)
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

    #[test]
    #[allow(clippy::result_large_err)] // figment's Jail closure returns its own error type
    fn kafka_group_prefix_names_the_groups_or_is_refused() {
        figment::Jail::expect_with(|jail| {
            jail.set_env("FIRSTCOME_KAFKA__GROUP_PREFIX", "shop-a.");
            let c = Config::load(None).map_err(|e| *e)?;
            assert_eq!(c.kafka.group_id("history"), "shop-a.history");
            assert_eq!(Config::default().kafka.group_id("history"), "history");
            for (bad, says) in [
                ("shop a.", "' '"),
                ("shöp.", "'ö'"),
                (&"x".repeat(101), "101"),
            ] {
                jail.set_env("FIRSTCOME_KAFKA__GROUP_PREFIX", bad);
                let error = Config::load(None).unwrap_err().to_string();
                assert!(
                    error.contains("kafka.group_prefix") && error.contains(says),
                    "{error}"
                );
            }
            Ok(())
        });
    }
}
