#!/usr/bin/env bash
# The demo on the embedded default (SQLite, in-process queue and event log): builds the
# reference plugins for wasm32-wasip2 into plugins/target (where the demo campaign file points),
# then serves examples/campaigns on http://127.0.0.1:8080. Extra arguments go to `serve`.
set -euo pipefail
cd "$(dirname "$0")/.."
if command -v rustup >/dev/null; then
  rustup target add wasm32-wasip2 >/dev/null
fi
cargo build --release --locked --manifest-path plugins/Cargo.toml --target wasm32-wasip2 \
  --target-dir plugins/target
exec cargo run --release --locked -- serve --campaigns examples/campaigns "$@"
