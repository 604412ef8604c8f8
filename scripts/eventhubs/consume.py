#!/usr/bin/env python3
"""Reads the hub's Event Hubs-compatible endpoint with Microsoft's `azure-eventhub`
EventHubConsumerClient, unmodified, and prints one JSON line per event.

    consume.py --connection-string 'Endpoint=sb://localhost/;SharedAccessKeyName=service;...'
               --endpoint sb://localhost:5671 --ca ca.pem --expect 500
               [--start '{"0": "12", "1": "-1"}'] [--timeout 120] [--linger 3]

`--start` maps partition ids to the offset to resume after (a checkpoint); without it every
partition is read from its start ("-1"). First it prints the entity's and each partition's
properties (the `$management` node), as lines `{"eventhub": …}` and `{"partition_properties": …}`.
With `--expect 0` it stops there. Exits 0 once `--expect` events arrived, 1 on a timeout (having printed what it got).
"""
import argparse
import json
import logging
import os
import sys
import threading
import time

from azure.eventhub import EventHubConsumerClient


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--connection-string", required=True)
    parser.add_argument("--endpoint", required=True, help="custom_endpoint_address, sb://host:port")
    parser.add_argument("--ca", required=True, help="CA certificate file (connection_verify)")
    parser.add_argument("--expect", type=int, required=True)
    parser.add_argument("--start", default=None)
    parser.add_argument("--timeout", type=float, default=120.0)
    parser.add_argument("--linger", type=float, default=0.0,
                        help="seconds to go on reading after --expect events (to see extras)")
    args = parser.parse_args()
    if os.environ.get("EVENTHUBS_DEBUG"):
        logging.basicConfig(level=logging.DEBUG, stream=sys.stderr)

    client = EventHubConsumerClient.from_connection_string(
        args.connection_string,
        consumer_group="$Default",
        custom_endpoint_address=args.endpoint,
        connection_verify=args.ca,
        logging_enable=os.environ.get("EVENTHUBS_DEBUG") == "trace",
    )
    props = client.get_eventhub_properties()
    print(json.dumps({"eventhub": {"name": props["eventhub_name"],
                                   "partition_ids": props["partition_ids"]}}), flush=True)
    for pid in props["partition_ids"]:
        p = client.get_partition_properties(pid)
        print(json.dumps({"partition_properties": {
            "id": p["id"],
            "last_enqueued_sequence_number": p["last_enqueued_sequence_number"],
            "last_enqueued_offset": p["last_enqueued_offset"],
            "is_empty": p["is_empty"],
        }}), flush=True)

    if args.expect == 0:
        client.close()
        return 0
    start = json.loads(args.start) if args.start else "-1"
    lock = threading.Lock()
    count = [0]
    done = threading.Event()

    def on_event(partition_context, event):
        if event is None:
            return
        sysprops = event.system_properties
        device = sysprops.get(b"iothub-connection-device-id")
        line = {
            "partition": partition_context.partition_id,
            "offset": event.offset,
            "sequence_number": event.sequence_number,
            "enqueued_time": event.enqueued_time.isoformat() if event.enqueued_time else None,
            "device": device.decode() if isinstance(device, bytes) else device,
            "properties": {
                (k.decode() if isinstance(k, bytes) else k): (v.decode() if isinstance(v, bytes) else v)
                for k, v in (event.properties or {}).items()
            },
            "body": event.body_as_str(),
        }
        with lock:
            print(json.dumps(line), flush=True)
            count[0] += 1
            if count[0] >= args.expect:
                done.set()

    worker = threading.Thread(
        target=client.receive,
        kwargs={"on_event": on_event, "starting_position": start,
                "starting_position_inclusive": False,
                # Claim every partition at once rather than one per balancing round.
                "load_balancing_strategy": "greedy"},
        daemon=True,
    )
    worker.start()
    ok = done.wait(args.timeout)
    if ok and args.linger > 0:
        time.sleep(args.linger)
    client.close()
    worker.join(10)
    if not ok:
        print(f"timed out with {count[0]} of {args.expect} events", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
