//! Keeps the admission queue honest against the database, the arbiter.
//!
//! - **The floor.** Every admission carries the campaign's [`Floor`] (coupons issued, highest
//!   position issued), of the user's bucket when the queue splits the campaign, as this host
//!   last read it: read from the database at most
//!   [`FLOOR_MAX_AGE`] apart, at once after the queue failed (a restart is then suspected),
//!   and raised by every chunk this host commits. A queue below it answers `Behind` and is
//!   brought up to the database, so a Redis that came back from an older snapshot never hands
//!   out a position someone holds, and a holder is always answered `409`.
//! - **The rebuild** ([`QueueGuard::resync`]): the queue's state of a campaign rebuilt from the
//!   database when it is missing, merged with it when it is behind, checked and changed in
//!   one atomic step of the queue.
//! - **The ledger of `202`s.** This host remembers every request it answered `202` until the
//!   request's coupon is in the database. A background sweep every [`SWEEP_EVERY`] forgets
//!   the issued ones, once they had [`SETTLE`] to be issued; those still not issued are
//!   checked against the queue when the queue failed or was rebuilt since they were
//!   answered, or when they are older than [`STALE`]: a request the queue no longer holds
//!   at its place was lost with the queue's data (Redis without persistence, or the seconds
//!   an older snapshot missed, or refused past capacity after such a loss). Each is counted
//!   in `firstcome_admissions_lost_total` and logged once per sweep and campaign; the user's
//!   status reads `none` and they may ask again.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;

use firstcome_admission::{Admission, AdmissionError, Floor};
use firstcome_core::campaign::Campaign;
use firstcome_core::queue::bucket_of_position;
use firstcome_store::{Store, StoreError};

/// How old a floor may be before an admission reads it again from the database.
pub const FLOOR_MAX_AGE: Duration = Duration::from_secs(1);

/// How long an admission waits for the floor's database read before it uses the last known.
pub const FLOOR_READ_TIMEOUT: Duration = Duration::from_millis(500);

/// How often the ledger is swept.
pub const SWEEP_EVERY: Duration = Duration::from_secs(2);

/// How long a `202` may take to be issued before the ledger looks at it: long enough for a
/// chunk claimed before a loss to commit after it.
pub const SETTLE: Duration = Duration::from_secs(5);

/// A `202` not issued after this long is checked against the queue even when nothing failed
/// (a refusal past capacity after a loss, or a failure this host did not see).
pub const STALE: Duration = Duration::from_secs(60);

/// Users checked per database query of a sweep.
const SWEEP_BATCH: usize = 500;

#[derive(Debug, thiserror::Error)]
pub enum GuardError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Admission(#[from] AdmissionError),
}

#[derive(Clone, Debug)]
struct Known {
    /// One floor per bucket of the campaign (one for a campaign in one bucket).
    floors: Vec<Floor>,
    /// When it was last read from the database; `None`: read it before the next admission.
    read_at: Option<Instant>,
    /// The queue failed since the campaign was last synced: a split campaign is synced again
    /// before its next admission ([`QueueGuard::audit_if_due`]).
    audit: bool,
}

#[derive(Clone, Copy, Debug)]
struct Answer {
    position: i64,
    at: Instant,
}

/// The `202`s this host answered for one campaign and has not seen issued.
#[derive(Debug, Default)]
struct Ledger {
    answered: HashMap<String, Answer>,
    /// The queue failed or was rebuilt at this moment: answers from before it are checked
    /// against the queue.
    suspect_since: Option<Instant>,
}

/// The floor, the rebuild and the ledger of one host; shared by its API and its issuers.
#[derive(Debug)]
pub struct QueueGuard {
    store: Store,
    admission: Arc<dyn Admission>,
    floors: Mutex<HashMap<String, Known>>,
    ledgers: Mutex<HashMap<String, Ledger>>,
    /// The hosts' sold-out flags, cleared by every rebuild (stock may come back).
    sold_out: Arc<crate::sold_out::SoldOutFlags>,
    /// One sync at a time per campaign for [`QueueGuard::audit_if_due`].
    audits: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
}

