"""One device of a multi-process cluster, driven by tests/cluster_processes.rs over stdin/stdout.

The device is Microsoft's azure-iot-device SDK (unmodified), which always connects to port 8883
over TLS: there the test runs instance gw0. The back end is the instances' service REST API
(docs/http.md) over plain HTTP with urllib; a second connection of the same device is a paho-mqtt
client on another instance's plain MQTT port.

Environment: IOT_HOST (the hub's host name, in tokens), IOT_CA_PEM (the CA that signed gw0's
certificate, PEM text), IOT_SERVICE_TOKEN (a service SAS token of the iothubowner policy).

Commands, one JSON object a line on stdin ("op" names it); events, one JSON object a line on
stdout ("event" names it). Every event carries "t", this process's monotonic clock in seconds, so
that the test can measure between events:

  {"op": "create", "http": ADDR, "device": ID}          -> created {key}
  {"op": "connect"}                                     -> connected | connect_failed {error}
  {"op": "c2d", "http": ADDR, "data": TEXT, "message_id": ID, "properties": {…}}
                                                        -> c2d_sent {status, body, t0}
  {"op": "method", "http": ADDR, "name": N, "payload": P}
                                                        -> method_result {status, body, t0}
  {"op": "second", "mqtt": ADDR}                        -> second_connected {rc, t0}
      (a paho-mqtt connection of the same device, subscribed to direct methods, which it
      answers like the SDK client, adding "via": "second")
  {"op": "disable", "http": ADDR}                       -> disabled {status, body, t0}
  {"op": "quit"}                                        -> bye

and, whenever they happen: state {connected} (the SDK's connection-state handler), c2d {data,
message_id, properties}, method {name, payload, via: "sdk"} (answered with {"handled": name,
"echo": payload}), second_state {connected} (the paho connection), background {error} (what the SDK reports from its
threads, e.g. the dropped connection), error {op, error} (a command that raised).

The SDK's own reconnect is off (connection_retry=False): a session the hub closes stays closed,
so that a takeover or a disable is seen as one disconnect and the device does not take itself
back; the test reconnects explicitly with "connect".
"""

import base64
import hashlib
import hmac
import json
import logging
import os
import sys
import threading
import time
import traceback
import urllib.error
import urllib.parse
import urllib.request

import paho.mqtt.client as mqtt
from azure.iot.device import IoTHubDeviceClient, MethodResponse

API_VERSION = "2021-04-12"
HOST = os.environ.get("IOT_HOST", "localhost")
PRINT_LOCK = threading.Lock()
# The hub closing the SDK's connection (takeover, disable) is what the test provokes; the SDK
# logs each such drop as a warning with its traceback. It is reported as a "background" event.
logging.getLogger("azure.iot.device").setLevel(logging.ERROR)


def say(event, **fields):
    """One event line; the SDK's handler thread and paho's loop print too, hence the lock."""
    fields = {"event": event, "t": time.monotonic(), **fields}
    with PRINT_LOCK:
        print(json.dumps(fields, sort_keys=True), flush=True)


def service(method, http, path, body=None, headers=None, content_type="application/json"):
    """A service REST call; answers (status, parsed JSON body or text) also for 4xx/5xx."""
    url = f"http://{http}{path}?api-version={API_VERSION}"
    data = body if isinstance(body, bytes) or body is None else json.dumps(body).encode()
    request = urllib.request.Request(url, data=data, method=method)
    request.add_header("Authorization", os.environ["IOT_SERVICE_TOKEN"])
    if data is not None:
        request.add_header("Content-Type", content_type)
    for name, value in (headers or {}).items():
        request.add_header(name, value)
    try:
        with urllib.request.urlopen(request, timeout=60) as answer:
            status, text = answer.status, answer.read().decode()
    except urllib.error.HTTPError as e:
        status, text = e.code, e.read().decode()
    try:
        return status, json.loads(text) if text else None
    except ValueError:
        return status, text


def device_token(device, key, lifetime=3600):
    """A device SAS token for {host}/devices/{id}, signed with the device's own key."""
    resource = urllib.parse.quote(f"{HOST}/devices/{device}", safe="")
    expiry = str(int(time.time()) + lifetime)
    digest = hmac.new(base64.b64decode(key), f"{resource}\n{expiry}".encode(), hashlib.sha256)
    signature = urllib.parse.quote(base64.b64encode(digest.digest()).decode(), safe="")
    return f"SharedAccessSignature sr={resource}&sig={signature}&se={expiry}"


