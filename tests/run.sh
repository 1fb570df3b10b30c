#!/usr/bin/env bash
# The whole test suite: starts the services the tests need when they are down, installs the
# pinned test tools, then runs formatting and lint checks and every test against real Redis,
# MariaDB, PostgreSQL and a Kafka-protocol broker.
# Usage: bash tests/run.sh   (extra arguments go to `cargo test`)
#
# A first run on a new machine installs tools while the project builds (they only need to be
# ready when the tests start); a repeated run finds them in place and skips them. Each phase's
# wall time is printed at the end, also when a phase fails.
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$HOME/.cargo/bin:$PATH"
# Test tools that are built or installed once and kept between runs.
tools="${FC_TOOLS_DIR:-$HOME/.cache/firstcome-tools}"
logs="$tools/logs"
mkdir -p "$logs"

log() { printf '\n== %s\n' "$*"; }

# --- phase timing -------------------------------------------------------------------------
run_started=$(date +%s)
timings=()
phase_name="" phase_started=0
phase() { # phase NAME: ends the running phase and starts NAME
  local now; now=$(date +%s)
  [[ -n "$phase_name" ]] && timings+=("$phase_name|$((now - phase_started))")
  phase_name=$1 phase_started=$now
  log "$1"
}
declare -A bg_pids=()
background() { # background NAME COMMAND...: runs while the build goes on; output in $logs/NAME.log
  local name=$1; shift
  echo "started in the background: $name (log: $logs/$name.log)"
  (
    started=$(date +%s)
    rc=0; "$@" >"$logs/$name.log" 2>&1 || rc=$?
    echo "$(($(date +%s) - started)) $rc" >"$logs/$name.time"
    exit "$rc"
  ) &
  bg_pids[$name]=$!
}
await() { # await NAME: waits for a background step; its failure ends the run with its log
  local name=$1 waited_from; waited_from=$(date +%s)
  [[ -n "${bg_pids[$name]:-}" ]] || return 0
  if ! wait "${bg_pids[$name]}"; then
    tail -n 60 "$logs/$name.log" >&2
    echo "background step failed: $name (whole log: $logs/$name.log)" >&2
    exit 1
  fi
  unset "bg_pids[$name]"
  local waited=$(($(date +%s) - waited_from))
  ((waited > 0)) && echo "waited ${waited}s for $name"
  return 0
}
print_timings() {
  local now; now=$(date +%s)
  [[ -n "$phase_name" ]] && timings+=("$phase_name|$((now - phase_started))")
  phase_name=""
  printf '\n== timings (wall seconds)\n'
  local entry
  for entry in "${timings[@]}"; do printf '  %-52s %6s\n' "${entry%%|*}" "${entry##*|}"; done
  local file
  for file in "$logs"/*.time; do
    [[ -e "$file" && "$file" -nt "$logs/.run-started" ]] || continue
    read -r secs rc <"$file"
    printf '  %-52s %6s%s\n' "background: $(basename "$file" .time)" "$secs" \
      "$( ((rc == 0)) || echo "  (failed)")"
  done
  printf '  %-52s %6s\n' "total" "$((now - run_started))"
}
cleanup() {
  local pid
  for pid in "${bg_pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  [[ -n "${broker_pid:-}" ]] && kill "$broker_pid" 2>/dev/null || true
  [[ -n "${kafka_dir:-}" ]] && rm -rf "$kafka_dir"
  if [[ -n "${cluster_dir:-}" ]]; then
    bash tests/redis-cluster.sh stop "$cluster_dir" || true
    rm -rf "$cluster_dir"
  fi
  print_timings
}
touch "$logs/.run-started"
trap cleanup EXIT

# --- services -----------------------------------------------------------------------------
phase "services"
source tests/services.sh

# --- tools, installed while the project builds ----------------------------------------------
phase "tools: start what is missing"
# Debian's packages: openssl signs FCM grants, a real Prometheus scrapes a test host, the
# pages are tested in Chromium through chromedriver, HAProxy balances three test hosts, and
# Node.js builds and tests JavaScript plugins (where the machine has none of its own), and
# libfaketime runs a host whose clock is off.
missing=()
command -v openssl >/dev/null || missing+=(openssl)
command -v prometheus >/dev/null || missing+=(prometheus)
command -v chromium >/dev/null || missing+=(chromium)
command -v chromedriver >/dev/null || missing+=(chromium-driver)
command -v haproxy >/dev/null || missing+=(haproxy)
command -v npm >/dev/null || missing+=(nodejs npm)
command -v faketime >/dev/null || missing+=(faketime)
if ((${#missing[@]})); then
  background apt bash -c 'apt-get update -qq &&
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$@"' \
    apt "${missing[@]}"
fi
# Python tools (schemathesis, aiosmtpd and all they depend on) at the exact versions and hashes
# of tests/tools/requirements.txt, in a virtual environment of their own; rebuilt only when
# that lock file changes. Its `python3` comes first on PATH for the tests.
venv="$tools/venv"
lock_sum=$(sha256sum tests/tools/requirements.txt | cut -d' ' -f1)
if [[ "$(cat "$venv/.lock-sha256" 2>/dev/null)" != "$lock_sum" ]]; then
  background python-tools bash -c 'rm -rf "$1" && python3 -m venv "$1" &&
    "$1/bin/pip" install --quiet --disable-pip-version-check --require-hashes --no-deps \
      -r tests/tools/requirements.txt && echo "$2" >"$1/.lock-sha256"' python-tools "$venv" "$lock_sum"
fi
export PATH="$venv/bin:$PATH"
# The JavaScript plugin toolchain (componentize-js) at the versions and hashes of
# tests/tools/package-lock.json, rebuilt only when that lock changes. The tests link its
# node_modules into the JavaScript projects they build, as `npm install` would fill them.
node_tools="$tools/node"
node_sum=$(cat tests/tools/package.json tests/tools/package-lock.json | sha256sum | cut -d' ' -f1)
install_node_tools() {
  rm -rf "$node_tools" && mkdir -p "$node_tools" &&
    cp tests/tools/package.json tests/tools/package-lock.json "$node_tools"/ &&
    (cd "$node_tools" && npm ci --no-audit --no-fund) && echo "$node_sum" >"$node_tools/.lock-sha256"
}
node_tools_later=""
if [[ "$(cat "$node_tools/.lock-sha256" 2>/dev/null)" != "$node_sum" ]]; then
  # Without npm yet, after apt has installed it.
  if command -v npm >/dev/null; then background node-tools install_node_tools; else node_tools_later=1; fi
fi
export FC_TEST_NODE_MODULES="$node_tools/node_modules"
# Rust-built tools, pinned, kept in ~/.cargo/bin. Built at opt-level 1, without the link-time
# optimisation and single codegen unit some of them ask for (cargo-deny, cargo-component): they
# only serve the tests, and these settings build them in a fraction of the time. Each has its
# own build directory so that neither waits on the other or on the project's build.
install_crate() { # install_crate CRATE@VERSION [cargo install options...]
  local crate=$1; shift
  # At the lowest priority: on a new machine the tests run while these still build.
  renice -n 19 -p "$BASHPID" >/dev/null 2>&1 || true
  CARGO_PROFILE_RELEASE_OPT_LEVEL=1 CARGO_PROFILE_RELEASE_LTO=false \
    CARGO_PROFILE_RELEASE_CODEGEN_UNITS=16 CARGO_PROFILE_RELEASE_DEBUG=false \
    cargo install "$crate" --locked \
    --target-dir "$tools/build/${crate%@*}" "$@"
  rm -rf "$tools/build/${crate%@*}"
}
# A Kafka-protocol broker (tansu) with the two storage engines the tests use: memory:// for the
# shared broker, sqlite:// (libSQL) for brokers that restart.
command -v tansu >/dev/null || background tansu install_crate tansu@0.6.0 --features dynostore,libsql
# Plugins must also build with cargo-component, the other way plugin authors build them.
command -v cargo-component >/dev/null || background cargo-component install_crate cargo-component@0.21.1
# Licences, bans and sources of the host's dependencies (deny.toml).
command -v cargo-deny >/dev/null || background cargo-deny install_crate cargo-deny@0.20.2
# Plugins build for wasm32-wasip2.
rustup target add wasm32-wasip2

# --- checks and builds --------------------------------------------------------------------
phase "format"
cargo fmt --all -- --check

phase "layering: crates depend one way, the core does no I/O"
# Cargo refuses cycles between crates; this keeps the layers of docs/architecture.md: the core
# crate has only the direct dependencies listed here and touches no file, socket or process,
# and no crate names a workspace crate at or above it.
deps_of() { # deps_of CRATE [DEPTH]: CRATE's normal dependencies (to DEPTH), one per line
  local out
  out=$(cargo tree ${FC_TREE_FLAGS---locked} -p "$1" -e normal --prefix none ${2:+--depth "$2"}) \
    || return 1
  sed 's/ .*//' <<<"$out" | sort -u | { grep -vx "$1" || true; }
}
core_allowed="chrono crc32fast secrecy serde thiserror toml unicode-properties utoipa uuid"
deps=$(deps_of firstcome-core 1)
for dep in $deps; do
  [[ " $core_allowed " == *" $dep "* ]] || { echo "firstcome-core depends on $dep" >&2; exit 1; }
