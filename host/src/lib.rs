//! # firstcome
//!
//! First-come-first-served coupon issuance. A campaign opens; thousands of users ask for a
//! coupon in the same second; exactly `capacity` of them get one, in arrival order, each at most
//! once, and every issued coupon produces an event for the consumers.
//!
//! This crate is the `firstcome` binary's library: start-up and graceful shutdown of one host
//! ([`app`]) and its logging ([`telemetry`]). The parts it assembles are crates of their own,
//! each depending only on those below it (`docs/architecture.md`):
//!
//! - `firstcome-api`: the REST API (axum) and its OpenAPI document;
//! - `firstcome-platform`: campaigns, the chunk issuer, the outbox, the campaign folder
//!   watcher, live views, metrics, configuration;
//! - `firstcome-plugin` (with `firstcome-plugin-wit`, the `bindgen!` bindings): the consumers
//!   as sandboxed WebAssembly components;
//! - `firstcome-bus`: consumer groups on the embedded event log or Kafka;
//! - `firstcome-admission`: the admission queue, Redis or in-process;
//! - `firstcome-store`: the database (SQLite, MySQL/MariaDB, PostgreSQL);
//! - `firstcome-core`: the domain types and rules, with no I/O.

pub mod app;
pub mod telemetry;
