//! Kafka as the event bus, through rdkafka (librdkafka).
//!
//! Producing: an idempotent producer with `acks=all`; [`KafkaBus::publish`] returns `Ok` only
//! when every message's delivery report is a success, so the outbox marks a row published only
//! then; a failed or timed-out delivery leaves it to the relay. The key is the user id: one
//! user's events stay in order while a hot campaign spreads over partitions. `event_id` and
//! `event_type` also travel as headers.
//!
//! Consuming: one consumer group per role, each campaign's events in a lane of their own
//! ([`super::lanes`]); a partition's offset is stored only past events that were handled
//! or dead-lettered (`enable.auto.offset.store=false`; stored offsets are committed in the
//! background and on shutdown), so a rebalance or a crash redelivers instead of losing. Event
//! ids a group handled are recorded in the database (`processed_events`), so redeliveries and
//! re-sends are dropped. Failures follow [`super::delivery`]; the dead letter is written to
//! `{topic}.DLT` and acknowledged before the source offset is stored.
//!
//! A topic deleted and created again under the host: [`topics`].

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer, StreamConsumer};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{BorrowedMessage, Header, Headers, Message as _, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord, Producer};
use rdkafka::util::Timeout;
use rdkafka::{Offset, TopicPartitionList};
use tokio_util::sync::CancellationToken;

use super::lanes::{Lanes, Progress, Published};
use super::{BusError, ConsumerSpec, Delivered, EventBus, Handler, Message, dlt_topic};
use crate::config::KafkaConfig;
use firstcome_core::clock::now_ms;
use firstcome_store::Store;
use topics::{Listed, TopicWatch};

mod topics;

const METADATA_TIMEOUT: Duration = Duration::from_secs(10);

/// How often every client refreshes its topics' metadata (librdkafka's default is 5 minutes):
/// a topic deleted and created again is followed within this time.
const METADATA_REFRESH_MS: &str = "10000";
/// Most messages handled between two dedupe round trips to the database.
const CONSUME_BATCH: usize = 500;
/// How long a member waits for a message before it looks at its group's progress.
const STALL_CHECK: Duration = Duration::from_secs(10);
/// A group whose lag has not gone down for this long while its members receive nothing is
/// stuck (a partition left without an owner after a rebalance): its idle members leave and
/// rejoin, which makes the coordinator assign every partition again.
const STALL: Duration = Duration::from_secs(30);

/// What a member has seen of its group's lag while it received nothing.
#[derive(Debug, Default)]
struct StallWatch {
    /// The lowest lag seen, and since when the lag has not gone below it.
    lowest: Option<(i64, std::time::Instant)>,
}

/// The Kafka bus.
#[derive(Clone)]
pub struct KafkaBus {
    brokers: String,
    settings: KafkaConfig,
    producer: FutureProducer,
    store: Store,
    /// The topics this host created or found ([`Self::ensure_topics`]), and whether the
    /// brokers still list them.
    topics: Arc<TopicWatch>,
    /// Whether the task that reads the topics every [`topics::CHECK_EVERY`] runs.
    watching: Arc<std::sync::atomic::AtomicBool>,
}

impl std::fmt::Debug for KafkaBus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KafkaBus")
            .field("brokers", &self.brokers)
            .finish_non_exhaustive()
    }
}

fn kafka_error(e: KafkaError) -> BusError {
    use RDKafkaErrorCode as Code;
    match e.rdkafka_error_code() {
        // MessageSizeTooLarge is also what librdkafka reports for a message over its own
        // `message.max.bytes`, before sending.
        Some(Code::MessageSizeTooLarge | Code::InvalidMessageSize | Code::InvalidRecord) => {
            BusError::Refused(e.to_string())
        }
        _ => BusError::Publish(e.to_string()),
    }
}

impl KafkaBus {
    /// Creates the producer; `store` keeps each group's processed event ids.
    pub fn new(brokers: &str, settings: KafkaConfig, store: Store) -> Result<Self, BusError> {
        let producer: FutureProducer = ClientConfig::new()
            .set("bootstrap.servers", brokers)
            .set("enable.idempotence", "true")
            .set("acks", "all")
            .set(
                "message.timeout.ms",
                settings.delivery_timeout_ms.to_string(),
            )
            .set("linger.ms", "5")
            // Only `ensure_topics` creates topics: a deleted topic must not come back through a
            // metadata refresh with the brokers' default partitions.
            .set("allow.auto.create.topics", "false")
            .set("topic.metadata.refresh.interval.ms", METADATA_REFRESH_MS)
            .create()
            .map_err(kafka_error)?;
        Ok(Self {
            brokers: brokers.to_owned(),
            settings,
            producer,
            store,
            topics: Arc::default(),
            watching: Arc::default(),
        })
    }

