//! The campaign document: a TOML file `{campaign_id}.toml` or the JSON body of the admin `PUT`.

use std::collections::BTreeMap;

use chrono::{DateTime, FixedOffset};
use serde::{Deserialize, Serialize};

use crate::plugin_spec::PluginSpec;

/// Most requests one issuing transaction takes when a campaign does not say. A chunk is
/// whatever waits in the queue up to this many, so a trickle is issued a request or two at a
/// time and a storm in chunks this large (one multi-row `INSERT` per table: see
/// `store::coupons`). Measured in BENCHMARKS.md ("Issuing at the database's speed").
pub const DEFAULT_CHUNK_SIZE: u32 = 500;
pub const MAX_CAPACITY: i64 = 100_000_000;
pub const MAX_CHUNK_SIZE: u32 = 1_000;

/// Most buckets one campaign's admission state is split into (`shards`): one per Redis
/// Cluster primary is the point, and a cluster past 64 primaries is rare.
pub const MAX_SHARDS: u32 = 64;
pub const MAX_NAME_CHARS: usize = 200;
/// Earliest and latest time a campaign may name (`opens_at`, `closes_at`,
/// `coupon_expires_at`): 1970-01-01T00:00:00Z and 9999-12-31T23:59:59.999Z, in epoch ms. Events
/// carry times as RFC 3339 text, whose years have four digits, and as epoch milliseconds.
pub const MIN_TIME_MS: i64 = 0;
pub const MAX_TIME_MS: i64 = 253_402_300_799_999;
/// The name's rule for the OpenAPI document: some character that is neither control nor white
/// space, and no control characters (see `api::error::USER_ID_PATTERN` for the classes).
pub const NAME_PATTERN: &str = concat!(
    r"^[^\x00-\x1f\x7f-\x9f]*",
    r"[^\x00-\x20\x7f-\xa0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000]",
    r"[^\x00-\x1f\x7f-\x9f]*$",
);

/// A time as RFC 3339 text (JSON, or a quoted TOML string) or as a TOML date-time written
/// without quotes (`opens_at = 2026-03-01T10:00:00+09:00`), which TOML parses as a value of its
/// own. Either needs an offset: a local time names no moment.
fn time_text_or_toml<'de, D>(deserializer: D) -> Result<Option<DateTime<FixedOffset>>, D::Error>
where
    D: serde::Deserializer<'de>,
{
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Time {
        Text(String),
        Toml(toml::value::Datetime),
    }
    let text = match Option::<Time>::deserialize(deserializer)? {
        None => return Ok(None),
        Some(Time::Text(text)) => text,
        Some(Time::Toml(datetime)) => datetime.to_string(),
    };
    DateTime::parse_from_rfc3339(&text).map(Some).map_err(|e| {
        serde::de::Error::custom(format!(
            "{text:?} is not an RFC 3339 time with an offset (such as 2026-03-01T10:00:00+09:00): {e}"
        ))
    })
}

/// Why a campaign document or id was refused. The message says what to fix.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SpecError {
    #[error("invalid campaign id {0:?}: use 1 to 64 characters of lowercase a-z, 0-9, '-' and '_'")]
    InvalidId(String),
    #[error("{0}")]
    Parse(String),
    #[error("{field}: {problem}")]
    Invalid {
        field: &'static str,
        problem: String,
    },
}

fn invalid(field: &'static str, problem: impl Into<String>) -> SpecError {
    SpecError::Invalid {
        field,
        problem: problem.into(),
    }
}

/// Checks a campaign id: 1-64 characters of `a-z 0-9 - _`.
pub fn validate_id(id: &str) -> Result<(), SpecError> {
    let ok = !id.is_empty()
        && id.len() <= 64
        && id
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_');
    if ok {
        Ok(())
    } else {
        Err(SpecError::InvalidId(id.to_owned()))
    }
}

