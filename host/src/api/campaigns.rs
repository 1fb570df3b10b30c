//! Campaign views: configuration plus live counts.

use std::sync::Arc;

use axum::Json;
use axum::extract::State;
use std::collections::BTreeMap;

use serde::Serialize;

use super::error::{ApiError, ApiPath};
use crate::campaign::{Campaign, WindowState};
use crate::clock::{now_ms, to_rfc3339};
use crate::platform::Platform;

#[derive(Debug, Serialize)]
pub struct CampaignView {
    id: String,
    name: String,
    value: i64,
    opens_at: Option<String>,
    closes_at: Option<String>,
    coupon_expires_at: Option<String>,
    chunk_size: u32,
    /// `not_open`, `open`, `sold_out` or `closed`.
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

/// `GET /api/v1/campaigns/{campaign_id}`
pub async fn get(
    State(platform): State<Arc<Platform>>,
    ApiPath(campaign_id): ApiPath<String>,
) -> Result<Json<CampaignView>, ApiError> {
    let c = platform
        .campaign(&campaign_id)
        .ok_or_else(|| ApiError::unknown_campaign(&campaign_id))?;
    Ok(Json(view(&platform, &c).await?))
}

#[derive(Debug, Serialize)]
pub struct CampaignList {
    campaigns: Vec<CampaignView>,
}

/// `GET /api/v1/campaigns`
pub async fn list(State(platform): State<Arc<Platform>>) -> Result<Json<CampaignList>, ApiError> {
    let mut campaigns = Vec::new();
    for c in platform.campaigns() {
        campaigns.push(view(&platform, &c).await?);
    }
    Ok(Json(CampaignList { campaigns }))
}

/// `GET /api/v1/campaigns/{campaign_id}/stats`: the counters the stats plugin keeps.
pub async fn stats(
    State(platform): State<Arc<Platform>>,
    ApiPath(campaign_id): ApiPath<String>,
) -> Result<Json<crate::plugin::StatsSnapshot>, ApiError> {
    let c = platform
        .campaign(&campaign_id)
        .ok_or_else(|| ApiError::unknown_campaign(&campaign_id))?;
    Ok(Json(platform.plugins.stats(&c).await?))
}
