//! The cost of putting an Event Hubs event on the wire: `iot_sdk::eventhubs::encode_event`
//! plus `TransferFrame` (the record's bytes written in one pass) against fe2o3-amqp's
//! serializer (serde_amqp) writing the same message and `transfer` from already built values —
//! the peer's cost leaves out building its `Message` tree, so the ratio understates the gain.
//!
//! Records are the Event Hubs benchmark's (`examples/support/eventhubs_read.rs`): six headers,
//! a 100-byte payload. One thread, each way in turn, five rounds; figures are medians.
//!
//! ```sh
//! cargo run --release --features eventhubs --example event_encoding_bench [-- --quick]
//! ```
//!
//! The last line is a JSON object: `direct_ns_per_event`, `serde_amqp_ns_per_event`,
//! `direct_vs_serde_amqp` (how many times faster), `bytes_per_event`.
#![allow(clippy::print_stdout, clippy::unwrap_used)]

use std::hint::black_box;
use std::time::Instant;

use bytes::Bytes;
use fe2o3_amqp::types::definitions::Handle;
use fe2o3_amqp::types::messaging::annotations::OwnedKey;
use fe2o3_amqp::types::messaging::message::__private::Serializable;
use fe2o3_amqp::types::messaging::{ApplicationProperties, Data, Message, MessageAnnotations};
use fe2o3_amqp::types::performatives::Transfer;
use fe2o3_amqp::types::primitives::{Binary, OrderedMap, SimpleValue, Symbol, Timestamp, Value};
use iot_sdk::core::{Offset, PartitionId, Record, StoredRecord};
use iot_sdk::gateway::adapter::{TransferFields, TransferFrame};

const ROUNDS: usize = 5;

fn record(n: u64) -> StoredRecord {
    let device = "bench-device-0";
    let record = Record::new(device, Bytes::from(vec![b'x'; 100]))
        .with_header("iothub-connection-device-id", device)
        .with_header(
            "iothub-connection-auth-method",
            r#"{"scope":"device","type":"sas","issuer":"iothub","acceptingIpFilterRule":null}"#,
        )
        .with_header("iothub-connection-auth-generation-id", "638000000000000000")
        .with_header("iothub-message-source", "Telemetry")
        .with_header("n", n.to_string())
        .with_header("sensor", "temperature");
    StoredRecord::new(
        PartitionId(0),
        Offset(n),
        iot_sdk::core::Timestamp::from_unix_millis(1_765_000_000_000 + n),
        record,
    )
}

/// The endpoint's message for `stored`, as fe2o3-amqp values (what the endpoint's
/// `EventBuffer` holds when the sender serializes it).
fn message(stored: &StoredRecord) -> Message<Data> {
    let mut annotations = OrderedMap::new();
    let mut application = OrderedMap::new();
    for (name, value) in stored.record.headers.iter() {
        if name.starts_with("iothub-") {
            annotations.insert(
                OwnedKey::Symbol(Symbol::from(name)),
                Value::String(value.to_owned()),
            );
        } else {
            application.insert(name.to_owned(), SimpleValue::String(value.to_owned()));
        }
    }
    let ms = stored.enqueued_time.as_unix_millis() as i64;
    let offset = stored.offset.0;
    for (key, value) in [
        (
            "iothub-enqueuedtime",
            Value::Timestamp(Timestamp::from_milliseconds(ms)),
        ),
        ("x-opt-sequence-number", Value::Long(offset as i64)),
        ("x-opt-offset", Value::String(offset.to_string())),
        (
            "x-opt-enqueued-time",
            Value::Timestamp(Timestamp::from_milliseconds(ms)),
        ),
        (
            "x-opt-partition-key",
            Value::String(stored.record.key.to_string()),
        ),
    ] {
        annotations.insert(OwnedKey::Symbol(Symbol::from(key)), value);
    }
    Message {
        header: None,
        delivery_annotations: None,
        message_annotations: Some(MessageAnnotations(annotations)),
        properties: None,
        application_properties: Some(ApplicationProperties(application)),
        body: Data(Binary::from(stored.record.payload.to_vec())),
        footer: None,
    }
}

fn fields(id: u32, tag: &[u8; 4]) -> TransferFields<'_> {
    TransferFields {
        handle: 0,
        delivery_id: Some(id),
        delivery_tag: Some(tag),
        message_format: Some(0),
        settled: Some(true),
        more: false,
        batchable: true,
    }
}

