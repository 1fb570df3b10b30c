//! The admin API, behind `Authorization: Bearer {FIRSTCOME_ADMIN_TOKEN}`. Without a configured
//! token every admin call is refused.

use std::path::Path;
use std::sync::Arc;

use axum::Json;
use axum::extract::{Request, State};
use axum::http::{StatusCode, header};
use axum::middleware::Next;
use axum::response::Response;
use serde::{Deserialize, Serialize};

use super::campaigns::{CampaignView, view};
use super::error::{ApiError, ApiJson, ApiPath, check_user_id};
use crate::campaign::{Campaign, CampaignSpec, validate_id};
use crate::platform::Platform;
use crate::store::UserProfile;

const MAX_BULK_USERS: usize = 1_000;

/// Refuses requests without the admin bearer token.
pub async fn require_token(
    State(platform): State<Arc<Platform>>,
    request: Request,
    next: Next,
) -> Result<Response, ApiError> {
    let unauthorized = |m: &str| ApiError::new(StatusCode::UNAUTHORIZED, "unauthorized", m);
    let Some(expected) = platform
        .config
        .admin_token
        .as_deref()
        .filter(|t| !t.is_empty())
    else {
        return Err(unauthorized(
            "the admin API is disabled: set FIRSTCOME_ADMIN_TOKEN",
        ));
    };
    let given = request
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    match given {
        Some(given) if constant_time_eq(given.as_bytes(), expected.as_bytes()) => {
            Ok(next.run(request).await)
        }
        _ => Err(unauthorized("missing or wrong bearer token")),
    }
}

/// Compares without an early exit, so response time does not reveal the matching prefix.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

fn campaign_file(platform: &Platform, id: &str) -> std::path::PathBuf {
    platform.config.campaigns_dir().join(format!("{id}.toml"))
}

/// Writes a file whole or not at all (a temporary file renamed over it).
fn write_atomically(path: &Path, text: &str) -> std::io::Result<()> {
    let tmp = path.with_extension("toml.tmp");
    std::fs::write(&tmp, text)?;
    std::fs::rename(&tmp, path)
}

/// `PUT /api/v1/admin/campaigns/{campaign_id}`: the campaign document as JSON; applies it and
/// writes its file.
pub async fn put_campaign(
    State(platform): State<Arc<Platform>>,
    ApiPath(id): ApiPath<String>,
    ApiJson(spec): ApiJson<CampaignSpec>,
) -> Result<(StatusCode, Json<CampaignView>), ApiError> {
    validate_id(&id).map_err(|e| ApiError::bad_request("invalid_campaign_id", e.to_string()))?;
    let campaign = Campaign::new(&id, spec.clone())
        .map_err(|e| ApiError::unprocessable("invalid_campaign", e.to_string()))?;
    let existed = platform.campaign(&id).is_some();
    platform.apply_campaign(campaign).await?;
    let path = campaign_file(&platform, &id);
    write_atomically(&path, &spec.to_toml()).map_err(|e| ApiError::internal(&e))?;
    platform.clear_rejection(&id);
    let c = platform
        .campaign(&id)
        .ok_or_else(|| ApiError::unknown_campaign(&id))?;
    let status = if existed {
        StatusCode::OK
    } else {
        StatusCode::CREATED
    };
    Ok((status, Json(view(&platform, &c).await?)))
}

/// `DELETE /api/v1/admin/campaigns/{campaign_id}`: stops the campaign and removes its file.
pub async fn delete_campaign(
    State(platform): State<Arc<Platform>>,
    ApiPath(id): ApiPath<String>,
) -> Result<StatusCode, ApiError> {
    validate_id(&id).map_err(|e| ApiError::bad_request("invalid_campaign_id", e.to_string()))?;
    let path = campaign_file(&platform, &id);
    let had_file = match std::fs::remove_file(&path) {
        Ok(()) => true,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => false,
        Err(e) => return Err(ApiError::internal(&e)),
    };
    let was_active = platform.remove_campaign(&id).await?;
    if had_file || was_active {
        Ok(StatusCode::NO_CONTENT)
    } else {
        Err(ApiError::unknown_campaign(&id))
    }
}

#[derive(Debug, Serialize)]
pub struct CampaignFiles {
    active: Vec<String>,
    /// Files refused at their last change, with the reason; the previous version runs.
    rejected: std::collections::BTreeMap<String, String>,
}

/// `GET /api/v1/admin/campaigns`
pub async fn list_campaigns(State(platform): State<Arc<Platform>>) -> Json<CampaignFiles> {
    Json(CampaignFiles {
        active: platform.campaigns().iter().map(|c| c.id.clone()).collect(),
        rejected: platform.rejections(),
    })
}

/// A user's profile as the admin API takes it.
#[derive(Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ProfileBody {
    #[serde(default)]
    email: Option<String>,
    #[serde(default)]
    fcm_token: Option<String>,
    #[serde(default)]
    gender: Option<String>,
    #[serde(default)]
    age_group: Option<String>,
}

