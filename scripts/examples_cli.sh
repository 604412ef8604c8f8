#!/usr/bin/env bash
# The examples' command lines: every example answers --help (exit 0); an unknown flag, a value
# that is not UTF-8 or a stray non-UTF-8 argument is a usage error (exit 2, clap's message, never a
# panic); and mqtt_gateway can be started 60 times over the same --data-dir while its device stays
# offline, and a 61st start still works (it queues its C2D greeting only when the device's inbox
# is empty). Builds the examples and runs their debug builds (TARGET/debug/examples/NAME).
set -euo pipefail
cd "$(dirname "$0")/.."
# EXAMPLES_BIN: run the binaries in that directory instead of building (e.g. copies taken right
# after a build, where a target directory is shared and others' builds replace its examples).
if [ -n "${EXAMPLES_BIN:-}" ]; then
  bin=$EXAMPLES_BIN
else
  cargo build -q --examples -p iot-sdk -p iot-registry --features iot-sdk/http,iot-sdk/nats,iot-sdk/postgres,iot-sdk/cluster,iot-sdk/edge,iot-sdk/eventhubs
  # Wherever this cargo puts them (CARGO_TARGET_DIR, a config's target-dir, or target/).
  target=$(cargo metadata -q --format-version 1 --no-deps |
    python3 -c 'import json, sys; print(json.load(sys.stdin)["target_directory"])')
  bin="$target/debug/examples"
fi
examples=(backends_bench cluster edge_bench field_gateway hub hub_bench service_bench identity_bench log_bench mqtt_gateway mqtt_load provisioning_bench onboarding_bench quickstart
  registry_bench rules sas stream_bench registry_reopen actors_bench eventhubs_bench)
dir=$(mktemp -d)
gateway=
trap '[ -n "$gateway" ] && kill "$gateway" 2>/dev/null; rm -rf "$dir"' EXIT
bad=$'\xff\xfe'
failures=0
fail() { echo "examples_cli: FAIL: $*" >&2; failures=$((failures + 1)); }

# Runs one example, expects exit status $1 and no panic on stderr. Bounded by EXAMPLE_TIMEOUT
# seconds (default 20): an example that ignored its arguments would start a benchmark.
expect() {
  local want=$1 name=$2
  shift 2
  local rc=0
  timeout "${EXAMPLE_TIMEOUT:-20}" "$bin/$name" "$@" > "$dir/out" 2> "$dir/err" || rc=$?
  if [ "$rc" -ne "$want" ]; then
    fail "$name $(printf '%q ' "$@")exited $rc, expected $want"
    head -n 5 "$dir/err" | sed 's/^/    /' >&2
  elif grep -q 'panicked' "$dir/err"; then
    fail "$name $(printf '%q ' "$@")panicked"
  fi
}

for name in "${examples[@]}"; do
  expect 0 "$name" --help
  grep -q '^Usage: ' "$dir/out" || fail "$name --help printed no usage line"
  expect 2 "$name" --no-such-flag
  expect 2 "$name" "$bad"
done
expect 2 quickstart --bogus
expect 2 field_gateway --data-dir "$dir/edge"
expect 2 field_gateway --data-dir "$dir/edge" --upstream "$bad" --tls-ca ca.pem --fleet-key-file k
# A missing key file is a run-time error (exit 1 with a message), not a usage error or a panic.
expect 1 field_gateway --data-dir "$dir/edge" --upstream 127.0.0.1:9 --tls-ca "$dir/none.pem" --fleet-key-file "$dir/none.key"
key=$(printf '%032d' 0 | base64 -w0)
expect 2 sas generate --resource "$bad" --key "$key" --expiry +60
expect 2 sas verify --resource hub/devices/d --key "$key" --token "$bad"
expect 2 sas generate --resource hub/devices/d --key "$key" --expiry "+$bad"
expect 2 sas "$bad"
gateway_args=(--data-dir "$dir/data" --listen 127.0.0.1:0 --host localhost --device restart-1)
expect 2 mqtt_gateway --data-dir "$dir/data" --listen 127.0.0.1:0 --host "$bad" --device restart-1
expect 2 mqtt_gateway --data-dir "$dir/data" --listen 127.0.0.1:0 --host localhost --device "$bad"
expect 2 mqtt_gateway --data-dir "$dir/data" --listen "$bad" --host localhost --device restart-1
expect 2 mqtt_gateway "${gateway_args[@]}" --run-for "$bad"
# Misused flags are usage errors too (they used to be checked by hand).
expect 2 mqtt_gateway "${gateway_args[@]}" --tls-listen 127.0.0.1:0
expect 2 mqtt_gateway "${gateway_args[@]}" --self-signed
expect 2 mqtt_load --mode connections
expect 2 mqtt_load --qos 2
expect 2 hub --data-dir "$dir/hub" --https-listen 127.0.0.1:0
expect 2 hub --data-dir "$dir/hub" --self-signed
expect 2 hub --data-dir "$dir/hub" --device "$bad"
expect 2 hub --data-dir "$dir/hub" --ui
# The generate/verify round trip still works with clap's parsing.
token=$("$bin/sas" generate --resource hub/devices/d --key "$key" --expiry +60)
verdict=$("$bin/sas" verify --resource hub/devices/d --key "$key" --token "$token")
[ "$verdict" = valid ] || fail "sas verify said '$verdict', expected valid"

