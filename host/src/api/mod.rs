//! The REST API (axum). Every body is JSON; every error is `{"code", "message"}`
//! ([`error::ApiError`]), including rejected JSON, unknown routes and wrong methods.
//!
//! Layout: `requests` (admission, request status, a user's coupons, the replaced system's
//! routes), `campaigns` (views with live counts), `streams` (server-sent events), `admin`
//! (bearer-token routes), `health`, and `page/index.html`, the live campaign page at `/`.

pub mod admin;
pub mod campaigns;
pub mod error;
pub mod health;
pub mod requests;
pub mod streams;

use std::sync::Arc;

use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::http::StatusCode;
use axum::middleware;
use axum::routing::{get, post, put};

use crate::platform::Platform;
use error::ApiError;

/// Request bodies are small JSON documents; anything larger is refused with 413.
const BODY_LIMIT: usize = 16 * 1024;
/// Except the bulk user upload: 1,000 profiles.
const BULK_BODY_LIMIT: usize = 4 * 1024 * 1024;

pub fn router(platform: Arc<Platform>) -> Router {
    let admin = Router::new()
        .route("/campaigns", get(admin::list_campaigns))
        .route("/consumers", get(admin::consumers))
        .route("/plugins", get(admin::plugins))
        .route(
            "/campaigns/{campaign_id}",
            put(admin::put_campaign).delete(admin::delete_campaign),
        )
        .route("/users/{user_id}", put(admin::put_user))
        .route(
            "/users",
            put(admin::put_users).layer(DefaultBodyLimit::max(BULK_BODY_LIMIT)),
        )
        .route_layer(middleware::from_fn_with_state(
            platform.clone(),
            admin::require_token,
        ));
    let api = Router::new()
        .route("/campaigns", get(campaigns::list))
        .route("/campaigns/{campaign_id}", get(campaigns::get))
        .route("/campaigns/{campaign_id}/stats", get(campaigns::stats))
        .route("/campaigns/{campaign_id}/stats/stream", get(streams::stats))
        .route(
            "/campaigns/{campaign_id}/requests/{user_id}/stream",
            get(streams::request),
        )
        .route("/campaigns/{campaign_id}/requests", post(requests::create))
        .route(
            "/campaigns/{campaign_id}/requests/{user_id}",
            get(requests::status),
        )
        .route("/users/{user_id}/coupons", get(requests::user_coupons))
        .route("/coupons/request", post(requests::legacy_request))
        .route("/coupons/my", get(requests::legacy_my))
        .nest("/admin", admin);
    Router::new()
        .nest("/api/v1", api)
        .route("/", get(page))
        .route("/dashboard", get(page))
        .route("/health/live", get(health::live))
        .route("/health/ready", get(health::ready))
        .route("/metrics", get(crate::monitoring::metrics))
        .route_layer(middleware::from_fn(crate::monitoring::observe_request))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(DefaultBodyLimit::max(BODY_LIMIT))
        .with_state(platform)
}

/// The live campaign page: one self-contained HTML file (no build step), fed by the
/// statistics stream, `/api/v1/campaigns` and `/metrics`.
async fn page() -> impl axum::response::IntoResponse {
    (
        [("cache-control", "no-cache")],
        axum::response::Html(include_str!("page/index.html")),
    )
}

async fn not_found() -> ApiError {
    ApiError::not_found("not_found", "no such route")
}

async fn method_not_allowed() -> ApiError {
    ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
        "method not allowed on this route",
    )
}
