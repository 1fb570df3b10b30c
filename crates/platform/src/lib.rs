//! # firstcome-platform
//!
//! One host's running platform: the active campaigns and the services that act on them, with
//! no HTTP of its own (the API crate serves it).
//!
//! - [`Platform`]: the shared state of one host; a campaign is applied (database row,
//!   admission queue, issuer, consumer groups) in exactly one way, through it.
//!   What the API reads goes through its operations too (counts, requests, readiness).
//! - [`issuer`]: drains each campaign's admission queue a chunk per database transaction.
//! - [`outbox`]: publishes committed events to the bus, and the relay that re-sends what was
//!   not acknowledged.
//! - [`queue_guard`]: the admission floor, the rebuild of a queue that lost or rolled back its
//!   data, and the audit of lost admissions.
//! - [`watcher`]: the watched folder of campaign files, applied without a restart.
//! - [`shared_clock`]: the one clock every host judges windows and leases by.
//! - [`retention`]: how long each kind of data is kept, and the sweep that deletes the rest.
//! - [`live`]: per-campaign snapshot streams for server-sent events.
//! - [`monitoring`]: the Prometheus recorder and the levels sampled at each scrape.
//! - [`audit`]: recording admin changes in the audit log.
//! - [`dead_letters`]: listing, replaying and discarding dead letters (CLI and admin API).
//! - [`config`]: the host's typed configuration (defaults, file, `FIRSTCOME_*`), with the
//!   sections of the crates below it.

pub mod audit;
pub mod config;
pub mod dead_letters;
pub mod issuer;
pub mod live;
pub mod monitoring;
pub mod outbox;
mod platform;
pub mod queue_guard;
mod reads;
pub mod retention;
pub mod shared_clock;
pub mod sold_out;
pub mod watcher;

pub use config::Config;
pub use platform::{Admitted, Platform, PlatformError};
pub use reads::{Backend, Readiness, RequestOf};
