//! Lanes: within a consumer group, each campaign's events are handled in a lane of their own,
//! so that a slow or failing campaign delays no other campaign's events.
//!
//! A member reads events in the bus's order and hands each to its campaign's lane (named by the
//! [`LANE_HEADER`] header, or the payload's `campaign_id`); a lane is a task that handles its
//! events in order, in batches ([`try_batch`]), under the group's retry and dead-letter policy
//! ([`retry`]), and ends when it has nothing left. Lanes run side by side, so events
//! finish out of the bus's order: the member stores, per partition, the position after the
//! longest run of finished events ([`Lanes::progress`]). An event finished past that position
//! is recorded as processed (by the handler with its writes, or by the bus with the position),
//! so that a redelivery after a crash drops it.
//!
//! A member holds at most [`WINDOW`] unfinished events: a lane that falls that far behind
//! holds the others back again, by design, so that memory stays bounded. At most
//! `busy_lanes` of a member's lanes run their handler at once (a permit per call, not held
//! during a retry's back-off): CPU and plugin memory stay bounded however many campaigns run.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::Arc;

use async_trait::async_trait;
use tokio::sync::{Semaphore, mpsc};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use super::delivery::{Outcome, RetryPolicy, replayed_for_another, retry, try_batch};
use super::{BusError, ConsumerSpec, Delivered, Handler, HandlerError, Message};

/// The header that names an event's lane: its campaign. Written by the outbox on every event.
pub const LANE_HEADER: &str = "campaign_id";

/// Most events a member holds that are read but not finished, over all its lanes.
pub const WINDOW: usize = 5_000;

/// Most events a lane hands its handler at once.
const LANE_BATCH: usize = 500;

/// The lane of an event: its [`LANE_HEADER`], else the `campaign_id` of its JSON payload
/// (events published before the header existed), else the shared lane `""`.
pub fn lane_of(event: &Delivered) -> String {
    match event.message.headers.get(LANE_HEADER) {
        Some(lane) => lane.clone(),
        None => campaign_in(&event.message.payload).unwrap_or_default(),
    }
}

/// The `campaign_id` of an event's JSON envelope, if it has one.
pub fn campaign_in(payload: &str) -> Option<String> {
    #[derive(serde::Deserialize)]
    struct Campaign {
        campaign_id: String,
    }
    serde_json::from_str::<Campaign>(payload)
        .ok()
        .map(|c| c.campaign_id)
}

/// Where a lane's dead letters go.
#[async_trait]
pub trait DeadLetters: Send + Sync {
    /// Writes a dead letter, trying again until the bus acknowledges it; `false` when
    /// `shutdown` came first (the event then stays unfinished and comes again).
    async fn write(&self, message: Message, shutdown: &CancellationToken) -> bool;
}

/// Dead letters published to a dead-letter topic of a bus.
#[derive(Debug)]
pub struct Published<B> {
    pub bus: B,
    /// The dead-letter topic.
    pub topic: String,
    /// The wait between tries.
    pub backoff: std::time::Duration,
}

#[async_trait]
impl<B: super::EventBus> DeadLetters for Published<B> {
    /// Tries until the bus acknowledges the dead letter or shutdown. Once the bus refuses the
    /// message itself (over a broker's `message.max.bytes`, a value too long for a column), the
    /// tries send its [`super::delivery::minimal`] form, so that a letter the bus will never
    /// take does not hold the lane.
    async fn write(&self, mut message: Message, shutdown: &CancellationToken) -> bool {
        let mut minimal = false;
        loop {
            match self
                .bus
                .publish(&self.topic, std::slice::from_ref(&message))
                .await
            {
                Ok(()) => return true,
                Err(e) if !minimal && e.is_refusal() => {
                    tracing::warn!(topic = %self.topic, error = %e, event_id = %message.event_id,
                        "dead letter refused; writing its minimal form");
                    message = super::delivery::minimal(&message);
                    minimal = true;
                    continue;
                }
                Err(e) => {
                    tracing::warn!(topic = %self.topic, error = %e, "dead letter not written; retrying");
                }
            }
            tokio::select! {
                () = tokio::time::sleep(self.backoff) => {}
                () = shutdown.cancelled() => return false,
            }
        }
    }
}