impl QueueGuard {
    /// A guard over `admission`, reading floors and holders from `store`. Its ledger is swept
    /// only by [`QueueGuard::run_sweeps`], which the host starts.
    pub fn new(store: Store, admission: Arc<dyn Admission>) -> Self {
        Self {
            store,
            admission,
            floors: Mutex::default(),
            ledgers: Mutex::default(),
            audits: Mutex::default(),
            sold_out: Arc::new(crate::sold_out::SoldOutFlags::new(Duration::from_millis(
                firstcome_admission::AdmissionConfig::default().sold_out_recheck_ms,
            ))),
        }
    }

    /// This host's sold-out flags ([`crate::sold_out`]).
    pub fn sold_out(&self) -> &Arc<crate::sold_out::SoldOutFlags> {
        &self.sold_out
    }

    /// The floor for an admission to bucket `bucket` of `campaign_id`, split into `buckets`
    /// (1 and 0 for a campaign in one bucket): the last one read when it is fresh and the
    /// queue has not failed since, else read from the database now. When the database does
    /// not answer within [`FLOOR_READ_TIMEOUT`], the last floor known is used and read again
    /// [`FLOOR_MAX_AGE`] later: the database being down makes no queue state wrong.
    pub async fn floor(&self, campaign_id: &str, buckets: u32, bucket: u32) -> Floor {
        let buckets = buckets.max(1);
        let pick = |known: &Known| {
            known
                .floors
                .get(bucket as usize)
                .copied()
                .unwrap_or_default()
        };
        if let Some(known) = self.floors.lock().unwrap().get(campaign_id)
            && known.floors.len() == buckets as usize
            && known.read_at.is_some_and(|t| t.elapsed() < FLOOR_MAX_AGE)
        {
            return pick(known);
        }
        let read = async {
            if buckets == 1 {
                self.store.issue_mark(campaign_id).await.map(|f| vec![f])
            } else {
                self.store.issue_marks(campaign_id, buckets).await
            }
        };
        let read = match tokio::time::timeout(FLOOR_READ_TIMEOUT, read).await {
            Ok(Ok(floors)) => Some(floors),
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
        let mut floors = self.floors.lock().unwrap();
        let known = floors.entry(campaign_id.to_owned()).or_insert(Known {
            floors: Vec::new(),
            read_at: None,
            audit: false,
        });
        if known.floors.len() != buckets as usize {
            known.floors = vec![Floor::default(); buckets as usize];
        }
        known.read_at = Some(Instant::now());
        if let Some(read) = read {
            raise_each(&mut known.floors, &read);
        }
        pick(known)
    }

    /// Raises the known floors after a chunk this host committed: `mark` is the campaign's
    /// issue mark after it (exact for a campaign in one bucket), `holders` the `(user,
    /// position)` it issued (for a split campaign, each raises its bucket's highest position).
    pub fn raise(&self, campaign_id: &str, buckets: u32, mark: Floor, holders: &[(String, i64)]) {
        let buckets = buckets.max(1);
        let mut raised = vec![
            Floor {
                campaign_issued: mark.campaign_issued,
                ..Floor::default()
            };
            buckets as usize
        ];
        if buckets == 1 {
            raised[0] = mark;
        } else {
            for (_, position) in holders {
                let f = &mut raised[bucket_of_position(*position, buckets) as usize];
                f.last_position = f.last_position.max(*position);
            }
        }
        self.raise_all(campaign_id, &raised);
    }

    /// Raises the known floor of each bucket (a rebuild read them all from the database).
    fn raise_all(&self, campaign_id: &str, raised: &[Floor]) {
        let mut floors = self.floors.lock().unwrap();
        let known = floors.entry(campaign_id.to_owned()).or_insert(Known {
            floors: Vec::new(),
            read_at: None,
            audit: false,
        });
        if known.floors.len() != raised.len() {
            known.floors = vec![Floor::default(); raised.len()];
            known.read_at = None;
        }
        raise_each(&mut known.floors, raised);
    }

    /// The queue failed (a connection error, a lost queue): a restart is suspected. Every
    /// floor is read again before the next admission, and every answer so far is checked.
    pub fn suspect(&self) {
        for known in self.floors.lock().unwrap().values_mut() {
            known.read_at = None;
            known.audit = true;
        }
        let now = Instant::now();
        for ledger in self.ledgers.lock().unwrap().values_mut() {
            ledger.suspect_since = Some(now);
        }
    }

    /// Syncs a campaign split into buckets again when the queue failed since it was last
    /// synced here, before its next admission: Redis may have come back from an older
    /// snapshot, or a lagging replica taken over, that lost a grant of stock on the giver's
    /// side only. That giver is not behind its own floor (it admitted nobody since), so only
    /// the sync, which reconciles every bucket's ledger, finds it before it admits with stock
    /// it gave away. Requests that arrive meanwhile wait for the one sync; on an error the
    /// sync stays due.
    pub async fn audit_if_due(&self, campaign: &Campaign) -> Result<(), GuardError> {
        let id = campaign.id();
        if !self.audit_due(id) {
            return Ok(());
        }
        let lock = self
            .audits
            .lock()
            .unwrap()
            .entry(id.to_owned())
            .or_default()
            .clone();
        let _turn = lock.lock().await;
        if !self.audit_due(id) {
            return Ok(());
        }
        self.resync(campaign, false).await?;
        if let Some(known) = self.floors.lock().unwrap().get_mut(id) {
            known.audit = false;
        }
        Ok(())
    }

    fn audit_due(&self, campaign_id: &str) -> bool {
        self.floors
            .lock()
            .unwrap()
            .get(campaign_id)
            .is_some_and(|known| known.audit)
    }

    /// Remembers a request answered `202`, until its coupon is seen. A user answered `202`
    /// at another place before was lost since (the queue no longer knew them): counted.
    pub fn answered(&self, campaign_id: &str, user_id: &str, position: i64) {
        let earlier = self
            .ledgers
            .lock()
            .unwrap()
            .entry(campaign_id.to_owned())
            .or_default()
            .answered
            .insert(
                user_id.to_owned(),
                Answer {
                    position,
                    at: Instant::now(),
                },
            );
        if earlier.is_some_and(|a| a.position != position) {
            lost(campaign_id, &[user_id.to_owned()]);
        }
    }

    /// Forgets requests now issued (by this host's issuer).
    pub fn issued<'a>(&self, campaign_id: &str, users: impl IntoIterator<Item = &'a str>) {
        if let Some(ledger) = self.ledgers.lock().unwrap().get_mut(campaign_id) {
            for user in users {
                ledger.answered.remove(user);
            }
        }
    }

