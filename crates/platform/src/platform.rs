//! The running platform: the active campaigns and the services that act on them. Handlers,
//! the campaign watcher and the CLI all go through it, so that a campaign is applied (database
//! row, admission queue, issuer) in exactly one way.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use uuid::Uuid;

use crate::config::Config;
use crate::issuer::Issuers;
use crate::queue_guard::{GuardError, QueueGuard};
use firstcome_admission::{Admission, AdmissionError, Admit};
use firstcome_bus::{ConsumerSpec, EventBus};
use firstcome_core::campaign::Campaign;
use firstcome_core::queue::bucket_of;
use firstcome_core::user::UserId;
use firstcome_plugin::PluginHost;
use firstcome_plugin::host::RoleHandler;
use firstcome_store::{Store, StoreError};

#[derive(Debug, thiserror::Error)]
pub enum PlatformError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Admission(#[from] AdmissionError),
    #[error("the admission queue lost campaign {0} again after each rebuild")]
    QueueUnstable(String),
    #[error("the admission queue fell behind the database again after each rebuild of {0}")]
    QueueBehind(String),
    /// A split campaign's (`shards` > 1) capacity lowered after requests were admitted: its
    /// buckets' stock could then admit more than the new capacity between them.
    #[error(
        "capacity cannot be lowered from {was} to {now} once requests were admitted to a \
         campaign with shards > 1: its buckets may already have admitted their share of the \
         old capacity; keep {was}, or raise it"
    )]
    ShardedCapacityLowered { was: i64, now: i64 },
    /// `shards` changed after the campaign was first applied: every host must agree on it
    /// at all times, since it decides where admissions live and which positions they hold.
    #[error(
        "shards cannot change from {was} to {now} once a campaign was applied (it decides \
         where its admissions live and the positions they hold, and every host must agree; a \
         file or document without shards means 1): keep {was}, or start a new campaign under \
         another id"
    )]
    ShardsChanged { was: u32, now: u32 },
    /// A new capacity below the requests already answered `202` would break their promise.
    #[error("capacity {capacity} is below the {admitted} requests already admitted")]
    CapacityBelowAdmitted { capacity: i64, admitted: i64 },
    #[error("{0}")]
    Plugin(String),
    /// A new campaign past `limits.max_campaigns`.
    #[error(
        "this host runs {running} campaigns, its limit (limits.max_campaigns); remove one, or \
         raise the limit"
    )]
    TooManyCampaigns { running: usize },
}

impl From<GuardError> for PlatformError {
    fn from(e: GuardError) -> Self {
        match e {
            GuardError::Store(e) => Self::Store(e),
            GuardError::Admission(AdmissionError::ShardsChanged { was, now }) => {
                Self::ShardsChanged { was, now }
            }
            GuardError::Admission(e) => Self::Admission(e),
        }
    }
}

/// Pause before a failed consumer group member is started again.
const MEMBER_RESTART_PAUSE: Duration = Duration::from_secs(1);

/// Least time a removed campaign's issuer runs on after its removal, whatever its queue and
/// its admissions under way say: room for a request that looked the campaign up just before
/// the removal to be counted.
pub const DRAIN_SETTLE: Duration = Duration::from_secs(1);

/// Campaign write locks kept before the ones nobody holds are dropped.
const WRITE_LOCKS_KEPT: usize = 4_096;

/// Rebuilds tried for one request when the queue keeps losing a campaign's state.
const REBUILD_ATTEMPTS: usize = 3;

/// The result of an admission request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Admitted {
    pub outcome: Admit,
    pub request_id: String,
}

/// One admission under way for a campaign, counted in [`Platform`]'s `admitting` while it
/// lives.
struct Admitting<'a> {
    counts: &'a Mutex<HashMap<String, usize>>,
    campaign: &'a str,
}

impl<'a> Admitting<'a> {
    fn enter(counts: &'a Mutex<HashMap<String, usize>>, campaign: &'a str) -> Self {
        let mut all = counts.lock().unwrap();
        match all.get_mut(campaign) {
            Some(n) => *n += 1,
            None => {
                all.insert(campaign.to_owned(), 1);
            }
        }
        Self { counts, campaign }
    }
}