class Driver:
    def __init__(self):
        self.device = None
        self.key = None
        self.client = None
        self.second = None

    def sdk_client(self):
        """The SDK client for gw0 (made once; "connect" reconnects the same client)."""
        if self.client is not None:
            return self.client
        connection_string = f"HostName={HOST};DeviceId={self.device};SharedAccessKey={self.key}"
        client = IoTHubDeviceClient.create_from_connection_string(
            connection_string,
            server_verification_cert=os.environ["IOT_CA_PEM"],
            connection_retry=False,
        )

        def on_state():
            say("state", connected=client.connected)

        def on_message(message):
            say("c2d", data=message.data.decode(), message_id=message.message_id,
                properties=message.custom_properties)

        def on_method(request):
            say("method", name=request.name, payload=request.payload, via="sdk")
            client.send_method_response(MethodResponse.create_from_method_request(
                request, 200, {"handled": request.name, "echo": request.payload}))

        def on_background(error):
            # The SDK reports a connection the hub closed here too; an event instead of its
            # default stack dump on stderr.
            say("background", error=f"{type(error).__name__}: {error}")

        client.on_connection_state_change = on_state
        client.on_background_exception = on_background
        self.handlers = (on_message, on_method)
        self.client = client
        return client

    def op_create(self, cmd):
        self.device = cmd["device"]
        status, body = service("PUT", cmd["http"], f"/devices/{self.device}",
                               {"deviceId": self.device})
        if status != 200:
            raise RuntimeError(f"create answered {status}: {body}")
        self.key = body["authentication"]["symmetricKey"]["primaryKey"]
        say("created", device=self.device, key=self.key)

    def op_connect(self, _cmd):
        client = self.sdk_client()
        try:
            client.connect()
        except Exception as e:  # the SDK raises its own error types for a refused CONNECT
            say("connect_failed", error=f"{type(e).__name__}: {e}")
            return
        # Setting a receive handler subscribes (the sync client waits for the SUBACK), so once
        # "connected" is printed the device takes C2D messages and methods.
        on_message, on_method = self.handlers
        if client.on_message_received is None:
            client.on_message_received = on_message
            client.on_method_request_received = on_method
        say("connected")

    def op_c2d(self, cmd):
        headers = {"iothub-messageid": cmd["message_id"]}
        for name, value in cmd.get("properties", {}).items():
            headers[f"iothub-app-{name}"] = value
        t0 = time.monotonic()
        status, body = service("POST", cmd["http"], f"/devices/{self.device}/messages/cloudToDevice",
                               cmd["data"].encode(), headers, content_type="text/plain")
        say("c2d_sent", status=status, body=body, t0=t0)

    def op_method(self, cmd):
        call = {"methodName": cmd["name"], "payload": cmd["payload"],
                "responseTimeoutInSeconds": 30, "connectTimeoutInSeconds": 10}
        t0 = time.monotonic()
        status, body = service("POST", cmd["http"], f"/twins/{self.device}/methods", call)
        say("method_result", status=status, body=body, t0=t0)

    def op_second(self, cmd):
        host, port = cmd["mqtt"].rsplit(":", 1)
        options = dict(client_id=self.device, clean_session=True, protocol=mqtt.MQTTv311)
        if hasattr(mqtt, "CallbackAPIVersion"):  # paho-mqtt 2.x
            second = mqtt.Client(mqtt.CallbackAPIVersion.VERSION1, **options)
        else:
            second = mqtt.Client(**options)
        second.username_pw_set(f"{HOST}/{self.device}/?api-version={API_VERSION}",
                               device_token(self.device, self.key))
        connack = threading.Event()
        result = {}

        def on_connect(_c, _u, _flags, rc):
            result["rc"] = rc
            connack.set()

        def on_disconnect(_c, _u, rc):
            say("second_state", connected=False, rc=rc)

        def on_subscribe(_c, _u, _mid, granted):
            result["granted"] = list(granted)
            subscribed.set()

        def on_message(client, _u, msg):
            # $iothub/methods/POST/{name}/?$rid={rid}: answered on $iothub/methods/res/200/?$rid=
            name, _, query = msg.topic[len("$iothub/methods/POST/"):].partition("/?")
            rid = urllib.parse.parse_qs(query)["$rid"][0]
            payload = json.loads(msg.payload or b"null")
            say("method", name=name, payload=payload, via="second")
            answer = json.dumps({"handled": name, "echo": payload, "via": "second"})
            client.publish(f"$iothub/methods/res/200/?$rid={rid}", answer, qos=0)

        subscribed = threading.Event()
        second.on_connect = on_connect
        second.on_disconnect = on_disconnect
        second.on_subscribe = on_subscribe
        second.on_message = on_message
        t0 = time.monotonic()
        second.connect(host, int(port), keepalive=60)
        second.loop_start()
        if not connack.wait(30):
            raise RuntimeError("no CONNACK from the second connection within 30 s")
        if result["rc"] == 0:
            second.subscribe("$iothub/methods/POST/#", qos=0)
            if not subscribed.wait(30):
                raise RuntimeError("no SUBACK from the second connection within 30 s")
        # Not reconnecting: a session the hub closes stays closed (as for the SDK client).
        second.reconnect_delay_set(min_delay=3600, max_delay=3600)
        self.second = second
        say("second_connected", rc=result["rc"], t0=t0)

    def op_disable(self, cmd):
        t0 = time.monotonic()
        status, body = service("PUT", cmd["http"], f"/devices/{self.device}",
                               {"deviceId": self.device, "status": "disabled"},
                               {"If-Match": '"*"'})
        say("disabled", status=status, body=body, t0=t0)

    def close(self):
        if self.second is not None:
            self.second.loop_stop()
            self.second.disconnect()
        if self.client is not None:
            self.client.shutdown()


def main():
    driver = Driver()
    for line in sys.stdin:
        if not line.strip():
            continue
        cmd = json.loads(line)
        if cmd["op"] == "quit":
            break
        try:
            getattr(driver, "op_" + cmd["op"])(cmd)
        except Exception as e:
            say("error", op=cmd["op"], error=f"{type(e).__name__}: {e}",
                trace=traceback.format_exc())
    driver.close()
    say("bye")
    return 0


if __name__ == "__main__":
    sys.exit(main())
