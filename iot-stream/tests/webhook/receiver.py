"""A webhook receiver for tests/webhook_sink.rs, written against docs/routing.md only.

It verifies each POST's `x-iot-signature` (HMAC-SHA256 over "<t>.<body>" with the secret in
$WEBHOOK_SECRET, timestamp within 300 s), answers 401 to a bad one, and dedupes events by
`x-iot-event-id`. To exercise the sender's retries it misbehaves on purpose:
  * the first $FAIL_FIRST requests are answered 503 before looking at them;
  * every 7th request after that is processed, then answered 500 (the answer is "lost", so the
    sender must send the same event again and the receiver must drop the copy);
  * every 11th is answered 429;
  * an event whose body has "poison" in its properties is answered 400 (a permanent refusal).
GET /state returns what it saw as JSON. It prints its port on stdout, then serves until killed.
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
FAIL_FIRST = int(os.environ.get("FAIL_FIRST", "3"))

lock = threading.Lock()
state = {
    "requests": 0,
    "accepted": [],  # event ids in the order first accepted
    "duplicates": 0,
    "bad_signatures": 0,
    "refused": 0,
    "events": {},  # id -> event (device, body) of accepted events
}


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
            body = json.dumps(state).encode()
        self.answer(200, body)

    def do_POST(self):
        body = self.rfile.read(int(self.headers.get("content-length", "0")))
        with lock:
            state["requests"] += 1
            n = state["requests"]
        if n <= FAIL_FIRST:
            return self.answer(503)
        if not signature_ok(self.headers.get("x-iot-signature", ""), body):
            with lock:
                state["bad_signatures"] += 1
            return self.answer(401)
        if n % 11 == 0:
            return self.answer(429)
        event_id = self.headers["x-iot-event-id"]
        events = json.loads(body)
        events = events if isinstance(events, list) else [events]
        if any("poison" in e["properties"] for e in events):
            with lock:
                state["refused"] += 1
            return self.answer(400)
        with lock:
            if event_id in state["events"]:
                state["duplicates"] += 1
            else:
                state["accepted"].append(event_id)
                state["events"][event_id] = [
                    {"id": e["id"], "device": e["deviceId"], "body": e["body"]} for e in events
                ]
        if n % 7 == 0:
            return self.answer(500)  # processed, but the sender does not know
        self.answer(204)


server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
print(server.server_address[1], flush=True)
server.serve_forever()