impl Drop for Admitting<'_> {
    fn drop(&mut self) {
        if let Some(n) = self.counts.lock().unwrap().get_mut(self.campaign) {
            *n = n.saturating_sub(1);
        }
    }
}

/// A background load of a campaign's plugins; ended (or dropped) it stops the campaign's
/// loading, blocking it first when the load did not end normally.
struct Loading<'a> {
    plugins: &'a PluginHost,
    id: &'a str,
    ended: bool,
}

impl Loading<'_> {
    fn end(&mut self) {
        self.ended = true;
        self.plugins.stop_loading(self.id);
    }
}

impl Drop for Loading<'_> {
    fn drop(&mut self) {
        if !self.ended {
            self.plugins.block(
                self.id,
                "loading the plugins of the version in force stopped",
            );
            self.plugins.stop_loading(self.id);
        }
    }
}

/// The consumer groups of one host: one per plugin role any campaign names.
#[derive(Debug)]
struct Consumers {
    shutdown: CancellationToken,
    tracker: TaskTracker,
    running: Mutex<BTreeSet<String>>,
    started: Mutex<bool>,
}

/// Shared state of one host. Handlers, the watcher and the CLI act through its operations
/// (apply a campaign, admit, read counts, requests and health: `reads.rs`); the parts it
/// holds are reachable read-only, for start-up, shutdown and tests.
#[derive(Debug)]
pub struct Platform {
    pub(crate) config: Config,
    pub(crate) store: Store,
    pub(crate) admission: Arc<dyn Admission>,
    pub(crate) bus: Arc<dyn EventBus>,
    pub(crate) issuers: Issuers,
    /// The admission floor, the rebuild and the audit of lost admissions.
    pub(crate) guard: Arc<QueueGuard>,
    pub(crate) plugins: Arc<PluginHost>,
    /// Change counters and snapshot streams for live views.
    pub(crate) changes: Arc<firstcome_store::Changes>,
    pub(crate) feeds: crate::live::Feeds,
    /// Campaigns this host saw sold out: their requests are answered without the queue
    /// (the guard's, which clears them on every rebuild).
    sold_out: Arc<crate::sold_out::SoldOutFlags>,
    consumers: Consumers,
    campaigns: RwLock<HashMap<String, Arc<Campaign>>>,
    /// The shared clock's last reading (see [`crate::shared_clock`]).
    pub(crate) clock: Arc<crate::shared_clock::ClockState>,
    /// Removed campaigns whose queue still holds admitted requests: they admit nobody, but
    /// their issuer runs and their requests can be read until the queue is empty. With the
    /// removal's number, so that a drain ends only the removal it was started for.
    draining: RwLock<HashMap<String, (Arc<Campaign>, u64)>>,
    /// Removals so far (numbers the drains).
    removals: std::sync::atomic::AtomicU64,
    /// Admissions under way on this host, per campaign: a drain ends only once none is left
    /// (an admission that started before the removal may still be answered `202`).
    admitting: Mutex<HashMap<String, usize>>,
    /// Campaign files refused at their last change, with the reason.
    rejected: RwLock<BTreeMap<String, String>>,
    /// One lock per campaign, held by an admin change of the campaign from applying it to
    /// writing its file, by the watcher while it applies the campaign's file, and by the
    /// background load of its plugins, so that its changes are applied and written in one
    /// order. Per campaign, so that a slow plugin holds up only its own campaign.
    campaign_writes: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
    /// Campaign files being applied right now (their plugins are loading), sorted.
    applying: Mutex<BTreeSet<String>>,
    /// The text the admin API last wrote to each campaign file, whose document it applied:
    /// the watcher does not apply it a second time.
    admin_writes: Mutex<HashMap<String, String>>,
}

