#!/usr/bin/env bash
# Alert push through the hub example (built with --features http,alert-push): a subscription
# made through the REST API receives a signed webhook when the hub's overheat rule raises an
# alert; a viewer of another device gets nothing. The receivers are on loopback, which the hub
# refuses without --alert-webhooks-anywhere. Standard-library Python only (hub_webhook.py,
# with tests/alert_push/receiver.py as the webhooks). About 5 s.
#
#   HUB_BIN=target/debug/examples/hub scripts/alert_push/hub_webhook.sh
set -euo pipefail
cd "$(dirname "$0")/../.."
hub=${HUB_BIN:-target/debug/examples/hub}
python=${PYTHON:-python3}

work=$(mktemp -d)
pid=
cleanup() {
  [ -n "$pid" ] && kill "$pid" 2>/dev/null || true
  wait 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT

(umask 077 && "$python" -c 'import secrets; print(secrets.token_urlsafe(18))' >"$work/admin.pw")
"$hub" --data-dir "$work/data" --listen 127.0.0.1:0 --http-listen 127.0.0.1:0 \
  --admin-password-file "$work/admin.pw" --device sensor-1 --alert-webhooks-anywhere >"$work/hub.out" 2>"$work/hub.err" &
pid=$!
for _ in $(seq 100); do grep -q '^http: ' "$work/hub.out" && break; sleep 0.2; done
grep -q '^alert-push: on' "$work/hub.out" || { cat "$work/hub.out" "$work/hub.err"; echo "hub without alert push"; exit 1; }
base=$(sed -n 's/^http: \(http:[^ ]*\).*/\1/p' "$work/hub.out")
connection_string=$(sed -n 's/^connection-string: //p' "$work/hub.out")
"$python" scripts/alert_push/hub_webhook.py "$base" "$work/admin.pw" "$connection_string" || {
  echo "--- hub stdout (tail)"; tail -n 20 "$work/hub.out"
  echo "--- hub stderr (tail)"; tail -n 40 "$work/hub.err"
  exit 1
}
