//! Coupon requests: admission, a user's request status, a user's coupons, and the routes of
//! the replaced system mapped onto them.

use std::sync::Arc;

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use serde::{Deserialize, Serialize};

use super::error::{ApiError, ApiJson, ApiPath, ApiQuery, ErrorBody};
use super::shoppers::Shopper;
use firstcome_admission::Admit;
use firstcome_core::campaign::Campaign;
use firstcome_core::clock::now_ms;
use firstcome_core::queue::RequestState;
use firstcome_core::user::UserId;
use firstcome_platform::{Platform, RequestOf};
use firstcome_store::CouponView;

/// The `{campaign_id}` path parameter (for the document; handlers take `ApiPath`).
#[allow(dead_code)]
#[derive(Debug, utoipa::IntoParams)]
#[into_params(parameter_in = Path)]
pub struct CampaignParam {
    /// The campaign's id: 1-64 of `a-z`, `0-9`, `-` and `_`.
    #[param(example = "spring-sale")]
    campaign_id: String,
}

/// The `{user_id}` path parameter (for the document; handlers take `ApiPath`).
#[allow(dead_code)]
#[derive(Debug, utoipa::IntoParams)]
#[into_params(parameter_in = Path)]
pub struct UserParam {
    /// The user: 1-128 characters, no control characters, no surrounding white space.
    #[param(value_type = UserId)]
    user_id: String,
}

/// A request for one coupon of a campaign.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RequestBody {
    /// Who asks: 1-128 characters, no control characters, no surrounding white space.
    /// Required when the host's `auth.mode` is `open`; otherwise the verified shopper, and if
    /// sent it must be the same (else `403 forbidden`).
    #[serde(default)]
    #[schema(value_type = Option<UserId>)]
    user_id: Option<String>,
}

/// An admitted request: the user holds a place in line and will get a coupon.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct Queued {
    /// Identifies this request in logs and in the `coupon.issued` event.
    request_id: String,
    /// Always `queued`.
    #[schema(example = "queued")]
    status: RequestState,
    /// The place in line, from 1; the coupon's position once issued.
    #[schema(minimum = 1)]
    position: i64,
}

/// An active campaign shoppers may see: its `announce_at` has passed. Before it, and for a
/// campaign that does not exist, `404 unknown_campaign` alike.
pub fn visible(platform: &Platform, campaign_id: &str) -> Result<Arc<Campaign>, ApiError> {
    platform
        .campaign(campaign_id)
        .filter(|c| c.announced(now_ms()))
        .ok_or_else(|| ApiError::unknown_campaign(campaign_id))
}

/// A campaign whose requests can be read: visible, or removed and still issuing the requests
/// it admitted ([`Platform::draining`]).
pub fn readable(platform: &Platform, campaign_id: &str) -> Result<Arc<Campaign>, ApiError> {
    visible(platform, campaign_id).or_else(|unknown| platform.draining(campaign_id).ok_or(unknown))
}

async fn admit(
    platform: &Platform,
    shopper: &Shopper,
    campaign_id: &str,
    claimed: Option<&str>,
) -> Result<(StatusCode, Json<Queued>), ApiError> {
    let user = shopper.acting_as(claimed)?;
    let campaign = visible(platform, campaign_id).map_err(|unknown| {
        if platform.draining(campaign_id).is_some() {
            // Removed: it admits nobody, while the requests it admitted are still issued.
            ApiError::new(
                StatusCode::GONE,
                "closed",
                format!("campaign {campaign_id:?} is closed"),
            )
        } else {
            unknown
        }
    })?;
    shopper.admit(&campaign, &user)?;
    let admitted = platform.admit(&campaign, &user, now_ms()).await?;
    let gone = |code, what: &str| {
        ApiError::new(
            StatusCode::GONE,
            code,
            format!("campaign {campaign_id:?} {what}"),
        )
    };
    match admitted.outcome {
        Admit::Admitted { position } => {
            tracing::debug!(target: firstcome_core::JOURNEY, request_id = %admitted.request_id,
                campaign = %campaign_id, user = %user, position, "admitted");
            Ok((
                StatusCode::ACCEPTED,
                Json(Queued {
                    request_id: admitted.request_id,
                    status: RequestState::Queued,
                    position,
                }),
            ))
        }
        Admit::Duplicate { position } => Err(ApiError::new(
            StatusCode::CONFLICT,
            "duplicate_request",
            format!(
                "user {user:?} already requested a coupon of {campaign_id:?} (position {position})"
            ),
        )),
        Admit::SoldOut => Err(gone("sold_out", "has no coupons left")),
        Admit::Closed => Err(gone("closed", "is closed")),
        Admit::NotOpen => Err(gone("not_open", "is not open yet")),
        // `Platform::admit` rebuilds an unknown or stale campaign, or fails.
        Admit::Unknown | Admit::Behind => {
            unreachable!("Platform::admit never returns Unknown or Behind")
        }
    }
}

