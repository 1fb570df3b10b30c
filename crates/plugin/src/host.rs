//! The plugins of every campaign, and the consumer-group handler that runs them.
//!
//! [`PluginHost::prepare`] loads a campaign's plugin sections (read, hash-check, compile
//! through the cache, check `init`) without touching what runs; [`PluginHost::install`] then
//! swaps the campaign's set in one step. A handler takes the campaign's current plugin at the
//! start of each event, so an event in progress finishes on the version it started with.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};

use async_trait::async_trait;
use serde::Serialize;
use tracing::Instrument;

use super::bindings::{CouponIssued as WitCouponIssued, Event};
use super::files::PluginFiles;
use super::runtime::{CounterSnapshot, Plugin, Runtime};
use super::services::Services;
use firstcome_bus::{Delivered, Handler, HandlerError};
use firstcome_core::campaign::{Campaign, Counts};
use firstcome_core::clock::now_ms;
use firstcome_core::event::{COUPON_ISSUED, CouponIssued, Envelope};
use firstcome_core::plugin_spec::{Capability, PluginSpec};
use firstcome_store::{Effects, Pending, PluginWrites, Scope, Store};

/// One campaign's plugins, by role.
#[derive(Debug, Default)]
pub struct CampaignPlugins {
    pub capacity: i64,
    pub roles: BTreeMap<String, Arc<Plugin>>,
}

/// A campaign's statistics as subscribers see them.
#[derive(Clone, Debug, Serialize, PartialEq, Eq, utoipa::ToSchema)]
pub struct StatsSnapshot {
    pub campaign_id: String,
    pub capacity: i64,
    pub issued: i64,
    pub remaining: i64,
    /// Estimated revenue: the sum of issued coupons' values.
    pub revenue: i64,
    pub by_gender: BTreeMap<String, i64>,
    pub by_age_group: BTreeMap<String, i64>,
    /// Every counter, by name (including ones a custom stats plugin adds).
    pub counters: BTreeMap<String, i64>,
    pub at_ms: i64,
}

impl StatsSnapshot {
    pub fn new(campaign_id: &str, capacity: i64, counters: BTreeMap<String, i64>) -> Self {
        // Only the values a profile can hold (and `unknown`): a plugin's counter name is its
        // own text, and the breakdowns are shown to whoever may see the statistics.
        let pick = |prefix: &str, known: &[&str]| -> BTreeMap<String, i64> {
            counters
                .iter()
                .filter_map(|(k, v)| k.strip_prefix(prefix).map(|g| (g, *v)))
                .filter(|(g, _)| *g == "unknown" || known.contains(g))
                .map(|(g, v)| (g.to_owned(), v))
                .collect()
        };
        let issued = counters.get("issued").copied().unwrap_or(0);
        Self {
            campaign_id: campaign_id.to_owned(),
            capacity,
            issued,
            // What the stats plugin has seen issued, so [`Counts::unissued`], not `remaining`.
            remaining: Counts {
                capacity,
                issued,
                ..Counts::default()
            }
            .unissued(),
            revenue: counters.get("revenue").copied().unwrap_or(0),
            by_gender: pick("gender.", firstcome_core::user::GENDERS),
            by_age_group: pick("age_group.", firstcome_core::user::AGE_GROUPS),
            counters,
            at_ms: now_ms(),
        }
    }

    /// The snapshot as the public sees it (`public_stats`): without the counters a plugin
    /// named itself, whose names could carry anything it was handed.
    pub fn public(mut self) -> Self {
        let shown = |name: &str| {
            matches!(name, "issued" | "revenue")
                || name
                    .strip_prefix("gender.")
                    .is_some_and(|g| g == "unknown" || firstcome_core::user::GENDERS.contains(&g))
                || name.strip_prefix("age_group.").is_some_and(|a| {
                    a == "unknown" || firstcome_core::user::AGE_GROUPS.contains(&a)
                })
        };
        self.counters.retain(|name, _| shown(name));
        self
    }
}

