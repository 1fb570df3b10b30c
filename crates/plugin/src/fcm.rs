//! The push capability's sender: Firebase Cloud Messaging's HTTP v1 API.
//!
//! A service-account key signs a JWT (RS256) that is exchanged for an OAuth access token at
//! the key's `token_uri`; the token is cached until shortly before it expires, and each
//! notification is one `POST /v1/projects/{project}/messages:send`. Both addresses can be
//! configured (tests point them at a local stand-in). Without a key, in the embedded
//! default, notifications are only logged.

use std::path::Path;
use std::time::{Duration, Instant};

use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde::{Deserialize, Serialize};
use tokio::sync::Mutex;

use super::services::{PushMessage, SendError};
use crate::config::PushConfig;

/// The OAuth scope FCM requires.
pub const FCM_SCOPE: &str = "https://www.googleapis.com/auth/firebase.messaging";
/// A token is renewed this long before it expires.
const RENEW_BEFORE: Duration = Duration::from_secs(60);

/// Where push notifications go.
#[derive(Debug)]
pub enum Pusher {
    Fcm(Box<Fcm>),
    /// Logged only (no service account configured).
    Log,
}

impl Pusher {
    pub fn from_config(config: &PushConfig) -> anyhow::Result<Self> {
        match &config.service_account_file {
            Some(path) => Ok(Self::Fcm(Box::new(Fcm::new(path, config)?))),
            None => Ok(Self::Log),
        }
    }

    pub fn describe(&self) -> String {
        match self {
            Self::Fcm(fcm) => format!("FCM project {}", fcm.key.project_id),
            Self::Log => "log only (no FCM service account)".to_owned(),
        }
    }

    pub async fn send(&self, message: &PushMessage) -> Result<(), SendError> {
        match self {
            Self::Fcm(fcm) => fcm.send(message).await,
            Self::Log => {
                // The device token and the text (which holds the coupon code) only at debug:
                // personal data and codes stay out of the logs operators keep.
                tracing::info!("push notification not sent: no FCM service account");
                tracing::debug!(token = %message.token, title = %message.title,
                    body = %message.body, "push notification (not sent)");
                Ok(())
            }
        }
    }
}

/// The fields of a Google service-account key file that signing needs.
#[derive(Clone, Deserialize)]
pub struct ServiceAccountKey {
    pub project_id: String,
    pub private_key_id: String,
    pub private_key: String,
    pub client_email: String,
    pub token_uri: String,
}

impl std::fmt::Debug for ServiceAccountKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServiceAccountKey")
            .field("project_id", &self.project_id)
            .field("client_email", &self.client_email)
            .field("private_key", &"<redacted>")
            .finish_non_exhaustive()
    }
}

/// The claims of the JWT exchanged for an access token.
#[derive(Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct GrantClaims {
    pub iss: String,
    pub scope: String,
    pub aud: String,
    pub iat: u64,
    pub exp: u64,
}

#[derive(Deserialize)]
struct TokenResponse {
    access_token: String,
    expires_in: u64,
}

#[derive(Debug)]
struct CachedToken {
    value: String,
    renew_at: Instant,
}

/// An FCM HTTP v1 client.
#[derive(Debug)]
pub struct Fcm {
    key: ServiceAccountKey,
    signer: EncodingKeyDebug,
    token_url: String,
    send_url: String,
    http: reqwest::Client,
    token: Mutex<Option<CachedToken>>,
}

struct EncodingKeyDebug(EncodingKey);

impl std::fmt::Debug for EncodingKeyDebug {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("EncodingKey(<redacted>)")
    }
}

