//! One error type for every handler: `{"code", "message"}` with a fitting status. Bad input is
//! always a 4xx; internal failures are logged and answered without their details.

use axum::Json;
use axum::extract::rejection::{JsonRejection, PathRejection, QueryRejection};
use axum::extract::{FromRequest, Request};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use serde::de::DeserializeOwned;

use firstcome_core::user::UserId;

use firstcome_platform::PlatformError;
use firstcome_store::StoreError;

/// An answer other than success: its status, `code` and `message`, and any headers it needs
/// (`WWW-Authenticate` on a `401`, `Retry-After` on a `429`).
#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub code: &'static str,
    pub message: String,
    pub headers: Vec<(&'static str, String)>,
}

/// Every error the API answers: a stable machine-readable `code` and a message saying what to
/// fix.
#[derive(Debug, Serialize, utoipa::ToSchema)]
#[schema(example = json!({"code": "unknown_campaign", "message": "no active campaign \"spring-sale\""}))]
pub struct ErrorBody {
    /// What went wrong, for programs: `unknown_campaign`, `invalid_user_id`, `sold_out`, ...
    pub code: String,
    /// What went wrong and how to fix it, for people.
    pub message: String,
}

impl ApiError {
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        Self {
            status,
            code,
            message: message.into(),
            headers: Vec::new(),
        }
    }

    /// The same answer with a header added (a value that is no valid header is left out).
    pub fn with_header(mut self, name: &'static str, value: impl Into<String>) -> Self {
        self.headers.push((name, value.into()));
        self
    }

    /// `429` with `code`, `message` and `Retry-After` in whole seconds (at least 1).
    pub fn too_many(
        code: &'static str,
        message: impl Into<String>,
        retry_after: std::time::Duration,
    ) -> Self {
        let secs = retry_after.as_secs() + u64::from(retry_after.subsec_nanos() > 0);
        Self::new(StatusCode::TOO_MANY_REQUESTS, code, message)
            .with_header("retry-after", secs.max(1).to_string())
    }

    pub fn bad_request(code: &'static str, message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, code, message)
    }

    pub fn unprocessable(code: &'static str, message: impl Into<String>) -> Self {
        Self::new(StatusCode::UNPROCESSABLE_ENTITY, code, message)
    }

    pub fn not_found(code: &'static str, message: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, code, message)
    }

    pub fn unknown_campaign(id: &str) -> Self {
        Self::not_found("unknown_campaign", format!("no active campaign {id:?}"))
    }

    /// A failure of ours: logged in full, answered without details.
    pub fn internal(error: &dyn std::fmt::Display) -> Self {
        tracing::error!(%error, "request failed");
        Self::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            "internal error",
        )
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = ErrorBody {
            code: self.code.to_owned(),
            message: self.message,
        };
        let mut response = (self.status, Json(body)).into_response();
        for (name, value) in self.headers {
            if let Ok(value) = axum::http::HeaderValue::from_str(&value) {
                response.headers_mut().insert(name, value);
            }
        }
        response
    }
}

