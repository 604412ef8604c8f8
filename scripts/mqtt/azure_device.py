"""A device written with Microsoft's azure-iot-device SDK (unmodified), driven by iot-gateway's
interop test over stdin/stdout.

Environment: IOT_CONNECTION_STRING (HostName=localhost;DeviceId=…;SharedAccessKey=…) and
IOT_CA_PEM (the gateway's CA certificate, PEM text). The SDK connects to port 8883 itself.
Prints one line per event ("sent", "twin {json}", "reported", "c2d {json}", "desired {json}",
"method {name} {json}", "state connected|disconnected", "ready"); reads commands from stdin
("send {text}", "quit").
"""

import json
import os
import sys

from azure.iot.device import IoTHubDeviceClient, Message, MethodResponse


def say(*parts):
    print(*parts, flush=True)


def main():
    client = IoTHubDeviceClient.create_from_connection_string(
        os.environ["IOT_CONNECTION_STRING"],
        server_verification_cert=os.environ["IOT_CA_PEM"],
        connection_retry_interval=1,
    )

    def on_message(message):
        say("c2d", json.dumps({
            "data": message.data.decode(),
            "message_id": message.message_id,
            "content_type": message.content_type,
            "properties": message.custom_properties,
        }, sort_keys=True))

    def on_desired(patch):
        say("desired", json.dumps(patch, sort_keys=True))

    def on_method(request):
        say("method", request.name, json.dumps(request.payload, sort_keys=True))
        response = MethodResponse.create_from_method_request(
            request, 200, {"handled": request.name, "echo": request.payload})
        client.send_method_response(response)

    def on_state():
        say("state", "connected" if client.connected else "disconnected")

    client.on_connection_state_change = on_state
    client.connect()
    client.on_message_received = on_message
    client.on_twin_desired_properties_patch_received = on_desired
    client.on_method_request_received = on_method

    message = Message('{"temperature": 21.5}', message_id="az-1",
                      content_encoding="utf-8", content_type="application/json")
    message.custom_properties["site"] = "lab 7"
    message.custom_properties["alert"] = "false"
    client.send_message(message)
    say("sent")

    say("twin", json.dumps(client.get_twin(), sort_keys=True))
    client.patch_twin_reported_properties({"firmware": "2.0", "battery": 87})
    say("reported")
    say("ready")

    for line in sys.stdin:
        command = line.strip()
        if command.startswith("send "):
            client.send_message(Message(command[len("send "):]))
            say("sent")
        elif command == "twin":
            say("twin", json.dumps(client.get_twin(), sort_keys=True))
        elif command == "quit":
            break
    client.shutdown()
    say("bye")
    return 0


if __name__ == "__main__":
    sys.exit(main())
