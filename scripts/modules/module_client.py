"""A module written with Microsoft's azure-iot-device SDK (IoTHubModuleClient, unmodified),
driven by iot-gateway's module interop test over stdout.

Environment: IOT_CONNECTION_STRING (HostName=localhost;DeviceId=…;ModuleId=…;SharedAccessKey=…)
and IOT_CA_PEM (the gateway's CA certificate, PEM text). The SDK connects to port 8883 itself.
Prints one line per event ("sent", "reported {version}", "twin {json}", "desired {json}",
"method {name} {json}", "ready"); stops on stdin's end or "quit".
"""

import json
import os
import sys

from azure.iot.device import IoTHubModuleClient, Message, MethodResponse


def say(*parts):
    print(*parts, flush=True)


def main():
    client = IoTHubModuleClient.create_from_connection_string(
        os.environ["IOT_CONNECTION_STRING"],
        server_verification_cert=os.environ["IOT_CA_PEM"],
        connection_retry_interval=1,
    )

    def on_desired(patch):
        say("desired", json.dumps(patch, sort_keys=True))

    def on_method(request):
        say("method", request.name, json.dumps(request.payload, sort_keys=True))
        response = MethodResponse.create_from_method_request(
            request, 200, {"module": "filter", "echo": request.payload})
        client.send_method_response(response)

    client.connect()
    client.on_twin_desired_properties_patch_received = on_desired
    client.on_method_request_received = on_method

    message = Message('{"temperature": 40.5}', message_id="mod-1",
                      content_encoding="utf-8", content_type="application/json")
    message.custom_properties["stage"] = "filtered"
    client.send_message(message)
    say("sent")
    # IoT Edge's output form: the same topic with the output name as `$.on`.
    client.send_message_to_output(Message('{"alert": true}'), "alerts")
    say("sent-output")

    client.patch_twin_reported_properties({"firmware": "3.1", "role": "filter"})
    twin = client.get_twin()
    say("twin", json.dumps(twin, sort_keys=True))
    say("ready")

    for line in sys.stdin:
        if line.strip() == "quit":
            break
    client.shutdown()
    say("bye")
    return 0


if __name__ == "__main__":
    sys.exit(main())
