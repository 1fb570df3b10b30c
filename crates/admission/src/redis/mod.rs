//! The Redis admission queue, on one Redis server or a Redis Cluster ([`Target`]).
//!
//! A campaign's state is split into buckets (`shards` in its file, default 1; [`layout`]). A
//! bucket's keys share one hash tag, so each bucket lives in one Redis Cluster slot (every
//! script call is atomic on one primary): `meta` (hash: stock, window, admitted, seq),
//! `users` (hash: user -> position, the per-user guard), `queue` (a stream read by the
//! consumer group [`ISSUER_GROUP`]; XACK + XDEL after commit, XAUTOCLAIM for items a dead host
//! left pending) and `ledger` (the grants of stock the bucket gave or received). A user always
//! maps to one bucket ([`bucket_of`]), so de-duplication stays one atomic script.
//!
//! **Stock between buckets.** Each bucket starts with an even share of the capacity. A bucket
//! that sells out asks the others, one at a time, for some of theirs: the giver takes it off
//! its stock and records the grant (`give.lua`), then the receiver counts it by the grant's id
//! (`receive.lua`). A host dying between the two leaves the grant in the giver's ledger, and
//! the next sync of the campaign counts it in the receiver (`sync.lua`). So stock moves but
//! never appears: the buckets never admit more than `capacity` between them, and a bucket
//! answers sold out only once no other bucket had any to spare.
//!
//! Admission is one Lua script called with EVALSHA; it is loaded on first use and again when
//! Redis answers NOSCRIPT (after a restart). Requests of one bucket that arrive while its
//! previous call is in flight go together in the next call (a group commit, as the embedded
//! queue's record does): one script call admits them all, in arrival order, so a storm costs
//! Redis and this host one round trip per batch instead of per request.

mod connection;
pub mod layout;

use std::collections::HashMap;
use std::sync::atomic::{AtomicI64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use redis::{AsyncCommands, Script, Value};
use tokio::sync::oneshot;

use super::{
    Admission, AdmissionError, Admit, Floor, ISSUER_GROUP, QueueCounts, QueueItem, Result,
};
pub use connection::{CLUSTER_SCHEME, Connection, Target};
use firstcome_core::campaign::Campaign;
use firstcome_core::queue::{bucket_of, bucket_of_position};
use layout::{Keys, Layout};

/// Most requests one admission script call takes.
const MAX_BATCH: usize = 256;

/// Times a grant's second half is tried when Redis fails it; after that, the next sync of the
/// campaign counts it.
const RECEIVE_ATTEMPTS: usize = 3;

/// How long a bucket that found no stock anywhere answers sold out without asking the other
/// buckets again. Stock comes back only through a sync (a raised capacity, a rebuild), which
/// ends the pause on the host that runs it; other hosts ask again after this long.
const DRY_RECHECK: Duration = Duration::from_millis(250);

/// Admission on a Redis server.
#[derive(Clone)]
pub struct RedisAdmission {
    conn: Connection,
    /// The admission batches' own connection: a `WAIT` behind a batch blocks the connection it
    /// is sent on, which must not hold up the issuer's claims, status reads or readiness.
    admit_conn: Connection,
    /// Replicas that must acknowledge a batch's admissions before they are answered, and how
    /// long to wait for them (see [`crate::AdmissionConfig::redis_wait_replicas`]).
    wait: Option<(u32, Duration)>,
    /// When a batch was last logged as not acknowledged by its replicas (epoch ms): one line
    /// per 10 s at most.
    unreplicated_logged: Arc<AtomicI64>,
    scripts: Arc<Scripts>,
    /// Per campaign and bucket, the requests waiting for the next script call.
    batches: Arc<Mutex<HashMap<(String, u32), Batch>>>,
    /// The layout of each campaign this host synced (its bucket count comes from the file).
    layouts: Arc<Mutex<HashMap<String, Arc<Layout>>>>,
    /// The bucket the next claim of a split campaign starts with, so that no bucket's queue
    /// waits behind another's.
    next_claim: Arc<AtomicUsize>,
    /// Buckets of split campaigns that found no stock to take, until when (see
    /// [`DRY_RECHECK`]): their sold-out answers skip the round trips to the other buckets.
    dry: Arc<Mutex<HashMap<(String, u32), std::time::Instant>>>,
}

/// The queue's Lua scripts.
struct Scripts {
    admit: Script,
    sync: Script,
    settle: Script,
    give: Script,
    receive: Script,
}

/// Requests of one bucket waiting for their script call, and whether a call is in flight.
#[derive(Default)]
struct Batch {
    waiting: Vec<Waiting>,
    in_flight: bool,
}

/// One request waiting to be admitted.
struct Waiting {
    user_id: String,
    request_id: String,
    now_ms: i64,
    floor: Floor,
    answer: oneshot::Sender<Result<Admit>>,
}

impl std::fmt::Debug for RedisAdmission {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisAdmission").finish_non_exhaustive()
    }
}

fn opt_ms(v: Option<i64>) -> String {
    v.map(|v| v.to_string()).unwrap_or_default()
}

/// The seq of a bucket's admission at `position` (0 for no position), for the floor check.
fn seq_of(position: i64, buckets: u32) -> i64 {
    if position <= 0 {
        0
    } else {
        (position - 1) / i64::from(buckets.max(1)) + 1
    }
}

/// Bucket `b`'s even share of `capacity` over `buckets`: the first `capacity % buckets`
/// buckets take one more.
fn share(capacity: i64, b: u32, buckets: u32) -> i64 {
    let k = i64::from(buckets.max(1));
    capacity / k + i64::from(i64::from(b) < capacity % k)
}