/// What a lane tells its member about one event.
#[derive(Debug)]
struct Finished {
    lane: String,
    partition: i32,
    offset: i64,
    event_id: String,
    /// Handled, rather than dead-lettered.
    handled: bool,
}

/// What a member may store after its lanes moved on.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Progress {
    /// Per partition whose position moved: the offset of the last event of its longest run of
    /// finished events (the position to store is one past it).
    pub positions: Vec<(i32, i64)>,
    /// Ids of the events handled since the last call, in the order they finished (the
    /// events a bus records as processed when its handler does not).
    pub handled: Vec<String>,
}

/// Settings every lane of a member shares.
struct Shared {
    handler: Arc<dyn Handler>,
    group: String,
    retry: RetryPolicy,
    dead_letters: Arc<dyn DeadLetters>,
    stop: CancellationToken,
}

/// The member's handler, each call holding one of `busy_lanes` permits (taken in turn).
#[derive(Debug)]
struct Throttled {
    inner: Arc<dyn Handler>,
    permits: Semaphore,
}

#[async_trait]
impl Handler for Throttled {
    async fn handle(&self, event: &Delivered) -> Result<(), HandlerError> {
        let _permit = self.permits.acquire().await.expect("never closed");
        self.inner.handle(event).await
    }

    async fn handle_batch(&self, events: &[Delivered]) -> (usize, Option<HandlerError>) {
        let _permit = self.permits.acquire().await.expect("never closed");
        self.inner.handle_batch(events).await
    }

    fn records_processed(&self) -> bool {
        self.inner.records_processed()
    }
}

/// A running lane: its inbox and how many of its events are unfinished.
struct Lane {
    inbox: mpsc::UnboundedSender<Delivered>,
    unfinished: usize,
}

/// The lanes of one member of a consumer group.
pub struct Lanes {
    shared: Arc<Shared>,
    lanes: HashMap<String, Lane>,
    tasks: JoinSet<()>,
    finished_tx: mpsc::UnboundedSender<Finished>,
    finished: mpsc::UnboundedReceiver<Finished>,
    /// Per partition, the events read and not yet passed by the position, in the order read,
    /// each with whether it is finished.
    order: HashMap<i32, VecDeque<(i64, bool)>>,
    /// Ids of the events the lanes hold, with how many copies.
    in_flight: HashMap<String, usize>,
    unfinished: usize,
    handled: Vec<String>,
}

impl std::fmt::Debug for Lanes {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Lanes")
            .field("group", &self.shared.group)
            .field("lanes", &self.lanes.len())
            .field("unfinished", &self.unfinished)
            .finish_non_exhaustive()
    }
}

impl Lanes {
    /// Lanes that handle `spec.group`'s events with `handler` under `spec.retry`, at most
    /// `spec.busy_lanes` calls at once, dead-lettering to `dead_letters`; `shutdown` (or
    /// [`Self::stop`]) interrupts their back-offs.
    pub fn new(
        handler: Arc<dyn Handler>,
        spec: &ConsumerSpec,
        dead_letters: Arc<dyn DeadLetters>,
        shutdown: &CancellationToken,
    ) -> Self {
        let (finished_tx, finished) = mpsc::unbounded_channel();
        let handler = Arc::new(Throttled {
            inner: handler,
            permits: Semaphore::new(spec.busy_lanes.max(1)),
        });
        Self {
            shared: Arc::new(Shared {
                handler,
                group: spec.group.clone(),
                retry: spec.retry,
                dead_letters,
                stop: shutdown.child_token(),
            }),
            lanes: HashMap::new(),
            tasks: JoinSet::new(),
            finished_tx,
            finished,
            order: HashMap::new(),
            in_flight: HashMap::new(),
            unfinished: 0,
            handled: Vec::new(),
        }
    }

    /// How many more events the member may read before its lanes finish some.
    pub fn room(&self) -> usize {
        WINDOW.saturating_sub(self.unfinished)
    }

    /// Whether every event read is finished.
    pub fn is_idle(&self) -> bool {
        self.unfinished == 0
    }

