//! Campaign views: configuration plus live counts.

use std::sync::Arc;

use axum::Json;
use axum::extract::State;
use std::collections::BTreeMap;

use serde::Serialize;

use super::error::{ApiError, ApiPath, ErrorBody};
use super::requests::CampaignParam;
use firstcome_core::campaign::{Campaign, WindowState};
use firstcome_core::clock::{now_ms, to_rfc3339};
use firstcome_platform::Platform;

/// A campaign: its settings and live counts.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct CampaignView {
    id: String,
    name: String,
    /// A coupon's worth in the smallest currency unit.
    value: i64,
    /// RFC 3339; absent when open from the start.
    #[schema(format = DateTime)]
    opens_at: Option<String>,
    /// RFC 3339; absent when open until sold out.
    #[schema(format = DateTime)]
    closes_at: Option<String>,
    /// RFC 3339; absent when coupons do not expire.
    #[schema(format = DateTime)]
    coupon_expires_at: Option<String>,
    /// Requests issued per database transaction.
    chunk_size: u32,
    /// `not_open`, `open`, `sold_out` or `closed`.
    #[schema(value_type = super::schema::CampaignState)]
    status: &'static str,
    capacity: i64,
    admitted: i64,
    issued: i64,
    /// Coupons still to be had: capacity less what was admitted (or issued, if more).
    remaining: i64,
    queued: i64,
    /// The plugin version (`sha256:...`) handling each role.
    plugins: BTreeMap<String, String>,
}

pub async fn view(platform: &Platform, c: &Campaign) -> Result<CampaignView, ApiError> {
    let counts = platform.admission.counts(&c.id).await?;
    let issued = platform.store.issued_count(&c.id).await?;
    let remaining = (c.capacity - counts.admitted.max(issued)).max(0);
    let status = match c.window_state(now_ms()) {
        WindowState::NotOpen => "not_open",
        WindowState::Closed => "closed",
        WindowState::Open if remaining == 0 => "sold_out",
        WindowState::Open => "open",
    };
    Ok(CampaignView {
        id: c.id.clone(),
        name: c.name.clone(),
        value: c.value,
        opens_at: c.opens_at.map(to_rfc3339),
        closes_at: c.closes_at.map(to_rfc3339),
        coupon_expires_at: c.coupon_expires_at.map(to_rfc3339),
        chunk_size: c.chunk_size,
        status,
        capacity: c.capacity,
        admitted: counts.admitted,
        issued,
        remaining,
        queued: counts.queued,
        plugins: c
            .spec
            .plugins
            .keys()
            .filter_map(|role| {
                let p = platform.plugins.plugin(&c.id, role)?;
                Some((role.clone(), p.version().to_owned()))
            })
            .collect(),
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
    let c = platform
        .campaign(&campaign_id)
        .ok_or_else(|| ApiError::unknown_campaign(&campaign_id))?;
    Ok(Json(view(&platform, &c).await?))
}

/// Every active campaign.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct CampaignList {
    campaigns: Vec<CampaignView>,
}

/// Every active campaign with its live counts.
#[utoipa::path(
    get,
    path = "/campaigns",
    operation_id = "listCampaigns",
    tag = "campaigns",
    responses(
        (status = 200, description = "The campaigns", body = CampaignList),
        (status = 503, description = "`unavailable`: the admission queue is down", body = ErrorBody),
    )
)]
pub async fn list(State(platform): State<Arc<Platform>>) -> Result<Json<CampaignList>, ApiError> {
    let mut campaigns = Vec::new();
    for c in platform.campaigns() {
        campaigns.push(view(&platform, &c).await?);
    }
    Ok(Json(CampaignList { campaigns }))
}

/// The counters the campaign's stats plugin keeps: issued, revenue, by gender and age group.
#[utoipa::path(
    get,
    path = "/campaigns/{campaign_id}/stats",
    operation_id = "getCampaignStats",
    tag = "campaigns",
    params(CampaignParam),
    responses(
        (status = 200, description = "The statistics", body = firstcome_plugin::StatsSnapshot),
        (status = 404, description = "`unknown_campaign`", body = ErrorBody),
    )
)]
pub async fn stats(
    State(platform): State<Arc<Platform>>,
    ApiPath(campaign_id): ApiPath<String>,
) -> Result<Json<firstcome_plugin::StatsSnapshot>, ApiError> {
    let c = platform
        .campaign(&campaign_id)
        .ok_or_else(|| ApiError::unknown_campaign(&campaign_id))?;
    Ok(Json(platform.plugins.stats(&c).await?))
}