impl RedisAdmission {
    /// Connects to one Redis server (`redis://...`) or a Redis Cluster
    /// (`redis+cluster://host:port,host:port`, see [`Target::parse`]). Fails with
    /// [`AdmissionError::BadUrl`] on a URL it cannot use, or Redis's error when no node answers.
    pub async fn connect(url: &str) -> Result<Self> {
        let target = Target::parse(url).map_err(AdmissionError::BadUrl)?;
        let conn = Connection::open(&target).await?;
        let admit_conn = Connection::open(&target).await?;
        Ok(Self {
            conn,
            admit_conn,
            wait: None,
            unreplicated_logged: Arc::default(),
            scripts: Arc::new(Scripts {
                admit: Script::new(include_str!("admit.lua")),
                sync: Script::new(include_str!("sync.lua")),
                settle: Script::new(include_str!("settle.lua")),
                give: Script::new(include_str!("give.lua")),
                receive: Script::new(include_str!("receive.lua")),
            }),
            batches: Arc::default(),
            layouts: Arc::default(),
            next_claim: Arc::default(),
            dry: Arc::default(),
        })
    }

    /// Makes each admission wait until `replicas` Redis replicas acknowledged it (`WAIT`), for
    /// at most `timeout`, before it is answered; 0 replicas: answered once the primary has it.
    pub fn with_replica_acks(mut self, replicas: u32, timeout: Duration) -> Self {
        self.wait = (replicas > 0).then_some((replicas, timeout));
        self
    }

    /// Whether this queue is on a Redis Cluster.
    pub fn is_cluster(&self) -> bool {
        self.conn.is_cluster()
    }

    /// The layout this host synced for a campaign, if it did.
    fn synced_layout(&self, campaign_id: &str) -> Option<Arc<Layout>> {
        self.layouts.lock().unwrap().get(campaign_id).cloned()
    }

    /// The layout of a campaign: as synced, else that of one bucket (a campaign this host
    /// never synced is read where a campaign of one bucket lives).
    fn layout(&self, campaign_id: &str) -> Arc<Layout> {
        self.synced_layout(campaign_id)
            .unwrap_or_else(|| Arc::new(Layout::new(campaign_id, 1)))
    }

    /// Runs a script on the admission connection with `WAIT` right behind it in one pipeline
    /// when replicas must acknowledge it: `WAIT` counts the writes of the connection it is sent
    /// on, so it must follow the script on the same one (a cluster routes the pipeline by the
    /// script's keys). When a node answers `NOSCRIPT` (a restarted or newly promoted node), the
    /// script is loaded (on every primary) and the pipeline sent again: nothing of it ran.
    /// Returns the script's reply and, with `WAIT`, how many replicas acknowledged it.
    async fn eval_acked(&self, script: &Script, eval: redis::Cmd) -> Result<(Value, Option<i64>)> {
        let mut pipe = redis::pipe();
        pipe.add_command(eval);
        if let Some((replicas, timeout)) = self.wait {
            pipe.cmd("WAIT")
                .arg(replicas)
                .arg(timeout.as_millis() as u64);
        }
        let mut conn = self.admit_conn.clone();
        let mut loads = 0;
        let replies: Vec<Value> = loop {
            match pipe.query_async(&mut conn).await {
                Err(e) if e.kind() == redis::ErrorKind::NoScriptError && loads < SCRIPT_LOADS => {
                    loads += 1;
                    script.prepare_invoke().load_async(&mut conn).await?;
                }
                reply => break reply?,
            }
        };
        let mut replies = replies.into_iter();
        let reply = replies.next().unwrap_or(Value::Nil);
        let acked = match self.wait {
            Some(_) => Some(
                redis::from_redis_value(&replies.next().unwrap_or(Value::Nil))
                    .map_err(|e| AdmissionError::Protocol(format!("WAIT answered {e}")))?,
            ),
            None => None,
        };
        Ok((reply, acked))
    }

    /// Runs the admission script for a batch of one bucket (see [`Self::eval_acked`]).
    /// An error means the batch may or may not be admitted: nobody is answered `202`.
    async fn admit_batch(
        &self,
        layout: &Layout,
        bucket: u32,
        floor: Floor,
        batch: &[&Waiting],
    ) -> Result<Answers> {
        let k = layout.bucket(bucket);
        let mut eval = redis::cmd("EVALSHA");
        eval.arg(self.scripts.admit.get_hash())
            .arg(3)
            .arg(&k.meta)
            .arg(&k.users)
            .arg(&k.queue)
            .arg(floor.issued)
            .arg(seq_of(floor.last_position, layout.buckets))
            .arg(layout.buckets)
            .arg(bucket)
            .arg(floor.campaign_issued);
        for w in batch {
            eval.arg(&w.user_id).arg(w.now_ms).arg(&w.request_id);
        }
        let (reply, acked) = self.eval_acked(&self.scripts.admit, eval).await?;
        let script: Vec<Value> = redis::from_redis_value(&reply)
            .map_err(|e| AdmissionError::Protocol(format!("admit answered {e}")))?;
        let answers = answers(script)?;
        if let (Some(acked), Some((replicas, timeout))) = (acked, self.wait) {
            // A `409` is a promise too: the script wrote (see admit.lua) when it found a user
            // already admitted, so the `WAIT` covers that user's admission, whichever
            // connection made it.
            let promised = matches!(&answers, Answers::Each(o)
                if o.iter().any(|o| matches!(o, Admit::Admitted { .. } | Admit::Duplicate { .. })));
            if promised && acked < i64::from(replicas) {
                self.unreplicated(acked, replicas, timeout);
                return Err(AdmissionError::NotRecorded(format!(
                    "{acked} of {replicas} Redis replica(s) acknowledged the admission within \
                     {} ms",
                    timeout.as_millis()
                )));
            }
        }
        Ok(answers)
    }

