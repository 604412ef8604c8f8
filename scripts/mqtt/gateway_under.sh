#!/usr/bin/env bash
# One out-of-process gateway run as bench.sh makes it (memory log, no throttling, its fleet
# driven by examples/mqtt_load --target remote), with the gateway started under a tool, to see
# where its time goes:
#
#   scripts/mqtt/gateway_under.sh valgrind --tool=callgrind --dump-instr=no --callgrind-out-file=gw.cg
#   scripts/mqtt/gateway_under.sh strace -c -f -o gw.strace
#   DEVICES=100 MESSAGES=1 scripts/mqtt/gateway_under.sh valgrind ...   # startup alone, to subtract
#
# Prints mqtt_load's JSON line. The gateway is stopped with SIGINT (sent to the gateway itself,
# also when the tool runs it as a child), so that the tool writes its report. Uses the release
# build of both examples (PROFILE=debug for the debug one); builds nothing.
set -euo pipefail
cd "$(dirname "$0")/../.."
[ $# -gt 0 ] || { echo "usage: $0 TOOL [ARGS...]" >&2; exit 2; }
devices=${DEVICES:-100}
messages=${MESSAGES:-200}
port=${GATEWAY_PORT:-18862}
stats_port=${STATS_PORT:-18863}
bin="${CARGO_TARGET_DIR:-target}/${PROFILE:-release}/examples"
data=$(mktemp -d)
trap 'rm -rf "$data"' EXIT

"$@" "$bin/mqtt_gateway" --data-dir "$data" --listen "127.0.0.1:$port" --host localhost \
  --device bench-0 --fleet "$devices" --log memory --no-throttle \
  --telemetry-stats "127.0.0.1:$stats_port" > "$data/gateway.log" 2>&1 &
pid=$!
# A tool such as valgrind may take a while to start the gateway (up to 60 s here).
for _ in $(seq 600); do
  (exec 3<>"/dev/tcp/127.0.0.1/$stats_port") 2>/dev/null && break
  kill -0 "$pid" 2>/dev/null || { cat "$data/gateway.log" >&2; exit 1; }
  sleep 0.1
done
"$bin/mqtt_load" --target remote --broker "127.0.0.1:$port" --stats "127.0.0.1:$stats_port" \
  --fleet-key-file "$data/fleet.key" --host localhost --devices "$devices" \
  --messages "$messages" --qos 1 --payload 100 | tail -1
# strace runs the gateway as its child; valgrind runs it in its own process.
gateway=$(pgrep -P "$pid" | head -1 || true)
kill -INT "${gateway:-$pid}"
wait "$pid" || true
