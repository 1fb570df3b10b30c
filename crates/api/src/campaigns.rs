//! Campaign views: configuration plus live counts.

use std::sync::Arc;

use axum::Json;
use axum::extract::State;
use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::error::{ApiError, ApiPath, ApiQuery, ErrorBody};
use super::operators::OperatorIfAny;
use super::requests::{CampaignParam, visible};
use firstcome_core::campaign::{Campaign, CampaignState};
use firstcome_core::clock::{Timestamp, now_ms};
use firstcome_platform::Platform;

/// A campaign: its settings and live counts.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct CampaignView {
    id: String,
    name: String,
    /// A coupon's worth in the smallest currency unit.
    value: i64,
    /// RFC 3339; absent when open from the start.
    #[schema(value_type = Option<String>, format = DateTime)]
    opens_at: Option<Timestamp>,
    /// RFC 3339; absent when open until sold out.
    #[schema(value_type = Option<String>, format = DateTime)]
    closes_at: Option<Timestamp>,
    /// RFC 3339; absent when coupons do not expire.
    #[schema(value_type = Option<String>, format = DateTime)]
    coupon_expires_at: Option<Timestamp>,
    /// Requests issued per database transaction.
    chunk_size: u32,
    /// Buckets the campaign's admission state is split into (its `shards` on Redis; 1 on the
    /// embedded queue). With more than one, positions interleave the buckets.
    #[schema(minimum = 1, maximum = 64)]
    shards: u32,
    /// Where the campaign stands: its window, then whether coupons remain.
    status: CampaignState,
    capacity: i64,
    admitted: i64,
    issued: i64,
    /// Coupons still to be had: capacity less what was admitted (or issued, if more)
    /// ([`Counts::remaining`](firstcome_core::campaign::Counts::remaining)).
    remaining: i64,
    queued: i64,
    /// The plugin version (`sha256:...`) handling each role.
    plugins: BTreeMap<String, String>,
}

pub async fn view(platform: &Platform, c: &Campaign) -> Result<CampaignView, ApiError> {
    let counts = platform.counts(c).await?;
    Ok(CampaignView {
        id: c.id().to_owned(),
        name: c.name().to_owned(),
        value: c.value(),
        opens_at: c.opens_at().map(Timestamp::from_millis),
        closes_at: c.closes_at().map(Timestamp::from_millis),
        coupon_expires_at: c.coupon_expires_at().map(Timestamp::from_millis),
        chunk_size: c.chunk_size(),
        shards: platform.admission().buckets(c),
        status: c.state(now_ms(), &counts),
        capacity: c.capacity(),
        admitted: counts.admitted,
        issued: counts.issued,
        remaining: counts.remaining(),
        queued: counts.queued,
        plugins: platform.plugin_versions(c),
    })
}

/// One active campaign with its live counts.
#[utoipa::path(
    get,
    path = "/campaigns/{campaign_id}",
    operation_id = "getCampaign",
    tag = "campaigns",
    params(CampaignParam),
    responses(
        (status = 200, description = "The campaign", body = CampaignView),
        (status = 404, description = "`unknown_campaign`", body = ErrorBody),
        (status = 503, description = "`unavailable`: the admission queue is down", body = ErrorBody),
    )
)]
pub async fn get(
    State(platform): State<Arc<Platform>>,
    ApiPath(campaign_id): ApiPath<String>,
) -> Result<Json<CampaignView>, ApiError> {
    let c = visible(&platform, &campaign_id)?;
    Ok(Json(view(&platform, &c).await?))
}

/// A page of the active campaigns.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct CampaignList {
    campaigns: Vec<CampaignView>,
    /// Pass as `after` for the next page; absent on the last page.
    #[serde(skip_serializing_if = "Option::is_none")]
    next: Option<String>,
}

/// Campaigns per page unless `limit` says otherwise, and at most.
const DEFAULT_PAGE: usize = 100;
const MAX_PAGE: usize = 500;

/// Which page of campaigns to list.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct ListQuery {
    /// The `next` of the previous page: campaigns whose id sorts after it.
    #[param(pattern = r"^[a-z0-9_-]{1,64}$")]
    after: Option<String>,
    /// Campaigns per page, 1 to 500 (default 100).
    #[param(minimum = 1, maximum = 500)]
    limit: Option<usize>,
}