/// Ask for a coupon: one request per user and campaign, admitted in arrival order while
/// coupons remain. An admitted request is issued a coupon shortly after; follow it with
/// `GET .../requests/{user_id}` or its stream.
#[utoipa::path(
    post,
    path = "/campaigns/{campaign_id}/requests",
    operation_id = "createRequest",
    tag = "requests",
    params(CampaignParam),
    request_body = RequestBody,
    security((), ("shopper_jwt" = []), ("shopper_signed_header" = [])),
    responses(
        (status = 202, description = "Admitted: a coupon will be issued", body = Queued),
        (status = 403, description = "`forbidden`: `user_id` names another shopper than the credential", body = ErrorBody),
        (status = 404, description = "`unknown_campaign`", body = ErrorBody),
        (status = 409, description = "`duplicate_request`: this user already asked", body = ErrorBody),
        (status = 410, description = "`sold_out`, `closed` or `not_open`", body = ErrorBody),
        (status = 422, description = "`invalid_user_id`, or `invalid_body`", body = ErrorBody),
        (status = 429, description = "`rate_limited`: too many requests from this shopper or address; see `Retry-After`", body = ErrorBody),
        (status = 503, description = "`unavailable`: the admission queue is down; try again", body = ErrorBody),
    )
)]
pub async fn create(
    State(platform): State<Arc<Platform>>,
    shopper: Shopper,
    ApiPath(campaign_id): ApiPath<String>,
    ApiJson(body): ApiJson<RequestBody>,
) -> Result<(StatusCode, Json<Queued>), ApiError> {
    admit(&platform, &shopper, &campaign_id, body.user_id.as_deref()).await
}

/// Where a user's request stands.
#[derive(Clone, Debug, Serialize, PartialEq, Eq, utoipa::ToSchema)]
pub struct Status {
    /// `queued` (waiting for its coupon), `issued`, or `none` (no request).
    status: RequestState,
    /// The place in line (queued or issued).
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(minimum = 1)]
    position: Option<i64>,
    /// The coupon, once issued.
    #[serde(skip_serializing_if = "Option::is_none")]
    coupon: Option<CouponView>,
}

/// A user's request for a coupon of a campaign: queued, issued (with the coupon) or none.
#[utoipa::path(
    get,
    path = "/campaigns/{campaign_id}/requests/{user_id}",
    operation_id = "getRequest",
    tag = "requests",
    params(CampaignParam, UserParam),
    security((), ("shopper_jwt" = []), ("shopper_signed_header" = [])),
    responses(
        (status = 200, description = "The request's state", body = Status),
        (status = 404, description = "`unknown_campaign`, or `unknown_user`: another shopper than the credential's", body = ErrorBody),
        (status = 422, description = "`invalid_user_id`", body = ErrorBody),
        (status = 503, description = "`unavailable`: the admission queue is down", body = ErrorBody),
    )
)]
pub async fn status(
    State(platform): State<Arc<Platform>>,
    shopper: Shopper,
    ApiPath((campaign_id, user_id)): ApiPath<(String, String)>,
) -> Result<Json<Status>, ApiError> {
    let user = shopper.reading(&user_id)?;
    readable(&platform, &campaign_id)?;
    Ok(Json(status_of(&platform, &campaign_id, &user).await?))
}

impl Status {
    /// Nothing more will happen to this request: issued, or no request at all.
    pub fn is_final(&self) -> bool {
        self.status.is_final()
    }
}

