//! Retry and dead-letter policy, shared by every bus: a handler is tried `1 + max_retries`
//! times with a fixed back-off between tries; a permanent error skips the retries. What is
//! left is dead-lettered with headers naming its origin and the last error.

use std::time::Duration;

use tokio_util::sync::CancellationToken;

use super::{Delivered, Handler, HandlerError, Message};
use firstcome_core::bounded;
use firstcome_core::clock::now_ms;

/// Longest `dlt.error` of a [`minimal`] dead letter, in bytes.
const MINIMAL_ERROR_BYTES: usize = 256;

/// Fixed back-off between tries of one event.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RetryPolicy {
    pub backoff: Duration,
    pub max_retries: u32,
}

impl Default for RetryPolicy {
    /// 1 s, 3 retries: the replaced system's policy.
    fn default() -> Self {
        Self {
            backoff: Duration::from_secs(1),
            max_retries: 3,
        }
    }
}

/// How delivering one event ended.
#[derive(Debug, PartialEq, Eq)]
pub enum Outcome {
    Handled,
    /// Every try failed (or one failed permanently): send this message to the DLT.
    DeadLetter(Message),
    /// Shutdown came during the back-off: the event is neither handled nor dead-lettered,
    /// and its offset must not be stored.
    Interrupted,
}

/// Tries the handler under the policy.
pub async fn deliver(
    handler: &dyn Handler,
    event: &Delivered,
    group: &str,
    policy: RetryPolicy,
    shutdown: &CancellationToken,
) -> Outcome {
    deliver_after(handler, event, group, policy, shutdown, None).await
}

/// Hands the handler one batch ([`Handler::handle_batch`]) from the front of `events`, as far
/// as the next dead letter replayed for another group; returns how many of the first events
/// count as handled, and the error of the next one when its first try failed (retry it with
/// [`retry`]). Fewer than all without an error: the handler ended the batch early (its time
/// budget), or the events after the handled ones are replays for another group; call again
/// with the rest. Replays for another group at the front count as handled without a call.
pub async fn try_batch(
    handler: &dyn Handler,
    events: &[Delivered],
    group: &str,
) -> (usize, Option<HandlerError>) {
    // A replayed dead letter is for the group that failed it: the others handled it before,
    // and may have forgotten that by now (retention).
    let others = events
        .iter()
        .take_while(|e| replayed_for_another(e, group))
        .count();
    if others > 0 {
        return (others, None);
    }
    let end = events
        .iter()
        .position(|e| replayed_for_another(e, group))
        .unwrap_or(events.len());
    let (handled, failed) = handler.handle_batch(&events[..end]).await;
    let handled = handled.min(end);
    if handled > 0 {
        metrics::counter!("firstcome_events_handled_total", "group" => group.to_owned())
            .increment(handled as u64);
    }
    (handled, failed.filter(|_| handled < end))
}

/// Retries an event whose first try (in [`try_batch`]) failed with `first`, under the policy:
/// a permanent error dead-letters it at once, a retryable one is tried again after each
/// back-off until the policy's retries are spent.
pub async fn retry(
    handler: &dyn Handler,
    event: &Delivered,
    group: &str,
    policy: RetryPolicy,
    shutdown: &CancellationToken,
    first: HandlerError,
) -> Outcome {
    deliver_after(handler, event, group, policy, shutdown, Some(first)).await
}

/// The least time between two tries of an event its handler was not ready for.
const NOT_READY_WAIT: Duration = Duration::from_millis(100);

/// The header a replayed dead letter carries: the consumer group it is replayed for.
pub const REPLAYED_FOR_GROUP: &str = "replayed_for_group";

/// Whether `event` is a dead letter replayed for another group than `group`.
pub(crate) fn replayed_for_another(event: &Delivered, group: &str) -> bool {
    event
        .message
        .headers
        .get(REPLAYED_FOR_GROUP)
        .is_some_and(|g| g != group)
}