    fn base_config(&self) -> ClientConfig {
        let mut config = ClientConfig::new();
        config
            .set("bootstrap.servers", &self.brokers)
            .set("topic.metadata.refresh.interval.ms", METADATA_REFRESH_MS);
        config
    }

    /// Creates each topic and its `.DLT` twin when absent, the twin with as many partitions.
    pub async fn ensure_topics(&self, topics: &[&str]) -> Result<(), BusError> {
        let admin: AdminClient<DefaultClientContext> =
            self.base_config().create().map_err(kafka_error)?;
        let names: Vec<String> = topics
            .iter()
            .flat_map(|t| [t.to_string(), dlt_topic(t)])
            .collect();
        self.topics.know(names.iter().cloned());
        let new: Vec<NewTopic<'_>> = names
            .iter()
            .map(|name| {
                NewTopic::new(
                    name,
                    self.settings.partitions,
                    TopicReplication::Fixed(self.settings.replication_factor),
                )
            })
            .collect();
        let options = AdminOptions::new().operation_timeout(Some(Timeout::After(METADATA_TIMEOUT)));
        let results = admin
            .create_topics(&new, &options)
            .await
            .map_err(kafka_error)?;
        for result in results {
            match result {
                Ok(_) | Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
                Err((topic, code)) => {
                    return Err(BusError::Publish(format!("creating topic {topic}: {code}")));
                }
            }
        }
        self.watch_topics();
        Ok(())
    }

    /// Starts (once) the task that reads the known topics every [`topics::CHECK_EVERY`]; it
    /// ends with the last clone of this bus.
    fn watch_topics(&self) {
        use std::sync::atomic::Ordering;
        if self.watching.swap(true, Ordering::Relaxed) {
            return;
        }
        let (producer, watch) = (self.producer.clone(), Arc::downgrade(&self.topics));
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(topics::CHECK_EVERY).await;
                let Some(watch) = watch.upgrade() else { return };
                if let Err(e) = read_topics(&producer, &watch).await {
                    tracing::debug!(error = %e, "cannot read the Kafka topics");
                }
            }
        });
    }

    /// A consumer of `group` (a role; its Kafka group id carries the configured prefix)
    /// configured for at-least-once delivery.
    fn consumer<C: rdkafka::config::FromClientConfig>(&self, group: &str) -> Result<C, BusError> {
        self.base_config()
            .set("group.id", self.settings.group_id(group))
            .set("enable.auto.commit", "true")
            .set("auto.commit.interval.ms", "1000")
            .set("enable.auto.offset.store", "false")
            .set("auto.offset.reset", "earliest")
            // Events are few and latency matters: do not let a fetch idle long on the broker.
            .set("fetch.wait.max.ms", "100")
            .set(
                "session.timeout.ms",
                self.settings.session_timeout_ms.to_string(),
            )
            .create()
            .map_err(|e| BusError::Consume(e.to_string()))
    }

    /// Whether the group is stuck, as far as an idle member can tell: events wait (lag > 0)
    /// and the lag has not gone down for [`STALL`].
    async fn stalled(&self, spec: &ConsumerSpec, watch: &mut StallWatch) -> bool {
        let lag = match self.lag(&spec.group, &spec.topic).await {
            Ok(lag) => lag,
            Err(e) => {
                tracing::debug!(group = %spec.group, error = %e, "cannot read the group's lag");
                return false;
            }
        };
        let now = std::time::Instant::now();
        match watch.lowest {
            _ if lag == 0 => {
                watch.lowest = None;
                false
            }
            Some((lowest, since)) if lag >= lowest => now.duration_since(since) >= STALL,
            _ => {
                watch.lowest = Some((lag, now));
                false
            }
        }
    }

    /// Takes `first` and whatever else is already fetched (up to [`CONSUME_BATCH`] and the
    /// lanes' room; nothing waits for a batch to fill), drops the events the group handled
    /// before (one dedupe query for them all) and hands the rest to their lanes.
    async fn start(
        &self,
        spec: &ConsumerSpec,
        consumer: &StreamConsumer,
        first: BorrowedMessage<'_>,
        lanes: &mut Lanes,
    ) -> Result<(), BusError> {
        let mut events = vec![delivered(&first)];
        drop(first);
        let max = CONSUME_BATCH.min(lanes.room());
        while events.len() < max {
            match tokio::time::timeout(Duration::ZERO, consumer.recv()).await {
                Ok(Ok(msg)) => events.push(delivered(&msg)),
                Ok(Err(_)) | Err(_) => break,
            }
        }
        let ids: Vec<&str> = events.iter().map(|e| e.message.event_id.as_str()).collect();
        let done = self.store.processed_among(&spec.group, &ids).await?;
        // A re-sent event can sit twice in a fetch: it is handled once.
        lanes.take(events, &done);
        Ok(())
    }

    /// Records what the lanes handled as processed (unless the handler did, `records` false),
    /// then stores each partition's new position for the next commit.
    async fn settle(
        &self,
        spec: &ConsumerSpec,
        consumer: &StreamConsumer,
        progress: Progress,
        records: bool,
    ) -> Result<(), BusError> {
        if records && !progress.handled.is_empty() {
            let handled: Vec<&str> = progress.handled.iter().map(String::as_str).collect();
            self.store
                .mark_processed(&spec.group, &handled, now_ms())
                .await?;
        }
        for (partition, offset) in progress.positions {
            // Stores offset + 1, as for a message. Fails for a partition taken away by a
            // rebalance meanwhile: its new owner gets these events again and drops them as
            // already handled.
            if let Err(e) = consumer.store_offset(&spec.topic, partition, offset) {
                tracing::debug!(group = %spec.group, error = %e, "offset not stored");
            }
        }
        Ok(())
    }
}

