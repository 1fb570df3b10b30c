#!/usr/bin/env bash
# The headline benchmark: one campaign of 100,000 coupons opened to 1,000,000 requests from
# 200,000 users, on Redis + MariaDB + Kafka (a local tansu broker) with the three reference
# plugins (notification, history, stats), against one release `firstcome serve`. The load is
# wrk (Debian's package) with bench/headline.lua: distinct users, five requests each, spread
# over the run. Reports admission requests/s and latency, the time from the first request to
# the last coupon committed and to the last event handled by each consumer group, and checks
# the invariants at the end (it exits non-zero when one fails).
#
# Usage: bash bench/headline.sh [COUPONS REQUESTS USERS]   (defaults 100000 1000000 200000)
# Environment: CONNECTIONS (256), THREADS (2), REDIS_URL (redis://127.0.0.1:6379/),
# MYSQL_URL (mysql://root@127.0.0.1:3306), KAFKA_BROKERS (unset: a tansu broker is started),
# TIMEOUT_S (600: how long to wait for the consumers after the load).
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$HOME/.cargo/bin:$PATH"
coupons=${1:-100000} requests=${2:-1000000} users=${3:-200000}
connections=${CONNECTIONS:-256} threads=${THREADS:-2}
redis_url=${REDIS_URL:-redis://127.0.0.1:6379/}
mysql_url=${MYSQL_URL:-mysql://root@127.0.0.1:3306}
timeout_s=${TIMEOUT_S:-600}
target=${CARGO_TARGET_DIR:-$HOME/.cache/firstcome-release}

command -v wrk >/dev/null || apt-get install -y -qq wrk >/dev/null
command -v tansu >/dev/null || cargo install tansu@0.6.0 --locked --features dynostore,libsql
rustup target add wasm32-wasip2 >/dev/null
cargo build --release --locked --manifest-path plugins/Cargo.toml --target wasm32-wasip2 \
  --target-dir plugins/target
CARGO_TARGET_DIR="$target" cargo build --release --locked --bin firstcome
firstcome="$target/release/firstcome"

work=$(mktemp -d)
pids=()
db="fcheadline_$(date +%s)"
cleanup() {
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  wait 2>/dev/null || true
  mysql -h 127.0.0.1 -uroot -e "DROP DATABASE IF EXISTS $db" 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT
free_port() { python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }

if [[ -z "${KAFKA_BROKERS:-}" ]]; then
  port=$(free_port)
  tansu broker --listener-url "tcp://127.0.0.1:$port" --advertised-listener-url "tcp://127.0.0.1:$port" \
    --storage-engine memory://tansu/ >"$work/broker.log" 2>&1 &
  pids+=($!)
  KAFKA_BROKERS="127.0.0.1:$port"
  for _ in $(seq 100); do (echo >"/dev/tcp/127.0.0.1/$port") 2>/dev/null && break; sleep 0.1; done
fi

mysql -h 127.0.0.1 -uroot -e "CREATE DATABASE $db"
campaign="headline-$(date +%s)"
mkdir -p "$work/campaigns" "$work/data"
plugins="$PWD/plugins/target/wasm32-wasip2/release"
cat >"$work/campaigns/$campaign.toml" <<EOF
name = "Headline"
capacity = $coupons
value = 1000

[plugins.notification]
path = "$plugins/notification.wasm"
grants = ["email", "push"]
reuse = 128

[plugins.history]
path = "$plugins/history.wasm"
grants = ["history"]
reuse = 128

[plugins.stats]
path = "$plugins/stats.wasm"
grants = ["stats"]
reuse = 128
EOF
http_port=$(free_port)
FIRSTCOME_LISTEN="127.0.0.1:$http_port" FIRSTCOME_DATA_DIR="$work/data" \
  FIRSTCOME_CAMPAIGNS_DIR="$work/campaigns" FIRSTCOME_PLUGINS__DIR="$plugins" FIRSTCOME_DATABASE_URL="$mysql_url/$db" \
  FIRSTCOME_REDIS_URL="$redis_url" FIRSTCOME_KAFKA_BROKERS="$KAFKA_BROKERS" \
  FIRSTCOME_OUTBOX__TOPIC="$campaign" RUST_LOG="${RUST_LOG:-warn}" \
  FIRSTCOME_LIMITS__PER_ADDRESS_PER_S=0 \
  "$firstcome" serve >"$work/host.log" 2>&1 &
pids+=($!)
base="http://127.0.0.1:$http_port"
for _ in $(seq 600); do
  curl -sf "$base/api/v1/campaigns/$campaign" >/dev/null 2>&1 && break
  sleep 0.1
done
curl -sf "$base/health/ready" >/dev/null || { tail -20 "$work/host.log"; exit 1; }
# Let the consumer groups join before the storm.
sleep 3

sql() { mysql -h 127.0.0.1 -uroot -N -B "$db" -e "$1"; }
now_ms() { date +%s%3N; }
# wrk's main thread sleeps for its whole `-d` whatever its threads do, so the script watches the
# host's count of answered admissions and interrupts wrk (which then reports) once every
# request is answered; the rate is the host's count over that time.
answered() { # answered [RESULT]: admissions the host has answered (with that result)
  curl -sf "$base/metrics" |
    awk -v r="${1:-}" '/^firstcome_admissions_total\{/ && index($0, "result=\"" r) { n += $NF } END { print n + 0 }'
}
before=$(answered)
sold_out=""
started=$(now_ms)
wrk -t"$threads" -c"$connections" -d30m --timeout 30s -s bench/headline.lua "$base" \
  -- "$campaign" "$requests" "$users" "$threads" >"$work/wrk.out" 2>&1 &
wrk_pid=$!
pids+=("$wrk_pid")
while kill -0 "$wrk_pid" 2>/dev/null; do
  [[ -z "$sold_out" ]] && (($(answered admitted) >= coupons)) && sold_out=$(now_ms)
  (($(answered) - before >= requests)) && break
  sleep 0.2
done
sold_out=${sold_out:-$(now_ms)}
load_ended=$(now_ms)
kill -INT "$wrk_pid" 2>/dev/null || true
wait "$wrk_pid" || true
result=$(grep '^RESULT' "$work/wrk.out") || { cat "$work/wrk.out"; exit 1; }
declare -A r
for kv in ${result#RESULT }; do r[${kv%%=*}]=${kv#*=}; done

# Wait for the last coupon and for each group to have handled every event.
deadline=$(($(date +%s) + timeout_s))
while :; do
  issued=$(sql "SELECT COUNT(*) FROM coupons WHERE campaign_id = '$campaign'")
  handled=$(sql "SELECT COUNT(*) FROM processed_events WHERE group_id IN ('notification','history','stats')")
  ((issued >= coupons && handled >= 3 * coupons)) && break
  (($(date +%s) > deadline)) && { echo "timed out: $issued coupons, $handled events handled"; break; }
  sleep 1
done

last_coupon=$(sql "SELECT MAX(issued_at) FROM coupons WHERE campaign_id = '$campaign'")
distinct=$(sql "SELECT COUNT(DISTINCT user_id) FROM coupons WHERE campaign_id = '$campaign'")
history=$(sql "SELECT COUNT(*) FROM history WHERE campaign_id = '$campaign'")
stats=$(sql "SELECT COALESCE(MAX(value), 0) FROM campaign_stats WHERE campaign_id = '$campaign' AND name = 'issued'")
secs() { python3 -c "print(f'{($1 - $started) / 1000:.2f}')"; }

echo
echo "Headline: $coupons coupons, ${r[answered]} requests answered from $users users ($connections connections, wrk $threads threads)"
echo
echo "| figure | value |"
echo "|---|---|"
python3 - "${r[answered]}" "$started" "$load_ended" <<'EOF'
import sys
answered, started, ended = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
seconds = (ended - started) / 1000
print(f"| admission requests/s | **{answered / seconds:,.0f}** ({answered:,} in {seconds:.2f} s) |")
EOF
echo "| admission latency p50 / p99 / p999 / max ms | ${r[p50_ms]} / ${r[p99_ms]} / ${r[p999_ms]} / ${r[max_ms]} |"
echo "| answers 202 / 409 / 410 / other | ${r[s202]} / ${r[s409]} / ${r[s410]} / ${r[other]} |"
echo "| first request to last answer s | $(secs "$load_ended") |"
echo "| first request to the last 202 (sold out) s | $(secs "$sold_out") |"
echo "| first request to last coupon committed s | **$(secs "$last_coupon")** |"
while read -r group last count; do
  echo "| first request to last event handled by \`$group\` s ($count events) | $(secs "$last") |"
done < <(sql "SELECT group_id, MAX(processed_at), COUNT(*) FROM processed_events GROUP BY group_id ORDER BY group_id")

failed=0
check() { # check NAME ACTUAL EXPECTED
  local mark="ok"
  [[ "$2" == "$3" ]] || { mark="FAILED (expected $3)"; failed=1; }
  echo "| invariant: $1 | $2 $mark |"
}
check "coupons issued" "$issued" "$coupons"
check "distinct users holding one" "$distinct" "$coupons"
check "202 answers (each one issued)" "${r[s202]}" "$coupons"
check "other answers than 202/409/410" "${r[other]}" "0"
check "history rows" "$history" "$coupons"
check "stats: issued" "$stats" "$coupons"
if ((failed)); then
  tail -20 "$work/host.log"
  exit 1
fi