/// [`deliver`], when the first try already happened and failed with `first`.
async fn deliver_after(
    handler: &dyn Handler,
    event: &Delivered,
    group: &str,
    policy: RetryPolicy,
    shutdown: &CancellationToken,
    mut first: Option<HandlerError>,
) -> Outcome {
    let mut attempts = 0;
    loop {
        attempts += 1;
        let result = match first.take() {
            Some(e) => Err(e),
            None => handler.handle(event).await,
        };
        let error = match result {
            Ok(()) => {
                metrics::counter!("firstcome_events_handled_total", "group" => group.to_owned())
                    .increment(1);
                return Outcome::Handled;
            }
            // Bounded before it is logged or stored, whatever the handler put in it.
            Err(e) => e.bounded(),
        };
        if let HandlerError::NotReady(reason) = &error {
            // Not an attempt: the handler never ran the event.
            attempts -= 1;
            metrics::counter!("firstcome_events_waiting_total", "group" => group.to_owned())
                .increment(1);
            tracing::debug!(group, event_id = %event.message.event_id, %reason, "waiting");
            tokio::select! {
                () = tokio::time::sleep(policy.backoff.max(NOT_READY_WAIT)) => {}
                () = shutdown.cancelled() => return Outcome::Interrupted,
            }
            continue;
        }
        let permanent = matches!(error, HandlerError::Permanent(_));
        if permanent || attempts > policy.max_retries {
            tracing::warn!(group, event_id = %event.message.event_id, attempts, %error,
                "event goes to the dead-letter topic");
            metrics::counter!("firstcome_events_dead_lettered_total", "group" => group.to_owned())
                .increment(1);
            return Outcome::DeadLetter(dead_letter(event, group, &error, attempts));
        }
        metrics::counter!("firstcome_events_retried_total", "group" => group.to_owned())
            .increment(1);
        tracing::debug!(group, event_id = %event.message.event_id, attempts, %error, "retrying");
        tokio::select! {
            () = tokio::time::sleep(policy.backoff) => {}
            () = shutdown.cancelled() => return Outcome::Interrupted,
        }
    }
}

/// The dead-letter copy of an event: the same id, key and payload, plus headers that say where
/// it came from and why it failed.
pub fn dead_letter(event: &Delivered, group: &str, error: &HandlerError, attempts: u32) -> Message {
    let mut message = event.message.clone();
    let h = &mut message.headers;
    h.insert("dlt.original_topic".into(), event.topic.clone());
    h.insert("dlt.original_partition".into(), event.partition.to_string());
    h.insert("dlt.original_offset".into(), event.offset.to_string());
    h.insert(
        "dlt.original_timestamp".into(),
        event.timestamp_ms.to_string(),
    );
    h.insert("dlt.consumer_group".into(), group.to_owned());
    h.insert("dlt.error".into(), bounded::error_text(error.to_string()));
    h.insert("dlt.attempts".into(), attempts.to_string());
    h.insert("dlt.failed_at".into(), now_ms().to_string());
    message
}

