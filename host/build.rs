//! Rebuilds the crate when a migration changes (`sqlx::migrate!` embeds them at compile time),
//! and, with Kafka, links the binary's calls of one librdkafka function through the guard of
//! `src/kafka_guard.rs`.
fn main() {
    println!("cargo:rerun-if-changed=../migrations");
    if std::env::var_os("CARGO_FEATURE_KAFKA").is_some() {
        println!("cargo:rustc-link-arg-bins=-Wl,--wrap=rd_kafka_metadata_update_op");
    }
}