/// One plugin as the admin API shows it.
#[derive(Clone, Debug, Serialize, PartialEq, Eq, utoipa::ToSchema)]
pub struct PluginStatus {
    pub campaign_id: String,
    pub role: String,
    pub version: String,
    pub path: String,
    pub grants: Vec<Capability>,
    pub timeout_ms: u64,
    pub memory_mb: usize,
    /// Events one instance may serve (`reuse`; 1: a fresh instance per event).
    pub reuse: u32,
    /// Instances kept for the next events right now.
    pub warm_instances: usize,
    pub counters: CounterSnapshot,
}

/// Every campaign's plugins, and what they need to run.
#[derive(Debug)]
pub struct PluginHost {
    pub runtime: Arc<Runtime>,
    services: Arc<dyn Services>,
    store: Store,
    /// Where plugin files may be read from.
    files: PluginFiles,
    active: RwLock<HashMap<String, Arc<CampaignPlugins>>>,
    /// Campaigns whose file is refused: their events are retried (and dead-lettered) rather
    /// than skipped, so that nothing is silently dropped while the file is being fixed.
    blocked: RwLock<HashMap<String, String>>,
    /// Campaigns whose plugins are being loaded in the background (a version in force put
    /// back into service at start-up): their events wait, without spending retries.
    loading: RwLock<HashSet<String>>,
    /// Change counters of live views; a stats plugin's `publish` bumps its campaign's.
    pub changes: Arc<firstcome_store::Changes>,
    swaps: AtomicU64,
}

impl PluginHost {
    pub fn new(
        runtime: Arc<Runtime>,
        services: Arc<dyn Services>,
        store: Store,
        files: PluginFiles,
        changes: Arc<firstcome_store::Changes>,
    ) -> Self {
        Self {
            runtime,
            services,
            store,
            files,
            active: RwLock::default(),
            blocked: RwLock::default(),
            loading: RwLock::default(),
            changes,
            swaps: AtomicU64::new(0),
        }
    }

    /// Loads and checks every plugin a campaign names, reusing what is already running when
    /// a section did not change. Nothing running changes; the first problem is returned.
    pub async fn prepare(&self, campaign: &Campaign) -> Result<CampaignPlugins, String> {
        let current = self.active.read().unwrap().get(campaign.id()).cloned();
        let mut roles = BTreeMap::new();
        for (role, spec) in &campaign.spec().plugins {
            spec.validate(role)?;
            let path = self
                .files
                .resolve(&spec.path)
                .map_err(|e| format!("plugins.{role}: {e}"))?;
            let fail =
                |e: &dyn std::fmt::Display| format!("plugins.{role} ({}): {e}", path.display());
            let compiled = self
                .runtime
                .fetch(&path, spec.sha256.as_deref(), Some(&self.files))
                .await
                .map_err(|e| fail(&e))?;
            let running = current.as_ref().and_then(|c| c.roles.get(role));
            if let Some(running) = running
                && running.compiled.version == compiled.version
                && *running.spec == *spec
                && running.path == path
            {
                roles.insert(role.clone(), running.clone());
                continue;
            }
            let scope = Scope {
                campaign_id: campaign.id().to_owned(),
                role: role.clone(),
            };
            let plugin = self
                .runtime
                .start(
                    scope,
                    path.clone(),
                    compiled,
                    spec.clone(),
                    self.services.clone(),
                )
                .await
                .map_err(|e| fail(&e))?;
            roles.insert(role.clone(), Arc::new(plugin));
        }
        Ok(CampaignPlugins {
            capacity: campaign.capacity(),
            roles,
        })
    }

    /// Makes a prepared set the campaign's plugins, in one step.
    pub fn install(&self, campaign_id: &str, plugins: CampaignPlugins) {
        let plugins = Arc::new(plugins);
        let old = self
            .active
            .write()
            .unwrap()
            .insert(campaign_id.to_owned(), plugins.clone());
        self.blocked.write().unwrap().remove(campaign_id);
        self.loading.write().unwrap().remove(campaign_id);
        for (role, plugin) in &plugins.roles {
            let before = old
                .as_ref()
                .and_then(|o| o.roles.get(role))
                .map(|p| p.version().to_owned());
            if before.as_deref() != Some(plugin.version()) {
                if before.is_some() {
                    self.swaps.fetch_add(1, Ordering::Relaxed);
                }
                tracing::info!(campaign = %campaign_id, %role, version = %plugin.version(),
                    previous = before.as_deref().unwrap_or("none"), "plugin in service");
            }
        }
    }

