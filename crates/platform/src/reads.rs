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

/// Longest a readiness probe waits for one backend's answer: below a load balancer's usual
/// probe timeout, above a healthy round trip under load.
pub const READINESS_DEADLINE: std::time::Duration = std::time::Duration::from_secs(2);

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
    /// The clock windows and leases are judged by, and how far this host's is from it.
    pub clock: crate::shared_clock::ClockReading,
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

    /// Asks every backend at once whether it answers, each within [`READINESS_DEADLINE`]: a
    /// backend that does not answer in time is down, named, and the probe itself never hangs.
    pub async fn readiness(&self) -> Readiness {
        async fn within<E: std::fmt::Display>(
            check: impl std::future::Future<Output = Result<(), E>>,
        ) -> Result<(), String> {
            match tokio::time::timeout(READINESS_DEADLINE, check).await {
                Ok(answer) => answer.map_err(|e| e.to_string()),
                Err(_) => Err(format!(
                    "no answer within {} ms",
                    READINESS_DEADLINE.as_millis()
                )),
            }
        }
        let (db, queue, bus, guarantee) = tokio::join!(
            within(self.store.ping()),
            within(self.admission.ping()),
            within(self.bus.ping()),
            tokio::time::timeout(READINESS_DEADLINE, self.admission.durability())
        );
        let guarantee = guarantee.unwrap_or_else(|_| {
            "unknown now: the admission queue did not say in time how it keeps a 202".into()
        });
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
                    db,
                ),
                backend("admission", self.admission.kind(), queue),
                backend("event_bus", self.bus.kind(), bus),
            ],
            admission_guarantee: guarantee,
            clock: self.clock.reading(),
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