/// What an operator writes for a campaign.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(example = json!({
    "name": "Spring sale", "capacity": 1000, "value": 5000,
    "opens_at": "2026-03-01T10:00:00+09:00", "closes_at": "2026-03-01T22:00:00+09:00",
    "chunk_size": 500
}))]
pub struct CampaignSpec {
    #[schema(value_type = crate::schema::CampaignName)]
    pub name: String,
    /// How many coupons the campaign issues in all.
    #[schema(minimum = 1, maximum = 100_000_000)] // MAX_CAPACITY
    pub capacity: i64,
    /// The coupon's worth, an integer in the smallest currency unit; `value × capacity` must
    /// fit in a signed 64-bit integer.
    #[schema(minimum = 0)]
    pub value: i64,
    /// When requests are first admitted (RFC 3339); absent: at once.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "time_text_or_toml"
    )]
    #[schema(value_type = Option<String>, format = DateTime)]
    pub opens_at: Option<DateTime<FixedOffset>>,
    /// When admission stops (RFC 3339, after `opens_at`); absent: when sold out.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "time_text_or_toml"
    )]
    #[schema(value_type = Option<String>, format = DateTime)]
    pub closes_at: Option<DateTime<FixedOffset>>,
    /// When issued coupons expire (RFC 3339, after `opens_at`); absent: never.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "time_text_or_toml"
    )]
    #[schema(value_type = Option<String>, format = DateTime)]
    pub coupon_expires_at: Option<DateTime<FixedOffset>>,
    /// The most requests one database transaction issues (default 500). A chunk takes whatever
    /// waits in the queue up to this many: small while requests trickle in, this large in a
    /// storm.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(minimum = 1, maximum = 1_000)] // MAX_CHUNK_SIZE
    pub chunk_size: Option<u32>,
    /// How many buckets the campaign's admission state is split into on a Redis (Cluster)
    /// queue (default 1; at most 64 and at most `capacity`): each bucket has its own hash tag,
    /// so a cluster spreads one hot campaign over several primaries. A user always maps to one
    /// bucket; stock moves between buckets when one sells out. First come holds within a
    /// bucket; across buckets, to within their timing. Cannot change once the campaign was
    /// applied (choose it up front; the id keeps it, even after removal). The embedded queue
    /// keeps one bucket whatever this says.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(minimum = 1, maximum = 64)] // MAX_SHARDS
    pub shards: Option<u32>,
    /// The consumer plugin of each role (`notification`, `history`, `stats`, or any other
    /// role name: 1-64 of `a-z`, `0-9`, `-` and `_`): `[plugins.{role}]` sections.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub plugins: BTreeMap<String, PluginSpec>,
    /// When the campaign becomes visible to shoppers (RFC 3339); absent: always. Before it,
    /// every public route answers as for an unknown campaign; the admin API sees it.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "time_text_or_toml"
    )]
    #[schema(value_type = Option<String>, format = DateTime)]
    pub announce_at: Option<DateTime<FixedOffset>>,
    /// Whether anyone may read the campaign's statistics (revenue, demographics) and their
    /// stream; default `false`: only with the admin credential.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub public_stats: bool,
    /// Admission rates of this campaign, in place of the host's `limits.*`.
    #[serde(default, skip_serializing_if = "CampaignLimits::is_empty")]
    pub limits: CampaignLimits,
}

/// A campaign's own admission rates (`[limits]`); each absent one is the host's. A rate of 0
/// turns that bucket off for the campaign.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, Eq, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CampaignLimits {
    /// Admission requests per second one shopper may send, sustained.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub per_user_per_s: Option<u32>,
    /// Admission requests one shopper may send at once.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub per_user_burst: Option<u32>,
    /// Admission requests per second from one client address, sustained.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub per_address_per_s: Option<u32>,
    /// Admission requests at once from one client address.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub per_address_burst: Option<u32>,
}

