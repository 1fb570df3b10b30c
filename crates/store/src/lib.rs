//! # firstcome-store
//!
//! The database: one sqlx `AnyPool` over SQLite, MySQL/MariaDB or PostgreSQL.
//!
//! Every query is written once with `?` placeholders; [`Dialect::sql`] rewrites them for
//! PostgreSQL, and the few statements that differ between engines (insert-or-ignore, row locks)
//! come from [`Dialect`]. Times are stored as UTC epoch milliseconds so that the same `i64`
//! binds everywhere.
//!
//! Layout: `changes` (per-campaign change counters for the live views), `campaigns` (campaign rows and their issued count), `coupons` (the chunk transaction
//! and coupon look-ups), `users`, `outbox` (claiming unpublished events), `eventlog` (the tables
//! of the embedded event bus and its consumers), `plugins` (what consumer plugins keep),
//! `admissions` (the embedded admission queue's durable record, and the issue mark), `audit`
//! (the audit log of admin changes), `retention` (purges of what is kept only for a while).

mod admissions;
mod audit;
mod campaigns;
mod changes;
mod coupons;
mod dead_letters;
mod eventlog;
mod outbox;
mod plugins;
mod retention;
mod users;

use std::borrow::Cow;
use std::str::FromStr;
use std::time::Duration;

use sqlx::any::{AnyConnectOptions, AnyPoolOptions};
use sqlx::migrate::Migrator;
use sqlx::{AnyPool, Connection, Executor};

pub use admissions::AdmissionRow;
pub use audit::{AuditEntry, AuditFilter};
pub use campaigns::CampaignRow;
pub use changes::Changes;
pub use coupons::{ChunkOutcome, CouponView};
pub use dead_letters::{LetterPlace, Settled, Settlement};
pub use eventlog::{HistoryEntry, LogRecord};
pub use outbox::{OutboxClaim, OutboxEvent};
pub use plugins::{Effects, Pending, PluginWrites, Scope};
pub use users::UserProfile;

static SQLITE_MIGRATIONS: Migrator = sqlx::migrate!("../../migrations/sqlite");
static MYSQL_MIGRATIONS: Migrator = sqlx::migrate!("../../migrations/mysql");
static POSTGRES_MIGRATIONS: Migrator = sqlx::migrate!("../../migrations/postgres");

