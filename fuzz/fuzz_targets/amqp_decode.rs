//! Arbitrary bytes through the AMQP endpoints' input path as they run it: the real
//! `iot_gateway::adapter::AmqpFrameGuard` (with the AMQP endpoint's default frame and message
//! sizes) over a stream that delivers the bytes in pieces, then fe2o3-amqp's decoders on
//! exactly what the guard lets through — its AMQP `FrameDecoder` or SASL `FrameCodec` per frame
//! and, for each complete delivery (the `transfer` payloads of one link up to `more = false`),
//! the message decoding its receiver links run (`Body<Value>`, as the endpoint receives) and,
//! for a batched message (IoT Hub's format `0x80013700`, named on the delivery's first
//! `transfer`), the decoding the telemetry link runs on each message in its data sections.
//!
//! The Event Hubs endpoint's own engine reads the same frames another way, and so does this
//! target: each AMQP frame's performative with `serde_amqp::from_slice` (the engine's
//! `RawFrame::performative`), each SASL frame's body as a `sasl-init`, and each complete
//! message as the engine decodes a `$cbs`/`$management` request (`Deserializable<Message<…>>`
//! from a slice).
//!
//! Checked: no panic, nothing handed on that is not a protocol header or a whole frame within
//! the maximum size, and no memory use anywhere near libFuzzer's RSS limit (2 GiB, 512 MiB as
//! `.ci/run` runs it): every frame is at most 64 KiB and every message 272 KiB, so only a
//! declared length trusted before its bytes could get there. (With `-s none` libFuzzer has no
//! malloc hooks, so the limit is on resident memory: serde_amqp's `fill_buffer` zero-fills what
//! it allocates, which counts.)
//!
//! Input layout (as in the first version of this target, so that its finding in
//! `fuzz/findings/amqp_decode/` still reads the same): byte 0 picks the chunk size, byte 1 the
//! protocol header put in front (odd: SASL, even: AMQP; the frames' type bytes say what they
//! are), the rest is the stream.
#![no_main]

use std::collections::HashMap;
use std::pin::Pin;
use std::task::{Context, Poll, Waker};

use bytes::BytesMut;
use fe2o3_amqp::frames::amqp::{FrameBody, FrameDecoder};
use fe2o3_amqp::frames::sasl::FrameCodec;
use fe2o3_amqp::types::messaging::message::DecodeIntoMessage;
use fe2o3_amqp::types::messaging::message::__private::Deserializable;
use fe2o3_amqp::types::messaging::{Body, Data, Message};
use fe2o3_amqp::types::performatives::Performative;
use fe2o3_amqp::types::sasl::SaslInit;
use fe2o3_amqp::types::primitives::Value;
use iot_gateway::adapter::{
    AMQP_BATCH_FORMAT, AmqpFrameGuard, AmqpFrameLimits, DEFAULT_MAX_DEPTH, amqp_value_end,
};
use libfuzzer_sys::fuzz_target;
use tokio::io::{AsyncRead, ReadBuf};
use tokio_util::codec::Decoder;

/// `AmqpConfig::default()`: 64 KiB frames, 272 KiB messages.
const MAX_FRAME: u32 = 64 * 1024;
const MAX_MESSAGE: u64 = 256 * 1024 + 16 * 1024;

/// Hands out `bytes` `chunk` at a time.
struct Chunked<'a> {
    bytes: &'a [u8],
    chunk: usize,
}

impl AsyncRead for Chunked<'_> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        _: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let n = self.chunk.min(self.bytes.len()).min(buf.remaining());
        buf.put_slice(&self.bytes[..n]);
        self.bytes = &self.bytes[n..];
        Poll::Ready(Ok(()))
    }
}

