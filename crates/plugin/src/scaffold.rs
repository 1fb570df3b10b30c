//! `firstcome plugin new NAME`: a plugin crate that builds and passes its own test as it is.
//! It carries its own copy of the WIT package, so it builds outside this repository.

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

/// Writes the crate into `parent/NAME` (which must not exist) and returns its path.
pub fn create(name: &str, parent: &Path) -> Result<PathBuf, String> {
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
    let files: [(&str, String); 5] = [
        ("Cargo.toml", cargo_toml(name)),
        ("wit/plugin.wit", WIT.to_owned()),
        ("src/lib.rs", LIB_RS.replace("{name}", name)),
        (
            "README.md",
            README.replace("{name}", name).replace("{module}", &module),
        ),
        (".gitignore", "/target\n/src/bindings.rs\n".to_owned()),
    ];
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
firstcome plugin test target/wasm32-wasip2/release/{module}.wasm --event event.json
```

`event.json` is an event as the host publishes it (the firstcome repository has one in
`examples/events/coupon-issued.json`), or a dead letter as `firstcome dlt show` prints it.

`cargo component build --release` builds it too. In a campaign file:

```toml
[plugins.{name}]
path = "/path/to/{module}.wasm"
grants = ["kv"]
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
    }
}
