//! The campaign folder: one `{campaign_id}.toml` per campaign, scanned every
//! `campaigns_poll_ms` (scanning, rather than file-system notifications, behaves the same on
//! every file system, including mounted volumes). The folder is read on a blocking thread, and
//! only regular files (or symbolic links to them) of at most [`MAX_FILE_BYTES`] are read.
//!
//! A change is applied only once it has **settled**: the same text read on scans spanning at
//! least `campaigns_settle_ms`, or a file whose modification time (of the file a link points
//! to) is already that old when first read (`mv` of a file written earlier). An editor that
//! saves in place, truncating the file and writing it piece by piece, is therefore as safe as
//! `mv` of a finished file, as long as it does not pause longer than the settle time
//! mid-write. A removal settles the same way, so a delete-then-create save does not stop the
//! campaign. Text that was already applied (or refused) is never applied again; any other
//! change, even a comment, is applied, which is how a plugin rebuilt at the same path is
//! loaded. A change refused for a passing reason (the database or the queue unreachable) is
//! tried again at the next scan.
//!
//! Each settled file is applied on a task of its own, at most one per campaign, under that
//! campaign's write lock: a plugin slow to compile or to `init` holds up only its own
//! campaign's file, never another's or an admin change of another campaign.
//!
//! The version in force survives restarts: every applied document is kept in the database
//! ([`firstcome_store::Store::applied_campaigns`]). At start-up it is put back into service at
//! once, its plugins loading in the background ([`Platform::restore_campaign`]), and it runs
//! when the file is refused or still changing; files changed just before start-up, and their
//! applies, are waited for, but for at most three settle times, so that the host serves
//! however slow a plugin is. A refused file is listed, with its reason, by the admin API until
//! it is fixed. A file removed while the host was down stops its campaign. An unreadable folder
//! changes nothing.

use std::collections::HashMap;
use std::io::Read as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use tokio_util::sync::CancellationToken;

use crate::platform::{Platform, PlatformError};
use firstcome_core::campaign::{Campaign, CampaignSpec, SpecError};
use firstcome_store::StoreError;

/// Why a file linked out of the campaign folder is not read.
const OUTSIDE: &str = "a link to a file outside the campaign folder (or to nothing): campaign \
                       files are read only inside the folder";

/// Largest campaign file read, in bytes; a larger one is refused.
pub const MAX_FILE_BYTES: u64 = 1024 * 1024;

/// Reads and validates one campaign file; the id is the file stem.
pub fn load_file(path: &Path) -> Result<Campaign, String> {
    let stem = path
        .file_stem()
        .and_then(|s| s.to_str())
        .ok_or_else(|| format!("{}: not a campaign file name", path.display()))?;
    let text = read_bounded(path, None).map_err(|e| format!("{}: {e}", path.display()))?;
    parse(stem, &text).map_err(|e| format!("{}: {e}", path.display()))
}

/// The text of a regular file (or of the regular file a link points to) of at most
/// [`MAX_FILE_BYTES`]. A FIFO, device or folder is refused without being opened for a
/// blocking read; a file that grows past the limit while being read is refused too. With
/// `root`, the file opened must lie inside it (checked on the open file: a link swapped in
/// after the folder was listed does not lead the read out of the folder).
fn read_bounded(path: &Path, root: Option<&Path>) -> Result<String, String> {
    use std::os::fd::AsRawFd;
    use std::os::unix::fs::OpenOptionsExt;
    let not_regular = || "not a regular file".to_owned();
    let meta = std::fs::metadata(path).map_err(|e| e.to_string())?;
    if !meta.is_file() {
        return Err(not_regular());
    }
    let too_large = |size: u64| {
        format!("the file is {size} bytes or more; a campaign file is at most {MAX_FILE_BYTES}")
    };
    if meta.len() > MAX_FILE_BYTES {
        return Err(too_large(meta.len()));
    }
    // Non-blocking, in case the path was replaced by a FIFO since the check.
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(rustix::fs::OFlags::NONBLOCK.bits() as i32)
        .open(path)
        .map_err(|e| e.to_string())?;
    if let Some(root) = root {
        let real = std::fs::read_link(format!("/proc/self/fd/{}", file.as_raw_fd()))
            .map_err(|e| e.to_string())?;
        if !real.starts_with(root) {
            return Err(OUTSIDE.to_owned());
        }
    }
    if !file.metadata().map_err(|e| e.to_string())?.is_file() {
        return Err(not_regular());
    }
    let mut bytes = Vec::new();
    file.take(MAX_FILE_BYTES + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| e.to_string())?;
    if bytes.len() as u64 > MAX_FILE_BYTES {
        return Err(too_large(bytes.len() as u64));
    }
    String::from_utf8(bytes).map_err(|_| "the file is not UTF-8 text".to_owned())
}