    /// Records that a campaign's plugins are being loaded in the background: until
    /// [`Self::install`] or [`Self::stop_loading`], its events wait (they are neither skipped
    /// nor dead-lettered).
    pub fn loading(&self, campaign_id: &str) {
        if !self.active.read().unwrap().contains_key(campaign_id) {
            self.loading.write().unwrap().insert(campaign_id.to_owned());
        }
    }

    /// Ends [`Self::loading`] without plugins: the campaign's events are handled as having
    /// no plugin (the campaign did not come into service, or another version replaced it).
    pub fn stop_loading(&self, campaign_id: &str) {
        self.loading.write().unwrap().remove(campaign_id);
    }

    /// Whether a campaign's plugins (possibly none) are in service.
    pub fn installed(&self, campaign_id: &str) -> bool {
        self.active.read().unwrap().contains_key(campaign_id)
    }

    /// The campaigns whose plugins are being loaded in the background, sorted.
    pub fn loading_ids(&self) -> Vec<String> {
        let mut ids: Vec<String> = self.loading.read().unwrap().iter().cloned().collect();
        ids.sort();
        ids
    }

    /// Records that a campaign's file is refused: when no plugins of it are in service, its
    /// events are retried (and dead-lettered) rather than skipped. A load under way
    /// ([`Self::loading`]) goes on: its events keep waiting for it.
    pub fn block(&self, campaign_id: &str, reason: &str) {
        if !self.active.read().unwrap().contains_key(campaign_id) {
            self.blocked
                .write()
                .unwrap()
                .insert(campaign_id.to_owned(), reason.to_owned());
        }
    }

    /// Whether a campaign's plugins are being loaded in the background.
    pub fn is_loading(&self, campaign_id: &str) -> bool {
        self.loading.read().unwrap().contains(campaign_id)
    }

    pub fn unblock(&self, campaign_id: &str) {
        self.blocked.write().unwrap().remove(campaign_id);
    }

    /// The roles any campaign names.
    pub fn roles(&self) -> Vec<String> {
        let mut roles: Vec<String> = self
            .active
            .read()
            .unwrap()
            .values()
            .flat_map(|c| c.roles.keys().cloned())
            .collect();
        roles.sort();
        roles.dedup();
        roles
    }

    pub fn plugin(&self, campaign_id: &str, role: &str) -> Option<Arc<Plugin>> {
        self.active
            .read()
            .unwrap()
            .get(campaign_id)
            .and_then(|c| c.roles.get(role).cloned())
    }

    /// Drops the instances a campaign's plugins keep (`reuse`); later events get fresh ones.
    pub fn drop_warm(&self, campaign_id: &str) {
        if let Some(c) = self.active.read().unwrap().get(campaign_id) {
            for plugin in c.roles.values() {
                plugin.drop_warm();
            }
        }
    }

    /// How many times a running plugin was replaced by another version.
    pub fn swaps(&self) -> u64 {
        self.swaps.load(Ordering::Relaxed)
    }

    pub fn statuses(&self) -> Vec<PluginStatus> {
        let active = self.active.read().unwrap();
        let mut all: Vec<PluginStatus> = active
            .values()
            .flat_map(|c| c.roles.values())
            .map(|p| PluginStatus {
                campaign_id: p.scope.campaign_id.clone(),
                role: p.scope.role.clone(),
                version: p.version().to_owned(),
                path: p.path.display().to_string(),
                grants: p.spec.grants.iter().copied().collect(),
                timeout_ms: p.timeout.as_millis() as u64,
                memory_mb: p.memory_bytes >> 20,
                reuse: p.reuse,
                warm_instances: p.warm_instances(),
                counters: p.counters.snapshot(),
            })
            .collect();
        all.sort_by(|a, b| (&a.campaign_id, &a.role).cmp(&(&b.campaign_id, &b.role)));
        all
    }

