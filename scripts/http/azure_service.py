"""A back end written with Microsoft's azure-iot-hub service SDK (IoTHubRegistryManager,
unmodified), run by iot-gateway's HTTP interop test against the hub's service REST API.

Environment: IOT_SERVICE_CS (the iothubowner connection string, HostName=localhost:PORT),
IOT_READ_CS (the registryRead one) and REQUESTS_CA_BUNDLE (the hub's CA certificate).

  azure_service.py create DEVICE    create DEVICE with SAS keys of our own, get it back;
                                    prints "created {json}" (with the primary key for the device)
  azure_service.py exercise DEVICE  update, get_twin, update_twin (tags and desired),
                                    query_iot_hub over tags and reported properties,
                                    invoke_device_method, registryRead cannot create (403),
                                    an expired token (401), delete; prints one line per step

Exits non-zero (with the reason on stderr) when the hub answers anything unexpected.
"""

import base64
import functools
import json
import os
import sys

# azure-iot-hub imports six without declaring it; the venv installs it beside the SDK.
from azure.iot.hub import IoTHubRegistryManager
from azure.iot.hub.models import CloudToDeviceMethod, QuerySpecification, Twin, TwinProperties
from msrest.exceptions import HttpOperationError


def say(*parts):
    print(*parts, flush=True)


def check(condition, what):
    if not condition:
        raise SystemExit("azure_service: " + what)


def status_of(call):
    try:
        call()
    except HttpOperationError as e:
        return e.response.status_code, e.response.text
    return 200, ""


def create(manager, device):
    primary = base64.b64encode(os.urandom(32)).decode()
    secondary = base64.b64encode(os.urandom(32)).decode()
    created = manager.create_device_with_sas(device, primary, secondary, "enabled")
    check(created.device_id == device, "created the wrong device")
    check(created.authentication.symmetric_key.primary_key == primary, "keys not kept")
    got = manager.get_device(device)
    check(got.etag == created.etag, "get_device returned another etag")
    check(got.status == "enabled", "a new device is enabled")
    say("created", json.dumps({"deviceId": device, "primaryKey": primary, "etag": got.etag}))


def exercise(manager, reader, device):
    got = manager.get_device(device)
    keys = got.authentication.symmetric_key
    updated = manager.update_device_with_sas(
        device, got.etag, keys.primary_key, keys.secondary_key, "enabled"
    )
    check(updated.status == "enabled", "update kept the device enabled")
    say("updated", updated.etag)

    twin = manager.get_twin(device)
    reported = twin.properties.reported
    check(reported.get("firmware") == "2.0", "the device's reported firmware is in the twin: %r" % reported)
    check(twin.connection_state == "Connected", "the device is connected: %r" % twin.connection_state)
    say("twin", json.dumps({"etag": twin.etag, "reported": reported}, sort_keys=True))

    patch = Twin(
        tags={"site": "lab7", "floor": 3},
        properties=TwinProperties(desired={"interval": 30, "mode": "eco"}),
    )
    patched = manager.update_twin(device, patch, twin.etag)
    check(patched.tags == {"site": "lab7", "floor": 3}, "tags written: %r" % patched.tags)
    check(patched.properties.desired.get("interval") == 30, "desired written")
    say("patched", json.dumps({"tags": patched.tags, "desired": patched.properties.desired}, sort_keys=True))

    by_tag = manager.query_iot_hub(QuerySpecification(query="SELECT * FROM devices WHERE tags.site = 'lab7'"))
    check([t.device_id for t in by_tag.items] == [device], "query by tag: %r" % by_tag.items)
    both = manager.query_iot_hub(
        QuerySpecification(
            query="SELECT * FROM devices WHERE tags.floor >= 3 AND properties.reported.firmware = '2.0'"
        ),
        None,
        10,
    )
    check([t.device_id for t in both.items] == [device], "query by tag and reported property")
    none = manager.query_iot_hub(
        QuerySpecification(query="SELECT * FROM devices WHERE properties.reported.firmware = '9.9'")
    )
    check(none.items == [], "a query that matches nothing")
    say("queried", json.dumps({"type": by_tag.type, "items": len(both.items)}))

    answer = manager.invoke_device_method(
        device,
        CloudToDeviceMethod(
            method_name="reboot",
            payload={"delay": 1},
            response_timeout_in_seconds=30,
            connect_timeout_in_seconds=5,
        ),
    )
    check(answer.status == 200, "method status %r" % answer.status)
    check(answer.payload == {"handled": "reboot", "echo": {"delay": 1}}, "method payload %r" % answer.payload)
    say("method", json.dumps({"status": answer.status, "payload": answer.payload}, sort_keys=True))

    # A registryRead policy reads but cannot create.
    check(reader.get_device(device).device_id == device, "registryRead can read")
    status, body = status_of(lambda: reader.create_device_with_sas("intruder", None, None, "enabled"))
    check(status == 403, "registryRead create answered %s %s" % (status, body))
    check("ErrorCode:" in body, "the 403 has IoT Hub's error body: %s" % body)
    say("forbidden", status)

    # An expired token: the SDK's own token class, made to sign tokens that expired an hour ago.
    import azure.iot.hub.auth as auth
    from azure.iot.hub.sastoken import SasToken

    real = auth.SasToken
    auth.SasToken = functools.partial(SasToken, ttl=-3600)
    try:
        expired = IoTHubRegistryManager.from_connection_string(os.environ["IOT_SERVICE_CS"])
        status, body = status_of(lambda: expired.get_device(device))
    finally:
        auth.SasToken = real
    check(status == 401, "an expired token answered %s %s" % (status, body))
    say("expired", status)

    manager.delete_device(device)
    status, _ = status_of(lambda: manager.get_device(device))
    check(status == 404, "a deleted device is 404, got %s" % status)
    say("deleted")


def main():
    command, device = sys.argv[1], sys.argv[2]
    manager = IoTHubRegistryManager.from_connection_string(os.environ["IOT_SERVICE_CS"])
    if command == "create":
        create(manager, device)
    elif command == "exercise":
        reader = IoTHubRegistryManager.from_connection_string(os.environ["IOT_READ_CS"])
        exercise(manager, reader, device)
    else:
        raise SystemExit("unknown command " + command)
    say("ok")
    return 0


if __name__ == "__main__":
    sys.exit(main())