fn parse(id: &str, text: &str) -> Result<Campaign, SpecError> {
    firstcome_core::campaign::validate_id(id)?;
    Campaign::new(id, CampaignSpec::from_toml(text)?)
}

/// What became of a file's text.
#[derive(Debug)]
enum Decision {
    /// Applied; this document runs (unless the admin API changed it since).
    Applied(CampaignSpec),
    Refused,
}

/// One campaign file as the watcher knows it.
#[derive(Debug, Default)]
struct Tracked {
    /// The text last decided on, and the decision.
    decided: Option<(String, Decision)>,
    /// Text read but not yet settled, and since when it has been read unchanged.
    pending: Option<(String, Instant)>,
    /// Since when the file has been missing.
    missing_since: Option<Instant>,
}

/// What one read of a file found.
#[derive(Debug)]
struct Read {
    path: PathBuf,
    /// The text, or why it cannot be read (prefixed, so that it never equals a text).
    text: Result<String, String>,
    /// How long ago the file was last modified (zero when unknown or in the future).
    age: Duration,
}

/// The `.toml` files of `dir`, by campaign id; `None` when the folder cannot be read.
fn read_folder(dir: &Path) -> Option<HashMap<String, Read>> {
    let entries = match std::fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) => {
            tracing::warn!(dir = %dir.display(), error = %e,
                "cannot read campaign folder; nothing changes until it can be read");
            return None;
        }
    };
    // Links are followed only to files inside the folder: a link to `/etc/…` (or to another
    // program's secrets) is refused unread.
    let root = std::fs::canonicalize(dir).unwrap_or_else(|_| dir.to_owned());
    let mut present = HashMap::new();
    for entry in entries.flatten() {
        let path = entry.path();
        if path.extension().and_then(|e| e.to_str()) != Some("toml") {
            continue;
        }
        let Some(stem) = path.file_stem().and_then(|s| s.to_str()).map(str::to_owned) else {
            continue;
        };
        if entry.file_type().is_ok_and(|t| t.is_symlink())
            && !std::fs::canonicalize(&path).is_ok_and(|target| target.starts_with(&root))
        {
            let text = Err(OUTSIDE.to_owned());
            present.insert(
                stem,
                Read {
                    path,
                    text,
                    age: Duration::MAX,
                },
            );
            continue;
        }
        // The age of what a link points to: a link touched long ago to a file written now
        // is not settled.
        let age = std::fs::metadata(&path)
            .and_then(|m| m.modified())
            .ok()
            .and_then(|t| SystemTime::now().duration_since(t).ok())
            .unwrap_or_default();
        let text = read_bounded(&path, Some(&root));
        present.insert(stem, Read { path, text, age });
    }
    Some(present)
}

/// Whether an apply failed for a passing reason (worth trying again at the next scan) rather
/// than because of the document.
fn passing(error: &PlatformError) -> bool {
    match error {
        PlatformError::Store(StoreError::CapacityBelowIssued { .. }) => false,
        PlatformError::Store(_)
        | PlatformError::Admission(_)
        | PlatformError::QueueUnstable(_)
        | PlatformError::QueueBehind(_) => true,
        PlatformError::CapacityBelowAdmitted { .. }
        | PlatformError::ShardsChanged { .. }
        | PlatformError::ShardedCapacityLowered { .. }
        | PlatformError::Plugin(_)
        | PlatformError::TooManyCampaigns { .. } => false,
    }
}

/// How an apply of a file, run on its own task, ended.
#[derive(Debug)]
enum Applied {
    Decided(Decision),
    /// Refused for a passing reason: tried again at the next scan.
    Again,
    /// The file changed (or the admin API wrote it) before it was applied: read again.
    Changed,
    /// The file was gone: its campaign was removed.
    Removed,
}