    /// Moves stock to bucket `to`, which sold out with `wanted` requests still asking: asks
    /// each other bucket in turn until one gives some (see `give.lua`). Returns the coupons
    /// `to` received; 0 when no bucket had any to spare.
    async fn refill(&self, campaign_id: &str, layout: &Layout, to: u32, wanted: i64) -> i64 {
        for step in 1..layout.buckets {
            let from = (to + step) % layout.buckets;
            let got = self
                .grant(campaign_id, layout, from, to, wanted, false)
                .await;
            if got > 0 {
                return got;
            }
        }
        0
    }

    /// One grant of stock from bucket `from` to bucket `to`: `wanted` coupons, or more when
    /// the giver has plenty and not `exact` (see `give.lua`), then counted in `to`. Returns the
    /// coupons `to` received. A grant whose giver's replicas did not acknowledge it is not
    /// counted (the giver's primary may be lost with it): the next sync counts it if it
    /// survived; so is one that `to` could not count after [`RECEIVE_ATTEMPTS`].
    async fn grant(
        &self,
        campaign_id: &str,
        layout: &Layout,
        from: u32,
        to: u32,
        wanted: i64,
        exact: bool,
    ) -> i64 {
        let id = format!("{from}>{to}:{}", uuid::Uuid::now_v7().simple());
        let giver = layout.bucket(from);
        let mut eval = redis::cmd("EVALSHA");
        eval.arg(self.scripts.give.get_hash())
            .arg(2)
            .arg(&giver.meta)
            .arg(&giver.ledger)
            .arg(&id)
            .arg(wanted)
            .arg(if exact { "1" } else { "0" });
        let given: i64 = match self.eval_acked(&self.scripts.give, eval).await {
            Ok((reply, acked)) => {
                let given = redis::from_redis_value(&reply).unwrap_or(0);
                if given > 0
                    && let (Some(acked), Some((replicas, _))) = (acked, self.wait)
                    && acked < i64::from(replicas)
                {
                    tracing::warn!(campaign = %campaign_id, grant = %id,
                        "a grant of stock between buckets was not acknowledged by the giver's \
                         replicas: not used until the next sync counts it");
                    return 0;
                }
                given
            }
            Err(e) => {
                tracing::warn!(campaign = %campaign_id, bucket = from, error = %e,
                    "cannot ask a bucket for stock");
                return 0;
            }
        };
        if given <= 0 {
            return 0;
        }
        let taker = layout.bucket(to);
        for attempt in 1..=RECEIVE_ATTEMPTS {
            let mut inv = self.scripts.receive.prepare_invoke();
            inv.key(&taker.meta).key(&taker.ledger).arg(&id).arg(given);
            match invoke::<i64>(&inv, &mut self.admit_conn.clone()).await {
                Ok(1 | 0) => {
                    metrics::counter!("firstcome_admission_stock_moved_total", "campaign" => campaign_id.to_owned())
                        .increment(given as u64);
                    return given;
                }
                Ok(_) => break,
                Err(e) if attempt == RECEIVE_ATTEMPTS => {
                    tracing::warn!(campaign = %campaign_id, grant = %id, error = %e,
                        "cannot count a grant of stock in its bucket: the next sync of the \
                         campaign counts it");
                }
                Err(_) => {}
            }
        }
        0
    }

    /// A bucket's ledger of grants; with replicas required, `None` unless its replicas
    /// acknowledged everything in it: the ledger is read first, then this connection writes
    /// to the bucket and `WAIT`s, so the acknowledgement covers every grant read (the
    /// replication stream is in order). A grant only the primary knows may vanish with it.
    async fn read_ledger(&self, k: &Keys) -> Result<Option<HashMap<String, i64>>> {
        let mut conn = self.admit_conn.clone();
        let ledger: HashMap<String, i64> = conn.hgetall(&k.ledger).await?;
        Ok(self.replicas_have(&mut conn, k).await?.then_some(ledger))
    }

    /// Whether the replicas required (if any) have every write the bucket's primary made so
    /// far: this connection writes to the bucket (`touched`), then `WAIT`s. The replication
    /// stream is in order, so the acknowledgement covers every earlier write, whichever
    /// connection made it. Must run on the connection of the reads it vouches for.
    async fn replicas_have(&self, conn: &mut Connection, k: &Keys) -> Result<bool> {
        let Some((replicas, timeout)) = self.wait else {
            return Ok(true);
        };
        let (acked,): (i64,) = redis::pipe()
            .hincr(&k.meta, "touched", 1)
            .ignore()
            .cmd("WAIT")
            .arg(replicas)
            .arg(timeout.as_millis() as u64)
            .query_async(conn)
            .await?;
        Ok(acked >= i64::from(replicas))
    }

