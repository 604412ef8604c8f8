#!/usr/bin/env bash
# The CoAP adapter against CoAP clients nobody here wrote (iot-gateway/tests/coap_interop.rs):
# aiocoap (Python, from PyPI; scripts/coap/aiocoap_device.py) sends telemetry with properties
# and receives C2D messages by GET and by Observe; libcoap's coap-client (C, Debian's
# libcoap3-bin) sends telemetry and receives and completes a C2D message. Installs both. UDP on
# an ephemeral port of 127.0.0.1 only.
set -euo pipefail
cd "$(dirname "$0")/../.."

[ -x .venv/bin/python ] || python3 -m venv .venv
.venv/bin/pip install --quiet --disable-pip-version-check 'aiocoap==0.4.17'
command -v coap-client-notls > /dev/null || {
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq libcoap3-bin
}

# CARGO_FLAGS: the packages and features to build with (CI may pass its all-features selection).
# shellcheck disable=SC2086
cargo test ${CARGO_FLAGS:--p iot-gateway --features coap-interop} --test coap_interop