impl Platform {
    pub fn new(
        config: Config,
        store: Store,
        admission: Arc<dyn Admission>,
        bus: Arc<dyn EventBus>,
        issuers: Issuers,
        plugins: Arc<PluginHost>,
        tasks: (CancellationToken, TaskTracker),
    ) -> Self {
        let consumers = Consumers {
            shutdown: tasks.0,
            tracker: tasks.1,
            running: Mutex::default(),
            started: Mutex::new(false),
        };
        let guard = issuers.guard();
        let sold_out = guard.sold_out().clone();
        sold_out.set_recheck(std::time::Duration::from_millis(
            config.admission.sold_out_recheck_ms,
        ));
        Self {
            sold_out,
            config,
            store,
            admission,
            bus,
            guard,
            issuers,
            changes: plugins.changes.clone(),
            plugins,
            feeds: crate::live::Feeds::default(),
            consumers,
            campaigns: RwLock::default(),
            draining: RwLock::default(),
            removals: Default::default(),
            admitting: Mutex::default(),
            clock: Arc::default(),
            rejected: RwLock::default(),
            campaign_writes: Mutex::default(),
            applying: Mutex::default(),
            admin_writes: Mutex::default(),
        }
    }

    /// Reads the shared clock now and follows it (see [`crate::shared_clock`]); then keeps
    /// reading it in the background until shutdown. A failed first reading leaves the host on
    /// its own clock until a later one succeeds.
    pub async fn follow_shared_clock(&self) {
        if let Err(e) = self.clock.sync(self.admission.as_ref(), &self.store).await {
            tracing::warn!(error = %e, "cannot read the shared clock; on this host's clock until it can");
        }
        self.consumers.tracker.spawn(self.clock.clone().run(
            self.admission.clone(),
            self.store.clone(),
            self.consumers.shutdown.clone(),
        ));
    }

    /// The host's configuration.
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// The database (for start-up, shutdown and tests).
    pub fn store(&self) -> &Store {
        &self.store
    }

    /// The admission queue (for start-up and tests).
    pub fn admission(&self) -> &Arc<dyn Admission> {
        &self.admission
    }

    /// The event bus (for tests that publish or read dead letters).
    pub fn bus(&self) -> &Arc<dyn EventBus> {
        &self.bus
    }

    /// The campaigns' issuers (for tests that stop and restart one).
    pub fn issuers(&self) -> &Issuers {
        &self.issuers
    }

    /// The admission floor and audit (for tests).
    pub fn guard(&self) -> &QueueGuard {
        &self.guard
    }

    /// The plugin registry (for tests).
    pub fn plugins(&self) -> &PluginHost {
        &self.plugins
    }

    /// Notes that the admin API wrote `text` to a campaign's file after applying it.
    pub fn note_admin_write(&self, id: &str, text: &str) {
        self.admin_writes
            .lock()
            .unwrap()
            .insert(id.to_owned(), text.to_owned());
    }

    /// The text the admin API last wrote to a campaign's file, if it did.
    pub fn admin_wrote(&self, id: &str) -> Option<String> {
        self.admin_writes.lock().unwrap().get(id).cloned()
    }

    /// The write lock of one campaign on this host: its changes (apply, then write the file;
    /// a file's apply; the background load of its plugins; the end of its drain) happen one
    /// at a time, while other campaigns' go on.
    pub async fn campaign_writes(&self, id: &str) -> tokio::sync::OwnedMutexGuard<()> {
        let lock = {
            let mut locks = self.campaign_writes.lock().unwrap();
            if locks.len() > WRITE_LOCKS_KEPT && !locks.contains_key(id) {
                // Locks nobody holds or waits for are made again when needed.
                locks.retain(|_, lock| Arc::strong_count(lock) > 1);
            }
            locks.entry(id.to_owned()).or_default().clone()
        };
        lock.lock_owned().await
    }

    /// Notes that a campaign file is being applied (`true`) or no longer (`false`).
    pub fn note_applying(&self, id: &str, applying: bool) {
        let mut ids = self.applying.lock().unwrap();
        if applying {
            ids.insert(id.to_owned());
        } else {
            ids.remove(id);
        }
    }

