#!/usr/bin/env bash
# The Event Hubs endpoint's interop test with Microsoft's Python `azure-eventhub`
# (tests/eventhubs_interop.rs): installs the client into .venv when missing, then runs the test.
# Usage: scripts/eventhubs/interop.sh  (from the repository root)
set -euo pipefail
cd "$(dirname "$0")/../.."
if [ ! -x .venv/bin/python ]; then
    python3 -m venv .venv
fi
if ! .venv/bin/python -c 'import azure.eventhub' 2>/dev/null; then
    .venv/bin/pip install -q 'azure-eventhub>=5.11,<6'
fi
cargo test -p iot-sdk --features eventhubs-interop --test eventhubs_interop -- --nocapture