pub const GENDERS: &[&str] = &["female", "male", "other"];
pub const AGE_GROUPS: &[&str] = &["under_20", "20s", "30s", "40s", "50s", "60_plus"];

impl ProfileBody {
    fn into_profile(self, user_id: String) -> Result<UserProfile, String> {
        check_user_id(&user_id).map_err(|e| e.message)?;
        if let Some(email) = &self.email {
            let valid = email.len() <= 254
                && !email.chars().any(|c| c.is_control() || c.is_whitespace())
                && email
                    .split_once('@')
                    .is_some_and(|(l, d)| !l.is_empty() && d.contains('.'));
            if !valid {
                return Err(format!("email {email:?} is not an address"));
            }
        }
        if let Some(token) = &self.fcm_token
            && (token.is_empty() || token.len() > 4096 || token.chars().any(char::is_control))
        {
            return Err("fcm_token must be 1 to 4096 printable characters".into());
        }
        if let Some(g) = &self.gender
            && !GENDERS.contains(&g.as_str())
        {
            return Err(format!("gender must be one of {GENDERS:?}"));
        }
        if let Some(a) = &self.age_group
            && !AGE_GROUPS.contains(&a.as_str())
        {
            return Err(format!("age_group must be one of {AGE_GROUPS:?}"));
        }
        Ok(UserProfile {
            user_id,
            email: self.email,
            fcm_token: self.fcm_token,
            gender: self.gender,
            age_group: self.age_group,
        })
    }
}

/// `PUT /api/v1/admin/users/{user_id}`
pub async fn put_user(
    State(platform): State<Arc<Platform>>,
    ApiPath(user_id): ApiPath<String>,
    ApiJson(body): ApiJson<ProfileBody>,
) -> Result<Json<UserProfile>, ApiError> {
    let profile = body
        .into_profile(user_id)
        .map_err(|m| ApiError::unprocessable("invalid_user", m))?;
    platform
        .store
        .upsert_users(std::slice::from_ref(&profile))
        .await?;
    Ok(Json(profile))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BulkUser {
    user_id: String,
    #[serde(default)]
    email: Option<String>,
    #[serde(default)]
    fcm_token: Option<String>,
    #[serde(default)]
    gender: Option<String>,
    #[serde(default)]
    age_group: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BulkBody {
    users: Vec<BulkUser>,
}

#[derive(Debug, Serialize)]
pub struct BulkDone {
    upserted: usize,
}

/// `PUT /api/v1/admin/users`: up to 1,000 profiles, all or none.
pub async fn put_users(
    State(platform): State<Arc<Platform>>,
    ApiJson(body): ApiJson<BulkBody>,
) -> Result<Json<BulkDone>, ApiError> {
    if body.users.len() > MAX_BULK_USERS {
        return Err(ApiError::unprocessable(
            "too_many_users",
            format!(
                "at most {MAX_BULK_USERS} users per call, got {}",
                body.users.len()
            ),
        ));
    }
    let mut profiles = Vec::with_capacity(body.users.len());
    for (i, u) in body.users.into_iter().enumerate() {
        let body = ProfileBody {
            email: u.email,
            fcm_token: u.fcm_token,
            gender: u.gender,
            age_group: u.age_group,
        };
        let profile = body
            .into_profile(u.user_id)
            .map_err(|m| ApiError::unprocessable("invalid_user", format!("users[{i}]: {m}")))?;
        profiles.push(profile);
    }
    platform.store.upsert_users(&profiles).await?;
    Ok(Json(BulkDone {
        upserted: profiles.len(),
    }))
}

#[derive(Debug, Serialize)]
pub struct ConsumerLag {
    group: String,
    topic: String,
    /// Events on the topic the group has not yet moved past.
    lag: i64,
}

#[derive(Debug, Serialize)]
pub struct Consumers {
    bus: &'static str,
    consumers: Vec<ConsumerLag>,
}

/// `GET /api/v1/admin/consumers`: each consumer group of this host and its lag.
pub async fn consumers(State(platform): State<Arc<Platform>>) -> Result<Json<Consumers>, ApiError> {
    let mut consumers = Vec::new();
    for (group, topic) in platform.consumer_groups() {
        let lag = platform.bus.lag(&group, &topic).await.map_err(|e| {
            tracing::warn!(error = %e, group, "cannot read consumer lag");
            ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "unavailable",
                "the event bus is unavailable",
            )
        })?;
        consumers.push(ConsumerLag { group, topic, lag });
    }
    Ok(Json(Consumers {
        bus: platform.bus.kind(),
        consumers,
    }))
}

#[derive(Debug, Serialize)]
pub struct Plugins {
    plugins: Vec<crate::plugin::PluginStatus>,
    /// Times a running plugin was replaced by another version since the host started.
    swaps: u64,
}

/// `GET /api/v1/admin/plugins`: every campaign's plugins, their versions and counters.
pub async fn plugins(State(platform): State<Arc<Platform>>) -> Json<Plugins> {
    Json(Plugins {
        plugins: platform.plugins.statuses(),
        swaps: platform.plugins.swaps(),
    })
}
