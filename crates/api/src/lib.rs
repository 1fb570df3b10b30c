//! # firstcome-api
//!
//! The REST API (axum). Every body is JSON; every error is `{"code", "message"}`
//! ([`error::ApiError`]), including rejected JSON, unknown routes and wrong methods.
//!
//! Layout: `requests` (admission, request status, a user's coupons, the replaced system's
//! routes), `campaigns` (views with live counts), `streams` (server-sent events), `admin`
//! (the operators' routes), `audit` (the audit log's route),
//! `dead_letters` (listing, replaying and discarding dead letters), `operators` (named admin
//! credentials and their roles), `shoppers` (who a shopper is: JWT, signed headers or open;
//! limits per shopper and per address), `health`, `observe` (request ids, latency, `/metrics`),
//! `server` (the HTTP/1 connection loop with its limits), `doc` (the OpenAPI document and its
//! interactive page), `headers` (the security headers of every response), and `page/`, the
//! live campaign page at `/`.
//!
//! Two planes: the public one (the shopper API, health, what campaigns make public) and the
//! admin one (admin routes, `/metrics`, the pages, the API document), each on its own
//! listener or both on one ([`operators::Plane`]). A route of the other plane answers `404`.
//!
//! Every route is registered through [`utoipa_axum::routes!`], which takes its path and method
//! from the handler's `#[utoipa::path]`: the router and the document cannot disagree.

pub mod admin;
pub mod audit;
pub mod campaigns;
pub mod dead_letters;
pub mod doc;
pub mod error;
pub mod headers;
pub mod health;
pub mod observe;
pub mod operators;
pub mod requests;
pub mod schema;
pub mod server;
pub mod shoppers;
pub mod streams;
pub mod strict_json;

use std::sync::Arc;

use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::http::StatusCode;
use axum::middleware;
use utoipa::openapi::OpenApi;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use error::ApiError;
use firstcome_platform::Platform;

/// Request bodies are small JSON documents; anything larger is refused with 413.
const BODY_LIMIT: usize = 16 * 1024;
/// Except the bulk user upload (1,000 profiles) and the dead-letter selections (200 ids).
const BULK_BODY_LIMIT: usize = 4 * 1024 * 1024;

/// The versioned API under `/api/v1`.
fn api_v1() -> OpenApiRouter<Arc<Platform>> {
    let admin = OpenApiRouter::new()
        .routes(routes!(admin::list_campaigns))
        .routes(routes!(admin::consumers))
        .routes(routes!(admin::plugins))
        .routes(routes!(admin::put_campaign, admin::delete_campaign))
        .routes(routes!(admin::put_user))
        .routes(routes!(audit::list))
        .routes(routes!(dead_letters::list))
        .merge(
            // Up to 1,000 profiles; up to 200 event ids of 255 bytes each, written escaped.
            OpenApiRouter::new()
                .routes(routes!(admin::put_users))
                .routes(routes!(dead_letters::replay))
                .routes(routes!(dead_letters::discard))
                .layer(DefaultBodyLimit::max(BULK_BODY_LIMIT)),
        );
    OpenApiRouter::new()
        .routes(routes!(campaigns::list))
        .routes(routes!(campaigns::get))
        .routes(routes!(campaigns::stats))
        .routes(routes!(streams::stats))
        .routes(routes!(streams::request))
        .routes(routes!(requests::create))
        .routes(routes!(requests::status))
        .routes(routes!(requests::user_coupons))
        .routes(routes!(requests::legacy_request))
        .routes(routes!(requests::legacy_my))
        .nest("/admin", admin)
}

/// Every route of the host with its documentation.
fn routes() -> OpenApiRouter<Arc<Platform>> {
    OpenApiRouter::with_openapi(doc::base())
        .nest("/api/v1", api_v1())
        .routes(routes!(page))
        .routes(routes!(dashboard))
        .routes(routes!(live_css))
        .routes(routes!(live_js))
        .routes(routes!(health::live))
        .routes(routes!(health::ready))
        .routes(routes!(observe::metrics))
        .routes(routes!(doc::openapi_json))
}

