//! The campaign folder: one `{campaign_id}.toml` per campaign, scanned every
//! `campaigns_poll_ms` (scanning, rather than file-system notifications, behaves the same on
//! every file system, including mounted volumes).
//!
//! A file is applied only once it has **settled**: the same content read on scans spanning at
//! least `campaigns_settle_ms`, or a file whose modification time is already that old when it
//! is first read (`mv` of a file written earlier). An editor that saves in place, truncating
//! the file and writing it piece by piece, is therefore as safe as `mv` of a finished file, as
//! long as it does not pause longer than the settle time mid-write. A document equal to the
//! version in force is never applied again, whatever its layout or comments.
//!
//! The version in force survives restarts: every applied document is kept in the database
//! ([`crate::store::Store::applied_campaigns`]). At start-up that version runs when the file is
//! refused, or still changing after three settle times (files changed just before start-up are
//! waited for); a refused file is listed, with its reason, by the admin API until it is fixed.
//! A removed file stops its campaign, also when it was removed while the host was down.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use tokio_util::sync::CancellationToken;

use super::{Campaign, CampaignSpec, SpecError};
use crate::platform::Platform;

/// Largest campaign file read, in bytes; a larger one is refused unread.
pub const MAX_FILE_BYTES: u64 = 1024 * 1024;

/// Reads and validates one campaign file; the id is the file stem.
pub fn load_file(path: &Path) -> Result<Campaign, String> {
    let stem = path
        .file_stem()
        .and_then(|s| s.to_str())
        .ok_or_else(|| format!("{}: not a campaign file name", path.display()))?;
    let text = read_bounded(path).map_err(|e| format!("{}: {e}", path.display()))?;
    parse(stem, &text).map_err(|e| format!("{}: {e}", path.display()))
}

/// The file's text, if it is at most [`MAX_FILE_BYTES`].
fn read_bounded(path: &Path) -> Result<String, String> {
    let size = std::fs::metadata(path).map_err(|e| e.to_string())?.len();
    if size > MAX_FILE_BYTES {
        return Err(format!(
            "the file is {size} bytes; a campaign file is at most {MAX_FILE_BYTES}"
        ));
    }
    std::fs::read_to_string(path).map_err(|e| e.to_string())
}

fn parse(id: &str, text: &str) -> Result<Campaign, SpecError> {
    super::validate_id(id)?;
    Campaign::new(id, CampaignSpec::from_toml(text)?)
}

/// One campaign file as the watcher knows it. (The version in force is the platform's: the
/// admin API applies campaigns too.)
#[derive(Debug, Default)]
struct Tracked {
    /// Content last decided on (applied, found equal to the version in force, or refused).
    decided: Option<String>,
    /// Content read but not yet settled, and since when it has been read unchanged.
    pending: Option<(String, Instant)>,
}

/// What one read of a file found.
struct Read {
    path: PathBuf,
    text: Result<String, String>,
    /// How long ago the file was last modified (zero when unknown or in the future).
    age: Duration,
}

/// Watches one folder and applies what changes in it.
#[derive(Debug)]
pub struct Watcher {
    dir: PathBuf,
    platform: Arc<Platform>,
    settle: Duration,
    files: HashMap<String, Tracked>,
}

impl Watcher {
    /// `settle`: how long a file's content must stay the same before it is applied.
    pub fn new(dir: PathBuf, platform: Arc<Platform>, settle: Duration) -> Self {
        Self {
            dir,
            platform,
            settle,
            files: HashMap::new(),
        }
    }

