"""IoTHubRegistryManager.send_c2d_message (azure-iot-hub, over uamqp: AMQP/TLS to HostName:5671)
reaches an azure-iot-device client connected over MQTT (HostName:8883); both SDKs unmodified.

IOT_DEVICE_CS, IOT_SERVICE_CS: connection strings (HostName=localhost); IOT_CA: the hub's CA
(PEM); IOT_MQTT_WEBSOCKETS=1: the device connects over MQTT over WebSocket instead
(wss://HostName:443/$iothub/websocket, subprotocol mqtt). Prints `message-id: ID` of the C2D message the device received (for the feedback check).

uamqp trusts only certifi's CA bundle and no environment variable changes that; this process
trusts the hub's CA by pointing `certifi.where()` at a copy of that bundle with the CA appended
(as NODE_EXTRA_CA_CERTS does for Node). Neither SDK's code is touched.
"""

import os
import sys
import tempfile
import threading
import uuid

import certifi

ca_path = os.environ["IOT_CA"]
bundle = tempfile.NamedTemporaryFile("w", suffix=".pem", delete=False)
with open(certifi.where()) as base, open(ca_path) as ca:
    bundle.write(base.read() + "\n" + ca.read())
bundle.close()
certifi.where = lambda: bundle.name  # read by uamqp when it opens its TLS connection

from azure.iot.device import IoTHubDeviceClient  # noqa: E402
from azure.iot.hub import IoTHubRegistryManager  # noqa: E402

device_cs = os.environ["IOT_DEVICE_CS"]
service_cs = os.environ["IOT_SERVICE_CS"]
device_id = dict(p.split("=", 1) for p in device_cs.split(";"))["DeviceId"]
with open(ca_path) as f:
    ca_pem = f.read()

received = threading.Event()
got = {}


def on_message(message):
    got["id"] = message.message_id
    got["data"] = message.data
    got["props"] = dict(message.custom_properties)
    received.set()


websockets = os.environ.get("IOT_MQTT_WEBSOCKETS") == "1"
device = IoTHubDeviceClient.create_from_connection_string(
    device_cs, server_verification_cert=ca_pem, websockets=websockets
)
device.on_message_received = on_message
device.connect()

message_id = "py-c2d-" + uuid.uuid4().hex[:8]
registry = IoTHubRegistryManager.from_connection_string(service_cs)
registry.send_c2d_message(
    device_id,
    "hello from azure-iot-hub",
    properties={"messageId": message_id, "iothub-ack": "full", "color": "green"},
)

ok = received.wait(30)
device.shutdown()
if not ok:
    sys.exit("python c2d interop: the device received nothing")
if got["id"] != message_id or got["data"] != b"hello from azure-iot-hub":
    sys.exit(f"python c2d interop: unexpected message {got}")
if got["props"].get("color") != "green":
    sys.exit(f"python c2d interop: the property was lost: {got['props']}")
os.unlink(bundle.name)
print(f"message-id: {message_id}")
print("python c2d interop: ok")
