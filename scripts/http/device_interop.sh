#!/usr/bin/env bash
# Microsoft's Node device SDK (azure-iot-device + azure-iot-device-http, from npm) against the
# hub's HTTPS device API: telemetry (checked in the hub's telemetry output with its properties),
# a batch, a C2D message received and completed (checked in the feedback).
#
# The Node SDK takes HostName as a host without a port, so the hub listens on 127.0.0.1:443:
# run as root (CI and the test machines do) and not beside another user of port 443.
# Installs the SDK into target/npm-device (created here). Needs node and npm.
set -euo pipefail
cd "$(dirname "$0")/../.."

npm_dir=target/npm-device
if [ ! -d "$npm_dir/node_modules/azure-iot-device-http" ]; then
  mkdir -p "$npm_dir"
  (cd "$npm_dir" && { [ -f package.json ] || npm init -y >/dev/null; } \
    && npm install --no-audit --no-fund --silent azure-iot-device azure-iot-device-http)
fi

dir=$(mktemp -d)
hub_pid=""
cleanup() {
  if [ -n "$hub_pid" ]; then kill "$hub_pid" 2>/dev/null || true; wait "$hub_pid" 2>/dev/null || true; fi
  rm -rf "$dir"
}
trap cleanup EXIT

mqtt_port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
# CARGO_FLAGS: the packages and features to build with (CI passes its one all-features selection).
# shellcheck disable=SC2086
nice -n 10 cargo build -q ${CARGO_FLAGS:---features http} --example hub
target=$(cargo metadata -q --format-version 1 --no-deps |
  python3 -c 'import json, sys; print(json.load(sys.stdin)["target_directory"])')
"$target/debug/examples/hub" --data-dir "$dir/data" --host localhost --self-signed \
  --listen "127.0.0.1:$mqtt_port" --https-listen 127.0.0.1:443 --device node-http-1 \
  > "$dir/hub.out" 2> "$dir/hub.err" &
hub_pid=$!
for _ in $(seq 1 300); do
  grep -q '^service-connection-string:' "$dir/hub.out" 2>/dev/null && break
  if ! kill -0 "$hub_pid" 2>/dev/null; then
    echo "the hub exited:" >&2; cat "$dir/hub.err" >&2; exit 1
  fi
  sleep 0.2
done

run_id="run$$"
export DEVICE_CS SERVICE_CS NODE_EXTRA_CA_CERTS RUN_ID="$run_id"
DEVICE_CS=$(sed -n 's/^connection-string: //p' "$dir/hub.out")
SERVICE_CS=$(sed -n 's/^service-connection-string: //p' "$dir/hub.out")
NODE_EXTRA_CA_CERTS=$(sed -n 's/^ca-certificate: //p' "$dir/hub.out")
# `localhost` may resolve to ::1 first; the hub listens on 127.0.0.1.
NODE_PATH="$PWD/$npm_dir/node_modules" NODE_OPTIONS=--dns-result-order=ipv4first \
  node scripts/http/device_interop.js

# The telemetry, with its properties, as the hub logged it.
for _ in $(seq 1 50); do
  grep -q "message-id=node-$run_id" "$dir/hub.out" && break
  sleep 0.1
done
line=$(grep "telemetry: device=node-http-1 .*message-id=node-$run_id" "$dir/hub.out" || true)
[ -n "$line" ] || { echo "device_interop: FAIL: telemetry not in the hub's log" >&2; cat "$dir/hub.out" >&2; exit 1; }
for want in "source=node-http" "correlation-id=corr-node" "content-type=application/json" \
            "iothub-connection-device-id=node-http-1"; do
  case "$line" in
    *"$want"*) ;;
    *) echo "device_interop: FAIL: '$want' missing from: $line" >&2; exit 1 ;;
  esac
done
echo "device_interop: hub logged: $line"
for n in 1 2; do
  grep -q "telemetry: device=node-http-1 .*batch=$n.* payload=batch-$n-$run_id" "$dir/hub.out" \
    || { echo "device_interop: FAIL: batch message $n not in the hub's log" >&2; exit 1; }
done
echo "device_interop: 1 passed, 0 failed"
