//! The embedded event bus: a durable log in the database (`event_log`, offsets gapless per
//! topic), consumer groups whose position is held under a lease in `consumer_offsets` (one
//! member of a group reads at a time; another takes over when the lease lapses), and dedupe by
//! event id in `processed_events`. The member that holds the lease handles each campaign's
//! events in a lane of its own ([`super::lanes`]). It survives restarts and works across hosts that share a
//! MySQL or PostgreSQL database.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use super::lanes::{DeadLetters, Lanes, Progress, Published};
use super::{BusError, ConsumerSpec, Delivered, EventBus, Handler, Message, dlt_topic};
use firstcome_core::clock::now_ms;
use firstcome_store::Store;

/// How long a group member's claim on its group lasts without renewal.
const LEASE: Duration = Duration::from_secs(15);
/// How often a member that holds its group renews its lease (by storing the group's position,
/// moved or not) while its lanes work. Small against [`LEASE`].
const RENEW_AFTER: Duration = Duration::from_secs(1);
/// Records a group member reads at a time (one dedupe query for them).
const BATCH: i64 = 500;

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
        let dead_letters: Arc<dyn DeadLetters> = Arc::new(Published {
            bus: self.clone(),
            topic: dlt_topic(&spec.topic),
            backoff: spec.retry.backoff,
        });
        while !shutdown.is_cancelled() {
            // Registered before asking, so a publish meanwhile wakes us.
            let woken = self.published.notified();
            let lease = LEASE.as_millis() as i64;
            match (self.store)
                .lease_group(&spec.group, &spec.topic, &owner, now_ms(), lease)
                .await
            {
                Ok(Some(next)) => {
                    let member = Member {
                        bus: self,
                        spec: &spec,
                        owner: &owner,
                        dead_letters: dead_letters.clone(),
                    };
                    if let Err(e) = member.hold(next, handler.clone(), &shutdown).await {
                        tracing::warn!(group = %spec.group, error = %e, "consumer step failed");
                    }
                    continue;
                }
                // Another member holds the group.
                Ok(None) => {}
                Err(e) => {
                    tracing::warn!(group = %spec.group, error = %e, "consumer step failed");
                }
            }
            tokio::select! {
                () = woken => {}
                () = tokio::time::sleep(spec.poll_interval) => {}
                () = shutdown.cancelled() => {}
            }
        }
        self.store
            .release_group(&spec.group, &spec.topic, &owner)
            .await?;
        Ok(())
    }

    async fn fetch(&self, topic: &str, max: usize) -> Result<Vec<Delivered>, BusError> {
        let records = self.store.read_log(topic, 1, max as i64).await?;
        Ok(records.into_iter().map(delivered).collect())
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

/// A member while it holds its group's lease.
struct Member<'a> {
    bus: &'a LogBus,
    spec: &'a ConsumerSpec,
    owner: &'a str,
    dead_letters: Arc<dyn DeadLetters>,
}

impl Member<'_> {
    /// Reads the group's events from `next` into per-campaign [`Lanes`] and stores the
    /// group's position as they finish, renewing the lease at least every [`RENEW_AFTER`],
    /// until shutdown, an error, or the lease goes to another member. Stopping, the lanes end
    /// after the calls they are in, and what finished is stored.
    async fn hold(
        &self,
        next: i64,
        handler: Arc<dyn Handler>,
        shutdown: &CancellationToken,
    ) -> Result<(), BusError> {
        let spec = self.spec;
        let mut lanes = Lanes::new(handler.clone(), spec, self.dead_letters.clone(), shutdown);
        let mut read_from = next;
        let mut unstored = Unstored {
            position: next - 1,
            moved: false,
            handled: Vec::new(),
            records: !handler.records_processed(),
        };
        let mut renewed = std::time::Instant::now();
        let ended = loop {
            if shutdown.is_cancelled() {
                break Ok(true);
            }
            let woken = self.bus.published.notified();
            let read = if lanes.room() > 0 {
                match self.read(read_from, &mut lanes).await {
                    Ok(Some(last)) => {
                        read_from = last + 1;
                        true
                    }
                    Ok(None) => false,
                    Err(e) => break Err(e),
                }
            } else {
                false
            };
            lanes.collect();
            unstored.take(lanes.progress());
            if unstored.moved || renewed.elapsed() >= RENEW_AFTER {
                let at = std::time::Instant::now();
                match self.store(&mut unstored).await {
                    Ok(true) => renewed = at,
                    Ok(false) => break Ok(false),
                    Err(e) => break Err(e),
                }
            }
            if read {
                continue;
            }
            tokio::select! {
                finished = lanes.next_finished() => {
                    if let Err(e) = finished {
                        break Err(e);
                    }
                }
                () = woken => {}
                () = tokio::time::sleep(spec.poll_interval.min(RENEW_AFTER)) => {}
                () = shutdown.cancelled() => {}
            }
        };
        unstored.take(lanes.stop().await);
        match ended {
            // The lease is still this member's: store what the lanes finished.
            Ok(true) => {
                self.store(&mut unstored).await?;
                Ok(())
            }
            Ok(false) => {
                tracing::info!(group = %spec.group, "lease lost to another member");
                Ok(())
            }
            Err(e) => Err(e),
        }
    }

    /// Reads up to the lanes' room from `from` into the lanes ([`Lanes::take`]); returns the
    /// offset of the last record read.
    async fn read(&self, from: i64, lanes: &mut Lanes) -> Result<Option<i64>, BusError> {
        let store = &self.bus.store;
        let max = BATCH.min(lanes.room() as i64);
        let records = store.read_log(&self.spec.topic, from, max).await?;
        let Some(last) = records.last().map(|r| r.offset) else {
            return Ok(None);
        };
        let ids: Vec<&str> = records
            .iter()
            .map(|r| r.message.event_id.as_str())
            .collect();
        let done = store.processed_among(&self.spec.group, &ids).await?;
        lanes.take(records.into_iter().map(delivered).collect(), &done);
        Ok(Some(last))
    }

    /// Stores the group's position and the handled events' marks, renewing the lease;
    /// `false` when the lease is another member's now.
    async fn store(&self, unstored: &mut Unstored) -> Result<bool, BusError> {
        let handled: Vec<&str> = unstored.handled.iter().map(String::as_str).collect();
        let kept = self
            .bus
            .store
            .commit_offset(
                &self.spec.group,
                &self.spec.topic,
                self.owner,
                unstored.position,
                &handled,
                now_ms(),
                LEASE.as_millis() as i64,
            )
            .await?;
        if kept {
            unstored.moved = false;
            unstored.handled.clear();
        }
        Ok(kept)
    }
}

/// What a member has to store: the group's position (the offset of the last event it is past)
/// and, when the handler does not record them itself, the ids of the events handled.
#[derive(Debug)]
struct Unstored {
    position: i64,
    moved: bool,
    handled: Vec<String>,
    /// Whether the bus records handled events (the handler does not).
    records: bool,
}

impl Unstored {
    fn take(&mut self, progress: Progress) {
        if let Some(&(_, offset)) = progress.positions.first() {
            self.position = offset;
            self.moved = true;
        }
        if self.records && !progress.handled.is_empty() {
            self.handled.extend(progress.handled);
            self.moved = true;
        }
    }
}

/// A log record as the bus hands it to handlers (the log has one partition, 0).
fn delivered(r: firstcome_store::LogRecord) -> Delivered {
    Delivered {
        topic: r.topic,
        partition: 0,
        offset: r.offset,
        timestamp_ms: r.created_at,
        message: r.message,
    }
}
