//! The in-process admission queue: the Redis script's semantics behind one mutex, made durable
//! in the database before it answers.
//!
//! An admission is decided in memory (window, duplicate, capacity, position) and appended to
//! the *unwritten* list. One writer (a thread of its own on SQLite) writes everything unwritten
//! at once to the store's admission record (a group commit: concurrent admissions share one
//! write and, on SQLite, one fsync of a file nothing else writes), and only then are they answered
//! `202` and handed to the issuer. About once a second the writer deletes from the record, per
//! campaign, the rows below the first request not yet handled (its chunk not committed).
//!
//! A start (the first `sync_campaign` of a campaign) rebuilds the campaign from the database:
//! the users holding a coupon, then every recorded, unissued admission at its original
//! position. So a process killed at any moment loses only requests it never answered `202`.
//!
//! When the database does not take a write, the writer retries with a back-off and the
//! requests waiting on it are answered `503` after [`DURABLE_WAIT`]; they keep their place and
//! are written (and issued) once the database answers, which their status then shows.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use tokio::sync::{Notify, oneshot};
use tokio_util::sync::{CancellationToken, DropGuard};

use super::{Admission, AdmissionError, Admit, Floor, QueueCounts, QueueItem, Result};
use firstcome_core::campaign::Campaign;
use firstcome_store::{AdmissionRow, Store};

/// How long an admission waits for its group commit before it is answered `503`.
pub const DURABLE_WAIT: Duration = Duration::from_secs(5);

/// Admissions written per transaction at most; more wait for the next one.
const WRITE_BATCH: usize = 2_000;

/// How often the writer deletes handled requests from the record.
const CLEANUP_EVERY: Duration = Duration::from_secs(1);

/// Back-off between attempts of a write the database refused, doubling up to the maximum.
const WRITE_RETRY: (Duration, Duration) = (Duration::from_millis(50), Duration::from_secs(1));

/// A user's place: their position and the group-commit ticket that makes it durable (0 for
/// places read back from the database).
#[derive(Clone, Copy, Debug)]
struct Held {
    position: i64,
    ticket: u64,
}

#[derive(Debug, Default)]
struct CampaignQueue {
    capacity: i64,
    opens_at: Option<i64>,
    closes_at: Option<i64>,
    admitted: i64,
    seq: i64,
    users: HashMap<String, Held>,
    /// Written, not yet claimed, in position order.
    waiting: VecDeque<QueueItem>,
    /// Claimed, not yet acknowledged, by position.
    pending: BTreeMap<i64, Pending>,
    /// Every recorded request below this position is deleted from the record.
    cleaned_below: i64,
}

#[derive(Debug)]
struct Pending {
    item: QueueItem,
    claimed_at: Instant,
}

/// An admitted request waiting for its write.
#[derive(Clone, Debug)]
struct Unwritten {
    campaign_id: String,
    item: QueueItem,
    ticket: u64,
}

#[derive(Debug, Default)]
struct State {
    campaigns: HashMap<String, CampaignQueue>,
    /// In ticket order: the writer always takes a prefix.
    unwritten: VecDeque<Unwritten>,
    last_ticket: u64,
    /// Every ticket up to this one is on disk.
    written: u64,
    /// Requests waiting for their ticket's write, told when it is on disk (a dropped sender:
    /// it never will be).
    waiters: BTreeMap<u64, Vec<oneshot::Sender<()>>>,
}

#[derive(Debug)]
struct Shared {
    store: Store,
    state: Mutex<State>,
    /// On SQLite, the writer's own connection to the record file: the group commit runs on
    /// the writer's thread without a hop through sqlx's worker thread. `None`: through the
    /// store.
    direct: Option<Mutex<rusqlite::Connection>>,
    /// Tells the writer there is something to write.
    wake: Notify,
    /// Held while a batch is written, and by whatever must not run beside a write (a
    /// rebuild reads the durable record; `clear` drops what is unwritten).
    writing: tokio::sync::Mutex<()>,
}

/// Admission in process memory, recorded in the database before it answers.
#[derive(Debug)]
pub struct EmbeddedAdmission {
    shared: Arc<Shared>,
    /// Stops the writer task when the queue is dropped.
    _writer: DropGuard,
}

