#!/usr/bin/env bash
# MQTT throughput, as users run it: our gateway in a process of its own beside Mosquitto and
# rumqttd, the same load generator (examples/mqtt_load, rumqttc devices) against each, in one run
# on this machine. The gateway runs three times, once per place its telemetry log lives:
#
#   memory    the log in memory (what Mosquitto and rumqttd keep: nothing on disk)
#   buffered  a FileLog left to the OS page cache (survives kill -9 of the gateway)
#   durable   a FileLog fsynced before each PUBACK (group commit; survives a power cut)
#
#   scripts/mqtt/bench.sh                               # 1000 devices x 100 QoS 1 messages of 100 B
#   DEVICES=100 MESSAGES=100 scripts/mqtt/bench.sh      # quick
#   PROFILE=debug RUMQTTD=0 DEVICES=20 MESSAGES=20 scripts/mqtt/bench.sh   # CI smoke: no rumqttd,
#                                                       # and gateway_lost must be 0
#
# The last line is a JSON object: msgs/s of each, the ratios gateway_{memory,buffered,durable}
# _vs_mosquitto and gateway_memory_vs_rumqttd, and gateway_lost (acknowledged messages that never
# reached the gateway's log consumer, summed over the three runs).
#
# Mosquitto and rumqttd run as instances of their own on spare ports (the Mosquitto service on
# 1883 is left alone). rumqttd is the crate's own binary, installed on first use into a scratch
# root (RUMQTTD_ROOT, default ~/.cache/iot-sdk/rumqttd) with `cargo install rumqttd`: not
# `--locked`, whose pinned `metrics` release no longer compiles on current Rust.
set -euo pipefail
cd "$(dirname "$0")/../.."
devices=${DEVICES:-1000}
messages=${MESSAGES:-100}
qos=${QOS:-1}
payload=${PAYLOAD:-100}
# Ports of their own (connections.sh and the examples use 1884-1886 and 8883-8884).
mosquitto_port=${MOSQUITTO_PORT:-18850}
rumqttd_port=${RUMQTTD_PORT:-18851}
gateway_port=${GATEWAY_PORT:-18852}
stats_port=${STATS_PORT:-18853}
rumqttd_root=${RUMQTTD_ROOT:-$HOME/.cache/iot-sdk/rumqttd}
with_rumqttd=${RUMQTTD:-1}
profile=${PROFILE:-release}
# Each device is a socket on both ends.
ulimit -n 65536 2>/dev/null || ulimit -n "$(ulimit -Hn)"

dir=$(mktemp -d)
pids=()
cleanup() {
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  rm -rf "$dir"
}
trap cleanup EXIT