# mqtt_gateway, 61 starts over one data directory, its device never connecting: each start must
# print its connection string, reach "queued:" (the greeting, queued or found waiting), and stop
# gracefully on SIGINT.
for start in $(seq 61); do
  # Fresh files per start: the previous start's "queued:" must not be taken for this one's before
  # the new process has truncated its output.
  out="$dir/gateway-$start.out"
  err="$dir/gateway-$start.err"
  "$bin/mqtt_gateway" "${gateway_args[@]}" > "$out" 2> "$err" &
  gateway=$!
  # Up to 30 s: the machine may be busy; a start normally takes a few tens of milliseconds.
  for _ in $(seq 1500); do
    grep -qs '^queued:' "$out" && break
    kill -0 "$gateway" 2>/dev/null || break
    sleep 0.02
  done
  if ! grep -q '^connection-string: HostName=localhost;DeviceId=restart-1;' "$out" ||
    ! grep -q '^queued:' "$out"; then
    kill "$gateway" 2>/dev/null || true
    rc=0
    wait "$gateway" 2>/dev/null || rc=$?
    gateway=
    fail "mqtt_gateway start $start did not get ready (exit status $rc)"
    echo "    stdout (lines with keys or tokens left out):" >&2
    grep -v 'SharedAccess' "$out" | sed 's/^/    /' | tail -5 >&2 || true
    echo "    stderr:" >&2
    sed 's/^/    /' "$err" | tail -5 >&2
    break
  fi
  # Ctrl-C: a graceful stop, within 10 s.
  kill -INT "$gateway"
  for _ in $(seq 500); do
    kill -0 "$gateway" 2>/dev/null || break
    sleep 0.02
  done
  rc=0
  if kill -0 "$gateway" 2>/dev/null; then
    kill -KILL "$gateway"
    rc=timeout
  fi
  wait "$gateway" 2>/dev/null || rc=$?
  gateway=
  if [ "$rc" != 0 ] || ! grep -q '^stopped$' "$out"; then
    fail "mqtt_gateway start $start did not stop gracefully on SIGINT (exit status $rc)"
    sed 's/^/    /' "$err" | tail -5 >&2
    break
  fi
done
grep -q '^queued: a C2D greeting for restart-1 was already waiting' "$out" ||
  fail "the last mqtt_gateway start did not find its greeting waiting"

# hub: a start over a fresh directory prints both connection strings and its listeners, and
# stops gracefully on SIGINT; a second start over the same directory keeps the keys.
for start in 1 2; do
  out="$dir/hub-$start.out"
  "$bin/hub" --data-dir "$dir/hub" --listen 127.0.0.1:0 --tls-listen 127.0.0.1:0 \
    --https-listen 127.0.0.1:0 --self-signed --device hub-dev > "$out" 2> "$dir/hub.err" &
  gateway=$!
  for _ in $(seq 1500); do
    grep -qs '^service-connection-string:' "$out" && break
    kill -0 "$gateway" 2>/dev/null || break
    sleep 0.02
  done
  grep -q '^connection-string: HostName=localhost;DeviceId=hub-dev;SharedAccessKey=' "$out" ||
    fail "hub start $start printed no device connection string"
  grep -q '^service-connection-string: HostName=localhost:[0-9]*;SharedAccessKeyName=iothubowner;SharedAccessKey=' "$out" ||
    fail "hub start $start printed no service connection string"
  kill -INT "$gateway"
  for _ in $(seq 500); do
    kill -0 "$gateway" 2>/dev/null || break
    sleep 0.02
  done
  rc=0
  if kill -0 "$gateway" 2>/dev/null; then
    kill -KILL "$gateway"
    rc=timeout
  fi
  wait "$gateway" 2>/dev/null || [ "$rc" = timeout ] || rc=$?
  gateway=
  { [ "$rc" = 0 ] && grep -q '^stopped$' "$out"; } ||
    fail "hub start $start did not stop gracefully (exit status $rc)"
done
[ "$(grep '^service-connection-string' "$dir/hub-1.out" | sed 's/.*SharedAccessKey=//')" = \
  "$(grep '^service-connection-string' "$dir/hub-2.out" | sed 's/.*SharedAccessKey=//')" ] ||
  fail "the iothubowner key changed across hub restarts"

if [ "$failures" -ne 0 ]; then
  echo "examples_cli: $failures failure(s)" >&2
  exit 1
fi
echo "examples_cli: ok (${#examples[@]} examples, 61 mqtt_gateway starts, 2 hub starts)"
