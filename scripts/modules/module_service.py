"""A back end written with Microsoft's azure-iot-hub service SDK (IoTHubRegistryManager,
unmodified), run by iot-gateway's module interop test against the hub's service REST API.

Environment: IOT_SERVICE_CS (the iothubowner connection string, HostName=localhost:PORT) and
REQUESTS_CA_BUNDLE (the hub's CA certificate).

  module_service.py create DEVICE MODULE    create DEVICE, then MODULE on it with SAS keys of
                                            our own; prints "created {json}" (with the module's
                                            primary key)
  module_service.py exercise DEVICE MODULE  get_module_twin (the module's reported properties),
                                            update_module_twin (desired), invoke a method on the
                                            module, get_modules, delete_module; one line per step

Exits non-zero (with the reason on stderr) when the hub answers anything unexpected.
"""

import base64
import json
import os
import sys

from azure.iot.hub import IoTHubRegistryManager
from azure.iot.hub.models import CloudToDeviceMethod, Twin, TwinProperties
from msrest.exceptions import HttpOperationError


def say(*parts):
    print(*parts, flush=True)


def check(condition, what):
    if not condition:
        raise SystemExit("module_service: " + what)


def key():
    return base64.b64encode(os.urandom(32)).decode()


def create(manager, device, module):
    manager.create_device_with_sas(device, key(), key(), "enabled")
    primary, secondary = key(), key()
    created = manager.create_module_with_sas(device, module, "iotEdge", primary, secondary)
    check(created.module_id == module and created.device_id == device, "created the wrong module")
    check(created.authentication.symmetric_key.primary_key == primary, "module keys not kept")
    got = manager.get_module(device, module)
    check(got.etag == created.etag, "get_module returned another etag")
    check(got.managed_by == "iotEdge", "managedBy kept: %r" % got.managed_by)
    try:
        manager.create_module_with_sas(device, module, None, key(), key())
        check(False, "creating an existing module was accepted")
    except HttpOperationError as e:
        check(e.response.status_code == 409, "a second create is 409: %s" % e.response.status_code)
    say("created", json.dumps({"deviceId": device, "moduleId": module, "primaryKey": primary}))


def exercise(manager, device, module):
    twin = manager.get_module_twin(device, module)
    reported = twin.properties.reported
    check(reported.get("firmware") == "3.1", "the module's reported firmware: %r" % reported)
    check(twin.module_id == module, "the module twin names its module")
    say("twin", json.dumps({"etag": twin.etag, "reported": reported}, sort_keys=True))

    device_twin = manager.get_twin(device)
    check("firmware" not in device_twin.properties.reported, "the device's twin is its own")

    patch = Twin(properties=TwinProperties(desired={"threshold": 42, "unit": "C"}))
    patched = manager.update_module_twin(device, module, patch, twin.etag)
    check(patched.properties.desired.get("threshold") == 42, "desired written")
    say("patched", json.dumps(patched.properties.desired, sort_keys=True))

    request = CloudToDeviceMethod(method_name="recalibrate", payload={"offset": 1.5},
                                  response_timeout_in_seconds=30)
    answer = manager.invoke_device_module_method(device, module, request)
    check(answer.status == 200, "method status %r" % answer.status)
    check(answer.payload.get("module") == "filter", "the module answered: %r" % answer.payload)
    say("method", json.dumps({"status": answer.status, "payload": answer.payload}, sort_keys=True))

    # The device itself has no session: a method on the device is not the module's.
    try:
        manager.invoke_device_method(
            device, CloudToDeviceMethod(method_name="recalibrate", payload={},
                                        response_timeout_in_seconds=5))
        check(False, "a method on the device reached the module")
    except HttpOperationError as e:
        check(e.response.status_code == 404, "device method is 404: %s" % e.response.status_code)
    say("device-method-refused")

    listed = manager.get_modules(device)
    check([m.module_id for m in listed] == [module], "get_modules: %r" % listed)
    say("listed", len(listed))

    manager.delete_module(device, module)
    try:
        manager.get_module(device, module)
        check(False, "a deleted module is still there")
    except HttpOperationError as e:
        check(e.response.status_code == 404, "deleted module is 404: %s" % e.response.status_code)
    say("deleted")
    say("ok")


def main():
    command, device, module = sys.argv[1], sys.argv[2], sys.argv[3]
    manager = IoTHubRegistryManager.from_connection_string(os.environ["IOT_SERVICE_CS"])
    if command == "create":
        create(manager, device, module)
    elif command == "exercise":
        exercise(manager, device, module)
    else:
        raise SystemExit("unknown command " + command)
    return 0


if __name__ == "__main__":
    sys.exit(main())
