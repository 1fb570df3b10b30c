//! Time. Inside the process a moment is UTC epoch milliseconds: an `i64` where it is stored
//! or computed with, a [`Timestamp`] where it travels in a document (an event, an API body),
//! which becomes RFC 3339 text only when the document is serialised and is read back from it
//! when one comes in.

use std::borrow::Cow;
use std::fmt;

use std::sync::OnceLock;
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::time::Instant;

use chrono::{DateTime, SecondsFormat, Utc};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// This process's monotonic zero: the shared clock is kept as an offset from it.
fn base() -> Instant {
    static BASE: OnceLock<Instant> = OnceLock::new();
    *BASE.get_or_init(Instant::now)
}

/// The shared clock's epoch milliseconds at [`base`], once [`follow`] was called.
static SHARED_AT_BASE: AtomicI64 = AtomicI64::new(0);
static FOLLOWING: AtomicBool = AtomicBool::new(false);

/// Now, as UTC epoch milliseconds, on the one clock every host of a deployment judges by:
/// the shared backend's (Redis's `TIME` or the database's, read by the platform and passed
/// to [`follow`]) carried forward on this process's monotonic clock, so that a host whose
/// wall clock is off, or is stepped, opens and closes campaigns and holds leases at the same
/// moments as the others. Before the first reading (and with SQLite alone, where there is one
/// host) it is this host's wall clock.
pub fn now_ms() -> i64 {
    if FOLLOWING.load(Ordering::Relaxed) {
        SHARED_AT_BASE.load(Ordering::Relaxed) + base().elapsed().as_millis() as i64
    } else {
        host_now_ms()
    }
}

/// This host's own wall clock, as UTC epoch milliseconds: for logs and for measuring how far
/// it is from the shared clock, never for judging a window or a lease.
pub fn host_now_ms() -> i64 {
    Utc::now().timestamp_millis()
}

/// Makes [`now_ms`] follow a shared clock that read `shared_ms` at the instant `at` (the
/// middle of the round trip that read it). Returns how far this host's wall clock is ahead of
/// the shared one, in ms (negative: behind).
pub fn follow(shared_ms: i64, at: Instant) -> i64 {
    let since_base = at.saturating_duration_since(base()).as_millis() as i64;
    SHARED_AT_BASE.store(shared_ms - since_base, Ordering::Relaxed);
    FOLLOWING.store(true, Ordering::Relaxed);
    host_now_ms() - now_ms()
}

/// Formats epoch milliseconds as RFC 3339 with millisecond precision, in UTC (`...Z`).
pub fn to_rfc3339(ms: i64) -> String {
    DateTime::<Utc>::from_timestamp_millis(ms)
        .unwrap_or_default()
        .to_rfc3339_opts(SecondsFormat::Millis, true)
}

/// A moment, as UTC epoch milliseconds, in a document. Serialised as RFC 3339 with millisecond
/// precision in UTC (`2026-11-29T09:00:00.000Z`); read from RFC 3339 with any offset (sub-
/// millisecond digits are dropped). Its milliseconds go on as they are: to the database, to a
/// plugin's `issued-at-ms`, with no second parse.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Timestamp(i64);

impl Timestamp {
    pub fn from_millis(ms: i64) -> Self {
        Self(ms)
    }

    pub fn now() -> Self {
        Self(now_ms())
    }

    /// UTC epoch milliseconds.
    pub fn millis(self) -> i64 {
        self.0
    }

    /// Reads RFC 3339 text (any offset).
    pub fn parse(text: &str) -> Result<Self, String> {
        DateTime::parse_from_rfc3339(text)
            .map(|t| Self(t.timestamp_millis()))
            .map_err(|e| format!("{text:?} is not an RFC 3339 time: {e}"))
    }
}

impl fmt::Display for Timestamp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&to_rfc3339(self.0))
    }
}

impl Serialize for Timestamp {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&to_rfc3339(self.0))
    }
}

impl<'de> Deserialize<'de> for Timestamp {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = Cow::<str>::deserialize(deserializer)?;
        Self::parse(&text).map_err(serde::de::Error::custom)
    }
}

impl utoipa::PartialSchema for Timestamp {
    fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
        utoipa::openapi::schema::ObjectBuilder::new()
            .schema_type(utoipa::openapi::schema::Type::String)
            .format(Some(utoipa::openapi::SchemaFormat::KnownFormat(
                utoipa::openapi::KnownFormat::DateTime,
            )))
            .into()
    }
}

impl utoipa::ToSchema for Timestamp {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps_leave_as_rfc3339_and_come_back_as_milliseconds() {
        let t = Timestamp::from_millis(1_795_000_000_123);
        let json = serde_json::to_string(&t).unwrap();
        assert_eq!(json, "\"2026-11-18T11:06:40.123Z\"");
        assert_eq!(serde_json::from_str::<Timestamp>(&json).unwrap(), t);
        // Any offset reads as the same moment.
        let offset: Timestamp = serde_json::from_str("\"2026-11-18T20:06:40.123+09:00\"").unwrap();
        assert_eq!(offset, t);
        let err = serde_json::from_str::<Timestamp>("\"yesterday\"").unwrap_err();
        assert!(err.to_string().contains("not an RFC 3339 time"), "{err}");
    }
}