/// What can go wrong talking to the database.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("unsupported database URL scheme in {0:?}: use sqlite:, mysql:// or postgres://")]
    UnsupportedUrl(String),
    /// The URL names an engine this binary was built without (`--no-default-features`).
    #[error(
        "this firstcome was built without {0} support: build it with `--features {1}` (on by default)"
    )]
    NotBuilt(&'static str, &'static str),
    #[error("capacity {capacity} is below the {issued} coupons already issued")]
    CapacityBelowIssued { capacity: i64, issued: i64 },
    #[error("campaign {0} is not in the database")]
    UnknownCampaign(String),
    /// A counter would leave the signed 64-bit range; nothing was written.
    #[error(
        "{table} {key:?} would overflow: {stored} + {delta} does not fit in a signed 64-bit integer"
    )]
    Overflow {
        table: &'static str,
        key: String,
        stored: i64,
        delta: i64,
    },
    /// Other members of a consumer group kept marking the same events processed while this
    /// one tried to apply them; the caller retries.
    #[error("consumer group {0}: the events' processed marks kept changing under the transaction")]
    Contended(String),
    /// The server takes no writes (MySQL/MariaDB `read_only`, a PostgreSQL standby).
    #[error("the database is read-only: it takes no writes")]
    ReadOnly,
    #[error(transparent)]
    Sqlx(#[from] sqlx::Error),
    #[error(transparent)]
    Migrate(#[from] sqlx::migrate::MigrateError),
}

impl StoreError {
    /// The database rolled the transaction back to break a deadlock or a serialisation
    /// conflict (SQLSTATE 40001, or PostgreSQL's 40P01): running it again is the answer.
    pub fn is_transient(&self) -> bool {
        matches!(self, Self::Sqlx(sqlx::Error::Database(db))
            if matches!(db.code().as_deref(), Some("40001" | "40P01")))
    }

    /// The database cannot serve this now, through no fault of the request: no connection
    /// came free in time, a connection broke, a lock or statement timeout passed, the server
    /// is read-only, shutting down or out of disk. Answered `503` and tried again later; any
    /// other error is a bug or a broken schema.
    pub fn is_unavailable(&self) -> bool {
        if matches!(self, Self::ReadOnly) {
            return true;
        }
        let Self::Sqlx(e) = self else {
            return false;
        };
        match e {
            sqlx::Error::PoolTimedOut
            | sqlx::Error::PoolClosed
            | sqlx::Error::Io(_)
            | sqlx::Error::Tls(_)
            | sqlx::Error::WorkerCrashed => true,
            sqlx::Error::Database(db) => {
                #[cfg(feature = "mysql")]
                if let Some(my) = db.try_downcast_ref::<sqlx::mysql::MySqlDatabaseError>() {
                    // Lock wait timeout, statement time limit (MySQL, MariaDB), read-only server
                    // or transaction,
                    // too many connections, server shutting down, disk full.
                    return matches!(
                        my.number(),
                        1205 | 3024 | 1969 | 1290 | 1792 | 1836 | 1040 | 1053 | 1021
                    );
                }
                let code = db.code();
                if db.try_downcast_ref::<sqlx::sqlite::SqliteError>().is_some() {
                    // SQLite's primary result codes (the low byte of an extended one): busy,
                    // locked, read-only, I/O error, disk full, cannot open.
                    return code
                        .and_then(|c| c.parse::<i32>().ok())
                        .is_some_and(|c| matches!(c & 0xff, 5 | 6 | 8 | 10 | 13 | 14));
                }
                // PostgreSQL's SQLSTATE: lock not available, statement cancelled by its
                // timeout, read-only transaction, too many connections, disk full, out of
                // memory, shutting down, cannot connect now.
                matches!(
                    code.as_deref(),
                    Some(
                        "55P03"
                            | "57014"
                            | "25006"
                            | "53300"
                            | "53100"
                            | "53200"
                            | "57P01"
                            | "57P02"
                            | "57P03"
                    )
                )
            }
            _ => false,
        }
    }
}

pub type Result<T, E = StoreError> = std::result::Result<T, E>;

/// The SQL engine behind the pool.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Dialect {
    Sqlite,
    MySql,
    Postgres,
}

impl Dialect {
    pub fn from_url(url: &str) -> Result<Self> {
        if url.starts_with("sqlite:") {
            Ok(Self::Sqlite)
        } else if url.starts_with("mysql://") || url.starts_with("mariadb://") {
            if cfg!(feature = "mysql") {
                Ok(Self::MySql)
            } else {
                Err(StoreError::NotBuilt("MySQL/MariaDB", "mysql"))
            }
        } else if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            if cfg!(feature = "postgres") {
                Ok(Self::Postgres)
            } else {
                Err(StoreError::NotBuilt("PostgreSQL", "postgres"))
            }
        } else {
            Err(StoreError::UnsupportedUrl(
                firstcome_core::bounded::redact_url(url),
            ))
        }
    }

    /// Rewrites `?` placeholders as `$1, $2, ...` for PostgreSQL; other engines take `?`.
    pub fn sql(self, query: &str) -> Cow<'_, str> {
        if self != Self::Postgres || !query.contains('?') {
            return Cow::Borrowed(query);
        }
        let mut out = String::with_capacity(query.len() + 16);
        let mut n = 0;
        for ch in query.chars() {
            if ch == '?' {
                n += 1;
                out.push('$');
                out.push_str(&n.to_string());
            } else {
                out.push(ch);
            }
        }
        Cow::Owned(out)
    }

    /// `INSERT` that skips rows violating a unique key; `rows_affected` says whether it inserted.
    fn insert_ignore(self, table_and_values: &str) -> String {
        match self {
            // INSERT IGNORE reports 0 affected rows for a skipped duplicate, which is what
            // the callers test; inputs are validated before, so no other warning is hidden.
            Self::MySql => format!("INSERT IGNORE INTO {table_and_values}"),
            Self::Sqlite | Self::Postgres => {
                format!("INSERT INTO {table_and_values} ON CONFLICT DO NOTHING")
            }
        }
    }
}

