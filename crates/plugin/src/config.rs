//! The plugin host's sections of the host's configuration (`[plugins]`, `[email]`, `[push]`).

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

/// Limits of plugin calls; a campaign file may set its own per plugin, up to the maxima of
/// [`firstcome_core::plugin_spec`].
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct PluginConfig {
    /// The folder plugin files are read from (a campaign's relative `path` starts here; a
    /// path leaving it is refused). Unset: the campaign folder.
    pub dir: Option<PathBuf>,
    /// Emails and push notifications one event's call may send, together (default 5).
    pub max_sends_per_event: u32,
    /// Wall-clock limit of one call (instantiation, init and handle), host calls included.
    pub timeout_ms: u64,
    /// Memory one instance may grow to.
    pub memory_mb: u32,
    /// Bytes one call may pass to the host (log lines, kv writes, emails, ...).
    pub max_output_bytes: usize,
    /// Memory all plugin instances of the host may hold together, running or kept for reuse
    /// (default 1,024 MiB; see `budget`).
    pub memory_budget_mb: u32,
    /// Wall-clock limit of compiling one component (default 60,000 ms): a version that takes
    /// longer is refused (the file is at most 64 MiB). Compiling runs beside everything else
    /// and holds up only its own campaign.
    pub compile_timeout_ms: u64,
}

impl Default for PluginConfig {
    fn default() -> Self {
        Self {
            dir: None,
            max_sends_per_event: 5,
            timeout_ms: 2_000,
            memory_mb: 64,
            max_output_bytes: 1024 * 1024,
            memory_budget_mb: 1024,
            compile_timeout_ms: 60_000,
        }
    }
}

/// How the email capability sends.
#[derive(Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct EmailConfig {
    /// The SMTP relay; unset: emails are written to `mail_dir`.
    pub smtp_host: Option<String>,
    /// Default: 25 without TLS, 587 with STARTTLS, 465 with TLS.
    pub smtp_port: Option<u16>,
    pub tls: SmtpTls,
    pub username: Option<String>,
    pub password: Option<firstcome_core::secret::Secret>,
    /// Allows `username`/`password` with `tls = "none"` (a relay on a private link); off by
    /// default: credentials are refused on a connection without TLS.
    pub allow_plaintext_auth: bool,
    /// The sender, e.g. `Coupons <coupons@example.com>`.
    pub from: String,
    /// Folder of `.eml` files when no relay is set; default `{data_dir}/mail`.
    pub mail_dir: Option<PathBuf>,
    pub timeout_ms: u64,
}

#[derive(Clone, Copy, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum SmtpTls {
    None,
    Starttls,
    Tls,
}

impl Default for EmailConfig {
    fn default() -> Self {
        Self {
            smtp_host: None,
            smtp_port: None,
            tls: SmtpTls::Starttls,
            username: None,
            password: None,
            allow_plaintext_auth: false,
            from: "firstcome <coupons@firstcome.invalid>".into(),
            mail_dir: None,
            timeout_ms: 10_000,
        }
    }
}

impl std::fmt::Debug for EmailConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EmailConfig")
            .field("smtp_host", &self.smtp_host)
            .field("smtp_port", &self.smtp_port)
            .field("tls", &self.tls)
            .field("username", &self.username)
            .field("password", &self.password)
            .field("allow_plaintext_auth", &self.allow_plaintext_auth)
            .field("from", &self.from)
            .field("mail_dir", &self.mail_dir)
            .finish()
    }
}

/// How the push capability sends.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct PushConfig {
    /// A Google service-account key (JSON); unset: notifications are only logged.
    pub service_account_file: Option<PathBuf>,
    /// FCM's base address.
    pub fcm_url: String,
    /// The OAuth token endpoint; default: the key's `token_uri`.
    pub token_url: Option<String>,
    pub timeout_ms: u64,
}

impl Default for PushConfig {
    fn default() -> Self {
        Self {
            service_account_file: None,
            fcm_url: "https://fcm.googleapis.com".into(),
            token_url: None,
            timeout_ms: 10_000,
        }
    }
}