    /// Requests this host answered `202` and has not seen issued (tests).
    pub fn unconfirmed(&self, campaign_id: &str) -> usize {
        self.ledgers
            .lock()
            .unwrap()
            .get(campaign_id)
            .map_or(0, |l| l.answered.len())
    }

    /// Writes the campaign into the queue, rebuilding it from the database when the queue has
    /// nothing for it (or `force`) and merging the database's holders into it when it holds
    /// less than the database issued. Returns whether it changed the queue's state; the
    /// answers from before are then checked by the next sweeps.
    pub async fn resync(&self, campaign: &Campaign, force: bool) -> Result<bool, GuardError> {
        let issued = self.store.issued_users(campaign.id()).await?;
        let floors = Floor::per_bucket(&issued, self.admission.buckets(campaign));
        let changed = self
            .admission
            .sync_campaign(campaign, &issued, force)
            .await?;
        self.sold_out.clear(campaign.id());
        self.raise_all(campaign.id(), &floors);
        if changed {
            metrics::counter!("firstcome_admission_rebuilds_total", "campaign" => campaign.id().to_owned())
                .increment(1);
            tracing::info!(campaign = %campaign.id(), issued = issued.len(), force,
                "admission state brought up to the database");
            if let Some(ledger) = self.ledgers.lock().unwrap().get_mut(campaign.id()) {
                ledger.suspect_since = Some(Instant::now());
            }
        }
        Ok(changed)
    }

