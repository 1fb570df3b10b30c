//! The admin API, behind a named admin credential (`Authorization: Bearer …`, see
//! [`super::operators`]). Without a configured credential every admin call is refused. Each
//! handler takes the role it needs ([`Viewer`], [`Operator`], [`Admin`]) as its first
//! argument, so that the credential is checked before anything else is read from the request;
//! every change is recorded in the audit log under the credential's name.

use std::path::Path;
use std::sync::Arc;

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use serde::{Deserialize, Serialize};

use super::campaigns::{CampaignView, view};
use super::error::{ApiError, ApiJson, ApiPath, ErrorBody};
use super::operators::{Admin, Operator, Viewer};
use super::schema::{Email, FcmToken, UserId};
use firstcome_core::campaign::{Campaign, CampaignSpec, validate_id};
use firstcome_platform::{Platform, audit};
use firstcome_store::UserProfile;

pub(super) const MAX_BULK_USERS: usize = 1_000;

fn campaign_file(platform: &Platform, id: &str) -> std::path::PathBuf {
    platform.config().campaigns_dir().join(format!("{id}.toml"))
}

/// A campaign file written beside its place (a temporary name the watcher does not read) and
/// not yet renamed over it: the change is applied between [`stage`] and [`Staged::commit`], so
/// that a file that cannot be written refuses the change before anything is applied.
#[derive(Debug)]
struct Staged {
    tmp: std::path::PathBuf,
    path: std::path::PathBuf,
}

/// Writes `text` to a temporary file beside `path`. Refused when `path` is taken by something
/// that is not a file (a folder, a FIFO): the rename would fail after the change was applied.
fn stage(path: &Path, text: &str) -> Result<Staged, ApiError> {
    if let Ok(meta) = std::fs::symlink_metadata(path)
        && !(meta.is_file() || meta.is_symlink())
    {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            "campaign_file_conflict",
            format!("{} exists and is not a file; remove it", path.display()),
        ));
    }
    let tmp = path.with_extension(format!("toml.{}.tmp", uuid::Uuid::new_v4().simple()));
    std::fs::write(&tmp, text).map_err(|e| {
        let _ = std::fs::remove_file(&tmp);
        ApiError::internal(&format!("writing {}: {e}", tmp.display()))
    })?;
    Ok(Staged {
        tmp,
        path: path.to_owned(),
    })
}

impl Staged {
    fn commit(self) -> std::io::Result<()> {
        std::fs::rename(&self.tmp, &self.path).inspect_err(|_| {
            let _ = std::fs::remove_file(&self.tmp);
        })
    }

    fn discard(self) {
        let _ = std::fs::remove_file(&self.tmp);
    }
}

/// The `{campaign_id}` path parameter of the admin routes.
#[allow(dead_code)]
#[derive(Debug, utoipa::IntoParams)]
#[into_params(parameter_in = Path)]
pub struct CampaignIdParam {
    /// The campaign's id, also its file's name: 1-64 of `a-z`, `0-9`, `-` and `_`.
    #[param(pattern = r"^[a-z0-9_-]{1,64}$", example = "spring-sale")]
    campaign_id: String,
}

