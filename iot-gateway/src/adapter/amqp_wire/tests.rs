//! The encoder against serde_amqp (fe2o3-amqp's codec): the same values give the same bytes,
//! and the frames decode with fe2o3-amqp's own frame decoder.

use bytes::BytesMut;
use fe2o3_amqp::frames::amqp::{FrameBody, FrameDecoder};
use fe2o3_amqp::types::definitions::Handle;
use fe2o3_amqp::types::performatives::Transfer;
use fe2o3_amqp::types::primitives::{Binary, OrderedMap, Symbol, Timestamp, Value};
use proptest::prelude::*;
use tokio_util::codec::Decoder;

use super::*;

fn reference<T: serde::Serialize>(value: &T) -> Vec<u8> {
    serde_amqp::to_vec(value).expect("serde_amqp encodes it")
}

fn encoded(write: impl FnOnce(&mut AmqpEncoder<'_>) -> Result<(), AmqpWireError>) -> Vec<u8> {
    let mut buf = Vec::new();
    write(&mut AmqpEncoder::new(&mut buf)).expect("encodes");
    buf
}

/// Strings around the one-byte size form's end (254 / 255), and short ones.
fn text() -> impl Strategy<Value = String> {
    prop_oneof![
        "[a-z0-9-]{0,20}",
        "\\PC{0,8}",
        (250usize..260).prop_map(|n| "x".repeat(n)),
        (0usize..70_000).prop_map(|n| "y".repeat(n)),
    ]
}

proptest! {
    #[test]
    fn numbers_are_serde_amqps(u in any::<u32>(), l in any::<u64>(), s in any::<i64>(), small in -200i64..200) {
        prop_assert_eq!(encoded(|e| { e.uint(u); Ok(()) }), reference(&u));
        prop_assert_eq!(encoded(|e| { e.ulong(l); Ok(()) }), reference(&l));
        prop_assert_eq!(encoded(|e| { e.long(s); Ok(()) }), reference(&s));
        prop_assert_eq!(encoded(|e| { e.long(small); Ok(()) }), reference(&small));
        prop_assert_eq!(encoded(|e| { e.uint(u % 300); Ok(()) }), reference(&(u % 300)));
        prop_assert_eq!(encoded(|e| { e.ulong(l % 300); Ok(()) }), reference(&(l % 300)));
        prop_assert_eq!(
            encoded(|e| { e.timestamp(s); Ok(()) }),
            reference(&Timestamp::from_milliseconds(s))
        );
    }

    #[test]
    fn strings_symbols_and_binaries_are_serde_amqps(s in text()) {
        prop_assert_eq!(encoded(|e| e.string(&s)), reference(&s));
        prop_assert_eq!(encoded(|e| e.symbol(&s)), reference(&Symbol::from(s.as_str())));
        prop_assert_eq!(
            encoded(|e| e.binary(s.as_bytes())),
            reference(&Binary::from(s.as_bytes().to_vec()))
        );
    }

    #[test]
    fn lists_and_maps_are_serde_amqps(items in proptest::collection::vec(text(), 0..12)) {
        let list = Value::List(items.iter().cloned().map(Value::String).collect());
        prop_assert_eq!(
            encoded(|e| {
                let c = e.begin_compound();
                for s in &items {
                    e.string(s)?;
                }
                e.end_list(c, items.len() as u32)
            }),
            reference(&list)
        );
        // Keys made unique, as a map's are.
        let mut map = OrderedMap::new();
        for (i, s) in items.iter().enumerate() {
            map.insert(Value::Symbol(Symbol::from(format!("k{i}"))), Value::String(s.clone()));
        }
        prop_assert_eq!(
            encoded(|e| {
                let c = e.begin_compound();
                for (i, s) in items.iter().enumerate() {
                    e.symbol(&format!("k{i}"))?;
                    e.string(s)?;
                }
                e.end_map(c, items.len() as u32)
            }),
            reference(&Value::Map(map))
        );
    }

    #[test]
    fn transfer_frames_are_serde_amqps_and_decode_with_fe2o3(
        handle in any::<u32>(),
        delivery_id in proptest::option::of(any::<u32>()),
        tag in proptest::option::of(proptest::collection::vec(any::<u8>(), 0..300)),
        format in proptest::option::of(prop_oneof![Just(0u32), Just(0x8001_3700), any::<u32>()]),
        settled in proptest::option::of(any::<bool>()),
        more in any::<bool>(),
        batchable in any::<bool>(),
        channel in any::<u16>(),
        payload in proptest::collection::vec(any::<u8>(), 0..600),
    ) {
        let fields = TransferFields {
            handle,
            delivery_id,
            delivery_tag: tag.as_deref(),
            message_format: format,
            settled,
            more,
            batchable,
        };
        let mut buf = vec![0xee; 5]; // a frame after others in the same buffer
        let frame = TransferFrame::begin(&mut buf, channel, &fields).expect("begins");
        buf.extend_from_slice(&payload);
        frame.end(&mut buf).expect("ends");
        let frame = &buf[5..];

        let transfer = Transfer {
            handle: Handle(handle),
            delivery_id,
            delivery_tag: tag.clone().map(Binary::from),
            message_format: format,
            settled,
            more,
            rcv_settle_mode: None,
            state: None,
            resume: false,
            aborted: false,
            batchable,
        };
        let performative = reference(&transfer);
        prop_assert_eq!(&frame[..4], &(frame.len() as u32).to_be_bytes());
        prop_assert_eq!(&frame[4..6], &[2, 0]);
        prop_assert_eq!(&frame[6..8], &channel.to_be_bytes());
        prop_assert_eq!(&frame[8..8 + performative.len()], &performative[..]);
        prop_assert_eq!(&frame[8 + performative.len()..], &payload[..]);

        // fe2o3-amqp's decoder reads what follows the size field.
        let mut body = BytesMut::from(&frame[4..]);
        let decoded = FrameDecoder {}.decode(&mut body).expect("decodes").expect("a frame");
        prop_assert_eq!(decoded.channel(), channel);
        match decoded.into_body() {
            FrameBody::Transfer { performative, payload: got } => {
                prop_assert_eq!(performative.handle, Handle(handle));
                prop_assert_eq!(performative.delivery_id, delivery_id);
                prop_assert_eq!(performative.more, more);
                prop_assert_eq!(&got[..], &payload[..]);
            }
            other => prop_assert!(false, "decoded as {:?}", other),
        }
    }
}

#[test]
fn an_empty_map_and_list_are_serde_amqps() {
    let empty: OrderedMap<Value, Value> = OrderedMap::new();
    assert_eq!(
        encoded(|e| {
            let c = e.begin_compound();
            e.end_map(c, 0)
        }),
        reference(&Value::Map(empty))
    );
    assert_eq!(
        encoded(|e| {
            let c = e.begin_compound();
            e.end_list(c, 0)
        }),
        reference(&Value::List(Vec::new()))
    );
}

#[test]
fn a_described_value_is_a_descriptor_code_then_the_value() {
    let bytes = encoded(|e| {
        e.descriptor(0x75);
        e.binary(b"hi")
    });
    assert_eq!(bytes, [0x00, 0x53, 0x75, 0xa0, 2, b'h', b'i']);
}

proptest! {
    #[test]
    fn the_decoder_reads_back_what_serde_amqp_writes(
        u in any::<u32>(),
        l in any::<u64>(),
        s in any::<i64>(),
        b in any::<bool>(),
        text in text(),
        bytes in proptest::collection::vec(any::<u8>(), 0..400),
    ) {
        let mut buf = reference(&u);
        buf.extend(reference(&l));
        buf.extend(reference(&s));
        buf.extend(reference(&b));
        buf.extend(reference(&Timestamp::from_milliseconds(s)));
        buf.extend(reference(&text));
        buf.extend(reference(&Symbol::from(text.as_str())));
        buf.extend(reference(&Binary::from(bytes.clone())));
        let list = Value::List(vec![Value::Uint(u), Value::String(text.clone())]);
        buf.extend(reference(&list));
        buf.extend(reference(&Value::Null));
        let mut d = AmqpDecoder::new(&buf);
        prop_assert_eq!(d.uint(), Ok(u));
        prop_assert_eq!(d.ulong(), Ok(l));
        prop_assert_eq!(d.long(), Ok(s));
        prop_assert_eq!(d.boolean(), Ok(b));
        prop_assert_eq!(d.timestamp(), Ok(s));
        prop_assert_eq!(d.string(), Ok(text.as_str()));
        prop_assert_eq!(d.symbol(), Ok(text.as_str()));
        prop_assert_eq!(d.binary(), Ok(&bytes[..]));
        let header = d.list().expect("a list");
        prop_assert_eq!(header.count, 2);
        prop_assert_eq!(d.uint(), Ok(u));
        d.skip().expect("skips the string");
        prop_assert_eq!(d.position(), header.end);
        prop_assert!(d.null());
        prop_assert!(d.is_done());
    }

    #[test]
    fn the_decoder_never_panics_on_arbitrary_bytes(bytes in proptest::collection::vec(any::<u8>(), 0..64)) {
        // Every read on every suffix: errors, never a panic or a read past the end.
        for start in 0..bytes.len() {
            let reads: [fn(&mut AmqpDecoder<'_>) -> bool; 12] = [
                |d| d.uint().is_ok(),
                |d| d.ulong().is_ok(),
                |d| d.long().is_ok(),
                |d| d.boolean().is_ok(),
                |d| d.timestamp().is_ok(),
                |d| d.string().is_ok(),
                |d| d.symbol().is_ok(),
                |d| d.binary().is_ok(),
                |d| d.list().is_ok(),
                |d| d.map().is_ok(),
                |d| d.skip().is_ok(),
                |d| d.descriptor().is_ok(),
            ];
            for read in reads {
                let mut d = AmqpDecoder::new(&bytes[start..]);
                let _ = read(&mut d);
                prop_assert!(d.position() <= bytes.len() - start);
            }
        }
    }

    #[test]
    fn frame_headers_read_back_and_bad_ones_are_refused(
        channel in any::<u16>(),
        body in proptest::collection::vec(any::<u8>(), 0..100),
        header in proptest::collection::vec(any::<u8>(), 8),
    ) {
        let mut buf = Vec::new();
        let frame = FrameWriter::begin(&mut buf, SASL_FRAME, channel);
        buf.extend_from_slice(&body);
        frame.end(&mut buf).expect("ends");
        let read = FrameHeader::parse(&buf, 1024).expect("valid").expect("complete header");
        prop_assert_eq!(read.size as usize, buf.len());
        prop_assert_eq!(read.body_offset, FRAME_HEADER);
        prop_assert_eq!(read.frame_type, SASL_FRAME);
        prop_assert_eq!(read.channel, channel);
        prop_assert_eq!(FrameHeader::parse(&buf[..7], 1024), Ok(None));
        // Any 8 bytes: a header within the rules, or an error.
        if let Ok(Some(h)) = FrameHeader::parse(&header, 1024) {
            prop_assert!(h.size >= 8 && h.size <= 1024);
            prop_assert!(h.body_offset >= 8 && h.body_offset <= h.size as usize);
            prop_assert!(h.frame_type <= 1);
        }
    }
}
