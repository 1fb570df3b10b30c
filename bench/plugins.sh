#!/usr/bin/env bash
# The plugin benchmark: events per second through the stats plugin as a sandboxed component
# (a fresh instance per event, as the host runs it) against the same logic compiled natively
# into the harness, in one run; plus instantiation-plus-call time p50/p99 per event.
# Usage: bash bench/plugins.sh [--plugin-events N]
set -euo pipefail
cd "$(dirname "$0")/.."
command -v rustup >/dev/null && rustup target add wasm32-wasip2 >/dev/null
target="${CARGO_TARGET_DIR:-$PWD/target}"
cargo build --release --locked --manifest-path plugins/Cargo.toml --target wasm32-wasip2 \
  --target-dir "$target"
cargo run --release --locked -p firstcome-bench -- --only plugin \
  --plugins "$target/wasm32-wasip2/release" "$@"