    pub async fn stats(&self, campaign: &Campaign) -> firstcome_store::Result<StatsSnapshot> {
        let counters = self.store.campaign_stats(campaign.id()).await?;
        Ok(StatsSnapshot::new(
            campaign.id(),
            campaign.capacity(),
            counters,
        ))
    }

    /// Runs the plugin the event's campaign names for `role` on one event, applying nothing:
    /// what it wrote, with where it goes, or `None` when the campaign has no plugin for the
    /// role (nothing to do).
    /// `pending` holds, per scope, what earlier events of the same batch wrote (the plugin
    /// reads it as committed); this event's writes are added to it.
    async fn run(
        &self,
        role: &str,
        delivered: &Delivered,
        pending: &mut HashMap<Scope, Arc<Pending>>,
    ) -> Result<Option<(Arc<Plugin>, Effects)>, HandlerError> {
        // serde_path_to_error: the message names the field (`occurred_at: ...`).
        let envelope: Envelope<serde_json::Value> = serde_path_to_error::deserialize(
            &mut serde_json::Deserializer::from_str(&delivered.message.payload),
        )
        .map_err(|e| HandlerError::Permanent(format!("undecodable event: {e}")))?;
        let campaign_id = envelope.campaign_id.clone();
        let span = tracing::debug_span!(target: firstcome_core::JOURNEY, "event", group = role,
            event_id = %delivered.message.event_id,
            request_id = envelope.payload["request_id"].as_str().unwrap_or_default(),
            campaign = %campaign_id);
        self.run_in(role, delivered, envelope, pending)
            .instrument(span)
            .await
    }

    async fn run_in(
        &self,
        role: &str,
        delivered: &Delivered,
        envelope: Envelope<serde_json::Value>,
        pending: &mut HashMap<Scope, Arc<Pending>>,
    ) -> Result<Option<(Arc<Plugin>, Effects)>, HandlerError> {
        let campaign_id = envelope.campaign_id.clone();
        // Read before the plugins in force: `install` clears `loading` only after the plugins
        // are in place, and a failed load blocks the campaign before it stops loading, so an
        // event never falls between them.
        let loading = self.loading.read().unwrap().contains(&campaign_id);
        let blocked = self.blocked.read().unwrap().get(&campaign_id).cloned();
        let (plugin, capacity) = {
            let active = self.active.read().unwrap();
            match active.get(&campaign_id) {
                Some(c) => (c.roles.get(role).cloned(), c.capacity),
                None => (None, 0),
            }
        };
        let Some(plugin) = plugin else {
            if loading {
                return Err(HandlerError::NotReady(format!(
                    "campaign {campaign_id}'s plugins are loading"
                )));
            }
            if let Some(reason) = blocked {
                return Err(HandlerError::Retryable(format!(
                    "campaign {campaign_id} has no plugins loaded: its file is refused: {reason}"
                )));
            }
            // The campaign has no plugin for this role: nothing to do.
            tracing::debug!(target: firstcome_core::JOURNEY, "no plugin for the role");
            return Ok(None);
        };
        let event = visible_to(wit_event(envelope, capacity)?, &plugin.spec);
        let result = self
            .runtime
            .call_after(
                &plugin,
                &delivered.message.event_id,
                &event,
                self.services.clone(),
                pending.get(&plugin.scope).cloned(),
            )
            .await;
        match result {
            Ok(effects) => {
                tracing::debug!(target: firstcome_core::JOURNEY, version = %plugin.version(),
                    "handled by the plugin");
                if !effects.kv.is_empty() || !effects.counters.is_empty() {
                    let earlier = pending.entry(plugin.scope.clone()).or_default();
                    Arc::make_mut(earlier).absorb(&effects);
                }
                Ok(Some((plugin, effects)))
            }
            Err(e) => {
                tracing::warn!(campaign = %campaign_id, %role, version = %plugin.version(),
                    event_id = %delivered.message.event_id, error = %e, "plugin call failed");
                Err(e.to_handler_error(&format!("{role} plugin {}", plugin.version())))
            }
        }
    }

