//! The chunk issuer: one task per campaign per host that drains the campaign's queue in FIFO
//! order, a chunk per database transaction: whatever waits, up to the campaign's `chunk_size`
//! (default [`DEFAULT_CHUNK_SIZE`](firstcome_core::campaign::DEFAULT_CHUNK_SIZE)), so chunks grow
//! with the backlog. The next chunk is claimed while the previous one commits; commits stay
//! one at a time, in queue order. An item is acknowledged only after its
//! chunk committed; a failed chunk is retried with the same items, and a chunk that committed
//! but was never acknowledged (the host died) is reclaimed by another host and found to be
//! already issued. Several hosts may drain one campaign: the campaign row lock serialises
//! their commits.
//!
//! Requests admitted by this host wake its issuer at once; requests admitted elsewhere are
//! picked up within `issuer.poll_ms` while the campaign is busy, and within [`IDLE_POLL_MAX`]
//! once its queue was found empty (the wait doubles from `poll_ms` with each empty look).
//! (Every host admitting a request wakes its own issuer, so this bounds only how soon another
//! host takes over the queue of one that died.)

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::{Notify, watch};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::Instrument;

use crate::config::IssuerConfig;
use crate::outbox::Publisher;
use crate::queue_guard::QueueGuard;
use firstcome_admission::{Admission, AdmissionError, QueueItem};
use firstcome_core::campaign::Campaign;
use firstcome_store::Store;

/// Longest wait between two looks at an idle campaign's queue.
pub const IDLE_POLL_MAX: Duration = Duration::from_secs(2);

/// What every issuer task shares.
#[derive(Clone, Debug)]
pub struct IssuerContext {
    pub store: Store,
    pub admission: Arc<dyn Admission>,
    pub publisher: Publisher,
    pub config: IssuerConfig,
    pub topic: String,
    /// This host's name in the queue's consumer group and in `coupons.issued_by`.
    pub host_id: String,
    /// Told about every committed chunk (live views).
    pub changes: Arc<firstcome_store::Changes>,
    /// Raised by every committed chunk; rebuilds a queue that lost a campaign.
    pub guard: Arc<QueueGuard>,
}

#[derive(Debug)]
struct Running {
    campaign: watch::Sender<Arc<Campaign>>,
    wake: Arc<Notify>,
    stop: CancellationToken,
}

/// The issuer tasks of this host, one per active campaign.
#[derive(Debug)]
pub struct Issuers {
    ctx: IssuerContext,
    running: Mutex<HashMap<String, Running>>,
    shutdown: CancellationToken,
    tracker: TaskTracker,
}

impl Issuers {
    pub fn new(ctx: IssuerContext, shutdown: CancellationToken, tracker: TaskTracker) -> Self {
        Self {
            ctx,
            running: Mutex::new(HashMap::new()),
            shutdown,
            tracker,
        }
    }

    /// Starts the campaign's issuer, or hands it the campaign's new settings.
    pub fn run(&self, campaign: Arc<Campaign>) {
        let mut running = self.running.lock().unwrap();
        if let Some(r) = running.get(campaign.id()) {
            r.campaign.send_replace(campaign);
            return;
        }
        let (tx, rx) = watch::channel(campaign.clone());
        let wake = Arc::new(Notify::new());
        let stop = self.shutdown.child_token();
        self.tracker
            .spawn(drain(self.ctx.clone(), rx, wake.clone(), stop.clone()));
        running.insert(
            campaign.id().to_owned(),
            Running {
                campaign: tx,
                wake,
                stop,
            },
        );
    }

    /// Stops the campaign's issuer; items it has not committed stay in the queue.
    pub fn stop(&self, campaign_id: &str) {
        if let Some(r) = self.running.lock().unwrap().remove(campaign_id) {
            r.stop.cancel();
        }
    }

    /// The admission guard the issuers raise with every chunk (the platform admits with it).
    pub fn guard(&self) -> Arc<QueueGuard> {
        self.ctx.guard.clone()
    }

    /// Tells the campaign's issuer that a request was admitted.
    pub fn wake(&self, campaign_id: &str) {
        if let Some(r) = self.running.lock().unwrap().get(campaign_id) {
            r.wake.notify_one();
        }
    }
}