/// Creates or changes a campaign: the campaign document as JSON. Its plugins are loaded and
/// checked first; only then is it applied and its file `{campaign_id}.toml` written. A refusal
/// changes nothing.
#[utoipa::path(
    put,
    path = "/campaigns/{campaign_id}",
    operation_id = "adminPutCampaign",
    tag = "admin",
    params(CampaignIdParam),
    request_body = CampaignSpec,
    security(("admin_token" = [])),
    responses(
        (status = 200, description = "Changed", body = CampaignView),
        (status = 201, description = "Created", body = CampaignView),
        (status = 400, description = "`invalid_campaign_id`", body = ErrorBody),
        (status = 409, description = "`campaign_file_conflict`: the campaign's file name is taken by a folder or another non-file", body = ErrorBody),
        (status = 422, description = "`invalid_campaign` (a field, or capacity below coupons issued), `invalid_plugin` (a plugin that cannot load), or `invalid_body`", body = ErrorBody),
        (status = 503, description = "`unavailable`: the admission queue is down", body = ErrorBody),
    )
)]
pub async fn put_campaign(
    Operator(caller): Operator,
    State(platform): State<Arc<Platform>>,
    ApiPath(id): ApiPath<String>,
    ApiJson(spec): ApiJson<CampaignSpec>,
) -> Result<(StatusCode, Json<CampaignView>), ApiError> {
    validate_id(&id).map_err(|e| ApiError::bad_request("invalid_campaign_id", e.to_string()))?;
    let campaign = Campaign::new(&id, spec.clone())
        .map_err(|e| ApiError::unprocessable("invalid_campaign", e.to_string()))?;
    let _writing = platform.campaign_writes(&id).await;
    let before = platform.campaign(&id).map(|c| c.spec().to_toml());
    let existed = before.is_some();
    let text = spec.to_toml();
    let staged = stage(&campaign_file(&platform, &id), &text)?;
    if let Err(e) = platform.apply_campaign(campaign).await {
        staged.discard();
        return Err(e.into());
    }
    staged.commit().map_err(|e| ApiError::internal(&e))?;
    platform.note_admin_write(&id, &text);
    platform.clear_rejection(&id);
    audit::record(
        platform.store(),
        audit::Change {
            actor: &caller.name,
            action: "campaign.put",
            target: &id,
            before: before.as_deref(),
            after: Some(&text),
            detail: Some(audit::plugins_in_force(&platform, &id)),
        },
    )
    .await;
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

/// Stops a campaign and removes its file: it admits nobody from now on (`410 closed`), while
/// the requests it already admitted are still issued (it is listed as `draining` until then,
/// and their status can be read); its coupons and history stay. Answers at once.
#[utoipa::path(
    delete,
    path = "/campaigns/{campaign_id}",
    operation_id = "adminDeleteCampaign",
    tag = "admin",
    params(CampaignIdParam),
    security(("admin_token" = [])),
    responses(
        (status = 204, description = "Stopped and removed; what it admitted is still issued"),
        (status = 400, description = "`invalid_campaign_id`", body = ErrorBody),
        (status = 404, description = "`unknown_campaign`: neither active nor a file", body = ErrorBody),
    )
)]
pub async fn delete_campaign(
    Operator(caller): Operator,
    State(platform): State<Arc<Platform>>,
    ApiPath(id): ApiPath<String>,
) -> Result<StatusCode, ApiError> {
    validate_id(&id).map_err(|e| ApiError::bad_request("invalid_campaign_id", e.to_string()))?;
    let _writing = platform.campaign_writes(&id).await;
    let before = platform.campaign(&id).map(|c| c.spec().to_toml());
    let path = campaign_file(&platform, &id);
    let had_file = match std::fs::remove_file(&path) {
        Ok(()) => true,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => false,
        Err(e) => return Err(ApiError::internal(&e)),
    };
    let was_active = platform.remove_campaign(&id).await?;
    if had_file || was_active {
        // Recorded in the background: the removal answers at once, even while the database
        // is held up by the drain it starts.
        let store = platform.store().clone();
        tokio::spawn(async move {
            let change = audit::Change {
                actor: &caller.name,
                action: "campaign.delete",
                target: &id,
                before: before.as_deref(),
                after: None,
                detail: None,
            };
            audit::record(&store, change).await;
        });
        Ok(StatusCode::NO_CONTENT)
    } else {
        Err(ApiError::unknown_campaign(&id))
    }
}

/// The campaign folder as the host applied it.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct CampaignFiles {
    /// Ids of the running campaigns.
    active: Vec<String>,
    /// Ids of removed campaigns still issuing the requests they admitted; they admit nobody.
    draining: Vec<String>,
    /// Files refused at their last change, with the reason; the previous version runs.
    rejected: std::collections::BTreeMap<String, String>,
    /// Ids of campaign files being applied right now: their plugins are compiling or in
    /// `init`; the previous version (if any) runs meanwhile.
    applying: Vec<String>,
    /// Ids of running campaigns whose plugins are loading in the background (put back into
    /// service at start-up): they admit and issue; their events wait for the plugins.
    loading: Vec<String>,
}