done
if grep -rnE 'std::(fs|net|process)|tokio::' crates/core/src; then
  echo "firstcome-core must do no I/O (lines above)" >&2
  exit 1
fi
check_below() { # check_below CRATE ALLOWED...: CRATE's workspace dependencies are among ALLOWED
  local crate=$1 deps dep; shift
  deps=$(deps_of "$crate")
  for dep in $(grep '^firstcome-' <<<"$deps" || true); do
    [[ " $* " == *" $dep "* ]] || { echo "$crate depends on $dep, which its layer may not use (docs/architecture.md)" >&2; exit 1; }
  done
}
check_below firstcome-plugin-wit
check_below firstcome-store firstcome-core
check_below firstcome-admission firstcome-core firstcome-store
check_below firstcome-bus firstcome-core firstcome-store
check_below firstcome-plugin firstcome-core firstcome-store firstcome-bus firstcome-plugin-wit
check_below firstcome-platform firstcome-core firstcome-store firstcome-admission firstcome-bus \
  firstcome-plugin firstcome-plugin-wit
check_below firstcome-api firstcome-core firstcome-store firstcome-admission firstcome-bus \
  firstcome-plugin firstcome-plugin-wit firstcome-platform
echo "ok"

phase "lint: host"
cargo clippy --workspace --all-targets --locked -- -D warnings

