"""Alert push through the hub example, end to end, with the standard library only.

Given the hub's HTTP base URL, the admin's password file and the device's connection string:
logs in as the admin, creates a viewer `vic` granted another device only, makes a subscription
for each through `POST /access/me/subscriptions` (each webhook a tests/alert_push/receiver.py
that checks the HMAC signature with that subscription's secret), sends an over-80 reading
through the HTTPS device API (a SAS token made from the connection string), and waits for the
hub's `overheat` rule to raise the alert and the push to deliver it: the admin's receiver gets
it, signed; vic's gets nothing.
"""

import base64
import hashlib
import hmac
import json
import os
import subprocess
import sys
import time
import urllib.parse
import urllib.request

API = "api-version=2021-04-12"
HERE = os.path.dirname(os.path.abspath(__file__))
RECEIVER = os.path.join(HERE, "..", "..", "tests", "alert_push", "receiver.py")


def call(base, method, path, body=None, token=None, headers=None):
    sep = "&" if "?" in path else "?"
    req = urllib.request.Request(f"{base}{path}{sep}{API}", method=method,
                                 data=None if body is None else json.dumps(body).encode())
    req.add_header("Content-Type", "application/json")
    if token:
        req.add_header("Authorization", token)
    for k, v in (headers or {}).items():
        req.add_header(k, v)
    with urllib.request.urlopen(req, timeout=10) as answer:
        text = answer.read()
        return answer.status, (json.loads(text) if text else None)


def login(base, user, password):
    _, answer = call(base, "POST", "/auth/login", {"user": user, "password": password})
    return "Bearer " + answer["token"]


def receiver(secret):
    child = subprocess.Popen([sys.executable, RECEIVER], stdout=subprocess.PIPE,
                             env={**os.environ, "WEBHOOK_SECRET": secret})
    port = int(child.stdout.readline())
    return child, port


def received(port):
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/state", timeout=10) as answer:
        return json.load(answer)


def sas(connection_string):
    fields = dict(p.split("=", 1) for p in connection_string.split(";"))
    resource = urllib.parse.quote(f"{fields['HostName']}/devices/{fields['DeviceId']}", safe="")
    expiry = int(time.time()) + 600
    key = base64.b64decode(fields["SharedAccessKey"])
    sig = base64.b64encode(hmac.new(key, f"{resource}\n{expiry}".encode(), hashlib.sha256).digest())
    token = (f"SharedAccessSignature sr={resource}&sig={urllib.parse.quote(sig.decode(), safe='')}"
             f"&se={expiry}")
    return fields["DeviceId"], token


def main():
    base, password_file, connection_string = sys.argv[1:4]
    admin = login(base, "admin", open(password_file).read().strip())
    call(base, "POST", "/access/users", {"name": "vic", "password": "vic-password-1",
         "grants": [{"role": "viewer", "devices": {"device": "fan-9"}}]}, admin)
    vic = login(base, "vic", "vic-password-1")
    secrets = {"admin": "the admin's webhook secret", "vic": "vic's own webhook secret"}
    children, ports = [], {}
    try:
        for user, token in (("admin", admin), ("vic", vic)):
            child, port = receiver(secrets[user])
            children.append(child)
            ports[user] = port
            status, made = call(base, "POST", "/access/me/subscriptions",
                                {"url": f"http://127.0.0.1:{port}/alerts", "secret": secrets[user]},
                                token)
            assert status == 201 and "secret" not in made, (status, made)
        _, listed = call(base, "GET", "/access/me/subscriptions", token=admin)
        assert len(listed) == 1, listed

        device, device_token = sas(connection_string)
        status, _ = call(base, "POST", f"/devices/{device}/messages/events",
                         {"temperature": 91.5}, device_token,
                         {"iothub-contenttype": "application/json",
                          "iothub-contentencoding": "utf-8"})
        assert status == 204, status

        deadline = time.time() + 60
        while time.time() < deadline:
            got = received(ports["admin"])
            if got:
                break
            time.sleep(0.2)
        else:
            sys.exit("no webhook reached the admin's receiver in 60 s")
        assert all(r["signatureOk"] for r in got), got
        events = [e for r in got for e in r["events"]]
        # The body is the alert's JSON as text (docs/routing.md, "Body").
        assert any(e["deviceId"] == device and e["endpoint"] == "alerts"
                   and json.loads(e["body"])["temperature"] == 91.5 for e in events), events
        # vic may read fan-9 only: the alert of the device is not theirs.
        time.sleep(1)
        assert received(ports["vic"]) == [], received(ports["vic"])
        print(f"alert push: {len(events)} alert(s) to admin, signed; none to vic")
    finally:
        for child in children:
            child.kill()
            child.wait()


if __name__ == "__main__":
    main()