/// The running campaigns, and the files refused at their last change with the reason.
#[utoipa::path(
    get,
    path = "/campaigns",
    operation_id = "adminListCampaigns",
    tag = "admin",
    security(("admin_token" = [])),
    responses((status = 200, description = "Active and refused campaign files", body = CampaignFiles))
)]
pub async fn list_campaigns(
    _: Viewer,
    State(platform): State<Arc<Platform>>,
) -> Json<CampaignFiles> {
    Json(CampaignFiles {
        active: platform
            .campaigns()
            .iter()
            .map(|c| c.id().to_owned())
            .collect(),
        draining: platform.draining_ids(),
        rejected: platform.rejections(),
        applying: platform.applying_ids(),
        loading: platform.loading_ids(),
    })
}

/// A user's profile as the admin API takes it: where to notify them, and the demographics
/// the statistics count. A missing field is cleared.
#[derive(Debug, Deserialize, Serialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ProfileBody {
    #[serde(default)]
    #[schema(value_type = Option<Email>)]
    email: Option<String>,
    #[serde(default)]
    #[schema(value_type = Option<FcmToken>)]
    fcm_token: Option<String>,
    #[serde(default)]
    #[schema(value_type = Option<Gender>)]
    gender: Option<String>,
    #[serde(default)]
    #[schema(value_type = Option<AgeGroup>)]
    age_group: Option<String>,
}

/// A user's gender as the statistics count it.
#[allow(dead_code)]
#[derive(Debug, utoipa::ToSchema)]
#[schema(rename_all = "snake_case")]
pub enum Gender {
    Female,
    Male,
    Other,
}

/// A user's age group as the statistics count it.
#[allow(dead_code)]
#[derive(Debug, utoipa::ToSchema)]
pub enum AgeGroup {
    #[schema(rename = "under_20")]
    Under20,
    #[schema(rename = "20s")]
    Twenties,
    #[schema(rename = "30s")]
    Thirties,
    #[schema(rename = "40s")]
    Forties,
    #[schema(rename = "50s")]
    Fifties,
    #[schema(rename = "60_plus")]
    SixtyPlus,
}

pub use firstcome_core::user::{AGE_GROUPS, GENDERS};

impl ProfileBody {
    fn into_profile(self, user_id: String) -> Result<UserProfile, String> {
        firstcome_core::user::UserId::parse(&user_id).map_err(|e| e.to_string())?;
        if let Some(email) = &self.email
            && !firstcome_core::user::is_email(email)
        {
            return Err(format!("email {email:?} is not an address"));
        }
        if let Some(token) = &self.fcm_token
            && !firstcome_core::user::is_fcm_token(token)
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

/// Creates or replaces one user's profile.
#[utoipa::path(
    put,
    path = "/users/{user_id}",
    operation_id = "adminPutUser",
    tag = "admin",
    params(super::requests::UserParam),
    request_body = ProfileBody,
    security(("admin_token" = [])),
    responses(
        (status = 200, description = "The stored profile", body = UserProfile),
        (status = 422, description = "`invalid_user` (says which field), or `invalid_body`", body = ErrorBody),
        (status = 503, description = "`unavailable`: the database is busy or unreachable; try again after `Retry-After`", body = ErrorBody),
    )
)]
pub async fn put_user(
    Admin(caller): Admin,
    State(platform): State<Arc<Platform>>,
    ApiPath(user_id): ApiPath<String>,
    ApiJson(body): ApiJson<ProfileBody>,
) -> Result<Json<UserProfile>, ApiError> {
    let profile = body
        .into_profile(user_id)
        .map_err(|m| ApiError::unprocessable("invalid_user", m))?;
    platform
        .upsert_users(std::slice::from_ref(&profile))
        .await?;
    // No digest of a profile: a few fields of few values, it could be confirmed by guessing
    // an email. The log keeps that it changed, by whom.
    audit::record(
        platform.store(),
        audit::Change {
            actor: &caller.name,
            action: "user.put",
            target: &profile.user_id,
            before: None,
            after: None,
            detail: None,
        },
    )
    .await;
    Ok(Json(profile))
}