/// Longest wait for a free connection of a pool before the caller is told `unavailable`.
pub const ACQUIRE_TIMEOUT: Duration = Duration::from_secs(5);

/// On MySQL and PostgreSQL, longest wait of one statement for a lock held by someone else.
pub const LOCK_TIMEOUT: Duration = Duration::from_secs(5);

/// On MySQL and PostgreSQL, longest run of one statement (on MySQL, of a `SELECT`).
pub const STATEMENT_TIMEOUT: Duration = Duration::from_secs(30);

/// On MySQL and PostgreSQL, the connections of the paths that keep the promise (the chunk
/// transactions and the embedded queue's admission record), apart from the 16 of the rest.
pub const PROMISE_CONNECTIONS: u32 = 4;

/// A handle on the database; cheap to clone.
#[derive(Clone, Debug)]
pub struct Store {
    pool: AnyPool,
    /// How to connect, for the migrations' own connection.
    options: AnyConnectOptions,
    /// The embedded admission queue's record (`admissions`), written only by its group
    /// commits, which must be on disk before the host answers. On SQLite a database file of
    /// its own beside the main one (`{name}-admissions.db`), one connection with
    /// `synchronous = FULL` so that each commit fsyncs its WAL: the group commit then never
    /// waits for the issuer's write lock. Elsewhere the main pool (the server's own settings
    /// decide, both durable by default), on the chunk transactions' connections.
    record: AnyPool,
    /// On SQLite, the record's file, which the embedded queue's writer opens itself.
    record_file: Option<std::path::PathBuf>,
    /// The chunk transactions' connections. On SQLite two connections to the main file with
    /// `synchronous = FULL`: a committed coupon is the platform's promise kept, so its commit
    /// fsyncs the WAL (one fsync per chunk of up to `chunk_size` coupons), while the many small
    /// commits of consumers and the relay keep `NORMAL` (safe against a process crash; their
    /// work is redone from the bus after a power loss). Elsewhere [`PROMISE_CONNECTIONS`] of
    /// their own.
    issuing: AnyPool,
    /// On SQLite, the turn to write to the main file (see [`Store::write_turn`]).
    write_turn: Option<std::sync::Arc<tokio::sync::Mutex<()>>>,
    dialect: Dialect,
}

/// The record's table in its own SQLite file (MySQL and PostgreSQL have it from their
/// migrations).
const SQLITE_RECORD_SCHEMA: &str = "CREATE TABLE IF NOT EXISTS admissions (
    campaign_id TEXT   NOT NULL,
    position    BIGINT NOT NULL,
    user_id     TEXT   NOT NULL,
    request_id  TEXT   NOT NULL,
    admitted_at BIGINT NOT NULL,
    PRIMARY KEY (campaign_id, position)
)";

#[cfg(test)]
fn sqlite_record_url(url: &str) -> Option<String> {
    sqlite_record(url).map(|(_, url)| url)
}

/// The admission record's SQLite file beside the main database file, and its URL
/// (`sqlite:data/firstcome.db?mode=rwc` -> `sqlite:data/firstcome-admissions.db?mode=rwc`);
/// `None` for an in-memory database, which keeps nothing anyway.
fn sqlite_record(url: &str) -> Option<(std::path::PathBuf, String)> {
    let rest = url.strip_prefix("sqlite:")?;
    let (path, query) = rest.split_once('?').unwrap_or((rest, ""));
    let bare = path.trim_start_matches("//");
    if bare.is_empty() || bare == ":memory:" || query.contains("mode=memory") {
        return None;
    }
    let file = std::path::Path::new(bare);
    let stem = file.file_stem()?.to_string_lossy();
    let name = match file.extension() {
        Some(ext) => format!("{stem}-admissions.{}", ext.to_string_lossy()),
        None => format!("{stem}-admissions"),
    };
    let record = file.with_file_name(name);
    let prefix = &path[..path.len() - bare.len()];
    let query = if query.is_empty() {
        String::new()
    } else {
        format!("?{query}")
    };
    let url = format!("sqlite:{prefix}{}{query}", record.display());
    Some((record, url))
}

