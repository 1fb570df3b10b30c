//! Dead letters: listing them (where each came from, which group failed it and why),
//! replaying them to their topic for the group that failed them, and discarding them. The CLI
//! (`firstcome dlt`) and the admin API (`/api/v1/admin/dead-letters`) both act through here:
//! every replay and discard is settled in the store (listings then show the letter as settled,
//! and the embedded log may purge it) and recorded in the audit log.

use std::collections::{BTreeMap, HashSet};

use serde::Serialize;

use crate::audit;
use firstcome_bus::{BusError, DLT_SUFFIX, Delivered, EventBus, Message, dlt_topic};
use firstcome_core::bounded;
use firstcome_core::clock::now_ms;
use firstcome_store::{LetterPlace, Settled, Settlement, Store, StoreError};

/// Most dead letters read from the dead-letter topic per listing or action.
pub const SCAN: usize = 100_000;

/// One dead letter as listings show it: where it sits and came from, which group failed it,
/// after how many tries and why, and whether it was settled. Never its payload (it holds the
/// shopper's personal data and coupon code): `firstcome dlt show` prints that on the host.
#[derive(Clone, Debug, Serialize, utoipa::ToSchema)]
pub struct DeadLetter {
    pub event_id: String,
    /// Where it sits on the dead-letter topic.
    pub partition: i32,
    pub offset: i64,
    /// When it was dead-lettered, in milliseconds since the Unix epoch.
    pub failed_at_ms: Option<i64>,
    pub original_topic: Option<String>,
    pub original_partition: Option<i32>,
    pub original_offset: Option<i64>,
    /// The consumer group (role) that failed it.
    pub consumer_group: Option<String>,
    /// The campaign whose event it is.
    pub campaign_id: Option<String>,
    /// Tries made before it was dead-lettered.
    pub attempts: Option<u32>,
    /// The last error, control characters escaped.
    pub error: String,
    /// Whether only the minimal form could be written (the full one was refused).
    pub minimal: bool,
    /// How and by whom it was settled; absent while it is open.
    pub settled: Option<Settled>,
}

impl DeadLetter {
    fn of(delivered: &Delivered, settled: Option<Settled>) -> Self {
        let h = &delivered.message.headers;
        let text = |k: &str| h.get(k).map(|v| bounded::escaped(v).into_owned());
        let number = |k: &str| h.get(k).and_then(|v| v.parse().ok());
        Self {
            event_id: bounded::escaped(&delivered.message.event_id).into_owned(),
            partition: delivered.partition,
            offset: delivered.offset,
            failed_at_ms: number("dlt.failed_at"),
            original_topic: text("dlt.original_topic"),
            original_partition: h.get("dlt.original_partition").and_then(|v| v.parse().ok()),
            original_offset: number("dlt.original_offset"),
            consumer_group: text("dlt.consumer_group"),
            campaign_id: text(firstcome_bus::lanes::LANE_HEADER),
            attempts: h.get("dlt.attempts").and_then(|v| v.parse().ok()),
            error: text("dlt.error").unwrap_or_default(),
            minimal: h.get("dlt.minimal").is_some_and(|v| v == "true"),
            settled,
        }
    }
}

/// Which dead letters a listing shows.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum Show {
    /// Neither replayed nor discarded (the default).
    #[default]
    Open,
    Settled,
    All,
}

/// Which dead letters an action takes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Which {
    /// Every open letter of these event ids (an event failed by two groups has two).
    Events(Vec<String>),
    /// Every open letter.
    AllOpen,
}

/// Why an action took nothing.
#[derive(Debug, thiserror::Error)]
pub enum DeadLetterError {
    #[error("no dead letter with event id {}", .0.join(", "))]
    Unknown(Vec<String>),
    #[error("already replayed or discarded: {}", .0.join(", "))]
    AlreadySettled(Vec<String>),
    #[error("no open dead letter")]
    NoneOpen,
    #[error(transparent)]
    Bus(#[from] BusError),
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// The dead letters of one topic's consumer groups.
#[derive(Debug)]
pub struct DeadLetters<'a> {
    store: &'a Store,
    bus: &'a dyn EventBus,
    /// The dead-letter topic.
    topic: String,
}

impl<'a> DeadLetters<'a> {
    /// The dead letters of `topic`'s consumer groups (kept in its `.DLT` twin).
    pub fn new(store: &'a Store, bus: &'a dyn EventBus, topic: &str) -> Self {
        Self {
            store,
            bus,
            topic: dlt_topic(topic),
        }
    }

