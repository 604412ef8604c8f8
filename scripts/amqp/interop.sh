#!/usr/bin/env bash
# The AMQP endpoint against Microsoft's SDKs, unmodified (docs/amqp.md):
#  * Node azure-iot-device with azure-iot-device-amqp (telemetry with properties; C2D complete,
#    reject, abandon) and azure-iothub's service Client (C2D over AMQP, getFeedbackReceiver);
#  * the same SDKs for twin and direct methods over AMQP (node_twin_methods.js: getTwin, reported
#    update, a desired patch by Registry.updateTwin, a method by Client.invokeDeviceMethod; the
#    service calls are REST on port 443);
#  * both Node scripts again over AMQP over WebSocket (IOT_AMQP_TRANSPORT=amqp-ws: the device's
#    and the service Client's AmqpWs transports, wss://localhost:443/$iothub/websocket with the
#    subprotocol AMQPWSB10, which the hub's HTTPS listener hands to the AMQP endpoint);
#  * Python azure-iot-hub IoTHubRegistryManager.send_c2d_message (uamqp) reaching an
#    azure-iot-device client connected over MQTT, on 8883 and then over WebSocket on 443;
#  * a telemetry batch in IoT Hub's batch format (message format 0x80013700) from uAMQP's own
#    BatchMessage (python_batch.py; azure-iot-device-amqp's sendEventBatch is not implemented):
#    its three messages land in order with their properties.
# Installs what it needs: the Node packages into target/npm-amqp, the Python ones into .venv.
#
# The SDKs connect to HostName on 5671 (and MQTT on 8883, AMQP and MQTT over WebSocket on 443)
# whatever the connection string says, and the Node service SDK's REST calls go to 443, so this
# binds 127.0.0.1:5671, 127.0.0.1:8883 and 127.0.0.1:443 under /tmp/port5671.lock,
# /tmp/port8883.lock and /tmp/port443.lock, and runs the hub example (feature amqp) with
# --amqp-listen and --https-listen 127.0.0.1:443.
set -euo pipefail
cd "$(dirname "$0")/../.."

if ! command -v npm > /dev/null; then
  apt-get update -qq && apt-get install -y -qq nodejs npm
fi
node_dir=target/npm-amqp
mkdir -p "$node_dir"
[ -f "$node_dir/package.json" ] || (cd "$node_dir" && npm init -y > /dev/null)
(cd "$node_dir" && npm install --no-audit --no-fund --silent \
  azure-iot-device@1 azure-iot-device-amqp@1 azure-iothub@1 azure-iot-common@1)

[ -x .venv/bin/python ] || python3 -m venv .venv
# azure-iot-hub imports six without declaring it; uamqp is its AMQP stack.
.venv/bin/pip install --quiet --disable-pip-version-check azure-iot-device azure-iot-hub six

# CARGO_FLAGS: the packages and features to build with (CI passes its all-features selection).
# shellcheck disable=SC2086
cargo build -q ${CARGO_FLAGS:---features amqp} --example hub
target=$(cargo metadata -q --format-version 1 --no-deps |
  python3 -c 'import json, sys; print(json.load(sys.stdin)["target_directory"])')

exec 8> /tmp/port5671.lock
flock 8
exec 9> /tmp/port8883.lock
flock 9
exec 7> /tmp/port443.lock
flock 7

dir=$(mktemp -d)
hub=
trap '[ -n "$hub" ] && kill "$hub" 2>/dev/null; rm -rf "$dir"' EXIT
out="$dir/hub.out"
"$target/debug/examples/hub" --data-dir "$dir/data" --listen 127.0.0.1:0 --self-signed \
  --tls-listen 127.0.0.1:8883 --https-listen 127.0.0.1:443 --amqp-listen 127.0.0.1:5671 \
  --device amqp-node > "$out" 2> "$dir/hub.err" &
hub=$!
for _ in $(seq 1500); do
  grep -qs '^amqps:' "$out" && break
  kill -0 "$hub" 2>/dev/null || break
  sleep 0.02
done
if ! grep -qs '^amqps:' "$out"; then
  echo "amqp interop: the hub example did not start its AMQP endpoint" >&2
  cat "$dir/hub.err" >&2
  exit 1
fi
device_cs=$(sed -n 's/^connection-string: //p' "$out")
ca=$(sed -n 's/^ca-certificate: //p' "$out")
# iothubowner's connection string for HostName=localhost (the SDKs add the port themselves).
service_cs=$(sed -n 's/^service-connection-string: //p' "$out" | sed 's/HostName=[^;]*/HostName=localhost/')

