#!/usr/bin/env bash
# The `cluster` example as its README paragraph describes it, with real clients: three instances
# over the machine's NATS and PostgreSQL; mosquitto_sub connected to the first instance receives
# the C2D greeting queued through the last one, and a message mosquitto_pub sends to the second
# lands in the shared log (the example prints it). Each run uses a name of its own (identity
# namespace, streams, subjects), so runs never see each other. Needs mosquitto-clients.
set -euo pipefail
cd "$(dirname "$0")/../.."
# CARGO_FLAGS: the packages and features to build with (CI passes its one all-features selection).
# shellcheck disable=SC2086
cargo build -q ${CARGO_FLAGS:---features cluster} --example cluster
target=$(cargo metadata -q --format-version 1 --no-deps |
  python3 -c 'import json, sys; print(json.load(sys.stdin)["target_directory"])')
dir=$(mktemp -d)
name="smoke$(date +%s)$$"
port=${BASE_PORT:-18891}
"$target/debug/examples/cluster" --name "$name" --base-port "$port" --run-for 60 > "$dir/out" 2> "$dir/err" &
pid=$!
trap 'kill "$pid" 2>/dev/null; rm -rf "$dir"' EXIT
for _ in $(seq 1 300); do
  grep -q '^queued: ' "$dir/out" && break
  kill -0 "$pid" 2>/dev/null || { echo "cluster smoke: the example stopped:" >&2; cat "$dir/err" >&2; exit 1; }
  sleep 0.1
done
grep -q '^queued: a C2D greeting for cluster-device through gw2' "$dir/out" || {
  echo "cluster smoke: no greeting queued through gw2" >&2; cat "$dir/out" "$dir/err" >&2; exit 1; }
# The commands the example printed for each instance, as a user would paste them.
sub=$(grep -m1 'mosquitto_sub .* -p '"$port"' ' "$dir/out" | sed 's/^ *//')
pub=$(grep -m1 'mosquitto_pub .* -p '"$((port + 1))"' ' "$dir/out" | sed 's/^ *//')
got=$(bash -c "$sub -C 1 -W 10")
case "$got" in
  *"hello through gw2"*) echo "cluster smoke: gw0 delivered the greeting queued through gw2" ;;
  *) echo "cluster smoke: FAIL: gw0 gave '$got'" >&2; exit 1 ;;
esac
bash -c "$pub" 
for _ in $(seq 1 100); do
  grep -q '^telemetry: device=cluster-device .*payload=hello' "$dir/out" && break
  sleep 0.1
done
grep -q '^telemetry: device=cluster-device .*payload=hello' "$dir/out" || {
  echo "cluster smoke: FAIL: telemetry sent to gw1 never reached the shared log" >&2; cat "$dir/out" >&2; exit 1; }
echo "cluster smoke: telemetry sent to gw1 is in the shared log"