async fn drain(
    ctx: IssuerContext,
    campaign: watch::Receiver<Arc<Campaign>>,
    wake: Arc<Notify>,
    stop: CancellationToken,
) {
    let id = campaign.borrow().id().to_owned();
    let poll = Duration::from_millis(ctx.config.poll_ms);
    let reclaim_idle = Duration::from_millis(ctx.config.reclaim_idle_ms);
    // Looking for abandoned items costs a scan of the pending list: do it a few times per
    // reclaim period, not on every poll.
    let reclaim_every = (reclaim_idle / 4).max(Duration::from_millis(100));
    let mut last_reclaim = Instant::now() - reclaim_every;
    let mut reclaim = move || {
        let due = last_reclaim.elapsed() >= reclaim_every;
        if due {
            last_reclaim = Instant::now();
        }
        due.then_some(reclaim_idle)
    };
    // A chunk claimed while the previous one committed: the queue's round trip overlaps the
    // database's. Commits stay one at a time and in queue order.
    let mut next: Vec<QueueItem> = Vec::new();
    let mut idle = poll;
    tracing::debug!(campaign = %id, "issuer started");
    while !stop.is_cancelled() {
        // The operator's maximum per transaction: a chunk is whatever waits, up to it, so it
        // grows with the backlog and stays small (quick) when requests trickle in.
        let chunk = campaign.borrow().chunk_size() as usize;
        let items = if next.is_empty() {
            match ctx
                .admission
                .claim(&id, &ctx.host_id, chunk, reclaim())
                .await
            {
                Ok(items) => items,
                Err(AdmissionError::Lost(_)) => {
                    // Redis lost its data: rebuild now rather than at the next admission, so
                    // that the loss is audited and counted even when nobody asks any more.
                    ctx.guard.suspect();
                    let current = campaign.borrow().clone();
                    match ctx.guard.resync(&current, false).await {
                        Ok(true) => {}
                        // Nothing to rebuild: lost again at once, or it never was; no busy loop.
                        Ok(false) => {
                            pause(&stop, Duration::from_millis(ctx.config.retry_backoff_ms)).await;
                        }
                        Err(e) => {
                            tracing::warn!(campaign = %id, error = %e,
                                "cannot rebuild the admission queue");
                            pause(&stop, Duration::from_millis(ctx.config.retry_backoff_ms)).await;
                        }
                    }
                    continue;
                }
                Err(e) => {
                    ctx.guard.suspect();
                    tracing::warn!(campaign = %id, error = %e, "cannot read the admission queue");
                    pause(&stop, Duration::from_millis(ctx.config.retry_backoff_ms)).await;
                    continue;
                }
            }
        } else {
            std::mem::take(&mut next)
        };
        if items.is_empty() {
            // Idle: each empty look doubles the wait, up to IDLE_POLL_MAX, so that thousands
            // of finished campaigns cost Redis next to nothing; an admission on this host
            // wakes the issuer at once and the wait starts again from `poll_ms`.
            tokio::select! {
                () = wake.notified() => idle = poll,
                () = tokio::time::sleep(idle) => idle = (idle * 2).min(IDLE_POLL_MAX.max(poll)),
                () = stop.cancelled() => {}
            }
            continue;
        }
        idle = poll;
        let prefetch = ctx.admission.claim(&id, &ctx.host_id, chunk, reclaim());
        let buckets = ctx.admission.buckets(&campaign.borrow());
        let (committed, prefetched) =
            tokio::join!(issue(&ctx, &id, buckets, &items, &stop), prefetch);
        // A failed look-ahead is left to the next regular claim, which handles the error.
        next = prefetched.unwrap_or_default();
        if !committed {
            // Stopped: what was claimed ahead stays pending and is reclaimed like the rest.
            break;
        }
    }
    tracing::debug!(campaign = %id, "issuer stopped");
}

/// Commits one chunk, retrying until it commits or the issuer stops (then the items stay
/// pending in the queue for whoever runs next). Returns false when stopped.
async fn issue(
    ctx: &IssuerContext,
    id: &str,
    buckets: u32,
    items: &[QueueItem],
    stop: &CancellationToken,
) -> bool {
    let span = tracing::debug_span!(target: firstcome_core::JOURNEY, "chunk", campaign = %id,
        size = items.len());
    issue_in(ctx, id, buckets, items, stop)
        .instrument(span)
        .await
}

