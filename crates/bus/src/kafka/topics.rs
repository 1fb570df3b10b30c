//! Which of the host's topics the brokers list, as the last metadata read found them.
//!
//! A topic deleted under a live host (an operator's `topic delete`, a migration gone wrong) is
//! reported by readiness, logged and counted; while it is deleted nothing is published to it
//! (brokers that create topics on a produce would give it the wrong partitions, and a broker
//! that acknowledges a produce to a deleted topic loses it): events wait in the outbox, failed
//! events wait in their lanes. When it is listed again its consumer group members start over:
//! they commit the beginning of every partition and rejoin, so the recreated topic is read
//! whole (what a group handled before is dropped by its de-duplication) instead of from
//! positions that belonged to the deleted one. A group's rewind is owed until a member of it
//! on this host has committed it: a member that fails or restarts meanwhile rewinds next time.
//!
//! The topics are read every [`CHECK_EVERY`] and on each readiness check, one read at a time.
//! Publishing stops at the first read that misses a topic, but its listing again counts as a
//! return only after [`MISSES`] reads in a row missed it, and a read that lists no topic at
//! all (a broker just restarted) is ignored: a glitch does not make every group read its topic
//! again. A topic deleted and created again within that time goes unnoticed here.

use std::collections::{BTreeMap, HashMap};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use rdkafka::error::RDKafkaErrorCode;
use rdkafka::types::RDKafkaRespErr;
use tokio::sync::watch;

/// How often the brokers' topic list is read, besides each readiness check.
pub(super) const CHECK_EVERY: Duration = Duration::from_secs(3);

/// Reads in a row that must miss a topic before its listing again is a return.
const MISSES: u32 = 2;

/// How long after a return a group's member on this host still rewinds (when it gets
/// partitions): a member given partitions only much later would otherwise rewind a group that
/// other hosts' members rewound long before, and have it read the whole topic again.
const REWIND_WITHIN: Duration = Duration::from_secs(600);

/// What one metadata read lists of a topic: its partitions, or the error it is listed with.
pub(super) type Listed = Result<Vec<i32>, RDKafkaRespErr>;

/// One known topic.
#[derive(Debug, Default)]
struct Presence {
    /// Reads in a row that did not list it (or listed it as unknown, or without partitions):
    /// from one on it is taken as deleted and nothing is sent to it; after [`MISSES`] its
    /// listing again is a return. A topic listed with another error (no leader, say) is
    /// reported but not missed: librdkafka holds its messages until the error clears.
    misses: u32,
    /// What the last read found wrong with it (logged when this changes).
    problem: Option<String>,
    /// How many times it was listed again after it had been deleted.
    returns: u64,
    /// When it was last listed again after it had been deleted.
    returned_at: Option<Instant>,
    /// Its partitions at the last read that listed it.
    partitions: Vec<i32>,
}

/// The host's topics and what the brokers last said of them.
#[derive(Debug)]
pub(super) struct TopicWatch {
    known: Mutex<BTreeMap<String, Presence>>,
    /// Bumped whenever a deleted topic is listed again; members wait on it.
    returned: watch::Sender<u64>,
    /// The returns of a topic that a group's member on this host rewound for, by (group,
    /// topic); a group is owed a rewind while its topic's returns are past this.
    rewound: Mutex<HashMap<(String, String), u64>>,
    /// Held across a read and its record, so that reads are recorded in the order they ran.
    pub(super) reading: tokio::sync::Mutex<()>,
}

impl Default for TopicWatch {
    fn default() -> Self {
        Self {
            known: Mutex::default(),
            returned: watch::Sender::new(0),
            rewound: Mutex::default(),
            reading: tokio::sync::Mutex::default(),
        }
    }
}

impl TopicWatch {
    /// Adds topics the host created or found.
    pub(super) fn know(&self, topics: impl IntoIterator<Item = String>) {
        let mut known = self.known.lock().unwrap();
        for topic in topics {
            known.entry(topic).or_default();
        }
    }

    /// Whether the last read missed `topic`.
    pub(super) fn is_deleted(&self, topic: &str) -> bool {
        self.known
            .lock()
            .unwrap()
            .get(topic)
            .is_some_and(|p| p.misses > 0)
    }

