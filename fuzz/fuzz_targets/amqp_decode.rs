//! Arbitrary bytes through the AMQP endpoint's frame decoding: fe2o3-amqp's length-delimited
//! framing as its transport configures it (4-byte big-endian size that counts itself, at most
//! the endpoint's 64 KiB frame size), then its AMQP `FrameDecoder` (frame header, performative)
//! and its SASL `FrameCodec`, fed in pieces as a socket delivers them.
//!
//! Frames smaller than their own 8-byte header never reach the decoder: the endpoint's guard
//! (`iot_gateway::adapter::AmqpFrameGuard`, iot-gateway/src/adapter/amqp_frames.rs) closes the connection first, because the decoder reads the
//! header unchecked and panics on them; this target applies the same rule. Without it, the
//! first input `00 00 00 05 …` panics ("advance out of bounds").
//!
//! Input layout: byte 0 picks the chunk size, byte 1 whether frames are SASL frames (odd) or
//! AMQP frames (even), the rest is the stream. Checked: no panic, no frame over the maximum.
#![no_main]

use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;
use tokio_util::codec::{Decoder, LengthDelimitedCodec};

/// `AmqpConfig::default().max_frame_size`.
const MAX_FRAME: usize = 64 * 1024;

fuzz_target!(|data: &[u8]| {
    let [chunk, kind, stream @ ..] = data else {
        return;
    };
    let chunk = usize::from(*chunk).max(1);
    let sasl = kind & 1 == 1;
    let mut framing = LengthDelimitedCodec::builder()
        .big_endian()
        .length_field_length(4)
        .max_frame_length(MAX_FRAME)
        .length_adjustment(-4)
        .new_codec();
    let mut buffer = BytesMut::new();
    for piece in stream.chunks(chunk) {
        buffer.extend_from_slice(piece);
        loop {
            // The guard's rule: a frame's size covers at least its 8-byte header.
            if buffer.len() >= 4 && u32::from_be_bytes([buffer[0], buffer[1], buffer[2], buffer[3]]) < 8 {
                return;
            }
            match framing.decode(&mut buffer) {
                Ok(Some(mut frame)) => {
                    assert!(frame.len() + 4 <= MAX_FRAME + 4, "a frame over the maximum");
                    let decoded = if sasl {
                        fe2o3_amqp::frames::sasl::FrameCodec {}.decode(&mut frame).map(|_| ())
                            .map_err(|_| ())
                    } else {
                        fe2o3_amqp::frames::amqp::FrameDecoder {}.decode(&mut frame).map(|_| ())
                            .map_err(|_| ())
                    };
                    if decoded.is_err() {
                        return;
                    }
                }
                Ok(None) => break,
                Err(_) => return,
            }
        }
    }
});