/// `buckets`: the campaign's bucket count in the queue (see [`Admission::buckets`]).
async fn issue_in(
    ctx: &IssuerContext,
    id: &str,
    buckets: u32,
    items: &[QueueItem],
    stop: &CancellationToken,
) -> bool {
    let backoff = Duration::from_millis(ctx.config.retry_backoff_ms);
    let started = Instant::now();
    let outcome = loop {
        match ctx
            .store
            .issue_chunk(id, items, &ctx.host_id, &ctx.topic)
            .await
        {
            Ok(outcome) => break outcome,
            Err(e) => {
                metrics::counter!("firstcome_chunk_failures_total", "campaign" => id.to_owned())
                    .increment(1);
                tracing::warn!(campaign = %id, items = items.len(), error = %e,
                    "chunk failed; retrying");
                if !pause(stop, backoff).await {
                    return false;
                }
            }
        }
    };
    // The users now holding a coupon through this chunk, for the queue and the ledger.
    let holders: Vec<(String, i64)> = items
        .iter()
        .filter(|i| !outcome.refused.contains(&i.user_id))
        .map(|i| (i.user_id.clone(), i.position))
        .collect();
    if !outcome.refused.is_empty() {
        // Answered 202 by some host, refused by the database: lost with the queue's data.
        // The host that answered counts them when its ledger finds them neither issued nor
        // queued.
        tracing::warn!(campaign = %id, refused = outcome.refused.len(),
            "the database refused admitted requests: the campaign is full (the admission \
             queue had lost its data)");
    }
    metrics::histogram!("firstcome_chunk_size", "campaign" => id.to_owned())
        .record(items.len() as f64);
    metrics::histogram!("firstcome_chunk_commit_seconds", "campaign" => id.to_owned())
        .record(started.elapsed().as_secs_f64());
    if tracing::enabled!(target: firstcome_core::JOURNEY, tracing::Level::DEBUG) {
        journey_issued(&outcome.events);
    }
    ctx.publisher.publish(outcome.events);
    ctx.changes.bump(id);
    // If these fail the items are reclaimed later and found already issued: no duplicate.
    if let Err(e) = ctx.admission.ack(id, items).await {
        tracing::warn!(campaign = %id, error = %e, "cannot acknowledge a committed chunk");
    }
    if let Err(e) = ctx.admission.forget(id, &outcome.refused).await {
        tracing::warn!(campaign = %id, error = %e, "cannot clear refused users");
    }
    // Only now is the floor raised: a queue that lost its data while this chunk was in
    // flight has been told about these holders, so it is not found behind for them.
    match ctx.admission.settle(id, &holders).await {
        Ok(0) => {}
        Ok(added) => tracing::warn!(campaign = %id, added,
            "a chunk claimed before the admission queue lost its data committed after the \
             rebuild: its holders were added to the queue"),
        Err(e) => tracing::warn!(campaign = %id, error = %e, "cannot settle a committed chunk"),
    }
    ctx.guard.raise(id, buckets, outcome.mark, &holders);
    ctx.guard
        .issued(id, holders.iter().map(|(user, _)| user.as_str()));
    true
}

/// Sleeps unless stopped first; returns false when stopped.
async fn pause(stop: &CancellationToken, d: Duration) -> bool {
    tokio::select! {
        () = tokio::time::sleep(d) => true,
        () = stop.cancelled() => false,
    }
}

/// One `issued` line per new coupon, linking the admission's `request_id` to its event's
/// `event_id` (only when the journey target is on: it reads each event's payload back).
fn journey_issued(events: &[firstcome_store::OutboxEvent]) {
    for e in events {
        let payload: serde_json::Value = serde_json::from_str(&e.payload).unwrap_or_default();
        let field = |name: &str| {
            payload["payload"][name]
                .as_str()
                .unwrap_or_default()
                .to_owned()
        };
        tracing::debug!(target: firstcome_core::JOURNEY, request_id = %field("request_id"),
            event_id = %e.event_id, position = payload["payload"]["position"].as_i64(),
            coupon_id = %field("coupon_id"), "issued");
    }
}