    /// Sweeps every [`SWEEP_EVERY`] until `stop`.
    pub async fn run_sweeps(self: Arc<Self>, stop: CancellationToken) {
        loop {
            tokio::select! {
                () = tokio::time::sleep(SWEEP_EVERY) => {}
                () = stop.cancelled() => return,
            }
            if let Err(e) = self.sweep(Instant::now()).await {
                tracing::warn!(error = %e, "cannot sweep the ledger of answered requests");
            }
        }
    }

    /// One sweep of every campaign's ledger as of `now`: forgets the issued answers that had
    /// [`SETTLE`] to be issued, and counts the lost ones. Returns how many were lost.
    pub async fn sweep(&self, now: Instant) -> Result<u64, GuardError> {
        let campaigns: Vec<String> = self.ledgers.lock().unwrap().keys().cloned().collect();
        let mut total = 0;
        for campaign_id in campaigns {
            total += self.sweep_campaign(&campaign_id, now).await?;
        }
        Ok(total)
    }

    async fn sweep_campaign(&self, campaign_id: &str, now: Instant) -> Result<u64, GuardError> {
        let (due, suspect_since): (Vec<(String, Answer)>, Option<Instant>) = {
            let ledgers = self.ledgers.lock().unwrap();
            let Some(ledger) = ledgers.get(campaign_id) else {
                return Ok(0);
            };
            let due = ledger
                .answered
                .iter()
                .filter(|(_, a)| now.saturating_duration_since(a.at) >= SETTLE)
                .map(|(u, a)| (u.clone(), *a))
                .collect();
            (due, ledger.suspect_since)
        };
        let mut settled = Vec::new();
        let mut lost_users = Vec::new();
        for part in due.chunks(SWEEP_BATCH) {
            let users: Vec<String> = part.iter().map(|(u, _)| u.clone()).collect();
            let holders = self.store.holders(campaign_id, &users).await?;
            for (user, answer) in part {
                if holders.contains(user) {
                    settled.push(user.clone());
                    continue;
                }
                let check = suspect_since.is_some_and(|t| answer.at < t)
                    || now.saturating_duration_since(answer.at) >= STALE;
                if check
                    && self.admission.position(campaign_id, user).await? != Some(answer.position)
                {
                    settled.push(user.clone());
                    lost_users.push(user.clone());
                }
            }
        }
        {
            let mut ledgers = self.ledgers.lock().unwrap();
            if let Some(ledger) = ledgers.get_mut(campaign_id) {
                for user in &settled {
                    // Unless the user was answered again since (at another place).
                    if ledger.answered.get(user).is_some_and(|a| a.at <= now) {
                        ledger.answered.remove(user);
                    }
                }
                // Every answer from before the suspicion has now been checked once it settled.
                if suspect_since.is_some_and(|t| t + SETTLE <= now) {
                    ledger.suspect_since = None;
                }
                if ledger.answered.is_empty() && ledger.suspect_since.is_none() {
                    ledgers.remove(campaign_id);
                }
            }
        }
        lost(campaign_id, &lost_users);
        Ok(lost_users.len() as u64)
    }
}

/// Raises each floor to the matching one of `by` (floors only rise).
fn raise_each(floors: &mut [Floor], by: &[Floor]) {
    for (f, by) in floors.iter_mut().zip(by) {
        *f = f.max(*by);
    }
}

/// Counts and logs admissions the queue lost.
fn lost(campaign_id: &str, users: &[String]) {
    if users.is_empty() {
        return;
    }
    metrics::counter!("firstcome_admissions_lost_total", "campaign" => campaign_id.to_owned())
        .increment(users.len() as u64);
    tracing::error!(campaign = %campaign_id, lost = users.len(),
        first = %users.iter().take(5).cloned().collect::<Vec<_>>().join(", "),
        "the admission queue lost requests this host had answered 202: Redis restarted or \
         failed over without their writes (run it with appendonly yes, or \
         admission.redis_wait_replicas on a cluster), or the database refused them past \
         capacity (see the issuer's warnings); their users read status none and may ask again");
}
