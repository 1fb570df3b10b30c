//! Liveness and readiness.

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use serde::Serialize;

use firstcome_platform::Platform;

/// The host's health.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct Health {
    /// `ok` (live), `ready` or `not_ready`.
    #[schema(value_type = super::schema::HealthState)]
    status: &'static str,
    /// Readiness only: each backend, `ok ({kind})` or `down ({kind}): {reason}`.
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    #[schema(value_type = BTreeMap<String, String>)]
    backends: BTreeMap<&'static str, String>,
    /// Readiness only: what an answered `202` survives with the admission queue as it is
    /// configured (for Redis, read from its persistence settings).
    #[serde(skip_serializing_if = "Option::is_none")]
    admission_guarantee: Option<String>,
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
        status: "ok",
        backends: BTreeMap::new(),
        admission_guarantee: None,
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
pub async fn ready(State(platform): State<Arc<Platform>>) -> (StatusCode, Json<Health>) {
    let (db, queue, bus, guarantee) = tokio::join!(
        platform.store.ping(),
        platform.admission.ping(),
        platform.bus.ping(),
        platform.admission.durability()
    );
    let mut backends = BTreeMap::new();
    let mut ok = true;
    let mut note = |name: &'static str, kind: &str, r: Result<(), String>| {
        ok &= r.is_ok();
        backends.insert(
            name,
            match r {
                Ok(()) => format!("ok ({kind})"),
                Err(e) => format!("down ({kind}): {e}"),
            },
        );
    };
    note(
        "database",
        &format!("{:?}", platform.store.dialect()).to_lowercase(),
        db.map_err(|e| e.to_string()),
    );
    note(
        "admission",
        platform.admission.kind(),
        queue.map_err(|e| e.to_string()),
    );
    note(
        "event_bus",
        platform.bus.kind(),
        bus.map_err(|e| e.to_string()),
    );
    let status = if ok {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (
        status,
        Json(Health {
            status: if ok { "ready" } else { "not_ready" },
            backends,
            admission_guarantee: Some(guarantee),
        }),
    )
}