# The AMQP endpoint over WebSocket is the HTTPS listener's (443), by subprotocol.
grep -q '^amqp-wss: wss://[^ ]*:443/\$iothub/websocket' "$out" ||
  { echo "amqp interop: the hub example does not serve AMQP over WebSocket on 443" >&2; exit 1; }

# The Node scenarios over AMQP/TLS (5671), then over AMQP over WebSocket (443).
for transport in amqp amqp-ws; do
  tag=; [ "$transport" = amqp-ws ] && tag=ws-
  IOT_AMQP_TRANSPORT="$transport" IOT_RUN_TAG="$tag" \
    IOT_DEVICE_CS="$device_cs" IOT_SERVICE_CS="$service_cs" IOT_CA="$ca" NODE_EXTRA_CA_CERTS="$ca" \
    NODE_PATH="$PWD/$node_dir/node_modules" node scripts/amqp/node_device.js

  # The telemetry landed with its properties and the device's id.
  # (The run over TLS comes first, so its pattern cannot match the WebSocket run's message.)
  pattern="telemetry: device=amqp-node .*message-id=node-amqp-$tag"
  for _ in $(seq 250); do
    grep -qs "$pattern" "$out" && break
    sleep 0.02
  done
  line=$(grep "$pattern" "$out" || true)
  for want in "message-id=node-amqp-$tag" 'content-type=application/json' 'correlation-id=corr-' 'site=lab-7'; do
    case "$line" in
      *"$want"*) ;;
      *) echo "amqp interop ($transport): telemetry lacks $want: $line" >&2; exit 1 ;;
    esac
  done

  IOT_AMQP_TRANSPORT="$transport" \
    IOT_DEVICE_CS="$device_cs" IOT_SERVICE_CS="$service_cs" IOT_CA="$ca" NODE_EXTRA_CA_CERTS="$ca" \
    NODE_PATH="$PWD/$node_dir/node_modules" node scripts/amqp/node_twin_methods.js
done

if [ "${AMQP_INTEROP_PYTHON:-1}" = 1 ]; then
  # The device on MQTT/TLS (8883), then on MQTT over WebSocket on 443: the HTTPS listener that
  # hands AMQPWSB10 to the AMQP endpoint hands the subprotocol mqtt to the MQTT endpoint.
  for websockets in 0 1; do
    py_out=$(IOT_MQTT_WEBSOCKETS="$websockets" IOT_DEVICE_CS="$device_cs" \
      IOT_SERVICE_CS="$service_cs" IOT_CA="$ca" .venv/bin/python scripts/amqp/python_c2d.py)
    echo "$py_out"
    message_id=$(echo "$py_out" | sed -n 's/^message-id: //p')
    # azure-iot-hub has no feedback receiver: Node's reads the completion over AMQP.
    IOT_SERVICE_CS="$service_cs" IOT_MESSAGE_ID="$message_id" NODE_EXTRA_CA_CERTS="$ca" \
      NODE_PATH="$PWD/$node_dir/node_modules" node scripts/amqp/node_feedback.js
  done

  IOT_DEVICE_CS="$device_cs" IOT_CA="$ca" IOT_BATCH_TAG=t- .venv/bin/python scripts/amqp/python_batch.py
  # Accepted means appended: each message of the batch is a record, in order, with its properties
  # (the hub example prints the log as it follows it).
  for _ in $(seq 250); do
    [ "$(grep -c 'message-id=py-batch-t-' "$out")" -ge 3 ] && break
    sleep 0.02
  done
  lines=$(grep 'telemetry: device=amqp-node .*message-id=py-batch-t-' "$out" || true)
  for i in 0 1 2; do
    line=$(echo "$lines" | sed -n "$((i + 1))p")
    for want in "message-id=py-batch-t-$i" 'content-type=application/json' "batch-index=$i" 'site=lab-9' "payload={\"batch\":$i}"; do
      case "$line" in
        *"$want"*) ;;
        *) echo "amqp interop (batch): message $i lacks $want: $line" >&2; exit 1 ;;
      esac
    done
  done
fi

kill -INT "$hub"
wait "$hub"
hub=
grep -q '^stopped$' "$out" || { echo "amqp interop: the hub example did not stop gracefully" >&2; exit 1; }
echo "amqp interop: ok"
