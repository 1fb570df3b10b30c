#!/usr/bin/env bash
# The whole test suite: starts the services the tests need when they are down, then runs
# formatting and lint checks and every test against real Redis, MariaDB and PostgreSQL.
# Usage: bash tests/run.sh   (extra arguments go to `cargo test`)
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$HOME/.cargo/bin:$PATH"

log() { printf '\n== %s\n' "$*"; }

wait_until() { # wait_until SECONDS COMMAND...
  local deadline=$((SECONDS + $1)); shift
  until "$@" >/dev/null 2>&1; do
    if ((SECONDS >= deadline)); then echo "timed out waiting for: $*" >&2; return 1; fi
    sleep 0.5
  done
}

log "services"
if ! redis-cli -h 127.0.0.1 -p 6379 ping >/dev/null 2>&1; then
  mkdir -p /var/lib/redis /var/log/redis
  redis-server --daemonize yes --bind 127.0.0.1 -::1 --port 6379 --save "" --appendonly no \
    --dir /var/lib/redis --logfile /var/log/redis/ci.log
fi
wait_until 30 redis-cli -h 127.0.0.1 -p 6379 ping
if ! pg_isready -h 127.0.0.1 -p 5432 >/dev/null 2>&1; then
  pg_ctlcluster --skip-systemctl-redirect "$(ls /etc/postgresql)" main start
fi
wait_until 60 pg_isready -h 127.0.0.1 -p 5432
if ! mysqladmin -h 127.0.0.1 -uroot ping >/dev/null 2>&1; then
  start-stop-daemon --start --oknodo --background --exec /usr/sbin/mariadbd
fi
wait_until 60 mysqladmin -h 127.0.0.1 -uroot ping
echo "redis, postgresql, mariadb: up"

# A Kafka-protocol broker: tansu, built from crates.io once (about 15 minutes on two cores)
# and kept in ~/.cargo/bin. The suite shares one broker; tests that restart a broker start
# their own.
if ! command -v tansu >/dev/null 2>&1; then
  log "installing the tansu broker (first run only)"
  cargo install tansu --locked --features dynostore,libsql
fi
if [[ -z "${FC_TEST_KAFKA_BROKERS:-}" ]]; then
  kafka_dir=$(mktemp -d)
  port=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
  tansu broker --listener-url "tcp://127.0.0.1:$port" --advertised-listener-url "tcp://127.0.0.1:$port" \
    --storage-engine memory://tansu/ >"$kafka_dir/broker.log" 2>&1 &
  broker_pid=$!
  trap 'kill $broker_pid 2>/dev/null || true; rm -rf "$kafka_dir"' EXIT
  export FC_TEST_KAFKA_BROKERS="127.0.0.1:$port"
  wait_until 60 bash -c "echo > /dev/tcp/127.0.0.1/$port"
  kill -0 "$broker_pid" || { cat "$kafka_dir/broker.log"; exit 1; }
fi
echo "kafka-protocol broker: $FC_TEST_KAFKA_BROKERS"

# Plugins build for wasm32-wasip2; the notification tests talk to a real SMTP server
# (aiosmtpd, from PyPI) and sign FCM grants with a key made by openssl.
log "plugin toolchain and test tools"
rustup target add wasm32-wasip2
if ! python3 -c 'import aiosmtpd' >/dev/null 2>&1; then
  python3 -m pip install --quiet --disable-pip-version-check --root-user-action=ignore aiosmtpd
fi
# schemathesis (PyPI) fuzzes a running host from its OpenAPI document; pinned, as its checks
# change between versions.
schemathesis_version=4.32.5
if [[ "$(python3 -m schemathesis.cli --version 2>/dev/null)" != *"version $schemathesis_version"* ]]; then
  python3 -m pip install --quiet --disable-pip-version-check --root-user-action=ignore \
    "schemathesis==$schemathesis_version"
fi
# A real Prometheus scrapes a test host (Debian's package).
missing=()
command -v openssl >/dev/null || missing+=(openssl)
command -v prometheus >/dev/null || missing+=(prometheus)
# The live page is tested in Debian's Chromium through chromedriver.
command -v chromium >/dev/null || missing+=(chromium)
command -v chromedriver >/dev/null || missing+=(chromium-driver)
if ((${#missing[@]})); then
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi
# Plugins must also build with cargo-component (once, about 7 minutes; kept in ~/.cargo/bin).
command -v cargo-component >/dev/null || cargo install cargo-component --locked

# Each test makes its own database (fct_*); drop those earlier runs left behind.
for db in $(mysql -h 127.0.0.1 -uroot -N -e "SHOW DATABASES LIKE 'fct\_%'"); do
  mysql -h 127.0.0.1 -uroot -e "DROP DATABASE \`$db\`"
done
for db in $(psql -h 127.0.0.1 -U postgres -At -c "SELECT datname FROM pg_database WHERE datname LIKE 'fct\_%'"); do
  psql -h 127.0.0.1 -U postgres -q -c "DROP DATABASE \"$db\""
done

log "format"
cargo fmt --all -- --check

log "lint"
cargo clippy --workspace --all-targets --locked -- -D warnings
for workspace in plugins tests/plugins examples/plugins; do
  (cd "$workspace" && cargo fmt --all -- --check \
    && cargo clippy --release --locked --target wasm32-wasip2 -- -D warnings \
    && cargo test --release --locked --target "$(rustc -vV | sed -n 's/^host: //p')")
done

log "tests"
# Build first, then run under a time limit: a failing Kafka test can leave librdkafka waiting on
# a broker that is gone, and a hang should fail the run, not eat CI's 90 minutes.
cargo test --workspace --locked --no-run

log "plugins built with cargo component load and run in the host"
component_dir="${CARGO_TARGET_DIR:-$PWD/target}/cargo-component"
(cd plugins && cargo component build --release --locked --target-dir "$component_dir")
cargo build --locked --bin firstcome
firstcome="${CARGO_TARGET_DIR:-$PWD/target}/debug/firstcome"
for plugin in notification history stats; do
  "$firstcome" plugin test "$component_dir/wasm32-wasip1/release/$plugin.wasm" \
    --event examples/events/coupon-issued.json >/dev/null
  echo "$plugin: ok"
done
timeout --kill-after=30s 30m cargo test --workspace --locked "$@"
