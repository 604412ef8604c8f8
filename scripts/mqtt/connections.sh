#!/usr/bin/env bash
# Concurrent TLS device connections: starts examples/mqtt_gateway with a fleet of N provisioned
# devices, holds N TLS connections to it from examples/mqtt_load (rumqttc devices, another
# process), and prints the gateway's resident memory per connection and the connect rate.
#
#   scripts/mqtt/connections.sh                 # 10 000 TLS connections
#   DEVICES=500 HOLD=6 scripts/mqtt/connections.sh   # quick
#   TRANSPORT=tcp scripts/mqtt/connections.sh        # plain TCP, to see what TLS costs
#   MAX_KIB_PER_CONNECTION=32 scripts/mqtt/connections.sh   # also fail above that figure
#   DEVICES=100000 scripts/mqtt/connections.sh      # 100 000 (in shards, see below)
#
# Every connection is a file descriptor in the gateway and another in the load generator. The
# script raises the limit to the hard limit, and the hard limit too when it may (root with
# CAP_SYS_RESOURCE). Where the hard limit is lower than one process needs, the devices are split
# into SHARDS pairs of one gateway and one load generator, each pair on ports of its own, all
# running at once on this machine (as several gateway instances behind a load balancer would);
# the figures are summed over the pairs. One (source address, destination address, port) triple
# has about 28 000 source ports (net.ipv4.ip_local_port_range), so a shard of more than 20 000
# devices dials several loopback addresses (SPREAD, default 8 then) and its gateway listens on
# 0.0.0.0 to take them all; TLS still checks that the certificate names the host.
#
# RSS per connection = sum over gateways of (VmRSS while all are held - VmRSS before the first
# connects) / connections; each fleet is provisioned before the first reading, so only the
# connections are counted.
set -euo pipefail
cd "$(dirname "$0")/../.."
devices=${DEVICES:-10000}
hold=${HOLD:-20}
tls_port=${TLS_PORT:-8884}
tcp_port=${TCP_PORT:-1886}
profile=${PROFILE:-release}
transport=${TRANSPORT:-tls}
# The gateways are read a few seconds into the hold, while every connection is still open.
settle=3
if [ "$hold" -lt $((settle + 3)) ]; then
  echo "connections.sh: HOLD must be at least $((settle + 3)) seconds" >&2
  exit 1
fi

# Descriptors: as many as the hard limit allows, raising it first if we may.
want=$((devices + 1024))
if [ "$(ulimit -Hn)" != unlimited ] && [ "$(ulimit -Hn)" -lt "$want" ]; then
  ulimit -Hn "$want" 2>/dev/null || true
fi
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
limit=$(ulimit -n)
[ "$limit" = unlimited ] && limit=$want
per_process=$((limit - 1024))
if [ "$per_process" -lt 1 ]; then
  echo "connections.sh: the file-descriptor limit is $limit; that leaves no room for connections" >&2
  exit 1
fi
shards=${SHARDS:-$(((devices + per_process - 1) / per_process))}
if [ $(((devices + shards - 1) / shards)) -gt "$per_process" ]; then
  echo "connections.sh: $shards shards of $(((devices + shards - 1) / shards)) devices need more than the $limit descriptors a process may have (raising the hard limit needs CAP_SYS_RESOURCE); set SHARDS higher" >&2
  exit 1
fi
if [ "$shards" -gt 1 ]; then
  echo "connections.sh: the descriptor limit is $limit per process, so $devices devices run as $shards gateway/load-generator pairs"
fi
per_shard() { # devices of shard $1
  local base=$((devices / shards)) extra=$((devices % shards))
  echo $((base + ($1 < extra ? 1 : 0)))
}
largest=$(per_shard 0)
if [ "$largest" -gt 20000 ]; then spread=${SPREAD:-8}; else spread=${SPREAD:-1}; fi
if [ "$spread" -gt 1 ]; then listen_ip=0.0.0.0; else listen_ip=127.0.0.1; fi

if [ "$profile" = release ]; then
  cargo build -q --release --example mqtt_gateway --example mqtt_load
else
  cargo build -q --example mqtt_gateway --example mqtt_load
fi
bin="${CARGO_TARGET_DIR:-target}/$profile/examples"

dir=$(mktemp -d)
gateways=()
loads=()
trap 'kill "${gateways[@]}" "${loads[@]}" 2>/dev/null || true; rm -rf "$dir"' EXIT

# Waits until file $1 has a line starting with $2, while process $3 lives, for up to 300 s.
wait_line() {
  for _ in $(seq 3000); do
    grep -q "^$2" "$1" && return 0
    kill -0 "$3" 2>/dev/null || return 1
    sleep 0.1
  done
  return 1
}

for s in $(seq 0 $((shards - 1))); do
  mkdir -p "$dir/$s"
  "$bin/mqtt_gateway" --data-dir "$dir/$s/data" --listen "$listen_ip:$((tcp_port + s))" \
    --tls-listen "$listen_ip:$((tls_port + s))" --self-signed --host localhost --device probe \
    --fleet "$(per_shard "$s")" > "$dir/$s/gateway.out" 2> "$dir/$s/gateway.err" &
  gateways+=($!)
