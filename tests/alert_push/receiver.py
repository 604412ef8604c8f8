"""A webhook receiver for tests/alert_push.rs, written against docs/access.md and docs/routing.md.

It verifies each POST's `x-iot-signature` (HMAC-SHA256 over "<t>.<body>" with the secret in
$WEBHOOK_SECRET, timestamp within 300 s) and keeps every request: its event id, whether the
signature verified, and the alerts of its body (a JSON array). Each answer waits $DELAY_MS
milliseconds (so a test can stop the sender between requests). GET /state returns the list as
JSON. It prints its port on stdout, then serves until killed.
"""

import hashlib
import hmac
import json
import os
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

SECRET = os.environ["WEBHOOK_SECRET"].encode()
DELAY = int(os.environ.get("DELAY_MS", "0")) / 1000.0

lock = threading.Lock()
requests = []


def signature_ok(header, body):
    fields = dict(p.split("=", 1) for p in header.split(",") if "=" in p)
    try:
        t = int(fields["t"])
    except (KeyError, ValueError):
        return False
    if abs(time.time() - t) > 300:
        return False
    expected = hmac.new(SECRET, f"{t}.".encode() + body, hashlib.sha256).hexdigest()
    return hmac.compare_digest(expected, fields.get("v1", ""))


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args):
        pass

    def answer(self, status, body=b""):
        self.send_response(status)
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self):
        with lock:
            body = json.dumps(requests).encode()
        self.answer(200, body)

    def do_POST(self):
        body = self.rfile.read(int(self.headers.get("content-length", "0")))
        ok = signature_ok(self.headers.get("x-iot-signature", ""), body)
        entry = {"eventId": self.headers.get("x-iot-event-id"), "signatureOk": ok, "events": []}
        if ok:
            entry["events"] = json.loads(body)
        with lock:
            requests.append(entry)
        if DELAY:
            time.sleep(DELAY)
        self.answer(200 if ok else 401)


server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
print(server.server_address[1], flush=True)
server.serve_forever()
