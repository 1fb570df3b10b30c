//! Coupon requests: admission, a user's request status, a user's coupons, and the routes of
//! the replaced system mapped onto them.

use std::sync::Arc;

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use serde::{Deserialize, Serialize};

use super::error::{ApiError, ApiJson, ApiPath, ApiQuery, check_user_id};
use crate::admission::Admit;
use crate::campaign::Campaign;
use crate::clock::now_ms;
use crate::platform::Platform;
use crate::store::CouponView;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RequestBody {
    user_id: String,
}

#[derive(Debug, Serialize)]
pub struct Queued {
    request_id: String,
    status: &'static str,
    position: i64,
}

fn active(platform: &Platform, campaign_id: &str) -> Result<Arc<Campaign>, ApiError> {
    platform
        .campaign(campaign_id)
        .ok_or_else(|| ApiError::unknown_campaign(campaign_id))
}

async fn admit(
    platform: &Platform,
    campaign_id: &str,
    user_id: &str,
) -> Result<(StatusCode, Json<Queued>), ApiError> {
    check_user_id(user_id)?;
    let campaign = active(platform, campaign_id)?;
    let admitted = platform.admit(&campaign, user_id, now_ms()).await?;
    let gone = |code, what: &str| {
        ApiError::new(
            StatusCode::GONE,
            code,
            format!("campaign {campaign_id:?} {what}"),
        )
    };
    match admitted.outcome {
        Admit::Admitted { position } => Ok((
            StatusCode::ACCEPTED,
            Json(Queued {
                request_id: admitted.request_id,
                status: "queued",
                position,
            }),
        )),
        Admit::Duplicate { position } => Err(ApiError::new(
            StatusCode::CONFLICT,
            "duplicate_request",
            format!(
                "user {user_id:?} already requested a coupon of {campaign_id:?} (position {position})"
            ),
        )),
        Admit::SoldOut => Err(gone("sold_out", "has no coupons left")),
        Admit::Closed => Err(gone("closed", "is closed")),
        Admit::NotOpen => Err(gone("not_open", "is not open yet")),
        // `Platform::admit` rebuilds an unknown campaign or fails with `QueueUnstable`.
        Admit::Unknown => unreachable!("Platform::admit never returns Unknown"),
    }
}

/// `POST /api/v1/campaigns/{campaign_id}/requests`
pub async fn create(
    State(platform): State<Arc<Platform>>,
    ApiPath(campaign_id): ApiPath<String>,
    ApiJson(body): ApiJson<RequestBody>,
) -> Result<(StatusCode, Json<Queued>), ApiError> {
    admit(&platform, &campaign_id, &body.user_id).await
}

#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
pub struct Status {
    status: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    position: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    coupon: Option<CouponView>,
}

/// `GET /api/v1/campaigns/{campaign_id}/requests/{user_id}`
pub async fn status(
    State(platform): State<Arc<Platform>>,
    ApiPath((campaign_id, user_id)): ApiPath<(String, String)>,
) -> Result<Json<Status>, ApiError> {
    check_user_id(&user_id)?;
    active(&platform, &campaign_id)?;
    Ok(Json(status_of(&platform, &campaign_id, &user_id).await?))
}

impl Status {
    /// Nothing more will happen to this request: issued, or no request at all.
    pub fn is_final(&self) -> bool {
        self.status != "queued"
    }
}

/// Where a user's request stands: issued (with the coupon), queued (with its position), or none.
pub async fn status_of(
    platform: &Platform,
    campaign_id: &str,
    user_id: &str,
) -> Result<Status, ApiError> {
    if let Some(coupon) = platform.store.coupon_of(campaign_id, user_id).await? {
        return Ok(Status {
            status: "issued",
            position: Some(coupon.position),
            coupon: Some(coupon),
        });
    }
    Ok(
        match platform.admission.position(campaign_id, user_id).await? {
            Some(position) => Status {
                status: "queued",
                position: Some(position),
                coupon: None,
            },
            None => Status {
                status: "none",
                position: None,
                coupon: None,
            },
        },
    )
}

#[derive(Debug, Serialize)]
pub struct Coupons {
    user_id: String,
    coupons: Vec<CouponView>,
}

async fn coupons_of(platform: &Platform, user_id: String) -> Result<Json<Coupons>, ApiError> {
    check_user_id(&user_id)?;
    let coupons = platform.store.coupons_of_user(&user_id).await?;
    Ok(Json(Coupons { user_id, coupons }))
}

/// `GET /api/v1/users/{user_id}/coupons`
pub async fn user_coupons(
    State(platform): State<Arc<Platform>>,
    ApiPath(user_id): ApiPath<String>,
) -> Result<Json<Coupons>, ApiError> {
    coupons_of(&platform, user_id).await
}

/// An id the replaced system sent as a number or a string.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub enum LegacyId {
    Number(u64),
    Text(String),
}

impl LegacyId {
    fn into_string(self) -> String {
        match self {
            Self::Number(n) => n.to_string(),
            Self::Text(s) => s,
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct LegacyRequest {
    user_id: LegacyId,
    promotion_id: LegacyId,
}

/// `POST /api/v1/coupons/request {"userId", "promotionId"}`: the replaced system's route.
pub async fn legacy_request(
    State(platform): State<Arc<Platform>>,
    ApiJson(body): ApiJson<LegacyRequest>,
) -> Result<(StatusCode, Json<Queued>), ApiError> {
    let user_id = body.user_id.into_string();
    admit(&platform, &body.promotion_id.into_string(), &user_id).await
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct LegacyMy {
    user_id: LegacyId,
}

/// `GET /api/v1/coupons/my?userId=`: the replaced system's route.
pub async fn legacy_my(
    State(platform): State<Arc<Platform>>,
    ApiQuery(query): ApiQuery<LegacyMy>,
) -> Result<Json<Coupons>, ApiError> {
    coupons_of(&platform, query.user_id.into_string()).await
}
