//! Start-up and shutdown. [`App::build`] connects the backends, migrates, applies the campaign
//! folder, starts the issuers, the outbox publisher and relay, the consumers and the folder
//! watcher, and binds the listener (port 0 in tests; [`App::port`] says which).
//! [`App::run_until_stopped`] serves until the shutdown token fires, then stops every task and
//! waits for them.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use uuid::Uuid;

use firstcome_admission::Admission;
use firstcome_admission::embedded::EmbeddedAdmission;
use firstcome_api::operators::{Operators, Plane};
use firstcome_api::shoppers::Shoppers;
use firstcome_bus::EventBus;
use firstcome_bus::embedded::LogBus;
use firstcome_platform::Platform;
use firstcome_platform::config::{Config, Listeners};
use firstcome_platform::issuer::{IssuerContext, Issuers};
use firstcome_platform::outbox::{Relay, spawn_publisher};
use firstcome_platform::queue_guard::QueueGuard;
use firstcome_platform::watcher::Watcher;
use firstcome_plugin::email::Mailer;
use firstcome_plugin::fcm::Pusher;
use firstcome_plugin::services::LiveServices;
use firstcome_plugin::{PluginHost, Runtime};
use firstcome_store::Store;

/// A built host, ready to serve.
#[derive(Debug)]
pub struct App {
    listener: TcpListener,
    /// The admin plane's own listener, when `admin_listen` names one.
    admin_listener: Option<TcpListener>,
    shoppers: Arc<Shoppers>,
    operators: Arc<Operators>,
    platform: Arc<Platform>,
    shutdown: CancellationToken,
    tracker: TaskTracker,
}

/// Opens the backends named by the configuration (embedded ones when unset).
pub async fn open_backends(config: &Config) -> anyhow::Result<(Store, Arc<dyn Admission>)> {
    let url = config.database_url();
    if config.database_url.is_none() {
        std::fs::create_dir_all(&config.data_dir)
            .with_context(|| format!("creating data dir {}", config.data_dir.display()))?;
    }
    let store = Store::open(&url).await.with_context(|| {
        format!(
            "opening database {}",
            firstcome_platform::config::redact_url(&url)
        )
    })?;
    let admission: Arc<dyn Admission> = match &config.redis_url {
        Some(url) => open_redis(url, &config.admission).await?,
        None => Arc::new(EmbeddedAdmission::new(store.clone())),
    };
    Ok((store, admission))
}

#[cfg(feature = "redis")]
async fn open_redis(
    url: &str,
    config: &firstcome_platform::config::AdmissionConfig,
) -> anyhow::Result<Arc<dyn Admission>> {
    let queue = firstcome_admission::redis::RedisAdmission::connect(url)
        .await
        .with_context(|| {
            format!(
                "connecting to Redis {}",
                firstcome_platform::config::redact_url(url)
            )
        })?
        .with_replica_acks(
            config.redis_wait_replicas,
            std::time::Duration::from_millis(config.redis_wait_timeout_ms),
        );
    Ok(Arc::new(queue))
}

#[cfg(not(feature = "redis"))]
async fn open_redis(
    _: &str,
    _: &firstcome_platform::config::AdmissionConfig,
) -> anyhow::Result<Arc<dyn Admission>> {
    anyhow::bail!(
        "FIRSTCOME_REDIS_URL is set, but this firstcome was built without Redis support: \
         build it with `--features redis` (on by default), or unset it for the in-process queue"
    )
}

/// The event bus named by the configuration: Kafka (creating the outbox topic and its `.DLT`
/// twin when absent) or the embedded log in the database.
pub async fn open_bus(config: &Config, store: &Store) -> anyhow::Result<Arc<dyn EventBus>> {
    let Some(brokers) = &config.kafka_brokers else {
        return Ok(Arc::new(LogBus::new(store.clone())));
    };
    open_kafka(brokers, config, store).await
}

