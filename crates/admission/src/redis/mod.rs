//! The Redis admission queue, on one Redis server or a Redis Cluster ([`Target`]). A
//! campaign's keys share the hash tag `{campaign_id}`, so a campaign lives in one Redis Cluster
//! slot (every script call is atomic on one primary) and campaigns are independent:
//! `fc:{id}:meta` (hash: capacity, window, admitted, seq), `fc:{id}:users` (hash: user ->
//! position, the per-user guard) and `fc:{id}:queue` (a stream read by the consumer group
//! [`ISSUER_GROUP`]; XACK + XDEL after commit, XAUTOCLAIM for items a dead host left pending).
//!
//! Admission is one Lua script called with EVALSHA; `redis::Script` loads it on first use and
//! again when Redis answers NOSCRIPT (after a restart). Requests of one campaign that arrive
//! while its previous call is in flight go together in the next call (a group commit, as the
//! embedded queue's record does): one script call admits them all, in arrival order, so a
//! storm costs Redis and this host one round trip per batch instead of per request.

mod connection;

use std::collections::HashMap;
use std::sync::atomic::{AtomicI64, Ordering};
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

/// Most requests one admission script call takes.
const MAX_BATCH: usize = 256;

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
    admit: Arc<Script>,
    sync: Script,
    settle: Script,
    /// Per campaign, the requests waiting for the next script call.
    batches: Arc<Mutex<HashMap<String, Batch>>>,
}

/// Requests of one campaign waiting for their script call, and whether a call is in flight.
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

struct Keys {
    meta: String,
    users: String,
    queue: String,
}

fn keys(campaign_id: &str) -> Keys {
    Keys {
        meta: format!("fc:{{{campaign_id}}}:meta"),
        users: format!("fc:{{{campaign_id}}}:users"),
        queue: format!("fc:{{{campaign_id}}}:queue"),
    }
}

