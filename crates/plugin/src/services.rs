//! What the capabilities reach outside the sandbox. [`LiveServices`] is the running host's:
//! the database, the configured mailer and push sender. `firstcome plugin test` uses a
//! recording implementation instead ([`super::recording`]).

use std::collections::BTreeMap;
use std::fmt::Debug;
use std::sync::Arc;

use async_trait::async_trait;
use sha2::{Digest, Sha256};

use super::email::Mailer;
use super::fcm::Pusher;
use firstcome_core::clock::now_ms;
use firstcome_store::{Scope, Store};

/// Why a send failed, as the plugin sees it.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum SendError {
    /// Sending it again will not help.
    #[error("rejected: {0}")]
    Rejected(String),
    /// Worth retrying.
    #[error("unavailable: {0}")]
    Unavailable(String),
}

/// One push notification.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PushMessage {
    pub token: String,
    pub title: String,
    pub body: String,
    pub data: BTreeMap<String, String>,
}

/// The outside world of a plugin call.
#[async_trait]
pub trait Services: Send + Sync + Debug {
    async fn kv_get(&self, scope: &Scope, key: &str) -> Result<Option<Vec<u8>>, String>;
    async fn kv_counter(&self, scope: &Scope, key: &str) -> Result<i64, String>;
    async fn send_email(
        &self,
        scope: &Scope,
        event_id: &str,
        to: &str,
        subject: &str,
        body: &str,
    ) -> Result<(), SendError>;
    async fn send_push(
        &self,
        scope: &Scope,
        event_id: &str,
        message: &PushMessage,
    ) -> Result<(), SendError>;
    /// A log line the plugin wrote (already passed to `tracing`).
    fn logged(&self, _scope: &Scope, _level: &str, _message: &str) {}
}

/// The running host's services.
#[derive(Debug, Clone)]
pub struct LiveServices {
    pub store: Store,
    pub mailer: Arc<Mailer>,
    pub pusher: Arc<Pusher>,
}

/// Identifies one send within an event: the channel, recipient and content.
fn send_key(parts: &[&str]) -> String {
    let mut hash = Sha256::new();
    for part in parts {
        hash.update((part.len() as u64).to_le_bytes());
        hash.update(part.as_bytes());
    }
    hex::encode(hash.finalize())
}

impl LiveServices {
    /// Runs `send` unless the same send was already made for this event, then remembers it.
    async fn once<F>(
        &self,
        scope: &Scope,
        event_id: &str,
        channel: &str,
        key: String,
        send: F,
    ) -> Result<(), SendError>
    where
        F: Future<Output = Result<(), SendError>>,
    {
        let store = &self.store;
        let made = store
            .delivery_made(event_id, &scope.role, channel, &key)
            .await
            .map_err(|e| SendError::Unavailable(format!("database: {e}")))?;
        if made {
            tracing::debug!(%event_id, channel, "already sent for this event; skipped");
            return Ok(());
        }
        send.await?;
        // Sent: a failure to remember it only risks one duplicate on a retry.
        if let Err(e) = store
            .record_delivery(event_id, &scope.role, channel, &key, now_ms())
            .await
        {
            tracing::warn!(%event_id, channel, error = %e, "could not record a send");
        }
        Ok(())
    }
}

#[async_trait]
impl Services for LiveServices {
    async fn kv_get(&self, scope: &Scope, key: &str) -> Result<Option<Vec<u8>>, String> {
        self.store
            .kv_get(scope, key)
            .await
            .map_err(|e| e.to_string())
    }

    async fn kv_counter(&self, scope: &Scope, key: &str) -> Result<i64, String> {
        self.store
            .kv_counter(scope, key)
            .await
            .map_err(|e| e.to_string())
    }

    async fn send_email(
        &self,
        scope: &Scope,
        event_id: &str,
        to: &str,
        subject: &str,
        body: &str,
    ) -> Result<(), SendError> {
        let key = send_key(&[to, subject, body]);
        self.once(
            scope,
            event_id,
            "email",
            key,
            self.mailer.send(to, subject, body),
        )
        .await
    }

    async fn send_push(
        &self,
        scope: &Scope,
        event_id: &str,
        message: &PushMessage,
    ) -> Result<(), SendError> {
        let key = send_key(&[&message.token, &message.title, &message.body]);
        self.once(scope, event_id, "push", key, self.pusher.send(message))
            .await
    }
}