    /// How many times `topic` came back after it was deleted (0 for an unknown topic), if
    /// the last time was within [`REWIND_WITHIN`].
    fn recent_returns(&self, topic: &str) -> u64 {
        self.known.lock().unwrap().get(topic).map_or(0, |p| {
            if p.returned_at.is_some_and(|at| at.elapsed() < REWIND_WITHIN) {
                p.returns
            } else {
                0
            }
        })
    }

    /// The returns of `topic` that `group` still owes a rewind for, if any: a group owes one
    /// until a member of it on this host has committed it, for [`REWIND_WITHIN`].
    pub(super) fn rewind_due(&self, group: &str, topic: &str) -> Option<u64> {
        let returns = self.recent_returns(topic);
        if returns == 0 {
            return None;
        }
        let rewound = self.rewound.lock().unwrap();
        let done = rewound
            .get(&(group.to_owned(), topic.to_owned()))
            .copied()
            .unwrap_or(0);
        (returns > done).then_some(returns)
    }

    /// Notes that `group` rewound over `topic`'s returns up to `returns`.
    pub(super) fn rewound(&self, group: &str, topic: &str, returns: u64) {
        let mut rewound = self.rewound.lock().unwrap();
        let done = rewound
            .entry((group.to_owned(), topic.to_owned()))
            .or_default();
        *done = (*done).max(returns);
    }

    /// `topic`'s partitions as last listed.
    pub(super) fn partitions_of(&self, topic: &str) -> Vec<i32> {
        self.known
            .lock()
            .unwrap()
            .get(topic)
            .map(|p| p.partitions.clone())
            .unwrap_or_default()
    }

    /// A receiver that wakes whenever a deleted topic is listed again.
    pub(super) fn subscribe(&self) -> watch::Receiver<u64> {
        self.returned.subscribe()
    }

    /// Records one read of the brokers' metadata (`listed` by topic name): logs each topic
    /// that went missing or came back, sets `firstcome_kafka_topics_missing`, wakes the members
    /// of deleted topics that came back, and returns what is wrong, a sentence per topic.
    /// A read that lists no topic at all changes nothing.
    pub(super) fn record(&self, listed: &BTreeMap<String, Listed>) -> Vec<String> {
        let mut problems = Vec::new();
        let mut came_back = false;
        {
            let mut known = self.known.lock().unwrap();
            if listed.is_empty() {
                return known.values().filter_map(|p| p.problem.clone()).collect();
            }
            for (topic, presence) in known.iter_mut() {
                let (problem, missed) = problem(topic, listed.get(topic));
                match (&problem, &presence.problem) {
                    (Some(reason), None) => {
                        tracing::error!(%topic, %reason, "a Kafka topic is missing");
                    }
                    (None, Some(_)) => tracing::info!(%topic, "the Kafka topic is back"),
                    _ => {}
                }
                if presence.misses >= MISSES && !missed {
                    tracing::warn!(
                        %topic,
                        "the Kafka topic was created again: its consumer groups read it from its \
                         beginning"
                    );
                    presence.returns += 1;
                    presence.returned_at = Some(Instant::now());
                    came_back = true;
                }
                presence.misses = if missed { presence.misses + 1 } else { 0 };
                presence.problem.clone_from(&problem);
                if let Some(Ok(partitions)) = listed.get(topic) {
                    presence.partitions.clone_from(partitions);
                }
                problems.extend(problem);
            }
        }
        metrics::gauge!("firstcome_kafka_topics_missing").set(problems.len() as f64);
        if came_back {
            self.returned.send_modify(|n| *n += 1);
        }
        problems
    }
}