impl Store {
    /// Connects (creating an SQLite file when missing) without migrating.
    pub async fn connect(url: &str) -> Result<Self> {
        sqlx::any::install_default_drivers();
        let dialect = Dialect::from_url(url)?;
        let url = match dialect {
            Dialect::Sqlite if !url.contains("mode=") => {
                let sep = if url.contains('?') { '&' } else { '?' };
                format!("{url}{sep}mode=rwc")
            }
            _ => url.to_owned(),
        };
        let options = AnyConnectOptions::from_str(&url)?;
        let pool_options = |connections: u32, synchronous: &'static str| {
            let pool = AnyPoolOptions::new()
                .max_connections(connections)
                .acquire_timeout(ACQUIRE_TIMEOUT);
            if dialect != Dialect::Sqlite {
                // A query waits for a lock at most LOCK_TIMEOUT and runs at most
                // STATEMENT_TIMEOUT, then fails as `unavailable` (503, or the issuer's and
                // relay's retry): a table locked by someone else parks no connection for
                // longer, so the pool is not used up behind it.
                let (limits, time_limits) = match dialect {
                    Dialect::Postgres => (
                        format!(
                            "SET lock_timeout = {}; SET statement_timeout = {}",
                            LOCK_TIMEOUT.as_millis(),
                            STATEMENT_TIMEOUT.as_millis()
                        ),
                        vec![],
                    ),
                    // The statement limit is MariaDB's `max_statement_time` (seconds) or
                    // MySQL's `max_execution_time` (ms): the one the server knows is set.
                    _ => (
                        format!(
                            "SET SESSION innodb_lock_wait_timeout = {0}, SESSION lock_wait_timeout = {0}",
                            LOCK_TIMEOUT.as_secs()
                        ),
                        vec![
                            format!(
                                "SET SESSION max_statement_time = {}",
                                STATEMENT_TIMEOUT.as_secs()
                            ),
                            format!(
                                "SET SESSION max_execution_time = {}",
                                STATEMENT_TIMEOUT.as_millis()
                            ),
                        ],
                    ),
                };
                return pool.after_connect(move |conn, _| {
                    let (limits, time_limits) = (limits.clone(), time_limits.clone());
                    Box::pin(async move {
                        conn.execute(sqlx::raw_sql(&limits)).await?;
                        for set in &time_limits {
                            if conn.execute(sqlx::raw_sql(set)).await.is_ok() {
                                break;
                            }
                        }
                        Ok(())
                    })
                });
            }
            pool.after_connect(move |conn, _| {
                Box::pin(async move {
                    // WAL lets readers run beside the one writer; NORMAL is durable in WAL
                    // mode except for the last transactions on power loss (not process loss);
                    // FULL fsyncs the WAL at every commit.
                    let pragmas = format!(
                        "PRAGMA journal_mode = WAL; PRAGMA synchronous = {synchronous}; \
                         PRAGMA busy_timeout = 10000; PRAGMA foreign_keys = ON;"
                    );
                    conn.execute(sqlx::raw_sql(&pragmas)).await?;
                    Ok(())
                })
            })
        };
        let pool = pool_options(16, "NORMAL")
            .connect_with(options.clone())
            .await?;
        let issuing = match dialect {
            Dialect::Sqlite => {
                pool_options(2, "FULL")
                    .connect_with(options.clone())
                    .await?
            }
            // Its own connections: reads that pile up behind a lock never hold the ones the
            // promise needs.
            _ => {
                pool_options(PROMISE_CONNECTIONS, "")
                    .connect_with(options.clone())
                    .await?
            }
        };
        let sqlite_record = sqlite_record(&url).filter(|_| dialect == Dialect::Sqlite);
        let record_file = sqlite_record.as_ref().map(|(file, _)| file.clone());
        let record = match sqlite_record.map(|(_, url)| url) {
            Some(record_url) => {
                let record = pool_options(1, "FULL")
                    .connect_with(AnyConnectOptions::from_str(&record_url)?)
                    .await?;
                sqlx::query(SQLITE_RECORD_SCHEMA).execute(&record).await?;
                record
            }
            None => issuing.clone(),
        };
        Ok(Self {
            options,
            pool,
            record,
            record_file,
            issuing,
            write_turn: (dialect == Dialect::Sqlite).then(Default::default),
            dialect,
        })
    }

    /// Connects and applies the migrations of the engine behind `url`.
    pub async fn open(url: &str) -> Result<Self> {
        let store = Self::connect(url).await?;
        store.migrate().await?;
        Ok(store)
    }

    /// Applies the migrations not yet applied. On MySQL and PostgreSQL on a connection of its
    /// own, without the pools' lock and statement timeouts: hosts starting together wait for
    /// each other's migration, and a long one is not cut off.
    pub async fn migrate(&self) -> Result<()> {
        let migrator = match self.dialect {
            Dialect::Sqlite => &SQLITE_MIGRATIONS,
            Dialect::MySql => &MYSQL_MIGRATIONS,
            Dialect::Postgres => &POSTGRES_MIGRATIONS,
        };
        if self.dialect == Dialect::Sqlite {
            migrator.run(&self.pool).await?;
        } else {
            let mut conn = sqlx::AnyConnection::connect_with(&self.options).await?;
            let ran = migrator.run(&mut conn).await;
            let _ = conn.close().await;
            ran?;
        }
        Ok(())
    }

    pub fn dialect(&self) -> Dialect {
        self.dialect
    }

    /// On SQLite, the admission record's own file (created, with its table, by `connect`).
    pub fn record_file(&self) -> Option<&std::path::Path> {
        self.record_file.as_deref()
    }

    pub fn pool(&self) -> &AnyPool {
        &self.pool
    }

    /// The database server's clock, as UTC epoch milliseconds (MySQL/MariaDB, PostgreSQL);
    /// `None` on SQLite, which runs on this host's clock.
    pub async fn clock_ms(&self) -> Result<Option<i64>> {
        let sql = match self.dialect {
            Dialect::Sqlite => return Ok(None),
            // UTC directly: `UNIX_TIMESTAMP(NOW())` goes through the session's time zone,
            // ambiguous for an hour when its daylight saving time ends.
            Dialect::MySql => {
                "SELECT CAST(TIMESTAMPDIFF(MICROSECOND, '1970-01-01 00:00:00', UTC_TIMESTAMP(6)) DIV 1000 AS SIGNED)"
            }
            Dialect::Postgres => {
                "SELECT CAST(EXTRACT(EPOCH FROM clock_timestamp()) * 1000 AS BIGINT)"
            }
        };
        let ms: i64 = sqlx::query_scalar(sql).fetch_one(&self.pool).await?;
        Ok(Some(ms))
    }

    /// Answers when the database does and takes writes; used by readiness. A MySQL/MariaDB
    /// server with `read_only` set, or a PostgreSQL session that is read-only (a standby, or
    /// `default_transaction_read_only`), fails with [`StoreError::ReadOnly`]: it could not
    /// issue a coupon now.
    pub async fn ping(&self) -> Result<()> {
        let read_only = match self.dialect {
            Dialect::Sqlite => {
                sqlx::query("SELECT 1").execute(&self.pool).await?;
                false
            }
            Dialect::MySql => {
                let on: i64 = sqlx::query_scalar("SELECT CAST(@@global.read_only AS SIGNED)")
                    .fetch_one(&self.pool)
                    .await?;
                on != 0
            }
            Dialect::Postgres => {
                let on: String =
                    sqlx::query_scalar("SELECT current_setting('transaction_read_only')")
                        .fetch_one(&self.pool)
                        .await?;
                on == "on"
            }
        };
        if read_only {
            return Err(StoreError::ReadOnly);
        }
        Ok(())
    }

    pub async fn close(&self) {
        self.record.close().await;
        self.issuing.close().await;
        self.pool.close().await;
    }

    /// On SQLite, waits for this process's turn to write to the main database file; the turn
    /// lasts while the guard lives, so hold it from `begin` to `commit`. SQLite lets one
    /// connection write at a time. Left to its busy handler, a waiting writer sleeps in steps
    /// of up to 100 ms however soon the lock frees, and a deferred transaction whose read
    /// snapshot went stale fails at once (`SQLITE_BUSY`); with the issuer, the relay and every
    /// consumer group writing, that kept the embedded bus seconds behind. The queue here is
    /// fair (first come, first served) and hands the turn over the moment a commit ends.
    /// `None` on MySQL and PostgreSQL, whose row locks let writers run side by side. Writes
    /// from another process (tests, a second host on one file) still meet the busy handler.
    /// The turn is not re-entrant: a method holding it calls no other method that takes it.
    async fn write_turn(&self) -> Option<tokio::sync::MutexGuard<'_, ()>> {
        match &self.write_turn {
            Some(turn) => Some(turn.lock().await),
            None => None,
        }
    }

    fn sql<'a>(&self, query: &'a str) -> Cow<'a, str> {
        self.dialect.sql(query)
    }
}

