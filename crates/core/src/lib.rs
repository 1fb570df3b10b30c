//! # firstcome-core
//!
//! The domain of first-come-first-served coupon issuance, with no I/O: what every other crate
//! of the workspace speaks, and the rules checked where input enters the process.
//!
//! - [`campaign`]: the campaign document operators write, its validation and the validated
//!   [`campaign::Campaign`].
//! - [`plugin_spec`]: a campaign's plugin section (component, capabilities, limits).
//! - [`user`]: the [`user::UserId`], parsed once at the edge, and the profile field rules.
//! - [`queue`]: the admission queue's vocabulary (queue item, answer, counts, floor).
//! - [`event`]: the event envelope and the bus message.
//! - [`bounded`]: size limits on text from outside; [`clock`]: epoch milliseconds.
//! - [`secret`]: a secret of the configuration (a token, a key, a password).
//! - [`schema`]: the OpenAPI schemas of the rules above, from the same constants.
//!
//! Nothing here opens a file, a socket or a database; `cargo test -p firstcome-core` needs no
//! service.

/// The log target of every request's journey: the admission, the chunk that issued it, the
/// outbox publish of its event, and each consumer group's handling of the event (a span per
/// event, around the plugin call). Off at the default `info`; `RUST_LOG=info,journey=debug`
/// turns it on, and the admission's `request_id` or the event's `event_id` then finds every
/// line of one request's way (`docs/architecture.md`, "Following one request").
pub const JOURNEY: &str = "journey";

pub mod bounded;
pub mod campaign;
pub mod clock;
pub mod event;
pub mod plugin_spec;
pub mod queue;
pub mod schema;
pub mod secret;
pub mod user;
