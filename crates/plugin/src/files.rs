//! Where component files may come from: inside `plugins.dir`, and never among the host's own
//! files in the data folder (the SQLite database, its journal, the admission record, the
//! mail folder).
//!
//! A campaign's `path` is taken from `plugins.dir` (a relative path) or as written (an
//! absolute one), resolved lexically first (so that `..` leaving the folder is refused
//! without touching the file system) and then with every link followed. A path outside the
//! folder, a link leading out of it, a file in the data folder (outside the campaign folder)
//! and a name not ending in `.wasm` are refused. The reason names the path as the campaign
//! gave it and the folder, and says nothing of the file itself: not whether it exists
//! outside the folder, not its digest, not its bytes.

use std::path::{Component, Path, PathBuf};

/// The folders that bound where plugins are read from.
#[derive(Clone, Debug)]
pub struct PluginFiles {
    /// `plugins.dir`, as configured (for messages).
    shown: PathBuf,
    /// `plugins.dir`, absolute and with links followed.
    dir: PathBuf,
    /// The data folder and the campaign folder, absolute and with links followed.
    data: PathBuf,
    campaigns: PathBuf,
}

impl PluginFiles {
    /// Bounds plugin files to `dir`, away from `data` except inside `campaigns`.
    pub fn new(dir: &Path, data: &Path, campaigns: &Path) -> Self {
        Self {
            shown: dir.to_owned(),
            dir: real(dir),
            data: real(data),
            campaigns: real(campaigns),
        }
    }

    /// The file `path` names, when it is one the host may read as a plugin; else why not
    /// (a reason that quotes nothing of the file).
    pub fn resolve(&self, path: &Path) -> Result<PathBuf, String> {
        let outside = || {
            format!(
                "{} is outside plugins.dir ({}): plugins are read only from there (set \
                 plugins.dir, or FIRSTCOME_PLUGINS__DIR, to the folder your components are \
                 built into)",
                path.display(),
                self.shown.display()
            )
        };
        if path.extension().and_then(|e| e.to_str()) != Some("wasm") {
            return Err(format!(
                "{}: a plugin is a .wasm file; name the component",
                path.display()
            ));
        }
        let joined = lexical(&self.dir.join(path));
        if !joined.starts_with(&self.dir) {
            return Err(outside());
        }
        // One answer for every failure: which one (no such file, not a folder, permission
        // denied) would say what exists behind a link out of the folder.
        let real = std::fs::canonicalize(&joined).map_err(|_| {
            format!(
                "{} is no readable file in plugins.dir ({})",
                path.display(),
                self.shown.display()
            )
        })?;
        self.admits(path, &real)?;
        Ok(real)
    }

    /// Whether `real` (a path with every link followed: what was resolved, or what an open
    /// file turned out to be) may be read as the plugin `path` names.
    pub fn admits(&self, path: &Path, real: &Path) -> Result<(), String> {
        if !real.starts_with(&self.dir) {
            return Err(format!(
                "{} is outside plugins.dir ({}): plugins are read only from there (set \
                 plugins.dir, or FIRSTCOME_PLUGINS__DIR, to the folder your components are \
                 built into)",
                path.display(),
                self.shown.display()
            ));
        }
        if real.starts_with(&self.data) && !real.starts_with(&self.campaigns) {
            return Err(format!(
                "{} is in the host's data folder: plugins are never read from there",
                path.display()
            ));
        }
        if real.extension().and_then(|e| e.to_str()) != Some("wasm") {
            return Err(format!(
                "{}: links to a file that is not a .wasm file",
                path.display()
            ));
        }
        Ok(())
    }
}

/// `path` made absolute (from the working folder) with its links followed, or lexically when
/// it does not exist yet.
fn real(path: &Path) -> PathBuf {
    std::fs::canonicalize(path).unwrap_or_else(|_| {
        let absolute = std::env::current_dir()
            .map(|cwd| cwd.join(path))
            .unwrap_or_else(|_| path.to_owned());
        lexical(&absolute)
    })
}

/// `path` with `.` and `..` resolved by name, without asking the file system.
fn lexical(path: &Path) -> PathBuf {
    let mut out = PathBuf::new();
    for component in path.components() {
        match component {
            Component::ParentDir => {
                out.pop();
            }
            Component::CurDir => {}
            other => out.push(other.as_os_str()),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_wasm_files_inside_the_folder_and_away_from_the_data() {
        let root = tempfile::tempdir().unwrap();
        let plugins = root.path().join("plugins");
        let data = root.path().join("data");
        let campaigns = data.join("campaigns");
        for d in [&plugins, &campaigns] {
            std::fs::create_dir_all(d).unwrap();
        }
        std::fs::write(plugins.join("a.wasm"), b"x").unwrap();
        std::fs::write(data.join("firstcome.db"), b"x").unwrap();
        std::fs::write(root.path().join("secret.wasm"), b"x").unwrap();
        std::os::unix::fs::symlink(root.path().join("secret.wasm"), plugins.join("out.wasm"))
            .unwrap();
        std::os::unix::fs::symlink(data.join("firstcome.db"), plugins.join("db.wasm")).unwrap();
        let files = PluginFiles::new(&plugins, &data, &campaigns);
        assert!(files.resolve(Path::new("a.wasm")).is_ok());
        assert!(files.resolve(&plugins.join("a.wasm")).is_ok());
        for (path, needle) in [
            ("../secret.wasm", "outside plugins.dir"),
            ("/etc/passwd", ".wasm file"),
            ("../../../../etc/x.wasm", "outside plugins.dir"),
            ("out.wasm", "outside plugins.dir"),
            ("db.wasm", "outside plugins.dir"),
            ("missing.wasm", "no readable file"),
        ] {
            let e = files.resolve(Path::new(path)).unwrap_err();
            assert!(e.contains(needle), "{path}: {e}");
        }
        // The default folder, the campaign folder inside the data folder: the database next
        // to it stays out of reach.
        let files = PluginFiles::new(&data, &data, &campaigns);
        std::fs::write(campaigns.join("c.wasm"), b"x").unwrap();
        std::fs::write(data.join("x.wasm"), b"x").unwrap();
        assert!(files.resolve(Path::new("campaigns/c.wasm")).is_ok());
        let e = files.resolve(Path::new("x.wasm")).unwrap_err();
        assert!(e.contains("data folder"), "{e}");
    }
}
