//! Publishing the outbox. After a chunk commits, its events go to the [`Publisher`], which
//! publishes them and marks them published only when the bus acknowledged them. The relay
//! claims rows still unpublished after `outbox.republish_after_ms` (a failed or lost publish,
//! a crash after commit) and publishes them again, and purges published rows (and the
//! embedded event log's entries) after the retention period. Re-sent events keep their `event_id`; consumers drop duplicates.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::OutboxConfig;
use firstcome_bus::{EventBus, Message};
use firstcome_core::clock::now_ms;
use firstcome_store::{OutboxEvent, Store};

/// Queue of committed chunks waiting to be published. Bounded: when it is full the events
/// are left to the relay, never waited for on the issuing path.
const PUBLISH_QUEUE: usize = 1024;

/// Hands committed events to the publishing task.
#[derive(Clone, Debug)]
pub struct Publisher {
    tx: mpsc::Sender<Vec<OutboxEvent>>,
}

impl Publisher {
    pub fn publish(&self, events: Vec<OutboxEvent>) {
        if events.is_empty() {
            return;
        }
        if self.tx.try_send(events).is_err() {
            tracing::debug!("publish queue full; the relay will send these events");
        }
    }
}

fn message(e: &OutboxEvent) -> Message {
    let mut headers = BTreeMap::new();
    headers.insert("event_id".to_owned(), e.event_id.clone());
    headers.insert(
        "event_type".to_owned(),
        firstcome_core::event::COUPON_ISSUED.to_owned(),
    );
    // The consumer groups' lane: each campaign's events are handled apart.
    if let Some(campaign) = firstcome_bus::lanes::campaign_in(&e.payload) {
        headers.insert(firstcome_bus::lanes::LANE_HEADER.to_owned(), campaign);
    }
    Message {
        event_id: e.event_id.clone(),
        key: e.key.clone(),
        payload: e.payload.clone(),
        headers,
    }
}

/// Publishes events grouped by topic; `Ok` only when the bus acknowledged every one.
async fn publish_all(
    bus: &dyn EventBus,
    events: &[OutboxEvent],
) -> Result<(), firstcome_bus::BusError> {
    let mut by_topic: BTreeMap<&str, Vec<Message>> = BTreeMap::new();
    for e in events {
        by_topic
            .entry(e.topic.as_str())
            .or_default()
            .push(message(e));
    }
    for (topic, messages) in by_topic {
        if let Err(e) = bus.publish(topic, &messages).await {
            metrics::counter!("firstcome_publish_failures_total").increment(1);
            return Err(e);
        }
        metrics::counter!("firstcome_events_published_total").increment(messages.len() as u64);
        // One line per event only when the journey is being followed: this runs per publish.
        if tracing::enabled!(target: firstcome_core::JOURNEY, tracing::Level::DEBUG) {
            for m in &messages {
                tracing::debug!(target: firstcome_core::JOURNEY, event_id = %m.event_id, topic,
                    "published");
            }
        }
    }
    Ok(())
}

/// Starts the task that publishes freshly committed events.
pub fn spawn_publisher(
    store: Store,
    bus: Arc<dyn EventBus>,
    shutdown: CancellationToken,
    tracker: &TaskTracker,
) -> Publisher {
    let (tx, mut rx) = mpsc::channel::<Vec<OutboxEvent>>(PUBLISH_QUEUE);
    tracker.spawn(async move {
        loop {
            let events = tokio::select! {
                got = rx.recv() => match got { Some(e) => e, None => break },
                () = shutdown.cancelled() => break,
            };
            // Take whatever else is waiting: one publish and one UPDATE for many chunks.
            let mut events = events;
            while let Ok(more) = rx.try_recv() {
                events.extend(more);
            }
            match publish_all(&*bus, &events).await {
                Ok(()) => {
                    let ids: Vec<&str> = events.iter().map(|e| e.event_id.as_str()).collect();
                    if let Err(e) = store.mark_published(&ids, now_ms()).await {
                        tracing::warn!(error = %e, "published events not marked; the relay will resend");
                    }
                }
                Err(e) => tracing::warn!(error = %e, events = events.len(),
                    "publish failed; the relay will retry"),
            }
        }
    });
    Publisher { tx }
}

/// Republishes stale unpublished rows and purges old published ones.
#[derive(Debug, Clone)]
pub struct Relay {
    pub store: Store,
    pub bus: Arc<dyn EventBus>,
    pub config: OutboxConfig,
}

impl Relay {
    /// One pass: claims a batch of stale rows, publishes, marks. Returns how many it published.
    pub async fn run_once(&self) -> anyhow::Result<usize> {
        let now = now_ms();
        let cutoff = now - self.config.republish_after_ms as i64;
        // A claim's lease outlives any publish attempt; on SQLite it is what keeps two relays
        // apart, elsewhere row locks do.
        let lease = 60_000;
        let batch = i64::from(self.config.relay_batch.max(1));
        let claim = self
            .store
            .claim_unpublished(cutoff, batch, now, lease)
            .await?;
        if claim.events.is_empty() {
            claim.abandon().await?;
            return Ok(0);
        }
        let n = claim.events.len();
        match publish_all(&*self.bus, &claim.events).await {
            Ok(()) => {
                claim.complete(now_ms()).await?;
                tracing::info!(events = n, "relay republished stale outbox rows");
                metrics::counter!("firstcome_relay_republished_total").increment(n as u64);
                Ok(n)
            }
            Err(e) => {
                claim.abandon().await?;
                Err(e.into())
            }
        }
    }

    pub async fn run(self, shutdown: CancellationToken) {
        let every = Duration::from_millis(self.config.relay_interval_ms);
        let mut last_purge = 0;
        while !shutdown.is_cancelled() {
            match self.run_once().await {
                // A full batch: there is more; go on at once.
                Ok(n) if n == self.config.relay_batch.max(1) as usize => continue,
                Ok(_) => {}
                Err(e) => tracing::warn!(error = %e, "relay pass failed"),
            }
            let now = now_ms();
            if now - last_purge > 60_000 {
                last_purge = now;
                let before = now - self.config.retention_ms as i64;
                match self.store.purge_published(before).await {
                    Ok(0) => {}
                    Ok(n) => tracing::info!(rows = n, "purged published outbox rows"),
                    Err(e) => tracing::warn!(error = %e, "outbox purge failed"),
                }
                // The embedded event log keeps messages as long, like a Kafka topic's
                // time-based retention (a no-op when the bus is Kafka).
                match self.store.purge_log(before).await {
                    Ok(0) => {}
                    Ok(n) => tracing::info!(rows = n, "purged event log entries"),
                    Err(e) => tracing::warn!(error = %e, "event log purge failed"),
                }
            }
            tokio::select! {
                () = tokio::time::sleep(every) => {}
                () = shutdown.cancelled() => {}
            }
        }
    }
}
