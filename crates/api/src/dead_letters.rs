//! `/api/v1/admin/dead-letters`: the dead letters of the host's consumer groups, and
//! replaying or discarding them (through [`firstcome_platform::dead_letters`], as the CLI).

use std::borrow::Cow;
use std::sync::Arc;

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use serde::{Deserialize, Serialize};
use utoipa::openapi::RefOr;
use utoipa::openapi::schema::{
    AdditionalProperties, ArrayBuilder, ObjectBuilder, OneOfBuilder, Schema, Type,
};
use utoipa::{PartialSchema, ToSchema};

use super::error::{ApiError, ApiJson, ApiQuery, ErrorBody};
use super::operators::{Operator, Viewer};
use firstcome_platform::Platform;
use firstcome_platform::config::AdminRole;
use firstcome_platform::dead_letters::{DeadLetter, DeadLetterError, DeadLetters, Show, Which};
use firstcome_store::Settlement;

/// Letters per page unless `limit` says otherwise, and at most.
const DEFAULT_LIMIT: usize = 100;
const MAX_LIMIT: usize = 1_000;
/// Event ids one action names at most.
const MAX_IDS: usize = 200;
/// Longest event id accepted.
const MAX_ID_BYTES: usize = 255;

/// Which dead letters to list.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct DeadLetterQuery {
    /// `open` (default: neither replayed nor discarded), `settled`, or `all`.
    #[param(inline)]
    show: Option<Show>,
    /// Letters to return, 1 to 1,000 (default 100), oldest first.
    #[param(minimum = 1, maximum = 1000)]
    limit: Option<usize>,
}

/// Dead letters, oldest first.
#[derive(Debug, Serialize, ToSchema)]
pub struct DeadLetterList {
    /// The dead-letter topic.
    topic: String,
    /// How many letters the listing selects in all (`letters` holds up to `limit`).
    total: usize,
    letters: Vec<DeadLetter>,
}

/// The dead letters an action takes: `{"event_ids": [...]}`, the open letters of up to 200
/// event ids, or `{"all": true}`, every open letter. Exactly one of the two ([`Self::schema`]
/// states the rules from the constants [`which`] checks).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeadLetterSelection {
    event_ids: Option<Vec<String>>,
    all: Option<bool>,
}

impl PartialSchema for DeadLetterSelection {
    fn schema() -> RefOr<Schema> {
        let closed = || Some(AdditionalProperties::<Schema>::FreeForm(false));
        let id = ObjectBuilder::new()
            .schema_type(Type::String)
            .min_length(Some(1))
            .max_length(Some(MAX_ID_BYTES));
        let ids = ArrayBuilder::new()
            .items(id)
            .min_items(Some(1))
            .max_items(Some(MAX_IDS));
        let by_id = ObjectBuilder::new()
            .schema_type(Type::Object)
            .description(Some("The open dead letters of these event ids"))
            .property("event_ids", ids)
            .required("event_ids")
            .additional_properties(closed());
        let every = ObjectBuilder::new()
            .schema_type(Type::Object)
            .description(Some("Every open dead letter"))
            .property(
                "all",
                ObjectBuilder::new()
                    .schema_type(Type::Boolean)
                    .enum_values(Some([true])),
            )
            .required("all")
            .additional_properties(closed());
        OneOfBuilder::new().item(by_id).item(every).into()
    }
}

impl ToSchema for DeadLetterSelection {
    fn name() -> Cow<'static, str> {
        Cow::Borrowed("DeadLetterSelection")
    }
}

/// What an action did.
#[derive(Debug, Serialize, ToSchema)]
pub struct DeadLetterAction {
    /// How many dead letters it replayed or discarded.
    count: usize,
}

