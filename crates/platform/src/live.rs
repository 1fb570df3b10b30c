//! Live views of campaigns, for server-sent events.
//!
//! [`Changes`] (in the store: written where the changes are committed) is a per-campaign
//! change counter: admissions, committed chunks and statistics published by a stats plugin
//! bump it. [`Feeds`] turns it into one snapshot stream per
//! campaign: a single task per watched campaign recomputes the snapshot at most once per
//! [`COALESCE`] window after a change (and every [`FALLBACK`], for changes made by other
//! hosts) and puts it in a `watch` channel. Subscribers only read that channel: a thousand idle
//! subscribers cost a thousand channel receivers, a burst of issuances costs one snapshot per
//! window, and a slow subscriber skips to the latest snapshot instead of buffering.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::Serialize;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::platform::Platform;
use firstcome_core::campaign::Campaign;

/// At most one snapshot per campaign per window.
pub const COALESCE: Duration = Duration::from_millis(250);
/// How often a watched campaign is looked at without a local change (other hosts' work).
pub const FALLBACK: Duration = Duration::from_secs(1);

pub use firstcome_store::Changes;

/// What the statistics stream sends.
#[derive(Clone, Debug, Serialize, PartialEq, Eq, utoipa::ToSchema)]
pub struct LiveStats {
    pub campaign_id: String,
    pub capacity: i64,
    /// Coupons issued (the database's count).
    pub issued: i64,
    /// [`Counts::remaining`](firstcome_core::campaign::Counts::remaining).
    pub remaining: i64,
    /// Requests admitted so far, and those still waiting in the queue.
    pub admitted: i64,
    pub queued: i64,
    /// Estimated revenue and breakdowns, as the campaign's stats plugin counted them (they
    /// follow the event path, so they may trail `issued` briefly; zero without a stats plugin).
    pub revenue: i64,
    pub by_gender: BTreeMap<String, i64>,
    pub by_age_group: BTreeMap<String, i64>,
    pub at_ms: i64,
}

impl LiveStats {
    pub async fn read(platform: &Platform, c: &Campaign) -> anyhow::Result<Self> {
        let counts = platform.counts(c).await?;
        let stats = platform.plugins.stats(c).await?;
        Ok(Self {
            campaign_id: c.id().to_owned(),
            capacity: c.capacity(),
            issued: counts.issued,
            remaining: counts.remaining(),
            admitted: counts.admitted,
            queued: counts.queued,
            revenue: stats.revenue,
            by_gender: stats.by_gender,
            by_age_group: stats.by_age_group,
            at_ms: firstcome_core::clock::now_ms(),
        })
    }

    /// The same figures (for deciding whether to send).
    fn same_as(&self, other: &Self) -> bool {
        Self {
            at_ms: other.at_ms,
            ..self.clone()
        } == *other
    }
}

/// A snapshot and its JSON, serialised once for every subscriber.
#[derive(Debug)]
pub struct Frame {
    pub stats: LiveStats,
    pub json: String,
}

impl Frame {
    fn new(stats: LiveStats) -> Arc<Self> {
        let json = serde_json::to_string(&stats).unwrap_or_default();
        Arc::new(Self { stats, json })
    }
}

/// The snapshot streams of watched campaigns.
#[derive(Debug, Default)]
pub struct Feeds {
    feeds: Mutex<HashMap<String, watch::Sender<Arc<Frame>>>>,
}

impl Feeds {
    /// A receiver of the campaign's snapshots, starting with the current one.
    pub async fn subscribe(
        platform: &Arc<Platform>,
        campaign: Arc<Campaign>,
    ) -> anyhow::Result<watch::Receiver<Arc<Frame>>> {
        if let Some(tx) = platform.feeds.feeds.lock().unwrap().get(campaign.id()) {
            return Ok(tx.subscribe());
        }
        let first = Frame::new(LiveStats::read(platform, &campaign).await?);
        let mut feeds = platform.feeds.feeds.lock().unwrap();
        if let Some(tx) = feeds.get(campaign.id()) {
            return Ok(tx.subscribe());
        }
        let (tx, rx) = watch::channel(first);
        feeds.insert(campaign.id().to_owned(), tx.clone());
        let changes = platform.changes.subscribe(campaign.id());
        let stop = platform.shutdown_token();
        tokio::spawn(feed(platform.clone(), campaign, tx, changes, stop));
        Ok(rx)
    }
}

/// Keeps one campaign's snapshot current while anyone watches it.
async fn feed(
    platform: Arc<Platform>,
    campaign: Arc<Campaign>,
    tx: watch::Sender<Arc<Frame>>,
    mut changes: watch::Receiver<u64>,
    stop: CancellationToken,
) {
    loop {
        tokio::select! {
            _ = changes.changed() => {}
            () = tokio::time::sleep(FALLBACK) => {}
            () = stop.cancelled() => break,
        }
        {
            let mut feeds = platform.feeds.feeds.lock().unwrap();
            if tx.receiver_count() == 0 {
                feeds.remove(campaign.id());
                return;
            }
        }
        // Let a burst settle into one snapshot.
        tokio::time::sleep(COALESCE).await;
        changes.mark_unchanged();
        let campaign = platform.campaign(campaign.id()).unwrap_or(campaign.clone());
        match LiveStats::read(&platform, &campaign).await {
            Ok(now) => {
                tx.send_if_modified(|last| {
                    let changed = !now.same_as(&last.stats);
                    if changed {
                        *last = Frame::new(now);
                    }
                    changed
                });
            }
            Err(e) => {
                tracing::warn!(campaign = %campaign.id(), error = %e, "cannot read live statistics")
            }
        }
    }
    platform.feeds.feeds.lock().unwrap().remove(campaign.id());
}
