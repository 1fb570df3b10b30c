//! Keeps the admission queue honest against the database, the arbiter.
//!
//! - **The floor.** Every admission carries the campaign's [`Floor`] (coupons issued, highest
//!   position issued) as this host last read it: refreshed from the database at most
//!   [`FLOOR_MAX_AGE`] apart, at once after the queue failed (a restart is then suspected),
//!   and raised by every chunk this host commits. A queue below it answers `Behind` and is
//!   rebuilt, so a Redis that came back from an older snapshot never hands out a position
//!   someone holds, and a holder is always answered `409`.
//! - **The rebuild** ([`QueueGuard::resync`]): the queue's state of a campaign replaced by the
//!   database's when it is missing or behind, checked and done in one atomic step of the
//!   queue.
//! - **The count of lost admissions.** This host remembers every request it answered `202`
//!   until it sees the coupon. After a rebuild or a suspected restart it audits them: a user
//!   who holds no coupon and whose place the queue no longer holds was lost with the queue's
//!   data (Redis without persistence, or the seconds an older snapshot missed). Each is
//!   counted in `firstcome_admissions_lost_total` and logged once per campaign and audit; the
//!   user's status reads `none` and they may ask again.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::admission::{Admission, AdmissionError, Floor};
use crate::campaign::Campaign;
use crate::store::{Store, StoreError};

/// How old a floor may be before an admission reads it again from the database.
pub const FLOOR_MAX_AGE: Duration = Duration::from_secs(1);

/// How long an admission waits for the floor's database read before it uses the last known.
pub const FLOOR_READ_TIMEOUT: Duration = Duration::from_millis(500);

/// Users checked per database query of an audit.
const AUDIT_BATCH: usize = 500;

#[derive(Debug, thiserror::Error)]
pub enum GuardError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Admission(#[from] AdmissionError),
}

#[derive(Clone, Copy, Debug)]
struct Known {
    floor: Floor,
    /// When it was last read from the database; `None`: read it before the next admission.
    read_at: Option<Instant>,
    /// The queue failed since the last read: audit the campaign after the next one.
    audit_due: bool,
}

/// The floor, the rebuild and the audit of one host; shared by its API and its issuers.
#[derive(Debug)]
pub struct QueueGuard {
    store: Store,
    admission: Arc<dyn Admission>,
    floors: Mutex<HashMap<String, Known>>,
    /// Per campaign, the requests this host answered `202` whose coupon it has not seen:
    /// position -> user.
    answered: Mutex<HashMap<String, BTreeMap<i64, String>>>,
    /// One audit at a time per host.
    auditing: tokio::sync::Mutex<()>,
}

impl QueueGuard {
    pub fn new(store: Store, admission: Arc<dyn Admission>) -> Self {
        Self {
            store,
            admission,
            floors: Mutex::default(),
            answered: Mutex::default(),
            auditing: tokio::sync::Mutex::new(()),
        }
    }

    /// The floor for an admission to `campaign_id`: the last one read when it is fresh and the
    /// queue has not failed since, else read from the database now (and, when the queue
    /// failed since, the campaign audited). When the database does not answer within
    /// [`FLOOR_READ_TIMEOUT`], the last floor known is used and read again
    /// [`FLOOR_MAX_AGE`] later: the database being down makes no queue state wrong.
    pub async fn floor(&self, campaign_id: &str) -> Floor {
        if let Some(known) = self.floors.lock().unwrap().get(campaign_id)
            && known.read_at.is_some_and(|t| t.elapsed() < FLOOR_MAX_AGE)
        {
            return known.floor;
        }
        let read = match tokio::time::timeout(
            FLOOR_READ_TIMEOUT,
            self.store.issue_mark(campaign_id),
        )
        .await
        {
            Ok(Ok(floor)) => Some(floor),
            Ok(Err(e)) => {
                tracing::warn!(campaign = %campaign_id, error = %e,
                        "cannot read the admission floor; using the last one known");
                None
            }
            Err(_) => {
                tracing::warn!(campaign = %campaign_id,
                        "the admission floor took too long to read; using the last one known");
                None
            }
        };
        let (floor, audit) = {
            let mut floors = self.floors.lock().unwrap();
            let known = floors.entry(campaign_id.to_owned()).or_insert(Known {
                floor: Floor::default(),
                read_at: None,
                audit_due: false,
            });
            known.read_at = Some(Instant::now());
            match read {
                Some(read) => {
                    known.floor = known.floor.max(read);
                    (known.floor, std::mem::take(&mut known.audit_due))
                }
                None => (known.floor, false),
            }
        };
        if audit && let Err(e) = self.audit(campaign_id).await {
            tracing::warn!(campaign = %campaign_id, error = %e, "cannot audit admissions");
            if let Some(known) = self.floors.lock().unwrap().get_mut(campaign_id) {
                known.audit_due = true;
            }
        }
        floor
    }

