//! Per-campaign change counters: whatever commits a change that the live views show (a
//! chunk, an admission, a plugin's statistics) bumps its campaign's counter, and the live
//! views wait on it instead of polling the database.

use std::collections::HashMap;
use std::sync::Mutex;

use tokio::sync::watch;

/// Per-campaign change counters.
#[derive(Debug, Default)]
pub struct Changes {
    counters: Mutex<HashMap<String, watch::Sender<u64>>>,
}

impl Changes {
    /// Something about the campaign changed.
    pub fn bump(&self, campaign_id: &str) {
        if let Some(tx) = self.counters.lock().unwrap().get(campaign_id) {
            tx.send_modify(|n| *n = n.wrapping_add(1));
        }
    }

    /// A receiver that sees every later bump of the campaign.
    pub fn subscribe(&self, campaign_id: &str) -> watch::Receiver<u64> {
        self.counters
            .lock()
            .unwrap()
            .entry(campaign_id.to_owned())
            .or_insert_with(|| watch::channel(0).0)
            .subscribe()
    }
}
