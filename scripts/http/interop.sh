#!/usr/bin/env bash
# The HTTP endpoint against Microsoft's service SDKs, unmodified: Python azure-iot-hub
# (IoTHubRegistryManager) and Node azure-iothub (Registry, Client), with Microsoft's Python
# azure-iot-device as the device (MQTT/TLS on 127.0.0.1:8883). Installs what it needs:
# the Python packages into .venv, azure-iothub into target/http-interop-node.
#
# Binds 127.0.0.1:8883 (the device SDK's fixed port) and 127.0.0.1:443 (Node's service SDK takes
# no port), so it runs as root and not beside the MQTT interop tests.
set -euo pipefail
cd "$(dirname "$0")/../.."

[ -x .venv/bin/python ] || python3 -m venv .venv
# azure-iot-hub imports six without declaring it.
.venv/bin/pip install --quiet --disable-pip-version-check azure-iot-device azure-iot-hub six

# The machine image ships Node.js and npm; a machine without them gets Debian's.
if ! command -v npm > /dev/null; then
  apt-get update -q && apt-get install -y -q nodejs npm
fi
node_dir=target/http-interop-node
mkdir -p "$node_dir"
if [ ! -f "$node_dir/package.json" ]; then
  (cd "$node_dir" && npm init -y > /dev/null)
fi
(cd "$node_dir" && npm install --no-audit --no-fund --silent azure-iothub@1)

# CARGO_FLAGS: the packages and features to build with (CI passes its one all-features selection).
# shellcheck disable=SC2086
HTTP_INTEROP_NODE_MODULES="$PWD/$node_dir/node_modules" \
  cargo test ${CARGO_FLAGS:--p iot-gateway --all-features} --test http_interop -- --test-threads=1

# The hub example with the service connection string it prints: the Python SDK on the port in
# HostName, the Node SDK on 443.
# shellcheck disable=SC2086
cargo build -q ${CARGO_FLAGS:---features http} --example hub
target=$(cargo metadata -q --format-version 1 --no-deps |
  python3 -c 'import json, sys; print(json.load(sys.stdin)["target_directory"])')
dir=$(mktemp -d)
hub=
trap '[ -n "$hub" ] && kill "$hub" 2>/dev/null; rm -rf "$dir"' EXIT
for port in 8443 443; do
  out="$dir/hub-$port.out"
  "$target/debug/examples/hub" --data-dir "$dir/data" --listen 127.0.0.1:0 --self-signed \
    --https-listen "127.0.0.1:$port" --device smoke-dev > "$out" 2> "$dir/hub.err" &
  hub=$!
  for _ in $(seq 1500); do
    grep -qs '^service-connection-string:' "$out" && break
    kill -0 "$hub" 2>/dev/null || break
    sleep 0.02
  done
  cs=$(sed -n 's/^service-connection-string: //p' "$out")
  ca=$(sed -n 's/^ca-certificate: //p' "$out")
  if [ -z "$cs" ]; then
    echo "interop: the hub example printed no service connection string" >&2
    cat "$dir/hub.err" >&2
    exit 1
  fi
  if [ "$port" = 8443 ]; then
    IOT_SERVICE_CS="$cs" REQUESTS_CA_BUNDLE="$ca" .venv/bin/python scripts/http/azure_service.py create smoke-py
  else
    IOT_SERVICE_CS="$cs" NODE_EXTRA_CA_CERTS="$ca" NODE_PATH="$PWD/$node_dir/node_modules" \
      node scripts/http/node_service.js create smoke-node
  fi
  kill -INT "$hub"
  wait "$hub"
  hub=
  grep -q '^stopped$' "$out" || { echo "interop: the hub example did not stop gracefully" >&2; exit 1; }
done
echo "interop: the hub example served azure-iot-hub (Python) and azure-iothub (Node)"
