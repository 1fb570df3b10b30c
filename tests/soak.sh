#!/usr/bin/env bash
# The fault soak alone, as long as you like: round after round, a storm against `firstcome
# serve` processes on the embedded default and on Redis + MariaDB (+ Kafka when `tansu` is
# installed; tests/run.sh installs it), one fault injected at a random moment per round, then
# every promise checked. Prints a table of faults, rounds and violations (which must be 0).
# The suite (tests/run.sh) runs two rounds per fault kind.
#
# Usage: bash tests/soak.sh [--rounds N] [--seed S] [--faults KIND,...]
#   --rounds N   rounds per fault kind and set-up (default 10)
#   --seed S     replays the random moments of an earlier run (it prints its seed)
#   --faults K,… only these kinds: KillHost, KillRedis, KillDbSessions, FreezeBroker,
#                FreezeRedis, LockCoupons, RemoveCampaign, PluginTrap, PluginLoop,
#                PluginHugeError
# A run with violations keeps the hosts' logs and says where.
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$HOME/.cargo/bin:$PATH"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/firstcome-target}"
rounds=10
while (($#)); do
  case "$1" in
    --rounds) rounds=$2; shift 2 ;;
    --seed) export FC_SOAK_SEED=$2; shift 2 ;;
    --faults) export FC_SOAK_FAULTS=$2; shift 2 ;;
    *) echo "usage: bash tests/soak.sh [--rounds N] [--seed S] [--faults KIND,...]" >&2; exit 2 ;;
  esac
done
[[ "$rounds" =~ ^[1-9][0-9]*$ ]] || { echo "--rounds takes a positive number, not '$rounds'" >&2; exit 2; }
source tests/services.sh
rustup target add wasm32-wasip2 >/dev/null 2>&1 || true
command -v tansu >/dev/null || echo "tansu is not installed: the soak runs without Kafka (bash tests/run.sh installs it)"
FC_SOAK_ROUNDS=$rounds cargo test --locked --test api -- soak::fault_soak --exact --nocapture