done
for s in $(seq 0 $((shards - 1))); do
  if ! wait_line "$dir/$s/gateway.out" queued: "${gateways[$s]}"; then
    echo "connections.sh: gateway $s did not get ready (fleet of $(per_shard "$s")) within 300 s" >&2
    cat "$dir/$s/gateway.out" "$dir/$s/gateway.err" >&2
    exit 1
  fi
  grep '^fleet:' "$dir/$s/gateway.out"
done
rss() { awk '/^VmRSS:/ { print $2 }' "/proc/$1/status"; }
sleep 1
before=()
for s in $(seq 0 $((shards - 1))); do before+=("$(rss "${gateways[$s]}")"); done

for s in $(seq 0 $((shards - 1))); do
  case "$transport" in
    tls) port=$((tls_port + s)); tls_flags=(--tls-ca "$dir/$s/data/tls/ca.pem") ;;
    tcp) port=$((tcp_port + s)); tls_flags=() ;;
    *) echo "connections.sh: TRANSPORT is tls or tcp" >&2; exit 1 ;;
  esac
  "$bin/mqtt_load" --mode connections --broker "127.0.0.1:$port" --host localhost \
    "${tls_flags[@]}" --fleet-key-file "$dir/$s/data/fleet.key" \
    --devices "$(per_shard "$s")" --hold "$hold" --spread "$spread" > "$dir/$s/load.out" &
  loads+=($!)
done
for s in $(seq 0 $((shards - 1))); do
  if ! wait_line "$dir/$s/load.out" held: "${loads[$s]}"; then
    echo "connections.sh: the devices of shard $s did not all connect within 300 s" >&2
    cat "$dir/$s/load.out" >&2
    exit 1
  fi
done
# Let the last handshakes' buffers settle, then read the gateways while everything is held.
sleep "$settle"
held=()
established=()
for s in $(seq 0 $((shards - 1))); do
  held+=("$(rss "${gateways[$s]}")")
  case "$transport" in tls) port=$((tls_port + s)) ;; *) port=$((tcp_port + s)) ;; esac
  established+=("$(ss -Htn state established "( sport = :$port )" | wc -l)")
done
for s in $(seq 0 $((shards - 1))); do
  rc=0
  wait "${loads[$s]}" || rc=$?
  cat "$dir/$s/load.out"
  if [ "$rc" -ne 0 ]; then
    echo "connections.sh: load generator $s failed (exit $rc)" >&2
    exit "$rc"
  fi
done
loads=()
peak=()
for s in $(seq 0 $((shards - 1))); do
  peak+=("$(awk '/^VmHWM:/ { print $2 }' "/proc/${gateways[$s]}/status")")
done

python3 - "$dir" "$shards" "$transport" "${MAX_KIB_PER_CONNECTION:-}" \
  "${before[*]}" "${held[*]}" "${peak[*]}" "${established[*]}" <<'PY'
import json, os, sys
d, shards, transport, limit = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4]
before, held, peak, established = ([int(x) for x in a.split()] for a in sys.argv[5:9])
limit = float(limit) if limit else None
loads = [json.loads(open(os.path.join(d, str(s), "load.out")).read().strip().splitlines()[-1])
         for s in range(shards)]
n = sum(l["connected"] for l in loads)
wanted = sum(l["devices"] for l in loads)
still = sum(l["still_connected"] for l in loads)
est = sum(established)
grown = sum(h - b for h, b in zip(held, before))
per = grown / n if n else float("nan")
# The shards connect at the same time: the rate is all connections over the slowest shard's time.
connect_s = max(l["connect_s"] for l in loads)
T = transport.upper()
print(f"gateway RSS: {sum(before)} KiB idle, {sum(held)} KiB with {n} {T} connections held "
      f"({est} established on the gateways' ports) in {shards} gateway process(es), "
      f"peak {sum(peak)} KiB")
print(f"RSS per connection: {per:.1f} KiB (goal <= 16 KiB); connected in {connect_s:.1f} s, "
      f"{n / connect_s:.0f}/s")
print(json.dumps({
    "transport": transport, "devices": wanted, "gateways": shards, "connected": n,
    "still_connected": still, "established_at_gateway": est, "connect_s": connect_s,
    "connects_per_s": round(n / connect_s) if connect_s else None,
    "rss_idle_kib": sum(before), "rss_held_kib": sum(held), "rss_peak_kib": sum(peak),
    "rss_per_connection_kib": round(per, 2),
}))
if n < wanted or still < n or est < n:
    sys.exit("connections.sh: not every device connected and stayed connected")
if limit is not None and per > limit:
    sys.exit(f"connections.sh: {per:.1f} KiB per connection is over MAX_KIB_PER_CONNECTION={limit:g}")
PY