/// Watches one folder and applies what changes in it.
#[derive(Debug)]
pub struct Watcher {
    dir: PathBuf,
    platform: Arc<Platform>,
    settle: Duration,
    files: HashMap<String, Tracked>,
    /// Applies under way, each on its own task and at most one per campaign: a plugin slow to
    /// compile or to `init` holds up only its own campaign's file.
    applying: tokio::task::JoinSet<(String, String, Applied)>,
    /// The campaign each apply under way is for.
    applying_ids: HashMap<tokio::task::Id, String>,
}

impl Watcher {
    /// `settle`: how long a file's text must stay the same before it is applied.
    pub fn new(dir: PathBuf, platform: Arc<Platform>, settle: Duration) -> Self {
        Self {
            dir,
            platform,
            settle,
            files: HashMap::new(),
            applying: tokio::task::JoinSet::new(),
            applying_ids: HashMap::new(),
        }
    }

    fn is_applying(&self, id: &str) -> bool {
        self.applying_ids.values().any(|a| a == id)
    }

    /// Takes in the applies that ended since the last scan.
    fn finish_applies(&mut self) {
        while let Some(done) = self.applying.try_join_next_with_id() {
            let (task, outcome) = match done {
                Ok((task, (_, text, applied))) => (task, Some((text, applied))),
                Err(e) => (e.id(), None),
            };
            let Some(id) = self.applying_ids.remove(&task) else {
                continue;
            };
            self.platform.note_applying(&id, false);
            if matches!(outcome, Some((_, Applied::Removed))) {
                continue;
            }
            let tracked = self.files.entry(id.clone()).or_default();
            match outcome {
                Some((text, Applied::Decided(decision))) => {
                    tracked.decided = Some((text, decision));
                    tracked.pending = None;
                }
                Some((text, Applied::Again)) => {
                    // Settled already: applied again at the next scan.
                    let now = Instant::now();
                    tracked.pending = Some((text, now.checked_sub(self.settle).unwrap_or(now)));
                }
                Some((_, Applied::Changed | Applied::Removed)) => tracked.pending = None,
                None => {
                    tracing::error!(campaign = %id, "applying the campaign file failed; trying again");
                    tracked.pending = None;
                }
            }
        }
    }

    async fn read_folder(&self) -> Option<HashMap<String, Read>> {
        let dir = self.dir.clone();
        tokio::task::spawn_blocking(move || read_folder(&dir))
            .await
            .ok()
            .flatten()
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
        let present = self.read_folder().await;
        for campaign in applied {
            let id = campaign.id().to_owned();
            if present.as_ref().is_some_and(|p| !p.contains_key(&id)) {
                // Removed while the host was down, or before its drain ended: removed as when
                // running, so that the requests it admitted are still issued. (Nobody is
                // admitted meanwhile: the listener is not bound yet.)
                match self.platform.restore_campaign(campaign).await {
                    Ok(()) => {
                        if let Err(e) = self.platform.remove_campaign(&id).await {
                            tracing::warn!(campaign = %id, error = %e, "cannot stop campaign");
                        }
                    }
                    // The database or Redis is down for now: the row stays active, so that
                    // the next start drains what it admitted.
                    Err(e) if passing(&e) => {
                        tracing::error!(campaign = %id, error = %e,
                            "the removed campaign cannot run now to issue what it admitted; \
                             it is tried again at the next start");
                    }
                    Err(e) => {
                        tracing::error!(campaign = %id, error = %e,
                            "the removed campaign cannot run to issue what it admitted; \
                             marked inactive");
                        if let Err(e) = self.platform.store.deactivate_campaign(&id).await {
                            tracing::warn!(campaign = %id, error = %e, "cannot stop campaign");
                        }
                    }
                }
                continue;
            }
            if let Err(e) = self.platform.restore_campaign(campaign).await {
                tracing::error!(campaign = %id, error = %e, "the version in force cannot run");
            }
        }
        if let Some(present) = present {
            self.decide_all(present, true).await;
        }
        // Files changed just before start-up are waited for, and their applies, so that the
        // host serves what the folder says; but for at most three settle times: a file that
        // keeps changing, or a plugin slow to compile or to `init`, is left to the running
        // watcher, and the host serves meanwhile.
        let deadline = Instant::now() + self.settle * 3;
        while (self.files.values().any(|t| t.pending.is_some()) || !self.applying.is_empty())
            && Instant::now() < deadline
        {
            tokio::time::sleep(Duration::from_millis(20)).await;
            if let Some(present) = self.read_folder().await {
                self.decide_all(present, true).await;
            }
        }
        if !self.applying.is_empty() {
            tracing::warn!(campaigns = ?self.platform.applying_ids(),
                "serving before these campaign files are applied: their plugins are still loading");
        }
    }