/// ns per event, writing every event's frame into one reused buffer.
fn direct(records: &[StoredRecord]) -> (f64, usize) {
    let mut buf = Vec::with_capacity(64 * 1024);
    let mut bytes = 0;
    let start = Instant::now();
    for (i, stored) in records.iter().enumerate() {
        buf.clear();
        let tag = (i as u32).to_be_bytes();
        let frame = TransferFrame::begin(&mut buf, 0, &fields(i as u32, &tag)).unwrap();
        iot_sdk::eventhubs::encode_event(stored, &mut buf).unwrap();
        frame.end(&mut buf).unwrap();
        bytes += black_box(&buf).len();
    }
    (
        start.elapsed().as_nanos() as f64 / records.len() as f64,
        bytes / records.len(),
    )
}

/// The `transfer` of delivery `id` (tag: `id`'s bytes) as fe2o3-amqp's sender builds it.
fn peer_transfer(id: u32) -> Transfer {
    Transfer {
        handle: Handle(0),
        delivery_id: Some(id),
        delivery_tag: Some(Binary::from(id.to_be_bytes().to_vec())),
        message_format: Some(0),
        settled: Some(true),
        more: false,
        rcv_settle_mode: None,
        state: None,
        resume: false,
        aborted: false,
        batchable: true,
    }
}

/// ns per event for serde_amqp: the message and the `transfer`, each into a new vector as
/// fe2o3-amqp's sender and frame encoder start from an empty buffer.
fn serde_amqp(messages: &[Message<Data>]) -> (f64, usize) {
    let mut bytes = 0;
    let start = Instant::now();
    for (i, message) in messages.iter().enumerate() {
        let payload = serde_amqp::to_vec(&Serializable(message)).unwrap();
        let transfer = peer_transfer(i as u32);
        let performative = serde_amqp::to_vec(&transfer).unwrap();
        bytes += 8 + black_box(&performative).len() + black_box(&payload).len();
    }
    (
        start.elapsed().as_nanos() as f64 / messages.len() as f64,
        bytes / messages.len(),
    )
}

/// Both ways give the same frame, byte for byte (else the comparison means nothing).
fn same_bytes(stored: &StoredRecord, message: &Message<Data>) {
    let tag = 0u32.to_be_bytes();
    let mut ours = Vec::new();
    let frame = TransferFrame::begin(&mut ours, 0, &fields(0, &tag)).unwrap();
    iot_sdk::eventhubs::encode_event(stored, &mut ours).unwrap();
    frame.end(&mut ours).unwrap();
    let transfer = peer_transfer(0);
    let mut peer = serde_amqp::to_vec(&transfer).unwrap();
    peer.extend(serde_amqp::to_vec(&Serializable(message)).unwrap());
    assert_eq!(&ours[8..], &peer[..], "the same event, byte for byte");
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn main() {
    let quick = std::env::args().any(|a| a == "--quick");
    let n = if quick { 20_000 } else { 200_000 };
    let records: Vec<StoredRecord> = (0..n as u64).map(record).collect();
    let messages: Vec<Message<Data>> = records.iter().map(message).collect();
    same_bytes(&records[0], &messages[0]);
    let (mut ours, mut peer) = (Vec::new(), Vec::new());
    let (mut ours_bytes, mut peer_bytes) = (0, 0);
    for round in 0..ROUNDS {
        let (d, db) = direct(&records);
        let (s, sb) = serde_amqp(&messages);
        println!("round {round}: direct {d:>7.1} ns/event   serde_amqp {s:>7.1} ns/event");
        ours.push(d);
        peer.push(s);
        (ours_bytes, peer_bytes) = (db, sb);
    }
    // The same event either way: the frames are the same length.
    assert_eq!(ours_bytes, peer_bytes, "both ways write the same frame");
    let (d, s) = (median(ours), median(peer));
    println!(
        "{}",
        serde_json::json!({
            "direct_ns_per_event": (d * 10.0).round() / 10.0,
            "serde_amqp_ns_per_event": (s * 10.0).round() / 10.0,
            "direct_vs_serde_amqp": (s / d * 100.0).round() / 100.0,
            "bytes_per_event": ours_bytes,
            "events": n,
        })
    );
}