    /// Handles one event for one role: runs the event's campaign's plugin for the role, then
    /// applies what it wrote together with the group's processed mark.
    pub async fn handle(&self, role: &str, delivered: &Delivered) -> Result<(), HandlerError> {
        let Some((plugin, effects)) = self.run(role, delivered, &mut HashMap::new()).await? else {
            return Ok(());
        };
        let applied = self
            .store
            .commit_effects(
                role,
                &delivered.message.event_id,
                &plugin.scope,
                &effects,
                now_ms(),
            )
            .await
            .map_err(write_error)?;
        if applied && effects.publish_stats {
            self.changes.bump(&plugin.scope.campaign_id);
        }
        Ok(())
    }

    /// Handles events for one role as one unit of work: runs each event's plugin in order up
    /// to the first failure (or until [`BATCH_TIME`] is spent), then applies what the ones
    /// before it wrote, with their processed marks, in one transaction. When that transaction
    /// fails (a counter that the batch's sum would overflow, say), the events are applied one
    /// by one instead, so that only the event at fault fails. When an event turns out to be
    /// processed already (another member of the group handled it), the events after it ran on
    /// its writes as if pending: they run again. See [`Handler::handle_batch`].
    pub async fn handle_batch(
        &self,
        role: &str,
        events: &[Delivered],
    ) -> (usize, Option<HandlerError>) {
        let started = std::time::Instant::now();
        let mut start = 0;
        'batches: while start < events.len() {
            let mut ran = Vec::new();
            let mut failed = None;
            let mut pending = HashMap::new();
            for delivered in &events[start..] {
                if !ran.is_empty() && started.elapsed() >= BATCH_TIME {
                    break;
                }
                match self.run(role, delivered, &mut pending).await {
                    Ok(done) => ran.push((delivered.message.event_id.as_str(), done)),
                    Err(e) => {
                        failed = Some(e);
                        break;
                    }
                }
            }
            // Which of `ran` each write belongs to.
            let (places, writes): (Vec<usize>, Vec<PluginWrites<'_>>) = ran
                .iter()
                .enumerate()
                .filter_map(|(i, (event_id, done))| {
                    let (plugin, effects) = done.as_ref()?;
                    let write = PluginWrites {
                        event_id,
                        scope: &plugin.scope,
                        effects,
                    };
                    Some((i, write))
                })
                .unzip();
            let outcome = if writes.is_empty() {
                Ok(Vec::new())
            } else {
                self.store
                    .commit_effects_batch(role, &writes, now_ms())
                    .await
            };
            match outcome {
                Ok(applied) => {
                    for (w, applied) in writes.iter().zip(&applied) {
                        if *applied && w.effects.publish_stats {
                            self.changes.bump(&w.scope.campaign_id);
                        }
                    }
                    if applied.len() < writes.len() {
                        // Done up to an event processed elsewhere; the rest run again.
                        let last = applied.len().saturating_sub(1);
                        start += places.get(last).map_or(1, |place| place + 1);
                        continue 'batches;
                    }
                    let done = start + ran.len();
                    if failed.is_some() || done == events.len() {
                        return (done, failed);
                    }
                    // Out of time: the caller goes on with the rest.
                    return (done, None);
                }
                Err(e) => {
                    tracing::debug!(%role, events = writes.len(), error = %e,
                        "a batch's plugin writes failed together; applying them one by one");
                    // What the instances remember of these events was never applied.
                    for (_, done) in &ran {
                        if let Some((plugin, _)) = done {
                            plugin.drop_warm();
                        }
                    }
                    for (i, (event_id, done)) in ran.iter().enumerate() {
                        let Some((plugin, effects)) = done else {
                            continue;
                        };
                        let now = now_ms();
                        match self
                            .store
                            .commit_effects(role, event_id, &plugin.scope, effects, now)
                            .await
                        {
                            Ok(true) => {
                                if effects.publish_stats {
                                    self.changes.bump(&plugin.scope.campaign_id);
                                }
                            }
                            // Processed elsewhere: the events after it run again.
                            Ok(false) => {
                                start += i + 1;
                                continue 'batches;
                            }
                            Err(e) => return (start + i, Some(write_error(e))),
                        }
                    }
                    return (start + ran.len(), failed);
                }
            }
        }
        (events.len(), None)
    }
}