/// The OpenAPI document of every route (what `/api/openapi.json` serves).
pub fn openapi() -> OpenApi {
    let (_, mut document) = routes().split_for_parts();
    doc::complete(&mut document);
    document
}

/// The host's routes before the state is given: the documented routes, the interactive page
/// for the document, the fallbacks and the layers. Separate from [`router`] so that a test can
/// read what it serves.
fn stateless() -> (Router<Arc<Platform>>, OpenApi) {
    let (routes, mut document) = routes().split_for_parts();
    doc::complete(&mut document);
    let json = doc::Document::new(&document);
    let router = routes
        .merge(doc::interactive_page())
        .route_layer(middleware::from_fn(headers::only_its_plane))
        .route_layer(middleware::from_fn(observe::tag_route))
        .layer(axum::Extension(json))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(DefaultBodyLimit::max(BODY_LIMIT))
        .layer(middleware::from_fn(headers::secure))
        .layer(middleware::from_fn(observe::observe_request));
    (router, document)
}

/// The router of one listener: the routes of `plane` over `platform`, shoppers verified and
/// limited by `shoppers`, operators by `operators`.
pub fn router(
    platform: Arc<Platform>,
    shoppers: Arc<shoppers::Shoppers>,
    operators: Arc<operators::Operators>,
    plane: operators::Plane,
) -> Router {
    stateless()
        .0
        .layer(axum::Extension(shoppers))
        .layer(axum::Extension(operators))
        .layer(axum::Extension(plane))
        .with_state(platform)
}

/// The live campaign page: one self-contained HTML file (no build step), fed by the
/// statistics stream, `/api/v1/campaigns` and `/metrics`.
#[utoipa::path(
    get,
    path = "/",
    operation_id = "livePage",
    tag = "pages",
    responses((status = 200, description = "The live campaign page", content_type = "text/html", body = String))
)]
async fn page() -> impl axum::response::IntoResponse {
    (
        [("cache-control", "no-cache")],
        axum::response::Html(include_str!("page/index.html")),
    )
}

/// The live campaign page, under the name operators look for.
#[utoipa::path(
    get,
    path = "/dashboard",
    operation_id = "dashboardPage",
    tag = "pages",
    responses((status = 200, description = "The live campaign page", content_type = "text/html", body = String))
)]
async fn dashboard() -> impl axum::response::IntoResponse {
    page().await
}

/// The live page's style sheet (a file of its own: the pages allow no inline style or script).
#[utoipa::path(
    get,
    path = "/live.css",
    operation_id = "livePageStyle",
    tag = "pages",
    responses((status = 200, description = "The live page's style sheet", content_type = "text/css", body = String))
)]
async fn live_css() -> impl axum::response::IntoResponse {
    page_file("text/css; charset=utf-8", include_str!("page/live.css"))
}

/// The live page's script.
#[utoipa::path(
    get,
    path = "/live.js",
    operation_id = "livePageScript",
    tag = "pages",
    responses((status = 200, description = "The live page's script", content_type = "text/javascript", body = String))
)]
async fn live_js() -> impl axum::response::IntoResponse {
    page_file(
        "text/javascript; charset=utf-8",
        include_str!("page/live.js"),
    )
}

/// A file of the live page, fetched again whenever the page loads (it changes with the host).
fn page_file(content_type: &'static str, body: &'static str) -> impl axum::response::IntoResponse {
    (
        [
            ("content-type", content_type),
            ("cache-control", "no-cache"),
        ],
        body,
    )
}

async fn not_found() -> ApiError {
    ApiError::not_found("not_found", "no such route")
}

/// `405`, except for a route of the admin plane on a listener that does not serve it: `404`,
/// as for any route it does not have (a `405` would tell that the route exists).
async fn method_not_allowed(
    plane: Option<axum::Extension<operators::Plane>>,
    uri: axum::http::Uri,
) -> ApiError {
    let public_only = plane.is_some_and(|p| p.0 == operators::Plane::Public);
    if public_only && headers::admin_only(uri.path()) {
        return ApiError::not_found("not_found", "no such route");
    }
    ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
        "method not allowed on this route",
    )
}

#[cfg(test)]
mod tests;