/// What the guard lets through, read as the crate reads it, until the stream ends or the guard
/// refuses.
fn guarded(stream: &[u8], chunk: usize) -> Vec<u8> {
    let mut guard = AmqpFrameGuard::with_limits(
        Chunked {
            bytes: stream,
            chunk,
        },
        AmqpFrameLimits::new(MAX_FRAME, MAX_MESSAGE),
    );
    let mut cx = Context::from_waker(Waker::noop());
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        let mut read = ReadBuf::new(&mut buf);
        match Pin::new(&mut guard).poll_read(&mut cx, &mut read) {
            Poll::Ready(Ok(())) if !read.filled().is_empty() => {
                out.extend_from_slice(read.filled())
            }
            // The source never pends: end of stream or a refusal.
            _ => return out,
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let [chunk, kind, stream @ ..] = data else {
        return;
    };
    let mut input = if kind & 1 == 1 {
        b"AMQP\x03\x01\x00\x00".to_vec()
    } else {
        b"AMQP\x00\x01\x00\x00".to_vec()
    };
    input.extend_from_slice(stream);
    let passed = guarded(&input, usize::from(*chunk).max(1));
    // Per link: the payloads so far and the delivery's message format (its first frame's).
    let mut partial: HashMap<(u16, u32), (Vec<u8>, Option<u32>)> = HashMap::new();
    let mut rest = &passed[..];
    while !rest.is_empty() {
        assert!(rest.len() >= 8, "the guard handed on a piece of a unit");
        if &rest[..4] == b"AMQP" {
            rest = &rest[8..];
            continue;
        }
        let size = u32::from_be_bytes([rest[0], rest[1], rest[2], rest[3]]);
        assert!(
            (8..=MAX_FRAME).contains(&size),
            "the guard handed on a frame of {size} bytes"
        );
        let (frame, next) = rest.split_at(size as usize);
        rest = next;
        // As the Event Hubs engine reads a frame's leading value.
        let offset = usize::from(frame[4]) * 4;
        if let Some(value) = frame.get(offset..)
            && !value.is_empty()
            && let Ok(end) = amqp_value_end(value, DEFAULT_MAX_DEPTH)
        {
            if frame[5] == 1 {
                let _ = serde_amqp::from_slice::<SaslInit>(&value[..end]);
            } else {
                let _ = serde_amqp::from_slice::<Performative>(&value[..end]);
            }
        }
        let mut body = BytesMut::from(&frame[4..]);
        // A frame the decoder refuses ends the connection: nothing after it is decoded.
        if frame[5] == 1 {
            if (FrameCodec {}).decode(&mut body).is_err() {
                return;
            }
            continue;
        }
        let Ok(Some(decoded)) = (FrameDecoder {}).decode(&mut body) else {
            return;
        };
        let channel = decoded.channel();
        match decoded.into_body() {
            // A new or gone link starts without a buffered delivery (fe2o3-amqp's buffer
            // belongs to the link), a new or gone session without any.
            FrameBody::Attach(attach) => {
                partial.remove(&(channel, attach.handle.0));
            }
            FrameBody::Detach(detach) => {
                partial.remove(&(channel, detach.handle.0));
            }
            FrameBody::Begin(_) | FrameBody::End(_) => partial.retain(|&(c, _), _| c != channel),
            FrameBody::Transfer {
                performative,
                payload,
            } => {
                let key = (channel, performative.handle.0);
                let (mut message, format) = partial
                    .remove(&key)
                    .unwrap_or((Vec::new(), performative.message_format));
                message.extend_from_slice(&payload);
                if performative.aborted {
                    continue;
                }
                if performative.more {
                    partial.insert(key, (message, format));
                } else {
                    // As the Event Hubs engine decodes a request.
                    let _ = serde_amqp::from_slice::<Deserializable<Message<Body<Value>>>>(
                        &message,
                    );
                    // As a receiver link decodes a complete delivery.
                    let reader = serde_amqp::read::IoReader::new(&message[..]);
                    let decoded =
                        <Body<Value> as DecodeIntoMessage>::decode_message_from_reader(reader);
                    // As the telemetry link decodes the messages of a batch.
                    if let (Ok(outer), Some(AMQP_BATCH_FORMAT)) = (decoded, format)
                        && let Body::Data(sections) = outer.body
                    {
                        for Data(inner) in sections.iter() {
                            let reader = serde_amqp::read::SliceReader::new(inner);
                            let _ = <Body<Value> as DecodeIntoMessage>::decode_message_from_reader(
                                reader,
                            );
                        }
                    }
                }
            }
            _ => {}
        }
    }
});