impl CampaignLimits {
    /// Whether the campaign sets no rate of its own.
    pub fn is_empty(&self) -> bool {
        *self == Self::default()
    }
}

impl CampaignSpec {
    pub fn from_toml(text: &str) -> Result<Self, SpecError> {
        let spec: Self =
            toml::from_str(text).map_err(|e| SpecError::Parse(parse_error(text, &e)))?;
        spec.validate()?;
        Ok(spec)
    }

    pub fn to_toml(&self) -> String {
        toml::to_string(self).expect("a campaign spec always serialises")
    }

    /// Checks every field; the first problem found is returned.
    pub fn validate(&self) -> Result<(), SpecError> {
        let name = self.name.trim();
        if name.is_empty() || self.name.chars().count() > MAX_NAME_CHARS {
            return Err(invalid(
                "name",
                format!("must be 1 to {MAX_NAME_CHARS} characters, not only white space"),
            ));
        }
        if self.name.chars().any(char::is_control) {
            return Err(invalid("name", "must not contain control characters"));
        }
        if !(1..=MAX_CAPACITY).contains(&self.capacity) {
            return Err(invalid(
                "capacity",
                format!("must be between 1 and {MAX_CAPACITY}"),
            ));
        }
        if self.value < 0 {
            return Err(invalid("value", "must not be negative"));
        }
        // The campaign's revenue (`value` × coupons issued) is a signed 64-bit counter.
        if self.value.checked_mul(self.capacity).is_none() {
            return Err(invalid(
                "value",
                format!(
                    "value × capacity must fit in a signed 64-bit integer (the revenue \
                     counter): with capacity {} the largest value is {}",
                    self.capacity,
                    i64::MAX / self.capacity
                ),
            ));
        }
        for (field, time) in [
            ("announce_at", self.announce_at),
            ("opens_at", self.opens_at),
            ("closes_at", self.closes_at),
            ("coupon_expires_at", self.coupon_expires_at),
        ] {
            if let Some(t) = time
                && !(MIN_TIME_MS..=MAX_TIME_MS).contains(&t.timestamp_millis())
            {
                return Err(invalid(
                    field,
                    "must be between 1970-01-01T00:00:00Z and 9999-12-31T23:59:59Z",
                ));
            }
        }
        if let Some(size) = self.chunk_size
            && !(1..=MAX_CHUNK_SIZE).contains(&size)
        {
            return Err(invalid(
                "chunk_size",
                format!("must be between 1 and {MAX_CHUNK_SIZE}"),
            ));
        }
        if let Some(shards) = self.shards {
            if !(1..=MAX_SHARDS).contains(&shards) {
                return Err(invalid(
                    "shards",
                    format!("must be between 1 and {MAX_SHARDS}"),
                ));
            }
            if i64::from(shards) > self.capacity {
                return Err(invalid(
                    "shards",
                    format!(
                        "must not exceed capacity ({}): each bucket starts with at least one \
                         coupon",
                        self.capacity
                    ),
                ));
            }
        }
        if let (Some(opens), Some(closes)) = (self.opens_at, self.closes_at)
            && closes <= opens
        {
            return Err(invalid("closes_at", "must be after opens_at"));
        }
        if let (Some(announce), Some(opens)) = (self.announce_at, self.opens_at)
            && announce > opens
        {
            return Err(invalid(
                "announce_at",
                "must not be after opens_at: shoppers could not find an open campaign",
            ));
        }
        if let (Some(opens), Some(expires)) = (self.opens_at, self.coupon_expires_at)
            && expires <= opens
        {
            return Err(invalid("coupon_expires_at", "must be after opens_at"));
        }
        for (role, plugin) in &self.plugins {
            plugin.validate(role).map_err(SpecError::Parse)?;
        }
        Ok(())
    }
}