/// The smallest dead letter that still lets an operator find and replay the event: its id, key
/// and payload, where it came from, and the first bytes of the error. Written when the full
/// dead letter is refused (a store or broker limit), so that the consumer group moves on
/// instead of retrying a write that cannot succeed. Counted in
/// `firstcome_dead_letters_minimal_total`.
pub fn minimal(full: &Message) -> Message {
    const KEPT: [&str; 6] = [
        "dlt.original_topic",
        "dlt.original_partition",
        "dlt.original_offset",
        "dlt.consumer_group",
        "dlt.attempts",
        "dlt.failed_at",
    ];
    let mut headers: std::collections::BTreeMap<String, String> = KEPT
        .iter()
        .filter_map(|k| full.headers.get(*k).map(|v| ((*k).to_owned(), v.clone())))
        .collect();
    let error = full.headers.get("dlt.error").map_or("", String::as_str);
    headers.insert(
        "dlt.error".into(),
        bounded::cut(error, MINIMAL_ERROR_BYTES).into_owned(),
    );
    headers.insert("dlt.minimal".into(), "true".into());
    metrics::counter!("firstcome_dead_letters_minimal_total").increment(1);
    Message {
        event_id: full.event_id.clone(),
        key: full.key.clone(),
        payload: full.payload.clone(),
        headers,
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicU32, Ordering};

    use async_trait::async_trait;

    use super::*;

    #[derive(Debug)]
    struct FailTimes(u32, AtomicU32, bool);

    #[async_trait]
    impl Handler for FailTimes {
        async fn handle(&self, _: &Delivered) -> Result<(), HandlerError> {
            let n = self.1.fetch_add(1, Ordering::SeqCst);
            if n < self.0 {
                if self.2 {
                    return Err(HandlerError::Permanent("bad".into()));
                }
                return Err(HandlerError::Retryable("down".into()));
            }
            Ok(())
        }
    }

    fn event() -> Delivered {
        Delivered {
            topic: "t".into(),
            partition: 0,
            offset: 7,
            timestamp_ms: 1,
            message: Message {
                event_id: "e".into(),
                ..Message::default()
            },
        }
    }

    const FAST: RetryPolicy = RetryPolicy {
        backoff: Duration::from_millis(1),
        max_retries: 3,
    };

    #[tokio::test]
    async fn three_failures_then_success_is_handled() {
        let h = FailTimes(3, AtomicU32::new(0), false);
        let out = deliver(&h, &event(), "g", FAST, &CancellationToken::new()).await;
        assert_eq!(out, Outcome::Handled);
        assert_eq!(h.1.load(Ordering::SeqCst), 4);
    }

    #[tokio::test]
    async fn four_failures_dead_letter_with_headers() {
        let h = FailTimes(4, AtomicU32::new(0), false);
        let Outcome::DeadLetter(m) =
            deliver(&h, &event(), "g", FAST, &CancellationToken::new()).await
        else {
            panic!("expected a dead letter");
        };
        assert_eq!(h.1.load(Ordering::SeqCst), 4);
        assert_eq!(m.headers["dlt.original_offset"], "7");
        assert_eq!(m.headers["dlt.consumer_group"], "g");
        assert_eq!(m.headers["dlt.attempts"], "4");
        assert!(m.headers["dlt.error"].contains("down"));
    }

    #[derive(Debug)]
    struct Huge;

    #[async_trait]
    impl Handler for Huge {
        async fn handle(&self, _: &Delivered) -> Result<(), HandlerError> {
            Err(HandlerError::Permanent("é".repeat(100_000)))
        }
    }

    #[tokio::test]
    async fn a_huge_error_is_cut_before_it_is_dead_lettered() {
        let Outcome::DeadLetter(m) =
            deliver(&Huge, &event(), "g", FAST, &CancellationToken::new()).await
        else {
            panic!("expected a dead letter");
        };
        let error = &m.headers["dlt.error"];
        assert!(error.len() <= bounded::MAX_ERROR_BYTES, "{}", error.len());
        assert!(error.contains("[cut "), "{error}");
        let small = minimal(&m);
        assert!(small.headers["dlt.error"].len() <= MINIMAL_ERROR_BYTES);
        assert_eq!(small.headers["dlt.minimal"], "true");
        assert_eq!(small.headers["dlt.original_offset"], "7");
        assert_eq!((small.event_id, small.payload), (m.event_id, m.payload));
    }

    /// Fails the events whose id is in `bad` (permanently when `permanent`), handles the rest
    /// in batches, and records every call.
    #[derive(Debug, Default)]
    struct Batches {
        bad: Vec<&'static str>,
        permanent: bool,
        batches: std::sync::Mutex<Vec<Vec<String>>>,
        singles: std::sync::Mutex<Vec<String>>,
    }

    #[async_trait]
    impl Handler for Batches {
        async fn handle(&self, e: &Delivered) -> Result<(), HandlerError> {
            self.singles
                .lock()
                .unwrap()
                .push(e.message.event_id.clone());
            self.fails(e)
        }

        async fn handle_batch(&self, events: &[Delivered]) -> (usize, Option<HandlerError>) {
            let ids = events.iter().map(|e| e.message.event_id.clone()).collect();
            self.batches.lock().unwrap().push(ids);
            for (i, e) in events.iter().enumerate() {
                if let Err(error) = self.fails(e) {
                    return (i, Some(error));
                }
            }
            (events.len(), None)
        }
    }

    impl Batches {
        fn fails(&self, e: &Delivered) -> Result<(), HandlerError> {
            if !self.bad.contains(&e.message.event_id.as_str()) {
                Ok(())
            } else if self.permanent {
                Err(HandlerError::Permanent("bad".into()))
            } else {
                Err(HandlerError::Retryable("down".into()))
            }
        }
    }

    fn events(ids: &[&str]) -> Vec<Delivered> {
        ids.iter()
            .map(|id| {
                let mut e = event();
                e.message.event_id = (*id).to_owned();
                e
            })
            .collect()
    }

    #[tokio::test]
    async fn a_replayed_dead_letter_reaches_only_the_group_it_is_replayed_for() {
        let h = Batches::default();
        let mut all = events(&["a", "b", "c", "d"]);
        all[1]
            .message
            .headers
            .insert(REPLAYED_FOR_GROUP.into(), "other".into());
        all[3]
            .message
            .headers
            .insert(REPLAYED_FOR_GROUP.into(), "g".into());
        // a; then b, another group's, without a call; then c and d together.
        assert_eq!(try_batch(&h, &all, "g").await, (1, None));
        assert_eq!(try_batch(&h, &all[1..], "g").await, (1, None));
        assert_eq!(try_batch(&h, &all[2..], "g").await, (2, None));
        let seen = h.batches.lock().unwrap().clone();
        assert_eq!(seen, [vec!["a"], vec!["c", "d"]], "b is not this group's");
    }

    #[tokio::test]
    async fn a_batch_stops_at_a_failure_whose_retries_follow_alone() {
        let h = Batches {
            bad: vec!["c"],
            ..Batches::default()
        };
        let all = events(&["a", "b", "c", "d", "e"]);
        let (handled, failed) = try_batch(&h, &all, "g").await;
        assert_eq!(handled, 2);
        let never = CancellationToken::new();
        let out = retry(&h, &all[2], "g", FAST, &never, failed.unwrap()).await;
        assert!(matches!(out, Outcome::DeadLetter(ref m) if m.headers["dlt.attempts"] == "4"));
        // The batch's try was the first; three retries alone.
        assert_eq!(*h.singles.lock().unwrap(), ["c", "c", "c"]);

        let h = Batches {
            bad: vec!["a"],
            permanent: true,
            ..Batches::default()
        };
        let (handled, failed) = try_batch(&h, &events(&["a", "b"]), "g").await;
        assert_eq!(handled, 0);
        let out = retry(&h, &all[0], "g", FAST, &never, failed.unwrap()).await;
        assert!(matches!(out, Outcome::DeadLetter(ref m) if m.headers["dlt.attempts"] == "1"));
        assert!(h.singles.lock().unwrap().is_empty());
    }

    #[tokio::test]
    async fn shutdown_during_a_back_off_interrupts_the_retry() {
        let h = Batches {
            bad: vec!["b"],
            ..Batches::default()
        };
        let stop = CancellationToken::new();
        stop.cancel();
        let slow = RetryPolicy {
            backoff: Duration::from_secs(60),
            max_retries: 3,
        };
        let down = HandlerError::Retryable("down".into());
        let out = retry(&h, &events(&["b"])[0], "g", slow, &stop, down).await;
        assert_eq!(out, Outcome::Interrupted);
    }

    #[tokio::test]
    async fn permanent_errors_skip_retries() {
        let h = FailTimes(1, AtomicU32::new(0), true);
        let out = deliver(&h, &event(), "g", FAST, &CancellationToken::new()).await;
        assert!(matches!(out, Outcome::DeadLetter(_)));
        assert_eq!(h.1.load(Ordering::SeqCst), 1);
    }
}