    /// Campaign files being applied right now (their plugins loading), sorted.
    pub fn applying_ids(&self) -> Vec<String> {
        self.applying.lock().unwrap().iter().cloned().collect()
    }

    /// Campaigns in force whose plugins are loading in the background (put back into
    /// service at start-up): they admit, and their events wait for the plugins.
    pub fn loading_ids(&self) -> Vec<String> {
        self.plugins.loading_ids()
    }

    pub fn campaign(&self, id: &str) -> Option<Arc<Campaign>> {
        self.campaigns.read().unwrap().get(id).cloned()
    }

    /// A removed campaign still issuing the requests it admitted (see
    /// [`Platform::remove_campaign`]).
    pub fn draining(&self, id: &str) -> Option<Arc<Campaign>> {
        self.draining
            .read()
            .unwrap()
            .get(id)
            .map(|(c, _)| c.clone())
    }

    /// Ids of removed campaigns still issuing what they admitted, sorted.
    pub fn draining_ids(&self) -> Vec<String> {
        let mut ids: Vec<String> = self.draining.read().unwrap().keys().cloned().collect();
        ids.sort();
        ids
    }

    /// Active campaigns, by id.
    pub fn campaigns(&self) -> Vec<Arc<Campaign>> {
        let mut all: Vec<_> = self.campaigns.read().unwrap().values().cloned().collect();
        all.sort_by(|a, b| a.id().cmp(b.id()));
        all
    }

    /// Makes a validated campaign active (or updates it): its plugins are loaded and checked
    /// first, a capacity below the requests already admitted is refused, then its database row
    /// is written (which refuses a capacity below the coupons already issued), then its
    /// admission state; only then are its plugins swapped in and
    /// its issuer started. On error nothing changes in memory and the previous version stays.
    /// Callers hold the campaign's [`Self::campaign_writes`] lock.
    pub async fn apply_campaign(&self, campaign: Campaign) -> Result<(), PlatformError> {
        self.check_room(&campaign)?;
        let plugins = self
            .plugins
            .prepare(&campaign)
            .await
            .map_err(PlatformError::Plugin)?;
        let roles: Vec<String> = plugins.roles.keys().cloned().collect();
        self.put_in_force(campaign, Some(plugins), &roles).await
    }

    /// Start-up: puts a version in force (the database's copy, checked when it was applied)
    /// back into service at once, without waiting for its plugins: they are loaded in the
    /// background, under the campaign's lock, while it admits and issues; its events wait
    /// for them (only its own lanes). When they cannot load any more (the file was changed
    /// or removed since), the campaign is listed as refused and its events are retried and
    /// dead-lettered, as for a refused file.
    pub async fn restore_campaign(
        self: &Arc<Self>,
        campaign: Campaign,
    ) -> Result<(), PlatformError> {
        self.check_room(&campaign)?;
        let id = campaign.id().to_owned();
        let roles: Vec<String> = campaign.spec().plugins.keys().cloned().collect();
        self.plugins.loading(&id);
        if let Err(e) = self.put_in_force(campaign.clone(), None, &roles).await {
            self.plugins.stop_loading(&id);
            return Err(e);
        }
        let platform = self.clone();
        let shutdown = self.consumers.shutdown.clone();
        self.consumers.tracker.spawn(async move {
            tokio::select! {
                () = platform.load_in_force(campaign) => {}
                () = shutdown.cancelled() => {}
            }
        });
        Ok(())
    }