/// One profile of a bulk upload: the user's id and the fields of `ProfileBody`. (Not a
/// flattened `ProfileBody`: serde cannot refuse unknown fields through `flatten`.)
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct BulkUser {
    #[schema(value_type = UserId)]
    user_id: String,
    #[serde(default)]
    #[schema(value_type = Option<Email>)]
    email: Option<String>,
    #[serde(default)]
    #[schema(value_type = Option<FcmToken>)]
    fcm_token: Option<String>,
    #[serde(default)]
    #[schema(value_type = Option<Gender>)]
    gender: Option<String>,
    #[serde(default)]
    #[schema(value_type = Option<AgeGroup>)]
    age_group: Option<String>,
}

/// Up to 1,000 profiles.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct BulkBody {
    #[schema(max_items = 1000)]
    users: Vec<BulkUser>,
}

/// How many profiles were written.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct BulkDone {
    upserted: usize,
}

/// Creates or replaces up to 1,000 profiles: all of them, or none when one is refused.
#[utoipa::path(
    put,
    path = "/users",
    operation_id = "adminPutUsers",
    tag = "admin",
    request_body = BulkBody,
    security(("admin_token" = [])),
    responses(
        (status = 200, description = "All written", body = BulkDone),
        (status = 422, description = "`invalid_user` (says which, as `users[i]`), `too_many_users`, or `invalid_body`", body = ErrorBody),
        (status = 503, description = "`unavailable`: the database is busy or unreachable; try again after `Retry-After`", body = ErrorBody),
    )
)]
pub async fn put_users(
    Admin(caller): Admin,
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
    platform.upsert_users(&profiles).await?;
    audit::record(
        platform.store(),
        audit::Change {
            actor: &caller.name,
            action: "users.put",
            target: "users",
            before: None,
            after: None,
            detail: Some(format!("{} profiles", profiles.len())),
        },
    )
    .await;
    Ok(Json(BulkDone {
        upserted: profiles.len(),
    }))
}

/// One consumer group's position.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct ConsumerLag {
    group: String,
    topic: String,
    /// Events on the topic the group has not yet moved past.
    lag: i64,
}

/// This host's consumer groups.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct Consumers {
    /// `embedded` or `kafka`.
    #[schema(value_type = String, example = "kafka")]
    bus: &'static str,
    consumers: Vec<ConsumerLag>,
}

/// Each consumer group of this host and its lag.
#[utoipa::path(
    get,
    path = "/consumers",
    operation_id = "adminListConsumers",
    tag = "admin",
    security(("admin_token" = [])),
    responses(
        (status = 200, description = "The groups and their lag", body = Consumers),
        (status = 503, description = "`unavailable`: the event bus is down", body = ErrorBody),
    )
)]
pub async fn consumers(
    _: Viewer,
    State(platform): State<Arc<Platform>>,
) -> Result<Json<Consumers>, ApiError> {
    let mut consumers = Vec::new();
    for (group, topic) in platform.consumer_groups() {
        let lag = platform.consumer_lag(&group, &topic).await.map_err(|e| {
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
        bus: platform.bus_kind(),
        consumers,
    }))
}

/// The loaded plugins.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct Plugins {
    plugins: Vec<firstcome_plugin::PluginStatus>,
    /// Times a running plugin was replaced by another version since the host started.
    swaps: u64,
}

/// Every campaign's plugins: version, grants, limits and counters.
#[utoipa::path(
    get,
    path = "/plugins",
    operation_id = "adminListPlugins",
    tag = "admin",
    security(("admin_token" = [])),
    responses((status = 200, description = "The plugins", body = Plugins))
)]
pub async fn plugins(_: Viewer, State(platform): State<Arc<Platform>>) -> Json<Plugins> {
    Json(Plugins {
        plugins: platform.plugin_statuses(),
        swaps: platform.plugin_swaps(),
    })
}
