#!/usr/bin/env bash
# The languages benchmark: the stats plugin's counting logic built from Rust, Python
# (componentize-py) and JavaScript (componentize-js), each run in the host's sandbox with a
# fresh instance per event and with reuse = 128: component size, compile (first load) time,
# first call, events/s and per-event p50/p99, checked against the native logic's counters.
# Uses the toolchains tests/run.sh installs under ~/.cache/firstcome-tools (run it once first).
# Usage: bash bench/languages.sh [--language-events N]
set -euo pipefail
cd "$(dirname "$0")/.."
tools="${FC_TOOLS_DIR:-$HOME/.cache/firstcome-tools}"
componentize_py="$tools/venv/bin/componentize-py"
componentize_js="$tools/node/node_modules/.bin/componentize-js"
for tool in "$componentize_py" "$componentize_js"; do
  [[ -x "$tool" ]] || { echo "$tool is missing: run bash tests/run.sh once to install it" >&2; exit 1; }
done
command -v rustup >/dev/null && rustup target add wasm32-wasip2 >/dev/null
target="${CARGO_TARGET_DIR:-$PWD/target}"
out="$target/components/bench"
mkdir -p "$out"
cargo build --release --locked --manifest-path plugins/Cargo.toml --target wasm32-wasip2 \
  --target-dir "$target"
(cd bench/plugins/python/stats && "$componentize_py" --wit-path ../../../../wit --world consumer \
  componentize -p . app -o "$out/python_stats.wasm")
(cd bench/plugins/js/stats && "$componentize_js" app.js --wit ../../../../wit \
  --world-name consumer --disable http fetch-event -o "$out/js_stats.wasm")
cargo run --release --locked -p firstcome-bench -- --only languages \
  --plugins "$target/wasm32-wasip2/release" --language-plugins "$out" "$@"
