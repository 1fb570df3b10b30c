//! # firstcome-plugin
//!
//! Consumer plugins: WebAssembly components written against `wit/plugin.wit`, run by wasmtime.
//!
//! A campaign file names, per consumer role (`notification`, `history`, `stats`, or any role
//! of the operator's), a component, the capabilities it is granted and its settings. Each
//! role is one consumer group on the bus; for every event, the group runs the plugin that the
//! event's campaign names for that role, in a fresh sandboxed instance (no filesystem, no
//! network, no environment; memory, time and output limits) or, with `reuse = N` in its
//! section, in an instance kept for up to N events of that campaign and version, and applies
//! what the plugin
//! wrote (key-value, counters, statistics, history) in one transaction with the group's
//! processed mark. Changing a campaign file loads, checks and compiles the new component
//! (cached by content hash) and swaps it in at once: an event already running finishes on the
//! old version, the next one uses the new.
//!
//! Layout: `config` (the host's plugin, email and push settings), `runtime` (engine, loading, one call),
//! `budget` (the process-wide memory budget of plugin instances),
//! `bindings` (the WIT capabilities as seen from the sandbox), `services` (what the
//! capabilities reach: the database, email, push), `email` and `fcm` (the two senders),
//! `files` (where component files may be read from), `host` (the per-campaign registry and the consumer-group handler), `recording` (the
//! runner behind `firstcome plugin test`), `scaffold` (`firstcome plugin new`).

mod bindings;
pub mod budget;
mod config;
pub mod email;
pub mod fcm;
pub mod files;
pub mod host;
pub mod recording;
pub mod runtime;
pub mod scaffold;
pub mod services;

/// The event a plugin's `handle` receives (the WIT `event` variant).
pub use bindings::Event;
pub use config::{EmailConfig, PluginConfig, PushConfig, SmtpTls};
pub use files::PluginFiles;
pub use firstcome_core::plugin_spec::{Capability, PluginSpec};
pub use host::{CampaignPlugins, PluginHost, PluginStatus, StatsSnapshot};
pub use runtime::{CallError, Compiled, LoadError, Plugin, Runtime};

/// The WIT package version this host serves.
pub const WIT_PACKAGE: &str = "firstcome:plugin@0.1.0";
