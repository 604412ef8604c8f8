#!/usr/bin/env python3
"""Produce SAS token test vectors with Microsoft's own Azure IoT device SDK for Python.

The tokens come from the SDK's real code path: the resource is formed by the client's
`_form_sas_uri`, signed by `SymmetricKeySigningMechanism` and assembled by `RenewableSasToken`,
exactly as `IoTHubDeviceClient.create_from_symmetric_key` does. Only the clock is fixed (and the
time-to-live set to 0) so that the expiry is the chosen one.

    python3 -m venv .venv && .venv/bin/pip install azure-iot-device
    .venv/bin/python scripts/sas_vectors.py > iot-identity/tests/vectors/sas_azure_iot_device.json

The Rust test `iot-identity/tests/sas_vectors.rs` checks that our generator reproduces every token
byte for byte and that our verifier accepts it. CI re-runs this script and diffs its output
against the committed file.
"""

import base64
import json
import sys
from importlib.metadata import version
from unittest import mock

from azure.iot.device.common.auth import sastoken as st
from azure.iot.device.common.auth.signing_mechanism import SymmetricKeySigningMechanism
from azure.iot.device.iothub.abstract_clients import _form_sas_uri


def key(seed: int, length: int = 32) -> str:
    """A fixed, reproducible key (not random: vectors must be stable)."""
    return base64.b64encode(bytes((seed * 31 + i * 7) % 256 for i in range(length))).decode()


HOSTS = ["myhub.azure-devices.net", "Contoso-Hub.azure-devices.net"]
# Device ids using every character Azure IoT Hub allows, so the URL encoding is exercised.
DEVICE_IDS = [
    "dev-1",
    "sensor.17_a",
    "A+B%C#D*E?F!G(H)I,J:K=L@M$N'O",
    "x" * 128,
    "0",
]
MODULES = [None, "edgeAgent", "mod$1"]
EXPIRIES = [0, 1, 1_700_000_000, 4_102_444_800, 18_446_744_073_709_551_615]
POLICIES = [None, "device", "iothubowner", "registry.Read-Write_1"]


def token(uri: str, key_b64: str, expiry: int, policy):
    signer = SymmetricKeySigningMechanism(key=key_b64)
    # RenewableSasToken computes int(time.time() + ttl); pin the clock to the expiry, ttl 0.
    with mock.patch.object(st.time, "time", return_value=expiry):
        sas = st.RenewableSasToken(uri, signer, key_name=policy, ttl=0)
    assert sas.expiry_time == expiry
    parsed = st.NonRenewableSasToken(str(sas))
    assert parsed.resource_uri == uri and parsed.expiry_time == expiry
    return str(sas)


def main() -> None:
    vectors = []
    n = 0
    for host in HOSTS:
        for device_id in DEVICE_IDS:
            for module in MODULES:
                uri = _form_sas_uri(hostname=host, device_id=device_id, module_id=module)
                # Rotate expiries, policies and key lengths so every value meets every other
                # without a combinatorial explosion.
                expiry = EXPIRIES[n % len(EXPIRIES)]
                policy = POLICIES[n % len(POLICIES)]
                k = key(n, 32 if n % 3 else 64)
                vectors.append(
                    {
                        "resource": uri,
                        "key": k,
                        "expiry": expiry,
                        "policy": policy,
                        "token": token(uri, k, expiry, policy),
                    }
                )
                n += 1
    out = {
        "generator": "azure-iot-device " + version("azure-iot-device"),
        "vectors": vectors,
    }
    json.dump(out, sys.stdout, indent=2, sort_keys=True)
    sys.stdout.write("\n")


if __name__ == "__main__":
    main()
