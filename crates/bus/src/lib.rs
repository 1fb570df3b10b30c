//! # firstcome-bus
//!
//! The event bus between the outbox and the consumers.
//!
//! [`EventBus`] is what the outbox publishes to and what consumer groups read from; the
//! embedded implementation ([`embedded::LogBus`]) keeps a durable log in the database, and
//! [`kafka::KafkaBus`] uses Kafka. Consumer groups receive every event, at least once: a group
//! stores its position only after an event was handled (or dead-lettered), and drops events
//! whose id it has handled before. A failing handler is retried with a fixed back-off, then
//! the event goes to `{topic}.DLT` with headers saying where it came from and why it failed
//! ([`delivery`]). Within a group, each campaign's events run in a lane of their own
//! ([`lanes`]): a slow or failing campaign holds back no other.
//!
//! Layout: `lib.rs` (the types and traits), `config` (its configuration sections), `delivery` (retry and dead-letter policy shared by
//! every bus), `lanes` (per-campaign lanes of a group member, shared by every bus), `embedded` (the database log), `kafka` (rdkafka).

mod config;
pub mod delivery;
pub mod embedded;
#[cfg(feature = "kafka")]
pub mod kafka;
pub mod lanes;

use std::fmt::Debug;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use tokio_util::sync::CancellationToken;

pub use config::{ConsumerConfig, KafkaConfig, default_busy_lanes};
pub use delivery::{REPLAYED_FOR_GROUP, RetryPolicy};

/// Suffix of a topic's dead-letter twin.
pub const DLT_SUFFIX: &str = ".DLT";

/// The dead-letter topic of `topic`.
pub fn dlt_topic(topic: &str) -> String {
    format!("{topic}{DLT_SUFFIX}")
}

pub use firstcome_core::event::{Delivered, Message};

#[derive(Debug, thiserror::Error)]
pub enum BusError {
    #[error("publish failed: {0}")]
    Publish(String),
    #[error("consume failed: {0}")]
    Consume(String),
    /// The bus refused this message itself (over the broker's message size): sending it
    /// again unchanged cannot succeed.
    #[error("message refused: {0}")]
    Refused(String),
    #[error(transparent)]
    Store(#[from] firstcome_store::StoreError),
}

impl BusError {
    /// Whether the message itself was refused (too large for the broker, a column or the
    /// database), rather than the bus being unreachable: the cue for a smaller dead letter.
    pub fn is_refusal(&self) -> bool {
        use firstcome_store::StoreError;
        match self {
            Self::Refused(_) => true,
            // SQLSTATE 22001 (value too long: MySQL 1406, PostgreSQL), 54000 (PostgreSQL's
            // program limits), and SQLite's SQLITE_TOOBIG (18).
            Self::Store(StoreError::Sqlx(sqlx::Error::Database(db))) => {
                matches!(db.code().as_deref(), Some("22001" | "54000" | "18"))
            }
            _ => false,
        }
    }
}

/// How a handler failed. A retryable failure is tried again after the back-off; a permanent
/// one goes straight to the dead-letter topic; an event the handler is not ready for yet
/// waits, without spending its retries.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum HandlerError {
    #[error("retryable: {0}")]
    Retryable(String),
    #[error("permanent: {0}")]
    Permanent(String),
    /// The handler cannot run this event yet, for a reason that ends by itself (its campaign's
    /// plugins are still loading): tried again after each back-off for as long as it lasts,
    /// never dead-lettered for it. Only the event's own lane waits, until the member's window
    /// of unfinished events ([`lanes`]) is full.
    #[error("not ready: {0}")]
    NotReady(String),
}

impl HandlerError {
    /// The same error with its text cut to [`firstcome_core::bounded::MAX_ERROR_BYTES`].
    pub fn bounded(self) -> Self {
        match self {
            Self::Retryable(m) => Self::Retryable(firstcome_core::bounded::error_text(m)),
            Self::Permanent(m) => Self::Permanent(firstcome_core::bounded::error_text(m)),
            Self::NotReady(m) => Self::NotReady(firstcome_core::bounded::error_text(m)),
        }
    }
}

/// What a consumer group does with each event.
#[async_trait]
pub trait Handler: Send + Sync + Debug {
    async fn handle(&self, event: &Delivered) -> Result<(), HandlerError>;

    /// Handles events in order, as one unit of work where the handler can (one database
    /// transaction for a whole batch, say), and stops at the first that fails. Returns how
    /// many of the first events were handled, and the error of the next one when it failed
    /// (the bus then retries that one alone, under its policy, and goes on after it). Without
    /// an error, fewer than all means the handler ended the batch early (a time budget): the
    /// bus hands it the rest next. By default: [`Self::handle`], one event after another.
    async fn handle_batch(&self, events: &[Delivered]) -> (usize, Option<HandlerError>) {
        for (i, event) in events.iter().enumerate() {
            if let Err(e) = self.handle(event).await {
                return (i, Some(e));
            }
        }
        (events.len(), None)
    }

    /// Whether the handler records what it handled itself, in the same transaction as its
    /// writes ([`firstcome_store::Store::commit_effects_batch`]), so that the bus need not record
    /// the same events processed a second time. Such a handler must record every event whose
    /// second run would do something again; an event it left unrecorded may reach it again
    /// after a redelivery. By default `false`: the bus records every handled event.
    fn records_processed(&self) -> bool {
        false
    }
}

/// Settings of one consumer group.
#[derive(Clone, Debug)]
pub struct ConsumerSpec {
    pub group: String,
    pub topic: String,
    pub retry: RetryPolicy,
    /// How often to look for new events when not woken.
    pub poll_interval: Duration,
    /// Lanes whose handler runs at once ([`ConsumerConfig::busy_lanes`]).
    pub busy_lanes: usize,
}

/// A bus: publishes batches, runs consumer groups.
#[async_trait]
pub trait EventBus: Send + Sync + Debug {
    /// "embedded" or "kafka".
    fn kind(&self) -> &'static str;

    /// Publishes messages to a topic; `Ok` means the bus acknowledged all of them durably.
    async fn publish(&self, topic: &str, messages: &[Message]) -> Result<(), BusError>;

    /// Runs one member of a consumer group until `shutdown`.
    async fn run_consumer(
        &self,
        spec: ConsumerSpec,
        handler: Arc<dyn Handler>,
        shutdown: CancellationToken,
    ) -> Result<(), BusError>;

    /// Up to `max` messages of a topic from its beginning, every partition (for looking at
    /// dead letters; it joins no consumer group and commits nothing).
    async fn fetch(&self, topic: &str, max: usize) -> Result<Vec<Delivered>, BusError>;

    /// Messages of `topic` the group has not yet moved past.
    async fn lag(&self, group: &str, topic: &str) -> Result<i64, BusError>;

    /// Answers when the bus does; used by readiness.
    async fn ping(&self) -> Result<(), BusError>;
}
