#!/usr/bin/env bash
# MQTT throughput and latency: our gateway's endpoint beside Mosquitto, the same load generator
# (examples/mqtt_load.rs, rumqttc devices) against both, in one run on this machine.
#
#   scripts/mqtt/bench.sh            # 1000 devices x 100 QoS 1 messages of 100 bytes
#   DEVICES=100 MESSAGES=100 scripts/mqtt/bench.sh   # quick
#
# Mosquitto runs as a second instance on its own port (the service on 1883 is left alone), with
# max_queued_messages 0 so that it queues without dropping for the slow consumer.
set -euo pipefail
cd "$(dirname "$0")/../.."
devices=${DEVICES:-1000}
messages=${MESSAGES:-100}
qos=${QOS:-1}
payload=${PAYLOAD:-100}
port=${MOSQUITTO_PORT:-1885}
# Each device is a socket on both ends.
ulimit -n 65536 2>/dev/null || ulimit -n "$(ulimit -Hn)"

dir=$(mktemp -d)
cat > "$dir/mosquitto.conf" <<CONF
listener $port 127.0.0.1
allow_anonymous true
persistence false
max_queued_messages 0
max_connections -1
CONF
mosquitto=$(command -v mosquitto || echo /usr/sbin/mosquitto)
"$mosquitto" -c "$dir/mosquitto.conf" > "$dir/mosquitto.log" 2>&1 &
mpid=$!
trap 'kill "$mpid" 2>/dev/null || true; rm -rf "$dir"' EXIT
# The load generator retries a refused connection for ever: wait until this Mosquitto listens,
# and stop with its log if it died (for example because the port was still taken).
for _ in $(seq 50); do
  (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null && break
  kill -0 "$mpid" 2>/dev/null || { echo "mosquitto on port $port did not start:" >&2; cat "$dir/mosquitto.log" >&2; exit 1; }
  sleep 0.1
done

cargo build --release --example mqtt_load
load="${CARGO_TARGET_DIR:-target}/release/examples/mqtt_load"
common=(--devices "$devices" --messages "$messages" --qos "$qos" --payload "$payload")

"$load" --target gateway "${common[@]}" | tee "$dir/gateway.out"
"$load" --target broker --broker "127.0.0.1:$port" "${common[@]}" | tee "$dir/mosquitto.out"

python3 - "$dir/gateway.out" "$dir/mosquitto.out" <<'PY'
import json, sys
ours = json.loads(open(sys.argv[1]).read().strip().splitlines()[-1])
theirs = json.loads(open(sys.argv[2]).read().strip().splitlines()[-1])
ratio = ours["msgs_per_s"] / theirs["msgs_per_s"] if theirs["msgs_per_s"] else float("nan")
print(f"gateway/mosquitto throughput ratio: {ratio:.2f}")
print(json.dumps({
    "devices": ours["devices"], "qos": ours["qos"],
    "gateway_msgs_per_s": ours["msgs_per_s"], "mosquitto_msgs_per_s": theirs["msgs_per_s"],
    "gateway_vs_mosquitto": round(ratio, 3),
    "gateway_lost": ours["expected"] - ours["received"],
    "mosquitto_lost": theirs["expected"] - theirs["received"],
    "gateway_p99_ms": ours["p99_ms"], "mosquitto_p99_ms": theirs["p99_ms"],
}))
PY