    /// The dead-letter topic.
    pub fn topic(&self) -> &str {
        &self.topic
    }

    /// The letters on the topic (up to [`SCAN`]), each with its settlement.
    async fn read(&self) -> Result<Vec<(Delivered, Option<Settled>)>, DeadLetterError> {
        let letters = self.bus.fetch(&self.topic, SCAN).await?;
        let mut settled = self.store.settled_dead_letters(&self.topic).await?;
        Ok(letters
            .into_iter()
            .map(|d| {
                let s = settled
                    .remove(&(d.partition, d.offset))
                    .filter(|(id, _)| *id == d.message.event_id)
                    .map(|(_, s)| s);
                (d, s)
            })
            .collect())
    }

    /// Up to `limit` letters that `show` selects, oldest first, and how many it selects in all.
    pub async fn list(
        &self,
        show: Show,
        limit: usize,
    ) -> Result<(Vec<DeadLetter>, usize), DeadLetterError> {
        let chosen: Vec<DeadLetter> = self
            .read()
            .await?
            .iter()
            .filter(|(_, s)| match show {
                Show::Open => s.is_none(),
                Show::Settled => s.is_some(),
                Show::All => true,
            })
            .map(|(d, s)| DeadLetter::of(d, s.clone()))
            .collect();
        let total = chosen.len();
        Ok((chosen.into_iter().take(limit).collect(), total))
    }

    /// Every letter, full, of one event id (for `firstcome dlt show`).
    pub async fn messages_of(&self, event_id: &str) -> Result<Vec<Message>, DeadLetterError> {
        Ok(self
            .read()
            .await?
            .into_iter()
            .filter(|(d, _)| d.message.event_id == event_id)
            .map(|(d, _)| d.message)
            .collect())
    }

    /// The open letters `which` names; an error naming the ids that match none, or only
    /// settled ones.
    async fn chosen(&self, which: &Which) -> Result<Vec<Delivered>, DeadLetterError> {
        let letters = self.read().await?;
        let open = |(d, s): &(Delivered, Option<Settled>)| s.is_none().then(|| d.clone());
        let chosen: Vec<Delivered> = match which {
            Which::AllOpen => letters.iter().filter_map(open).collect(),
            Which::Events(ids) => {
                let wanted: HashSet<&str> = ids.iter().map(String::as_str).collect();
                let mine: Vec<_> = letters
                    .iter()
                    .filter(|(d, _)| wanted.contains(d.message.event_id.as_str()))
                    .collect();
                let found: HashSet<&str> = mine
                    .iter()
                    .map(|(d, _)| d.message.event_id.as_str())
                    .collect();
                let unknown: Vec<String> = ids
                    .iter()
                    .filter(|id| !found.contains(id.as_str()))
                    .map(|id| bounded::escaped(id).into_owned())
                    .collect();
                if !unknown.is_empty() {
                    return Err(DeadLetterError::Unknown(unknown));
                }
                let chosen: Vec<Delivered> = mine.into_iter().filter_map(open).collect();
                let opened: HashSet<&str> =
                    chosen.iter().map(|d| d.message.event_id.as_str()).collect();
                let settled: Vec<String> = ids
                    .iter()
                    .filter(|id| !opened.contains(id.as_str()))
                    .map(|id| bounded::escaped(id).into_owned())
                    .collect();
                if !settled.is_empty() {
                    return Err(DeadLetterError::AlreadySettled(settled));
                }
                chosen
            }
        };
        if chosen.is_empty() {
            return Err(DeadLetterError::NoneOpen);
        }
        Ok(chosen)
    }

