#!/usr/bin/env bash
# Runs examples/hub with --metrics-listen, loads it with mosquitto_pub (telemetry from one device,
# small and 5 000-byte messages, over many short connections), curls /metrics during the load and
# after it, and checks that the counters moved, that the final counts and the daily metering (4 KB
# units) match what was sent, and that `promtool check metrics` accepts the output.
# Needs mosquitto-clients, curl and promtool (Debian package `prometheus`).
set -euo pipefail
cd "$(dirname "$0")/.."
dir=$(mktemp -d)
out="$dir/hub.out"
# CARGO_FLAGS: the packages and features to build with (CI passes its one all-features selection,
# so that nothing is rebuilt under another feature resolution).
# shellcheck disable=SC2086
cargo build -q ${CARGO_FLAGS:---features http} --example hub --example sas
bin="${CARGO_TARGET_DIR:-target}/debug/examples"
"$bin/hub" --data-dir "$dir/data" --listen 127.0.0.1:0 --metrics-listen 127.0.0.1:0 \
  --host localhost --device load-1 --run-for 600 > "$out" &
pid=$!
trap 'kill "$pid" 2>/dev/null || true; rm -rf "$dir"' EXIT
for _ in $(seq 600); do grep -q '^metrics:' "$out" && break; sleep 0.1; done
cat "$out"
url=$(sed -n 's/^metrics: //p' "$out")
port=$(sed -n 's/^mqtt: 127.0.0.1:\([0-9]*\) .*/\1/p' "$out")
key=$(sed -n 's/.*SharedAccessKey=\(.*\)$/\1/p' "$out" | head -n 1)
token=$("$bin/sas" generate --resource localhost/devices/load-1 --key "$key" --expiry +3600)
publish() { # SMALL BIG: SMALL 20-byte and BIG 5 000-byte messages over one connection, QoS 1
  { for _ in $(seq "$1"); do printf 'x%.0s' $(seq 20); echo; done
    for _ in $(seq "$2"); do head -c 5000 /dev/zero | tr '\0' 'x'; echo; done; } |
    mosquitto_pub -h 127.0.0.1 -p "$port" -i load-1 -V mqttv311 -q 1 -l \
      -u 'localhost/load-1/?api-version=2021-04-12' -P "$token" \
      -t 'devices/load-1/messages/events/'
}
value() { # FILE METRIC-LINE-PREFIX: the value of the first sample starting with the prefix
  awk -v p="$2" 'index($0, p) == 1 { print $NF; exit }' "$1"
}

# The load, in the background: 8 connections (within the device's burst of 10 connects) of 250
# small messages each, 5 of them also with a 5 000-byte one. The device's telemetry budget (100/s
# after a burst of 1 000) spreads it over about ten seconds.
connections=8 small=250 big=5
( for i in $(seq "$connections"); do
    publish "$small" "$([ "$i" -le "$big" ] && echo 1 || echo 0)"
  done ) &
load=$!
sleep 2
curl -fsS "$url" > "$dir/during-1.txt"
sleep 2
curl -fsS "$url" > "$dir/during-2.txt"
wait "$load"
# Then connects faster than the device's budget (1/s after a burst of 10): some are refused.
accepted=0
for _ in $(seq 15); do
  if mosquitto_pub -h 127.0.0.1 -p "$port" -i load-1 -V mqttv311 -q 1 -m x \
      -u 'localhost/load-1/?api-version=2021-04-12' -P "$token" \
      -t 'devices/load-1/messages/events/' 2>/dev/null; then
    accepted=$((accepted + 1))
  fi
done
sleep 1
curl -fsS "$url" > "$dir/after.txt"

telemetry='iothub_messages_in_total{kind="telemetry"}'
opened='iothub_sessions_opened_total'
for f in during-1 during-2 after; do
  echo "$f: telemetry=$(value "$dir/$f.txt" "$telemetry") sessions_opened=$(value "$dir/$f.txt" "$opened")"
done
t1=$(value "$dir/during-1.txt" "$telemetry")
t2=$(value "$dir/during-2.txt" "$telemetry")
t3=$(value "$dir/after.txt" "$telemetry")
test "${t1:-0}" -lt "$t2"
test "$t2" -lt "$t3"
sent=$((connections * small + big + accepted))
test "$t3" -eq "$sent"
throttled=$(value "$dir/after.txt" 'iothub_throttled_total{operation="connect"}')
echo "connects refused by throttling: $throttled (accepted $accepted of 15)"
test "$throttled" -eq $((15 - accepted))
test "$throttled" -gt 0
# Metering: a small message is one 4 KB unit, a 5 000-byte one two.
units=$((connections * small + big * 2 + accepted))
hub_units=$(value "$dir/after.txt" 'iothub_daily_messages{')
device_units=$(awk '/^iothub_daily_device_messages\{.*device="load-1"/ { print $NF }' "$dir/after.txt" | tail -n 1)
echo "metered: hub=$hub_units device=$device_units expected=$units"
test "$hub_units" -eq "$units"
test "$device_units" -eq "$units"
grep -E '^iothub_(log_records|log_next_offset)\{topic="telemetry"\} '"$sent"'$' "$dir/after.txt"
# The lifecycle processor has turned the device's registration into an event.
grep -E '^iothub_consumer_lag\{group="lifecycle-events",topic="audit"\} 0$' "$dir/after.txt"
grep -E '^iothub_log_records\{topic="device-lifecycle-events"\} 1$' "$dir/after.txt"

for f in during-1 during-2 after; do
  promtool check metrics < "$dir/$f.txt"
done
kill -INT "$pid"
wait "$pid"
trap 'rm -rf "$dir"' EXIT
echo "metrics check: ok ($sent messages, counters moved during the load, promtool accepts the output)"
