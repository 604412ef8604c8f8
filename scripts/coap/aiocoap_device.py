"""A CoAP device written with aiocoap (unmodified, from PyPI) against the hub's CoAP adapter.

Requests are confirmable (aiocoap's default). Sends one telemetry POST with properties, polls
for a C2D message with GET, prints it and completes it with DELETE; then observes
`…/devicebound` (RFC 7641), prints the next message's notification, cancels the observation
and completes that message too. Prints one line per step for the Rust test
(iot-gateway/tests/coap_interop.rs) to check; exits non-zero on any unexpected answer.
"""

import argparse
import asyncio
import sys
import urllib.parse

from aiocoap import Code, Context, Message
from aiocoap.numbers.optionnumbers import OptionNumber

# The adapter's elective option with a C2D message's property bag (iot_gateway::coap::PROPERTIES_OPTION).
PROPERTIES_OPTION = OptionNumber(65000)


def address(args, path, extra=()):
    query = [("sas", args.token), *extra]
    return "coap://127.0.0.1:%d/%s?%s" % (
        args.port,
        path,
        urllib.parse.urlencode(query, quote_via=urllib.parse.quote),
    )


async def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--device", required=True)
    parser.add_argument("--token", required=True)
    args = parser.parse_args()
    device = urllib.parse.quote(args.device, safe="")
    context = await Context.create_client_context()

    post = Message(
        code=Code.POST,
        uri=address(
            args,
            "devices/%s/messages/events" % device,
            [("$.mid", "aiocoap-1"), ("temp", "21.5"), ("unit", "celsius")],
        ),
        payload=b'{"temp": 21.5}',
        content_format=50,
    )
    answer = await context.request(post).response
    print("telemetry code=%s" % answer.code, flush=True)
    if answer.code != Code.CHANGED:
        return 1

    # Poll: the C2D message is queued by the test once it has seen the telemetry.
    for _ in range(100):
        get = Message(code=Code.GET, uri=address(args, "devices/%s/messages/devicebound" % device))
        answer = await context.request(get).response
        if answer.code != Code.CONTENT:
            print("c2d code=%s payload=%r" % (answer.code, answer.payload), flush=True)
            return 1
        bags = [o.value for o in answer.opt.option_list() if o.number == PROPERTIES_OPTION]
        if bags:
            break
        await asyncio.sleep(0.1)
    else:
        print("no c2d message", flush=True)
        return 1
    properties = dict(urllib.parse.parse_qsl(bags[0].decode(), keep_blank_values=True))
    print(
        "c2d payload=%s mid=%s priority=%s"
        % (answer.payload.decode(), properties.get("$.mid"), properties.get("priority")),
        flush=True,
    )
    if not await complete(context, args, device, properties):
        return 1

    # Observe (RFC 7641): the next message comes as a notification.
    observe = context.request(
        Message(code=Code.GET, observe=0, uri=address(args, "devices/%s/messages/devicebound" % device))
    )
    first = await observe.response
    print("observing code=%s observe=%s" % (first.code, first.opt.observe is not None), flush=True)
    async for notification in observe.observation:
        bags = [o.value for o in notification.opt.option_list() if o.number == PROPERTIES_OPTION]
        if not bags:
            continue
        properties = dict(urllib.parse.parse_qsl(bags[0].decode(), keep_blank_values=True))
        print(
            "notification payload=%s mid=%s" % (notification.payload.decode(), properties.get("$.mid")),
            flush=True,
        )
        observe.observation.cancel()
        break
    ok = await complete(context, args, device, properties)
    await context.shutdown()
    return 0 if ok else 1


async def complete(context, args, device, properties):
    lock = properties["iothub-locktoken"]
    delete = Message(
        code=Code.DELETE,
        uri=address(args, "devices/%s/messages/devicebound/%s" % (device, urllib.parse.quote(lock))),
    )
    answer = await context.request(delete).response
    print("complete code=%s" % answer.code, flush=True)
    return answer.code == Code.DELETED


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