impl KafkaBus {
    /// Commits the beginning of every partition of a topic created again, for the member's
    /// group, instead of the positions it held in the deleted one (which the group would
    /// otherwise resume from, skipping the new topic's first events on a broker that does not
    /// call them out of range). Redelivered events the group handled are dropped as such.
    /// Once committed, the group owes no rewind for `returns`; otherwise its next member on
    /// this host tries again.
    fn rewind(&self, spec: &ConsumerSpec, consumer: &StreamConsumer, returns: u64) {
        let mut start = TopicPartitionList::new();
        for partition in self.topics.partitions_of(&spec.topic) {
            if let Err(e) = start.add_partition_offset(&spec.topic, partition, Offset::Offset(0)) {
                tracing::warn!(group = %spec.group, error = %e, "cannot rewind a partition");
            }
        }
        // Stored too, for the partitions this member holds: librdkafka commits what is stored
        // when the consumer closes, which would put the old positions back.
        if let Err(e) = consumer.store_offsets(&start) {
            tracing::debug!(group = %spec.group, error = %e, "beginnings not stored");
        }
        match consumer.commit(&start, CommitMode::Sync) {
            Ok(()) => {
                self.topics.rewound(&spec.group, &spec.topic, returns);
                tracing::info!(
                    group = %spec.group,
                    topic = %spec.topic,
                    partitions = start.count(),
                    "the group reads the topic created again from its beginning"
                );
            }
            Err(e) => tracing::warn!(
                group = %spec.group,
                topic = %spec.topic,
                error = %e,
                "cannot rewind the group over the topic created again yet; its next member tries \
                 again"
            ),
        }
    }
}

/// Reads the brokers' topic list and records it in `watch` ([`TopicWatch::record`]): what is
/// wrong with the known topics, a sentence each.
async fn read_topics(
    producer: &FutureProducer,
    watch: &TopicWatch,
) -> Result<Vec<String>, BusError> {
    let _one_at_a_time = watch.reading.lock().await;
    let producer = producer.clone();
    let listed = tokio::task::spawn_blocking(move || {
        let metadata = producer
            .client()
            .fetch_metadata(None, Duration::from_secs(3))
            .map_err(|e| BusError::Publish(e.to_string()))?;
        Ok::<_, BusError>(
            metadata
                .topics()
                .iter()
                .map(|t| {
                    let listed: Listed = match t.error() {
                        Some(error) => Err(error),
                        None => Ok(t.partitions().iter().map(|p| p.id()).collect()),
                    };
                    (t.name().to_owned(), listed)
                })
                .collect::<BTreeMap<String, Listed>>(),
        )
    })
    .await
    .map_err(|e| BusError::Publish(e.to_string()))??;
    Ok(watch.record(&listed))
}

/// The partition ids of a topic, from the cluster's metadata (blocking).
fn partitions_of(consumer: &BaseConsumer, topic: &str) -> Result<Vec<i32>, BusError> {
    let metadata = consumer
        .fetch_metadata(Some(topic), METADATA_TIMEOUT)
        .map_err(|e| BusError::Consume(e.to_string()))?;
    Ok(metadata
        .topics()
        .iter()
        .flat_map(|t| t.partitions().iter().map(|p| p.id()))
        .collect())
}