#[cfg(feature = "kafka")]
async fn open_kafka(
    brokers: &str,
    config: &Config,
    store: &Store,
) -> anyhow::Result<Arc<dyn EventBus>> {
    let bus = firstcome_bus::kafka::KafkaBus::new(brokers, config.kafka.clone(), store.clone())?;
    bus.ensure_topics(&[&config.outbox.topic])
        .await
        .with_context(|| format!("creating Kafka topics on {brokers}"))?;
    Ok(Arc::new(bus))
}

#[cfg(not(feature = "kafka"))]
async fn open_kafka(_: &str, _: &Config, _: &Store) -> anyhow::Result<Arc<dyn EventBus>> {
    anyhow::bail!(
        "FIRSTCOME_KAFKA_BROKERS is set, but this firstcome was built without Kafka support: \
         build it with `--features kafka` (on by default), or unset it for the embedded log"
    )
}

impl App {
    pub async fn build(config: Config) -> anyhow::Result<Self> {
        let (store, admission) = open_backends(&config).await?;
        Self::build_with(config, store, admission).await
    }

    /// Builds on backends the caller opened (tests share or break them).
    pub async fn build_with(
        config: Config,
        store: Store,
        admission: Arc<dyn Admission>,
    ) -> anyhow::Result<Self> {
        // Install the metrics recorder before anything counts.
        firstcome_platform::monitoring::handle();
        // Who shoppers are, checked first: a host that would trust any user id on a public
        // address refuses to start before it opens anything.
        let shoppers = Arc::new(
            Shoppers::from_config(&config)
                .await
                .map_err(|e| anyhow::anyhow!(e))?,
        );
        // The same for the admin plane: where it is served, and who may use it.
        let listeners = config.listeners().map_err(|e| anyhow::anyhow!(e))?;
        let operators = Arc::new(Operators::from_config(&config).map_err(|e| anyhow::anyhow!(e))?);
        if !operators.enabled() {
            tracing::info!("no admin credential configured: the admin API refuses every call");
        }
        let shutdown = CancellationToken::new();
        let tracker = TaskTracker::new();
        let bus = open_bus(&config, &store).await?;
        let publisher = spawn_publisher(store.clone(), bus.clone(), shutdown.clone(), &tracker);
        let host_id = format!(
            "{}-{}",
            hostname(),
            &Uuid::new_v4().simple().to_string()[..8]
        );
        let changes = Arc::new(firstcome_platform::live::Changes::default());
        let guard = Arc::new(QueueGuard::new(store.clone(), admission.clone()));
        tracker.spawn(guard.clone().run_sweeps(shutdown.clone()));
        let issuers = Issuers::new(
            IssuerContext {
                store: store.clone(),
                admission: admission.clone(),
                publisher,
                config: config.issuer.clone(),
                topic: config.outbox.topic.clone(),
                host_id,
                changes: changes.clone(),
                guard,
            },
            shutdown.clone(),
            tracker.clone(),
        );
        let plugins = Arc::new(plugin_host(&config, &store, changes.clone())?);
        let platform = Arc::new(Platform::new(
            config.clone(),
            store.clone(),
            admission,
            bus.clone(),
            issuers,
            plugins,
            (shutdown.clone(), tracker.clone()),
        ));

        // Windows and leases on the shared clock before any campaign is applied.
        platform.follow_shared_clock().await;

        let relay = Relay {
            store: store.clone(),
            bus: bus.clone(),
            config: config.outbox.clone(),
        };
        tracker.spawn(relay.run(shutdown.clone()));
        tracker.spawn(firstcome_platform::retention::run(
            store.clone(),
            config.retention.clone(),
            shutdown.clone(),
        ));
        let dir = config.campaigns_dir();
        std::fs::create_dir_all(&dir)
            .with_context(|| format!("creating campaign folder {}", dir.display()))?;
        let settle = Duration::from_millis(config.campaigns_settle_ms);
        let mut watcher = Watcher::new(dir, platform.clone(), settle);
        watcher.start().await;
        // Every campaign file is applied: the consumer groups may start reading.
        platform.enable_consumers();
        tracing::info!(admission = platform.admission().kind(),
            guarantee = %platform.admission().durability().await, "what an answered 202 survives");
        tracker.spawn(watcher.run(
            Duration::from_millis(config.campaigns_poll_ms),
            shutdown.clone(),
        ));

        let listener = TcpListener::bind(config.listen)
            .await
            .with_context(|| format!("binding {}", config.listen))?;
        let admin_listener = match listeners {
            Listeners::Shared => None,
            Listeners::Apart(address) => Some(
                TcpListener::bind(address)
                    .await
                    .with_context(|| format!("binding admin_listen {address}"))?,
            ),
        };
        Ok(Self {
            listener,
            admin_listener,
            shoppers,
            operators,
            platform,
            shutdown,
            tracker,
        })
    }

