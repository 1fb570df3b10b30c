//! The per-host sold-out flag: once the admission queue answered `sold_out` for a campaign,
//! this host answers that campaign's requests itself for
//! [`AdmissionConfig::sold_out_recheck_ms`](firstcome_admission::AdmissionConfig), without a
//! round trip to the queue. After a sell-out most of a storm's requests come after it (in the
//! headline benchmark ~900k of 1M), so this takes most of the load off Redis.
//!
//! Answers stay the queue's: a user the queue admitted still reads `409` with their position,
//! everyone else `410 sold_out`. When the flag is first raised the host reads the campaign's
//! admitted users once ([`Admission::admitted_users`]): the set is complete, since nobody is
//! admitted after a sell-out. Until that read is done, requests go to the queue as before. A
//! queue in this process (the embedded one) costs no round trip and gets no flag.
//!
//! The flag is a cache and may only be stale for the recheck time: stock can come back (a
//! raised capacity, or a queue rebuilt after Redis lost requests never issued). Applying a
//! campaign clears its flag at once on this host; other hosts apply the same file through their
//! watchers, and a rebuild by any host is seen at the next recheck.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use firstcome_admission::{Admission, Admit};

/// Campaigns this host saw sold out.
#[derive(Debug, Default)]
pub struct SoldOutFlags {
    recheck: Duration,
    flags: RwLock<HashMap<String, Flag>>,
    /// Campaigns whose admitted users are being read.
    loading: Mutex<HashSet<String>>,
}

#[derive(Debug)]
struct Flag {
    /// The queue's last `sold_out` answer holds until then.
    until: Instant,
    /// The users the queue admitted, with their positions.
    admitted: Arc<HashMap<String, i64>>,
}

impl SoldOutFlags {
    /// Flags that hold for `recheck` after the queue's answer; zero turns them off.
    pub fn new(recheck: Duration) -> Self {
        Self {
            recheck,
            ..Self::default()
        }
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
    /// time, reads the campaign's admitted users in the background and then raises it.
    pub fn sold_out(self: &Arc<Self>, queue: &Arc<dyn Admission>, campaign_id: &str, now: Instant) {
        if self.recheck.is_zero() {
            return;
        }
        if let Some(flag) = self.flags.write().unwrap().get_mut(campaign_id) {
            flag.until = now + self.recheck;
            return;
        }
        if !self.loading.lock().unwrap().insert(campaign_id.to_owned()) {
            return;
        }
        let (flags, queue, id) = (self.clone(), queue.clone(), campaign_id.to_owned());
        tokio::spawn(async move {
            match queue.admitted_users(&id).await {
                Ok(Some(admitted)) => flags.raise(&id, admitted, Instant::now()),
                Ok(None) => {}
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
                until: now + self.recheck,
                admitted: Arc::new(admitted),
            },
        );
    }

    /// Forgets the flag: the campaign was applied again (its capacity may have grown) or
    /// removed.
    pub fn clear(&self, campaign_id: &str) {
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
}