    /// Counts in their receivers the grants that their givers recorded and the receivers never
    /// counted: every ledger read once (givers' with [`Self::read_ledger`]), then one
    /// `receive.lua` per grant found half done. Returns the grants counted now; errors count
    /// as none (the next sync counts them).
    async fn count_pending_grants(&self, campaign_id: &str, layout: &Layout) -> usize {
        let mut ledgers = Vec::with_capacity(layout.keys.len());
        for k in &layout.keys {
            ledgers.push(self.read_ledger(k).await.ok().flatten());
        }
        let received: std::collections::HashSet<&str> = ledgers
            .iter()
            .flatten()
            .flat_map(|l| l.keys())
            .filter_map(|f| f.strip_prefix("in:"))
            .collect();
        let mut counted = 0;
        for (from, ledger) in ledgers.iter().enumerate() {
            for (field, coupons) in ledger.iter().flatten() {
                let Some(id) = field.strip_prefix("out:") else {
                    continue;
                };
                if received.contains(id) {
                    continue;
                }
                let Some(taker) = grant_ends(id)
                    .filter(|(g, _)| *g == from)
                    .and_then(|(_, r)| layout.keys.get(r))
                else {
                    continue;
                };
                let mut inv = self.scripts.receive.prepare_invoke();
                inv.key(&taker.meta)
                    .key(&taker.ledger)
                    .arg(id)
                    .arg(*coupons);
                if let Ok(1) = invoke::<i64>(&inv, &mut self.admit_conn.clone()).await {
                    tracing::warn!(campaign = %campaign_id, grant = %id, coupons,
                        "a grant of stock left half done was counted");
                    counted += 1;
                }
            }
        }
        counted
    }

    /// Covers each bucket that holds more admissions than stock (it came back from an older
    /// snapshot that had not seen a grant it used, and was merged with the database's
    /// holders) with stock from the buckets that have some to spare, exactly the deficit, so
    /// that the buckets' stock covers their admissions again and no bucket admits past the
    /// campaign's capacity with stock it had given away. Returns the coupons moved.
    async fn cover_deficits(&self, campaign_id: &str, layout: &Layout) -> Result<i64> {
        let mut state = Vec::with_capacity(layout.keys.len());
        for k in &layout.keys {
            let (capacity, admitted): (Option<i64>, Option<i64>) = self
                .conn
                .clone()
                .hget(&k.meta, &["capacity", "admitted"])
                .await?;
            state.push((capacity.unwrap_or(0), admitted.unwrap_or(0)));
        }
        let mut moved = 0;
        for to in 0..layout.buckets {
            let (capacity, admitted) = state[to as usize];
            let mut deficit = admitted - capacity;
            for step in 1..layout.buckets {
                if deficit <= 0 {
                    break;
                }
                let from = (to + step) % layout.buckets;
                let (c, a) = state[from as usize];
                if c - a <= 0 {
                    continue;
                }
                let got = self
                    .grant(campaign_id, layout, from, to, deficit, true)
                    .await;
                state[from as usize].0 -= got;
                deficit -= got;
                moved += got;
            }
        }
        if moved > 0 {
            tracing::warn!(campaign = %campaign_id, moved,
                "buckets held more admissions than stock (an older snapshot?): stock moved to \
                 cover them");
        }
        Ok(moved)
    }

    /// Counts a batch its replicas did not acknowledge in time, and logs it (once per 10 s).
    fn unreplicated(&self, acked: i64, wanted: u32, timeout: Duration) {
        metrics::counter!("firstcome_admissions_unreplicated_total").increment(1);
        let now = firstcome_core::clock::now_ms();
        let last = self.unreplicated_logged.load(Ordering::Relaxed);
        if now - last >= 10_000
            && self
                .unreplicated_logged
                .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
        {
            tracing::warn!(
                acked,
                wanted,
                ?timeout,
                "Redis replicas did not acknowledge admissions in time: they were answered 503 \
                 (they may still be admitted: their status tells); is the primary's replica \
                 down? (firstcome_admissions_unreplicated_total)"
            );
        }
    }

    /// Admits one batch of a bucket, moving stock from other buckets while some of its
    /// requests find it sold out, and returns one answer per request, in order.
    async fn admit_with_stock(
        &self,
        campaign_id: &str,
        layout: &Layout,
        bucket: u32,
        batch: &[Waiting],
    ) -> Vec<Result<Admit>> {
        // Floors only rise: the highest any request carries holds for all of them.
        let floor = batch.iter().fold(Floor::default(), |f, w| f.max(w.floor));
        let all: Vec<&Waiting> = batch.iter().collect();
        let mut results = answered(
            self.admit_batch(layout, bucket, floor, &all).await,
            all.len(),
        );
        loop {
            let sold: Vec<usize> = (0..results.len())
                .filter(|&i| matches!(results[i], Ok(Admit::SoldOut)))
                .collect();
            let key = (campaign_id.to_owned(), bucket);
            if sold.is_empty()
                || layout.buckets == 1
                || self
                    .dry
                    .lock()
                    .unwrap()
                    .get(&key)
                    .is_some_and(|until| *until > std::time::Instant::now())
            {
                return results;
            }
            // Before a bucket answers sold out, grants left half done (a host died, or a
            // primary failed over, between the two halves) are counted: their stock would
            // otherwise stay unused until the next sync.
            if self
                .refill(campaign_id, layout, bucket, sold.len() as i64)
                .await
                == 0
                && self.count_pending_grants(campaign_id, layout).await == 0
            {
                self.dry
                    .lock()
                    .unwrap()
                    .insert(key, std::time::Instant::now() + DRY_RECHECK);
                return results;
            }
            // Again for those requests only, in their order, with the stock just received.
            let again: Vec<&Waiting> = sold.iter().map(|&i| &batch[i]).collect();
            let retried = answered(
                self.admit_batch(layout, bucket, floor, &again).await,
                again.len(),
            );
            for (i, result) in sold.into_iter().zip(retried) {
                results[i] = result;
            }
        }
    }

