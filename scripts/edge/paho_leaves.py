"""Leaf devices written with paho-mqtt (Eclipse's Python client) in front of a field gateway,
driven by iot-gateway's test `field_gateway_kill` (feature `edge-interop`).

One process, one paho client per leaf (each with paho's own network thread), plain MQTT to the
field gateway's endpoint. The configuration is a JSON file:
  {"port": 1234, "pace_ms": 100, "leaves": [{"id": "...", "username": "...", "password": "..."}]}

Modes:
  telemetry  every leaf sends numbered QoS 1 messages (payload and property `seq` = n, message id
             `{leaf}-{n}`), one in flight at a time, the next `pace_ms` after the PUBACK. paho
             reconnects by itself (0.1 s to 1 s apart) and sends the unacknowledged message
             again after the CONNACK (with DUP), as an application relying on paho does. Prints
             `READY` once every leaf is connected; when stdin closes, stops sending, waits for
             the messages in flight (up to 10 s), and prints one JSON line:
             {"acked": {"leaf": last PUBACKed n, ...}, "reconnects": N}
  downlink   the first leaf subscribes to its C2D messages and direct methods, prints `READY`,
             then one JSON line per C2D message ({"c2d": topic, "payload": ...}) and per method
             call ({"method": name, "payload": ...}); it answers every method with status 200 and
             {"echo": <request payload>}. Ends when stdin closes.
Works with paho-mqtt 1.6 (what azure-iot-device pins) and 2.x.
"""

import argparse
import json
import sys
import threading
import time

import paho.mqtt.client as mqtt


def make_client(device_id):
    options = dict(client_id=device_id, clean_session=True, protocol=mqtt.MQTTv311)
    if hasattr(mqtt, "CallbackAPIVersion"):
        return mqtt.Client(mqtt.CallbackAPIVersion.VERSION1, **options)
    return mqtt.Client(**options)


def emit(obj):
    print(json.dumps(obj) if not isinstance(obj, str) else obj, flush=True)


class Leaf:
    """One leaf's paho client and its numbered-message state (guarded by `lock`)."""

    def __init__(self, spec, port):
        self.id = spec["id"]
        self.lock = threading.Lock()
        self.connected = threading.Event()
        self.next_seq = 1
        self.inflight = None  # (mid, seq) of the message waiting for its PUBACK
        self.acked = 0
        self.acked_at = 0.0
        self.connects = 0
        self.client = make_client(self.id)
        self.client.username_pw_set(spec["username"], spec["password"])
        self.client.reconnect_delay_set(min_delay=0.1, max_delay=1)
        self.client.on_connect = self.on_connect
        self.client.on_disconnect = self.on_disconnect
        self.client.on_publish = self.on_publish
        self.port = port

    def on_connect(self, _c, _u, _flags, rc):
        if rc == 0:
            self.connects += 1
            self.connected.set()

    def on_disconnect(self, _c, _u, _rc):
        self.connected.clear()

    def on_publish(self, _c, _u, mid):
        with self.lock:
            if self.inflight is not None and self.inflight[0] == mid:
                self.acked = self.inflight[1]
                self.inflight = None
                self.acked_at = time.monotonic()

    def start(self):
        # connect_async: the network thread makes the first connection too, and retries it.
        self.client.connect_async("127.0.0.1", self.port, keepalive=30)
        self.client.loop_start()

    def send_next(self, pace):
        """Publishes the next message if none is in flight and the pace allows it."""
        with self.lock:
            if self.inflight is not None or time.monotonic() - self.acked_at < pace:
                return
            seq = self.next_seq
            topic = f"devices/{self.id}/messages/events/%24.mid={self.id}-{seq}&seq={seq}"
            info = self.client.publish(topic, str(seq), qos=1)
            # Even when not connected paho keeps the message and sends it after the CONNACK.
            self.inflight = (info.mid, seq)
            self.next_seq += 1

    def stop(self):
        self.client.disconnect()
        self.client.loop_stop()


def wait_for_stdin_close(done):
    sys.stdin.read()
    done.set()


def telemetry(config):
    leaves = [Leaf(spec, config["port"]) for spec in config["leaves"]]
    pace = config.get("pace_ms", 100) / 1000.0
    for leaf in leaves:
        leaf.start()
    deadline = time.monotonic() + 60
    for leaf in leaves:
        if not leaf.connected.wait(max(0.0, deadline - time.monotonic())):
            emit(f"leaf {leaf.id} did not connect")
            return 1
    emit("READY")
    done = threading.Event()
    threading.Thread(target=wait_for_stdin_close, args=(done,), daemon=True).start()
    while not done.is_set():
        for leaf in leaves:
            leaf.send_next(pace)
        time.sleep(0.005)
    # Let the messages in flight finish; whatever is still unacknowledged does not count.
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and any(leaf.inflight is not None for leaf in leaves):
        time.sleep(0.05)
    for leaf in leaves:
        leaf.stop()
    emit({
        "acked": {leaf.id: leaf.acked for leaf in leaves},
        "reconnects": sum(max(0, leaf.connects - 1) for leaf in leaves),
    })
    return 0


def downlink(config):
    spec = config["leaves"][0]
    device = spec["id"]
    client = make_client(device)
    client.username_pw_set(spec["username"], spec["password"])
    subscribed = threading.Event()
    method_prefix = "$iothub/methods/POST/"

    def on_connect(c, _u, _flags, rc):
        if rc == 0:
            c.subscribe([(f"devices/{device}/messages/devicebound/#", 1), (method_prefix + "#", 0)])

    def on_subscribe(_c, _u, _mid, granted):
        if all(g in (0, 1) for g in granted):
            subscribed.set()

    def on_message(c, _u, msg):
        payload = msg.payload.decode()
        if msg.topic.startswith(method_prefix):
            # $iothub/methods/POST/{name}/?$rid={rid}
            name, _, query = msg.topic[len(method_prefix):].partition("/?")
            rid = dict(p.split("=", 1) for p in query.split("&") if "=" in p).get("$rid", "")
            emit({"method": name, "payload": payload})
            c.publish(f"$iothub/methods/res/200/?$rid={rid}", json.dumps({"echo": json.loads(payload)}), qos=0)
        else:
            emit({"c2d": msg.topic, "payload": payload})

    client.on_connect = on_connect
    client.on_subscribe = on_subscribe
    client.on_message = on_message
    client.connect("127.0.0.1", config["port"], keepalive=30)
    client.loop_start()
    if not subscribed.wait(30):
        emit("no SUBACK")
        return 1
    emit("READY")
    sys.stdin.read()
    client.disconnect()
    client.loop_stop()
    return 0


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--config", required=True)
    parser.add_argument("--mode", choices=["telemetry", "downlink"], required=True)
    args = parser.parse_args()
    with open(args.config) as f:
        config = json.load(f)
    return telemetry(config) if args.mode == "telemetry" else downlink(config)


if __name__ == "__main__":
    sys.exit(main())
