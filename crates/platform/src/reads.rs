//! What the API and the operators read through the [`Platform`]: a campaign's counts, a
//! user's request and coupons, the backends' health, plugins and consumer groups. Handlers
//! call these instead of reaching into the store, the admission queue or the bus, so that each
//! figure is computed in one place.

use std::collections::BTreeMap;

use tokio::sync::watch;

use firstcome_bus::BusError;
use firstcome_core::campaign::{Campaign, Counts};
use firstcome_core::queue::RequestState;
use firstcome_core::user::UserId;
use firstcome_plugin::{PluginStatus, StatsSnapshot};
use firstcome_store::{CouponView, StoreError, UserProfile};

use crate::{Platform, PlatformError};

/// Where a user's request stands, with what goes with its state.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RequestOf {
    /// Issued: the coupon (its `position` is the request's place in line).
    Issued(CouponView),
    /// Admitted, waiting for its coupon at this 1-based position.
    Queued(i64),
    /// No request of this user for the campaign.
    None,
}

impl RequestOf {
    pub fn state(&self) -> RequestState {
        match self {
            Self::Issued(_) => RequestState::Issued,
            Self::Queued(_) => RequestState::Queued,
            Self::None => RequestState::None,
        }
    }
}

/// One backend as readiness sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Backend {
    /// `database`, `admission` or `event_bus`.
    pub name: &'static str,
    /// `sqlite`/`mysql`/`postgres`, `redis`/`embedded`, `kafka`/`embedded`.
    pub kind: String,
    /// Why it did not answer; `None` when it did.
    pub down: Option<String>,
}

/// Readiness: each backend, and what an answered `202` survives.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Readiness {
    pub backends: Vec<Backend>,
    pub admission_guarantee: String,
}

impl Readiness {
    /// Every backend answered.
    pub fn is_ready(&self) -> bool {
        self.backends.iter().all(|b| b.down.is_none())
    }
}

impl Platform {
    /// A campaign's counts now: admitted and queued from the admission queue, issued from the
    /// database. [`Counts::remaining`] and [`Campaign::state`] give the rest.
    pub async fn counts(&self, c: &Campaign) -> Result<Counts, PlatformError> {
        let (queue, issued) = tokio::join!(
            self.admission.counts(c.id()),
            self.store.issued_count(c.id())
        );
        let queue = queue?;
        Ok(Counts {
            capacity: c.capacity(),
            admitted: queue.admitted,
            queued: queue.queued,
            issued: issued?,
        })
    }

    /// Where a user's request for a campaign stands: the database's coupon first, else the
    /// admission queue's position.
    pub async fn request_of(
        &self,
        campaign_id: &str,
        user: &UserId,
    ) -> Result<RequestOf, PlatformError> {
        if let Some(coupon) = self.store.coupon_of(campaign_id, user.as_str()).await? {
            return Ok(RequestOf::Issued(coupon));
        }
        Ok(
            match self.admission.position(campaign_id, user.as_str()).await? {
                Some(position) => RequestOf::Queued(position),
                None => RequestOf::None,
            },
        )
    }

    /// Every coupon a user was issued, newest first.
    pub async fn coupons_of(&self, user: &UserId) -> Result<Vec<CouponView>, StoreError> {
        self.store.coupons_of_user(user.as_str()).await
    }

    /// Creates or replaces user profiles (one transaction).
    pub async fn upsert_users(&self, profiles: &[UserProfile]) -> Result<(), StoreError> {
        self.store.upsert_users(profiles).await
    }

    /// Asks every backend at once whether it answers.
    pub async fn readiness(&self) -> Readiness {
        let (db, queue, bus, guarantee) = tokio::join!(
            self.store.ping(),
            self.admission.ping(),
            self.bus.ping(),
            self.admission.durability()
        );
        let backend = |name, kind: &str, r: Result<(), String>| Backend {
            name,
            kind: kind.to_owned(),
            down: r.err(),
        };
        Readiness {
            backends: vec![
                backend(
                    "database",
                    &format!("{:?}", self.store.dialect()).to_lowercase(),
                    db.map_err(|e| e.to_string()),
                ),
                backend(
                    "admission",
                    self.admission.kind(),
                    queue.map_err(|e| e.to_string()),
                ),
                backend("event_bus", self.bus.kind(), bus.map_err(|e| e.to_string())),
            ],
            admission_guarantee: guarantee,
        }
    }

    /// `embedded` or `kafka`.
    pub fn bus_kind(&self) -> &'static str {
        self.bus.kind()
    }

    /// Events of `topic` that `group` has not moved past.
    pub async fn consumer_lag(&self, group: &str, topic: &str) -> Result<i64, BusError> {
        self.bus.lag(group, topic).await
    }

    /// The version (`sha256:...`) of the plugin handling each of the campaign's roles.
    pub fn plugin_versions(&self, c: &Campaign) -> BTreeMap<String, String> {
        c.spec()
            .plugins
            .keys()
            .filter_map(|role| {
                let p = self.plugins.plugin(c.id(), role)?;
                Some((role.clone(), p.version().to_owned()))
            })
            .collect()
    }

    /// The campaign's statistics as its stats plugin counted them.
    pub async fn plugin_stats(&self, c: &Campaign) -> Result<StatsSnapshot, StoreError> {
        self.plugins.stats(c).await
    }

    /// Every campaign's plugins: version, grants, limits and counters.
    pub fn plugin_statuses(&self) -> Vec<PluginStatus> {
        self.plugins.statuses()
    }

    /// Times a running plugin was replaced by another version since the host started.
    pub fn plugin_swaps(&self) -> u64 {
        self.plugins.swaps()
    }

    /// A receiver that sees every later change of the campaign (admissions, chunks, stats).
    pub fn subscribe_changes(&self, campaign_id: &str) -> watch::Receiver<u64> {
        self.changes.subscribe(campaign_id)
    }
}
