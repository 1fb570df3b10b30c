//! # firstcome
//!
//! First-come-first-served coupon issuance. A campaign opens; thousands of users ask for a
//! coupon in the same second; exactly `capacity` of them get one, in arrival order, each at most
//! once, and every issued coupon produces an event for the consumers.
//!
//! The path of a request: the REST API ([`api`]) asks the admission queue ([`admission`],
//! Redis or in-process) to admit the user; the chunk issuer ([`issuer`]) drains the queue a
//! chunk per database transaction ([`store`]), writing coupons and outbox rows together; the
//! outbox publisher and relay ([`outbox`]) put the events on the event bus ([`bus`]), whose
//! consumer groups (one per plugin role) hand them to each campaign's WebAssembly plugins
//! ([`plugin`]) with retries and a dead-letter topic.
//!
//! ## Layout
//! - [`app`]: start-up and graceful shutdown; [`platform`]: the shared state of one host.
//! - [`config`]: typed configuration (defaults, file, `FIRSTCOME_*`).
//! - [`campaign`]: the campaign document and the watched campaign folder.
//! - [`admission`], [`issuer`], [`store`], [`outbox`], [`bus`], [`event`]: the pipeline.
//! - [`plugin`]: the consumers (notification, history, stats, ...) as sandboxed WebAssembly
//!   components, one per role of each campaign, swapped live.

pub mod admission;
pub mod api;
pub mod app;
pub mod bounded;
pub mod bus;
pub mod campaign;
pub mod clock;
pub mod config;
pub mod event;
pub mod issuer;
pub mod live;
pub mod monitoring;
pub mod outbox;
pub mod platform;
pub mod plugin;
pub mod queue_guard;
pub mod store;
pub mod telemetry;
