"""Devices written with Microsoft's azure-iot-device SDK (unmodified) that register through the
gateway's DPS endpoint with an X.509 certificate chain, driven by iot-gateway's dps_x509_interop
test.

Environment: IOT_DPS_SCOPE (id scope), IOT_CA_PEM (the gateway's server CA, PEM text). The SDK
connects to port 8883 of "localhost" itself, for DPS and for the hub.

  azure_dps_x509.py one REGISTRATION_ID CHAIN_PEM KEY_PEM
      ProvisioningDeviceClient.create_from_x509_certificate registers, prints
      "registered {json}"; then IoTHubDeviceClient.create_from_x509_certificate connects to the
      assigned hub with the same certificate, sends one message, prints "sent".
  azure_dps_x509.py refused REGISTRATION_ID CHAIN_PEM KEY_PEM
      registers and expects a refusal; prints "refused {exception type} {its cause's type}
      {message}", or "assigned".
CHAIN_PEM holds the leaf followed by its intermediates; TLS sends them all.
"""

import json
import os
import sys

from azure.iot.device import IoTHubDeviceClient, Message, ProvisioningDeviceClient, X509

HOST = "localhost"


def say(*parts):
    print(*parts, flush=True)


def provisioning_client(registration_id, chain, key):
    return ProvisioningDeviceClient.create_from_x509_certificate(
        provisioning_host=HOST,
        registration_id=registration_id,
        id_scope=os.environ["IOT_DPS_SCOPE"],
        x509=X509(cert_file=chain, key_file=key),
        server_verification_cert=os.environ["IOT_CA_PEM"],
    )


def one(registration_id, chain, key):
    result = provisioning_client(registration_id, chain, key).register()
    state = result.registration_state
    say("registered", json.dumps({
        "status": result.status,
        "device_id": state.device_id if state else None,
        "assigned_hub": state.assigned_hub if state else None,
        "substatus": state.sub_status if state else None,
    }, sort_keys=True))
    if result.status != "assigned":
        sys.exit(1)
    client = IoTHubDeviceClient.create_from_x509_certificate(
        x509=X509(cert_file=chain, key_file=key),
        hostname=state.assigned_hub,
        device_id=state.device_id,
        server_verification_cert=os.environ["IOT_CA_PEM"],
    )
    client.connect()
    client.send_message(Message("hello from " + registration_id))
    say("sent")
    client.shutdown()


def refused(registration_id, chain, key):
    try:
        result = provisioning_client(registration_id, chain, key).register()
    except Exception as e:  # the SDK's CredentialError, ConnectionFailedError, ServiceError…
        cause = e.__cause__
        say("refused", type(e).__name__, type(cause).__name__ if cause else "-", str(cause or e))
        return
    say("assigned" if result.status == "assigned" else "refused status " + str(result.status))


def main():
    mode, registration_id, chain, key = sys.argv[1:5]
    if mode == "one":
        one(registration_id, chain, key)
    elif mode == "refused":
        refused(registration_id, chain, key)
    else:
        sys.exit("unknown mode " + mode)


if __name__ == "__main__":
    main()
