//! `firstcome plugin new NAME [--lang rust|python]`: a plugin project that builds and passes
//! its own test as it is: a Rust crate (built with cargo for `wasm32-wasip2`), or a Python
//! module (built with componentize-py, tested with pytest). It carries its own copy of the WIT
//! package and a sample event, so it builds and runs outside this repository.

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

/// The componentize-py release the Python template is written and tested against.
pub const COMPONENTIZE_PY: &str = "0.25.1";

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
}

impl std::str::FromStr for Lang {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "rust" => Ok(Self::Rust),
            "python" => Ok(Self::Python),
            other => Err(format!(
                "unknown plugin language {other:?}: use rust or python (JavaScript is planned)"
            )),
        }
    }
}

/// Writes the project into `parent/NAME` (which must not exist) and returns its path.
pub fn create(name: &str, parent: &Path) -> Result<PathBuf, String> {
    create_in(name, parent, Lang::Rust)
}

/// [`create`] in `lang`.
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
    let files: Vec<(&str, String)> = match lang {
        Lang::Rust => vec![
            ("Cargo.toml", cargo_toml(name)),
            ("wit/plugin.wit", WIT.to_owned()),
            ("src/lib.rs", LIB_RS.replace("{name}", name)),
            (
                "README.md",
                README.replace("{name}", name).replace("{module}", &module),
            ),
            ("event.json", SAMPLE_EVENT.to_owned()),
            (".gitignore", "/target\n/src/bindings.rs\n".to_owned()),
        ],
        Lang::Python => vec![
            ("wit/plugin.wit", WIT.to_owned()),
            ("app.py", APP_PY.replace("{name}", name)),
            ("test_app.py", TEST_APP_PY.to_owned()),
            (
                "requirements.txt",
                format!("componentize-py=={COMPONENTIZE_PY}\npytest\n"),
            ),
            (
                "README.md",
                README_PY
                    .replace("{name}", name)
                    .replace("{module}", &module)
                    .replace("{componentize_py}", COMPONENTIZE_PY),
            ),
            ("event.json", SAMPLE_EVENT.to_owned()),
            (
                ".gitignore",
                "*.wasm\n__pycache__/\n.pytest_cache/\n".to_owned(),
            ),
        ],
    };
    for (file, text) in files {
        let path = dir.join(file);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent).map_err(|e| format!("{}: {e}", parent.display()))?;
        }
        std::fs::write(&path, text).map_err(|e| format!("{}: {e}", path.display()))?;
    }
    Ok(dir)
}

fn cargo_toml(name: &str) -> String {
    format!(
        r#"[package]
name = "{name}"
version = "0.1.0"
edition = "2024"
publish = false

[lib]
crate-type = ["cdylib", "rlib"]

[target.'cfg(target_arch = "wasm32")'.dependencies]
wit-bindgen = "0.61.1"

[package.metadata.component]
package = "example:{name}"

[package.metadata.component.target]
path = "wit"
world = "consumer"

[profile.release]
opt-level = "s"
lto = true
strip = true

# Its own workspace, wherever it is created.
[workspace]
"#
    )
}

const LIB_RS: &str = r#"//! {name}: a firstcome consumer plugin.
//!
//! The logic is plain Rust (tested natively with `cargo test`); the component glue at the
//! bottom connects it to the host's capabilities (see wit/plugin.wit).

/// What the plugin logs for an issued coupon.
pub fn describe(user_id: &str, campaign_name: &str, position: i64) -> String {
    format!("{user_id} got coupon #{position} of {campaign_name}")
}