    /// Takes events in the order they were read: passes the dead letters replayed for another
    /// group (before anything else: the same event's replay for this group may follow in the
    /// same read), the events the group handled before (`processed`) and a second copy within
    /// the read; hands the rest to their lanes.
    pub fn take(&mut self, events: Vec<Delivered>, processed: &HashSet<String>) {
        let mut seen = HashSet::new();
        for event in events {
            if replayed_for_another(&event, &self.shared.group) {
                self.pass(&event);
                continue;
            }
            let id = event.message.event_id.clone();
            if processed.contains(&id) || !seen.insert(id) {
                self.pass(&event);
            } else {
                self.start(event);
            }
        }
    }

    /// Takes an event that needs nothing (handled before), so that the position moves past it.
    fn pass(&mut self, event: &Delivered) {
        self.order
            .entry(event.partition)
            .or_default()
            .push_back((event.offset, true));
    }

    /// Hands an event to its campaign's lane, starting the lane if it is not running. An event
    /// whose id a lane holds already (the broker sent it again after a rebalance, before the
    /// first copy finished) is passed: the first copy's place holds the position back until it
    /// finishes.
    fn start(&mut self, event: Delivered) {
        if self.in_flight.contains_key(&event.message.event_id) {
            self.pass(&event);
            return;
        }
        *self
            .in_flight
            .entry(event.message.event_id.clone())
            .or_default() += 1;
        self.order
            .entry(event.partition)
            .or_default()
            .push_back((event.offset, false));
        self.unfinished += 1;
        let name = lane_of(&event);
        let lane = match self.lanes.get_mut(&name) {
            Some(lane) => lane,
            None => {
                let (inbox, events) = mpsc::unbounded_channel();
                let (shared, finished) = (self.shared.clone(), self.finished_tx.clone());
                self.tasks
                    .spawn(run_lane(name.clone(), events, shared, finished));
                metrics::gauge!("firstcome_consumer_lanes", "group" => self.shared.group.clone())
                    .increment(1.0);
                self.lanes.entry(name).or_insert(Lane {
                    inbox,
                    unfinished: 0,
                })
            }
        };
        lane.unfinished += 1;
        // The lane's task ends only after its inbox closes, and the inbox stays open while it
        // has unfinished events: the send cannot fail.
        let _ = lane.inbox.send(event);
    }

    /// Waits until a lane finishes an event (forever when none is unfinished). An error when a
    /// lane panicked: its events would never finish, so the member must fail and start again
    /// from its stored position.
    pub async fn next_finished(&mut self) -> Result<(), BusError> {
        if self.unfinished == 0 {
            return std::future::pending().await;
        }
        loop {
            tokio::select! {
                Some(done) = self.finished.recv() => {
                    self.apply(done);
                    return Ok(());
                }
                Some(Err(e)) = self.tasks.join_next(), if !self.tasks.is_empty() => {
                    if e.is_panic() {
                        return Err(BusError::Consume(format!(
                            "a lane of group {} panicked; the member starts again",
                            self.shared.group
                        )));
                    }
                }
                else => return Ok(()),
            }
        }
    }

    /// Takes in what the lanes finished meanwhile, without waiting.
    pub fn collect(&mut self) {
        while let Ok(done) = self.finished.try_recv() {
            self.apply(done);
        }
    }

    fn apply(&mut self, done: Finished) {
        self.unfinished -= 1;
        if let Some(queue) = self.order.get_mut(&done.partition) {
            // Offsets rise in the order read; a partition read again after a rebalance can
            // repeat one, which then finishes in the order read too.
            if let Some(entry) = queue
                .iter_mut()
                .find(|(offset, finished)| *offset == done.offset && !finished)
            {
                entry.1 = true;
            }
        }
        if let Some(copies) = self.in_flight.get_mut(&done.event_id) {
            *copies -= 1;
            if *copies == 0 {
                self.in_flight.remove(&done.event_id);
            }
        }
        if done.handled {
            self.handled.push(done.event_id);
        }
        if let Some(lane) = self.lanes.get_mut(&done.lane) {
            lane.unfinished -= 1;
            if lane.unfinished == 0 {
                // Closing its inbox ends the lane; it comes back with its campaign's next event.
                self.lanes.remove(&done.lane);
                metrics::gauge!("firstcome_consumer_lanes", "group" => self.shared.group.clone())
                    .decrement(1.0);
            }
        }
    }