/// A received message as the bus hands it to handlers. A message without an `event_id`
/// header or field gets one from its position, so it can still be deduped and dead-lettered.
fn delivered(msg: &BorrowedMessage<'_>) -> Delivered {
    let mut headers = BTreeMap::new();
    if let Some(h) = msg.headers() {
        for header in h.iter() {
            let value = header
                .value
                .map(String::from_utf8_lossy)
                .unwrap_or_default();
            headers.insert(header.key.to_owned(), value.into_owned());
        }
    }
    let payload = msg
        .payload()
        .map(String::from_utf8_lossy)
        .unwrap_or_default()
        .into_owned();
    let event_id = headers
        .get("event_id")
        .cloned()
        .or_else(|| {
            serde_json::from_str::<serde_json::Value>(&payload)
                .ok()
                .and_then(|v| {
                    v.get("event_id")
                        .and_then(|id| id.as_str())
                        .map(str::to_owned)
                })
        })
        .unwrap_or_else(|| format!("{}/{}/{}", msg.topic(), msg.partition(), msg.offset()));
    Delivered {
        topic: msg.topic().to_owned(),
        partition: msg.partition(),
        offset: msg.offset(),
        timestamp_ms: msg.timestamp().to_millis().unwrap_or(0),
        message: Message {
            event_id,
            key: msg
                .key()
                .map(String::from_utf8_lossy)
                .unwrap_or_default()
                .into_owned(),
            payload,
            headers,
        },
    }
}

