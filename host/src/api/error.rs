//! One error type for every handler: `{"code", "message"}` with a fitting status. Bad input is
//! always a 4xx; internal failures are logged and answered without their details.

use axum::Json;
use axum::extract::rejection::{JsonRejection, PathRejection, QueryRejection};
use axum::extract::{FromRequest, Request};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::platform::PlatformError;
use crate::store::StoreError;

#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub code: &'static str,
    pub message: String,
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
        let body = ErrorBody {
            code: self.code.to_owned(),
            message: self.message,
        };
        (self.status, Json(body)).into_response()
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
            | PlatformError::CapacityBelowAdmitted { .. } => {
                Self::unprocessable("invalid_campaign", e.to_string())
            }
            PlatformError::Plugin(reason) => Self::unprocessable("invalid_plugin", reason),
            PlatformError::Admission(crate::admission::AdmissionError::NotRecorded(_)) => {
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

/// A JSON object body read as `T`, with rejections as [`ApiError`]. A body that is JSON but
/// not an object is refused: serde would otherwise read a struct from an array, field by field
/// (`["user-1"]` as `{"user_id": "user-1"}`), which no client means.
#[derive(Debug)]
pub struct ApiJson<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequest<S> for ApiJson<T> {
    type Rejection = ApiError;

    async fn from_request(request: Request, state: &S) -> Result<Self, ApiError> {
        let axum::Json(value) =
            axum::Json::<serde_json::Value>::from_request(request, state).await?;
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

/// The longest user id, in characters (the database columns are `VARCHAR(128)`).
pub const USER_ID_MAX_CHARS: usize = 128;

/// [`check_user_id`]'s rule as a regular expression, for the OpenAPI document: no control
/// characters (Unicode `Cc`) or format characters (`Cf`: zero-width spaces and joiners, bidi
/// marks, overrides and isolates, the byte-order mark, ...), and neither first nor last a
/// white-space character (Unicode `White_Space`, what `str::trim` removes). Written with
/// explicit ranges so that JavaScript's and Python's regex engines read it alike, which limits
/// it to the Basic Multilingual Plane: the format characters above it (tags U+E0001 and
/// U+E0020-E007F, and a few script-specific controls) are refused by the check alone.
pub const USER_ID_PATTERN: &str = concat!(
    r"^[^\x00-\x20\x7f-\xa0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000",
    r"\xad\u0600-\u0605\u061c\u06dd\u070f\u0890\u0891\u08e2\u180e\u200b-\u200f\u202a-\u202e",
    r"\u2060-\u2064\u2066-\u206f\ufeff\ufff9-\ufffb]",
    r"(?:[^\x00-\x1f\x7f-\x9f",
    r"\xad\u0600-\u0605\u061c\u06dd\u070f\u0890\u0891\u08e2\u180e\u200b-\u200f\u202a-\u202e",
    r"\u2060-\u2064\u2066-\u206f\ufeff\ufff9-\ufffb]*",
    r"[^\x00-\x20\x7f-\xa0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000",
    r"\xad\u0600-\u0605\u061c\u06dd\u070f\u0890\u0891\u08e2\u180e\u200b-\u200f\u202a-\u202e",
    r"\u2060-\u2064\u2066-\u206f\ufeff\ufff9-\ufffb])?$",
);

/// Whether `c` is a Unicode format character (general category `Cf`): invisible, or
/// changing how the text around it is shown (U+200B zero-width space, U+202E right-to-left
/// override, U+2066-2069 bidi isolates, ...). Two ids that differ only by one look the same.
fn is_format(c: char) -> bool {
    use unicode_properties::{GeneralCategory, UnicodeGeneralCategory};
    c.general_category() == GeneralCategory::Format
}

/// Checks a user id: 1-128 characters, no control or format characters, no surrounding
/// whitespace. Ids are otherwise compared exactly as sent: no Unicode normalisation, so `jürgen`
/// in NFC and in NFD are two users (a storefront that wants them to be one normalises before
/// it calls).
pub fn check_user_id(user_id: &str) -> Result<(), ApiError> {
    let problem = if user_id.is_empty() {
        "must not be empty"
    } else if user_id.chars().count() > USER_ID_MAX_CHARS {
        "must be at most 128 characters"
    } else if user_id.chars().any(char::is_control) {
        "must not contain control characters"
    } else if let Some(c) = user_id.chars().find(|c| is_format(*c)) {
        return Err(ApiError::unprocessable(
            "invalid_user_id",
            format!(
                "user_id must not contain Unicode format characters (found U+{:04X}): \
                 zero-width and bidi control characters make different ids look alike",
                c as u32
            ),
        ));
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

#[cfg(test)]
mod tests {
    use super::*;

    /// The document's pattern and the check the handlers run agree, so that a client that
    /// validates against the document is never refused, and never sends what is refused.
    #[test]
    fn user_id_pattern_matches_the_check() {
        let pattern = regex::Regex::new(USER_ID_PATTERN).unwrap();
        let samples = [
            "u",
            "user-42",
            "김민준",
            "a b",
            "é",
            "\u{feff}x",
            "x\u{200b}",
            "🦀",
            "a/b",
            "%2F",
            "..",
            "",
            " ",
            " a",
            "a ",
            "\ta",
            "a\n",
            "a\u{0}b",
            "a\u{7f}",
            "\u{85}a",
            "a\u{a0}",
            "\u{3000}a",
            "a\u{2028}",
            "a\u{9f}b",
            "\u{1680}",
            "a\u{202f}",
            "\u{205f}a",
        ];
        for s in samples {
            let by_check = check_user_id(s).is_ok();
            let by_pattern = pattern.is_match(s) && s.chars().count() <= USER_ID_MAX_CHARS;
            assert_eq!(by_check, by_pattern, "{s:?}");
        }
        // Every character of the Basic Multilingual Plane, alone and between two letters.
        for c in (0..=0xffff).filter_map(char::from_u32) {
            for s in [c.to_string(), format!("a{c}b")] {
                assert_eq!(check_user_id(&s).is_ok(), pattern.is_match(&s), "{s:?}");
            }
        }
        let long = "x".repeat(USER_ID_MAX_CHARS);
        assert!(check_user_id(&long).is_ok());
        assert!(check_user_id(&format!("{long}x")).is_err());
        assert!(check_user_id(&"é".repeat(USER_ID_MAX_CHARS)).is_ok());
    }

    #[test]
    fn format_characters_are_refused_and_ids_are_not_normalised() {
        for s in [
            "a\u{200b}b",
            "a\u{202e}b",
            "a\u{2066}b",
            "a\u{feff}",
            "a\u{e0041}b",
            "a\u{ad}b",
        ] {
            let e = check_user_id(s).unwrap_err();
            assert_eq!(e.code, "invalid_user_id", "{s:?}");
            assert!(e.message.contains("format characters"), "{}", e.message);
        }
        // NFC and NFD are both accepted, as two different ids.
        assert!(check_user_id("j\u{fc}rgen").is_ok());
        assert!(check_user_id("ju\u{308}rgen").is_ok());
    }
}
