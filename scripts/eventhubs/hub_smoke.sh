#!/usr/bin/env bash
# The hub example's --eventhubs-listen: starts `hub` (debug build in $EXAMPLES_BIN, else
# target/debug/examples) with a self-signed certificate, takes its
# `eventhubs-connection-string:` line, and has azure-eventhub (.venv) read the entity's and every
# partition's properties through it over TLS (consume.py --expect 0). About 5 s.
set -euo pipefail
cd "$(dirname "$0")/../.."
bin=${EXAMPLES_BIN:-target/debug/examples}
dir=$(mktemp -d)
hub=
trap '[ -n "$hub" ] && kill "$hub" 2>/dev/null; rm -rf "$dir"' EXIT
"$bin/hub" --data-dir "$dir/data" --self-signed --listen 127.0.0.1:0 \
  --eventhubs-listen 127.0.0.1:0 --run-for 60 > "$dir/out" 2> "$dir/err" &
hub=$!
for _ in $(seq 100); do grep -q '^eventhubs-connection-string:' "$dir/out" && break; sleep 0.1; done
conn=$(sed -n 's/^eventhubs-connection-string: //p' "$dir/out")
endpoint=$(sed -n 's/^eventhubs: amqps:\/\/[^ ]* (custom endpoint address \(.*\))$/\1/p' "$dir/out")
ca=$(sed -n 's/^ca-certificate: //p' "$dir/out")
if [ -z "$conn" ] || [ -z "$endpoint" ]; then
  echo "hub_smoke: FAIL: no eventhubs lines" >&2; cat "$dir/out" "$dir/err" >&2; exit 1
fi
case "$conn" in
  Endpoint=sb://localhost/\;SharedAccessKeyName=service\;SharedAccessKey=*\;EntityPath=localhost) ;;
  *) echo "hub_smoke: FAIL: unexpected connection string shape" >&2; exit 1 ;;
esac
out=$(.venv/bin/python scripts/eventhubs/consume.py --connection-string "$conn" \
  --endpoint "$endpoint" --ca "$ca" --expect 0)
echo "$out" | python3 -c '
import json, sys
lines = [json.loads(l) for l in sys.stdin]
eh = next(l["eventhub"] for l in lines if "eventhub" in l)
assert eh["name"] == "localhost" and len(eh["partition_ids"]) == 8, eh
assert sum("partition_properties" in l for l in lines) == 8, lines
print("hub_smoke: azure-eventhub read the properties of", eh["name"], "and its", len(eh["partition_ids"]), "partitions")'