impl Fcm {
    pub fn new(key_file: &Path, config: &PushConfig) -> anyhow::Result<Self> {
        let text = std::fs::read_to_string(key_file).map_err(|e| {
            anyhow::anyhow!("push.service_account_file {}: {e}", key_file.display())
        })?;
        let key: ServiceAccountKey = serde_json::from_str(&text).map_err(|e| {
            anyhow::anyhow!(
                "push.service_account_file {}: not a service-account key: {e}",
                key_file.display()
            )
        })?;
        let signer = EncodingKey::from_rsa_pem(key.private_key.as_bytes()).map_err(|e| {
            anyhow::anyhow!(
                "push.service_account_file {}: private_key: {e}",
                key_file.display()
            )
        })?;
        let token_url = config
            .token_url
            .clone()
            .unwrap_or_else(|| key.token_uri.clone());
        let send_url = format!(
            "{}/v1/projects/{}/messages:send",
            config.fcm_url.trim_end_matches('/'),
            key.project_id
        );
        let http = reqwest::Client::builder()
            .timeout(Duration::from_millis(config.timeout_ms))
            .build()?;
        Ok(Self {
            key,
            signer: EncodingKeyDebug(signer),
            token_url,
            send_url,
            http,
            token: Mutex::new(None),
        })
    }

    /// A signed grant for the token endpoint.
    fn grant(&self) -> Result<String, SendError> {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default()
            .as_secs();
        let claims = GrantClaims {
            iss: self.key.client_email.clone(),
            scope: FCM_SCOPE.to_owned(),
            aud: self.token_url.clone(),
            iat: now,
            exp: now + 3600,
        };
        let mut header = Header::new(Algorithm::RS256);
        header.kid = Some(self.key.private_key_id.clone());
        jsonwebtoken::encode(&header, &claims, &self.signer.0)
            .map_err(|e| SendError::Unavailable(format!("signing the FCM grant: {e}")))
    }

    /// The cached access token, or a new one.
    async fn access_token(&self) -> Result<String, SendError> {
        let mut cached = self.token.lock().await;
        if let Some(token) = cached.as_ref()
            && Instant::now() < token.renew_at
        {
            return Ok(token.value.clone());
        }
        let grant = self.grant()?;
        let response = self
            .http
            .post(&self.token_url)
            .form(&[
                ("grant_type", "urn:ietf:params:oauth:grant-type:jwt-bearer"),
                ("assertion", grant.as_str()),
            ])
            .send()
            .await
            .map_err(|e| SendError::Unavailable(format!("FCM token endpoint: {e}")))?;
        let status = response.status();
        if !status.is_success() {
            let body = response.text().await.unwrap_or_default();
            return Err(SendError::Unavailable(format!(
                "FCM token endpoint answered {status}: {body}"
            )));
        }
        let token: TokenResponse = response
            .json()
            .await
            .map_err(|e| SendError::Unavailable(format!("FCM token endpoint: {e}")))?;
        let lifetime = Duration::from_secs(token.expires_in).saturating_sub(RENEW_BEFORE);
        *cached = Some(CachedToken {
            value: token.access_token.clone(),
            renew_at: Instant::now() + lifetime,
        });
        Ok(token.access_token)
    }

    pub async fn send(&self, message: &PushMessage) -> Result<(), SendError> {
        let token = self.access_token().await?;
        let body = serde_json::json!({
            "message": {
                "token": message.token,
                "notification": { "title": message.title, "body": message.body },
                "data": message.data,
            }
        });
        let response = self
            .http
            .post(&self.send_url)
            .bearer_auth(token)
            .json(&body)
            .send()
            .await
            .map_err(|e| SendError::Unavailable(format!("FCM: {e}")))?;
        let status = response.status();
        if status.is_success() {
            return Ok(());
        }
        let text = response.text().await.unwrap_or_default();
        match status.as_u16() {
            // An expired or revoked token: fetch a new one on the retry.
            401 => {
                *self.token.lock().await = None;
                Err(SendError::Unavailable(format!("FCM answered 401: {text}")))
            }
            // INVALID_ARGUMENT, UNREGISTERED, SENDER_ID_MISMATCH: the same message to the
            // same device will not succeed.
            400 | 403 | 404 => Err(SendError::Rejected(format!(
                "FCM answered {status}: {text}"
            ))),
            _ => Err(SendError::Unavailable(format!(
                "FCM answered {status}: {text}"
            ))),
        }
    }
}
