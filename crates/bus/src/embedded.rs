//! The embedded event bus: a durable log in the database (`event_log`, offsets gapless per
//! topic), consumer groups whose position is held under a lease in `consumer_offsets` (one
//! member of a group reads at a time; another takes over when the lease lapses), and dedupe by
//! event id in `processed_events`. It survives restarts and works across hosts that share a
//! MySQL or PostgreSQL database.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use super::delivery::{AfterFailure, Outcome, deliver_batch};
use super::{BusError, ConsumerSpec, Delivered, EventBus, Handler, Message, dlt_topic};
use firstcome_core::clock::now_ms;
use firstcome_store::Store;

/// How long a group member's claim on its group lasts without renewal.
const LEASE: Duration = Duration::from_secs(15);
/// How long after renewing its lease (by taking it, or by storing the group's position, which
/// renews it too) a member goes on from the position it stored without taking the lease again:
/// a member that keeps up then takes the lease about once a second instead of before each of
/// its batches (tens per second in a storm). Small against [`LEASE`], so that a batch started
/// without taking the lease still has 14 s of it, as good as the 15 s it had before.
const RENEW_AFTER: Duration = Duration::from_secs(1);
/// Records a group member reads and handles per step (one transaction for their effects when
/// the handler batches, and one for the group's position).
const BATCH: i64 = 500;

/// What a member knows of its group after storing its position: where it goes on from, and
/// when that renewed its lease.
#[derive(Clone, Copy, Debug)]
struct Held {
    next: i64,
    renewed: std::time::Instant,
}

/// The database-backed bus.
#[derive(Debug, Clone)]
pub struct LogBus {
    store: Store,
    /// Wakes this process's consumers on publish; other hosts poll.
    published: Arc<Notify>,
}

impl LogBus {
    pub fn new(store: Store) -> Self {
        Self {
            store,
            published: Arc::new(Notify::new()),
        }
    }
}

#[async_trait]
impl EventBus for LogBus {
    fn kind(&self) -> &'static str {
        "embedded"
    }

    async fn publish(&self, topic: &str, messages: &[Message]) -> Result<(), BusError> {
        if messages.is_empty() {
            return Ok(());
        }
        self.store.append_log(topic, messages, now_ms()).await?;
        self.published.notify_waiters();
        Ok(())
    }

    async fn run_consumer(
        &self,
        spec: ConsumerSpec,
        handler: Arc<dyn Handler>,
        shutdown: CancellationToken,
    ) -> Result<(), BusError> {
        let owner = Uuid::new_v4().to_string();
        let lease_ms = LEASE.as_millis() as i64;
        let dlt = dlt_topic(&spec.topic);
        let mut held = None;
        while !shutdown.is_cancelled() {
            // Registered before reading, so a publish between the read and the wait wakes us.
            let woken = self.published.notified();
            let step = self.consume_batch(
                &spec, &*handler, &owner, lease_ms, &dlt, &shutdown, &mut held,
            );
            let progressed = match step.await {
                Ok(n) => n > 0,
                Err(e) => {
                    tracing::warn!(group = %spec.group, error = %e, "consumer step failed");
                    false
                }
            };
            if !progressed {
                tokio::select! {
                    () = woken => {}
                    () = tokio::time::sleep(spec.poll_interval) => {}
                    () = shutdown.cancelled() => {}
                }
            }
        }
        self.store
            .release_group(&spec.group, &spec.topic, &owner)
            .await?;
        Ok(())
    }

    async fn fetch(&self, topic: &str, max: usize) -> Result<Vec<Delivered>, BusError> {
        let records = self.store.read_log(topic, 1, max as i64).await?;
        Ok(records
            .into_iter()
            .map(|r| Delivered {
                topic: r.topic,
                partition: 0,
                offset: r.offset,
                timestamp_ms: r.created_at,
                message: r.message,
            })
            .collect())
    }

    async fn lag(&self, group: &str, topic: &str) -> Result<i64, BusError> {
        let head = self.store.log_head(topic).await?;
        let next = self.store.group_position(group, topic).await?;
        Ok((head - (next - 1)).max(0))
    }

    async fn ping(&self) -> Result<(), BusError> {
        Ok(self.store.ping().await?)
    }
}