    /// Loads the plugins of a version put back into service by [`Self::restore_campaign`],
    /// unless another version was applied meanwhile (which brought its own).
    async fn load_in_force(&self, campaign: Campaign) {
        let id = campaign.id();
        // However this ends (a panic, shutdown), the campaign does not stay loading: its
        // events would wait for ever.
        let mut loading = Loading {
            plugins: &self.plugins,
            id,
            ended: false,
        };
        let _writing = self.campaign_writes(id).await;
        let in_force = self.campaign(id).or_else(|| self.draining(id));
        if in_force.is_none_or(|c| c.spec() != campaign.spec()) {
            loading.end();
            return;
        }
        let started = std::time::Instant::now();
        match self.plugins.prepare(&campaign).await {
            Ok(plugins) => {
                self.plugins.install(id, plugins);
                tracing::info!(campaign = %id, ms = started.elapsed().as_millis() as u64,
                    "plugins of the version in force loaded");
            }
            Err(e) => {
                tracing::error!(campaign = %id, error = %e,
                    "the version in force cannot load its plugins; its events are retried, \
                     then dead-lettered, until a version loads");
                self.reject(
                    id,
                    format!("the version in force cannot load its plugins: {e}"),
                );
            }
        }
        loading.end();
    }

    /// Whether a campaign's plugins are being loaded in the background.
    pub fn plugins_loading(&self, id: &str) -> bool {
        self.plugins.is_loading(id)
    }

    /// Whether a campaign's plugins (possibly none) are in service: not loading, not refused.
    pub fn plugins_in_service(&self, id: &str) -> bool {
        self.plugins.installed(id)
    }

    /// Refuses a new campaign past `limits.max_campaigns`. Applies of different campaigns run
    /// side by side, so new campaigns applied at the same moment may pass the limit by as many.
    fn check_room(&self, campaign: &Campaign) -> Result<(), PlatformError> {
        let campaigns = self.campaigns.read().unwrap();
        let running = campaigns.len();
        if running >= self.config.limits.max_campaigns && !campaigns.contains_key(campaign.id()) {
            return Err(PlatformError::TooManyCampaigns { running });
        }
        Ok(())
    }

    /// The part of an apply after the plugins: admission checks, the database row, the
    /// admission state, then (in memory) the plugins when given, the consumer groups of
    /// `roles`, the campaign and its issuer.
    async fn put_in_force(
        &self,
        campaign: Campaign,
        plugins: Option<firstcome_plugin::CampaignPlugins>,
        roles: &[String],
    ) -> Result<(), PlatformError> {
        let admitted = self.admission.counts(campaign.id()).await?.admitted;
        if campaign.capacity() < admitted {
            return Err(PlatformError::CapacityBelowAdmitted {
                capacity: campaign.capacity(),
                admitted,
            });
        }
        self.check_split(&campaign, admitted).await?;
        self.store.upsert_campaign(&campaign).await?;
        self.sync_admission(&campaign, false).await?;
        if let Some(plugins) = plugins {
            self.plugins.install(campaign.id(), plugins);
        }
        crate::monitoring::campaign_started(campaign.id());
        self.start_consumers(roles);
        let campaign = Arc::new(campaign);
        self.campaigns
            .write()
            .unwrap()
            .insert(campaign.id().to_owned(), campaign.clone());
        // Added again while it drained: it runs on, and its drain ends without stopping it.
        self.draining.write().unwrap().remove(campaign.id());
        self.issuers.run(campaign);
        Ok(())
    }

    /// The rules of a campaign split into buckets, against the version applied before (the
    /// database's copy): its bucket count cannot change at all (hosts applying a change one
    /// after the other would admit under two layouts at once), and its capacity cannot be
    /// lowered once anyone was admitted (a bucket's stock may already have gone to admissions
    /// the lower shares would not cover).
    async fn check_split(&self, campaign: &Campaign, admitted: i64) -> Result<(), PlatformError> {
        let Some(before) = self.store.applied_campaign(campaign.id()).await? else {
            return Ok(());
        };
        let (was, now) = (
            self.admission.buckets(&before),
            self.admission.buckets(campaign),
        );
        if was != now {
            return Err(PlatformError::ShardsChanged { was, now });
        }
        let issued = self.store.issued_count(campaign.id()).await?;
        if now > 1 && admitted.max(issued) > 0 && campaign.capacity() < before.capacity() {
            return Err(PlatformError::ShardedCapacityLowered {
                was: before.capacity(),
                now: campaign.capacity(),
            });
        }
        Ok(())
    }

