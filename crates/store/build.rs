//! Re-runs the build when a migration is added, so that `sqlx::migrate!` embeds it.

fn main() {
    println!("cargo:rerun-if-changed=../../migrations");
}