impl LogBus {
    /// Writes a dead letter; if the store refuses the message itself (a value too long for its
    /// column), writes its [`super::delivery::minimal`] form so that the group moves on. Any
    /// other failure (the database is down) fails the batch, which is tried again from this
    /// event.
    async fn dead_letter(&self, dlt: &str, message: Message) -> Result<(), BusError> {
        match self.publish(dlt, std::slice::from_ref(&message)).await {
            Ok(()) => Ok(()),
            Err(e) if !e.is_refusal() => Err(e),
            Err(e) => {
                tracing::warn!(topic = dlt, error = %e, event_id = %message.event_id,
                    "dead letter refused; writing its minimal form");
                self.publish(dlt, &[super::delivery::minimal(&message)])
                    .await
            }
        }
    }

    /// Handles one batch if this member holds the group's lease; returns how many events it
    /// moved past. The events the handler handles in one unit of work ([`deliver_batch`]);
    /// the group's position, its lease and the handled events' processed marks (unless the
    /// handler [records them itself](Handler::records_processed)) move in one transaction
    /// after them. A batch ends after an event that failed, so that the lease is
    /// renewed between retry chains.
    ///
    /// `held` is what the last stored position told this member: within [`RENEW_AFTER`] of it,
    /// the member reads on from there without taking the lease again. Safe if another member
    /// took the group meanwhile: the events it handled are skipped as processed, and storing
    /// the position, which requires the lease, fails and sends this member back to the lease.
    #[allow(clippy::too_many_arguments)]
    async fn consume_batch(
        &self,
        spec: &ConsumerSpec,
        handler: &dyn Handler,
        owner: &str,
        lease_ms: i64,
        dlt: &str,
        shutdown: &CancellationToken,
        held: &mut Option<Held>,
    ) -> Result<usize, BusError> {
        let store = &self.store;
        let known = match held.take() {
            Some(h) if h.renewed.elapsed() < RENEW_AFTER => h,
            _ => {
                let renewed = std::time::Instant::now();
                match store
                    .lease_group(&spec.group, &spec.topic, owner, now_ms(), lease_ms)
                    .await?
                {
                    Some(next) => Held { next, renewed },
                    None => return Ok(0),
                }
            }
        };
        let next = known.next;
        let records = store.read_log(&spec.topic, next, BATCH).await?;
        if records.is_empty() {
            *held = Some(known);
            return Ok(0);
        }
        let ids: Vec<&str> = records
            .iter()
            .map(|r| r.message.event_id.as_str())
            .collect();
        let done = store.processed_among(&spec.group, &ids).await?;
        let mut seen = std::collections::HashSet::new();
        let (places, todo): (Vec<usize>, Vec<Delivered>) = records
            .iter()
            .enumerate()
            .filter(|(_, r)| {
                let id = r.message.event_id.as_str();
                !done.contains(id) && seen.insert(id)
            })
            .map(|(i, r)| {
                let delivered = Delivered {
                    topic: r.topic.clone(),
                    partition: 0,
                    offset: r.offset,
                    timestamp_ms: r.created_at,
                    message: r.message.clone(),
                };
                (i, delivered)
            })
            .unzip();
        let outcomes = deliver_batch(
            handler,
            &todo,
            &spec.group,
            spec.retry,
            shutdown,
            AfterFailure::Stop,
        )
        .await;
        // The group moves past every record before `finished`: those already processed, the
        // handled and the dead-lettered ones.
        let mut finished = match places.get(outcomes.len()) {
            Some(&place) => place,
            None => records.len(),
        };
        let mut handled: Vec<&str> = Vec::new();
        for (k, outcome) in outcomes.into_iter().enumerate() {
            let id = records[places[k]].message.event_id.as_str();
            match outcome {
                // A handler that records its events itself did so with its writes.
                Outcome::Handled if handler.records_processed() => {}
                Outcome::Handled => handled.push(id),
                Outcome::DeadLetter(message) => self.dead_letter(dlt, message).await?,
                Outcome::Interrupted => {
                    finished = places[k];
                    break;
                }
            }
        }
        if finished == 0 {
            *held = Some(known);
            return Ok(0);
        }
        let renewed = std::time::Instant::now();
        let kept = store
            .commit_offset(
                &spec.group,
                &spec.topic,
                owner,
                records[finished - 1].offset,
                &handled,
                now_ms(),
                lease_ms,
            )
            .await?;
        if !kept {
            tracing::info!(group = %spec.group, "lease lost to another member");
            return Ok(0);
        }
        *held = Some(Held {
            next: records[finished - 1].offset + 1,
            renewed,
        });
        Ok(finished)
    }
}