phase "lint: the demo's build, without the optional engines"
# examples/demo.sh builds the binary with --no-default-features; the engine crates must build
# and pass their own tests without their engines too.
cargo clippy --locked -p firstcome --no-default-features --bin firstcome -- -D warnings
cargo clippy --locked -p firstcome-store -p firstcome-admission -p firstcome-bus \
  --no-default-features --all-targets -- -D warnings
cargo test --locked -p firstcome-store -p firstcome-admission -p firstcome-bus \
  --no-default-features --lib

phase "lint and unit tests: plugin workspaces"
for workspace in plugins tests/plugins examples/plugins; do
  (cd "$workspace" && cargo fmt --all -- --check \
    && cargo clippy --release --locked --target wasm32-wasip2 -- -D warnings \
    && cargo test --release --locked --target "$(rustc -vV | sed -n 's/^host: //p')")
done

# Build first, then run under a time limit: a failing Kafka test can leave librdkafka waiting on
# a broker that is gone, and a hang should fail the run, not eat CI's 90 minutes.
phase "build: tests"
cargo test --workspace --locked --no-run
cargo build --locked --bin firstcome

# --- the tests ----------------------------------------------------------------------------
phase "tools: wait for the rest"
await apt
await python-tools
if [[ -n "$node_tools_later" ]]; then install_node_tools; fi
await node-tools
python3 -m schemathesis.cli --version
# The suite shares one Redis Cluster (three primaries, a replica each); tests that fail nodes
# over start their own.
if [[ -z "${FC_TEST_REDIS_CLUSTER_URL:-}" ]]; then
  cluster_dir=$(mktemp -d)
  FC_TEST_REDIS_CLUSTER_URL=$(bash tests/redis-cluster.sh start "$cluster_dir")
  export FC_TEST_REDIS_CLUSTER_URL