/// The active campaigns with their live counts, by id, a page at a time.
#[utoipa::path(
    get,
    path = "/campaigns",
    operation_id = "listCampaigns",
    tag = "campaigns",
    params(ListQuery),
    responses(
        (status = 200, description = "A page of campaigns", body = CampaignList),
        (status = 400, description = "`invalid_query`", body = ErrorBody),
        (status = 503, description = "`unavailable`: the admission queue is down", body = ErrorBody),
    )
)]
pub async fn list(
    State(platform): State<Arc<Platform>>,
    ApiQuery(query): ApiQuery<ListQuery>,
) -> Result<Json<CampaignList>, ApiError> {
    let limit = query.limit.unwrap_or(DEFAULT_PAGE);
    if !(1..=MAX_PAGE).contains(&limit) {
        return Err(ApiError::bad_request(
            "invalid_query",
            format!("limit must be 1 to {MAX_PAGE}"),
        ));
    }
    if let Some(after) = &query.after
        && firstcome_core::campaign::validate_id(after).is_err()
    {
        return Err(ApiError::bad_request(
            "invalid_query",
            "after is a campaign id: 1 to 64 of a-z, 0-9, '-' and '_'",
        ));
    }
    let now = now_ms();
    // Sorted by id: the cursor is the last id of the page.
    let mut shown: Vec<_> = platform
        .campaigns()
        .into_iter()
        .filter(|c| c.announced(now))
        .filter(|c| query.after.as_deref().is_none_or(|after| c.id() > after))
        .take(limit + 1)
        .collect();
    let next = (shown.len() > limit).then(|| {
        shown.truncate(limit);
        shown.last().map(|c| c.id().to_owned())
    });
    let mut campaigns = Vec::with_capacity(shown.len());
    for c in &shown {
        campaigns.push(view(&platform, c).await?);
    }
    Ok(Json(CampaignList {
        campaigns,
        next: next.flatten(),
    }))
}

/// A campaign whose statistics the caller may read: with the admin bearer token any active
/// campaign, else a visible one that sets `public_stats = true`. Otherwise `404`
/// (`private_stats` for a visible campaign, so that an operator sees what to set).
pub fn stats_visible(
    platform: &Platform,
    operator: &OperatorIfAny,
    campaign_id: &str,
) -> Result<Arc<Campaign>, ApiError> {
    if operator.0.is_some() {
        return platform
            .campaign(campaign_id)
            .ok_or_else(|| ApiError::unknown_campaign(campaign_id));
    }
    let c = visible(platform, campaign_id)?;
    if c.public_stats() {
        Ok(c)
    } else {
        Err(ApiError::not_found(
            "private_stats",
            format!(
                "the statistics of {campaign_id:?} need the admin bearer token (or                  public_stats = true in the campaign)"
            ),
        ))
    }
}

/// The counters the campaign's stats plugin keeps: issued, revenue, by gender and age group.
/// Only with the admin bearer token, or when the campaign sets `public_stats = true`.
#[utoipa::path(
    get,
    path = "/campaigns/{campaign_id}/stats",
    operation_id = "getCampaignStats",
    tag = "campaigns",
    params(CampaignParam),
    security((), ("admin_token" = [])),
    responses(
        (status = 200, description = "The statistics", body = firstcome_plugin::StatsSnapshot),
        (status = 404, description = "`unknown_campaign`, or `private_stats`: its statistics need the admin token", body = ErrorBody),
        (status = 503, description = "`unavailable`: the database is busy or unreachable; try again after `Retry-After`", body = ErrorBody),
    )
)]
pub async fn stats(
    State(platform): State<Arc<Platform>>,
    operator: OperatorIfAny,
    ApiPath(campaign_id): ApiPath<String>,
) -> Result<Json<firstcome_plugin::StatsSnapshot>, ApiError> {
    let c = stats_visible(&platform, &operator, &campaign_id)?;
    let snapshot = platform.plugin_stats(&c).await?;
    Ok(Json(if operator.0.is_some() {
        snapshot
    } else {
        snapshot.public()
    }))
}