impl From<RequestOf> for Status {
    fn from(request: RequestOf) -> Self {
        let status = request.state();
        match request {
            RequestOf::Issued(coupon) => Self {
                status,
                position: Some(coupon.position),
                coupon: Some(coupon),
            },
            RequestOf::Queued(position) => Self {
                status,
                position: Some(position),
                coupon: None,
            },
            RequestOf::None => Self {
                status,
                position: None,
                coupon: None,
            },
        }
    }
}

/// Where a user's request stands: issued (with the coupon), queued (with its position), or none.
pub async fn status_of(
    platform: &Platform,
    campaign_id: &str,
    user: &UserId,
) -> Result<Status, ApiError> {
    Ok(platform.request_of(campaign_id, user).await?.into())
}

/// Every coupon a user was issued, newest first.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct Coupons {
    user_id: String,
    coupons: Vec<CouponView>,
}

async fn coupons_of(platform: &Platform, user: UserId) -> Result<Json<Coupons>, ApiError> {
    let coupons = platform.coupons_of(&user).await?;
    Ok(Json(Coupons {
        user_id: user.into_string(),
        coupons,
    }))
}

/// Every coupon a user holds, across campaigns.
#[utoipa::path(
    get,
    path = "/users/{user_id}/coupons",
    operation_id = "listUserCoupons",
    tag = "requests",
    params(UserParam),
    security((), ("shopper_jwt" = []), ("shopper_signed_header" = [])),
    responses(
        (status = 200, description = "The user's coupons", body = Coupons),
        (status = 404, description = "`unknown_user`: another shopper than the credential's", body = ErrorBody),
        (status = 422, description = "`invalid_user_id`", body = ErrorBody),
        (status = 503, description = "`unavailable`: the database is busy or unreachable; try again after `Retry-After`", body = ErrorBody),
    )
)]
pub async fn user_coupons(
    State(platform): State<Arc<Platform>>,
    shopper: Shopper,
    ApiPath(user_id): ApiPath<String>,
) -> Result<Json<Coupons>, ApiError> {
    coupons_of(&platform, shopper.reading(&user_id)?).await
}

/// An id the replaced system sent as a number or a string. A number must be a whole number
/// from 0 to 2^53 - 1, which every JSON reader holds exactly (`12.0` is `12`); larger ids are
/// sent as text.
#[derive(Debug)]
pub enum LegacyId {
    Number(u64),
    Text(String),
}

/// The largest id number: 2^53 - 1, beyond which JSON numbers lose digits in most readers.
pub const LEGACY_ID_MAX: u64 = (1 << 53) - 1;

impl<'de> Deserialize<'de> for LegacyId {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        use serde::de::Error;
        match serde_json::Value::deserialize(d)? {
            serde_json::Value::String(s) => Ok(Self::Text(s)),
            serde_json::Value::Number(n) => n
                .as_u64()
                .or_else(|| {
                    n.as_f64()
                        .filter(|f| f.fract() == 0.0 && (0.0..=LEGACY_ID_MAX as f64).contains(f))
                        .map(|f| f as u64)
                })
                .filter(|id| *id <= LEGACY_ID_MAX)
                .map(Self::Number)
                .ok_or_else(|| {
                    D::Error::custom(format!(
                        "an id number must be a whole number from 0 to {LEGACY_ID_MAX}; send larger ids as text"
                    ))
                }),
            _ => Err(D::Error::custom("an id is a number or a string")),
        }
    }
}

impl LegacyId {
    fn into_string(self) -> String {
        match self {
            Self::Number(n) => n.to_string(),
            Self::Text(s) => s,
        }
    }
}

/// The replaced system's request body: ids as numbers or strings.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct LegacyRequest {
    /// The user: a number, or text following the rules of `UserId`. Required when the host's
    /// `auth.mode` is `open`; otherwise the verified shopper, and if sent it must be the same.
    #[serde(default)]
    #[schema(schema_with = legacy_user_id)]
    user_id: Option<LegacyId>,
    /// The campaign's id, as a number or as text.
    #[schema(schema_with = legacy_campaign_id)]
    promotion_id: LegacyId,
}

