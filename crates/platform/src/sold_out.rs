//! The per-host sold-out flag: once the admission queue answered `sold_out` for a campaign,
//! this host answers that campaign's requests itself for
//! [`AdmissionConfig::sold_out_recheck_ms`](firstcome_admission::AdmissionConfig), without a
//! round trip to the queue. After a sell-out most of a storm's requests come after it (in the
//! headline benchmark ~900k of 1M), so this takes most of the load off Redis.
//!
//! Answers stay the queue's: a user the queue admitted still reads `409` with their position,
//! everyone else `410 sold_out`. When the flag is first raised the host reads the campaign's
//! admitted users ([`Admission::admitted_users`]); while the campaign stays sold out the set
//! does not grow. Until that read is done, requests go to the queue as before. A queue in this
//! process (the embedded one) costs no round trip and gets no flag.
//!
//! The flag is a cache of the queue's answer:
//! - its `sold_out` holds for the recheck time, after which the next request asks the queue;
//! - it is cleared at once on this host when the campaign is applied (a raised capacity), when
//!   this host rebuilds the campaign's queue state, and when the queue admits someone to it
//!   (stock came back); other hosts apply the same file through their watchers and see another
//!   host's rebuild at their next recheck;
//! - a read of the admitted users that was under way when the flag was cleared is discarded;
//! - the admitted users are read again every [`RELOAD_EVERY`] while the flag stays up, so a user
//!   the queue dropped (refused by the database after Redis lost data; their status reads
//!   `none`) may read `409` from a host for that long;
//! - a flag expired for longer than [`RELOAD_EVERY`] is dropped with its users.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use firstcome_admission::{Admission, Admit};

/// How often a raised flag reads the campaign's admitted users again.
pub const RELOAD_EVERY: Duration = Duration::from_secs(10);

/// Campaigns this host saw sold out.
#[derive(Debug, Default)]
pub struct SoldOutFlags {
    /// How long a `sold_out` answer holds, in ms (0: no flag).
    recheck_ms: AtomicU64,
    flags: RwLock<HashMap<String, Flag>>,
    /// Campaigns whose admitted users are being read.
    loading: Mutex<HashSet<String>>,
    /// Bumped by every [`SoldOutFlags::clear`]: a read that began before it is discarded.
    epoch: AtomicU64,
}

#[derive(Debug)]
struct Flag {
    /// The queue's last `sold_out` answer holds until then.
    until: Instant,
    /// The users the queue admitted, with their positions.
    admitted: Arc<HashMap<String, i64>>,
    /// When they were read.
    read_at: Instant,
}

impl SoldOutFlags {
    /// Flags that hold for `recheck` after the queue's answer; zero turns them off.
    pub fn new(recheck: Duration) -> Self {
        let flags = Self::default();
        flags.set_recheck(recheck);
        flags
    }

    /// Sets how long a `sold_out` answer holds; zero turns the flags off.
    pub fn set_recheck(&self, recheck: Duration) {
        self.recheck_ms
            .store(recheck.as_millis() as u64, Ordering::Relaxed);
    }

    fn recheck(&self) -> Duration {
        Duration::from_millis(self.recheck_ms.load(Ordering::Relaxed))
    }

    /// The queue's answer for `user_id` at `now`, when the campaign is flagged: `Duplicate` for
    /// a user it admitted, else `SoldOut`. `None`: ask the queue.
    pub fn answer(&self, campaign_id: &str, user_id: &str, now: Instant) -> Option<Admit> {
        let flags = self.flags.read().unwrap();
        let flag = flags.get(campaign_id).filter(|f| now < f.until)?;
        Some(match flag.admitted.get(user_id) {
            Some(&position) => Admit::Duplicate { position },
            None => Admit::SoldOut,
        })
    }