    /// Start-up: puts the versions in force (from the database) back into service, then
    /// applies the folder's settled files over them and stops campaigns whose file is gone.
    pub async fn start(&mut self) {
        let applied = match self.platform.store.applied_campaigns().await {
            Ok(applied) => applied,
            Err(e) => {
                tracing::warn!(error = %e, "cannot read the versions in force; using the files only");
                Vec::new()
            }
        };
        let present = self.read_folder();
        for campaign in applied {
            let id = campaign.id.clone();
            if !present.contains_key(&id) {
                // Removed while the host was down: stopped, as a removal is when running.
                if let Err(e) = self.platform.store.deactivate_campaign(&id).await {
                    tracing::warn!(campaign = %id, error = %e, "cannot stop campaign");
                }
                continue;
            }
            if let Err(e) = self.platform.apply_campaign(campaign).await {
                tracing::error!(campaign = %id, error = %e, "the version in force cannot run");
            }
        }
        self.decide_all(present, true).await;
        // Files changed just before start-up are waited for, so that the host serves what the
        // folder says; a file that keeps changing is left to the running watcher.
        let deadline = Instant::now() + self.settle * 3;
        while self.files.values().any(|t| t.pending.is_some()) && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(50)).await;
            self.scan().await;
        }
    }

    /// One pass over the folder.
    pub async fn scan(&mut self) {
        let present = self.read_folder();
        self.decide_all(present, false).await;
    }

    /// The `.toml` files of the folder, by campaign id.
    fn read_folder(&self) -> HashMap<String, Read> {
        let mut present = HashMap::new();
        let entries = match std::fs::read_dir(&self.dir) {
            Ok(entries) => entries,
            Err(e) => {
                tracing::warn!(dir = %self.dir.display(), error = %e, "cannot read campaign folder");
                return present;
            }
        };
        for entry in entries.flatten() {
            let path = entry.path();
            if path.extension().and_then(|e| e.to_str()) != Some("toml") {
                continue;
            }
            let Some(stem) = path.file_stem().and_then(|s| s.to_str()).map(str::to_owned) else {
                continue;
            };
            let age = entry
                .metadata()
                .and_then(|m| m.modified())
                .ok()
                .and_then(|t| SystemTime::now().duration_since(t).ok())
                .unwrap_or_default();
            let text = read_bounded(&path);
            present.insert(stem, Read { path, text, age });
        }
        present
    }

    async fn decide_all(&mut self, present: HashMap<String, Read>, starting: bool) {
        let gone: Vec<String> = self
            .files
            .keys()
            .filter(|id| !present.contains_key(*id))
            .cloned()
            .collect();
        for (id, read) in present {
            self.decide(&id, read, starting).await;
        }
        for id in gone {
            self.files.remove(&id);
            self.platform.clear_rejection(&id);
            let _writing = self.platform.campaign_writes().await;
            match self.platform.remove_campaign(&id).await {
                Ok(true) => {
                    tracing::info!(campaign = %id, "campaign file removed; campaign stopped")
                }
                Ok(false) => {}
                Err(e) => tracing::warn!(campaign = %id, error = %e, "cannot stop campaign"),
            }
        }
    }

    /// Applies, refuses or waits on one file.
    async fn decide(&mut self, id: &str, read: Read, starting: bool) {
        let text = match read.text {
            Ok(text) => text,
            // Unreadable (too large, not UTF-8, gone between listing and reading): refused
            // at once unless it is still being written.
            Err(reason) if read.age >= self.settle => {
                let tracked = self.files.entry(id.to_owned()).or_default();
                if tracked.decided.as_deref() != Some(&reason) {
                    tracked.decided = Some(reason.clone());
                    self.refuse(id, &read.path, reason);
                }
                return;
            }
            Err(_) => return,
        };
        let settle = self.settle;
        let tracked = self.files.entry(id.to_owned()).or_default();
        if tracked.decided.as_deref() == Some(&text) {
            tracked.pending = None;
            return;
        }
        let now = Instant::now();
        let settled = match &tracked.pending {
            Some((pending, since)) if *pending == text => now.duration_since(*since) >= settle,
            _ => read.age >= settle,
        };
        if !settled {
            if tracked.pending.as_ref().is_none_or(|(p, _)| *p != text) {
                if starting && self.platform.campaign(id).is_some() {
                    tracing::info!(campaign = %id,
                        "campaign file is still changing; the version in force runs until it settles");
                }
                tracked.pending = Some((text, now));
            }
            return;
        }
        tracked.pending = None;
        tracked.decided = Some(text.clone());
        let campaign = match parse(id, &text) {
            Ok(campaign) => campaign,
            Err(e) => return self.refuse(id, &read.path, e.to_string()),
        };
        let _writing = self.platform.campaign_writes().await;
        if self
            .platform
            .campaign(id)
            .is_some_and(|c| c.spec == campaign.spec)
        {
            // The same document (perhaps laid out differently): nothing to apply.
            self.platform.clear_rejection(id);
            return;
        }
        match self.platform.apply_campaign(campaign).await {
            Ok(()) => {
                self.platform.clear_rejection(id);
                tracing::info!(campaign = %id, "campaign applied");
            }
            Err(e) => self.refuse(id, &read.path, e.to_string()),
        }
    }

    fn refuse(&self, id: &str, path: &Path, reason: String) {
        tracing::error!(file = %path.display(), %reason,
            "campaign file refused; the version in force (if any) stays");
        self.platform
            .reject(id, format!("{}: {reason}", path.display()));
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