/// A validated campaign with its id, times as epoch milliseconds. Made only by
/// [`Campaign::new`], which checks the id and the document, so its fields are read through
/// methods.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Campaign {
    id: String,
    name: String,
    capacity: i64,
    value: i64,
    opens_at: Option<i64>,
    closes_at: Option<i64>,
    coupon_expires_at: Option<i64>,
    chunk_size: u32,
    shards: u32,
    announce_at: Option<i64>,
    spec: CampaignSpec,
}

impl Campaign {
    pub fn new(id: &str, spec: CampaignSpec) -> Result<Self, SpecError> {
        validate_id(id)?;
        spec.validate()?;
        Ok(Self {
            id: id.to_owned(),
            name: spec.name.clone(),
            capacity: spec.capacity,
            value: spec.value,
            opens_at: spec.opens_at.map(|t| t.timestamp_millis()),
            closes_at: spec.closes_at.map(|t| t.timestamp_millis()),
            coupon_expires_at: spec.coupon_expires_at.map(|t| t.timestamp_millis()),
            chunk_size: spec.chunk_size.unwrap_or(DEFAULT_CHUNK_SIZE),
            shards: spec.shards.unwrap_or(1),
            announce_at: spec.announce_at.map(|t| t.timestamp_millis()),
            spec,
        })
    }

    /// The campaign's id (checked by [`validate_id`]).
    pub fn id(&self) -> &str {
        &self.id
    }

    /// The display name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Coupons to issue, at most [`MAX_CAPACITY`].
    pub fn capacity(&self) -> i64 {
        self.capacity
    }

    /// A coupon's worth in the smallest currency unit.
    pub fn value(&self) -> i64 {
        self.value
    }

    /// When requests are first admitted, epoch ms; `None`: at once.
    pub fn opens_at(&self) -> Option<i64> {
        self.opens_at
    }

    /// When admission stops, epoch ms; `None`: when sold out.
    pub fn closes_at(&self) -> Option<i64> {
        self.closes_at
    }

    /// When issued coupons expire, epoch ms; `None`: never.
    pub fn coupon_expires_at(&self) -> Option<i64> {
        self.coupon_expires_at
    }

    /// Buckets of the campaign's admission state (`shards`, default 1; see
    /// [`crate::queue::bucket_of`]).
    pub fn shards(&self) -> u32 {
        self.shards
    }

    /// Most requests issued per database transaction (default [`DEFAULT_CHUNK_SIZE`]).
    pub fn chunk_size(&self) -> u32 {
        self.chunk_size
    }

    /// Whether shoppers may see the campaign at `now` (epoch ms): its `announce_at` has
    /// passed, or it has none.
    pub fn announced(&self, now: i64) -> bool {
        self.announce_at.is_none_or(|at| now >= at)
    }

    /// Whether anyone may read the campaign's statistics (`public_stats`).
    pub fn public_stats(&self) -> bool {
        self.spec.public_stats
    }

    /// The campaign's own admission rates.
    pub fn limits(&self) -> &CampaignLimits {
        &self.spec.limits
    }

    /// The document the campaign was made from.
    pub fn spec(&self) -> &CampaignSpec {
        &self.spec
    }

    /// Where the campaign stands at `now` (epoch ms) with `counts`: its window, then whether
    /// any coupon [remains](Counts::remaining).
    pub fn state(&self, now: i64, counts: &Counts) -> CampaignState {
        match self.window_state(now) {
            WindowState::NotOpen => CampaignState::NotOpen,
            WindowState::Closed => CampaignState::Closed,
            WindowState::Open if counts.remaining() == 0 => CampaignState::SoldOut,
            WindowState::Open => CampaignState::Open,
        }
    }

    /// Where the campaign stands at `now` as far as its window goes.
    pub fn window_state(&self, now: i64) -> WindowState {
        match (self.opens_at, self.closes_at) {
            (Some(opens), _) if now < opens => WindowState::NotOpen,
            (_, Some(closes)) if now >= closes => WindowState::Closed,
            _ => WindowState::Open,
        }
    }
}