/// What is wrong with one of the host's topics, as the cluster's metadata lists it (`None`
/// when it is not listed), if anything, and whether it is missed (not there: deleted).
fn problem(topic: &str, listed: Option<&Listed>) -> (Option<String>, bool) {
    let what = if topic.ends_with(".DLT") {
        "failed events cannot be dead-lettered (their lanes wait)"
    } else {
        "events wait in the outbox"
    };
    match listed {
        Some(Ok(partitions)) if !partitions.is_empty() => (None, false),
        None | Some(Ok(_)) | Some(Err(RDKafkaRespErr::RD_KAFKA_RESP_ERR_UNKNOWN_TOPIC_OR_PART)) => {
            (
                Some(format!(
                    "topic {topic} does not exist on the brokers (deleted?): {what} until it is \
                 created again"
                )),
                true,
            )
        }
        Some(Err(error)) => (
            Some(format!(
                "topic {topic}: {}: {what}",
                RDKafkaErrorCode::from(*error)
            )),
            false,
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read(listed: &[(&str, Listed)]) -> BTreeMap<String, Listed> {
        listed
            .iter()
            .map(|(t, l)| ((*t).to_owned(), l.clone()))
            .collect()
    }

    #[test]
    fn a_topic_that_comes_back_is_owed_a_rewind_by_each_group_once() {
        let watch = TopicWatch::default();
        watch.know(["t".to_owned(), "t.DLT".to_owned()]);
        let mut woken = watch.subscribe();
        let both = read(&[("t", Ok(vec![0, 1])), ("t.DLT", Ok(vec![0, 1]))]);
        assert!(watch.record(&both).is_empty());
        assert_eq!(watch.partitions_of("t"), vec![0, 1]);

        // Missed once: reported and nothing sent to it, but its return would be no rewind.
        let only_dlt = read(&[("t.DLT", Ok(vec![0, 1]))]);
        let problems = watch.record(&only_dlt);
        assert_eq!(problems.len(), 1);
        assert!(
            problems[0].contains("topic t does not exist"),
            "{problems:?}"
        );
        assert!(watch.is_deleted("t") && !watch.is_deleted("t.DLT"));
        assert!(watch.record(&both).is_empty());
        assert!(!watch.is_deleted("t"));
        assert_eq!(
            watch.rewind_due("history", "t"),
            None,
            "a glitch is no return"
        );

        // A read listing nothing at all (a broker just restarted) changes nothing.
        assert!(watch.record(&BTreeMap::new()).is_empty());
        assert!(!watch.is_deleted("t"));

        // Missed twice (once listed as unknown), then listed again: a return.
        watch.record(&only_dlt);
        let unknown = Err(RDKafkaRespErr::RD_KAFKA_RESP_ERR_UNKNOWN_TOPIC_OR_PART);
        assert_eq!(
            watch
                .record(&read(&[("t", unknown), ("t.DLT", Ok(vec![0]))]))
                .len(),
            1
        );
        assert!(!woken.has_changed().unwrap());
        let grown = read(&[("t", Ok(vec![0, 1, 2])), ("t.DLT", Ok(vec![0]))]);
        assert!(watch.record(&grown).is_empty());
        assert_eq!(watch.partitions_of("t"), vec![0, 1, 2]);
        assert!(woken.has_changed().unwrap());
        woken.mark_unchanged();
        watch.record(&grown);
        assert!(!woken.has_changed().unwrap(), "listed twice is one return");

        // Each group owes the rewind until it is done; the .DLT owes none.
        assert_eq!(watch.rewind_due("history", "t"), Some(1));
        assert_eq!(watch.rewind_due("stats", "t"), Some(1));
        assert_eq!(watch.rewind_due("history", "t.DLT"), None);
        watch.rewound("history", "t", 1);
        assert_eq!(watch.rewind_due("history", "t"), None);
        assert_eq!(watch.rewind_due("stats", "t"), Some(1));

        // Long after the return, a member that only now gets partitions rewinds nothing.
        if let Some(long_ago) = Instant::now().checked_sub(REWIND_WITHIN) {
            watch
                .known
                .lock()
                .unwrap()
                .get_mut("t")
                .unwrap()
                .returned_at = Some(long_ago);
            assert_eq!(watch.rewind_due("stats", "t"), None);
        }
    }

    #[test]
    fn an_error_is_named_and_is_no_deletion() {
        let watch = TopicWatch::default();
        watch.know(["t.DLT".to_owned()]);
        let no_leader = Err(RDKafkaRespErr::RD_KAFKA_RESP_ERR_LEADER_NOT_AVAILABLE);
        for _ in 0..MISSES {
            let problems = watch.record(&read(&[("t.DLT", no_leader.clone())]));
            assert!(
                problems[0].contains("cannot be dead-lettered"),
                "{problems:?}"
            );
        }
        assert!(!watch.is_deleted("t.DLT"), "librdkafka waits for a leader");
        watch.record(&read(&[("t.DLT", Ok(vec![0]))]));
        assert_eq!(
            watch.rewind_due("history", "t.DLT"),
            None,
            "a leader found is no return"
        );
        assert!(!watch.is_deleted("other"));
    }
}
