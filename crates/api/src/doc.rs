//! The OpenAPI 3.1 document, generated from the handlers' `#[utoipa::path]` attributes and the
//! types' `ToSchema` derives, served at `/api/openapi.json`, with Swagger UI at `/api/docs/`
//! (its files are compiled into the binary, so the page works without the internet).
//!
//! The handlers document their own answers; [`complete`] adds the ones every route of a kind
//! shares, from the extractors: a JSON body can be malformed (400), late (408), too large (413), of the
//! wrong media type (415) or of the wrong shape (422); a path segment can be undecodable (400);
//! an admin route refuses a missing token (401); and every answer carries `x-request-id`.

use axum::Extension;
use axum::body::Bytes;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response as HttpResponse};
use utoipa::ToSchema;
use utoipa::openapi::header::HeaderBuilder;
use utoipa::openapi::path::{Operation, ParameterIn};
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::openapi::{
    ComponentsBuilder, ContentBuilder, InfoBuilder, LicenseBuilder, OpenApi, OpenApiBuilder, Ref,
    RefOr, Response, ResponseBuilder, Tag, Type, schema::ObjectBuilder,
};

use super::error::{ApiError, ErrorBody};

/// Where the document is served; the interactive page reads it from here.
pub const DOCUMENT_PATH: &str = "/api/openapi.json";
/// Where Swagger UI is served.
pub const PAGE_PATH: &str = "/api/docs";

const DESCRIPTION: &str = "\
First-come-first-served coupon issuance. A user asks for a coupon of a campaign \
(`POST /api/v1/campaigns/{campaign_id}/requests`); exactly `capacity` users are admitted, in \
arrival order, each at most once, and each admitted request is issued a coupon shortly after. \
Follow a request with `GET .../requests/{user_id}` or its event stream.\n\n\
Every error is a JSON object `{\"code\", \"message\"}`: `code` is stable and meant for programs, \
`message` says what to fix. Every response carries `x-request-id` (the caller's, when it sent a \
usable one), which the host's log lines of that request carry too.\n\n\
The routes under `/api/v1/admin` need a named admin credential, `Authorization: Bearer {token}`, \
whose role allows the call (`viewer` reads, `operator` also changes campaigns, `admin` \
everything); they are served on the admin listener (`admin_listen`).\n\n\
The shopper routes (requests, their status and stream, a user's coupons, the legacy routes) \
identify the shopper as the host's `auth.mode` says: `jwt` (`Authorization: Bearer` with a token \
of the store's identity provider), `signed-header` (a gateway's signed `X-Firstcome-User`), or \
`open` (the `user_id` the client sends; loopback or behind an authenticating gateway only). \
With a credential, a `user_id` may be left out; naming another shopper is `403` on writes and \
`404` on reads. Too many requests are `429` with `Retry-After`.";

/// The document before the routes are added: description, tags, the admin token's scheme and
/// the shared schemas.
pub fn base() -> OpenApi {
    let tags = [
        ("requests", "Asking for a coupon and following the request"),
        (
            "campaigns",
            "Active campaigns with live counts and statistics",
        ),
        (
            "streams",
            "Server-sent events: live statistics and one request",
        ),
        (
            "admin",
            "Campaigns, user profiles, consumers and plugins (bearer token)",
        ),
        (
            "legacy",
            "The replaced system's routes, kept for its clients",
        ),
        ("operations", "Health, metrics and this document"),
        ("pages", "Pages for people"),
    ]
    .map(|(name, description)| {
        let mut tag = Tag::new(name);
        tag.description = Some(description.to_owned());
        tag
    });
    let components = ComponentsBuilder::new()
        .security_scheme(
            "admin_token",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .description(Some(
                        "A named admin credential (`admin_tokens`, or `FIRSTCOME_ADMIN_TOKEN`)",
                    ))
                    .build(),
            ),
        )
        .security_scheme(
            "shopper_jwt",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .bearer_format("JWT")
                    .description(Some(
                        "`auth.mode = \"jwt\"`: a token of the store's identity provider; the \
                         shopper is its `sub` claim (or `auth.user_claim`)",
                    ))
                    .build(),
            ),
        )
        .security_scheme(
            "shopper_signed_header",
            SecurityScheme::ApiKey(utoipa::openapi::security::ApiKey::Header(
                utoipa::openapi::security::ApiKeyValue::with_description(
                    "X-Firstcome-Signature",
                    "`auth.mode = \"signed-header\"`: hex HMAC-SHA256 under \
                     `auth.signed_header.secret` over `{X-Firstcome-Timestamp}.{X-Firstcome-User}`, \
                     sent with those two headers by the gateway in front",
                ),
            )),
        )
        .schema_from::<ErrorBody>()
        .build();
    OpenApiBuilder::new()
        .info(
            InfoBuilder::new()
                .title("firstcome")
                .version(env!("CARGO_PKG_VERSION"))
                .description(Some(DESCRIPTION))
                .license(Some(
                    LicenseBuilder::new()
                        .name("Apache-2.0")
                        .identifier(Some("Apache-2.0"))
                        .build(),
                )),
        )
        .tags(Some(tags))
        .components(Some(components))
        .build()
}

fn error(description: &str) -> RefOr<Response> {
    ResponseBuilder::new()
        .description(description)
        .content(
            "application/json",
            ContentBuilder::new()
                .schema(Some(Ref::from_schema_name(ErrorBody::name())))
                .build(),
        )
        .build()
        .into()
}