    /// Where each partition's position may move now, and the events handled since the last
    /// call.
    pub fn progress(&mut self) -> Progress {
        let mut positions = Vec::new();
        for (partition, queue) in &mut self.order {
            let mut last = None;
            while let Some(&(offset, true)) = queue.front() {
                last = Some(offset);
                queue.pop_front();
            }
            if let Some(offset) = last {
                positions.push((*partition, offset));
            }
        }
        self.order.retain(|_, queue| !queue.is_empty());
        positions.sort_unstable();
        Progress {
            positions,
            handled: std::mem::take(&mut self.handled),
        }
    }

    /// Stops the lanes: each ends after the call it is in (a back-off or a dead letter not yet
    /// written ends at once, its event unfinished); returns what they finished.
    pub async fn stop(mut self) -> Progress {
        self.shared.stop.cancel();
        self.close_lanes();
        while self.tasks.join_next().await.is_some() {}
        self.collect();
        self.progress()
    }

    /// Closes every lane's inbox (its task ends after its call) and stops counting it.
    fn close_lanes(&mut self) {
        metrics::gauge!("firstcome_consumer_lanes", "group" => self.shared.group.clone())
            .decrement(self.lanes.len() as f64);
        self.lanes.clear();
    }
}

impl Drop for Lanes {
    /// Lanes dropped without [`Lanes::stop`] (the member failed) are cancelled; their tasks
    /// are aborted with the set.
    fn drop(&mut self) {
        self.shared.stop.cancel();
        self.close_lanes();
    }
}