    /// Sends the chosen letters back to their original topics, each for the group that failed
    /// it (the other groups handled it before; their marks of it may be gone by now:
    /// `retention.processed_days`). The letters are claimed first (settled as replayed), so
    /// that two operators replaying at once send each letter once; when the bus refuses the
    /// publish, the claim is taken back and the letters stay open. Returns how many.
    pub async fn replay(&self, which: &Which, actor: &str) -> Result<usize, DeadLetterError> {
        let chosen = self.chosen(which).await?;
        let claimed = self.claim(chosen, Settlement::Replayed, actor).await?;
        let mut by_topic: BTreeMap<String, Vec<Message>> = BTreeMap::new();
        for d in &claimed {
            let mut m = d.message.clone();
            let original = m
                .headers
                .get("dlt.original_topic")
                .cloned()
                .unwrap_or_else(|| self.topic.trim_end_matches(DLT_SUFFIX).to_owned());
            let group = m.headers.get("dlt.consumer_group").cloned();
            m.headers.retain(|k, _| !k.starts_with("dlt."));
            if let Some(group) = group {
                m.headers
                    .insert(firstcome_bus::REPLAYED_FOR_GROUP.into(), group);
            }
            m.headers.insert(
                "replayed_from".into(),
                format!("{}[{}]@{}", self.topic, d.partition, d.offset),
            );
            by_topic.entry(original).or_default().push(m);
        }
        for (topic, messages) in &by_topic {
            if let Err(e) = self.bus.publish(topic, messages).await {
                // A topic published before this one stays replayed: its groups handle a second
                // replay of the same letters as already handled.
                let places: Vec<LetterPlace> = claimed.iter().map(|d| self.place(d)).collect();
                self.store.unsettle_dead_letters(&places).await?;
                return Err(e.into());
            }
        }
        self.record(&claimed, Settlement::Replayed, actor).await;
        Ok(claimed.len())
    }

    /// Settles the chosen letters as discarded: nobody handles them. Returns how many.
    pub async fn discard(&self, which: &Which, actor: &str) -> Result<usize, DeadLetterError> {
        let chosen = self.chosen(which).await?;
        let claimed = self.claim(chosen, Settlement::Discarded, actor).await?;
        self.record(&claimed, Settlement::Discarded, actor).await;
        Ok(claimed.len())
    }

    fn place(&self, d: &Delivered) -> LetterPlace {
        LetterPlace {
            topic: self.topic.clone(),
            partition: d.partition,
            offset: d.offset,
        }
    }

    /// Settles the chosen letters that nobody settled meanwhile; returns those. None left (all
    /// settled by someone else since they were read): [`DeadLetterError::AlreadySettled`].
    async fn claim(
        &self,
        chosen: Vec<Delivered>,
        outcome: Settlement,
        actor: &str,
    ) -> Result<Vec<Delivered>, DeadLetterError> {
        let places: Vec<(LetterPlace, String)> = chosen
            .iter()
            .map(|d| (self.place(d), d.message.event_id.clone()))
            .collect();
        let settled = Settled {
            outcome,
            actor: actor.to_owned(),
            at_ms: now_ms(),
        };
        let claimed = self.store.settle_dead_letters(&places, &settled).await?;
        if claimed.is_empty() {
            let ids = chosen
                .iter()
                .map(|d| bounded::escaped(&d.message.event_id).into_owned())
                .collect();
            return Err(DeadLetterError::AlreadySettled(ids));
        }
        let mut chosen: Vec<Option<Delivered>> = chosen.into_iter().map(Some).collect();
        Ok(claimed
            .into_iter()
            .filter_map(|i| chosen[i].take())
            .collect())
    }

    /// Records a settlement in the audit log.
    async fn record(&self, settled: &[Delivered], outcome: Settlement, actor: &str) {
        let ids: Vec<&str> = settled
            .iter()
            .map(|d| d.message.event_id.as_str())
            .collect();
        let action = match outcome {
            Settlement::Replayed => "dead_letter.replay",
            Settlement::Discarded => "dead_letter.discard",
        };
        let detail =
            bounded::cut(&format!("{} events: {}", ids.len(), ids.join(" ")), 1000).into_owned();
        audit::record(
            self.store,
            audit::Change {
                actor,
                action,
                target: &self.topic,
                before: None,
                after: None,
                detail: Some(detail),
            },
        )
        .await;
    }
}
