//! The WIT world as the host implements it. Every capability call is checked against the
//! plugin's grants, charged to its output budget, and either answered (reads), buffered as an
//! effect applied when the call succeeds (kv writes, counters, statistics, history), or sent
//! at once (email, push). A refused call traps the plugin with a [`Denied`] saying why.

use std::sync::Arc;

use wasmtime::Result as WasmResult;
use wasmtime::component::{HasSelf, Linker, ResourceTable};
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};

use super::services::{PushMessage, SendError, Services};
use firstcome_core::plugin_spec::{Capability, PluginSpec};
use firstcome_store::{Effects, HistoryEntry, Pending, Scope};

pub use firstcome_plugin_wit::{Consumer, ConsumerIndices, ConsumerPre, exports, firstcome};

pub use self::firstcome::plugin::types::{CouponIssued, Event};
pub use exports::firstcome::plugin::handler::HandleError;

use self::firstcome::plugin::delivery::DeliveryError;
use self::firstcome::plugin::log::Level;

/// What a plugin may hand the host, in bytes unless said otherwise. Everything is checked
/// before it is logged, stored or sent; `docs/plugins.md` lists the same figures.
pub mod limits {
    /// Longest kv key.
    pub const KV_KEY: usize = 255;
    /// Largest kv value.
    pub const KV_VALUE: usize = 64 * 1024;
    /// Longest log line; a longer one is logged cut, with a marker.
    pub const LOG_LINE: usize = 4 * 1024;
    /// Log bytes one call may write; later lines are dropped, and one line says how many.
    pub const LOG_PER_CALL: usize = 16 * 1024;
    /// Longest email address (RFC 5321, 4.5.3.1.3: a path is at most 256 octets, brackets
    /// included).
    pub const EMAIL_TO: usize = 254;
    /// Longest email subject (RFC 5322, 2.1.1: a line is at most 998 characters).
    pub const EMAIL_SUBJECT: usize = 998;
    /// Largest email body.
    pub const EMAIL_BODY: usize = 128 * 1024;
    /// Longest push device token (the column that keeps users' tokens holds 4,096).
    pub const PUSH_TOKEN: usize = 4096;
    /// Largest push payload: title, body and every data key and value together (FCM refuses
    /// messages over 4,096 bytes).
    pub const PUSH_PAYLOAD: usize = 4000;
    /// Longest history `user-id`, in characters (the API's user id limit).
    pub const HISTORY_USER_ID_CHARS: usize = firstcome_core::user::USER_ID_MAX_CHARS;
    /// Longest history `coupon-id`, `event-id` (a UUID's 36) and `coupon-code` (32).
    pub const HISTORY_ID: usize = 36;
    pub const HISTORY_CODE: usize = 32;
}

/// Why the host stopped a plugin's call.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Denied {
    #[error(
        "capability `{0}` is not granted to this plugin; add \"{0}\" to `grants` of its section in the campaign file"
    )]
    Ungranted(Capability),
    #[error("output limit exceeded: a call may pass at most {0} bytes to the host")]
    Output(usize),
    #[error("invalid capability call: {0}")]
    Invalid(String),
    #[error("a host service failed: {0}")]
    Unavailable(String),
}

/// What one call may do and has done.
#[derive(Debug)]
pub struct CallState {
    pub scope: Scope,
    pub event_id: String,
    /// `sha256:...` of the component.
    pub version: String,
    pub spec: Arc<PluginSpec>,
    pub services: Arc<dyn Services>,
    pub effects: Effects,
    pub output_left: usize,
    pub output_limit: usize,
    /// Epoch ticks spent in WebAssembly so far.
    pub epochs: u64,
    /// Log bytes this call may still write ([`limits::LOG_PER_CALL`]).
    pub log_left: usize,
    /// Log bytes dropped because `log_left` ran out.
    pub log_dropped: usize,
    /// Writes of earlier events of the same batch to this scope, not yet committed: kv reads
    /// and counters see them.
    pub pending: Option<Arc<Pending>>,
    /// Who this call may write to: the event's shopper (when the plugin sees their email or
    /// push token) and the campaign's listed `recipients`.
    pub audience: Audience,
    /// Emails and push notifications this call may still send (`plugins.max_sends_per_event`).
    pub sends_left: u32,
}