/// Reads a long-text column. MySQL's TEXT reaches the `Any` driver as a BLOB, whatever its
/// collation, so bytes are accepted too (and must be UTF-8).
fn text(row: &sqlx::any::AnyRow, index: usize) -> Result<String> {
    use sqlx::Row;
    match row.try_get::<String, _>(index) {
        Ok(s) => Ok(s),
        Err(sqlx::Error::ColumnDecode { .. }) => {
            let bytes: Vec<u8> = row.try_get(index)?;
            String::from_utf8(bytes).map_err(|e| {
                StoreError::Sqlx(sqlx::Error::Decode(format!("column {index}: {e}").into()))
            })
        }
        Err(e) => Err(e.into()),
    }
}

/// `(?, ?, ...)` with `n` placeholders, for `IN` lists and multi-row inserts.
fn placeholders(n: usize) -> String {
    let mut s = String::with_capacity(2 + n * 3);
    s.push('(');
    for i in 0..n {
        if i > 0 {
            s.push_str(", ");
        }
        s.push('?');
    }
    s.push(')');
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn postgres_placeholders_are_numbered() {
        let q = Dialect::Postgres.sql("SELECT a FROM t WHERE b = ? AND c IN (?, ?)");
        assert_eq!(q, "SELECT a FROM t WHERE b = $1 AND c IN ($2, $3)");
        assert_eq!(Dialect::MySql.sql("x = ?"), "x = ?");
    }

    #[test]
    #[cfg(all(feature = "mysql", feature = "postgres"))]
    fn urls_pick_their_dialect() {
        assert_eq!(
            Dialect::from_url("sqlite:data/x.db").unwrap(),
            Dialect::Sqlite
        );
        assert_eq!(
            Dialect::from_url("mysql://root@h/db").unwrap(),
            Dialect::MySql
        );
        assert_eq!(
            Dialect::from_url("postgres://h/db").unwrap(),
            Dialect::Postgres
        );
        assert!(Dialect::from_url("oracle://x").is_err());
    }

    #[test]
    fn the_admission_record_sits_beside_the_sqlite_file() {
        assert_eq!(
            sqlite_record_url("sqlite:data/firstcome.db?mode=rwc").as_deref(),
            Some("sqlite:data/firstcome-admissions.db?mode=rwc")
        );
        assert_eq!(
            sqlite_record_url("sqlite:///tmp/x/db.sqlite3").as_deref(),
            Some("sqlite:///tmp/x/db-admissions.sqlite3")
        );
        assert_eq!(
            sqlite_record_url("sqlite:state").as_deref(),
            Some("sqlite:state-admissions")
        );
        assert_eq!(sqlite_record_url("sqlite::memory:"), None);
        assert_eq!(sqlite_record_url("sqlite:x.db?mode=memory"), None);
        assert_eq!(sqlite_record_url("mysql://h/db"), None);
    }

    #[test]
    fn placeholder_lists() {
        assert_eq!(placeholders(3), "(?, ?, ?)");
    }

    /// A build without an engine says which feature brings it, instead of failing later in
    /// the driver.
    #[test]
    #[cfg(not(feature = "mysql"))]
    fn an_engine_not_built_in_is_named() {
        let e = Dialect::from_url("mysql://root@h/db").unwrap_err();
        assert!(e.to_string().contains("--features mysql"), "{e}");
    }
}