    /// Sends a bucket's waiting requests in script calls, one call at a time, until none
    /// waits. Runs as a task of its own: a request whose caller went away is still answered
    /// by Redis, and the next call is never left waiting for it.
    async fn send_batches(self, campaign_id: String, layout: Arc<Layout>, bucket: u32) {
        let key = (campaign_id, bucket);
        loop {
            let batch: Vec<Waiting> = {
                let mut batches = self.batches.lock().unwrap();
                let Some(b) = batches.get_mut(&key) else {
                    return;
                };
                if b.waiting.is_empty() {
                    b.in_flight = false;
                    batches.remove(&key);
                    return;
                }
                let n = b.waiting.len().min(MAX_BATCH);
                b.waiting.drain(..n).collect()
            };
            let results = self.admit_with_stock(&key.0, &layout, bucket, &batch).await;
            let unanswered = results.iter().any(|r| {
                matches!(r, Err(AdmissionError::Redis(e)) if e.is_timeout())
                    || matches!(r, Err(AdmissionError::Batch(e)) if e.contains("timed out"))
            });
            for (w, result) in batch.into_iter().zip(results) {
                let _ = w.answer.send(result);
            }
            if unanswered {
                // Redis did not answer in time (frozen, partitioned): the requests that queued
                // up behind the call are answered now, not sent, rather than each batch
                // waiting out its own deadline in turn. The next request tries Redis again.
                let behind: Vec<Waiting> = {
                    let mut batches = self.batches.lock().unwrap();
                    batches
                        .get_mut(&key)
                        .map(|b| std::mem::take(&mut b.waiting))
                        .unwrap_or_default()
                };
                for w in behind {
                    let _ = w.answer.send(Err(AdmissionError::Batch(
                        "Redis did not answer the request before this one in time; this one \
                         was not sent"
                            .into(),
                    )));
                }
            }
        }
    }

    /// One bucket's part of a claim (see [`Admission::claim`]).
    async fn claim_bucket(
        &self,
        campaign_id: &str,
        k: &Keys,
        consumer: &str,
        max: usize,
        reclaim_idle: Option<Duration>,
    ) -> Result<Vec<QueueItem>> {
        let mut conn = self.conn.clone();
        let mut entries: Entries = Vec::new();
        if let Some(idle) = reclaim_idle {
            let reply: redis::RedisResult<(String, Entries, Value)> = redis::cmd("XAUTOCLAIM")
                .arg(&k.queue)
                .arg(ISSUER_GROUP)
                .arg(consumer)
                .arg(idle.as_millis() as u64)
                .arg("0-0")
                .arg("COUNT")
                .arg(max)
                .query_async(&mut conn)
                .await;
            match reply {
                Ok((_, claimed, _)) => entries = claimed,
                // The queue was lost with Redis's data: it must be rebuilt.
                Err(e) if is_nogroup(&e) => return Err(AdmissionError::Lost(campaign_id.into())),
                Err(e) => return Err(e.into()),
            }
        }
        if entries.is_empty() {
            let reply: redis::RedisResult<Option<Vec<(String, Entries)>>> =
                redis::cmd("XREADGROUP")
                    .arg("GROUP")
                    .arg(ISSUER_GROUP)
                    .arg(consumer)
                    .arg("COUNT")
                    .arg(max)
                    .arg("STREAMS")
                    .arg(&k.queue)
                    .arg(">")
                    .query_async(&mut conn)
                    .await;
            match reply {
                Ok(streams) => {
                    entries = streams.into_iter().flatten().flat_map(|(_, e)| e).collect();
                }
                Err(e) if is_nogroup(&e) => return Err(AdmissionError::Lost(campaign_id.into())),
                Err(e) => return Err(e.into()),
            }
        }
        entries
            .into_iter()
            .map(|(id, fields)| item_from_entry(id, fields))
            .collect()
    }

    /// The grants of stock each bucket of `layout` must count, read from every bucket's
    /// ledger: for bucket `b`, each `out:` of another bucket naming `b` as the receiver (as
    /// `in:`), and each `in:` of another bucket naming `b` as the giver (as `out:`).
    async fn grants(&self, layout: &Layout) -> Result<Vec<Vec<(String, i64)>>> {
        let mut owed = vec![Vec::new(); layout.buckets as usize];
        if layout.buckets == 1 {
            return Ok(owed);
        }
        for (from_bucket, k) in layout.keys.iter().enumerate() {
            // Not acknowledged by the replicas: counted by a later sync or sold-out answer.
            let Some(ledger) = self.read_ledger(k).await? else {
                continue;
            };
            for (field, coupons) in ledger {
                let Some((side, id)) = field.split_once(':') else {
                    continue;
                };
                let Some((giver, receiver)) = grant_ends(id) else {
                    continue;
                };
                let (other, counted) = match side {
                    "out" if giver == from_bucket => (receiver, format!("in:{id}")),
                    "in" if receiver == from_bucket => (giver, format!("out:{id}")),
                    _ => continue,
                };
                if let Some(list) = owed.get_mut(other) {
                    list.push((counted, coupons));
                }
            }
        }
        Ok(owed)
    }

    /// How many requests a campaign's buckets admitted under the layout of `buckets`.
    async fn admitted_in(&self, campaign_id: &str, buckets: u32) -> Result<i64> {
        let mut admitted = 0;
        for k in &Layout::new(campaign_id, buckets).keys {
            let n: Option<i64> = self.conn.clone().hget(&k.meta, "admitted").await?;
            admitted += n.unwrap_or(0);
        }
        Ok(admitted)
    }
}

/// The giving and receiving buckets a grant id (`<from>><to>:<unique>`) names.
fn grant_ends(id: &str) -> Option<(usize, usize)> {
    let (pair, _) = id.split_once(':')?;
    let (from, to) = pair.split_once('>')?;
    Some((from.parse().ok()?, to.parse().ok()?))
}

