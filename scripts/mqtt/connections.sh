#!/usr/bin/env bash
# Concurrent TLS device connections: starts examples/mqtt_gateway with a fleet of N provisioned
# devices, holds N TLS connections to it from examples/mqtt_load (rumqttc devices, another
# process), and prints the gateway's resident memory per connection.
#
#   scripts/mqtt/connections.sh                 # 10 000 TLS connections
#   DEVICES=500 HOLD=6 scripts/mqtt/connections.sh   # quick
#   TRANSPORT=tcp scripts/mqtt/connections.sh        # plain TCP, to see what TLS costs
#   MAX_KIB_PER_CONNECTION=32 scripts/mqtt/connections.sh   # also fail above that figure
#   DEVICES=100000 scripts/mqtt/connections.sh      # 100 000: spread over 8 loopback addresses
#
# One (source address, destination address, port) triple has about 28 000 source ports
# (net.ipv4.ip_local_port_range), so above 20 000 devices the load generator dials several
# loopback addresses (SPREAD, default 8 there) and the gateway listens on 0.0.0.0 to take them
# all; TLS still checks that the certificate names the host. The file-descriptor limit is raised
# to what both processes need (as root, the hard limit too).
#
# RSS per connection = (gateway VmRSS while all are held - VmRSS before the first connects) / N;
# the fleet is provisioned before the first reading, so only the connections are counted.
set -euo pipefail
cd "$(dirname "$0")/../.."
devices=${DEVICES:-10000}
hold=${HOLD:-20}
tls_port=${TLS_PORT:-8884}
tcp_port=${TCP_PORT:-1886}
profile=${PROFILE:-release}
transport=${TRANSPORT:-tls}
if [ "$devices" -gt 20000 ]; then spread=${SPREAD:-8}; else spread=${SPREAD:-1}; fi
if [ "$spread" -gt 1 ]; then listen_ip=0.0.0.0; else listen_ip=127.0.0.1; fi
# The gateway is read a few seconds into the hold, while every connection is still open.
settle=3
if [ "$hold" -lt $((settle + 3)) ]; then
  echo "connections.sh: HOLD must be at least $((settle + 3)) seconds" >&2
  exit 1
fi

# Each connection is a file descriptor in the gateway and another in the load generator.
need=$((devices + 1024))
if [ "$(ulimit -Hn)" != unlimited ] && [ "$(ulimit -Hn)" -lt "$need" ]; then
  ulimit -Hn "$need" 2>/dev/null || true
fi
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
if [ "$(ulimit -n)" != unlimited ] && [ "$(ulimit -n)" -lt "$need" ]; then
  echo "connections.sh: the file-descriptor limit is $(ulimit -n) (hard $(ulimit -Hn)); $need are needed for $devices devices in one process (raising the hard limit needs CAP_SYS_RESOURCE)" >&2
  exit 1
fi

if [ "$profile" = release ]; then
  cargo build -q --release --example mqtt_gateway --example mqtt_load
else
  cargo build -q --example mqtt_gateway --example mqtt_load
fi
bin="${CARGO_TARGET_DIR:-target}/$profile/examples"

dir=$(mktemp -d)
"$bin/mqtt_gateway" --data-dir "$dir/data" --listen "$listen_ip:$tcp_port" \
  --tls-listen "$listen_ip:$tls_port" --self-signed --host localhost --device probe \
  --fleet "$devices" > "$dir/gateway.out" 2> "$dir/gateway.err" &
gateway=$!
load=
trap 'kill "$gateway" ${load:+"$load"} 2>/dev/null || true; rm -rf "$dir"' EXIT
for _ in $(seq 3000); do
  grep -q '^queued:' "$dir/gateway.out" && break
  kill -0 "$gateway" 2>/dev/null || break
  sleep 0.1
done
if ! grep -q '^queued:' "$dir/gateway.out"; then
  echo "connections.sh: the gateway did not get ready (fleet of $devices) within 300 s" >&2
  cat "$dir/gateway.out" "$dir/gateway.err" >&2
  exit 1
fi
grep '^fleet:' "$dir/gateway.out"
rss() { awk '/^VmRSS:/ { print $2 }' "/proc/$gateway/status"; }
sleep 1
before=$(rss)

case "$transport" in
  tls) port=$tls_port; tls_flags=(--tls-ca "$dir/data/tls/ca.pem") ;;
  tcp) port=$tcp_port; tls_flags=() ;;
  *) echo "connections.sh: TRANSPORT is tls or tcp" >&2; exit 1 ;;
esac
"$bin/mqtt_load" --mode connections --broker "127.0.0.1:$port" --host localhost \
  "${tls_flags[@]}" --fleet-key-file "$dir/data/fleet.key" \
  --devices "$devices" --hold "$hold" --spread "$spread" > "$dir/load.out" &
load=$!
for _ in $(seq 3000); do
  grep -q '^held:' "$dir/load.out" && break
  kill -0 "$load" 2>/dev/null || break
  sleep 0.1
done
if ! grep -q '^held:' "$dir/load.out"; then
  echo "connections.sh: the devices did not all connect within 300 s" >&2
  cat "$dir/load.out" >&2
  exit 1
fi
# Let the last handshakes' buffers settle, then read the gateway while everything is held.
sleep "$settle"
held_rss=$(rss)
established=$(ss -Htn state established "( sport = :$port )" | wc -l)
rc=0
wait "$load" || rc=$?
load=
cat "$dir/load.out"
if [ "$rc" -ne 0 ]; then
  echo "connections.sh: the load generator failed (exit $rc)" >&2
  exit "$rc"
fi
peak=$(awk '/^VmHWM:/ { print $2 }' "/proc/$gateway/status")

python3 - "$dir/load.out" "$before" "$held_rss" "$peak" "$established" "$transport" \
  "${MAX_KIB_PER_CONNECTION:-}" <<'PY'
import json, sys
load = json.loads(open(sys.argv[1]).read().strip().splitlines()[-1])
before, held, peak, established = (int(x) for x in sys.argv[2:6])
transport = sys.argv[6].upper()
limit = float(sys.argv[7]) if sys.argv[7] else None
n = load["connected"]
per = (held - before) / n if n else float("nan")
print(f"gateway RSS: {before} KiB idle, {held} KiB with {n} {transport} connections held "
      f"({established} established on the gateway's port), peak {peak} KiB")
print(f"RSS per connection: {per:.1f} KiB (goal <= 16 KiB)")
print(json.dumps({
    "transport": transport.lower(), "devices": load["devices"], "connected": n, "still_connected": load["still_connected"],
    "established_at_gateway": established, "connect_s": load["connect_s"],
    "connects_per_s": load["connects_per_s"],
    "rss_idle_kib": before, "rss_held_kib": held, "rss_peak_kib": peak,
    "rss_per_connection_kib": round(per, 2),
}))
if n < load["devices"] or load["still_connected"] < n or established < n:
    sys.exit("connections.sh: not every device connected and stayed connected")
if limit is not None and per > limit:
    sys.exit(f"connections.sh: {per:.1f} KiB per connection is over MAX_KIB_PER_CONNECTION={limit:g}")
PY