fn opt_ms(v: Option<i64>) -> String {
    v.map(|v| v.to_string()).unwrap_or_default()
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
            admit: Arc::new(Script::new(include_str!("admit.lua"))),
            sync: Script::new(include_str!("sync.lua")),
            settle: Script::new(include_str!("settle.lua")),
            batches: Arc::default(),
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

    /// Runs the admission script for a batch and, when replicas must acknowledge it, `WAIT`
    /// right behind it in one pipeline: `WAIT` counts the writes of the connection it is sent
    /// on, so it must follow the script on the same one (a cluster routes the pipeline by the
    /// script's keys). When a node answers `NOSCRIPT` (a restarted or newly promoted node), the
    /// script is loaded (on every primary) and the pipeline sent again: nothing of it ran.
    /// An error means the batch may or may not be admitted: nobody is answered `202`.
    async fn admit_batch(&self, k: &Keys, floor: Floor, batch: &[Waiting]) -> Result<Answers> {
        let mut eval = redis::cmd("EVALSHA");
        eval.arg(self.admit.get_hash())
            .arg(3)
            .arg(&k.meta)
            .arg(&k.users)
            .arg(&k.queue)
            .arg(floor.issued)
            .arg(floor.last_position);
        for w in batch {
            eval.arg(&w.user_id).arg(w.now_ms).arg(&w.request_id);
        }
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
                    self.admit.prepare_invoke().load_async(&mut conn).await?;
                }
                reply => break reply?,
            }
        };
        let mut replies = replies.into_iter();
        let script: Vec<Value> = redis::from_redis_value(&replies.next().unwrap_or(Value::Nil))
            .map_err(|e| AdmissionError::Protocol(format!("admit answered {e}")))?;
        let answers = answers(script)?;
        if let Some((replicas, timeout)) = self.wait {
            let acked: i64 = redis::from_redis_value(&replies.next().unwrap_or(Value::Nil))
                .map_err(|e| AdmissionError::Protocol(format!("WAIT answered {e}")))?;
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

    /// Sends the campaign's waiting requests in script calls, one call at a time, until none
    /// waits. Runs as a task of its own: a request whose caller went away is still answered
    /// by Redis, and the next call is never left waiting for it.
    async fn send_batches(self, campaign_id: String) {
        let k = keys(&campaign_id);
        loop {
            let batch: Vec<Waiting> = {
                let mut batches = self.batches.lock().unwrap();
                let Some(b) = batches.get_mut(&campaign_id) else {
                    return;
                };
                if b.waiting.is_empty() {
                    b.in_flight = false;
                    batches.remove(&campaign_id);
                    return;
                }
                let n = b.waiting.len().min(MAX_BATCH);
                b.waiting.drain(..n).collect()
            };
            // Floors only rise: the highest any request carries holds for all of them.
            let floor = batch.iter().fold(Floor::default(), |f, w| f.max(w.floor));
            let answered = self.admit_batch(&k, floor, &batch).await;
            match answered {
                Ok(Answers::All(outcome)) => {
                    for w in batch {
                        let _ = w.answer.send(Ok(outcome));
                    }
                }
                Ok(Answers::Each(outcomes)) if outcomes.len() == batch.len() => {
                    for (w, outcome) in batch.into_iter().zip(outcomes) {
                        let _ = w.answer.send(Ok(outcome));
                    }
                }
                Ok(Answers::Each(outcomes)) => {
                    let message = format!(
                        "admit returned {} answers for {} requests",
                        outcomes.len(),
                        batch.len()
                    );
                    for w in batch {
                        let _ = w
                            .answer
                            .send(Err(AdmissionError::Protocol(message.clone())));
                    }
                }
                Err(e) => {
                    let not_recorded = matches!(e, AdmissionError::NotRecorded(_));
                    let message = match e {
                        AdmissionError::NotRecorded(m) => m,
                        e => e.to_string(),
                    };
                    for w in batch {
                        let _ = w.answer.send(Err(if not_recorded {
                            AdmissionError::NotRecorded(message.clone())
                        } else {
                            AdmissionError::Batch(message.clone())
                        }));
                    }
                }
            }
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

    async fn sync_campaign(
        &self,
        campaign: &Campaign,
        issued: &[(String, i64)],
        force: bool,
    ) -> Result<bool> {
        let k = keys(campaign.id());
        let mut inv = self.sync.prepare_invoke();
        inv.key(&k.meta).key(&k.users).key(&k.queue);
        inv.arg(if force { "1" } else { "0" })
            .arg(campaign.capacity())
            .arg(opt_ms(campaign.opens_at()))
            .arg(opt_ms(campaign.closes_at()))
            .arg(ISSUER_GROUP)
            .arg(issued.len());
        for (user, position) in issued {
            inv.arg(user).arg(*position);
        }
        let changed: i64 = invoke(&inv, &mut self.conn.clone()).await?;
        Ok(changed != 0)
    }

    async fn admit(
        &self,
        campaign_id: &str,
        user_id: &str,
        request_id: &str,
        now_ms: i64,
        floor: Floor,
    ) -> Result<Admit> {
        let (answer, answered) = oneshot::channel();
        let start = {
            let mut batches = self.batches.lock().unwrap();
            let b = batches.entry(campaign_id.to_owned()).or_default();
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
            tokio::spawn(self.clone().send_batches(campaign_id.to_owned()));
        }
        answered
            .await
            .map_err(|_| AdmissionError::Protocol("the admission call was dropped".into()))?
    }

    async fn position(&self, campaign_id: &str, user_id: &str) -> Result<Option<i64>> {
        Ok(self
            .conn
            .clone()
            .hget(keys(campaign_id).users, user_id)
            .await?)
    }

    async fn counts(&self, campaign_id: &str) -> Result<QueueCounts> {
        let k = keys(campaign_id);
        let (admitted, queued): (Option<i64>, i64) = redis::pipe()
            .hget(&k.meta, "admitted")
            .xlen(&k.queue)
            .query_async(&mut self.conn.clone())
            .await?;
        Ok(QueueCounts {
            admitted: admitted.unwrap_or(0),
            queued,
        })
    }

    async fn claim(
        &self,
        campaign_id: &str,
        consumer: &str,
        max: usize,
        reclaim_idle: Option<Duration>,
    ) -> Result<Vec<QueueItem>> {
        let k = keys(campaign_id);
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
        let mut items = entries
            .into_iter()
            .map(|(id, fields)| item_from_entry(id, fields))
            .collect::<Result<Vec<_>>>()?;
        items.sort_by_key(|i| i.position);
        Ok(items)
    }

    async fn ack(&self, campaign_id: &str, items: &[QueueItem]) -> Result<()> {
        if items.is_empty() {
            return Ok(());
        }
        let k = keys(campaign_id);
        let ids: Vec<&str> = items.iter().map(|i| i.id.as_str()).collect();
        let _: (i64, i64) = redis::pipe()
            .atomic()
            .xack(&k.queue, ISSUER_GROUP, &ids)
            .xdel(&k.queue, &ids)
            .query_async(&mut self.conn.clone())
            .await?;
        Ok(())
    }

    async fn settle(&self, campaign_id: &str, holders: &[(String, i64)]) -> Result<u64> {
        if holders.is_empty() {
            return Ok(0);
        }
        let k = keys(campaign_id);
        let mut inv = self.settle.prepare_invoke();
        inv.key(&k.meta).key(&k.users);
        for (user, position) in holders {
            inv.arg(user).arg(*position);
        }
        let added: u64 = invoke(&inv, &mut self.conn.clone()).await?;
        Ok(added)
    }

    async fn forget(&self, campaign_id: &str, user_ids: &[String]) -> Result<()> {
        if user_ids.is_empty() {
            return Ok(());
        }
        let _: i64 = self
            .conn
            .clone()
            .hdel(keys(campaign_id).users, user_ids)
            .await?;
        Ok(())
    }

    async fn admitted_users(&self, campaign_id: &str) -> Result<Option<HashMap<String, i64>>> {
        let mut conn = self.admit_conn.clone();
        if let Some((replicas, timeout)) = self.wait {
            // The flag answers 409 from this set: every admission in it must be on the
            // replicas first. A write of this connection's own, then WAIT, covers all before it.
            let (acked,): (i64,) = redis::pipe()
                .hincr(keys(campaign_id).meta, "touched", 1)
                .ignore()
                .cmd("WAIT")
                .arg(replicas)
                .arg(timeout.as_millis() as u64)
                .query_async(&mut conn)
                .await?;
            if acked < i64::from(replicas) {
                return Ok(None);
            }
        }
        let mut users = HashMap::new();
        let mut cursor = 0u64;
        // HSCAN in steps, so that a campaign of a million users does not block Redis.
        loop {
            let (next, page): (u64, Vec<(String, i64)>) = redis::cmd("HSCAN")
                .arg(keys(campaign_id).users)
                .arg(cursor)
                .arg("COUNT")
                .arg(1_000)
                .query_async(&mut conn)
                .await?;
            users.extend(page);
            if next == 0 {
                return Ok(Some(users));
            }
            cursor = next;
        }
    }

    async fn ping(&self) -> Result<()> {
        Ok(self.conn.clone().ping().await?)
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