/// The addresses and devices one call may send to.
#[derive(Debug, Default, Clone)]
pub struct Audience {
    /// The event's shopper's email, lower-cased.
    pub email: Option<String>,
    /// The event's shopper's push token.
    pub push_token: Option<String>,
}

impl Audience {
    /// The shopper of `event`, as far as the plugin sees them.
    pub fn of(event: &Event) -> Self {
        let Event::CouponIssued(e) = event;
        Self {
            email: e.email.as_deref().map(str::to_ascii_lowercase),
            push_token: e.fcm_token.clone(),
        }
    }
}

/// What every host call costs of the call's output budget besides the bytes it passes, so
/// that a loop of small calls (reads included) ends like a loop of large ones.
pub const HOST_CALL_COST: usize = 64;

impl CallState {
    /// `None` when `to` is the event's shopper or one of the campaign's `recipients`; else
    /// the refusal the plugin sees.
    fn email_allowed(&self, to: &str) -> Option<DeliveryError> {
        let to = to.trim().to_ascii_lowercase();
        let listed = self
            .spec
            .recipients
            .iter()
            .any(|r| r.eq_ignore_ascii_case(&to));
        (self.audience.email.as_deref() != Some(to.as_str()) && !listed).then(|| {
            DeliveryError::Rejected(
                "a plugin may email only the event's shopper and the campaign's `recipients`"
                    .into(),
            )
        })
    }

    fn require(&self, capability: Capability) -> WasmResult<()> {
        if self.spec.grants(capability) {
            Ok(())
        } else {
            Err(Denied::Ungranted(capability).into())
        }
    }

    /// One send from the call's quota, or why not.
    fn take_send(&mut self) -> Option<DeliveryError> {
        match self.sends_left.checked_sub(1) {
            Some(left) => {
                self.sends_left = left;
                None
            }
            None => Some(DeliveryError::Rejected(
                "this event's quota of emails and push notifications is used up \
                 (plugins.max_sends_per_event)"
                    .into(),
            )),
        }
    }

    fn charge(&mut self, bytes: usize) -> WasmResult<()> {
        match self.output_left.checked_sub(bytes) {
            Some(left) => {
                self.output_left = left;
                Ok(())
            }
            None => Err(Denied::Output(self.output_limit).into()),
        }
    }
}

/// Host resources one store may hold at once (WASI streams, pollables, ...).
pub const MAX_RESOURCES: usize = 4_096;

/// The data of one sandbox (one store): WASI with nothing granted, limits, and the call.
pub struct CallCtx {
    wasi: WasiCtx,
    table: ResourceTable,
    pub limits: crate::budget::Limiter,
    pub call: CallState,
}

impl std::fmt::Debug for CallCtx {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CallCtx")
            .field("call", &self.call)
            .finish_non_exhaustive()
    }
}

impl CallCtx {
    pub fn new(limits: crate::budget::Limiter, call: CallState) -> Self {
        // No preopened directories, no environment, no arguments, no sockets, no name lookup:
        // WASI only supplies clocks, random numbers and empty stdio.
        let wasi = WasiCtx::builder()
            .allow_tcp(false)
            .allow_udp(false)
            .allow_ip_name_lookup(false)
            .build();
        // Resources (WASI streams, pollables) live in host memory outside the budget: a
        // plugin looping on `subscribe-duration` must hit a bound, not the host's memory.
        let mut table = ResourceTable::new();
        table.set_max_capacity(MAX_RESOURCES);
        Self {
            wasi,
            table,
            limits,
            call,
        }
    }
}