impl EmbeddedAdmission {
    /// A queue whose admissions are recorded in `store`; starts its writer (a thread of its
    /// own on SQLite, else a task, so it must be called inside a Tokio runtime).
    pub fn new(store: Store) -> Self {
        let direct = store
            .record_file()
            .and_then(|file| match open_record(file) {
                Ok(conn) => Some(Mutex::new(conn)),
                Err(e) => {
                    tracing::warn!(file = %file.display(), error = %e,
                    "cannot open the admission record directly; writing through the pool");
                    None
                }
            });
        let shared = Arc::new(Shared {
            store,
            direct,
            state: Mutex::default(),
            wake: Notify::new(),
            writing: tokio::sync::Mutex::new(()),
        });
        let stop = CancellationToken::new();
        let writer = write_loop(shared.clone(), stop.clone());
        if shared.store.dialect() == firstcome_store::Dialect::Sqlite {
            // On a thread of its own: woken by the SQLite worker thread, a task of the shared
            // runtime would wait behind every HTTP task in the run queue (measured: ~2 ms a
            // commit at 256 connections), and every admission waits for the commit.
            std::thread::Builder::new()
                .name("admission-writer".into())
                .spawn(move || {
                    tokio::runtime::Builder::new_current_thread()
                        .enable_all()
                        .build()
                        .expect("a current-thread runtime builds")
                        .block_on(writer);
                })
                .expect("the admission writer thread starts");
        } else {
            tokio::spawn(writer);
        }
        Self {
            shared,
            _writer: stop.drop_guard(),
        }
    }

    /// Forgets everything in memory, as a restart would: what was written stays in the
    /// database and comes back with the next `sync_campaign`; admissions whose write had not
    /// happened are lost (their requests are answered `503`, never `202`). For tests.
    pub async fn clear(&self) {
        let _writing = self.shared.writing.lock().await;
        let mut state = self.shared.state.lock().unwrap();
        state.campaigns.clear();
        state.unwritten.clear();
        // Their requests are answered 503: dropped senders.
        state.waiters.clear();
        state.written = state.last_ticket;
    }
}

/// Waits for a request's write (`None`: it is on disk already).
async fn written(wait: Option<oneshot::Receiver<()>>) -> Result<()> {
    let Some(wait) = wait else {
        return Ok(());
    };
    match tokio::time::timeout(DURABLE_WAIT, wait).await {
        Ok(Ok(())) => Ok(()),
        Ok(Err(_)) => Err(AdmissionError::NotRecorded(
            "the queue was reset or stopped before the write".into(),
        )),
        Err(_) => Err(AdmissionError::NotRecorded(format!(
            "the database took no write within {} ms",
            DURABLE_WAIT.as_millis()
        ))),
    }
}

impl Shared {
    /// Writes everything unwritten, a batch per transaction, retrying a refused write until
    /// it succeeds or the queue stops.
    async fn write_all(&self, stop: &CancellationToken) {
        let mut retry = WRITE_RETRY.0;
        loop {
            let writing = self.writing.lock().await;
            let batch: Vec<Unwritten> = {
                let state = self.state.lock().unwrap();
                state.unwritten.iter().take(WRITE_BATCH).cloned().collect()
            };
            if batch.is_empty() {
                return;
            }
            let rows: Vec<AdmissionRow<'_>> = batch
                .iter()
                .map(|u| AdmissionRow {
                    campaign_id: &u.campaign_id,
                    item: &u.item,
                })
                .collect();
            let started = Instant::now();
            let recorded = match &self.direct {
                Some(conn) => {
                    insert_direct(&mut conn.lock().unwrap(), &rows).map_err(|e| e.to_string())
                }
                None => self
                    .store
                    .record_admissions(&rows)
                    .await
                    .map_err(|e| e.to_string()),
            };
            match recorded {
                Ok(()) => {
                    metrics::histogram!("firstcome_admission_write_batch_size")
                        .record(batch.len() as f64);
                    metrics::histogram!("firstcome_admission_write_seconds")
                        .record(started.elapsed().as_secs_f64());
                    self.applied(&batch);
                    retry = WRITE_RETRY.0;
                }
                Err(e) => {
                    drop(writing);
                    metrics::counter!("firstcome_admission_write_failures_total").increment(1);
                    tracing::warn!(error = %e, requests = batch.len(),
                        "cannot record admissions; retrying");
                    tokio::select! {
                        () = tokio::time::sleep(retry) => {}
                        () = stop.cancelled() => return,
                    }
                    retry = (retry * 2).min(WRITE_RETRY.1);
                }
            }
        }
    }

