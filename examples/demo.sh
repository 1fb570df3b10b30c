#!/usr/bin/env bash
# The demo on the embedded default (SQLite, in-process queue and event log): builds the
# reference plugins for wasm32-wasip2 into plugins/target (the plugins folder it serves with)
# while the host builds, then serves examples/campaigns on http://127.0.0.1:8080. Extra
# arguments go to `serve`.
#
# The host is built without the engines the demo does not use (`--no-default-features`: no
# Redis, Kafka, MySQL or PostgreSQL client), which takes librdkafka's C build and three
# drivers out of a first build. `cargo build --release` builds them all.
set -euo pipefail
cd "$(dirname "$0")/.."
if command -v rustup >/dev/null; then
  rustup target add wasm32-wasip2 >/dev/null
fi
mkdir -p plugins/target
cargo build --release --locked --manifest-path plugins/Cargo.toml --target wasm32-wasip2 \
  --target-dir plugins/target >plugins/target/build.log 2>&1 &
plugins=$!
cargo build --release --locked --no-default-features --bin firstcome
if ! wait "$plugins"; then
  cat plugins/target/build.log >&2
  echo "building the reference plugins failed (log above)" >&2
  exit 1
fi
exec cargo run --release --locked --no-default-features --bin firstcome -- \
  serve --campaigns examples/campaigns --plugins plugins/target/wasm32-wasip2/release "$@"
