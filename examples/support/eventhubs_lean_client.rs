//! A lean Event Hubs reader for the benchmarks, built on the adapter kit's public AMQP pieces
//! (`FrameHeader`, `FrameWriter`, `AmqpDecoder`, through `amqp_lean_conn.rs`) and fe2o3-amqp's
//! performative types (encoded with serde_amqp): SASL PLAIN, `open`, `begin`, one receive link per partition from offset
//! `-1`, pre-settled, credit topped up to 1 000 every 500 events.
//!
//! Why: fe2o3-amqp's client decodes every event into a `Message` of owned values (an `IndexMap`
//! with a `String` per annotation) and passes it through three tasks, about 11 µs per event on
//! the benchmark machine, several times the endpoint's own cost; read through it, the
//! benchmark measures the client. This reader takes from each event what a consumer needs —
//! the sequence number (checked: every partition in order, none missing) and the body — in
//! place, so the figure is the endpoint's. The benchmarks print fe2o3-amqp's figure too.
// A benchmark's set-up: a failure there is a bug of the benchmark, reported by the panic.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::SocketAddr;

use fe2o3_amqp::types::definitions::{Handle, ReceiverSettleMode, Role, SenderSettleMode};
use fe2o3_amqp::types::messaging::{Source, Target, TargetArchetype};
use fe2o3_amqp::types::performatives::{Attach, Close, Flow};
use fe2o3_amqp::types::primitives::{Symbol, Value};
use iot_sdk::gateway::adapter::{AMQP_FRAME, AmqpDecoder};
use serde_amqp::described::Described;
use serde_amqp::descriptor::Descriptor;

use super::amqp_lean_conn::{Conn, WINDOW};

const CREDIT: u32 = 1000;
const TRANSFER: u64 = 0x14;
const MESSAGE_ANNOTATIONS: u64 = 0x72;
const DATA: u64 = 0x75;

fn selector_source(address: String) -> Source {
    Source::builder()
        .address(address)
        .add_to_filter(
            Symbol::from("apache.org:selector-filter:string"),
            Described {
                descriptor: Descriptor::Name(Symbol::from("apache.org:selector-filter:string")),
                value: Value::String("amqp.annotation.x-opt-offset > '-1'".into()),
            },
        )
        .build()
}

fn flow(handle: u32, received: u32, transfers: u32) -> Flow {
    Flow {
        next_incoming_id: Some(transfers),
        incoming_window: WINDOW,
        next_outgoing_id: 0,
        outgoing_window: WINDOW,
        handle: Some(Handle(handle)),
        delivery_count: Some(received),
        link_credit: Some(CREDIT),
        available: None,
        drain: false,
        echo: false,
        properties: None,
    }
}

/// The `transfer`'s handle and `more`, read in place.
fn transfer(d: &mut AmqpDecoder<'_>) -> (u32, bool) {
    assert_eq!(d.descriptor().unwrap(), TRANSFER, "a transfer");
    let list = d.list().unwrap();
    let handle = d.uint().unwrap();
    let mut more = false;
    // delivery-id, delivery-tag, message-format, settled, more.
    for field in 1..list.count.min(6) {
        if field == 5 && !d.null() {
            more = d.boolean().unwrap();
        } else if field < 5 {
            d.skip().unwrap();
        }
    }
    d.skip_to(list.end).unwrap();
    (handle, more)
}

/// The event's sequence number and body length, read in place.
fn event(message: &[u8]) -> (i64, usize) {
    let mut d = AmqpDecoder::new(message);
    let (mut sequence, mut body) = (None, 0);
    while !d.is_done() {
        match d.descriptor().unwrap() {
            MESSAGE_ANNOTATIONS => {
                let map = d.map().unwrap();
                while d.position() < map.end {
                    if d.symbol().unwrap() == "x-opt-sequence-number" {
                        sequence = Some(d.long().unwrap());
                    } else {
                        d.skip().unwrap();
                    }
                }
            }
            DATA => body += d.binary().unwrap().len(),
            _ => d.skip().unwrap(),
        }
    }
    (sequence.expect("x-opt-sequence-number"), body)
}

/// Reads `per_partition` events from each of `partitions` partitions of `entity` over one
/// connection; returns the body bytes read. Panics if an event is missing or out of order.
pub(crate) async fn read(
    addr: SocketAddr,
    entity: &str,
    policy: &str,
    key: &str,
    partitions: u32,
    per_partition: u64,
) -> usize {
    let mut c = Conn::connect_plain(addr, policy, key).await;
    c.open_session("bench-lean", partitions);
    for p in 0..partitions {
        c.frame(
            AMQP_FRAME,
            &Attach {
                name: format!("lean-{p}"),
                handle: Handle(p),
                role: Role::Receiver,
                snd_settle_mode: SenderSettleMode::Settled,
                rcv_settle_mode: ReceiverSettleMode::First,
                source: Some(Box::new(selector_source(format!(
                    "{entity}/ConsumerGroups/$Default/Partitions/{p}"
                )))),
                target: Some(Box::new(TargetArchetype::Target(
                    Target::builder().address("bench-lean").build(),
                ))),
                unsettled: None,
                incomplete_unsettled: false,
                initial_delivery_count: None,
                max_message_size: None,
                offered_capabilities: None,
                desired_capabilities: None,
                properties: None,
            },
        );
        c.frame(AMQP_FRAME, &flow(p, 0, 0));
    }
    c.flush().await;
    assert_eq!(c.bytes(8).await, b"AMQP\x00\x01\x00\x00");

    let mut received = vec![0u64; partitions as usize];
    let mut done = 0;
    let mut transfers = 0u32;
    let mut bytes = 0;
    let mut partial: Vec<u8> = Vec::new();
    while done < partitions {
        let (body, end) = c.next_frame().await;
        if body == end {
            continue; // a heartbeat
        }
        // Only transfers matter here: open, begin, attach and flows are skipped.
        if c.buf[body..end].get(..3) != Some(&[0x00, 0x53, TRANSFER as u8][..]) {
            continue;
        }
        transfers = transfers.wrapping_add(1);
        let frame = &c.buf[body..end];
        let mut d = AmqpDecoder::new(frame);
        let (handle, more) = transfer(&mut d);
        let payload = d.rest();
        let whole = if more || !partial.is_empty() {
            partial.extend_from_slice(payload);
            if more {
                continue;
            }
            std::mem::take(&mut partial)
        } else {
            Vec::new()
        };
        let message = if whole.is_empty() {
            payload
        } else {
            &whole[..]
        };
        let (sequence, len) = event(message);
        let n = &mut received[handle as usize];
        assert_eq!(
            sequence as u64, *n,
            "partition {handle}: events in order, none missing"
        );
        *n += 1;
        bytes += len;
        if *n == per_partition {
            done += 1;
        } else if (*n).is_multiple_of(500) {
            c.frame(AMQP_FRAME, &flow(handle, *n as u32, transfers));
            c.flush().await;
        }
    }
    c.frame(AMQP_FRAME, &Close { error: None });
    c.flush().await;
    bytes
}