/// `text` with each word that holds an `@` (an email address, as a mail server's refusal
/// quotes it: `<ann@example.com>`, `ann@example.com:`) replaced by `[address]`.
fn masked_addresses(text: &str) -> String {
    let delimiter = |c: char| c.is_whitespace() || "<>()[]{}\"',;".contains(c);
    let mut out = String::with_capacity(text.len());
    let mut word = String::new();
    let flush = |word: &mut String, out: &mut String| {
        let bare = word.trim_end_matches([':', '.']);
        if bare.contains('@') {
            out.push_str("[address]");
            out.push_str(&word[bare.len()..]);
        } else {
            out.push_str(word);
        }
        word.clear();
    };
    for c in text.chars() {
        if delimiter(c) {
            flush(&mut word, &mut out);
            out.push(c);
        } else {
            word.push(c);
        }
    }
    flush(&mut word, &mut out);
    out
}

fn letters(platform: &Platform) -> DeadLetters<'_> {
    DeadLetters::new(
        platform.store(),
        &**platform.bus(),
        &platform.config().outbox.topic,
    )
}

/// The dead letters of the host's consumer groups: where each came from, which group failed
/// it, after how many tries and why (control characters escaped; for a `viewer`, email
/// addresses masked, as a mail server's refusal quotes the shopper's), and how it was settled.
/// Never a payload: it holds the shopper's personal data.
#[utoipa::path(
    get,
    path = "/dead-letters",
    operation_id = "adminListDeadLetters",
    tag = "admin",
    params(DeadLetterQuery),
    security(("admin_token" = [])),
    responses(
        (status = 200, description = "Dead letters, oldest first", body = DeadLetterList),
        (status = 400, description = "`invalid_query`", body = ErrorBody),
        (status = 503, description = "`unavailable`: the bus or the database cannot answer now", body = ErrorBody),
    )
)]
pub async fn list(
    Viewer(caller): Viewer,
    State(platform): State<Arc<Platform>>,
    ApiQuery(query): ApiQuery<DeadLetterQuery>,
) -> Result<Json<DeadLetterList>, ApiError> {
    let limit = query.limit.unwrap_or(DEFAULT_LIMIT);
    if !(1..=MAX_LIMIT).contains(&limit) {
        return Err(ApiError::bad_request(
            "invalid_query",
            format!("limit must be 1 to {MAX_LIMIT}"),
        ));
    }
    let letters = letters(&platform);
    let (mut listed, total) = letters
        .list(query.show.unwrap_or_default(), limit)
        .await
        .map_err(failed)?;
    if caller.role < AdminRole::Operator {
        for letter in &mut listed {
            letter.error = masked_addresses(&letter.error);
        }
    }
    Ok(Json(DeadLetterList {
        topic: letters.topic().to_owned(),
        total,
        letters: listed,
    }))
}

/// Sends dead letters back to their original topic, each for the consumer group that failed
/// it (the others handled it before), and settles them as replayed. Fix the cause first: a
/// letter that fails again becomes a new dead letter. Nothing is replayed when an id is
/// unknown or already settled.
#[utoipa::path(
    post,
    path = "/dead-letters/replay",
    operation_id = "adminReplayDeadLetters",
    tag = "admin",
    request_body = DeadLetterSelection,
    security(("admin_token" = [])),
    responses(
        (status = 200, description = "Replayed", body = DeadLetterAction),
        (status = 404, description = "`unknown_dead_letter`: an event id has no dead letter, or none is open", body = ErrorBody),
        (status = 409, description = "`dead_letter_settled`: an event id's letters were replayed or discarded before", body = ErrorBody),
        (status = 422, description = "`invalid_body`: neither or both of `event_ids` and `all`, or too many ids", body = ErrorBody),
        (status = 503, description = "`unavailable`: the bus or the database cannot answer now", body = ErrorBody),
    )
)]
pub async fn replay(
    Operator(caller): Operator,
    State(platform): State<Arc<Platform>>,
    ApiJson(selection): ApiJson<DeadLetterSelection>,
) -> Result<Json<DeadLetterAction>, ApiError> {
    settle(&platform, &caller.name, selection, Settlement::Replayed).await
}