/// How long a batch runs plugins before it commits what it has: bounds how long a group
/// member holds its events (and, on the embedded bus, its lease) between commits.
pub const BATCH_TIME: std::time::Duration = std::time::Duration::from_secs(1);

/// What a failed write of a plugin's effects means for its event.
fn write_error(e: firstcome_store::StoreError) -> HandlerError {
    let message = format!("applying the plugin's writes: {e}");
    // An overflowing counter overflows again on every retry.
    if matches!(e, firstcome_store::StoreError::Overflow { .. }) {
        HandlerError::Permanent(message)
    } else {
        HandlerError::Retryable(message)
    }
}

/// The WIT event of a bus envelope.
pub fn wit_event(
    envelope: Envelope<serde_json::Value>,
    capacity: i64,
) -> Result<Event, HandlerError> {
    if envelope.event_type != COUPON_ISSUED {
        return Err(HandlerError::Permanent(format!(
            "event type {:?} is not one this host's plugins know",
            envelope.event_type
        )));
    }
    let p: CouponIssued = serde_path_to_error::deserialize(envelope.payload)
        .map_err(|e| HandlerError::Permanent(format!("undecodable coupon.issued payload: {e}")))?;
    Ok(Event::CouponIssued(WitCouponIssued {
        event_id: envelope.event_id,
        campaign_id: envelope.campaign_id,
        campaign_name: p.campaign_name,
        campaign_value: p.campaign_value,
        campaign_capacity: capacity,
        coupon_id: p.coupon_id,
        coupon_code: p.coupon_code,
        position: p.position,
        user_id: p.user_id,
        email: p.email,
        fcm_token: p.fcm_token,
        gender: p.gender,
        age_group: p.age_group,
        issued_at_ms: p.issued_at.millis(),
        expires_at_ms: p.expires_at.map(|t| t.millis()),
    }))
}

/// `event` as a plugin with `spec`'s grants sees it: the shopper's email only with `email`,
/// the push token only with `push`, the profile (gender, age group) only with `email`,
/// `push` or `stats` (what the statistics count). Other roles see `none` for them.
pub fn visible_to(event: Event, spec: &PluginSpec) -> Event {
    let Event::CouponIssued(mut e) = event;
    if !spec.grants(Capability::Email) {
        e.email = None;
    }
    if !spec.grants(Capability::Push) {
        e.fcm_token = None;
    }
    if ![Capability::Email, Capability::Push, Capability::Stats]
        .iter()
        .any(|c| spec.grants(*c))
    {
        e.gender = None;
        e.age_group = None;
    }
    Event::CouponIssued(e)
}

/// The consumer group of one role.
#[derive(Debug, Clone)]
pub struct RoleHandler {
    pub host: Arc<PluginHost>,
    pub role: String,
}

#[async_trait]
impl Handler for RoleHandler {
    async fn handle(&self, event: &Delivered) -> Result<(), HandlerError> {
        self.host.handle(&self.role, event).await
    }

    async fn handle_batch(&self, events: &[Delivered]) -> (usize, Option<HandlerError>) {
        self.host.handle_batch(&self.role, events).await
    }

    /// An event with a plugin is recorded with the plugin's writes; one whose campaign has no
    /// plugin for the role writes nothing and is not recorded. If it comes again (a
    /// redelivery after a crash or a rebalance), it runs under the campaign's plugins as they
    /// are then: nothing again, or a plugin the campaign gained meanwhile.
    fn records_processed(&self) -> bool {
        true
    }
}