    /// A group commit is on disk: its admissions (the front of the unwritten list) go to the
    /// issuer and their requests are answered.
    fn applied(&self, batch: &[Unwritten]) {
        // `clear` waits for the write lock, which the caller holds, and nothing but the
        // writer takes from the fronts: they are still this batch.
        let told = {
            let mut state = self.state.lock().unwrap();
            let State {
                campaigns,
                unwritten,
                written,
                waiters,
                ..
            } = &mut *state;
            for done in unwritten.drain(..batch.len()) {
                if let Some(q) = campaigns.get_mut(&done.campaign_id) {
                    q.waiting.push_back(done.item);
                }
            }
            let Some(last) = batch.last() else {
                return;
            };
            *written = last.ticket;
            let later = waiters.split_off(&(last.ticket + 1));
            std::mem::replace(waiters, later)
        };
        // Answered outside the lock; a request that gave up waiting is not there to hear it.
        for tx in told.into_values().flatten() {
            let _ = tx.send(());
        }
    }
}

impl Shared {
    /// Deletes, per campaign, the recorded requests below the first one not yet handled.
    async fn clean_up(&self) {
        let marks: Vec<(String, i64)> = {
            let mut state = self.state.lock().unwrap();
            let State {
                campaigns,
                unwritten,
                ..
            } = &mut *state;
            campaigns
                .iter_mut()
                .filter_map(|(id, q)| {
                    let first_open = [
                        q.waiting.front().map(|i| i.position),
                        q.pending.keys().next().copied(),
                        unwritten
                            .iter()
                            .find(|u| u.campaign_id == *id)
                            .map(|u| u.item.position),
                    ]
                    .into_iter()
                    .flatten()
                    .min()
                    .unwrap_or(q.seq + 1);
                    (first_open > q.cleaned_below).then(|| {
                        q.cleaned_below = first_open;
                        (id.clone(), first_open)
                    })
                })
                .collect()
        };
        for (campaign_id, below) in marks {
            let deleted = match &self.direct {
                Some(conn) => conn
                    .lock()
                    .unwrap()
                    .execute(
                        "DELETE FROM admissions WHERE campaign_id = ?1 AND position < ?2",
                        rusqlite::params![campaign_id, below],
                    )
                    .map(drop)
                    .map_err(|e| e.to_string()),
                None => self
                    .store
                    .forget_admissions_below(&campaign_id, below)
                    .await
                    .map_err(|e| e.to_string()),
            };
            if let Err(e) = deleted {
                // Harmless: the rows go with a later clean-up, and a rebuild skips holders.
                tracing::warn!(campaign = %campaign_id, error = %e,
                    "cannot delete handled admissions from the record");
                if let Some(q) = self.state.lock().unwrap().campaigns.get_mut(&campaign_id) {
                    q.cleaned_below = q.cleaned_below.min(below - 1);
                }
            }
        }
    }
}

/// Opens the record file for the writer: WAL, and every commit fsynced (`synchronous = FULL`).
fn open_record(file: &std::path::Path) -> rusqlite::Result<rusqlite::Connection> {
    let conn = rusqlite::Connection::open(file)?;
    conn.execute_batch(
        "PRAGMA journal_mode = WAL; PRAGMA synchronous = FULL; PRAGMA busy_timeout = 10000;",
    )?;
    Ok(conn)
}