    /// One pass over the folder.
    pub async fn scan(&mut self) {
        if let Some(present) = self.read_folder().await {
            self.decide_all(present, false).await;
        }
    }

    async fn decide_all(&mut self, present: HashMap<String, Read>, starting: bool) {
        self.finish_applies();
        let gone: Vec<String> = self
            .files
            .keys()
            .filter(|id| !present.contains_key(*id) && !self.is_applying(id))
            .cloned()
            .collect();
        for (id, read) in present {
            self.decide(&id, read, starting).await;
        }
        let now = Instant::now();
        for id in gone {
            let gone_id = id.clone();
            let Some(tracked) = self.files.get_mut(&id) else {
                continue;
            };
            let since = *tracked.missing_since.get_or_insert(now);
            if now.duration_since(since) < self.settle {
                continue;
            }
            self.files.remove(&id);
            // On a task of its own too: the campaign's lock may be held by a slow load.
            let platform = self.platform.clone();
            let removal = async move {
                remove_file_campaign(&platform, &id).await;
                (id, String::new(), Applied::Removed)
            };
            let task = self.applying.spawn(removal);
            self.applying_ids.insert(task.id(), gone_id);
        }
    }

    /// Whether `text`, already decided on, still says what runs: it was refused, or the
    /// document it applied is the one in force (the admin API may have changed it since).
    fn still_decided(&self, id: &str, decided: &(String, Decision), text: &str) -> bool {
        decided.0 == text
            && match &decided.1 {
                Decision::Refused => true,
                // A version whose plugins could not load (restored at start-up, loaded in the
                // background) is applied again once, as a change: it loads or is refused.
                Decision::Applied(spec) => {
                    self.platform.campaign(id).is_some_and(|c| c.spec() == spec)
                        && (self.platform.plugins_in_service(id)
                            || self.platform.plugins_loading(id))
                }
            }
    }

