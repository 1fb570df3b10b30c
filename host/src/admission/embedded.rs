//! The in-process admission queue: the Redis script's semantics behind one mutex.
//!
//! It lives in memory, so a restart empties it; the next `sync_campaign` rebuilds each
//! campaign from the database exactly as after Redis lost its data. Requests admitted but not
//! yet issued when the process stops are dropped, and their users may ask again.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use async_trait::async_trait;

use super::{Admission, Admit, QueueCounts, QueueItem, Result};
use crate::campaign::Campaign;

#[derive(Debug, Default)]
struct CampaignQueue {
    capacity: i64,
    opens_at: Option<i64>,
    closes_at: Option<i64>,
    admitted: i64,
    seq: i64,
    users: HashMap<String, i64>,
    waiting: VecDeque<QueueItem>,
    /// Claimed, not yet acknowledged, by position.
    pending: BTreeMap<i64, Pending>,
}

#[derive(Debug)]
struct Pending {
    item: QueueItem,
    claimed_at: Instant,
}

/// Admission in process memory.
#[derive(Debug, Default)]
pub struct EmbeddedAdmission {
    campaigns: Mutex<HashMap<String, CampaignQueue>>,
}

impl EmbeddedAdmission {
    pub fn new() -> Self {
        Self::default()
    }

    /// Forgets everything, as a restart would (for tests of the rebuild path).
    pub fn clear(&self) {
        self.campaigns.lock().unwrap().clear();
    }
}

#[async_trait]
impl Admission for EmbeddedAdmission {
    fn kind(&self) -> &'static str {
        "embedded"
    }

    async fn sync_campaign(
        &self,
        campaign: &Campaign,
        issued: &[(String, i64)],
        force: bool,
    ) -> Result<bool> {
        let mut campaigns = self.campaigns.lock().unwrap();
        let rebuild = force || !campaigns.contains_key(&campaign.id);
        if rebuild {
            let users: HashMap<String, i64> = issued.iter().cloned().collect();
            let queue = CampaignQueue {
                admitted: users.len() as i64,
                seq: issued.iter().map(|(_, p)| *p).max().unwrap_or(0),
                users,
                ..CampaignQueue::default()
            };
            campaigns.insert(campaign.id.clone(), queue);
        }
        let q = campaigns.get_mut(&campaign.id).expect("inserted above");
        q.capacity = campaign.capacity;
        q.opens_at = campaign.opens_at;
        q.closes_at = campaign.closes_at;
        Ok(rebuild)
    }

    async fn admit(
        &self,
        campaign_id: &str,
        user_id: &str,
        request_id: &str,
        now_ms: i64,
    ) -> Result<Admit> {
        let mut campaigns = self.campaigns.lock().unwrap();
        let Some(q) = campaigns.get_mut(campaign_id) else {
            return Ok(Admit::Unknown);
        };
        if q.opens_at.is_some_and(|t| now_ms < t) {
            return Ok(Admit::NotOpen);
        }
        if q.closes_at.is_some_and(|t| now_ms >= t) {
            return Ok(Admit::Closed);
        }
        if let Some(&position) = q.users.get(user_id) {
            return Ok(Admit::Duplicate { position });
        }
        if q.admitted >= q.capacity {
            return Ok(Admit::SoldOut);
        }
        q.admitted += 1;
        q.seq += 1;
        let position = q.seq;
        q.users.insert(user_id.to_owned(), position);
        q.waiting.push_back(QueueItem {
            id: position.to_string(),
            user_id: user_id.to_owned(),
            position,
            request_id: request_id.to_owned(),
            admitted_at: now_ms,
        });
        Ok(Admit::Admitted { position })
    }

    async fn position(&self, campaign_id: &str, user_id: &str) -> Result<Option<i64>> {
        let campaigns = self.campaigns.lock().unwrap();
        Ok(campaigns
            .get(campaign_id)
            .and_then(|q| q.users.get(user_id).copied()))
    }

    async fn counts(&self, campaign_id: &str) -> Result<QueueCounts> {
        let campaigns = self.campaigns.lock().unwrap();
        Ok(campaigns
            .get(campaign_id)
            .map_or_else(QueueCounts::default, |q| QueueCounts {
                admitted: q.admitted,
                queued: (q.waiting.len() + q.pending.len()) as i64,
            }))
    }

    async fn claim(
        &self,
        campaign_id: &str,
        _consumer: &str,
        max: usize,
        reclaim_idle: Option<Duration>,
    ) -> Result<Vec<QueueItem>> {
        let mut campaigns = self.campaigns.lock().unwrap();
        let Some(q) = campaigns.get_mut(campaign_id) else {
            return Ok(Vec::new());
        };
        let now = Instant::now();
        let mut items = Vec::new();
        if let Some(idle) = reclaim_idle {
            for p in q.pending.values_mut() {
                if items.len() == max {
                    break;
                }
                if now.duration_since(p.claimed_at) >= idle {
                    p.claimed_at = now;
                    items.push(p.item.clone());
                }
            }
        }
        if items.is_empty() {
            while items.len() < max {
                let Some(item) = q.waiting.pop_front() else {
                    break;
                };
                q.pending.insert(
                    item.position,
                    Pending {
                        item: item.clone(),
                        claimed_at: now,
                    },
                );
                items.push(item);
            }
        }
        Ok(items)
    }

    async fn ack(&self, campaign_id: &str, items: &[QueueItem]) -> Result<()> {
        let mut campaigns = self.campaigns.lock().unwrap();
        if let Some(q) = campaigns.get_mut(campaign_id) {
            for item in items {
                q.pending.remove(&item.position);
            }
        }
        Ok(())
    }

    async fn forget(&self, campaign_id: &str, user_ids: &[String]) -> Result<()> {
        let mut campaigns = self.campaigns.lock().unwrap();
        if let Some(q) = campaigns.get_mut(campaign_id) {
            for user in user_ids {
                q.users.remove(user);
            }
        }
        Ok(())
    }

    async fn ping(&self) -> Result<()> {
        Ok(())
    }
}
