//! `GET /api/v1/admin/audit`: the audit log, newest first, a page at a time.

use std::sync::Arc;

use axum::Json;
use axum::extract::State;
use serde::{Deserialize, Serialize};

use super::error::{ApiError, ApiQuery, ErrorBody};
use super::operators::Viewer;
use firstcome_platform::Platform;
use firstcome_store::{AuditEntry, AuditFilter};

/// Entries per page unless `limit` says otherwise, and at most.
const DEFAULT_LIMIT: u32 = 100;
const MAX_LIMIT: u32 = 1_000;

/// Which entries to list.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct AuditQuery {
    /// Only changes by this actor (a credential's name, `file` or `cli`).
    #[param(max_length = 64)]
    actor: Option<String>,
    /// Only this kind of change (`campaign.put`, `campaign.delete`, `campaign.file`, …).
    #[param(max_length = 64)]
    action: Option<String>,
    /// Only changes of this campaign, user or topic.
    #[param(max_length = 255)]
    target: Option<String>,
    /// Only changes at or after this time, in milliseconds since the Unix epoch.
    #[param(minimum = 0)]
    since_ms: Option<i64>,
    /// The `next` of the previous page: entries older than it.
    #[param(minimum = 1)]
    before: Option<i64>,
    /// Entries per page, 1 to 1,000 (default 100).
    #[param(minimum = 1, maximum = 1000)]
    limit: Option<u32>,
}

/// One page of the audit log.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct AuditPage {
    entries: Vec<AuditEntry>,
    /// Pass as `before` for the next (older) page; absent on the last page.
    next: Option<i64>,
}

/// The audit log: every change made through the admin API or applied from a campaign file,
/// newest first; filter by actor, action, target and time, and page with `before`.
#[utoipa::path(
    get,
    path = "/audit",
    operation_id = "adminListAudit",
    tag = "admin",
    params(AuditQuery),
    security(("admin_token" = [])),
    responses(
        (status = 200, description = "A page of changes", body = AuditPage),
        (status = 400, description = "`invalid_query`", body = ErrorBody),
        (status = 503, description = "`unavailable`: the database is busy or unreachable; try again after `Retry-After`", body = ErrorBody),
    )
)]
pub async fn list(
    _: Viewer,
    State(platform): State<Arc<Platform>>,
    ApiQuery(query): ApiQuery<AuditQuery>,
) -> Result<Json<AuditPage>, ApiError> {
    let limit = query.limit.unwrap_or(DEFAULT_LIMIT);
    if !(1..=MAX_LIMIT).contains(&limit) {
        return Err(ApiError::bad_request(
            "invalid_query",
            format!("limit must be 1 to {MAX_LIMIT}"),
        ));
    }
    if query.since_ms.is_some_and(|t| t < 0) || query.before.is_some_and(|b| b < 1) {
        return Err(ApiError::bad_request(
            "invalid_query",
            "since_ms is at least 0 and before at least 1",
        ));
    }
    let too_long = [
        ("actor", &query.actor, 64),
        ("action", &query.action, 64),
        ("target", &query.target, 255),
    ]
    .into_iter()
    .find(|(_, v, max)| v.as_ref().is_some_and(|v| v.len() > *max));
    if let Some((name, _, max)) = too_long {
        return Err(ApiError::bad_request(
            "invalid_query",
            format!("{name} is at most {max} bytes"),
        ));
    }
    let filter = AuditFilter {
        actor: query.actor,
        action: query.action,
        target: query.target,
        since_ms: query.since_ms,
    };
    let entries = platform
        .store()
        .audit_page(&filter, query.before, limit)
        .await?;
    let next = (entries.len() == limit as usize)
        .then(|| entries.last().map(|e| e.id))
        .flatten();
    Ok(Json(AuditPage { entries, next }))
}
