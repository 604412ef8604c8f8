#!/usr/bin/env bash
# The CoAP adapter against a CoAP client nobody here wrote: aiocoap (Python, from PyPI) sends
# telemetry with properties and receives and completes a C2D message
# (iot-gateway/tests/coap_interop.rs drives scripts/coap/aiocoap_device.py). Installs aiocoap
# into .venv. UDP on an ephemeral port of 127.0.0.1 only.
set -euo pipefail
cd "$(dirname "$0")/../.."

[ -x .venv/bin/python ] || python3 -m venv .venv
.venv/bin/pip install --quiet --disable-pip-version-check 'aiocoap==0.4.17'

# CARGO_FLAGS: the packages and features to build with (CI may pass its all-features selection).
# shellcheck disable=SC2086
cargo test ${CARGO_FLAGS:--p iot-gateway --features coap-interop} --test coap_interop