fn legacy_number() -> utoipa::openapi::schema::Object {
    utoipa::openapi::schema::ObjectBuilder::new()
        .schema_type(utoipa::openapi::schema::Type::Integer)
        .minimum(Some(0))
        .maximum(Some(LEGACY_ID_MAX))
        .build()
}

fn legacy_user_id() -> utoipa::openapi::schema::Schema {
    utoipa::openapi::schema::OneOfBuilder::new()
        .item(legacy_number())
        .item(utoipa::openapi::Ref::from_schema_name("UserId"))
        .build()
        .into()
}

fn legacy_campaign_id() -> utoipa::openapi::schema::Schema {
    utoipa::openapi::schema::OneOfBuilder::new()
        .item(legacy_number())
        .item(
            utoipa::openapi::schema::ObjectBuilder::new()
                .schema_type(utoipa::openapi::schema::Type::String)
                .examples(["spring-sale"]),
        )
        .build()
        .into()
}

/// The replaced system's route, kept for its clients: the same admission as
/// `POST /campaigns/{campaign_id}/requests`.
#[utoipa::path(
    post,
    path = "/coupons/request",
    operation_id = "legacyRequestCoupon",
    tag = "legacy",
    request_body = LegacyRequest,
    security((), ("shopper_jwt" = []), ("shopper_signed_header" = [])),
    responses(
        (status = 202, description = "Admitted: a coupon will be issued", body = Queued),
        (status = 403, description = "`forbidden`: `userId` names another shopper than the credential", body = ErrorBody),
        (status = 404, description = "`unknown_campaign`", body = ErrorBody),
        (status = 409, description = "`duplicate_request`", body = ErrorBody),
        (status = 410, description = "`sold_out`, `closed` or `not_open`", body = ErrorBody),
        (status = 422, description = "`invalid_user_id`, or `invalid_body`", body = ErrorBody),
        (status = 429, description = "`rate_limited`: see `Retry-After`", body = ErrorBody),
        (status = 503, description = "`unavailable`: the admission queue is down; try again", body = ErrorBody),
    )
)]
pub async fn legacy_request(
    State(platform): State<Arc<Platform>>,
    shopper: Shopper,
    ApiJson(body): ApiJson<LegacyRequest>,
) -> Result<(StatusCode, Json<Queued>), ApiError> {
    let user_id = body.user_id.map(LegacyId::into_string);
    let campaign_id = body.promotion_id.into_string();
    admit(&platform, &shopper, &campaign_id, user_id.as_deref()).await
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[serde(rename_all = "camelCase")]
#[into_params(parameter_in = Query)]
pub struct LegacyMy {
    /// The user (a number or text). Required when the host's `auth.mode` is `open`; otherwise
    /// the verified shopper's own.
    #[param(value_type = Option<UserId>)]
    user_id: Option<LegacyId>,
}

/// The replaced system's route, kept for its clients: a user's coupons.
#[utoipa::path(
    get,
    path = "/coupons/my",
    operation_id = "legacyMyCoupons",
    tag = "legacy",
    params(LegacyMy),
    security((), ("shopper_jwt" = []), ("shopper_signed_header" = [])),
    responses(
        (status = 200, description = "The user's coupons", body = Coupons),
        (status = 400, description = "`invalid_query`: `userId` is missing (open mode)", body = ErrorBody),
        (status = 404, description = "`unknown_user`: another shopper than the credential's", body = ErrorBody),
        (status = 422, description = "`invalid_user_id`", body = ErrorBody),
        (status = 503, description = "`unavailable`: the database is busy or unreachable; try again after `Retry-After`", body = ErrorBody),
    )
)]
pub async fn legacy_my(
    State(platform): State<Arc<Platform>>,
    shopper: Shopper,
    ApiQuery(query): ApiQuery<LegacyMy>,
) -> Result<Json<Coupons>, ApiError> {
    let user = match query.user_id {
        Some(id) => shopper.reading(&id.into_string())?,
        None => shopper.own().ok_or_else(|| {
            ApiError::bad_request(
                "invalid_query",
                "userId is required (this host's auth.mode is open)",
            )
        })?,
    };
    coupons_of(&platform, user).await
}
