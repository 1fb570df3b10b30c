//! The `[plugins.{role}]` sections of a campaign file.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

/// Upper bounds an operator cannot raise from a campaign file (the host configuration sets
/// the defaults below them).
pub const MAX_TIMEOUT_MS: u64 = 60_000;
pub const MAX_MEMORY_MB: u32 = 1_024;
/// Most events one instance may serve with `reuse` (a bound on how long a plugin's memory
/// lives and on what a leak in it can grow to).
pub const MAX_REUSE: u32 = 10_000;
const MAX_SETTINGS: usize = 100;
const MAX_RECIPIENTS: usize = 20;
const MAX_SETTING_LEN: usize = 16 * 1024;

/// A host interface a plugin may call. `log` and `settings` are always available: they reach
/// nothing outside the plugin.
#[derive(
    Clone,
    Copy,
    Debug,
    PartialEq,
    Eq,
    Hash,
    PartialOrd,
    Ord,
    Serialize,
    Deserialize,
    utoipa::ToSchema,
)]
#[serde(rename_all = "lowercase")]
pub enum Capability {
    Kv,
    Email,
    Push,
    History,
    Stats,
}

impl Capability {
    pub const ALL: [Capability; 5] = [
        Self::Kv,
        Self::Email,
        Self::Push,
        Self::History,
        Self::Stats,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Self::Kv => "kv",
            Self::Email => "email",
            Self::Push => "push",
            Self::History => "history",
            Self::Stats => "stats",
        }
    }
}

impl fmt::Display for Capability {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Which component handles one role of a campaign, and with what.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PluginSpec {
    /// The `.wasm` component, inside the host's `plugins.dir`; a relative path is taken from
    /// there (by default the campaign folder).
    #[schema(value_type = String, min_length = 1, example = "plugins/history.wasm")]
    pub path: PathBuf,
    /// The expected SHA-256 of the file (hex); a file that differs is refused.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(pattern = r"^[0-9a-fA-F]{64}$")]
    pub sha256: Option<String>,
    /// The capabilities the plugin may call besides `log` and `settings`.
    #[serde(default, skip_serializing_if = "BTreeSet::is_empty")]
    pub grants: BTreeSet<Capability>,
    /// Email addresses the plugin may write to besides the event's shopper (an operator's
    /// desk, say); at most 20. Without them, `email.send` reaches only the shopper.
    #[serde(default, skip_serializing_if = "BTreeSet::is_empty")]
    #[schema(max_items = 20)]
    pub recipients: BTreeSet<String>,
    /// The plugin's settings, as text.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub settings: BTreeMap<String, String>,
    /// Wall-clock limit of one call (default: the host's `plugins.timeout_ms`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(minimum = 1, maximum = 60_000)] // MAX_TIMEOUT_MS
    pub timeout_ms: Option<u64>,
    /// Memory limit of one instance (default: the host's `plugins.memory_mb`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(minimum = 1, maximum = 1_024)] // MAX_MEMORY_MB
    pub memory_mb: Option<u32>,
    /// Events one instance may serve, one after another, before it is thrown away (default 1:
    /// a fresh instance per event). An instance is also thrown away after any failed call
    /// (error, trap, timeout, memory or output limit) and when its campaign's plugin changes;
    /// its memory and globals persist between the events it serves. See docs/plugins.md.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(minimum = 1, maximum = 10_000)] // MAX_REUSE
    pub reuse: Option<u32>,
}

impl PluginSpec {
    /// Checks what can be checked without reading the component.
    pub fn validate(&self, role: &str) -> Result<(), String> {
        crate::campaign::validate_id(role).map_err(|_| {
            format!("plugins.{role}: a role is 1 to 64 characters of a-z, 0-9, '-' and '_'")
        })?;
        if self.path.as_os_str().is_empty() {
            return Err(format!("plugins.{role}.path: must name a .wasm file"));
        }
        if let Some(hash) = &self.sha256
            && (hash.len() != 64 || !hash.bytes().all(|b| b.is_ascii_hexdigit()))
        {
            return Err(format!(
                "plugins.{role}.sha256: must be 64 hexadecimal digits"
            ));
        }
        if let Some(ms) = self.timeout_ms
            && !(1..=MAX_TIMEOUT_MS).contains(&ms)
        {
            return Err(format!(
                "plugins.{role}.timeout_ms: must be between 1 and {MAX_TIMEOUT_MS}"
            ));
        }
        if let Some(mb) = self.memory_mb
            && !(1..=MAX_MEMORY_MB).contains(&mb)
        {
            return Err(format!(
                "plugins.{role}.memory_mb: must be between 1 and {MAX_MEMORY_MB}"
            ));
        }
        if let Some(n) = self.reuse
            && !(1..=MAX_REUSE).contains(&n)
        {
            return Err(format!(
                "plugins.{role}.reuse: must be between 1 and {MAX_REUSE} (events per instance)"
            ));
        }
        if self.recipients.len() > MAX_RECIPIENTS {
            return Err(format!(
                "plugins.{role}.recipients: at most {MAX_RECIPIENTS} addresses"
            ));
        }
        if let Some(bad) = self
            .recipients
            .iter()
            .position(|r| !crate::user::is_email(r))
        {
            return Err(format!(
                "plugins.{role}.recipients[{bad}]: not an email address"
            ));
        }
        if self.settings.len() > MAX_SETTINGS {
            return Err(format!(
                "plugins.{role}.settings: at most {MAX_SETTINGS} settings"
            ));
        }
        if let Some((k, _)) = self
            .settings
            .iter()
            .find(|(k, v)| k.is_empty() || k.len() > 128 || v.len() > MAX_SETTING_LEN)
        {
            return Err(format!(
                "plugins.{role}.settings.{k}: keys are 1 to 128 bytes, values at most {MAX_SETTING_LEN}"
            ));
        }
        Ok(())
    }

    pub fn grants(&self, capability: Capability) -> bool {
        self.grants.contains(&capability)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(text: &str) -> Result<PluginSpec, String> {
        let spec: PluginSpec = toml::from_str(text).map_err(|e| e.to_string())?;
        spec.validate("notification")?;
        Ok(spec)
    }

    #[test]
    fn a_full_section_parses() {
        let s = spec(
            "path = \"n.wasm\"\ngrants = [\"email\", \"push\"]\ntimeout_ms = 500\n\
             [settings]\nemail_subject = \"Hi\"\n",
        )
        .unwrap();
        assert!(s.grants(Capability::Email) && !s.grants(Capability::Kv));
    }

    #[test]
    fn bad_sections_say_what_to_fix() {
        for (text, needle) in [
            (
                "path = \"n.wasm\"\ngrants = [\"disk\"]\n",
                "unknown variant `disk`",
            ),
            ("path = \"n.wasm\"\nsha256 = \"abc\"\n", "sha256"),
            ("path = \"n.wasm\"\ntimeout_ms = 0\n", "timeout_ms"),
            ("path = \"n.wasm\"\nmemory_mb = 100000\n", "memory_mb"),
            ("path = \"n.wasm\"\nreuse = 0\n", "reuse"),
            ("path = \"n.wasm\"\nreuse = 10001\n", "reuse"),
            ("path = \"\"\n", "path"),
            ("path = \"n.wasm\"\nfuel = 3\n", "unknown field `fuel`"),
            (
                "path = \"n.wasm\"\n[settings]\nlimit = 3\n",
                "expected a string",
            ),
        ] {
            let err = spec(text).unwrap_err();
            assert!(err.contains(needle), "{text:?} gave {err:?}");
        }
    }
}
