#!/usr/bin/env bash
# Runs examples/mqtt_gateway briefly and talks to it with mosquitto_pub / mosquitto_sub, over TCP
# and TLS, using the commands the example prints, then restarts it with --ws-listen and talks to it
# with paho-mqtt over WebSocket. Needs mosquitto-clients and paho-mqtt (PYTHON, default .venv).
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

# Started again on the same data directory, now with --ws-listen: the device is still there, a new
# greeting is queued, and paho-mqtt (from .ci/run's venv) sends telemetry and takes the greeting
# over MQTT-over-WebSocket.
python=${PYTHON:-.venv/bin/python}
"$example" --data-dir "$dir/data" --listen 127.0.0.1:1884 --ws-listen 127.0.0.1:1888 \
  --host localhost --device smoke-1 --run-for 120 > "$out" &
pid=$!
trap 'kill "$pid" 2>/dev/null || true' EXIT
for _ in $(seq 200); do grep -q '^queued:' "$out" && break; sleep 0.1; done
grep -q '^mqtt-ws: ws://127.0.0.1:1888/\$iothub/websocket' "$out"
if grep -q '^provisioned:' "$out"; then echo "smoke-1 was provisioned again" >&2; exit 1; fi
token=$(grep '^  mosquitto_pub' "$out" | sed -n 1p | sed "s/.* -P '\([^']*\)'.*/\1/")
"$python" scripts/mqtt/paho_device.py --websocket --port 1888 --device smoke-1 \
  --username 'localhost/smoke-1/?api-version=2021-04-12' --password "$token" \
  --scenario telemetry_c2d | tee "$dir/paho.out"
grep -q 'payload=hello from the gateway$' "$dir/paho.out"
for _ in $(seq 100); do grep -q 'source=paho.*payload={"from":"paho"}$' "$out" && break; sleep 0.1; done
grep -q 'source=paho.*payload={"from":"paho"}$' "$out"
kill -INT "$pid"
wait "$pid"
trap - EXIT
echo "mqtt_gateway smoke: ok"