/// The kv counter the plugin keeps per age group.
pub fn counter_key(age_group: Option<&str>) -> String {
    format!("issued.{}", age_group.unwrap_or("unknown"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn describes_an_issuance() {
        assert_eq!(describe("u1", "Spring", 3), "u1 got coupon #3 of Spring");
        assert_eq!(counter_key(None), "issued.unknown");
        assert_eq!(counter_key(Some("20s")), "issued.20s");
    }
}

#[cfg(target_arch = "wasm32")]
mod component {
    wit_bindgen::generate!({ path: "wit", world: "consumer" });

    use exports::firstcome::plugin::handler::Guest;
    use firstcome::plugin::log::{self, Level};
    use firstcome::plugin::kv;
    use firstcome::plugin::types::{Event, HandleError};

    struct Plugin;

    impl Guest for Plugin {
        fn handle(event: Event) -> Result<(), HandleError> {
            match event {
                Event::CouponIssued(c) => {
                    log::log(Level::Info, &crate::describe(&c.user_id, &c.campaign_name, c.position));
                    // Needs `grants = ["kv"]` in the campaign file.
                    kv::increment(&crate::counter_key(c.age_group.as_deref()), 1);
                }
            }
            Ok(())
        }
    }

    export!(Plugin);
}
"#;

const README: &str = r#"# {name}

A firstcome consumer plugin.

```sh
rustup target add wasm32-wasip2
cargo test                                          # the logic, natively
cargo build --release --target wasm32-wasip2        # → target/wasm32-wasip2/release/{module}.wasm
firstcome plugin test target/wasm32-wasip2/release/{module}.wasm --event event.json --grants kv
```

`event.json` is an event as the host publishes it; a dead letter as `firstcome dlt show`
prints it works too.

`cargo component build --release` builds it too. In a campaign file:

```toml
[plugins.{name}]
path = "/path/to/{module}.wasm"
grants = ["kv"]
```

See docs/plugins.md in the firstcome repository for the capabilities, limits and error semantics.
"#;

const APP_PY: &str = r#""""{name}: a firstcome consumer plugin, in Python.

The logic is plain Python, tested natively with pytest (test_app.py). The class at the bottom
connects it to the host's capabilities (wit/plugin.wit); componentize-py generates the
`wit_world` bindings when it builds the component.
"""


def describe(user_id: str, campaign_name: str, position: int) -> str:
    """What the plugin logs for an issued coupon."""
    return f"{user_id} got coupon #{position} of {campaign_name}"


def counter_key(age_group: str | None) -> str:
    """The kv counter the plugin keeps per age group."""
    return f"issued.{age_group or 'unknown'}"


try:
    from componentize_py_types import Err
    from wit_world import exports
    from wit_world.imports import kv, log, types
except ImportError:  # natively (pytest): the bindings exist only in the component
    exports = None

if exports is not None:

    class Handler(exports.Handler):
        def handle(self, event: "types.Event") -> None:
            try:
                handle(event)
            except Err:
                raise  # HandleError_Permanent goes straight to the dead letters
            except Exception as e:
                # Retried with back-off, then dead-lettered, with its message: an exception
                # left to escape would trap, and its message would be lost.
                raise Err(types.HandleError_Retryable(f"{type(e).__name__}: {e}"[:1000]))

    def handle(event: "types.Event") -> None:
        if isinstance(event, types.Event_CouponIssued):
            c = event.value
            log.log(log.Level.INFO, describe(c.user_id, c.campaign_name, c.position))
            # Needs `grants = ["kv"]` in the campaign file.
            kv.increment(counter_key(c.age_group), 1)
"#;

const TEST_APP_PY: &str = r#"from app import counter_key, describe


def test_describes_an_issuance():
    assert describe("u1", "Spring", 3) == "u1 got coupon #3 of Spring"
    assert counter_key(None) == "issued.unknown"
    assert counter_key("20s") == "issued.20s"
"#;

const README_PY: &str = r#"# {name}

A firstcome consumer plugin, in Python.

```sh
python3 -m pip install -r requirements.txt          # componentize-py {componentize_py}, pytest
python3 -m pytest                                   # the logic, natively
componentize-py --wit-path wit --world consumer componentize -p . app -o {module}.wasm
firstcome plugin test {module}.wasm --event event.json --grants kv
```

`event.json` is an event as the host publishes it; a dead letter as `firstcome dlt show`
prints it works too. The component carries the Python interpreter: about 18 MB, several
seconds to compile when a host first loads it (see docs/plugins.md in the firstcome
repository). In a campaign file:

```toml
[plugins.{name}]
path = "/path/to/{module}.wasm"
grants = ["kv"]
reuse = 128          # recommended: an interpreter is costly to start for every event
```

See docs/plugins.md in the firstcome repository for the capabilities, limits and error semantics.
"#;

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
        assert!("js".parse::<Lang>().unwrap_err().contains("rust or python"));
    }
}
