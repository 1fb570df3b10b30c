//! What every response carries for the browser's sake, and which plane a route belongs to.
//!
//! [`secure`] adds the security headers to every answer, pages, JSON, errors and streams alike:
//! a Content-Security-Policy that lets a page load only the host's own files (no inline
//! script or style, no framing by another site), `nosniff`, no referrer, and no framing for
//! browsers that know only `X-Frame-Options`. The live page and Swagger UI are built to work
//! under it (their scripts and styles are files of their own).
//!
//! [`only_its_plane`] answers `404` to a route of the other plane (see [`Plane`]).

use axum::extract::{MatchedPath, Request};
use axum::http::HeaderValue;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use super::error::ApiError;
use super::operators::Plane;

/// Own files only; images also as `data:` URIs (Swagger UI's icons); nothing may frame a page.
pub const CONTENT_SECURITY_POLICY: &str = "default-src 'self'; img-src 'self' data:; \
     frame-ancestors 'none'; base-uri 'none'; form-action 'self'; object-src 'none'";

/// The outer layer adding the security headers to every response.
pub async fn secure(request: Request, next: Next) -> Response {
    let mut response = next.run(request).await;
    let headers = response.headers_mut();
    for (name, value) in [
        ("content-security-policy", CONTENT_SECURITY_POLICY),
        ("x-content-type-options", "nosniff"),
        ("referrer-policy", "no-referrer"),
        ("x-frame-options", "DENY"),
        ("cross-origin-opener-policy", "same-origin"),
    ] {
        headers.insert(name, HeaderValue::from_static(value));
    }
    response
}

/// Whether a route pattern belongs to the admin plane only: the admin API, metrics, the pages
/// and the API document.
pub fn admin_only(route: &str) -> bool {
    route.starts_with("/api/v1/admin")
        || route.starts_with(super::doc::PAGE_PATH)
        || matches!(
            route,
            "/" | "/dashboard" | "/live.css" | "/live.js" | "/metrics" | super::doc::DOCUMENT_PATH
        )
}

/// Whether a route pattern belongs to the public plane only: what shoppers do (ask for a
/// coupon, follow their request, read their coupons), on the current and the legacy routes.
pub fn public_only(route: &str) -> bool {
    route.contains("/requests") || route.starts_with("/api/v1/users") || route.contains("/coupon")
}

/// Route layer: `404 not_found` for a route of the plane this listener does not serve, as if
/// it did not exist.
pub async fn only_its_plane(request: Request, next: Next) -> Response {
    if elsewhere(&request) {
        return ApiError::not_found("not_found", "no such route").into_response();
    }
    next.run(request).await
}

/// Whether `request` matched a route of the plane its listener does not serve. On the
/// admission path: no allocation, and nothing to look at on a shared listener.
fn elsewhere(request: &Request) -> bool {
    let plane = request
        .extensions()
        .get::<Plane>()
        .copied()
        .unwrap_or(Plane::Both);
    let route = || {
        request
            .extensions()
            .get::<MatchedPath>()
            .map(MatchedPath::as_str)
    };
    match plane {
        Plane::Both => false,
        Plane::Public => route().is_some_and(admin_only),
        Plane::Admin => route().is_some_and(public_only),
    }
}