/// One result per request of a batch from the script's answer.
fn answered(answer: Result<Answers>, n: usize) -> Vec<Result<Admit>> {
    match answer {
        Ok(Answers::All(outcome)) => (0..n).map(|_| Ok(outcome)).collect(),
        Ok(Answers::Each(outcomes)) if outcomes.len() == n => {
            outcomes.into_iter().map(Ok).collect()
        }
        Ok(Answers::Each(outcomes)) => {
            let message = format!("admit returned {} answers for {n} requests", outcomes.len());
            (0..n)
                .map(|_| Err(AdmissionError::Protocol(message.clone())))
                .collect()
        }
        Err(e) => {
            let not_recorded = matches!(e, AdmissionError::NotRecorded(_));
            let message = match e {
                AdmissionError::NotRecorded(m) => m,
                e => e.to_string(),
            };
            (0..n)
                .map(|_| {
                    Err(if not_recorded {
                        AdmissionError::NotRecorded(message.clone())
                    } else {
                        AdmissionError::Batch(message.clone())
                    })
                })
                .collect()
        }
    }
}

/// How many times a script is loaded for one call that keeps answering `NOSCRIPT`: during a
/// failover the cluster client loads it on the primaries it knows, which may not yet include
/// the replica that just took over (seen in `tests/api/cluster.rs`).
const SCRIPT_LOADS: usize = 3;

/// Runs a script, loading it again while a node answers `NOSCRIPT` (up to [`SCRIPT_LOADS`]
/// times): `invoke_async` loads it once and then gives up.
async fn invoke<T: redis::FromRedisValue>(
    inv: &redis::ScriptInvocation<'_>,
    conn: &mut Connection,
) -> redis::RedisResult<T> {
    let mut loads = 1;
    loop {
        match inv.invoke_async(conn).await {
            Err(e) if e.kind() == redis::ErrorKind::NoScriptError && loads < SCRIPT_LOADS => {
                loads += 1;
            }
            reply => return reply,
        }
    }
}

/// The admission script's reply: one outcome for the whole batch, or one per request.
enum Answers {
    All(Admit),
    Each(Vec<Admit>),
}

fn answers(reply: Vec<Value>) -> Result<Answers> {
    let text = |v: &Value| -> Result<String> {
        redis::from_redis_value(v).map_err(|e| AdmissionError::Protocol(e.to_string()))
    };
    if reply.len() == 1 {
        return match text(&reply[0])?.as_str() {
            "unknown" => Ok(Answers::All(Admit::Unknown)),
            "behind" => Ok(Answers::All(Admit::Behind)),
            other => Err(AdmissionError::Protocol(format!(
                "admit returned {other:?}"
            ))),
        };
    }
    reply
        .chunks(2)
        .map(|pair| {
            let [outcome, position] = pair else {
                return Err(AdmissionError::Protocol(
                    "admit returned an odd list".into(),
                ));
            };
            let position: i64 = redis::from_redis_value(position)
                .map_err(|e| AdmissionError::Protocol(e.to_string()))?;
            Ok(match text(outcome)?.as_str() {
                "admitted" => Admit::Admitted { position },
                "duplicate" => Admit::Duplicate { position },
                "sold_out" => Admit::SoldOut,
                "closed" => Admit::Closed,
                "not_open" => Admit::NotOpen,
                other => {
                    return Err(AdmissionError::Protocol(format!(
                        "admit returned {other:?}"
                    )));
                }
            })
        })
        .collect::<Result<Vec<_>>>()
        .map(Answers::Each)
}

/// One stream entry `[id, [field, value, ...]]` as a queue item.
fn item_from_entry(id: String, fields: HashMap<String, String>) -> Result<QueueItem> {
    let field = |name: &str| {
        fields
            .get(name)
            .cloned()
            .ok_or_else(|| AdmissionError::Protocol(format!("queue entry {id} lacks {name}")))
    };
    let number = |name: &str| {
        field(name)?
            .parse::<i64>()
            .map_err(|_| AdmissionError::Protocol(format!("queue entry {id}: bad {name}")))
    };
    Ok(QueueItem {
        user_id: field("u")?,
        position: number("p")?,
        request_id: field("r")?,
        admitted_at: number("t")?,
        id,
    })
}

type Entries = Vec<(String, HashMap<String, String>)>;

fn is_nogroup(e: &redis::RedisError) -> bool {
    e.code() == Some("NOGROUP")
}

