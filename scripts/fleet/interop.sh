#!/usr/bin/env bash
# Fleet operations with Microsoft's SDKs, unmodified, against the hub example: Python
# azure-iot-hub's IoTHubJobManager and IoTHubConfigurationManager over HTTPS, azure-iot-device's
# IoTHubDeviceClient as the devices over MQTT/TLS on 127.0.0.1:8883 (the SDK's fixed port, so
# the script holds /tmp/port8883.lock). Then the hub is restarted over the same data directory
# and the jobs and configurations are still there (scripts/fleet/fleet_service.py after-restart).
set -euo pipefail
cd "$(dirname "$0")/../.."

[ -x .venv/bin/python ] || python3 -m venv .venv
# azure-iot-hub imports six without declaring it.
.venv/bin/pip install --quiet --disable-pip-version-check azure-iot-device azure-iot-hub six

# shellcheck disable=SC2086
cargo build -q ${CARGO_FLAGS:---features http} --example hub
target=$(cargo metadata -q --format-version 1 --no-deps |
  python3 -c 'import json, sys; print(json.load(sys.stdin)["target_directory"])')
dir=$(mktemp -d)
hub=
trap '[ -n "$hub" ] && kill "$hub" 2>/dev/null; rm -rf "$dir"' EXIT

exec 9> /tmp/port8883.lock
flock 9

start_hub() {
  out="$dir/hub.out"
  "$target/debug/examples/hub" --data-dir "$dir/data" --listen 127.0.0.1:0 --self-signed \
    --tls-listen 127.0.0.1:8883 --https-listen 127.0.0.1:0 > "$out" 2> "$dir/hub.err" &
  hub=$!
  for _ in $(seq 1500); do
    grep -qs '^service-connection-string:' "$out" && break
    kill -0 "$hub" 2>/dev/null || break
    sleep 0.02
  done
  cs=$(sed -n 's/^service-connection-string: //p' "$out")
  ca=$(sed -n 's/^ca-certificate: //p' "$out")
  if [ -z "$cs" ]; then
    echo "fleet interop: the hub example printed no service connection string" >&2
    cat "$dir/hub.err" >&2
    exit 1
  fi
}

stop_hub() {
  kill -INT "$hub"
  wait "$hub"
  hub=
  grep -q '^stopped$' "$dir/hub.out" || { echo "fleet interop: the hub did not stop gracefully" >&2; exit 1; }
}

start_hub
IOT_SERVICE_CS="$cs" REQUESTS_CA_BUNDLE="$ca" IOT_CA_PEM="$ca" \
  .venv/bin/python scripts/fleet/fleet_service.py run | tee "$dir/run.out"
stop_hub
run_id=$(sed -n 's/^run //p' "$dir/run.out")
start_hub
IOT_SERVICE_CS="$cs" REQUESTS_CA_BUNDLE="$ca" IOT_CA_PEM="$ca" \
  .venv/bin/python scripts/fleet/fleet_service.py after-restart "$run_id"
stop_hub
echo "fleet interop: azure-iot-hub's job and configuration managers served by the hub example"
