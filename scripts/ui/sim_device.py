"""A simulated device for the dashboard test, written with paho-mqtt (Eclipse's Python client).

It connects to the hub's plain MQTT listener with the device connection string it is given
(IoT Hub's MQTT conventions: user name `{hub}/{device}/?api-version=…`, a SAS token as password),
sends a JSON reading every --interval seconds (every 10th one over 80 °C, so the hub's
`overheat` rule raises an alert), and answers every direct method with status 200 and
{"answeredBy": device, "method": name, "request": payload}. One line per event on stdout.
Works with paho-mqtt 1.6 (what azure-iot-device pins) and 2.x.
"""

import argparse
import base64
import hashlib
import hmac
import json
import math
import sys
import threading
import time
import urllib.parse

import paho.mqtt.client as mqtt

API_VERSION = "2021-04-12"


def parse_connection_string(text):
    parts = dict(p.split("=", 1) for p in text.strip().split(";") if "=" in p)
    return parts["HostName"], parts["DeviceId"], parts["SharedAccessKey"]


def sas_token(resource, key_b64, ttl=3600):
    expiry = int(time.time()) + ttl
    encoded = urllib.parse.quote(resource, safe="")
    signed = hmac.new(base64.b64decode(key_b64), f"{encoded}\n{expiry}".encode(), hashlib.sha256)
    sig = urllib.parse.quote(base64.b64encode(signed.digest()).decode(), safe="")
    return f"SharedAccessSignature sr={encoded}&sig={sig}&se={expiry}"


def make_client(device_id):
    options = dict(client_id=device_id, clean_session=True, protocol=mqtt.MQTTv311)
    if hasattr(mqtt, "CallbackAPIVersion"):
        return mqtt.Client(mqtt.CallbackAPIVersion.VERSION1, **options)
    return mqtt.Client(**options)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--connection-string", required=True)
    parser.add_argument("--interval", type=float, default=0.5)
    parser.add_argument("--count", type=int, default=0, help="stop after N readings (0: never)")
    args = parser.parse_args()

    hub, device, key = parse_connection_string(args.connection_string)
    client = make_client(device)
    client.username_pw_set(f"{hub}/{device}/?api-version={API_VERSION}",
                           sas_token(f"{hub}/devices/{device}", key))
    connected = threading.Event()

    def on_connect(c, _u, _flags, rc):
        print(f"connected device={device} rc={rc}", flush=True)
        if rc == 0:
            c.subscribe("$iothub/methods/POST/#", qos=0)
            connected.set()

    def on_message(c, _u, msg):
        # $iothub/methods/POST/{name}/?$rid={rid}
        rest = msg.topic[len("$iothub/methods/POST/"):]
        name, _, query = rest.partition("/?")
        rid = urllib.parse.parse_qs(query).get("$rid", [""])[0]
        try:
            request = json.loads(msg.payload.decode() or "null")
        except ValueError:
            request = msg.payload.decode(errors="replace")
        answer = {"answeredBy": device, "method": name, "request": request}
        c.publish(f"$iothub/methods/res/200/?$rid={rid}", json.dumps(answer), qos=0)
        print(f"method {name} rid={rid} answered", flush=True)

    def on_disconnect(_c, _u, rc):
        print(f"disconnected rc={rc}", flush=True)

    client.on_connect = on_connect
    client.on_message = on_message
    client.on_disconnect = on_disconnect
    client.connect("127.0.0.1", args.port, keepalive=30)
    client.loop_start()
    if not connected.wait(20):
        print("no CONNACK", flush=True)
        return 1
    topic = f"devices/{device}/messages/events/%24.ct=application%2Fjson&%24.ce=utf-8"
    n = 0
    while args.count == 0 or n < args.count:
        n += 1
        hot = n % 10 == 0
        reading = {
            "temperature": round(85.0 if hot else 21.0 + 3 * math.sin(n / 5), 2),
            "humidity": round(40.0 + 5 * math.cos(n / 7), 2),
            "seq": n,
        }
        info = client.publish(topic, json.dumps(reading), qos=1)
        info.wait_for_publish(10)
        print(f"sent seq={n} acked={info.is_published()}", flush=True)
        time.sleep(args.interval)
    client.loop_stop()
    client.disconnect()
    return 0


if __name__ == "__main__":
    sys.exit(main())