#[async_trait]
impl EventBus for KafkaBus {
    fn kind(&self) -> &'static str {
        "kafka"
    }

    async fn publish(&self, topic: &str, messages: &[Message]) -> Result<(), BusError> {
        if self.topics.is_deleted(topic) {
            return Err(BusError::Publish(format!(
                "topic {topic} does not exist on the brokers: nothing is sent to it until it is \
                 created again"
            )));
        }
        let timeout = Timeout::After(Duration::from_millis(self.settings.delivery_timeout_ms));
        let sends = messages.iter().map(|m| {
            let mut headers = OwnedHeaders::new_with_capacity(m.headers.len() + 1);
            if !m.headers.contains_key("event_id") {
                headers = headers.insert(Header {
                    key: "event_id",
                    value: Some(&m.event_id),
                });
            }
            for (key, value) in &m.headers {
                headers = headers.insert(Header {
                    key,
                    value: Some(value),
                });
            }
            let record = FutureRecord::to(topic)
                .key(&m.key)
                .payload(&m.payload)
                .headers(headers);
            self.producer.send(record, timeout)
        });
        for result in futures::future::join_all(sends).await {
            if let Err((e, _)) = result {
                return Err(kafka_error(e));
            }
        }
        Ok(())
    }

    async fn run_consumer(
        &self,
        spec: ConsumerSpec,
        handler: Arc<dyn Handler>,
        shutdown: CancellationToken,
    ) -> Result<(), BusError> {
        let consumer: StreamConsumer = self.consumer(&spec.group)?;
        consumer
            .subscribe(&[&spec.topic])
            .map_err(|e| BusError::Consume(e.to_string()))?;
        let dead_letters = Arc::new(Published {
            bus: self.clone(),
            topic: dlt_topic(&spec.topic),
            backoff: spec.retry.backoff,
        });
        let records = !handler.records_processed();
        let mut lanes = Lanes::new(handler, &spec, dead_letters, &shutdown);
        let mut watch = StallWatch::default();
        let mut returned = self.topics.subscribe();
        let mut recreated = None;
        let ended = loop {
            tokio::select! {
                received = consumer.recv(), if lanes.room() > 0 => match received {
                    Ok(first) => {
                        watch.lowest = None;
                        if let Err(e) = self.start(&spec, &consumer, first, &mut lanes).await {
                            break Err(e);
                        }
                    }
                    Err(e) => {
                        tracing::warn!(group = %spec.group, error = %e, "consume error");
                        tokio::time::sleep(spec.poll_interval).await;
                    }
                },
                finished = lanes.next_finished() => {
                    if let Err(e) = finished {
                        break Err(e);
                    }
                }
                // Nothing received, nothing under way for a while: is the group stuck?
                () = tokio::time::sleep(STALL_CHECK), if lanes.is_idle() => {
                    if self.stalled(&spec, &mut watch).await {
                        break Err(BusError::Consume(format!(
                            "group {} has had events waiting and made no progress for {STALL:?}; \
                             rejoining",
                            spec.group
                        )));
                    }
                }
                // A topic came back: if it is this one, the check below rewinds.
                Ok(()) = returned.changed() => {}
                () = shutdown.cancelled() => break Ok(()),
            }
            lanes.collect();
            if let Err(e) = self
                .settle(&spec, &consumer, lanes.progress(), records)
                .await
            {
                break Err(e);
            }
            // The topic was deleted and created again: the positions this member holds belong
            // to the deleted one. Rewound once the member is in the group (its commit needs a
            // generation).
            if let Some(returns) = self.topics.rewind_due(&spec.group, &spec.topic)
                && consumer.assignment().is_ok_and(|a| a.count() > 0)
            {
                recreated = Some(returns);
                break Err(BusError::Consume(format!(
                    "topic {} was created again: group {} reads it from its beginning",
                    spec.topic, spec.group
                )));
            }
        };
        let finished = lanes.stop().await;
        self.settle(&spec, &consumer, finished, records).await?;
        if let Some(returns) = recreated {
            self.rewind(&spec, &consumer, returns);
        } else if let Err(e) = consumer.commit_consumer_state(CommitMode::Sync) {
            // Hand the stored positions over before leaving the group.
            tracing::debug!(group = %spec.group, error = %e, "nothing to commit on shutdown");
        }
        ended
    }

    async fn fetch(&self, topic: &str, max: usize) -> Result<Vec<Delivered>, BusError> {
        let consumer: BaseConsumer = self
            .base_config()
            .set(
                "group.id",
                format!("firstcome-fetch-{}", uuid::Uuid::new_v4()),
            )
            .set("enable.auto.commit", "false")
            // Read each partition to its end, as `kcat -e` does, rather than trusting
            // watermark arithmetic.
            .set("enable.partition.eof", "true")
            .create()
            .map_err(|e| BusError::Consume(e.to_string()))?;
        let topic = topic.to_owned();
        tokio::task::spawn_blocking(move || {
            let err = |e: KafkaError| BusError::Consume(e.to_string());
            let mut assignment = TopicPartitionList::new();
            for p in partitions_of(&consumer, &topic)? {
                assignment
                    .add_partition_offset(&topic, p, Offset::Beginning)
                    .map_err(err)?;
            }
            let partitions = assignment.count();
            let mut out = Vec::new();
            if partitions == 0 {
                return Ok(out);
            }
            consumer.assign(&assignment).map_err(err)?;
            let mut at_end = std::collections::HashSet::new();
            let deadline = std::time::Instant::now() + METADATA_TIMEOUT;
            while out.len() < max
                && at_end.len() < partitions
                && std::time::Instant::now() < deadline
            {
                match consumer.poll(Duration::from_millis(200)) {
                    Some(Ok(msg)) => out.push(delivered(&msg)),
                    Some(Err(KafkaError::PartitionEOF(p))) => {
                        at_end.insert(p);
                    }
                    Some(Err(e)) => return Err(err(e)),
                    None => {}
                }
            }
            out.sort_by_key(|d| (d.partition, d.offset));
            Ok(out)
        })
        .await
        .map_err(|e| BusError::Consume(e.to_string()))?
    }

    async fn lag(&self, group: &str, topic: &str) -> Result<i64, BusError> {
        let consumer: BaseConsumer = self.consumer(group)?;
        let topic = topic.to_owned();
        tokio::task::spawn_blocking(move || {
            let err = |e: KafkaError| BusError::Consume(e.to_string());
            let mut partitions = TopicPartitionList::new();
            for p in partitions_of(&consumer, &topic)? {
                partitions.add_partition(&topic, p);
            }
            let committed = consumer
                .committed_offsets(partitions, METADATA_TIMEOUT)
                .map_err(err)?;
            let mut lag = 0;
            for element in committed.elements() {
                let (low, high) = consumer
                    .fetch_watermarks(&topic, element.partition(), METADATA_TIMEOUT)
                    .map_err(err)?;
                let position = match element.offset() {
                    Offset::Offset(o) => o,
                    _ => low,
                };
                lag += (high - position).max(0);
            }
            Ok(lag)
        })
        .await
        .map_err(|e| BusError::Consume(e.to_string()))?
    }

    /// The brokers answer, and every topic of [`Self::ensure_topics`] is there. A topic
    /// deleted under the host is reported here (and logged, and counted in
    /// `firstcome_kafka_topics_missing`): events wait in the outbox, and the consumer groups
    /// read it from its beginning once it is created again ([`topics`]).
    async fn ping(&self) -> Result<(), BusError> {
        let problems = read_topics(&self.producer, &self.topics).await?;
        if problems.is_empty() {
            Ok(())
        } else {
            Err(BusError::Publish(problems.join("; ")))
        }
    }
}