#[async_trait]
impl Admission for RedisAdmission {
    fn kind(&self) -> &'static str {
        "redis"
    }

    fn buckets(&self, campaign: &Campaign) -> u32 {
        campaign.shards()
    }

    async fn sync_campaign(
        &self,
        campaign: &Campaign,
        issued: &[(String, i64)],
        force: bool,
    ) -> Result<bool> {
        let layout = Arc::new(Layout::new(campaign.id(), campaign.shards()));
        // A campaign's bucket count decides where its users' admissions live and which
        // positions they hold: it cannot change under admissions already made.
        let was: Option<u32> = self
            .conn
            .clone()
            .hget(&layout.bucket(0).meta, "buckets")
            .await?;
        let was = was.unwrap_or(1);
        if was != layout.buckets && self.admitted_in(campaign.id(), was).await? > 0 {
            return Err(AdmissionError::ShardsChanged {
                was,
                now: layout.buckets,
            });
        }
        let grants = self.grants(&layout).await?;
        let mut changed = false;
        for (b, owed) in (0..layout.buckets).zip(grants) {
            let k = layout.bucket(b);
            let mine: Vec<&(String, i64)> = issued
                .iter()
                .filter(|(_, p)| bucket_of_position(*p, layout.buckets) == b)
                .collect();
            let mut inv = self.scripts.sync.prepare_invoke();
            inv.key(&k.meta).key(&k.users).key(&k.queue).key(&k.ledger);
            inv.arg(if force { "1" } else { "0" })
                .arg(share(campaign.capacity(), b, layout.buckets))
                .arg(opt_ms(campaign.opens_at()))
                .arg(opt_ms(campaign.closes_at()))
                .arg(ISSUER_GROUP)
                .arg(layout.buckets)
                .arg(b)
                .arg(campaign.capacity())
                .arg(mine.len());
            for (user, position) in mine {
                inv.arg(user).arg(*position);
            }
            inv.arg(owed.len());
            for (field, coupons) in &owed {
                inv.arg(field).arg(*coupons);
            }
            match invoke::<i64>(&inv, &mut self.conn.clone()).await? {
                3 => {
                    return Err(AdmissionError::ShardsChanged {
                        was,
                        now: layout.buckets,
                    });
                }
                code => changed |= code != 0,
            }
        }
        if layout.buckets > 1 {
            changed |= self.cover_deficits(campaign.id(), &layout).await? > 0;
        }
        self.dry
            .lock()
            .unwrap()
            .retain(|(id, _), _| id != campaign.id());
        self.layouts
            .lock()
            .unwrap()
            .insert(campaign.id().to_owned(), layout);
        Ok(changed)
    }

    async fn admit(
        &self,
        campaign_id: &str,
        user_id: &str,
        request_id: &str,
        now_ms: i64,
        floor: Floor,
    ) -> Result<Admit> {
        let layout = match self.synced_layout(campaign_id) {
            Some(layout) => layout,
            // A campaign this host never synced (another host did): its bucket count is read
            // where every sync writes it, bucket 0.
            None => {
                let buckets: Option<u32> = self
                    .conn
                    .clone()
                    .hget(&Layout::new(campaign_id, 1).bucket(0).meta, "buckets")
                    .await?;
                let Some(buckets) = buckets else {
                    return Ok(Admit::Unknown);
                };
                let layout = Arc::new(Layout::new(campaign_id, buckets));
                self.layouts
                    .lock()
                    .unwrap()
                    .insert(campaign_id.to_owned(), layout.clone());
                layout
            }
        };
        let bucket = bucket_of(user_id, layout.buckets);
        let (answer, answered) = oneshot::channel();
        let start = {
            let mut batches = self.batches.lock().unwrap();
            let b = batches.entry((campaign_id.to_owned(), bucket)).or_default();
            b.waiting.push(Waiting {
                user_id: user_id.to_owned(),
                request_id: request_id.to_owned(),
                now_ms,
                floor,
                answer,
            });
            !std::mem::replace(&mut b.in_flight, true)
        };
        if start {
            tokio::spawn(
                self.clone()
                    .send_batches(campaign_id.to_owned(), layout, bucket),
            );
        }
        answered
            .await
            .map_err(|_| AdmissionError::Protocol("the admission call was dropped".into()))?
    }

    async fn position(&self, campaign_id: &str, user_id: &str) -> Result<Option<i64>> {
        let layout = self.layout(campaign_id);
        let k = layout.bucket(bucket_of(user_id, layout.buckets));
        Ok(self.conn.clone().hget(&k.users, user_id).await?)
    }

    async fn counts(&self, campaign_id: &str) -> Result<QueueCounts> {
        let mut counts = QueueCounts::default();
        for k in &self.layout(campaign_id).keys {
            let (admitted, queued): (Option<i64>, i64) = redis::pipe()
                .hget(&k.meta, "admitted")
                .xlen(&k.queue)
                .query_async(&mut self.conn.clone())
                .await?;
            counts.admitted += admitted.unwrap_or(0);
            counts.queued += queued;
        }
        Ok(counts)
    }

    async fn claim(
        &self,
        campaign_id: &str,
        consumer: &str,
        max: usize,
        reclaim_idle: Option<Duration>,
    ) -> Result<Vec<QueueItem>> {
        let layout = self.layout(campaign_id);
        let first = self.next_claim.fetch_add(1, Ordering::Relaxed);
        let mut items = Vec::new();
        for step in 0..layout.buckets as usize {
            if items.len() >= max {
                break;
            }
            let k = &layout.keys[(first + step) % layout.keys.len()];
            items.extend(
                self.claim_bucket(campaign_id, k, consumer, max - items.len(), reclaim_idle)
                    .await?,
            );
        }
        items.sort_by_key(|i| i.position);
        Ok(items)
    }

    async fn ack(&self, campaign_id: &str, items: &[QueueItem]) -> Result<()> {
        let layout = self.layout(campaign_id);
        for (b, k) in (0..layout.buckets).zip(&layout.keys) {
            let ids: Vec<&str> = items
                .iter()
                .filter(|i| bucket_of_position(i.position, layout.buckets) == b)
                .map(|i| i.id.as_str())
                .collect();
            if ids.is_empty() {
                continue;
            }
            let _: (i64, i64) = redis::pipe()
                .atomic()
                .xack(&k.queue, ISSUER_GROUP, &ids)
                .xdel(&k.queue, &ids)
                .query_async(&mut self.conn.clone())
                .await?;
        }
        Ok(())
    }

    async fn settle(&self, campaign_id: &str, holders: &[(String, i64)]) -> Result<u64> {
        let layout = self.layout(campaign_id);
        let mut added = 0;
        for (b, k) in (0..layout.buckets).zip(&layout.keys) {
            let mine: Vec<&(String, i64)> = holders
                .iter()
                .filter(|(_, p)| bucket_of_position(*p, layout.buckets) == b)
                .collect();
            if mine.is_empty() {
                continue;
            }
            let mut inv = self.scripts.settle.prepare_invoke();
            inv.key(&k.meta).key(&k.users).arg(layout.buckets).arg(b);
            for (user, position) in mine {
                inv.arg(user).arg(*position);
            }
            added += invoke::<u64>(&inv, &mut self.conn.clone()).await?;
        }
        Ok(added)
    }

    async fn forget(&self, campaign_id: &str, user_ids: &[String]) -> Result<()> {
        let layout = self.layout(campaign_id);
        for (b, k) in (0..layout.buckets).zip(&layout.keys) {
            let mine: Vec<&String> = user_ids
                .iter()
                .filter(|u| bucket_of(u, layout.buckets) == b)
                .collect();
            if !mine.is_empty() {
                let _: i64 = self.conn.clone().hdel(&k.users, mine).await?;
            }
        }
        Ok(())
    }

    async fn admitted_users(&self, campaign_id: &str) -> Result<Option<HashMap<String, i64>>> {
        let mut conn = self.admit_conn.clone();
        let mut users = HashMap::new();
        for k in &self.layout(campaign_id).keys {
            // The flag answers 409 from this set: every admission in it must be on the
            // replicas first.
            if !self.replicas_have(&mut conn, k).await? {
                return Ok(None);
            }
            let mut cursor = 0u64;
            // HSCAN in steps, so that a campaign of a million users does not block Redis.
            loop {
                let (next, page): (u64, Vec<(String, i64)>) = redis::cmd("HSCAN")
                    .arg(&k.users)
                    .arg(cursor)
                    .arg("COUNT")
                    .arg(1_000)
                    .query_async(&mut conn)
                    .await?;
                users.extend(page);
                if next == 0 {
                    break;
                }
                cursor = next;
            }
        }
        Ok(Some(users))
    }

    async fn ping(&self) -> Result<()> {
        Ok(self.conn.clone().ping().await?)
    }

    async fn clock_ms(&self) -> Result<Option<i64>> {
        let (seconds, micros): (i64, i64) = redis::cmd("TIME")
            .query_async(&mut self.conn.clone())
            .await?;
        Ok(Some(seconds * 1_000 + micros / 1_000))
    }

    async fn durability(&self) -> String {
        let mut conn = self.conn.clone();
        let mut settings = HashMap::new();
        for name in ["appendonly", "appendfsync", "save"] {
            let reply: redis::RedisResult<HashMap<String, String>> = redis::cmd("CONFIG")
                .arg("GET")
                .arg(name)
                .query_async(&mut conn)
                .await;
            match reply {
                Ok(values) => settings.extend(values),
                Err(e) => {
                    return format!(
                        "unknown: Redis refused CONFIG GET {name} ({e}); with appendonly yes a \
                         202 survives a Redis restart, without it a restart loses the 202s not \
                         yet issued (detected and counted)"
                    );
                }
            }
        }
        let on_server = guarantee(
            settings.get("appendonly").map(String::as_str),
            settings.get("appendfsync").map(String::as_str),
            settings.get("save").map(String::as_str),
        );
        match (self.wait, self.is_cluster()) {
            (Some((replicas, timeout)), _) => format!(
                "each 202 and 409 waits for {replicas} Redis replica(s) to acknowledge it (up to \
                 {} ms, else it is answered 503), so it survives the loss of its primary; on \
                 the node asked: {on_server}",
                timeout.as_millis()
            ),
            (None, true) => format!(
                "a 202 is answered once its primary has it (admission.redis_wait_replicas = 0): \
                 a primary lost before its replica copied the last admissions loses them; on \
                 the node asked: {on_server}"
            ),
            (None, false) => on_server,
        }
    }
}

