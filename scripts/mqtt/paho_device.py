"""A device written with paho-mqtt (Eclipse's Python client), driven by iot-gateway's interop tests.

Scenarios (one per run, results on stdout, one line per event):
  telemetry_c2d  connect, send telemetry with properties, subscribe to C2D, print the first C2D message
  acl            connect, publish to another device's topic, report that the server disconnected us
With --websocket the same runs over MQTT-over-WebSocket.
Works with paho-mqtt 1.6 (what azure-iot-device pins) and 2.x.
"""

import argparse
import sys
import threading

import paho.mqtt.client as mqtt


def make_client(device_id, transport):
    options = dict(client_id=device_id, clean_session=True, protocol=mqtt.MQTTv311,
                   transport=transport)
    if hasattr(mqtt, "CallbackAPIVersion"):
        return mqtt.Client(mqtt.CallbackAPIVersion.VERSION1, **options)
    return mqtt.Client(**options)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--device", required=True)
    parser.add_argument("--username", required=True)
    parser.add_argument("--password", required=True)
    parser.add_argument("--scenario", choices=["telemetry_c2d", "acl"], required=True)
    parser.add_argument("--websocket", action="store_true",
                        help="MQTT over WebSocket on /$iothub/websocket")
    args = parser.parse_args()

    connected = threading.Event()
    subscribed = threading.Event()
    got_message = threading.Event()
    disconnected = threading.Event()
    state = {}

    client = make_client(args.device, "websockets" if args.websocket else "tcp")
    if args.websocket:
        client.ws_set_options(path="/$iothub/websocket")
    client.username_pw_set(args.username, args.password)

    def on_connect(_c, _u, _flags, rc):
        print(f"connected rc={rc}", flush=True)
        if rc == 0:
            connected.set()

    def on_subscribe(_c, _u, _mid, granted):
        print(f"subscribed granted={list(granted)}", flush=True)
        subscribed.set()

    def on_message(_c, _u, msg):
        print(f"c2d qos={msg.qos} topic={msg.topic} payload={msg.payload.decode()}", flush=True)
        got_message.set()

    def on_disconnect(_c, _u, rc):
        state["rc"] = rc
        print(f"disconnected rc={rc}", flush=True)
        disconnected.set()

    client.on_connect = on_connect
    client.on_subscribe = on_subscribe
    client.on_message = on_message
    client.on_disconnect = on_disconnect
    client.connect("127.0.0.1", args.port, keepalive=30)
    client.loop_start()
    if not connected.wait(20):
        print("no CONNACK", flush=True)
        return 1

    if args.scenario == "telemetry_c2d":
        topic = f"devices/{args.device}/messages/events/%24.ct=application%2Fjson&source=paho"
        info = client.publish(topic, '{"from":"paho"}', qos=1)
        info.wait_for_publish(20)
        print(f"published acked={info.is_published()}", flush=True)
        client.subscribe(f"devices/{args.device}/messages/devicebound/#", qos=1)
        if not got_message.wait(20):
            print("no C2D message", flush=True)
            return 1
        client.disconnect()
        client.loop_stop()
        return 0

    # acl: another device's topic must cost us the connection.
    client.publish("devices/someone-else/messages/events/", "spoof", qos=1)
    if not disconnected.wait(20):
        print("still connected", flush=True)
        return 1
    client.loop_stop()
    return 0 if state.get("rc", 0) != 0 else 1


if __name__ == "__main__":
    sys.exit(main())