impl WasiView for CallCtx {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.wasi,
            table: &mut self.table,
        }
    }
}

/// Adds WASI (with nothing granted) and the firstcome interfaces to a linker.
pub fn add_to_linker(linker: &mut Linker<CallCtx>) -> WasmResult<()> {
    wasmtime_wasi::p2::add_to_linker_async(linker)?;
    Consumer::add_to_linker::<_, HasSelf<CallCtx>>(linker, |ctx| ctx)
}

fn delivery_error(e: SendError) -> DeliveryError {
    match e {
        SendError::Rejected(m) => DeliveryError::Rejected(m),
        SendError::Unavailable(m) => DeliveryError::Unavailable(m),
    }
}

impl self::firstcome::plugin::types::Host for CallCtx {}
impl self::firstcome::plugin::delivery::Host for CallCtx {}

impl self::firstcome::plugin::log::Host for CallCtx {
    async fn log(&mut self, level: Level, message: String) -> WasmResult<()> {
        self.call.charge(HOST_CALL_COST + message.len())?;
        let whole = message.len();
        // Escaped first: a line break or a terminal escape from a plugin must not forge a log
        // line or reach an operator's terminal.
        let message = firstcome_core::bounded::escaped(&message);
        let message = firstcome_core::bounded::cut(&message, limits::LOG_LINE);
        // Once a line does not fit, it and every later line are dropped.
        match self.call.log_left.checked_sub(message.len()) {
            Some(left) if self.call.log_dropped == 0 => self.call.log_left = left,
            _ => {
                self.call.log_dropped += whole;
                return Ok(());
            }
        }
        let c = &self.call;
        let (campaign, role, version) = (&c.scope.campaign_id, &c.scope.role, &c.version);
        let event_id = &c.event_id;
        match level {
            Level::Trace => {
                tracing::trace!(target: "plugin", %campaign, %role, %version, %event_id, "{message}")
            }
            Level::Debug => {
                tracing::debug!(target: "plugin", %campaign, %role, %version, %event_id, "{message}")
            }
            Level::Info => {
                tracing::info!(target: "plugin", %campaign, %role, %version, %event_id, "{message}")
            }
            Level::Warn => {
                tracing::warn!(target: "plugin", %campaign, %role, %version, %event_id, "{message}")
            }
            Level::Error => {
                tracing::error!(target: "plugin", %campaign, %role, %version, %event_id, "{message}")
            }
        }
        self.call
            .services
            .logged(&c.scope, level_name(level), &message);
        Ok(())
    }
}

fn level_name(level: Level) -> &'static str {
    match level {
        Level::Trace => "trace",
        Level::Debug => "debug",
        Level::Info => "info",
        Level::Warn => "warn",
        Level::Error => "error",
    }
}

impl self::firstcome::plugin::settings::Host for CallCtx {
    async fn get(&mut self, key: String) -> WasmResult<Option<String>> {
        self.call.charge(HOST_CALL_COST + key.len())?;
        Ok(self.call.spec.settings.get(&key).cloned())
    }

    async fn all(&mut self) -> WasmResult<Vec<(String, String)>> {
        self.call.charge(HOST_CALL_COST)?;
        Ok(self
            .call
            .spec
            .settings
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect())
    }
}

fn check_key(key: &str) -> WasmResult<()> {
    if key.is_empty() || key.len() > limits::KV_KEY {
        return Err(Denied::Invalid(format!("kv keys are 1 to {} bytes", limits::KV_KEY)).into());
    }
    Ok(())
}

/// A send the host refuses before it reaches the relay: the plugin sees `rejected`, as from a
/// relay that refuses it (sending it again will not help).
fn too_long(what: &str, len: usize, max: usize) -> Option<DeliveryError> {
    (len > max).then(|| DeliveryError::Rejected(format!("{what} is {len} bytes; at most {max}")))
}

