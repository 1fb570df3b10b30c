#!/usr/bin/env bash
# The Kafka benchmark: events from the outbox through Kafka into a consumer group, against
# kcat (Debian's package) reading the same topic from the same broker, plus end-to-end
# latency. Starts a tansu broker unless KAFKA_BROKERS is given.
#
# Debian bookworm's kcat links librdkafka 2.0.2, which cannot parse tansu's ApiVersions v3
# response ("Protocol read buffer underflow for ApiVersion v3 at 267/272"), and setting
# api.version.request=false does not stop the request. So kcat runs here on librdkafka 2.12.1
# (the version the host itself links), built once from the source vendored in rdkafka-sys.
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$HOME/.cargo/bin:$PATH"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/firstcome-target}"

command -v kcat >/dev/null || apt-get install -y kcat
lib="$HOME/.cache/firstcome-librdkafka-2.12.1"
if [[ ! -e "$lib/lib/librdkafka.so.1" ]]; then
  cargo fetch --locked >/dev/null
  src=$(ls -d "$HOME"/.cargo/registry/src/*/rdkafka-sys-4.10.0+2.12.1/librdkafka | head -1)
  build=$(mktemp -d)
  cp -r "$src/." "$build"
  (cd "$build" && ./configure --prefix="$lib" --disable-gssapi >/dev/null && make -j"$(nproc)" libs >/dev/null \
    && make install-subdirs >/dev/null)
  rm -rf "$build"
fi

if [[ -z "${KAFKA_BROKERS:-}" ]]; then
  command -v tansu >/dev/null || cargo install tansu --locked --features dynostore,libsql
  dir=$(mktemp -d)
  tansu broker --listener-url tcp://127.0.0.1:29092 --advertised-listener-url tcp://127.0.0.1:29092 \
    --storage-engine memory://tansu/ >"$dir/broker.log" 2>&1 &
  trap 'kill $! 2>/dev/null || true; rm -rf "$dir"' EXIT
  KAFKA_BROKERS=127.0.0.1:29092
  sleep 2
fi

cargo build --release --locked -p firstcome-bench
LD_LIBRARY_PATH="$lib/lib" "$CARGO_TARGET_DIR/release/firstcome-bench" \
  --requests 2000 --coupons 1000 --kafka-brokers "$KAFKA_BROKERS" "$@"