/// What a `202` survives on a Redis with these persistence settings (`CONFIG GET` values).
/// Redis writes the AOF before it answers a command, so a killed Redis process loses nothing
/// that was answered; `appendfsync` decides what a crash of the machine loses.
pub fn guarantee(
    appendonly: Option<&str>,
    appendfsync: Option<&str>,
    save: Option<&str>,
) -> String {
    let lost = "lost 202s are detected and counted (firstcome_admissions_lost_total); \
                their users read status none and may ask again";
    match (appendonly, appendfsync) {
        (Some("yes"), Some("always")) => "Redis appendonly yes, appendfsync always: a 202 \
            survives a restart or crash of Redis and of its machine"
            .into(),
        (Some("yes"), Some("everysec")) => format!(
            "Redis appendonly yes, appendfsync everysec: a 202 survives a restart or crash of \
             Redis; a crash of its machine can lose the last second of 202s ({lost})"
        ),
        (Some("yes"), fsync) => format!(
            "Redis appendonly yes, appendfsync {}: a 202 survives a restart or crash of Redis; \
             a crash of its machine can lose what the OS had not flushed ({lost})",
            fsync.unwrap_or("unknown")
        ),
        _ => match save.map(str::trim) {
            Some(save) if !save.is_empty() => format!(
                "Redis RDB snapshots only (save {save:?}): a restart of Redis returns to the last \
                 snapshot and loses the 202s answered since that are not yet issued ({lost}); \
                 issued coupons are never lost or given twice"
            ),
            _ => format!(
                "Redis keeps nothing on disk: a restart of Redis loses every 202 not yet issued \
                 ({lost}); issued coupons are never lost or given twice"
            ),
        },
    }
}