impl self::firstcome::plugin::kv::Host for CallCtx {
    async fn get(&mut self, key: String) -> WasmResult<Option<Vec<u8>>> {
        self.call.require(Capability::Kv)?;
        check_key(&key)?;
        // Reads cost too: a loop of reads must end, like a loop of writes.
        self.call.charge(HOST_CALL_COST + key.len())?;
        let value = if let Some(written) = self.call.effects.kv.get(&key) {
            written.clone()
        } else if let Some(written) = self.call.pending.as_ref().and_then(|p| p.kv.get(&key)) {
            written.clone()
        } else {
            let c = &self.call;
            c.services
                .kv_get(&c.scope, &key)
                .await
                .map_err(Denied::Unavailable)?
        };
        self.call.charge(value.as_ref().map_or(0, Vec::len))?;
        Ok(value)
    }

    async fn set(&mut self, key: String, value: Vec<u8>) -> WasmResult<()> {
        self.call.require(Capability::Kv)?;
        check_key(&key)?;
        if value.len() > limits::KV_VALUE {
            return Err(Denied::Invalid(format!(
                "kv values are at most {} bytes",
                limits::KV_VALUE
            ))
            .into());
        }
        self.call.charge(HOST_CALL_COST + key.len() + value.len())?;
        self.call.effects.kv.insert(key, Some(value));
        Ok(())
    }

    async fn delete(&mut self, key: String) -> WasmResult<()> {
        self.call.require(Capability::Kv)?;
        check_key(&key)?;
        self.call.charge(HOST_CALL_COST + key.len())?;
        self.call.effects.kv.insert(key, None);
        Ok(())
    }

    async fn increment(&mut self, key: String, delta: i64) -> WasmResult<i64> {
        self.call.require(Capability::Kv)?;
        check_key(&key)?;
        self.call.charge(HOST_CALL_COST + key.len() + 8)?;
        let c = &self.call;
        let stored = c
            .services
            .kv_counter(&c.scope, &key)
            .await
            .map_err(Denied::Unavailable)?;
        let earlier = self
            .call
            .pending
            .as_ref()
            .and_then(|p| p.counters.get(&key).copied())
            .unwrap_or(0);
        let pending = self.call.effects.counters.entry(key).or_default();
        *pending = pending
            .checked_add(delta)
            .ok_or_else(|| Denied::Invalid("counter overflow".into()))?;
        stored
            .checked_add(earlier)
            .and_then(|n| n.checked_add(*pending))
            .ok_or_else(|| Denied::Invalid("counter overflow".into()).into())
    }
}

impl self::firstcome::plugin::email::Host for CallCtx {
    async fn send(
        &mut self,
        to: String,
        subject: String,
        body: String,
    ) -> WasmResult<Result<(), DeliveryError>> {
        self.call.require(Capability::Email)?;
        self.call
            .charge(HOST_CALL_COST + to.len() + subject.len() + body.len())?;
        let refused = too_long("the address", to.len(), limits::EMAIL_TO)
            .or_else(|| too_long("the subject", subject.len(), limits::EMAIL_SUBJECT))
            .or_else(|| too_long("the body", body.len(), limits::EMAIL_BODY))
            .or_else(|| self.call.email_allowed(&to))
            .or_else(|| self.call.take_send());
        if let Some(refused) = refused {
            return Ok(Err(refused));
        }
        let c = &self.call;
        Ok(c.services
            .send_email(&c.scope, &c.event_id, &to, &subject, &body)
            .await
            .map_err(delivery_error))
    }
}

