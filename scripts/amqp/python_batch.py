"""A telemetry batch in IoT Hub's batch format (message format 0x80013700, one encoded message per
data section of a single transfer), sent by Microsoft's uAMQP (Python `uamqp`, the C library
under azure-iot-hub and the C device SDK) with its own `BatchMessage`, unmodified, after a `$cbs`
put-token of a device SAS token, to the AMQP endpoint on HostName:5671.

Why uamqp and not Node: azure-iot-device-amqp's `sendEventBatch` throws NotImplementedError
("AMQP Transport does not support batching yet") in every 1.x release, and the Python device SDK
speaks MQTT only; uAMQP's `BatchMessage` is the batch encoder Microsoft ships.

IOT_DEVICE_CS: the device's connection string (HostName=localhost); IOT_CA: the hub's CA (PEM);
IOT_BATCH_TAG: put into the message ids. Prints `batch-sent: N` once the batch is accepted.
"""

import base64
import hashlib
import hmac
import os
import sys
import time
import urllib.parse

from uamqp import BatchMessage, Message, SendClient
from uamqp.authentication import SASTokenAuth
from uamqp.message import MessageProperties

cs = dict(p.split("=", 1) for p in os.environ["IOT_DEVICE_CS"].split(";"))
host, device, key = cs["HostName"], cs["DeviceId"], cs["SharedAccessKey"]
tag = os.environ.get("IOT_BATCH_TAG", "")

# A device SAS token, as the SDKs make it.
audience = f"{host}/devices/{device}"
expiry = int(time.time()) + 3600
resource = urllib.parse.quote(audience, safe="")
signature = base64.b64encode(
    hmac.new(base64.b64decode(key), f"{resource}\n{expiry}".encode(), hashlib.sha256).digest()
).decode()
token = (
    f"SharedAccessSignature sr={resource}&sig={urllib.parse.quote(signature, safe='')}"
    f"&se={expiry}"
)

target = f"amqps://{host}/devices/{device}/messages/events"
auth = SASTokenAuth(audience, target, token, expires_at=expiry, verify=os.environ["IOT_CA"])

messages = []
for i in range(3):
    message = Message(
        body=f'{{"batch":{i}}}'.encode(),
        properties=MessageProperties(
            message_id=f"py-batch-{tag}{i}", content_type="application/json"
        ),
        application_properties={"batch-index": str(i), "site": "lab-9"},
    )
    messages.append(message)

client = SendClient(target, auth=auth)
try:
    client.send_message(BatchMessage(data=messages))
finally:
    client.close()
print(f"batch-sent: {len(messages)}")
sys.stdout.flush()
