#!/usr/bin/env bash
# DPS registration with Microsoft's Node provisioning device client, unmodified, over both its
# transports: azure-iot-provisioning-device with azure-iot-provisioning-device-mqtt (port 8883)
# and azure-iot-provisioning-device-http (port 443), and azure-iot-security-symmetric-key
# (iot-gateway/tests/dps_node_interop.rs, which runs scripts/http/dps_node.js).
#
# Installs the packages into target/dps-node (created here). Needs node and npm. The SDK's ports
# are fixed (mqtts:// and https:// of the provisioning host), so the test binds 127.0.0.1:8883
# and 127.0.0.1:443: it holds /tmp/port8883.lock and /tmp/port443.lock, as every user of those
# ports on a shared machine does, and runs as root.
set -euo pipefail
cd "$(dirname "$0")/../.."

if ! command -v npm > /dev/null; then
  apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q nodejs npm
fi
npm_dir=target/dps-node
if [ ! -d "$npm_dir/node_modules/azure-iot-provisioning-device-http" ]; then
  mkdir -p "$npm_dir"
  (cd "$npm_dir" && { [ -f package.json ] || npm init -y > /dev/null; } \
    && npm install --no-audit --no-fund --silent azure-iot-provisioning-device@1 \
         azure-iot-provisioning-device-mqtt@1 azure-iot-provisioning-device-http@1 \
         azure-iot-security-symmetric-key@1)
fi

# CARGO_FLAGS: the packages and features to build with (CI passes its one all-features selection).
flags=${CARGO_FLAGS:--p iot-gateway --all-features}
# shellcheck disable=SC2086
cargo build -q $flags --test dps_node_interop
# shellcheck disable=SC2086
DPS_NODE_MODULES="$PWD/$npm_dir/node_modules" \
  flock /tmp/port8883.lock flock /tmp/port443.lock \
  cargo test -q $flags --test dps_node_interop
