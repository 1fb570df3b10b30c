//! What every HTTP request goes through: an id (the caller's `x-request-id` or a new one) in
//! its span and on its response, its route pattern, and its latency by route, method and
//! status; and `GET /metrics`.

use std::sync::Arc;
use std::time::Instant;

use axum::extract::{MatchedPath, Request, State};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use metrics::histogram;
use tracing::Instrument;

use firstcome_platform::Platform;

/// The header that carries a request's id, both ways.
pub const REQUEST_ID: &str = "x-request-id";

/// A caller's request id if it is a sensible one (1-128 visible ASCII characters).
fn caller_request_id(request: &Request) -> Option<String> {
    let id = request.headers().get(REQUEST_ID)?.to_str().ok()?;
    let ok = !id.is_empty() && id.len() <= 128 && id.bytes().all(|b| b.is_ascii_graphic());
    ok.then(|| id.to_owned())
}

/// The route pattern a request matched, handed from [`tag_route`] to [`observe_request`].
#[derive(Clone, Debug)]
struct MatchedRoute(String);

/// Route layer: names the route pattern the request matched in its span and, for
/// [`observe_request`]'s metrics, on its response. (Only a route layer sees the match; the
/// outer layer also sees requests no route matched.)
pub async fn tag_route(request: Request, next: Next) -> Response {
    let Some(route) = request
        .extensions()
        .get::<MatchedPath>()
        .map(|p| p.as_str().to_owned())
    else {
        return next.run(request).await;
    };
    tracing::Span::current().record("route", route.as_str());
    let mut response = next.run(request).await;
    response.extensions_mut().insert(MatchedRoute(route));
    response
}

/// The outermost layer: gives every HTTP request, matched or not, an id (the caller's
/// `x-request-id`, or a new one) that its log lines carry and its response echoes, and times
/// it by route pattern (`unmatched` when none matched), method and status.
pub async fn observe_request(request: Request, next: Next) -> Response {
    let method = request.method().as_str().to_owned();
    let id = caller_request_id(&request).unwrap_or_else(|| uuid::Uuid::now_v7().to_string());
    let span = tracing::info_span!(
        "request",
        request_id = %id,
        %method,
        route = tracing::field::Empty
    );
    let started = Instant::now();
    let mut response = next.run(request).instrument(span.clone()).await;
    let elapsed = started.elapsed();
    let status = response.status();
    span.in_scope(|| {
        if status.is_server_error() {
            tracing::warn!(
                status = status.as_u16(),
                elapsed_ms = elapsed.as_millis() as u64,
                "request failed"
            );
        } else {
            tracing::debug!(
                status = status.as_u16(),
                elapsed_ms = elapsed.as_millis() as u64,
                "request"
            );
        }
    });
    if let Ok(value) = axum::http::HeaderValue::from_str(&id) {
        response.headers_mut().insert(REQUEST_ID, value);
    }
    let route = response
        .extensions()
        .get::<MatchedRoute>()
        .map_or_else(|| "unmatched".to_owned(), |r| r.0.clone());
    histogram!("firstcome_http_request_duration_seconds",
        "method" => method, "route" => route, "status" => status.as_u16().to_string())
    .record(elapsed.as_secs_f64());
    response
}

/// The host's metrics in the Prometheus text format: admissions, request latency, queue,
/// chunks, outbox, event bus, consumer groups and plugins (see `deploy/grafana`).
#[utoipa::path(
    get,
    path = "/metrics",
    operation_id = "metrics",
    tag = "operations",
    responses((status = 200, description = "Prometheus text format 0.0.4",
        content_type = "text/plain; version=0.0.4; charset=utf-8", body = String))
)]
pub async fn metrics(State(platform): State<Arc<Platform>>) -> impl IntoResponse {
    (
        [("content-type", "text/plain; version=0.0.4; charset=utf-8")],
        firstcome_platform::monitoring::render(&platform).await,
    )
}