    /// Raises the known floor (a chunk this host committed, or a rebuild).
    pub fn raise(&self, campaign_id: &str, floor: Floor) {
        let mut floors = self.floors.lock().unwrap();
        let known = floors.entry(campaign_id.to_owned()).or_insert(Known {
            floor,
            read_at: None,
            audit_due: false,
        });
        known.floor = known.floor.max(floor);
    }

    /// The queue failed (a connection error, a lost queue): a restart is suspected. Every
    /// floor is read again before the next admission, and each campaign audited.
    pub fn suspect(&self) {
        for known in self.floors.lock().unwrap().values_mut() {
            known.read_at = None;
            known.audit_due = true;
        }
    }

    /// Remembers a request answered `202`, until its coupon is seen.
    pub fn answered(&self, campaign_id: &str, user_id: &str, position: i64) {
        self.answered
            .lock()
            .unwrap()
            .entry(campaign_id.to_owned())
            .or_default()
            .insert(position, user_id.to_owned());
    }

    /// Forgets requests whose chunk this host committed (issued, or found issued).
    pub fn handled(&self, campaign_id: &str, positions: impl IntoIterator<Item = i64>) {
        if let Some(answered) = self.answered.lock().unwrap().get_mut(campaign_id) {
            for p in positions {
                answered.remove(&p);
            }
        }
    }

    /// Requests this host answered `202` and has not seen issued, per campaign (tests).
    pub fn unconfirmed(&self, campaign_id: &str) -> usize {
        self.answered
            .lock()
            .unwrap()
            .get(campaign_id)
            .map_or(0, BTreeMap::len)
    }

    /// Writes the campaign into the queue, rebuilding it from the database when the queue has
    /// nothing for it, holds less than the database issued, or `force`; after a rebuild,
    /// audits what this host answered. Returns whether it rebuilt.
    pub async fn resync(&self, campaign: &Campaign, force: bool) -> Result<bool, GuardError> {
        let issued = self.store.issued_users(&campaign.id).await?;
        let floor = Floor::of_issued(&issued);
        let rebuilt = self
            .admission
            .sync_campaign(campaign, &issued, force)
            .await?;
        self.raise(&campaign.id, floor);
        if rebuilt {
            metrics::counter!("firstcome_admission_rebuilds_total", "campaign" => campaign.id.clone())
                .increment(1);
            tracing::info!(campaign = %campaign.id, issued = issued.len(), force,
                "admission state rebuilt from the database");
            self.audit(&campaign.id).await?;
        }
        Ok(rebuilt)
    }

    /// Sorts what this host answered `202` for the campaign: issued (forgotten), still held by
    /// the queue (kept), or lost with the queue's data (counted, logged, forgotten).
    pub async fn audit(&self, campaign_id: &str) -> Result<u64, GuardError> {
        let _one = self.auditing.lock().await;
        let answered: Vec<(i64, String)> = match self.answered.lock().unwrap().get(campaign_id) {
            Some(a) => a.iter().map(|(p, u)| (*p, u.clone())).collect(),
            None => return Ok(0),
        };
        let mut settled = Vec::new();
        let mut lost = Vec::new();
        for part in answered.chunks(AUDIT_BATCH) {
            let users: Vec<String> = part.iter().map(|(_, u)| u.clone()).collect();
            let holders = self.store.holders(campaign_id, &users).await?;
            for (position, user) in part {
                if holders.contains(user) {
                    settled.push(*position);
                } else if self.admission.position(campaign_id, user).await? != Some(*position) {
                    settled.push(*position);
                    lost.push(user.clone());
                }
            }
        }
        self.handled(campaign_id, settled);
        if !lost.is_empty() {
            metrics::counter!("firstcome_admissions_lost_total", "campaign" => campaign_id.to_owned())
                .increment(lost.len() as u64);
            tracing::error!(campaign = %campaign_id, lost = lost.len(),
                first = %lost.iter().take(5).cloned().collect::<Vec<_>>().join(", "),
                "the admission queue lost requests this host had answered 202 (Redis restarted \
                 without their writes: run it with appendonly yes); their users read status \
                 none and may ask again");
        }
        Ok(lost.len() as u64)
    }
}