/// Where a campaign's window stands at a moment ([`Campaign::window_state`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WindowState {
    NotOpen,
    Open,
    Closed,
}

/// Where a campaign stands for a client: its window, and whether coupons are left
/// ([`Campaign::state`]). Serialised in snake case (`not_open`, `open`, `sold_out`, `closed`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum CampaignState {
    NotOpen,
    Open,
    SoldOut,
    Closed,
}

/// A campaign's counts at one moment, in coupons (requests for `admitted` and `queued`): the
/// one place that says what "remaining" means.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Counts {
    pub capacity: i64,
    /// Requests admitted so far (answered `202`; after a queue rebuild: the coupons issued
    /// before it).
    pub admitted: i64,
    /// Admitted requests whose coupon is not yet committed.
    pub queued: i64,
    /// Coupons issued (the database's count).
    pub issued: i64,
}

impl Counts {
    /// Coupons still to be had: `capacity` less what was admitted, or issued if more (a queue
    /// rebuilt from the database may briefly count fewer admissions than coupons); never
    /// below zero (a capacity lowered below what was admitted leaves none).
    pub fn remaining(&self) -> i64 {
        (self.capacity - self.admitted.max(self.issued)).max(0)
    }

    /// Coupons not yet issued: `capacity` less the database's count, never below zero. Unlike
    /// [`Self::remaining`] it counts the admitted requests still queued as not issued (the
    /// `firstcome_remaining` gauge, which adds up to `capacity` with `firstcome_issued`).
    pub fn unissued(&self) -> i64 {
        (self.capacity - self.issued).max(0)
    }
}

/// Every key a campaign document may hold (its fields, its `[limits]` and its plugin
/// sections): the only words of a refused document an error may repeat.
const KNOWN_KEYS: &[&str] = &[
    "name",
    "capacity",
    "value",
    "opens_at",
    "closes_at",
    "coupon_expires_at",
    "chunk_size",
    "shards",
    "announce_at",
    "public_stats",
    "limits",
    "per_user_per_s",
    "per_user_burst",
    "per_address_per_s",
    "per_address_burst",
    "plugins",
    "path",
    "sha256",
    "grants",
    "recipients",
    "settings",
    "timeout_ms",
    "memory_mb",
    "reuse",
];

/// Where a TOML document fails to parse and why, quoting none of its text: the parser's own
/// message shows the offending line, and a value in it (a file linked from elsewhere, a
/// password pasted by mistake) must not reach the admin API or a log. Only a known key is
/// named.
fn parse_error(text: &str, error: &toml::de::Error) -> String {
    let message = without_quoted_values(error.message());
    match error.span() {
        Some(span) => {
            let before = &text[..span.start.min(text.len())];
            let line = before.matches('\n').count() + 1;
            let column = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
            let key = text
                .lines()
                .nth(line - 1)
                .and_then(|l| l.split_once('='))
                .map(|(k, _)| k.trim())
                .filter(|k| KNOWN_KEYS.contains(k));
            match key {
                Some(key) => format!("line {line}, column {column} ({key}): {message}"),
                None => format!("line {line}, column {column}: {message}"),
            }
        }
        None => message,
    }
}