/// One group commit on the writer's own connection: one transaction, one prepared statement
/// per row, one fsync. A row already written is skipped.
fn insert_direct(
    conn: &mut rusqlite::Connection,
    rows: &[AdmissionRow<'_>],
) -> rusqlite::Result<()> {
    let tx = conn.transaction()?;
    {
        let mut insert = tx.prepare_cached(
            "INSERT OR IGNORE INTO admissions \
             (campaign_id, position, user_id, request_id, admitted_at) \
             VALUES (?1, ?2, ?3, ?4, ?5)",
        )?;
        for row in rows {
            insert.execute(rusqlite::params![
                row.campaign_id,
                row.item.position,
                row.item.user_id,
                row.item.request_id,
                row.item.admitted_at
            ])?;
        }
    }
    tx.commit()
}

async fn write_loop(shared: Arc<Shared>, stop: CancellationToken) {
    let mut last_cleanup = Instant::now();
    loop {
        shared.write_all(&stop).await;
        if last_cleanup.elapsed() >= CLEANUP_EVERY {
            shared.clean_up().await;
            last_cleanup = Instant::now();
        }
        tokio::select! {
            () = shared.wake.notified() => {}
            () = tokio::time::sleep(CLEANUP_EVERY) => {}
            () = stop.cancelled() => return,
        }
    }
}

#[async_trait]
impl Admission for EmbeddedAdmission {
    fn kind(&self) -> &'static str {
        "embedded"
    }

    async fn sync_campaign(
        &self,
        campaign: &Campaign,
        issued: &[(String, i64)],
        force: bool,
    ) -> Result<bool> {
        let floor = Floor::of_issued(issued);
        let must_rebuild = |state: &State| {
            state
                .campaigns
                .get(campaign.id())
                .is_none_or(|q| force || q.admitted < floor.issued || q.seq < floor.last_position)
        };
        let mut rebuilt = false;
        if must_rebuild(&self.shared.state.lock().unwrap()) {
            // No write runs while the durable record is read and the queue rebuilt from it:
            // every admission is then either in the rows read or still unwritten.
            let _writing = self.shared.writing.lock().await;
            let recorded = self.shared.store.recorded_admissions(campaign.id()).await?;
            let mut state = self.shared.state.lock().unwrap();
            if must_rebuild(&state) {
                let mut queue = CampaignQueue::default();
                for (user, position) in issued {
                    let held = Held {
                        position: *position,
                        ticket: 0,
                    };
                    queue.users.insert(user.clone(), held);
                }
                for item in recorded {
                    // A holder's row outlived its chunk (a crash before the clean-up): the
                    // coupon is the database's word; the row goes with a later clean-up.
                    if queue.users.contains_key(&item.user_id) {
                        continue;
                    }
                    let held = Held {
                        position: item.position,
                        ticket: 0,
                    };
                    queue.users.insert(item.user_id.clone(), held);
                    queue.waiting.push_back(item);
                }
                for u in state.unwritten.iter() {
                    if u.campaign_id == campaign.id() {
                        let held = Held {
                            position: u.item.position,
                            ticket: u.ticket,
                        };
                        queue.users.insert(u.item.user_id.clone(), held);
                    }
                }
                queue.admitted = queue.users.len() as i64;
                queue.seq = queue.users.values().map(|h| h.position).max().unwrap_or(0);
                state.campaigns.insert(campaign.id().to_owned(), queue);
                rebuilt = true;
            }
        }
        let mut state = self.shared.state.lock().unwrap();
        // Gone again only if `clear` ran in between (a test's restart).
        let Some(q) = state.campaigns.get_mut(campaign.id()) else {
            return Err(AdmissionError::Lost(campaign.id().to_owned()));
        };
        q.capacity = campaign.capacity();
        q.opens_at = campaign.opens_at();
        q.closes_at = campaign.closes_at();
        Ok(rebuilt)
    }

    async fn admit(
        &self,
        campaign_id: &str,
        user_id: &str,
        request_id: &str,
        now_ms: i64,
        floor: Floor,
    ) -> Result<Admit> {
        let (outcome, wait) = {
            let mut state = self.shared.state.lock().unwrap();
            let State {
                campaigns,
                unwritten,
                last_ticket,
                written,
                waiters,
                ..
            } = &mut *state;
            let Some(q) = campaigns.get_mut(campaign_id) else {
                return Ok(Admit::Unknown);
            };
            if q.admitted < floor.issued || q.seq < floor.last_position {
                return Ok(Admit::Behind);
            }
            if q.opens_at.is_some_and(|t| now_ms < t) {
                return Ok(Admit::NotOpen);
            }
            if q.closes_at.is_some_and(|t| now_ms >= t) {
                return Ok(Admit::Closed);
            }
            if let Some(&held) = q.users.get(user_id) {
                // A second request of a user whose first is still being written is answered
                // with the first: once it is on disk.
                let wait = (held.ticket > *written).then(|| {
                    let (tx, rx) = oneshot::channel();
                    waiters.entry(held.ticket).or_default().push(tx);
                    rx
                });
                (
                    Admit::Duplicate {
                        position: held.position,
                    },
                    wait,
                )
            } else if q.admitted >= q.capacity {
                return Ok(Admit::SoldOut);
            } else {
                q.admitted += 1;
                q.seq += 1;
                *last_ticket += 1;
                let held = Held {
                    position: q.seq,
                    ticket: *last_ticket,
                };
                q.users.insert(user_id.to_owned(), held);
                unwritten.push_back(Unwritten {
                    campaign_id: campaign_id.to_owned(),
                    item: QueueItem {
                        id: held.position.to_string(),
                        user_id: user_id.to_owned(),
                        position: held.position,
                        request_id: request_id.to_owned(),
                        admitted_at: now_ms,
                    },
                    ticket: held.ticket,
                });
                self.shared.wake.notify_one();
                let (tx, rx) = oneshot::channel();
                waiters.entry(held.ticket).or_default().push(tx);
                (
                    Admit::Admitted {
                        position: held.position,
                    },
                    Some(rx),
                )
            }
        };
        written(wait).await?;
        Ok(outcome)
    }

    async fn position(&self, campaign_id: &str, user_id: &str) -> Result<Option<i64>> {
        let state = self.shared.state.lock().unwrap();
        Ok(state
            .campaigns
            .get(campaign_id)
            // A place whose record is still being written is held too (answered `503` after
            // DURABLE_WAIT, it is issued once written): its status reads `queued`, not `none`.
            .and_then(|q| q.users.get(user_id).copied())
            .map(|held| held.position))
    }

    async fn counts(&self, campaign_id: &str) -> Result<QueueCounts> {
        let state = self.shared.state.lock().unwrap();
        // Admissions whose record is not written yet hold their place too (they go to the
        // issuer once written).
        let unwritten = state
            .unwritten
            .iter()
            .filter(|u| u.campaign_id == campaign_id)
            .count();
        Ok(state
            .campaigns
            .get(campaign_id)
            .map_or_else(QueueCounts::default, |q| QueueCounts {
                admitted: q.admitted,
                queued: (q.waiting.len() + q.pending.len() + unwritten) as i64,
            }))
    }

    async fn claim(
        &self,
        campaign_id: &str,
        _consumer: &str,
        max: usize,
        reclaim_idle: Option<Duration>,
    ) -> Result<Vec<QueueItem>> {
        let mut state = self.shared.state.lock().unwrap();
        let Some(q) = state.campaigns.get_mut(campaign_id) else {
            return Err(AdmissionError::Lost(campaign_id.to_owned()));
        };
        let now = Instant::now();
        let mut items = Vec::new();
        if let Some(idle) = reclaim_idle {
            for p in q.pending.values_mut() {
                if items.len() == max {
                    break;
                }
                if now.duration_since(p.claimed_at) >= idle {
                    p.claimed_at = now;
                    items.push(p.item.clone());
                }
            }
        }
        if items.is_empty() {
            while items.len() < max {
                let Some(item) = q.waiting.pop_front() else {
                    break;
                };
                q.pending.insert(
                    item.position,
                    Pending {
                        item: item.clone(),
                        claimed_at: now,
                    },
                );
                items.push(item);
            }
        }
        Ok(items)
    }

    async fn ack(&self, campaign_id: &str, items: &[QueueItem]) -> Result<()> {
        // Their rows leave the record with the writer's next clean-up.
        let mut state = self.shared.state.lock().unwrap();
        if let Some(q) = state.campaigns.get_mut(campaign_id) {
            for item in items {
                q.pending.remove(&item.position);
            }
        }
        Ok(())
    }

    async fn forget(&self, campaign_id: &str, user_ids: &[String]) -> Result<()> {
        let mut state = self.shared.state.lock().unwrap();
        if let Some(q) = state.campaigns.get_mut(campaign_id) {
            for user in user_ids {
                q.users.remove(user);
            }
        }
        Ok(())
    }

    /// Down while admissions wait longer than [`DURABLE_WAIT`] for their record to be written
    /// (a full disk, a read-only or locked database): a `202` cannot be given now.
    async fn ping(&self) -> Result<()> {
        let oldest = {
            let state = self.shared.state.lock().unwrap();
            state.unwritten.front().map(|u| u.item.admitted_at)
        };
        match oldest {
            Some(at) if firstcome_core::clock::now_ms() - at > DURABLE_WAIT.as_millis() as i64 => {
                Err(AdmissionError::NotRecorded(format!(
                    "admissions have waited {} ms for their record to be written (the \
                     database refuses or stalls the write: disk full, read-only, locked?)",
                    firstcome_core::clock::now_ms() - at
                )))
            }
            _ => Ok(()),
        }
    }

    async fn durability(&self) -> String {
        match self.shared.store.dialect() {
            firstcome_store::Dialect::Sqlite => "a 202 is written to the SQLite database and \
                fsynced before it is sent: it survives a crash of the process or the machine"
                .into(),
            _ => "a 202 is committed to the database before it is sent: it survives what \
                the database's commits survive"
                .into(),
        }
    }
}
