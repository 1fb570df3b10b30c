//! Liveness and readiness.

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use serde::Serialize;

use crate::platform::Platform;

#[derive(Debug, Serialize)]
pub struct Health {
    status: &'static str,
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    backends: BTreeMap<&'static str, String>,
}

/// `GET /health/live`: the process answers.
pub async fn live() -> Json<Health> {
    Json(Health {
        status: "ok",
        backends: BTreeMap::new(),
    })
}

/// `GET /health/ready`: every configured backend answers.
pub async fn ready(State(platform): State<Arc<Platform>>) -> (StatusCode, Json<Health>) {
    let (db, queue, bus) = tokio::join!(
        platform.store.ping(),
        platform.admission.ping(),
        platform.bus.ping()
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
        }),
    )
}