    /// Removes a campaign (its file was deleted or renamed, or the admin API deleted it): it
    /// admits nobody from now on, but every request it answered `202` is still issued. Its
    /// issuer runs until the queue holds none of its requests, no admission of it is under
    /// way on this host and at least [`DRAIN_SETTLE`] has passed; only then
    /// is the issuer stopped and the database row marked inactive. Meanwhile its requests'
    /// status can be read and new requests are answered `closed`. A host stopped before the
    /// drain ends finds the row still active and its file gone at start-up, and drains again.
    /// Returns whether the campaign was active; returns at once, the drain runs in the
    /// background.
    pub async fn remove_campaign(self: &Arc<Self>, id: &str) -> Result<bool, PlatformError> {
        let Some(campaign) = self.campaigns.write().unwrap().remove(id) else {
            return Ok(false);
        };
        self.sold_out.clear(id);
        // Its plugins stay for the events still on their way, on fresh instances: the kept
        // ones would hold pool slots for a campaign that is over.
        self.plugins.drop_warm(id);
        let removal = self
            .removals
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        self.draining
            .write()
            .unwrap()
            .insert(id.to_owned(), (campaign.clone(), removal));
        let queued = self.admission.counts(id).await.map(|c| c.queued);
        tracing::info!(campaign = %id, queued = ?queued.as_ref().ok(),
            "campaign removed: it admits nobody; its issuer runs until its queue is empty");
        self.consumers
            .tracker
            .spawn(self.clone().drain(id.to_owned(), removal));
        Ok(true)
    }

    /// Waits until a removed campaign's queue is empty and no admission of it is under way
    /// here, for at least [`DRAIN_SETTLE`] after its removal, then ends its drain; leaves it
    /// to the next start when the host stops.
    async fn drain(self: Arc<Self>, id: String, removal: u64) {
        let started = std::time::Instant::now();
        let poll = Duration::from_millis(self.config.issuer.poll_ms.clamp(50, 1_000));
        let shutdown = self.consumers.shutdown.clone();
        loop {
            tokio::select! {
                () = shutdown.cancelled() => return,
                () = tokio::time::sleep(poll) => {}
            }
            if !self.is_draining(&id, removal) {
                return; // added again, or removed again by a later removal
            }
            let admitting = self
                .admitting
                .lock()
                .unwrap()
                .get(&id)
                .copied()
                .unwrap_or(0);
            let empty = admitting == 0
                && match self.admission.counts(&id).await {
                    Ok(counts) => counts.queued == 0,
                    Err(e) => {
                        tracing::warn!(campaign = %id, error = %e,
                            "cannot read the removed campaign's queue; its drain waits");
                        false
                    }
                };
            if empty && started.elapsed() >= DRAIN_SETTLE {
                self.drained(&id, removal).await;
                return;
            }
        }
    }

    fn is_draining(&self, id: &str, removal: u64) -> bool {
        self.draining
            .read()
            .unwrap()
            .get(id)
            .is_some_and(|(_, r)| *r == removal)
    }

    /// Ends a drain: when the campaign was neither added nor removed again meanwhile, stops
    /// its issuer and marks its row inactive (under the campaign write lock, so that an apply
    /// of the same campaign is not half undone).
    async fn drained(&self, id: &str, removal: u64) {
        let _writing = self.campaign_writes(id).await;
        let ended = {
            let mut draining = self.draining.write().unwrap();
            let ours = draining.get(id).is_some_and(|(_, r)| *r == removal)
                && !self.campaigns.read().unwrap().contains_key(id);
            if ours {
                draining.remove(id);
            }
            ours
        };
        if !ended {
            return;
        }
        self.issuers.stop(id);
        self.admitting.lock().unwrap().remove(id);
        if let Err(e) = self.store.deactivate_campaign(id).await {
            tracing::warn!(campaign = %id, error = %e, "cannot mark the drained campaign inactive");
        }
        tracing::info!(campaign = %id, "removed campaign drained: every admitted request was issued");
    }

