//! Arbitrary bytes through the packet decoder a connection delegates to: `rmqtt-codec`'s
//! MQTT 3.1.1 `Codec` built with a maximum packet size, fed the stream in pieces (a socket
//! delivers partial packets) and asked for packets until it wants more input or fails. (The
//! endpoint's strict framing in front of it is crate-private; `mqtt_session` fuzzes it.)
//!
//! Input layout: byte 0 picks the chunk size, bytes 1..3 the maximum packet size (at least
//! the endpoint's floor of 64 bytes, so the limit is hit often), the rest is the stream.
//!
//! Checked besides "no panic": a decoded packet never exceeds the maximum, the buffer never
//! holds much more than one maximum-size packet, and every decoded packet encodes and decodes
//! back to itself (CONNECT aside, see `round_trip`).
#![no_main]

use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;
use rmqtt_codec::v3::{Codec, Packet};
use tokio_util::codec::{Decoder, Encoder};

/// The smallest `max_packet_size` `MqttConfig::validate` accepts.
const MIN_MAX_PACKET_SIZE: u32 = 64;

fuzz_target!(|data: &[u8]| {
    let [chunk, hi, lo, stream @ ..] = data else {
        return;
    };
    let chunk = usize::from(*chunk).max(1);
    let max = MIN_MAX_PACKET_SIZE + u32::from(u16::from_be_bytes([*hi, *lo]));
    let mut codec = Codec::new(max);
    let mut buffer = BytesMut::new();
    for piece in stream.chunks(chunk) {
        buffer.extend_from_slice(piece);
        loop {
            match codec.decode(&mut buffer) {
                Ok(Some((packet, remaining_length))) => {
                    assert!(
                        remaining_length <= max,
                        "a {remaining_length}-byte packet passed a {max}-byte limit"
                    );
                    round_trip(packet);
                }
                Ok(None) => break,
                // The connection closes on the first error, as the session does.
                Err(_) => return,
            }
        }
        // What is buffered is at most one unfinished packet (header of at most 5 bytes) plus
        // the piece just appended.
        assert!(
            buffer.len() <= max as usize + 5 + chunk,
            "{} bytes buffered under a {max}-byte limit",
            buffer.len()
        );
    }
});

/// What the decoder accepted, the encoder writes, and it reads back the same.
fn round_trip(packet: Packet) {
    // The encoder writes every CONNECT as protocol level 4 whatever level was decoded (the
    // fuzzer found this at once); a server never encodes a CONNECT, so it is left out.
    if matches!(packet, Packet::Connect(_)) {
        return;
    }
    let mut codec = Codec::new(0);
    let mut encoded = BytesMut::new();
    if codec.encode(packet.clone(), &mut encoded).is_err() {
        // The encoder refuses some packets a server never sends (e.g. QoS 1 without an id,
        // which the decoder cannot produce); nothing to compare then.
        return;
    }
    match codec.decode(&mut encoded) {
        Ok(Some((again, _))) => assert_eq!(again, packet, "encode/decode changed the packet"),
        other => panic!("re-decoding an encoded {packet:?} gave {other:?}"),
    }
    assert!(
        encoded.is_empty(),
        "encoding left {} extra bytes",
        encoded.len()
    );
}
