//! Liveness and readiness.

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use serde::Serialize;

use firstcome_platform::Platform;

/// The host's state: `ok` from liveness, `ready` or `not_ready` from readiness.
#[derive(Clone, Copy, Debug, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum HealthState {
    Ok,
    Ready,
    NotReady,
}

/// The host's health.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct Health {
    /// `ok` (live), `ready` or `not_ready`.
    status: HealthState,
    /// Readiness only: each backend, `ok ({kind})` or `down ({kind}): {reason}`.
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    #[schema(value_type = BTreeMap<String, String>)]
    backends: BTreeMap<&'static str, String>,
    /// Readiness only: what an answered `202` survives with the admission queue as it is
    /// configured (for Redis, read from its persistence settings).
    #[serde(skip_serializing_if = "Option::is_none")]
    admission_guarantee: Option<String>,
    /// Readiness only: how shoppers are identified (`auth.mode`): `jwt`, `signed-header` or
    /// `open` (the client names the shopper, unverified).
    #[serde(skip_serializing_if = "Option::is_none")]
    shopper_auth: Option<&'static str>,
    /// Readiness only: the clock campaign windows and leases are judged by.
    #[serde(skip_serializing_if = "Option::is_none")]
    clock: Option<Clock>,
}

/// The clock every host judges windows and leases by, and this host's distance from it.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct Clock {
    /// `redis` (its `TIME`), `database` (the server's clock), or `host` (this host's own:
    /// SQLite and the embedded queue, one host).
    source: &'static str,
    /// This host's wall clock minus the shared clock, in milliseconds (negative: behind). Past
    /// a second the host logs a warning; windows and leases follow the shared clock anyway.
    skew_ms: i64,
}

/// Liveness: the process answers.
#[utoipa::path(
    get,
    path = "/health/live",
    operation_id = "healthLive",
    tag = "operations",
    responses((status = 200, description = "The process answers", body = Health))
)]
pub async fn live() -> Json<Health> {
    Json(Health {
        status: HealthState::Ok,
        backends: BTreeMap::new(),
        admission_guarantee: None,
        shopper_auth: None,
        clock: None,
    })
}

/// Readiness: every configured backend (database, admission queue, event bus) answers.
#[utoipa::path(
    get,
    path = "/health/ready",
    operation_id = "healthReady",
    tag = "operations",
    responses(
        (status = 200, description = "Every backend answers", body = Health),
        (status = 503, description = "A backend is down; `backends` says which", body = Health),
    )
)]
pub async fn ready(
    State(platform): State<Arc<Platform>>,
    shoppers: Option<axum::Extension<Arc<super::shoppers::Shoppers>>>,
) -> (StatusCode, Json<Health>) {
    let readiness = platform.readiness().await;
    let ok = readiness.is_ready();
    let backends = readiness
        .backends
        .into_iter()
        .map(|b| {
            let text = match b.down {
                None => format!("ok ({})", b.kind),
                Some(e) => format!("down ({}): {e}", b.kind),
            };
            (b.name, text)
        })
        .collect();
    let status = if ok {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (
        status,
        Json(Health {
            status: if ok {
                HealthState::Ready
            } else {
                HealthState::NotReady
            },
            backends,
            admission_guarantee: Some(readiness.admission_guarantee),
            shopper_auth: shoppers.map(|s| s.mode()),
            clock: Some(Clock {
                source: readiness.clock.source,
                skew_ms: readiness.clock.skew_ms,
            }),
        }),
    )
}