    pub fn port(&self) -> u16 {
        self.local_addr().port()
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.listener
            .local_addr()
            .expect("a bound listener has an address")
    }

    /// Where the admin plane is served: its own listener's address, or the public one's.
    pub fn admin_addr(&self) -> SocketAddr {
        self.admin_listener
            .as_ref()
            .map_or_else(|| self.local_addr(), |l| l.local_addr().expect("bound"))
    }

    pub fn platform(&self) -> Arc<Platform> {
        self.platform.clone()
    }

    /// The token that stops this host; cancel it to shut down.
    pub fn shutdown_token(&self) -> CancellationToken {
        self.shutdown.clone()
    }

    pub async fn run_until_stopped(self) -> anyhow::Result<()> {
        let router = |plane| {
            firstcome_api::router(
                self.platform.clone(),
                self.shoppers.clone(),
                self.operators.clone(),
                plane,
            )
        };
        self.tracker
            .spawn(self.shoppers.clone().run_upkeep(self.shutdown.clone()));
        let operators = self.operators.clone();
        let upkeep = self.shutdown.clone();
        self.tracker.spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(60));
            loop {
                tokio::select! {
                    _ = tick.tick() => operators.sweep(),
                    () = upkeep.cancelled() => return,
                }
            }
        });
        let token = self.shutdown.clone();
        let limits = self.platform.config().http.clone();
        let public_addr = self.local_addr();
        let public = match self.admin_listener {
            Some(admin) => {
                tracing::info!(addr = %public_addr,
                    admin = %admin.local_addr().expect("bound"), "serving");
                let admin_router = router(Plane::Admin);
                let (admin_limits, admin_token) = (limits.clone(), token.clone());
                self.tracker.spawn(async move {
                    firstcome_api::server::serve(admin, admin_router, &admin_limits, admin_token)
                        .await;
                });
                router(Plane::Public)
            }
            None => {
                tracing::info!(addr = %public_addr, "serving (admin plane on the same listener)");
                router(Plane::Both)
            }
        };
        firstcome_api::server::serve(self.listener, public, &limits, token).await;
        self.shutdown.cancel();
        self.tracker.close();
        self.tracker.wait().await;
        self.platform.store().close().await;
        tracing::info!("stopped");
        Ok(())
    }
}

/// The plugin runtime with the configured mailer and push sender.
pub fn plugin_host(
    config: &Config,
    store: &Store,
    changes: Arc<firstcome_platform::live::Changes>,
) -> anyhow::Result<PluginHost> {
    let mailer = Mailer::from_config(&config.email, config.data_dir.join("mail"))?;
    let pusher = Pusher::from_config(&config.push)?;
    tracing::info!(email = %mailer.describe(), push = %pusher.describe(), "plugin capabilities");
    let services = Arc::new(LiveServices {
        store: store.clone(),
        mailer: Arc::new(mailer),
        pusher: Arc::new(pusher),
    });
    let runtime = Arc::new(Runtime::new(config.plugins.clone())?);
    let campaigns = config.campaigns_dir();
    let files = firstcome_plugin::PluginFiles::new(
        config.plugins.dir.as_deref().unwrap_or(&campaigns),
        &config.data_dir,
        &campaigns,
    );
    Ok(PluginHost::new(
        runtime,
        services,
        store.clone(),
        files,
        changes,
    ))
}

fn hostname() -> String {
    std::env::var("HOSTNAME")
        .ok()
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "host".into())
}
