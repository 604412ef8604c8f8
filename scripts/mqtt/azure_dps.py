"""Devices written with Microsoft's azure-iot-device SDK (unmodified) that register through the
gateway's DPS endpoint with a symmetric key, driven by iot-gateway's dps_interop test.

Environment: IOT_DPS_SCOPE (id scope), IOT_CA_PEM (the gateway's CA certificate, PEM text).
The SDK connects to port 8883 of "localhost" itself, for DPS and for the hub.

  azure_dps.py one REGISTRATION_ID DEVICE_KEY
      registers, prints "registered {json}", connects to the assigned hub with the key,
      sends one message, prints "sent".
  azure_dps.py refused REGISTRATION_ID DEVICE_KEY
      registers and expects a refusal; prints "refused {exception type} {its cause's type}
      {message}" or "assigned".
  azure_dps.py many PREFIX COUNT GROUP_KEY
      derives each device's key from the group key (as DPS documents it), registers COUNT
      devices PREFIX-0000… concurrently with the asyncio client; prints "many {json}" with the
      devices assigned, the failures and the seconds taken.
"""

import asyncio
import base64
import hashlib
import hmac
import json
import os
import sys
import time

from azure.iot.device import IoTHubDeviceClient, Message, ProvisioningDeviceClient
from azure.iot.device.aio import ProvisioningDeviceClient as AsyncProvisioningDeviceClient

HOST = "localhost"


def say(*parts):
    print(*parts, flush=True)


def derive(group_key, registration_id):
    digest = hmac.new(base64.b64decode(group_key), registration_id.encode("utf-8"),
                      hashlib.sha256).digest()
    return base64.b64encode(digest).decode("ascii")


def provisioning_client(cls, registration_id, key):
    return cls.create_from_symmetric_key(
        provisioning_host=HOST,
        registration_id=registration_id,
        id_scope=os.environ["IOT_DPS_SCOPE"],
        symmetric_key=key,
        server_verification_cert=os.environ["IOT_CA_PEM"],
    )


def state_json(result):
    state = result.registration_state
    return json.dumps({
        "status": result.status,
        "device_id": state.device_id if state else None,
        "assigned_hub": state.assigned_hub if state else None,
        "substatus": state.sub_status if state else None,
        "etag": state.etag if state else None,
    }, sort_keys=True)


def one(registration_id, key):
    result = provisioning_client(ProvisioningDeviceClient, registration_id, key).register()
    say("registered", state_json(result))
    if result.status != "assigned":
        sys.exit(1)
    state = result.registration_state
    client = IoTHubDeviceClient.create_from_symmetric_key(
        symmetric_key=key,
        hostname=state.assigned_hub,
        device_id=state.device_id,
        server_verification_cert=os.environ["IOT_CA_PEM"],
    )
    client.connect()
    client.send_message(Message("hello from " + registration_id))
    say("sent")
    client.shutdown()


def refused(registration_id, key):
    try:
        result = provisioning_client(ProvisioningDeviceClient, registration_id, key).register()
    except Exception as e:  # the SDK's ServiceError, CredentialError, ConnectionFailedError…
        cause = e.__cause__
        say("refused", type(e).__name__, type(cause).__name__ if cause else "-", str(cause or e))
        return
    say("assigned" if result.status == "assigned" else "refused status " + str(result.status))


async def many(prefix, count, group_key):
    async def register(i):
        registration_id = "{}-{:04d}".format(prefix, i)
        client = provisioning_client(
            AsyncProvisioningDeviceClient, registration_id, derive(group_key, registration_id))
        try:
            result = await client.register()
            ok = (result.status == "assigned"
                  and result.registration_state.device_id == registration_id
                  and result.registration_state.assigned_hub == HOST)
            return registration_id, ok, None if ok else result.status
        except Exception as e:
            return registration_id, False, "{}: {}".format(type(e).__name__, e)

    started = time.monotonic()
    results = await asyncio.gather(*(register(i) for i in range(count)))
    seconds = time.monotonic() - started
    say("many", json.dumps({
        "assigned": sorted(r for r, ok, _ in results if ok),
        "failed": {r: why for r, ok, why in results if not ok},
        "seconds": round(seconds, 2),
    }, sort_keys=True))


def main():
    mode = sys.argv[1]
    if mode == "one":
        one(sys.argv[2], sys.argv[3])
    elif mode == "refused":
        refused(sys.argv[2], sys.argv[3])
    elif mode == "many":
        asyncio.run(many(sys.argv[2], int(sys.argv[3]), sys.argv[4]))
    else:
        sys.exit("unknown mode " + mode)


if __name__ == "__main__":
    main()