    /// Notes the queue's `sold_out` answer, given at `now`: extends the flag, or, the first
    /// time, reads the campaign's admitted users in the background and then raises it (and
    /// reads them again when they are older than [`RELOAD_EVERY`]).
    pub fn sold_out(self: &Arc<Self>, queue: &Arc<dyn Admission>, campaign_id: &str, now: Instant) {
        let recheck = self.recheck();
        if recheck.is_zero() {
            return;
        }
        {
            let mut flags = self.flags.write().unwrap();
            flags.retain(|_, f| now < f.until + RELOAD_EVERY);
            if let Some(flag) = flags.get_mut(campaign_id) {
                flag.until = now + recheck;
                if now.saturating_duration_since(flag.read_at) < RELOAD_EVERY {
                    return;
                }
            }
        }
        if !self.loading.lock().unwrap().insert(campaign_id.to_owned()) {
            return;
        }
        let (flags, queue, id) = (self.clone(), queue.clone(), campaign_id.to_owned());
        let epoch = self.epoch.load(Ordering::SeqCst);
        tokio::spawn(async move {
            match queue.admitted_users(&id).await {
                Ok(Some(admitted)) if flags.epoch.load(Ordering::SeqCst) == epoch => {
                    flags.raise(&id, admitted, Instant::now());
                }
                Ok(_) => {}
                Err(e) => tracing::debug!(campaign = %id, error = %e,
                    "cannot read the admitted users for the sold-out flag; the queue answers"),
            }
            flags.loading.lock().unwrap().remove(&id);
        });
    }

    /// Raises the flag with the admitted users read after the sell-out.
    pub fn raise(&self, campaign_id: &str, admitted: HashMap<String, i64>, now: Instant) {
        self.flags.write().unwrap().insert(
            campaign_id.to_owned(),
            Flag {
                until: now + self.recheck(),
                admitted: Arc::new(admitted),
                read_at: now,
            },
        );
    }

    /// The queue admitted someone to the campaign: stock came back, so a flag (or a read under
    /// way) for it goes. Cheap when there is none, as on every admission before a sell-out.
    pub fn admitted(&self, campaign_id: &str) {
        let flagged = self.flags.read().unwrap().contains_key(campaign_id)
            || self.loading.lock().unwrap().contains(campaign_id);
        if flagged {
            self.clear(campaign_id);
        }
    }

    /// Forgets the flag (and discards reads under way): the campaign was applied again (its
    /// capacity may have grown), rebuilt, removed, or its queue admitted someone.
    pub fn clear(&self, campaign_id: &str) {
        self.epoch.fetch_add(1, Ordering::SeqCst);
        self.flags.write().unwrap().remove(campaign_id);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn admitted() -> HashMap<String, i64> {
        HashMap::from([("u1".to_owned(), 1), ("u2".to_owned(), 2)])
    }

    #[test]
    fn answers_as_the_queue_for_the_recheck_time() {
        let flags = SoldOutFlags::new(Duration::from_millis(1_000));
        let t0 = Instant::now();
        assert_eq!(flags.answer("c", "u1", t0), None);
        flags.raise("c", admitted(), t0);
        assert_eq!(
            flags.answer("c", "u2", t0),
            Some(Admit::Duplicate { position: 2 })
        );
        let late = t0 + Duration::from_millis(999);
        assert_eq!(flags.answer("c", "u9", late), Some(Admit::SoldOut));
        assert_eq!(flags.answer("c", "u9", t0 + Duration::from_secs(1)), None);
        assert_eq!(flags.answer("other", "u9", t0), None);
        flags.clear("c");
        assert_eq!(flags.answer("c", "u9", t0), None);
    }

    #[test]
    fn an_admission_drops_the_flag() {
        let flags = SoldOutFlags::new(Duration::from_secs(60));
        let t0 = Instant::now();
        flags.raise("c", admitted(), t0);
        flags.raise("d", admitted(), t0);
        flags.admitted("c");
        assert_eq!(flags.answer("c", "u9", t0), None, "stock came back");
        assert_eq!(flags.answer("d", "u9", t0), Some(Admit::SoldOut));
    }
}