/// Settles dead letters without handling them: they leave the open list, stay on the
/// settled one, and the embedded log may purge them after its retention. Nothing is
/// discarded when an id is unknown or already settled.
#[utoipa::path(
    post,
    path = "/dead-letters/discard",
    operation_id = "adminDiscardDeadLetters",
    tag = "admin",
    request_body = DeadLetterSelection,
    security(("admin_token" = [])),
    responses(
        (status = 200, description = "Discarded", body = DeadLetterAction),
        (status = 404, description = "`unknown_dead_letter`: an event id has no dead letter, or none is open", body = ErrorBody),
        (status = 409, description = "`dead_letter_settled`: an event id's letters were replayed or discarded before", body = ErrorBody),
        (status = 422, description = "`invalid_body`: neither or both of `event_ids` and `all`, or too many ids", body = ErrorBody),
        (status = 503, description = "`unavailable`: the bus or the database cannot answer now", body = ErrorBody),
    )
)]
pub async fn discard(
    Operator(caller): Operator,
    State(platform): State<Arc<Platform>>,
    ApiJson(selection): ApiJson<DeadLetterSelection>,
) -> Result<Json<DeadLetterAction>, ApiError> {
    settle(&platform, &caller.name, selection, Settlement::Discarded).await
}

/// Replays or discards the selected letters as `actor`.
async fn settle(
    platform: &Platform,
    actor: &str,
    selection: DeadLetterSelection,
    outcome: Settlement,
) -> Result<Json<DeadLetterAction>, ApiError> {
    let which = which(selection)?;
    let letters = letters(platform);
    let count = match outcome {
        Settlement::Replayed => letters.replay(&which, actor).await,
        Settlement::Discarded => letters.discard(&which, actor).await,
    };
    Ok(Json(DeadLetterAction {
        count: count.map_err(failed)?,
    }))
}

fn which(selection: DeadLetterSelection) -> Result<Which, ApiError> {
    let invalid = |m: String| ApiError::unprocessable("invalid_body", m);
    match (selection.event_ids, selection.all) {
        (None, Some(true)) => Ok(Which::AllOpen),
        (Some(ids), None) => {
            if ids.is_empty() || ids.len() > MAX_IDS {
                return Err(invalid(format!("event_ids: 1 to {MAX_IDS} ids at once")));
            }
            if ids
                .iter()
                .any(|id| id.is_empty() || id.len() > MAX_ID_BYTES)
            {
                return Err(invalid(format!(
                    "event_ids: an event id has 1 to {MAX_ID_BYTES} bytes"
                )));
            }
            Ok(Which::Events(ids))
        }
        _ => Err(invalid(
            "send {\"event_ids\": [...]} for some dead letters or {\"all\": true} for every \
             open one, not both"
                .into(),
        )),
    }
}

fn failed(e: DeadLetterError) -> ApiError {
    match e {
        DeadLetterError::Unknown(_) | DeadLetterError::NoneOpen => {
            ApiError::not_found("unknown_dead_letter", e.to_string())
        }
        DeadLetterError::AlreadySettled(_) => {
            ApiError::new(StatusCode::CONFLICT, "dead_letter_settled", e.to_string())
        }
        DeadLetterError::Store(e) => e.into(),
        DeadLetterError::Bus(e) => {
            tracing::warn!(error = %e, "dead letters: the bus did not answer");
            ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "unavailable",
                "the event bus did not answer; try again",
            )
            .with_header("retry-after", "5")
        }
    }
}

#[cfg(test)]
mod tests {
    use super::masked_addresses;

    #[test]
    fn addresses_are_masked_and_the_rest_kept() {
        assert_eq!(
            masked_addresses("550 5.1.1 <ann@example.com>: Recipient address rejected"),
            "550 5.1.1 <[address]>: Recipient address rejected"
        );
        assert_eq!(
            masked_addresses("to bob.smith+x@mail.example.org. try later"),
            "to [address]. try later"
        );
        assert_eq!(
            masked_addresses("mailbox 'a@b':full"),
            "mailbox '[address]':full"
        );
        assert_eq!(
            masked_addresses("timed out after 5 s"),
            "timed out after 5 s"
        );
        assert_eq!(masked_addresses(""), "");
    }
}
