//! `firstcome plugin new NAME [--lang rust|python|js]`: a plugin project that builds and
//! passes its own test as it is: a Rust crate (built with cargo for `wasm32-wasip2`), a Python
//! module (built with componentize-py, tested with pytest), or a JavaScript module (built with
//! componentize-js, tested with node's test runner). It carries its own copy of the WIT package
//! and a sample event, so it builds and runs outside this repository.
//!
//! The projects' files are in `crates/plugin/templates/`, with `{name}` (the plugin's name),
//! `{module}` (the name with `_` for `-`, the component's file name) and the pinned toolchain
//! versions filled in.

use std::path::{Path, PathBuf};

/// The WIT package the host serves, as plugin authors get it.
pub const WIT: &str = include_str!("../../../wit/plugin.wit");

fn crate_name_ok(name: &str) -> bool {
    let mut bytes = name.bytes();
    matches!(bytes.next(), Some(b'a'..=b'z'))
        && name.len() <= 64
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_')
}

/// The componentize-py release (PyPI) the Python template is written and tested against.
pub const COMPONENTIZE_PY: &str = "0.25.1";

/// The `@bytecodealliance/componentize-js` release (npm) the JavaScript template is written and
/// tested against.
pub const COMPONENTIZE_JS: &str = "0.23.0";

/// An event as the host publishes it, for `firstcome plugin test`.
const SAMPLE_EVENT: &str = include_str!("../../../examples/events/coupon-issued.json");

/// The language of a new plugin project.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Lang {
    /// A Rust crate, built for `wasm32-wasip2` (the default).
    #[default]
    Rust,
    /// A Python module, built into a component by componentize-py.
    Python,
    /// A JavaScript (ES) module, built into a component by componentize-js.
    Js,
}

impl std::str::FromStr for Lang {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "rust" => Ok(Self::Rust),
            "python" => Ok(Self::Python),
            "js" => Ok(Self::Js),
            other => Err(format!(
                "unknown plugin language {other:?}: use rust, python or js"
            )),
        }
    }
}

/// A project's files: (path in the project, text with placeholders).
fn files(lang: Lang) -> Vec<(&'static str, &'static str)> {
    let common = [("wit/plugin.wit", WIT), ("event.json", SAMPLE_EVENT)];
    let own: &[(&str, &str)] = match lang {
        Lang::Rust => &[
            (
                "Cargo.toml",
                include_str!("../templates/rust/Cargo.toml.in"),
            ),
            ("src/lib.rs", include_str!("../templates/rust/lib.rs")),
            ("README.md", include_str!("../templates/rust/README.md")),
            (".gitignore", "/target\n/src/bindings.rs\n"),
        ],
        Lang::Python => &[
            ("app.py", include_str!("../templates/python/app.py")),
            (
                "test_app.py",
                include_str!("../templates/python/test_app.py"),
            ),
            (
                "requirements.txt",
                "componentize-py=={componentize_py}\npytest\n",
            ),
            ("README.md", include_str!("../templates/python/README.md")),
            (
                ".gitignore",
                "*.wasm\n__pycache__/\n.pytest_cache/\n.venv/\n",
            ),
        ],
        Lang::Js => &[
            ("package.json", include_str!("../templates/js/package.json")),
            ("logic.js", include_str!("../templates/js/logic.js")),
            (
                "logic.test.js",
                include_str!("../templates/js/logic.test.js"),
            ),
            ("app.js", include_str!("../templates/js/app.js")),
            ("README.md", include_str!("../templates/js/README.md")),
            (".gitignore", include_str!("../templates/js/gitignore")),
        ],
    };
    common.into_iter().chain(own.iter().copied()).collect()
}

/// Writes the project into `parent/NAME` (which must not exist) and returns its path.
pub fn create(name: &str, parent: &Path) -> Result<PathBuf, String> {
    create_in(name, parent, Lang::Rust)
}

/// [`create`] in `lang`. Errors: a name that is not a valid package name in every language
/// (a lowercase letter, then up to 63 of `a-z`, `0-9`, `-`, `_`), a folder that exists, or a
/// file that cannot be written (the message names it).
pub fn create_in(name: &str, parent: &Path, lang: Lang) -> Result<PathBuf, String> {
    if !crate_name_ok(name) {
        return Err(format!(
            "invalid plugin name {name:?}: use a lowercase letter, then up to 63 of a-z, 0-9, '-' and '_'"
        ));
    }
    let dir = parent.join(name);
    if dir.exists() {
        return Err(format!(
            "{} already exists; choose another name or folder",
            dir.display()
        ));
    }
    let module = name.replace('-', "_");
    for (file, template) in files(lang) {
        let text = if file == "wit/plugin.wit" || file == "event.json" {
            template.to_owned()
        } else {
            template
                .replace("{name}", name)
                .replace("{module}", &module)
                .replace("{componentize_py}", COMPONENTIZE_PY)
                .replace("{componentize_js}", COMPONENTIZE_JS)
        };
        let path = dir.join(file);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent).map_err(|e| format!("{}: {e}", parent.display()))?;
        }
        std::fs::write(&path, text).map_err(|e| format!("{}: {e}", path.display()))?;
    }
    Ok(dir)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_checked_and_folders_not_overwritten() {
        let dir = tempfile::tempdir().unwrap();
        assert!(
            create("Bad Name", dir.path())
                .unwrap_err()
                .contains("invalid plugin name")
        );
        let made = create("fraud-watch", dir.path()).unwrap();
        assert!(made.join("wit/plugin.wit").exists());
        assert!(
            create("fraud-watch", dir.path())
                .unwrap_err()
                .contains("already exists")
        );
        let py = create_in("py-watch", dir.path(), Lang::Python).unwrap();
        for file in [
            "app.py",
            "test_app.py",
            "wit/plugin.wit",
            "event.json",
            "README.md",
        ] {
            assert!(py.join(file).exists(), "{file}");
        }
        let js = create_in("js-watch", dir.path(), Lang::Js).unwrap();
        let package = std::fs::read_to_string(js.join("package.json")).unwrap();
        assert!(
            package.contains("\"name\": \"js-watch\"")
                && package.contains(&format!("\"{COMPONENTIZE_JS}\""))
                && package.contains("-o js_watch.wasm"),
            "{package}"
        );
        for (project, lang) in [(&made, Lang::Rust), (&py, Lang::Python), (&js, Lang::Js)] {
            for (file, _) in files(lang) {
                let text = std::fs::read_to_string(project.join(file)).unwrap();
                for placeholder in [
                    "{name}",
                    "{module}",
                    "{componentize_py}",
                    "{componentize_js}",
                ] {
                    assert!(!text.contains(placeholder), "{file}: {placeholder}");
                }
            }
        }
        assert!(
            "go".parse::<Lang>()
                .unwrap_err()
                .contains("rust, python or js")
        );
    }
}