impl self::firstcome::plugin::push::Host for CallCtx {
    async fn send(
        &mut self,
        token: String,
        title: String,
        body: String,
        data: Vec<(String, String)>,
    ) -> WasmResult<Result<(), DeliveryError>> {
        self.call.require(Capability::Push)?;
        let size = data.iter().map(|(k, v)| k.len() + v.len()).sum::<usize>();
        self.call
            .charge(HOST_CALL_COST + token.len() + title.len() + body.len() + size)?;
        let payload = title.len() + body.len() + size;
        let refused = too_long("the token", token.len(), limits::PUSH_TOKEN)
            .or_else(|| too_long("the payload", payload, limits::PUSH_PAYLOAD))
            .or_else(|| {
                (self.call.audience.push_token.as_deref() != Some(token.as_str())).then(|| {
                    DeliveryError::Rejected(
                        "a plugin may push only to the event's shopper's device".into(),
                    )
                })
            })
            .or_else(|| self.call.take_send());
        if let Some(refused) = refused {
            return Ok(Err(refused));
        }
        let message = PushMessage {
            token,
            title,
            body,
            data: data.into_iter().collect(),
        };
        let c = &self.call;
        Ok(c.services
            .send_push(&c.scope, &c.event_id, &message)
            .await
            .map_err(delivery_error))
    }
}

impl self::firstcome::plugin::history::Host for CallCtx {
    async fn record(&mut self, entry: self::firstcome::plugin::history::Entry) -> WasmResult<()> {
        self.call.require(Capability::History)?;
        let size = entry.event_id.len()
            + entry.user_id.len()
            + entry.coupon_id.len()
            + entry.coupon_code.len();
        self.call.charge(HOST_CALL_COST + size)?;
        if entry.event_id.is_empty() || entry.event_id.len() > limits::HISTORY_ID {
            return Err(Denied::Invalid("history entries need the event's id".into()).into());
        }
        let user_chars = entry.user_id.chars().count();
        if user_chars > limits::HISTORY_USER_ID_CHARS
            || entry.coupon_id.len() > limits::HISTORY_ID
            || entry.coupon_code.len() > limits::HISTORY_CODE
        {
            return Err(Denied::Invalid(format!(
                "history fields are too long: user-id {user_chars} characters (at most {}), \
                 coupon-id {} bytes (at most {}), coupon-code {} bytes (at most {})",
                limits::HISTORY_USER_ID_CHARS,
                entry.coupon_id.len(),
                limits::HISTORY_ID,
                entry.coupon_code.len(),
                limits::HISTORY_CODE
            ))
            .into());
        }
        let c = &mut self.call;
        c.effects.history.push(HistoryEntry {
            event_id: entry.event_id,
            campaign_id: c.scope.campaign_id.clone(),
            user_id: entry.user_id,
            coupon_id: entry.coupon_id,
            coupon_code: entry.coupon_code,
            issued_at: entry.issued_at_ms,
            handled_by: c.version.clone(),
            recorded_at: 0,
        });
        Ok(())
    }
}

/// A statistic name: 1 to 128 characters of `a-z 0-9 . - _`.
pub fn valid_stat_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 128
        && name.bytes().all(|b| {
            b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'.' | b'-' | b'_')
        })
}

impl self::firstcome::plugin::stats::Host for CallCtx {
    async fn increment(&mut self, name: String, delta: i64) -> WasmResult<()> {
        self.call.require(Capability::Stats)?;
        self.call.charge(HOST_CALL_COST + name.len() + 8)?;
        if !valid_stat_name(&name) {
            return Err(Denied::Invalid(format!(
                "statistic {name:?}: use 1 to 128 characters of a-z, 0-9, '.', '-' and '_'"
            ))
            .into());
        }
        let total = self.call.effects.stats.entry(name).or_default();
        *total = total
            .checked_add(delta)
            .ok_or_else(|| Denied::Invalid("statistic overflow".into()))?;
        Ok(())
    }

    async fn publish(&mut self) -> WasmResult<()> {
        self.call.require(Capability::Stats)?;
        self.call.charge(HOST_CALL_COST)?;
        self.call.effects.publish_stats = true;
        Ok(())
    }
}
