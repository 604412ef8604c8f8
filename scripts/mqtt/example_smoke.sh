#!/usr/bin/env bash
# Runs examples/mqtt_gateway briefly and talks to it with mosquitto_pub / mosquitto_sub, over TCP
# and TLS, using the commands the example prints. Needs mosquitto-clients.
set -euo pipefail
cd "$(dirname "$0")/../.."
dir=$(mktemp -d)
out="$dir/gateway.out"
cargo build -q --example mqtt_gateway
example="${CARGO_TARGET_DIR:-target}/debug/examples/mqtt_gateway"
"$example" --data-dir "$dir/data" --listen 127.0.0.1:1884 --tls-listen 127.0.0.1:8883 \
  --self-signed --host localhost --device smoke-1 --run-for 120 > "$out" &
pid=$!
trap 'kill "$pid" 2>/dev/null || true' EXIT
for _ in $(seq 200); do grep -q '^queued:' "$out" && break; sleep 0.1; done
cat "$out"
grep -q '^connection-string: HostName=localhost;DeviceId=smoke-1;SharedAccessKey=' "$out"
sub=$(grep '^  mosquitto_sub' "$out" | sed 's/^  //')
pub_tcp=$(grep '^  mosquitto_pub' "$out" | sed -n 1p | sed 's/^  //')
pub_tls=$(grep '^  mosquitto_pub' "$out" | sed -n 2p | sed 's/^  //')
# The greeting the example queued comes out of the device's inbox.
eval "$sub -C 1 -W 20" | tee "$dir/sub.out"
grep -q 'devicebound/.* hello from the gateway$' "$dir/sub.out"
eval "$pub_tcp"
eval "$pub_tls"
for _ in $(seq 100); do
  grep -q 'payload=hello$' "$out" && grep -q 'payload=over-tls$' "$out" && break
  sleep 0.1
done
grep 'telemetry:' "$out"
grep -q 'headers=\[.*source=mosquitto.*\] payload=hello$' "$out"
grep -q 'payload=over-tls$' "$out"
# Graceful shutdown on Ctrl-C.
kill -INT "$pid"
wait "$pid"
trap - EXIT
grep -q '^stopped$' "$out"
echo "mqtt_gateway smoke: ok"
