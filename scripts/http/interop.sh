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

node_dir=target/http-interop-node
mkdir -p "$node_dir"
if [ ! -f "$node_dir/package.json" ]; then
  (cd "$node_dir" && npm init -y > /dev/null)
fi
(cd "$node_dir" && npm install --no-audit --no-fund --silent azure-iothub@1)

HTTP_INTEROP_NODE_MODULES="$PWD/$node_dir/node_modules" \
  cargo test -p iot-gateway --features http-interop --test http_interop -- --test-threads=1