    /// Writes the campaign into the admission queue, rebuilding it from the database's
    /// coupons when the queue has nothing for it, holds less than the database issued, or
    /// `force`. Returns whether it rebuilt.
    pub async fn sync_admission(&self, c: &Campaign, force: bool) -> Result<bool, PlatformError> {
        Ok(self.guard.resync(c, force).await?)
    }

    /// Admits a user's request against the campaign's floor (what the database has issued).
    /// When the queue has lost the campaign (Redis restarted or was flushed) or holds less
    /// than the floor (it came back from an older snapshot), it is rebuilt from the database
    /// and the request tried again; if that keeps happening, the queue is reported unstable.
    pub async fn admit(
        &self,
        c: &Campaign,
        user: &UserId,
        now: i64,
    ) -> Result<Admitted, PlatformError> {
        let user_id = user.as_str();
        let request_id = Uuid::now_v7().to_string();
        // Counted as under way before the campaign is looked up again: a removal either comes
        // first (then this request is refused here) or waits for it to be answered.
        let _admitting = Admitting::enter(&self.admitting, c.id());
        if !self.campaigns.read().unwrap().contains_key(c.id()) {
            return Ok(Admitted {
                outcome: Admit::Closed,
                request_id,
            });
        }
        // Within the window, a campaign this host saw sold out is answered without the queue
        // (outside it the queue answers closed / not open, as it would).
        if c.window_state(now) == firstcome_core::campaign::WindowState::Open
            && let Some(outcome) = self
                .sold_out
                .answer(c.id(), user_id, std::time::Instant::now())
        {
            let result = if outcome == Admit::SoldOut {
                "sold_out"
            } else {
                "duplicate"
            };
            metrics::counter!("firstcome_admissions_total", "campaign" => c.id().to_owned(), "result" => result)
                .increment(1);
            metrics::counter!("firstcome_admissions_sold_out_flag_total", "campaign" => c.id().to_owned())
                .increment(1);
            return Ok(Admitted {
                outcome,
                request_id,
            });
        }
        let mut outcome = Admit::Unknown;
        for attempt in 0..=REBUILD_ATTEMPTS {
            if attempt > 0 {
                self.sync_admission(c, false).await?;
            }
            let buckets = self.admission.buckets(c);
            if buckets > 1
                && let Err(e) = self.guard.audit_if_due(c).await
            {
                self.guard.suspect();
                return Err(e.into());
            }
            let floor = self
                .guard
                .floor(c.id(), buckets, bucket_of(user_id, buckets))
                .await;
            outcome = match self
                .admission
                .admit(c.id(), user_id, &request_id, now, floor)
                .await
            {
                Ok(outcome) => outcome,
                Err(e) => {
                    // Redis may be restarting: read the floor again before the next admission
                    // (not when replicas were merely slow to acknowledge).
                    if !matches!(e, AdmissionError::NotRecorded(_)) {
                        self.guard.suspect();
                    }
                    return Err(e.into());
                }
            };
            if !matches!(outcome, Admit::Unknown | Admit::Behind) {
                break;
            }
            if outcome == Admit::Behind {
                tracing::warn!(campaign = %c.id(), ?floor,
                    "the admission queue is behind the database (restored from an older \
                     snapshot?): rebuilding it");
            }
        }
        let result = match outcome {
            Admit::Admitted { .. } => "admitted",
            Admit::Duplicate { .. } => "duplicate",
            Admit::SoldOut => "sold_out",
            Admit::Closed => "closed",
            Admit::NotOpen => "not_open",
            Admit::Unknown | Admit::Behind => "unavailable",
        };
        metrics::counter!("firstcome_admissions_total", "campaign" => c.id().to_owned(), "result" => result)
            .increment(1);
        match outcome {
            Admit::Unknown => return Err(PlatformError::QueueUnstable(c.id().to_owned())),
            Admit::Behind => return Err(PlatformError::QueueBehind(c.id().to_owned())),
            Admit::Admitted { position } => {
                // Stock came back (a rebuild elsewhere, a raised capacity): drop the flag.
                self.sold_out.admitted(c.id());
                self.guard.answered(c.id(), user_id, position);
                self.issuers.wake(c.id());
                self.changes.bump(c.id());
            }
            Admit::SoldOut => {
                self.sold_out
                    .sold_out(&self.admission, c.id(), std::time::Instant::now());
            }
            _ => {}
        }
        Ok(Admitted {
            outcome,
            request_id,
        })
    }