# Waits until something listens on 127.0.0.1:$1; stops with the log $3 if process $2 died. A
# port already taken by someone else would look ready while our server failed to bind, so the
# port must be free before the server starts (check_free) and the server alive once it listens.
check_free() {
  if (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; then
    echo "bench.sh: port $1 is taken by another program; choose another (see the *_PORT variables)" >&2
    exit 1
  fi
}
wait_listening() {
  for _ in $(seq 300); do
    if (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; then
      sleep 0.2
      kill -0 "$2" 2>/dev/null && return 0
      echo "the server for port $1 exited after it began listening:" >&2; cat "$3" >&2; exit 1
    fi
    kill -0 "$2" 2>/dev/null || { echo "the server for port $1 did not start:" >&2; cat "$3" >&2; exit 1; }
    sleep 0.1
  done
  echo "nothing listens on port $1 after 30 s:" >&2; cat "$3" >&2; exit 1
}

if [ "$with_rumqttd" = 1 ] && [ ! -x "$rumqttd_root/bin/rumqttd" ]; then
  echo "installing rumqttd into $rumqttd_root (first run only)"
  cargo install rumqttd --root "$rumqttd_root"
fi
if [ "$profile" = release ]; then
  cargo build --release --example mqtt_load --example mqtt_gateway
else
  cargo build --example mqtt_load --example mqtt_gateway
fi
bin="${CARGO_TARGET_DIR:-target}/$profile/examples"
for port in "$mosquitto_port" "$rumqttd_port" "$gateway_port" "$stats_port"; do check_free "$port"; done
common=(--devices "$devices" --messages "$messages" --qos "$qos" --payload "$payload")

# --- Mosquitto: queues without dropping for the slow consumer (max_queued_messages 0).
cat > "$dir/mosquitto.conf" <<CONF
listener $mosquitto_port 127.0.0.1
allow_anonymous true
persistence false
max_queued_messages 0
max_connections -1
CONF
mosquitto=$(command -v mosquitto || echo /usr/sbin/mosquitto)
"$mosquitto" -c "$dir/mosquitto.conf" > "$dir/mosquitto.log" 2>&1 &
pids+=($!)
wait_listening "$mosquitto_port" "$!" "$dir/mosquitto.log"
"$bin/mqtt_load" --target broker --broker "127.0.0.1:$mosquitto_port" "${common[@]}" | tee "$dir/mosquitto.out"
kill "${pids[-1]}"

# --- rumqttd: one MQTT 3.1.1 listener, room for every device, payloads and in-flight windows
# at least as large as the load generator's.
if [ "$with_rumqttd" = 1 ]; then
  cat > "$dir/rumqttd.toml" <<CONF
id = 0
[router]
id = 0
  max_connections = $((devices + 16))
  max_outgoing_packet_count = 200
  max_segment_size = 104857600
  max_segment_count = 10
[v4.1]
name = "v4-1"
listen = "127.0.0.1:$rumqttd_port"
next_connection_delay_ms = 0
    [v4.1.connections]
    connection_timeout_ms = 60000
    max_payload_size = $((payload + 1024))
    max_inflight_count = 1000
    dynamic_filters = true
CONF
  "$rumqttd_root/bin/rumqttd" --config "$dir/rumqttd.toml" > "$dir/rumqttd.log" 2>&1 &
  pids+=($!)
  wait_listening "$rumqttd_port" "$!" "$dir/rumqttd.log"
  "$bin/mqtt_load" --target broker --broker "127.0.0.1:$rumqttd_port" "${common[@]}" | tee "$dir/rumqttd.out"
  kill "${pids[-1]}"
fi

# --- Our gateway, out of process, once per log durability. It counts the telemetry that lands
# in its log and answers the load generator's polls on the stats port.
for mode in memory buffered fsync; do
  data="$dir/gateway-$mode"
  "$bin/mqtt_gateway" --data-dir "$data" --listen "127.0.0.1:$gateway_port" --host localhost \
    --device bench-0 --fleet "$devices" --log "$mode" --no-throttle \
    --telemetry-stats "127.0.0.1:$stats_port" > "$dir/gateway-$mode.log" 2>&1 &
  pid=$!
  pids+=("$pid")
  wait_listening "$stats_port" "$pid" "$dir/gateway-$mode.log"
  "$bin/mqtt_load" --target remote --broker "127.0.0.1:$gateway_port" \
    --stats "127.0.0.1:$stats_port" --fleet-key-file "$data/fleet.key" --host localhost \
    "${common[@]}" | tee "$dir/gateway-$mode.out"
  kill -INT "$pid"
  wait "$pid" || { echo "the $mode gateway did not stop cleanly:" >&2; tail -20 "$dir/gateway-$mode.log" >&2; exit 1; }
done

python3 - "$dir" <<'PY'
import json, os, sys
d = sys.argv[1]
def last(name):
    return json.loads(open(os.path.join(d, name + ".out")).read().strip().splitlines()[-1])
mosq = last("mosquitto")
rumq = last("rumqttd") if os.path.exists(os.path.join(d, "rumqttd.out")) else None
gw = {m: last("gateway-" + m) for m in ("memory", "buffered", "fsync")}
def ratio(a, b):
    if b is None or not b["msgs_per_s"]:
        return None
    return round(a["msgs_per_s"] / b["msgs_per_s"], 3)
out = {
    "devices": mosq["devices"], "messages": mosq["expected"], "qos": mosq["qos"],
    "mosquitto_msgs_per_s": mosq["msgs_per_s"],
    "rumqttd_msgs_per_s": rumq["msgs_per_s"] if rumq else None,
    "gateway_memory_msgs_per_s": gw["memory"]["msgs_per_s"],
    "gateway_buffered_msgs_per_s": gw["buffered"]["msgs_per_s"],
    "gateway_durable_msgs_per_s": gw["fsync"]["msgs_per_s"],
    "gateway_memory_vs_mosquitto": ratio(gw["memory"], mosq),
    "gateway_buffered_vs_mosquitto": ratio(gw["buffered"], mosq),
    "gateway_durable_vs_mosquitto": ratio(gw["fsync"], mosq),
    "gateway_memory_vs_rumqttd": ratio(gw["memory"], rumq),
    "gateway_lost": sum(g["expected"] - g["received"] for g in gw.values()),
    "mosquitto_lost": mosq["expected"] - mosq["received"],
    "rumqttd_lost": rumq["expected"] - rumq["received"] if rumq else None,
    "gateway_durable_p99_ms": gw["fsync"]["p99_ms"], "mosquitto_p99_ms": mosq["p99_ms"],
    "rumqttd_p99_ms": rumq["p99_ms"] if rumq else None,
}
for k in ("memory", "buffered", "durable"):
    print(f"gateway {k} / mosquitto: {out['gateway_' + k + '_vs_mosquitto']}")
print(f"gateway memory / rumqttd: {out['gateway_memory_vs_rumqttd']}")
print(json.dumps(out))
PY