/// Adds `status` to the operation unless the handler documented it already; if it did, its
/// description gains `also`.
fn add_response(op: &mut Operation, status: &str, also: &str) {
    match op.responses.responses.get_mut(status) {
        Some(RefOr::T(existing)) => {
            if !existing.description.contains(also) {
                existing.description = format!("{}; or {also}", existing.description);
            }
        }
        Some(RefOr::Ref(_)) => {}
        None => {
            op.responses
                .responses
                .insert(status.to_owned(), error(also));
        }
    }
}

/// Adds the answers every route of a kind shares (see the module documentation) and the
/// `x-request-id` header.
pub fn complete(document: &mut OpenApi) {
    let request_id = HeaderBuilder::new()
        .schema(Some(ObjectBuilder::new().schema_type(Type::String)))
        .description(Some(
            "The request's id: the caller's `x-request-id` when usable, else a new UUIDv7",
        ))
        .build();
    for item in document.paths.paths.values_mut() {
        let operations = [
            item.get.as_mut(),
            item.put.as_mut(),
            item.post.as_mut(),
            item.delete.as_mut(),
            item.patch.as_mut(),
        ];
        for op in operations.into_iter().flatten() {
            let params = op.parameters.as_deref().unwrap_or_default();
            let has = |place: ParameterIn| {
                params
                    .iter()
                    .any(|p| matches!(p, RefOr::T(p) if p.parameter_in == place))
            };
            let (in_path, in_query) = (has(ParameterIn::Path), has(ParameterIn::Query));
            if in_path {
                add_response(op, "400", "`invalid_path`: a path segment is not UTF-8");
            }
            if in_query {
                add_response(
                    op,
                    "400",
                    "`invalid_query`: a query parameter is missing or wrong",
                );
            }
            if op.request_body.is_some() {
                add_response(op, "400", "`malformed_body`: the body is not JSON");
                add_response(
                    op,
                    "408",
                    "`request_timeout`: the body did not arrive within the server's body read timeout",
                );
                add_response(op, "413", "`body_too_large`");
                add_response(
                    op,
                    "415",
                    "`unsupported_media_type`: send `content-type: application/json`",
                );
                add_response(
                    op,
                    "422",
                    "`invalid_body`: the JSON does not fit the schema",
                );
            }
            let (schemes, optional) = security_of(op);
            if schemes.iter().any(|s| s.starts_with("shopper_")) {
                add_response(
                    op,
                    "401",
                    "`unauthenticated`: the shopper's credential is missing or wrong (jwt and \
                     signed-header modes; `WWW-Authenticate` says why)",
                );
            } else if schemes.iter().any(|s| s == "admin_token") && !optional {
                add_response(op, "401", "`unauthorized`: missing or wrong bearer token");
                add_response(
                    op,
                    "403",
                    "`forbidden`: the credential's role does not allow this call",
                );
                add_response(
                    op,
                    "429",
                    "`rate_limited`: too many failed credentials from this address; try again \
                     after `Retry-After`",
                );
            }
            for response in op.responses.responses.values_mut() {
                if let RefOr::T(response) = response {
                    response
                        .headers
                        .insert("x-request-id".to_owned(), request_id.clone().into());
                }
            }
        }
    }
}

/// The security schemes an operation names, and whether it may also be called without any
/// (an empty requirement).
fn security_of(op: &Operation) -> (Vec<String>, bool) {
    let mut schemes = Vec::new();
    let mut optional = false;
    for requirement in op.security.iter().flatten() {
        let names: Vec<String> = serde_json::to_value(requirement)
            .ok()
            .and_then(|v| v.as_object().map(|o| o.keys().cloned().collect()))
            .unwrap_or_default();
        optional |= names.is_empty();
        schemes.extend(names);
    }
    (schemes, optional)
}

/// This document: the OpenAPI 3.1 description of every route.
#[utoipa::path(
    get,
    path = "/api/openapi.json",
    operation_id = "openapiDocument",
    tag = "operations",
    responses((status = 200, description = "The OpenAPI document", content_type = "application/json",
        body = inline(Object)))
)]
pub async fn openapi_json(Extension(Document(json)): Extension<Document>) -> impl IntoResponse {
    ([("content-type", "application/json")], json)
}

/// The serialised document, shared by every request for it.
#[derive(Clone, Debug)]
pub struct Document(pub Bytes);

impl Document {
    pub fn new(document: &OpenApi) -> Self {
        let json = document
            .to_pretty_json()
            .expect("an OpenAPI document always serialises");
        Self(Bytes::from(json))
    }
}

/// Swagger UI for the document, with "try it out" against this host.
pub fn interactive_page<S: Clone + Send + Sync + 'static>() -> axum::Router<S> {
    let config = utoipa_swagger_ui::Config::from(DOCUMENT_PATH)
        // The default validator badge would call swagger.io from the user's browser.
        .validator_url("none")
        .try_it_out_enabled(true)
        // A credential typed in stays in the page's memory only: kept in localStorage, any
        // script of the origin could read it, and it would outlive the tab.
        .persist_authorization(false);
    let page: axum::Router<S> = utoipa_swagger_ui::SwaggerUi::new(PAGE_PATH)
        .config(config)
        .into();
    // Its file routes answer a missing file with an empty 404; answer as the API does.
    page.layer(axum::middleware::map_response(
        |response: HttpResponse| async move {
            if response.status() == StatusCode::NOT_FOUND {
                ApiError::not_found("not_found", "no such file of the API's page").into_response()
            } else {
                response
            }
        },
    ))
}

/// Any JSON object (the document's own schema is beyond the scope of the document).
#[derive(Debug, ToSchema)]
#[allow(dead_code)]
pub struct Object {}
