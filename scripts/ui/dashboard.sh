#!/usr/bin/env bash
# The dashboard's end-to-end test: the hub example with --ui over a fresh data directory, a
# simulated device (paho-mqtt) sending telemetry and answering direct methods, and
# dashboard.test.mjs driving Debian's chromium with playwright-core. Screenshots land in
# target/ui-screenshots/. Installs chromium (apt) and playwright-core (npm, into target/npm-ui)
# when missing.
#
#   HUB_BIN=target/debug/examples/hub scripts/ui/dashboard.sh
set -euo pipefail
cd "$(dirname "$0")/../.."
hub=${HUB_BIN:-target/debug/examples/hub}
python=${PYTHON:-$PWD/.venv/bin/python}
npm_dir=$PWD/target/npm-ui
shots=$PWD/target/ui-screenshots

command -v chromium >/dev/null || {
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null
}
if [ ! -d "$npm_dir/node_modules/playwright-core" ]; then
  mkdir -p "$npm_dir"
  [ -f "$npm_dir/package.json" ] || echo '{"private": true}' >"$npm_dir/package.json"
  (cd "$npm_dir" && npm install --no-audit --no-fund --silent playwright-core@1.65)
fi
"$python" -c 'import paho.mqtt' 2>/dev/null || "$python" -m pip install -q paho-mqtt

work=$(mktemp -d)
pids=()
cleanup() {
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT

# The first admin's password goes through a file (mode 600), never argv.
(umask 077 && "$python" -c 'import secrets; print(secrets.token_urlsafe(18))' >"$work/admin.pw")
device=sensor-1
"$hub" --data-dir "$work/data" --listen 127.0.0.1:0 --http-listen 127.0.0.1:0 --ui \
  --admin-password-file "$work/admin.pw" --device "$device" >"$work/hub.out" 2>"$work/hub.err" &
pids+=($!)
for _ in $(seq 100); do grep -q '^ui: ' "$work/hub.out" && break; sleep 0.2; done
grep -q '^ui: ' "$work/hub.out" || { cat "$work/hub.out" "$work/hub.err"; echo "hub did not start"; exit 1; }
ui=$(sed -n 's/^ui: //p' "$work/hub.out")
base=${ui%/ui/}
mqtt_port=$(sed -n 's/^mqtt: 127.0.0.1:\([0-9]*\).*/\1/p' "$work/hub.out")
connection_string=$(sed -n 's/^connection-string: //p' "$work/hub.out")
echo "hub: $ui (mqtt port $mqtt_port)"

# The device's position in its tags (registry metadata), for the map: through the API as the admin.
token=$("$python" - "$base" "$work/admin.pw" <<'PY'
import json, sys, urllib.request
base, pw = sys.argv[1], open(sys.argv[2]).read().strip()
req = urllib.request.Request(f"{base}/auth/login?api-version=2021-04-12",
    data=json.dumps({"user": "admin", "password": pw}).encode(), headers={"Content-Type": "application/json"})
print(json.load(urllib.request.urlopen(req))["token"])
PY
)
curl -fsS -X PATCH "$base/twins/$device?api-version=2021-04-12" -H "Authorization: Bearer $token" \
  -H 'Content-Type: application/json' -H 'If-Match: *' \
  -d '{"tags": {"location": {"lat": 47.6205, "lon": -122.3493}, "site": "plant-1"}}' >/dev/null

"$python" scripts/ui/sim_device.py --port "$mqtt_port" --connection-string "$connection_string" \
  --interval 0.5 >"$work/device.out" 2>&1 &
pids+=($!)

rm -rf "$shots"
status=0
UI_URL=$ui ADMIN_PASSWORD=$(cat "$work/admin.pw") DEVICE=$device SCREENSHOTS=$shots \
  MQTT_PORT=$mqtt_port PYTHON=$python PLAYWRIGHT_DIR=$npm_dir \
  timeout 300 node scripts/ui/dashboard.test.mjs || status=$?
if [ "$status" -ne 0 ]; then
  echo "--- hub stdout (tail)"; tail -n 20 "$work/hub.out"
  echo "--- hub stderr (tail)"; tail -n 40 "$work/hub.err"
  echo "--- device (tail)"; tail -n 20 "$work/device.out"
  exit "$status"
fi
grep -q 'answered' "$work/device.out" || { echo "the simulated device answered no method"; exit 1; }
ls "$shots"
echo "dashboard: ok"