    /// Applies, refuses or waits on one file.
    async fn decide(&mut self, id: &str, read: Read, starting: bool) {
        if self.is_applying(id) {
            return; // read again once its apply has ended
        }
        let settle = self.settle;
        // An unreadable file is decided on as the text of its reason.
        let (text, readable) = match &read.text {
            Ok(text) => (text.clone(), true),
            Err(reason) => (format!("\u{0}unreadable: {reason}"), false),
        };
        let tracked = self.files.entry(id.to_owned()).or_default();
        tracked.missing_since = None;
        let decided = tracked.decided.take();
        let unchanged = decided
            .as_ref()
            .is_some_and(|d| self.still_decided(id, d, &text));
        let tracked = self.files.get_mut(id).expect("just inserted");
        tracked.decided = decided;
        if unchanged {
            tracked.pending = None;
            return;
        }
        // The admin API wrote this text and applied its document.
        if readable
            && self.platform.admin_wrote(id).as_deref() == Some(text.as_str())
            && let Some(running) = self.platform.campaign(id)
        {
            tracked.decided = Some((text, Decision::Applied(running.spec().clone())));
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
        if starting
            && let Ok(campaign) = parse(id, &text)
            && let Some(running) = self.platform.campaign(id)
            && running.spec() == campaign.spec()
        {
            // The version restored from the database is this file's: nothing to apply (its
            // plugins load in the background; if they cannot, it is listed as refused until
            // the file changes).
            tracked.decided = Some((text, Decision::Applied(campaign.spec().clone())));
            return;
        }
        let apply = Apply {
            platform: self.platform.clone(),
            dir: self.dir.clone(),
            id: id.to_owned(),
            read,
            text,
            starting,
        };
        self.platform.note_applying(id, true);
        let task = self.applying.spawn(apply.run());
        self.applying_ids.insert(task.id(), id.to_owned());
    }

    /// Scans every `every` until shutdown. Applies still under way then are dropped
    /// part-way; what a dropped apply wrote to the database is the version the next start
    /// restores.
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

/// One settled file's apply, run on a task of its own under the campaign's write lock.
struct Apply {
    platform: Arc<Platform>,
    dir: PathBuf,
    id: String,
    read: Read,
    /// The text decided on (for an unreadable file, its reason).
    text: String,
    starting: bool,
}

impl Apply {
    async fn run(self) -> (String, String, Applied) {
        let applied = self.apply().await;
        (self.id, self.text, applied)
    }

    async fn apply(&self) -> Applied {
        let Self {
            platform,
            id,
            read,
            text,
            ..
        } = self;
        let _writing = platform.campaign_writes(id).await;
        // Read again under the lock: the admin API may have written or removed it since.
        let root = std::fs::canonicalize(&self.dir).unwrap_or_else(|_| self.dir.clone());
        let readable = read.text.is_ok();
        let path = read.path.clone();
        if readable
            && tokio::task::spawn_blocking(move || read_bounded(&path, Some(&root)).ok())
                .await
                .ok()
                .flatten()
                .as_deref()
                != Some(text.as_str())
        {
            return Applied::Changed;
        }
        let campaign = match &read.text {
            Err(reason) => Err(reason.clone()),
            Ok(_) => parse(id, text).map_err(|e| e.to_string()),
        };
        let campaign = match campaign {
            Ok(campaign) => campaign,
            Err(reason) => {
                refuse(platform, id, &read.path, reason);
                return Applied::Decided(Decision::Refused);
            }
        };
        let spec = campaign.spec().clone();
        let running = platform.campaign(id);
        let before = running.as_ref().map(|c| c.spec().to_toml());
        if self.starting
            && running.as_ref().is_some_and(|c| *c.spec() == spec)
            && platform.plugins_in_service(id)
        {
            // The version restored from the database is this file's, plugins loaded: nothing
            // to apply.
            platform.clear_rejection(id);
            return Applied::Decided(Decision::Applied(spec));
        }
        match platform.apply_campaign(campaign).await {
            Ok(()) => {
                let after = spec.to_toml();
                platform.clear_rejection(id);
                tracing::info!(campaign = %id, "campaign applied");
                let plugins = crate::audit::plugins_in_force(platform, id);
                record_file_change(
                    platform,
                    "campaign.file",
                    id,
                    before,
                    Some(&after),
                    Some(plugins),
                )
                .await;
                Applied::Decided(Decision::Applied(spec))
            }
            Err(e) if passing(&e) => {
                tracing::warn!(campaign = %id, error = %e,
                    "campaign file not applied yet; trying again");
                Applied::Again
            }
            Err(e) => {
                refuse(platform, id, &read.path, e.to_string());
                Applied::Decided(Decision::Refused)
            }
        }
    }
}

/// Records in the audit log a change a campaign file made (the actor is the file watcher).
async fn record_file_change(
    platform: &Platform,
    action: &str,
    id: &str,
    before: Option<String>,
    after: Option<&str>,
    detail: Option<String>,
) {
    let change = crate::audit::Change {
        actor: crate::audit::FILE_ACTOR,
        action,
        target: id,
        before: before.as_deref(),
        after,
        detail,
    };
    crate::audit::record(platform.store(), change).await;
}

fn refuse(platform: &Platform, id: &str, path: &Path, reason: String) {
    tracing::error!(file = %path.display(), %reason,
        "campaign file refused; the version in force (if any) stays");
    platform.reject(id, format!("{}: {reason}", path.display()));
}

/// Stops the campaign of a file that is gone (under the campaign's lock), and records it.
async fn remove_file_campaign(platform: &Arc<Platform>, id: &str) {
    let _writing = platform.campaign_writes(id).await;
    platform.clear_rejection(id);
    let before = platform.campaign(id).map(|c| c.spec().to_toml());
    match platform.remove_campaign(id).await {
        Ok(true) => {
            tracing::info!(campaign = %id, "campaign file removed; campaign stopped");
            record_file_change(platform, "campaign.file_removed", id, before, None, None).await;
        }
        Ok(false) => {}
        Err(e) => tracing::warn!(campaign = %id, error = %e, "cannot stop campaign"),
    }
}