fi
echo "redis cluster: $FC_TEST_REDIS_CLUSTER_URL"
# Each test makes its own database (fct_*); drop those earlier runs left behind.
for db in $(mysql -h 127.0.0.1 -uroot -N -e "SHOW DATABASES LIKE 'fct\_%'"); do
  mysql -h 127.0.0.1 -uroot -e "DROP DATABASE \`$db\`"
done
for db in $(psql -h 127.0.0.1 -U postgres -At -c "SELECT datname FROM pg_database WHERE datname LIKE 'fct\_%'"); do
  psql -h 127.0.0.1 -U postgres -q -c "DROP DATABASE \"$db\""
done

# The suite shares one broker; tests that restart a broker start their own.
start_broker() {
  [[ -n "${FC_TEST_KAFKA_BROKERS:-}" ]] && return 0
  kafka_dir=$(mktemp -d)
  local port
  port=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
  tansu broker --listener-url "tcp://127.0.0.1:$port" --advertised-listener-url "tcp://127.0.0.1:$port" \
    --storage-engine memory://tansu/ >"$kafka_dir/broker.log" 2>&1 &
  broker_pid=$!
  export FC_TEST_KAFKA_BROKERS="127.0.0.1:$port"
  wait_until 60 bash -c "echo > /dev/tcp/127.0.0.1/$port"
  kill -0 "$broker_pid" || { cat "$kafka_dir/broker.log"; exit 1; }
  echo "kafka-protocol broker: $FC_TEST_KAFKA_BROKERS"
}

# On a new machine the broker (tansu) is still building when everything else is ready: the
# tests that need no broker (every test whose name does not say "kafka") run meanwhile, and
# the Kafka tests once it is in place. Otherwise, or with arguments, one run of everything.
if [[ -n "${bg_pids[tansu]:-}" ]] && kill -0 "${bg_pids[tansu]}" 2>/dev/null && (($# == 0)); then
  phase "tests: all but Kafka (the broker is still building)"
  timeout --kill-after=30s 30m cargo test --workspace --locked -- --skip kafka
  kafka_later=1
else
  await tansu
  start_broker
  phase "tests"
  timeout --kill-after=30s 30m cargo test --workspace --locked "$@"
  kafka_later=""
fi

phase "plugins built with cargo component load and run in the host"
await cargo-component
component_dir="${CARGO_TARGET_DIR:-$PWD/target}/cargo-component"
(cd plugins && cargo component build --release --locked --target-dir "$component_dir")
firstcome="${CARGO_TARGET_DIR:-$PWD/target}/debug/firstcome"
for plugin in notification history stats; do
  "$firstcome" plugin test "$component_dir/wasm32-wasip1/release/$plugin.wasm" \
    --event examples/events/coupon-issued.json >/dev/null
  echo "$plugin: ok"
done
# The demo's campaign file names its plugins from the demo's plugins folder.
FIRSTCOME_PLUGINS__DIR="$component_dir/wasm32-wasip1/release" \
  "$firstcome" campaign validate examples/campaigns/spring-sale.toml

phase "supply chain: cargo deny"
await cargo-deny
cargo deny --locked check licenses bans sources
# Advisories need the RustSec database from GitHub: checked where it can be fetched.
if timeout 120 cargo deny --locked fetch db >/dev/null 2>&1; then
  cargo deny --locked check advisories
else
  echo "advisory database unreachable from here: advisories not checked"
fi

if [[ -n "$kafka_later" ]]; then
  phase "tools: wait for the broker"
  await tansu
  start_broker
  phase "tests: Kafka"
  timeout --kill-after=30s 20m cargo test --workspace --locked -- kafka
fi