/// One lane: handles its events in order until its inbox closes or the member stops.
async fn run_lane(
    name: String,
    mut inbox: mpsc::UnboundedReceiver<Delivered>,
    shared: Arc<Shared>,
    finished: mpsc::UnboundedSender<Finished>,
) {
    let mut queue: VecDeque<Delivered> = VecDeque::new();
    loop {
        if queue.is_empty() {
            tokio::select! {
                event = inbox.recv() => match event {
                    Some(event) => queue.push_back(event),
                    None => return,
                },
                () = shared.stop.cancelled() => return,
            }
        }
        while queue.len() < LANE_BATCH {
            match inbox.try_recv() {
                Ok(event) => queue.push_back(event),
                Err(_) => break,
            }
        }
        let batch: Vec<Delivered> = queue.drain(..queue.len().min(LANE_BATCH)).collect();
        let report = |event: &Delivered, handled: bool| {
            finished.send(Finished {
                lane: name.clone(),
                partition: event.partition,
                offset: event.offset,
                event_id: event.message.event_id.clone(),
                handled,
            })
        };
        // What a batch handled is reported before a failed event's retries begin.
        let (handled, failed) = try_batch(&*shared.handler, &batch, &shared.group).await;
        for event in &batch[..handled] {
            if report(event, true).is_err() {
                return;
            }
        }
        let mut done = handled;
        if let Some(error) = failed {
            let event = &batch[handled];
            let policy = shared.retry;
            let handled = match retry(
                &*shared.handler,
                event,
                &shared.group,
                policy,
                &shared.stop,
                error,
            )
            .await
            {
                Outcome::Handled => true,
                Outcome::DeadLetter(message) => {
                    if !shared.dead_letters.write(message, &shared.stop).await {
                        return;
                    }
                    false
                }
                Outcome::Interrupted => return,
            };
            if report(event, handled).is_err() {
                return;
            }
            done += 1;
        }
        if shared.stop.is_cancelled() {
            return;
        }
        // What the handler did not get to goes first next time.
        for event in batch.into_iter().skip(done).rev() {
            queue.push_front(event);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;
    use std::time::{Duration, Instant};

    use super::*;

    /// Sleeps `slow` for the events of lane "a"; fails the events whose id ends in "!"
    /// (permanently) or "?" (for now); records when it handled each event.
    #[derive(Debug, Default)]
    struct Campaigns {
        slow: Duration,
        handled: Mutex<Vec<(String, Instant)>>,
    }

    #[async_trait]
    impl Handler for Campaigns {
        async fn handle(&self, event: &Delivered) -> Result<(), HandlerError> {
            if lane_of(event) == "a" {
                tokio::time::sleep(self.slow).await;
            }
            if event.message.event_id.ends_with('!') {
                return Err(HandlerError::Permanent("refused".into()));
            }
            if event.message.event_id.ends_with('?') {
                return Err(HandlerError::Retryable("later".into()));
            }
            let id = event.message.event_id.clone();
            self.handled.lock().unwrap().push((id, Instant::now()));
            Ok(())
        }
    }

    #[derive(Default)]
    struct Letters(Mutex<Vec<String>>);

    #[async_trait]
    impl DeadLetters for Letters {
        async fn write(&self, message: Message, _: &CancellationToken) -> bool {
            self.0.lock().unwrap().push(message.event_id);
            true
        }
    }

    fn event(campaign: &str, id: &str, partition: i32, offset: i64) -> Delivered {
        let mut message = Message {
            event_id: id.into(),
            ..Message::default()
        };
        message
            .headers
            .insert(LANE_HEADER.into(), campaign.to_owned());
        Delivered {
            topic: "t".into(),
            partition,
            offset,
            timestamp_ms: 0,
            message,
        }
    }

    fn spec(backoff: Duration) -> ConsumerSpec {
        ConsumerSpec {
            group: "g".into(),
            topic: "t".into(),
            retry: RetryPolicy {
                backoff,
                max_retries: 3,
            },
            poll_interval: Duration::from_millis(10),
            busy_lanes: 2,
        }
    }

    fn lanes(handler: Arc<Campaigns>, letters: Arc<Letters>, backoff: Duration) -> Lanes {
        Lanes::new(handler, &spec(backoff), letters, &CancellationToken::new())
    }

    #[tokio::test]
    async fn a_slow_campaign_holds_back_only_its_own_lane_and_the_position() {
        let handler = Arc::new(Campaigns {
            slow: Duration::from_millis(400),
            ..Campaigns::default()
        });
        let letters = Arc::new(Letters::default());
        let mut lanes = lanes(handler.clone(), letters.clone(), Duration::from_millis(1));
        let started = Instant::now();
        lanes.start(event("a", "a1", 0, 1));
        lanes.start(event("b", "b1", 0, 2));
        lanes.pass(&event("b", "b0", 0, 3));
        lanes.start(event("b", "b2!", 0, 4));
        lanes.start(event("b", "b3", 1, 7));
        // A second copy of a1 (a rebalance sent it again) is not handled twice.
        lanes.start(event("a", "a1", 1, 8));
        while lanes.unfinished > 1 {
            lanes.next_finished().await.unwrap();
        }
        assert!(
            started.elapsed() < Duration::from_millis(300),
            "b waited for a"
        );
        let progress = lanes.progress();
        // Partition 0 waits for a1; partition 1 moves, past a1's second copy.
        assert_eq!(progress.positions, [(1, 8)]);
        assert_eq!(progress.handled, ["b1", "b3"]);
        assert_eq!(*letters.0.lock().unwrap(), ["b2!"]);
        lanes.next_finished().await.unwrap();
        let progress = lanes.progress();
        assert_eq!(progress.positions, [(0, 4)]);
        assert_eq!(progress.handled, ["a1"]);
        assert!(lanes.is_idle());
        assert!(lanes.lanes.is_empty(), "idle lanes end");
        assert_eq!(lanes.stop().await, Progress::default());
    }

    #[tokio::test]
    async fn stopping_interrupts_a_back_off_and_reports_what_finished() {
        let mut lanes = lanes(Arc::default(), Arc::default(), Duration::from_secs(60));
        for (offset, id) in [(1, "c1"), (2, "c2?"), (3, "c3")] {
            lanes.start(event("c", id, 0, offset));
        }
        while lanes.handled.is_empty() {
            lanes.next_finished().await.unwrap();
        }
        let started = Instant::now();
        let progress = lanes.stop().await;
        assert!(started.elapsed() < Duration::from_secs(5));
        // c2 waits out its back-off when the lanes stop: it and c3 stay unfinished.
        assert_eq!(progress.positions, [(0, 1)]);
        assert_eq!(progress.handled, ["c1"]);
    }

    #[tokio::test]
    async fn a_replay_for_another_group_is_passed_and_the_same_events_replay_for_this_one_handled()
    {
        let handler = Arc::new(Campaigns::default());
        let mut lanes = lanes(handler.clone(), Arc::default(), Duration::from_millis(1));
        let mut theirs = event("b", "e", 0, 1);
        theirs
            .message
            .headers
            .insert(crate::REPLAYED_FOR_GROUP.into(), "other".into());
        let mut ours = event("b", "e", 0, 2);
        ours.message
            .headers
            .insert(crate::REPLAYED_FOR_GROUP.into(), "g".into());
        let done = HashSet::from(["old".to_owned()]);
        lanes.take(vec![theirs, ours, event("b", "old", 0, 3)], &done);
        lanes.next_finished().await.unwrap();
        assert!(lanes.is_idle());
        let progress = lanes.progress();
        assert_eq!(progress.positions, [(0, 3)]);
        assert_eq!(
            progress.handled,
            ["e"],
            "the other group's replay is not marked for this one"
        );
        assert_eq!(handler.handled.lock().unwrap().len(), 1);
    }

    #[tokio::test]
    async fn at_most_busy_lanes_handlers_run_at_once() {
        #[derive(Debug, Default)]
        struct Counting {
            now: std::sync::atomic::AtomicUsize,
            most: std::sync::atomic::AtomicUsize,
        }
        #[async_trait]
        impl Handler for Counting {
            async fn handle(&self, _: &Delivered) -> Result<(), HandlerError> {
                use std::sync::atomic::Ordering::SeqCst;
                let now = self.now.fetch_add(1, SeqCst) + 1;
                self.most.fetch_max(now, SeqCst);
                tokio::time::sleep(Duration::from_millis(50)).await;
                self.now.fetch_sub(1, SeqCst);
                Ok(())
            }
        }
        let handler = Arc::new(Counting::default());
        let spec = spec(Duration::from_millis(1));
        let letters: Arc<Letters> = Arc::default();
        let mut lanes = Lanes::new(handler.clone(), &spec, letters, &CancellationToken::new());
        let events = (0..5)
            .map(|i| event(&format!("c{i}"), &format!("e{i}"), 0, i))
            .collect();
        lanes.take(events, &HashSet::new());
        while !lanes.is_idle() {
            lanes.next_finished().await.unwrap();
        }
        let most = handler.most.load(std::sync::atomic::Ordering::SeqCst);
        assert_eq!(most, spec.busy_lanes, "five lanes, two busy at once");
    }

    #[tokio::test]
    async fn a_lane_that_panics_fails_the_member() {
        #[derive(Debug)]
        struct Panics;
        #[async_trait]
        impl Handler for Panics {
            async fn handle(&self, _: &Delivered) -> Result<(), HandlerError> {
                panic!("a bug in a handler");
            }
        }
        let letters: Arc<Letters> = Arc::default();
        let never = CancellationToken::new();
        let spec = spec(Duration::from_secs(1));
        let mut lanes = Lanes::new(Arc::new(Panics), &spec, letters, &never);
        lanes.take(vec![event("a", "a1", 0, 1)], &HashSet::new());
        let failed = tokio::time::timeout(Duration::from_secs(5), lanes.next_finished()).await;
        assert!(
            matches!(failed, Ok(Err(BusError::Consume(_)))),
            "{failed:?}"
        );
    }

    #[test]
    fn an_event_without_the_header_rides_its_payloads_campaign() {
        let mut e = event("x", "e", 0, 1);
        e.message.headers.clear();
        e.message.payload = r#"{"event_id":"e","campaign_id":"summer","payload":{}}"#.into();
        assert_eq!(lane_of(&e), "summer");
        e.message.payload = "not json".into();
        assert_eq!(lane_of(&e), "");
    }
}