    pub fn reject(&self, id: &str, reason: String) {
        self.plugins.block(id, &reason);
        self.rejected.write().unwrap().insert(id.to_owned(), reason);
    }

    pub fn clear_rejection(&self, id: &str) {
        self.plugins.unblock(id);
        self.rejected.write().unwrap().remove(id);
    }

    /// The consumer groups this host runs (one per plugin role), with the topic each reads.
    pub fn consumer_groups(&self) -> Vec<(String, String)> {
        let topic = self.config.outbox.topic.clone();
        let running = self.consumers.running.lock().unwrap();
        running.iter().map(|g| (g.clone(), topic.clone())).collect()
    }

    /// Starts the consumer group of each role not yet running. Before [`Self::enable_consumers`]
    /// the roles are only noted, so that no group reads an event before every campaign
    /// file has been applied at start-up.
    fn start_consumers(&self, roles: &[String]) {
        let mut running = self.consumers.running.lock().unwrap();
        let started = *self.consumers.started.lock().unwrap();
        for role in roles {
            if running.insert(role.clone()) && started {
                self.spawn_consumer(role);
            }
        }
    }

    /// Starts every noted group; from now on a new role starts its group at once.
    pub fn enable_consumers(&self) {
        let running = self.consumers.running.lock().unwrap();
        let mut started = self.consumers.started.lock().unwrap();
        if !*started {
            *started = true;
            for role in running.iter() {
                self.spawn_consumer(role);
            }
        }
    }

    fn spawn_consumer(&self, role: &str) {
        let spec = ConsumerSpec {
            group: role.to_owned(),
            topic: self.config.outbox.topic.clone(),
            retry: self.config.consumers.retry(),
            poll_interval: Duration::from_millis(self.config.consumers.poll_ms),
            busy_lanes: self.config.consumers.busy_lanes,
        };
        let handler = Arc::new(RoleHandler {
            host: self.plugins.clone(),
            role: role.to_owned(),
        });
        let (bus, token) = (self.bus.clone(), self.consumers.shutdown.clone());
        let role = role.to_owned();
        tracing::info!(group = %role, "consumer group started");
        crate::monitoring::group_started(&role);
        self.consumers.tracker.spawn(async move {
            // A member that fails (the database or the broker went away mid-batch) is started
            // again: it rejoins the group and resumes from the committed positions, and the
            // events it had not committed come back and are dropped as already handled.
            while !token.is_cancelled() {
                let result = bus
                    .run_consumer(spec.clone(), handler.clone(), token.clone())
                    .await;
                if token.is_cancelled() {
                    break;
                }
                let reason = match result {
                    Ok(()) => "it returned".to_owned(),
                    Err(e) => e.to_string(),
                };
                tracing::warn!(group = %role, %reason, "consumer group member failed; restarting it");
                metrics::counter!("firstcome_consumer_restarts_total", "group" => role.clone())
                    .increment(1);
                tokio::select! {
                    () = tokio::time::sleep(MEMBER_RESTART_PAUSE) => {}
                    () = token.cancelled() => {}
                }
            }
        });
    }

    /// The token that stops this host's background tasks.
    pub fn shutdown_token(&self) -> CancellationToken {
        self.consumers.shutdown.clone()
    }

    /// Campaign files refused at their last change, with why.
    pub fn rejections(&self) -> BTreeMap<String, String> {
        self.rejected.read().unwrap().clone()
    }
}