/// `message` with every quoted span (serde quotes a value of the wrong type with `"…"` or
/// with backticks, `invalid type: integer \`123\``, and an unknown key with backticks)
/// replaced by `…`, unless it is a known key.
fn without_quoted_values(message: &str) -> String {
    let mut out = String::with_capacity(message.len());
    let mut rest = message;
    while let Some(open) = rest.find(['"', '`']) {
        let quote = rest[open..].chars().next().expect("found");
        out.push_str(&rest[..open]);
        let after = &rest[open + 1..];
        let Some(close) = after.find(quote) else {
            out.push(quote);
            out.push('…');
            return out;
        };
        let inner = &after[..close];
        out.push(quote);
        out.push_str(if KNOWN_KEYS.contains(&inner) {
            inner
        } else {
            "…"
        });
        out.push(quote);
        rest = &after[close + 1..];
    }
    out.push_str(rest);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn remaining_counts_admissions_or_coupons_whichever_is_more() {
        let counts = |admitted, issued| Counts {
            capacity: 10,
            admitted,
            queued: 0,
            issued,
        };
        assert_eq!(counts(3, 1).remaining(), 7);
        assert_eq!(counts(1, 3).remaining(), 7);
        assert_eq!(counts(12, 0).remaining(), 0);
        assert_eq!(counts(3, 1).unissued(), 9);
        let c = Campaign::new(
            "c",
            CampaignSpec::from_toml(
                "name = \"c\"\ncapacity = 10\nvalue = 1\nopens_at = \"2026-01-01T00:00:00Z\"\n\
                 closes_at = \"2026-02-01T00:00:00Z\"\n",
            )
            .unwrap(),
        )
        .unwrap();
        let jan = 1_767_225_600_000;
        assert_eq!(c.state(jan - 1, &counts(0, 0)), CampaignState::NotOpen);
        assert_eq!(c.state(jan, &counts(0, 0)), CampaignState::Open);
        assert_eq!(c.state(jan, &counts(10, 4)), CampaignState::SoldOut);
        assert_eq!(
            c.state(jan + 31 * 86_400_000, &counts(0, 0)),
            CampaignState::Closed
        );
    }

    #[test]
    fn ids_are_checked() {
        for ok in ["a", "spring-sale_2026", &"x".repeat(64)] {
            assert!(validate_id(ok).is_ok(), "{ok}");
        }
        for bad in [
            "",
            "Upper",
            "with space",
            "dot.toml",
            "../etc",
            &"x".repeat(65),
        ] {
            assert!(validate_id(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn a_full_document_parses() {
        let spec = CampaignSpec::from_toml(
            "name = \"Spring\"\ncapacity = 100\nvalue = 5000\nchunk_size = 20\n\
             opens_at = \"2026-03-01T10:00:00+09:00\"\ncloses_at = \"2026-03-02T10:00:00Z\"\n",
        )
        .unwrap();
        assert_eq!(spec.chunk_size, Some(20));
        let c = Campaign::new("spring", spec).unwrap();
        assert_eq!(c.opens_at, Some(1_772_326_800_000));
        assert_eq!(c.window_state(0), WindowState::NotOpen);
        assert_eq!(c.window_state(i64::MAX), WindowState::Closed);
    }

    #[test]
    fn bad_documents_say_what_is_wrong() {
        let cases = [
            (
                "name = \"x\"\ncapacity = 1\nvalue = 1\ncolour = 3\n",
                "unknown field",
            ),
            ("name = \"x\"\ncapacity = 0\nvalue = 1\n", "capacity"),
            ("name = \"\"\ncapacity = 1\nvalue = 1\n", "name"),
            ("name = \"x\"\ncapacity = 1\nvalue = -1\n", "value"),
            (
                "name = \"x\"\ncapacity = 1\nvalue = 1\nchunk_size = 0\n",
                "chunk_size",
            ),
            (
                "name = \"x\"\ncapacity = 9\nvalue = 1\nshards = 0\n",
                "shards",
            ),
            (
                "name = \"x\"\ncapacity = 99\nvalue = 1\nshards = 65\n",
                "shards",
            ),
            (
                "name = \"x\"\ncapacity = 2\nvalue = 1\nshards = 3\n",
                "must not exceed capacity",
            ),
            ("name = \"x\"\ncapacity = 1\n", "missing field `value`"),
            (
                "name = \"x\"\ncapacity = 1\nvalue = 1\nopens_at = \"2026-01-02T00:00:00Z\"\n\
                 closes_at = \"2026-01-01T00:00:00Z\"\n",
                "closes_at",
            ),
            (
                "name = \"x\"\ncapacity = 1\nvalue = 1\nopens_at = \"tomorrow\"\n",
                "opens_at",
            ),
            // 2^62 × 3 does not fit in an i64.
            (
                "name = \"x\"\ncapacity = 3\nvalue = 4611686018427387904\n",
                "value × capacity",
            ),
            (
                "name = \"x\"\ncapacity = 1\nvalue = 1\ncoupon_expires_at = \"+10000-01-01T00:00:00Z\"\n",
                "coupon_expires_at",
            ),
            (
                "name = \"x\"\ncapacity = 1\nvalue = 1\nopens_at = \"1969-12-31T23:59:59Z\"\n",
                "opens_at",
            ),
            (
                "name = \"x\"\ncapacity = 1\nvalue = 9223372036854775808\n",
                "value",
            ),
        ];
        for (doc, needle) in cases {
            let err = CampaignSpec::from_toml(doc).unwrap_err().to_string();
            assert!(
                err.contains(needle),
                "{doc:?} gave {err:?}, wanted {needle:?}"
            );
        }
    }

    #[test]
    fn the_largest_values_are_accepted() {
        let max = i64::MAX / 3;
        let doc = format!(
            "name = \"x\"\ncapacity = 3\nvalue = {max}\nopens_at = \"1970-01-01T00:00:00Z\"\n\
             closes_at = \"9999-12-31T23:59:59Z\"\n"
        );
        CampaignSpec::from_toml(&doc).unwrap();
    }

    #[test]
    fn unquoted_toml_times_are_read() {
        let spec = CampaignSpec::from_toml(
            "name = \"x\"\ncapacity = 1\nvalue = 1\nopens_at = 2026-03-01T10:00:00+09:00\n\
             closes_at = \"2026-03-02T10:00:00Z\"\n",
        )
        .unwrap();
        assert_eq!(spec.opens_at.unwrap().timestamp_millis(), 1_772_326_800_000);
        let err = CampaignSpec::from_toml(
            "name = \"x\"\ncapacity = 1\nvalue = 1\nopens_at = 2026-03-01T10:00:00\n",
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("with an offset"), "{err}");
        let json: CampaignSpec = serde_json::from_str(
            r#"{"name": "x", "capacity": 1, "value": 1, "opens_at": "2026-03-01T10:00:00Z"}"#,
        )
        .unwrap();
        assert!(json.opens_at.is_some());
        let null: CampaignSpec =
            serde_json::from_str(r#"{"name": "x", "capacity": 1, "value": 1, "opens_at": null}"#)
                .unwrap();
        assert!(null.opens_at.is_none());
        assert!(
            serde_json::from_str::<CampaignSpec>(
                r#"{"name": "x", "capacity": 1, "value": 1, "opens_at": "tomorrow"}"#
            )
            .is_err()
        );
    }

    #[test]
    fn documents_round_trip() {
        let spec = CampaignSpec::from_toml("name = \"x\"\ncapacity = 3\nvalue = 7\n").unwrap();
        assert_eq!(CampaignSpec::from_toml(&spec.to_toml()).unwrap(), spec);
    }

    #[test]
    fn a_refused_document_is_not_quoted() {
        for doc in [
            "c2VjcmV0S2V5MTIz==\nname = \"x\"\n",
            "name = \"x\"\ncapacity = \"hunter2\"\nvalue = 1\n",
            "name = \"x\"\ncapacity = 1\nvalue = 1\nhunter2 = 3\n",
            "name = \"x\"\ncapacity = 123456789\nvalue = \"1\"\n",
        ] {
            let err = CampaignSpec::from_toml(doc).unwrap_err().to_string();
            for secret in ["c2VjcmV0", "hunter2", "123456789"] {
                assert!(!err.contains(secret), "{doc:?}: {err}");
            }
            assert!(err.contains("line "), "{err}");
        }
    }
}
