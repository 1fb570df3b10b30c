//! The campaign folder: one `{campaign_id}.toml` per campaign. Scanned every
//! `campaigns_poll_ms`: a new or changed file is validated and applied, a removed file stops
//! its campaign, and an invalid file is logged and remembered (the admin API shows it) while
//! the previous version stays in force. Scanning (rather than file-system notifications)
//! behaves the same on every file system, including mounted volumes.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use super::{Campaign, CampaignSpec, SpecError};
use crate::platform::Platform;

/// Reads and validates one campaign file; the id is the file stem.
pub fn load_file(path: &Path) -> Result<Campaign, String> {
    let stem = path
        .file_stem()
        .and_then(|s| s.to_str())
        .ok_or_else(|| format!("{}: not a campaign file name", path.display()))?;
    let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
    parse(stem, &text).map_err(|e| format!("{}: {e}", path.display()))
}

fn parse(id: &str, text: &str) -> Result<Campaign, SpecError> {
    super::validate_id(id)?;
    Campaign::new(id, CampaignSpec::from_toml(text)?)
}

/// Watches one folder and applies what changes in it.
#[derive(Debug)]
pub struct Watcher {
    dir: PathBuf,
    platform: Arc<Platform>,
    /// File contents as last applied or rejected, by campaign id.
    seen: HashMap<String, String>,
}

impl Watcher {
    pub fn new(dir: PathBuf, platform: Arc<Platform>) -> Self {
        Self {
            dir,
            platform,
            seen: HashMap::new(),
        }
    }

    /// One pass over the folder.
    pub async fn scan(&mut self) {
        let entries = match std::fs::read_dir(&self.dir) {
            Ok(entries) => entries,
            Err(e) => {
                tracing::warn!(dir = %self.dir.display(), error = %e, "cannot read campaign folder");
                return;
            }
        };
        let mut present = HashMap::new();
        for entry in entries.flatten() {
            let path = entry.path();
            if path.extension().and_then(|e| e.to_str()) != Some("toml") {
                continue;
            }
            let Some(stem) = path.file_stem().and_then(|s| s.to_str()).map(str::to_owned) else {
                continue;
            };
            // A file being written may be read half-way: the next scan sees the rest.
            let Ok(text) = std::fs::read_to_string(&path) else {
                continue;
            };
            present.insert(stem, (path, text));
        }
        for (id, (path, text)) in &present {
            if self.seen.get(id) == Some(text) {
                continue;
            }
            self.seen.insert(id.clone(), text.clone());
            let result = match parse(id, text) {
                Ok(campaign) => self
                    .platform
                    .apply_campaign(campaign)
                    .await
                    .map_err(|e| e.to_string()),
                Err(e) => Err(e.to_string()),
            };
            match result {
                Ok(()) => {
                    self.platform.clear_rejection(id);
                    tracing::info!(campaign = %id, "campaign applied");
                }
                Err(reason) => {
                    tracing::error!(file = %path.display(), %reason,
                        "campaign file rejected; the previous version stays in force");
                    self.platform
                        .reject(id, format!("{}: {reason}", path.display()));
                }
            }
        }
        let gone: Vec<String> = self
            .seen
            .keys()
            .filter(|id| !present.contains_key(*id))
            .cloned()
            .collect();
        for id in gone {
            self.seen.remove(&id);
            self.platform.clear_rejection(&id);
            match self.platform.remove_campaign(&id).await {
                Ok(true) => {
                    tracing::info!(campaign = %id, "campaign file removed; campaign stopped")
                }
                Ok(false) => {}
                Err(e) => tracing::warn!(campaign = %id, error = %e, "cannot stop campaign"),
            }
        }
    }

    pub async fn run(mut self, every: Duration, shutdown: CancellationToken) {
        while !shutdown.is_cancelled() {
            tokio::select! {
                () = tokio::time::sleep(every) => {}
                () = shutdown.cancelled() => break,
            }
            self.scan().await;
        }
    }
}
