//! One error type for every handler: `{"code", "message"}` with a fitting status. Bad input is
//! always a 4xx; internal failures are logged and answered without their details.

use axum::Json;
use axum::extract::FromRequest;
use axum::extract::rejection::{JsonRejection, PathRejection, QueryRejection};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::Serialize;

use crate::platform::PlatformError;
use crate::store::StoreError;

#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub code: &'static str,
    pub message: String,
}

#[derive(Serialize)]
struct Body<'a> {
    code: &'a str,
    message: &'a str,
}

impl ApiError {
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        Self {
            status,
            code,
            message: message.into(),
        }
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
        let body = Body {
            code: self.code,
            message: &self.message,
        };
        (self.status, Json(body)).into_response()
    }
}

impl From<JsonRejection> for ApiError {
    fn from(r: JsonRejection) -> Self {
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
            PlatformError::Store(StoreError::CapacityBelowIssued { .. }) => {
                Self::unprocessable("invalid_campaign", e.to_string())
            }
            PlatformError::Plugin(reason) => Self::unprocessable("invalid_plugin", reason),
            PlatformError::Admission(_) | PlatformError::QueueUnstable(_) => {
                tracing::error!(error = %e, "admission queue unavailable");
                Self::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "unavailable",
                    "the admission queue is unavailable; try again",
                )
            }
            PlatformError::Store(e) => Self::internal(&e),
        }
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        Self::internal(&e)
    }
}

impl From<crate::admission::AdmissionError> for ApiError {
    fn from(e: crate::admission::AdmissionError) -> Self {
        PlatformError::Admission(e).into()
    }
}

/// `Json` whose rejections come back as [`ApiError`].
#[derive(Debug, FromRequest)]
#[from_request(via(axum::Json), rejection(ApiError))]
pub struct ApiJson<T>(pub T);

/// `Path` whose rejections come back as [`ApiError`].
#[derive(Debug, axum::extract::FromRequestParts)]
#[from_request(via(axum::extract::Path), rejection(ApiError))]
pub struct ApiPath<T>(pub T);

/// `Query` whose rejections come back as [`ApiError`].
#[derive(Debug, axum::extract::FromRequestParts)]
#[from_request(via(axum::extract::Query), rejection(ApiError))]
pub struct ApiQuery<T>(pub T);

/// Checks a user id: 1-128 bytes, no control characters, no surrounding whitespace.
pub fn check_user_id(user_id: &str) -> Result<(), ApiError> {
    let problem = if user_id.is_empty() {
        "must not be empty"
    } else if user_id.len() > 128 {
        "must be at most 128 bytes"
    } else if user_id.chars().any(char::is_control) {
        "must not contain control characters"
    } else if user_id.trim() != user_id {
        "must not start or end with whitespace"
    } else {
        return Ok(());
    };
    Err(ApiError::unprocessable(
        "invalid_user_id",
        format!("user_id {problem}"),
    ))
}
