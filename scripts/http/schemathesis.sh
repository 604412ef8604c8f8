#!/usr/bin/env bash
# Runs schemathesis (PyPI) against a running hub with the OpenAPI document the hub serves at
# `GET /openapi.yaml` (docs/openapi.yaml, compiled in; the script first checks the served copy is
# the file in the tree): the service routes with the iothubowner token, the device routes with a
# device token. Fails on any server error (5xx) and on any answer that does not match the
# document (status, content type, schema).
#
# Usage: scripts/http/schemathesis.sh [MAX_EXAMPLES]   (default 30 per operation)
# Creates .venv (if missing) and pip-installs schemathesis into it; starts
# `cargo run --example hub` on spare ports over a temporary data directory and stops it at exit.
set -euo pipefail
cd "$(dirname "$0")/../.."

max_examples="${1:-30}"
venv=.venv
if [ ! -x "$venv/bin/schemathesis" ]; then
  python3 -m venv "$venv"
  "$venv/bin/pip" install --quiet --disable-pip-version-check schemathesis
fi
py="$venv/bin/python"

dir=$(mktemp -d)
hub_pid=""
cleanup() {
  if [ -n "$hub_pid" ]; then kill "$hub_pid" 2>/dev/null || true; wait "$hub_pid" 2>/dev/null || true; fi
  rm -rf "$dir"
}
trap cleanup EXIT

spare_port() {
  "$py" -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1]); s.close()'
}
http_port=$(spare_port)
mqtt_port=$(spare_port)

# CARGO_FLAGS: the packages and features to build with (CI passes its one all-features selection).
# shellcheck disable=SC2086
nice -n 10 cargo build -q ${CARGO_FLAGS:---features http} --example hub
target=$(cargo metadata -q --format-version 1 --no-deps |
  python3 -c 'import json, sys; print(json.load(sys.stdin)["target_directory"])')
"$target/debug/examples/hub" --data-dir "$dir/data" --host localhost \
  --listen "127.0.0.1:$mqtt_port" --http-listen "127.0.0.1:$http_port" --device st-device \
  > "$dir/hub.out" 2> "$dir/hub.err" &
hub_pid=$!

for _ in $(seq 1 300); do
  grep -q '^service-connection-string:' "$dir/hub.out" 2>/dev/null && break
  if ! kill -0 "$hub_pid" 2>/dev/null; then
    echo "the hub exited:" >&2; cat "$dir/hub.err" >&2; exit 1
  fi
  sleep 0.2
done
service_cs=$(sed -n 's/^service-connection-string: //p' "$dir/hub.out")
device_cs=$(sed -n 's/^connection-string: //p' "$dir/hub.out")
[ -n "$service_cs" ] && [ -n "$device_cs" ] || { echo "no connection strings" >&2; cat "$dir/hub.out" >&2; exit 1; }

# A SAS token from a connection string (as the SDKs sign them), valid for an hour.
token() {
  "$py" - "$1" <<'EOF'
import base64, hashlib, hmac, sys, time, urllib.parse
parts = dict(p.split("=", 1) for p in sys.argv[1].split(";"))
resource = parts["HostName"] + ("/devices/" + parts["DeviceId"] if "DeviceId" in parts else "")
sr = urllib.parse.quote(resource, safe="")
se = str(int(time.time()) + 3600)
key = base64.b64decode(parts["SharedAccessKey"])
sig = base64.b64encode(hmac.new(key, f"{sr}\n{se}".encode(), hashlib.sha256).digest()).decode()
token = f"SharedAccessSignature sr={sr}&sig={urllib.parse.quote(sig, safe='')}&se={se}"
if "SharedAccessKeyName" in parts:
    token += "&skn=" + parts["SharedAccessKeyName"]
print(token)
EOF
}

# The document under test is the one the hub serves; it must be the file in the tree (a stale
# build would test an old document).
schema="http://127.0.0.1:$http_port/openapi.yaml"
"$py" - "$schema" docs/openapi.yaml <<'EOF'
import sys, urllib.request
served = urllib.request.urlopen(sys.argv[1]).read()
if served != open(sys.argv[2], "rb").read():
    sys.exit(f"{sys.argv[1]} is not {sys.argv[2]}: rebuild the hub")
EOF

checks=not_a_server_error,status_code_conformance,content_type_conformance,response_schema_conformance
common=(--url "http://127.0.0.1:$http_port" --checks "$checks" --max-examples "$max_examples"
        --workers 1 --no-color --seed 14)
device_paths='^/devices/\{id\}/messages/(events|deviceBound)'
# The Server-Sent Events routes stream until the client leaves: no answer to check.
service_skip="$device_paths|/stream\$"

# Path ids fixed to the hub's device, so that requests reach past "device not found".
fixed="$dir/fixed-id.toml"
printf '[parameters]\n"path.id" = "st-device"\n' > "$fixed"

echo "== device API (device token for st-device)"
"$venv/bin/schemathesis" --config-file "$fixed" run "$schema" "${common[@]}" \
  --header "Authorization: $(token "$device_cs")" --include-path-regex "$device_paths"

echo "== service API (iothubowner), generated ids"
"$venv/bin/schemathesis" run "$schema" "${common[@]}" \
  --header "Authorization: $(token "$service_cs")" --exclude-path-regex "$service_skip"

echo "== service API (iothubowner), the existing device"
"$venv/bin/schemathesis" --config-file "$fixed" run "$schema" "${common[@]}" \
  --header "Authorization: $(token "$service_cs")" --exclude-path-regex "$service_skip"

if grep -q "panicked" "$dir/hub.err"; then
  echo "the hub panicked:" >&2; grep -A5 panicked "$dir/hub.err" >&2; exit 1
fi
echo "schemathesis: no server errors, answers match the served docs/openapi.yaml"