/// Whether a rejection comes from the body arriving too slowly (the server's
/// `http.body_read_timeout_ms`).
fn body_timed_out(error: &(dyn std::error::Error + 'static)) -> bool {
    let mut next = Some(error);
    while let Some(e) = next {
        if e.is::<super::server::BodyDeadline>() {
            return true;
        }
        next = e.source();
    }
    false
}

impl From<JsonRejection> for ApiError {
    fn from(r: JsonRejection) -> Self {
        if body_timed_out(&r) {
            return Self::new(
                StatusCode::REQUEST_TIMEOUT,
                "request_timeout",
                "the request body did not arrive in time; send it whole",
            );
        }
        let code = match r.status() {
            StatusCode::PAYLOAD_TOO_LARGE => "body_too_large",
            StatusCode::UNSUPPORTED_MEDIA_TYPE => "unsupported_media_type",
            StatusCode::UNPROCESSABLE_ENTITY => "invalid_body",
            _ => "malformed_body",
        };
        Self::new(r.status(), code, r.body_text())
    }
}

impl From<PathRejection> for ApiError {
    fn from(r: PathRejection) -> Self {
        Self::bad_request("invalid_path", r.body_text())
    }
}

impl From<QueryRejection> for ApiError {
    fn from(r: QueryRejection) -> Self {
        Self::bad_request("invalid_query", r.body_text())
    }
}

impl From<PlatformError> for ApiError {
    fn from(e: PlatformError) -> Self {
        match e {
            PlatformError::Store(StoreError::CapacityBelowIssued { .. })
            | PlatformError::CapacityBelowAdmitted { .. }
            | PlatformError::ShardsChanged { .. }
            | PlatformError::ShardedCapacityLowered { .. } => {
                Self::unprocessable("invalid_campaign", e.to_string())
            }
            PlatformError::Plugin(reason) => Self::unprocessable("invalid_plugin", reason),
            e @ PlatformError::TooManyCampaigns { .. } => {
                Self::new(StatusCode::CONFLICT, "too_many_campaigns", e.to_string())
            }
            PlatformError::Admission(firstcome_admission::AdmissionError::NotRecorded(_)) => {
                tracing::error!(error = %e, "admission not recorded");
                Self::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "unavailable",
                    "the request could not be recorded in time; it may still be admitted \
                     (its status tells), else try again",
                )
            }
            PlatformError::Admission(_)
            | PlatformError::QueueUnstable(_)
            | PlatformError::QueueBehind(_) => {
                tracing::error!(error = %e, "admission queue unavailable");
                Self::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "unavailable",
                    "the admission queue is unavailable; try again",
                )
            }
            PlatformError::Store(e) => e.into(),
        }
    }
}

impl From<StoreError> for ApiError {
    /// `503 unavailable` when the database cannot serve now (pool exhausted, lock or statement
    /// timeout, connection lost, read-only, disk full: [`StoreError::is_unavailable`]), else
    /// `500 internal`.
    fn from(e: StoreError) -> Self {
        if e.is_unavailable() {
            tracing::warn!(error = %e, "database unavailable");
            return Self::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "unavailable",
                "the database is busy or unavailable; try again",
            )
            .with_header("retry-after", "1");
        }
        Self::internal(&e)
    }
}

impl From<firstcome_admission::AdmissionError> for ApiError {
    fn from(e: firstcome_admission::AdmissionError) -> Self {
        PlatformError::Admission(e).into()
    }
}

/// A JSON object body read as `T`, with rejections as [`ApiError`]. A body that is JSON but
/// not an object is refused: serde would otherwise read a struct from an array, field by field
/// (`["user-1"]` as `{"user_id": "user-1"}`), which no client means.
#[derive(Debug)]
pub struct ApiJson<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequest<S> for ApiJson<T> {
    type Rejection = ApiError;

    async fn from_request(request: Request, state: &S) -> Result<Self, ApiError> {
        // Strict: a key named twice is refused (`invalid_body`), at any depth.
        let axum::Json(crate::strict_json::StrictValue(value)) =
            axum::Json::<crate::strict_json::StrictValue>::from_request(request, state).await?;
        if !value.is_object() {
            return Err(ApiError::unprocessable(
                "invalid_body",
                "the body must be a JSON object",
            ));
        }
        serde_path_to_error::deserialize(value)
            .map(ApiJson)
            .map_err(|e| {
                let message = match e.path().to_string().as_str() {
                    "." => e.inner().to_string(),
                    path => format!("{path}: {}", e.inner()),
                };
                ApiError::unprocessable("invalid_body", message)
            })
    }
}

/// `Path` whose rejections come back as [`ApiError`].
#[derive(Debug, axum::extract::FromRequestParts)]
#[from_request(via(axum::extract::Path), rejection(ApiError))]
pub struct ApiPath<T>(pub T);

/// `Query` whose rejections come back as [`ApiError`].
#[derive(Debug, axum::extract::FromRequestParts)]
#[from_request(via(axum::extract::Query), rejection(ApiError))]
pub struct ApiQuery<T>(pub T);

/// Checks a user id at the edge ([`UserId::parse`]), as the `invalid_user_id` error.
pub fn parse_user_id(user_id: &str) -> Result<UserId, ApiError> {
    UserId::parse(user_id).map_err(|e| ApiError::unprocessable("invalid_user_id", e.to_string()))
}
