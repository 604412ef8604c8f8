//! Strict framing of a device's byte stream: MQTT 3.1.1's rules on fixed-header flags, reserved
//! bits, flag combinations and strings, checked on the raw bytes around `rmqtt-codec`'s v3
//! decoder.
//!
//! The codec is lenient where a server must not be: it masks the reserved bits of SUBSCRIBE's
//! requested-QoS byte, skips CONNECT's will QoS and will retain bits when the will flag is clear,
//! takes `MQIsdp` with level 4 for MQTT 3.1.1, accepts SUBSCRIBE and UNSUBSCRIBE without a topic
//! filter, PUBLISH with DUP at QoS 0, and NUL characters in strings. And it reads a packet's
//! whole body before looking at its first byte, so bytes that are not MQTT at all (an HTTP
//! request) held a connection open until the CONNECT timeout. [`StrictCodec`] frames each packet
//! itself: the first byte is judged as soon as it arrives, the remaining length against the
//! maximum packet size before the body is buffered, the raw body once it is complete, and only
//! then does the codec decode it (its decoded packet is checked once more for what is easier to
//! see there). Every refusal names the normative statement it enforces.

use bytes::BytesMut;
use rmqtt_codec::error::{DecodeError, EncodeError};
use rmqtt_codec::v3::{Codec, Packet};
use tokio_util::codec::{Decoder, Encoder};

use super::error::{Error, ProtocolViolation};

/// The fixed header of CONNECT: packet type 1, all flags clear.
const CONNECT: u8 = 0x10;

/// CONNECT flag bits (MQTT 3.1.1 §3.1.2.3).
mod connect_flag {
    pub(super) const USERNAME: u8 = 0b1000_0000;
    pub(super) const PASSWORD: u8 = 0b0100_0000;
    pub(super) const WILL_RETAIN: u8 = 0b0010_0000;
    pub(super) const WILL_QOS: u8 = 0b0001_1000;
    pub(super) const WILL: u8 = 0b0000_0100;
    pub(super) const RESERVED: u8 = 0b0000_0001;
}

/// Where a connection is in its life, which decides what its next first byte may be.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stage {
    /// Nothing decoded yet: only CONNECT may come [MQTT-3.1.0-1].
    AwaitingConnect,
    /// CONNECT decoded: anything but another CONNECT [MQTT-3.1.0-2].
    Connected,
}

/// `rmqtt-codec`'s v3 codec behind MQTT 3.1.1's rules for what a client sends. Encoding is
/// the codec's own.
#[derive(Debug)]
pub(crate) struct StrictCodec {
    inner: Codec,
    max_packet_size: u32,
    stage: Stage,
}

impl StrictCodec {
    /// A codec for a new connection, refusing packets whose remaining length exceeds
    /// `max_packet_size` (positive: `MqttConfig` keeps it at 64 bytes or more).
    pub(crate) fn new(max_packet_size: u32) -> Self {
        StrictCodec {
            inner: Codec::new(max_packet_size),
            max_packet_size,
            stage: Stage::AwaitingConnect,
        }
    }

    fn too_large(&self) -> Error {
        ProtocolViolation::TooLarge {
            max: self.max_packet_size as usize,
        }
        .into()
    }

    /// Maps a codec error: I/O stays I/O, everything else is a malformed packet.
    fn decode_error(&self, e: DecodeError) -> Error {
        match e {
            DecodeError::Io(text) => Error::Io(std::io::Error::other(text.to_string())),
            DecodeError::MaxSizeExceeded => self.too_large(),
            // The codec's one CONNECT refusal that has a CONNACK code of its own.
            DecodeError::InvalidClientId => ProtocolViolation::EmptyClientId.into(),
            other => ProtocolViolation::Malformed(other.to_string()).into(),
        }
    }
}

impl Decoder for StrictCodec {
    type Item = Packet;
    type Error = Error;

    fn decode(&mut self, src: &mut BytesMut) -> Result<Option<Packet>, Error> {
        let Some(&first) = src.first() else {
            return Ok(None);
        };
        check_first_byte(first, self.stage)?;
        let Some((remaining, length_bytes)) = remaining_length(&src[1..])? else {
            return Ok(None);
        };
        if remaining > self.max_packet_size {
            return Err(self.too_large());
        }
        check_empty_body(first, remaining)?;
        let body_start = 1 + length_bytes;
        let end = body_start + remaining as usize;
        if src.len() < end {
            // Room for the rest of this packet at once, as the codec itself would reserve.
            src.reserve(end - src.len());
            return Ok(None);
        }
        check_body(first, &src[body_start..end])?;
        // The whole packet is buffered, so the codec decodes it in this one call and is back at
        // a packet boundary afterwards.
        let packet = match self.inner.decode(src) {
            Ok(Some((packet, _))) => packet,
            Ok(None) => {
                return Err(ProtocolViolation::Malformed(
                    "the codec did not decode a complete packet".to_string(),
                )
                .into());
            }
            Err(e) => return Err(self.decode_error(e)),
        };
        check_strings(&packet)?;
        self.stage = Stage::Connected;
        Ok(Some(packet))
    }
}

impl Encoder<Packet> for StrictCodec {
    type Error = EncodeError;

    fn encode(&mut self, packet: Packet, dst: &mut BytesMut) -> Result<(), EncodeError> {
        self.inner.encode(packet, dst)
    }
}

/// A refusal naming the statement it enforces.
fn breaks(statement: &'static str, reason: &'static str) -> ProtocolViolation {
    ProtocolViolation::NonConformant { statement, reason }
}

/// Judges a packet's first byte before anything else of it is read: a connection that starts
/// with anything but CONNECT's fixed header (an HTTP request, TLS, noise) is closed at once.
fn check_first_byte(first: u8, stage: Stage) -> Result<(), ProtocolViolation> {
    match stage {
        Stage::AwaitingConnect if first != CONNECT => {
            return Err(ProtocolViolation::ExpectedConnect(first));
        }
        Stage::Connected if first == CONNECT => return Err(ProtocolViolation::SecondConnect),
        _ => {}
    }
    check_fixed_header_flags(first)
}

/// The flags of each packet type's fixed header (MQTT 3.1.1 §2.2.2, table 2.2).
fn check_fixed_header_flags(first: u8) -> Result<(), ProtocolViolation> {
    let flags = first & 0x0F;
    match first >> 4 {
        // PUBLISH: DUP, QoS, RETAIN.
        3 => {
            let qos = (flags >> 1) & 0b11;
            if qos == 3 {
                return Err(breaks("MQTT-3.3.1-4", "PUBLISH with both QoS bits set"));
            }
            if qos == 0 && flags & 0b1000 != 0 {
                return Err(breaks("MQTT-3.3.1-2", "PUBLISH with DUP set at QoS 0"));
            }
            Ok(())
        }
        6 if flags != 0b0010 => Err(breaks("MQTT-3.6.1-1", "PUBREL flags are not 0010")),
        8 if flags != 0b0010 => Err(breaks("MQTT-3.8.1-1", "SUBSCRIBE flags are not 0010")),
        10 if flags != 0b0010 => Err(breaks("MQTT-3.10.1-1", "UNSUBSCRIBE flags are not 0010")),
        6 | 8 | 10 => Ok(()),
        0 | 15 => Err(breaks("§2.2.1", "packet types 0 and 15 are reserved")),
        _ if flags != 0 => Err(breaks(
            "MQTT-2.2.2-2",
            "reserved fixed-header flags are not 0",
        )),
        _ => Ok(()),
    }
}

/// PINGREQ and DISCONNECT have no variable header and no payload (MQTT 3.1.1 §3.12, §3.14),
/// but the codec would skip a body it was given; refused from the fixed header.
fn check_empty_body(first: u8, remaining: u32) -> Result<(), ProtocolViolation> {
    match first {
        0xC0 | 0xE0 if remaining != 0 => Err(ProtocolViolation::Malformed(format!(
            "a {} with a body",
            if first == 0xC0 {
                "PINGREQ"
            } else {
                "DISCONNECT"
            }
        ))),
        _ => Ok(()),
    }
}

/// The remaining length and how many bytes encode it; `None` while more are needed. At most
/// four bytes (MQTT 3.1.1 §2.2.3).
fn remaining_length(bytes: &[u8]) -> Result<Option<(u32, usize)>, ProtocolViolation> {
    let mut value = 0u32;
    for (i, byte) in bytes.iter().take(4).enumerate() {
        value |= u32::from(byte & 0x7F) << (7 * i);
        if byte & 0x80 == 0 {
            return Ok(Some((value, i + 1)));
        }
    }
    if bytes.len() >= 4 {
        return Err(ProtocolViolation::Malformed(
            "remaining length longer than four bytes".to_string(),
        ));
    }
    Ok(None)
}

/// The raw-bit rules of a complete packet's body, before the codec masks or skips those bits.
/// Bodies too short for a field are left to the codec, which refuses them.
fn check_body(first: u8, body: &[u8]) -> Result<(), ProtocolViolation> {
    match first {
        CONNECT => check_connect(body),
        0x82 => check_subscribe(body),
        0xA2 if body.len() == 2 => Err(breaks(
            "MQTT-3.10.3-2",
            "UNSUBSCRIBE without a topic filter",
        )),
        _ => Ok(()),
    }
}

/// CONNECT's protocol name and level, then its flags (MQTT 3.1.1 §3.1.2).
fn check_connect(body: &[u8]) -> Result<(), ProtocolViolation> {
    let Some(name_len) = field_len(body) else {
        return Ok(());
    };
    let name = body.get(2..2 + name_len);
    let (Some(name), Some(&level)) = (name, body.get(2 + name_len)) else {
        return Ok(());
    };
    match (name, level) {
        (b"MQTT", 4) => {}
        // Another level of MQTT, or MQTT 3.1 itself: "unacceptable protocol level", answered
        // with CONNACK 1 [MQTT-3.1.2-2] (3.1 defines the same return code).
        (b"MQTT", _) | (b"MQIsdp", 3) => return Err(ProtocolViolation::ProtocolLevel(level)),
        _ => {
            return Err(breaks(
                "MQTT-3.1.2-1",
                "the protocol name is not MQTT (or MQIsdp for MQTT 3.1)",
            ));
        }
    }
    let Some(&flags) = body.get(3 + name_len) else {
        return Ok(());
    };
    check_connect_flags(flags)?;
    // After the keep-alive: the client id, then the fields the flags announce, and nothing
    // else (the codec stops reading after the last announced field).
    let Some(mut payload) = body.get(6 + name_len..) else {
        return Ok(());
    };
    let announced = 1
        + 2 * usize::from(flags & connect_flag::WILL != 0)
        + usize::from(flags & connect_flag::USERNAME != 0)
        + usize::from(flags & connect_flag::PASSWORD != 0);
    for _ in 0..announced {
        let Some(rest) = field_len(payload).and_then(|len| payload.get(2 + len..)) else {
            return Ok(());
        };
        payload = rest;
    }
    if !payload.is_empty() {
        return Err(breaks(
            "MQTT-3.1.2-11/18/20",
            "CONNECT holds more than the fields its flags announce",
        ));
    }
    Ok(())
}

/// The length prefix of a string or binary field at the start of `bytes`.
fn field_len(bytes: &[u8]) -> Option<usize> {
    match bytes {
        [hi, lo, ..] => Some(usize::from(u16::from_be_bytes([*hi, *lo]))),
        _ => None,
    }
}

/// The rules on CONNECT's flag combinations (MQTT 3.1.1 §3.1.2.3 to §3.1.2.9).
fn check_connect_flags(flags: u8) -> Result<(), ProtocolViolation> {
    use connect_flag::{PASSWORD, RESERVED, USERNAME, WILL, WILL_QOS, WILL_RETAIN};
    if flags & RESERVED != 0 {
        return Err(breaks("MQTT-3.1.2-3", "the reserved CONNECT flag is set"));
    }
    if flags & WILL == 0 {
        if flags & WILL_QOS != 0 {
            return Err(breaks(
                "MQTT-3.1.2-13",
                "will QoS is not 0 while the will flag is clear",
            ));
        }
        if flags & WILL_RETAIN != 0 {
            return Err(breaks(
                "MQTT-3.1.2-15",
                "will retain is set while the will flag is clear",
            ));
        }
    } else if flags & WILL_QOS == WILL_QOS {
        return Err(breaks("MQTT-3.1.2-14", "will QoS 3"));
    }
    if flags & PASSWORD != 0 && flags & USERNAME == 0 {
        return Err(breaks(
            "MQTT-3.1.2-22",
            "the password flag is set without the username flag",
        ));
    }
    Ok(())
}

/// SUBSCRIBE's payload: at least one filter [MQTT-3.8.3-3], each followed by a requested-QoS
/// byte whose upper six bits are reserved and whose QoS is 0, 1 or 2 [MQTT-3.8.3-4].
fn check_subscribe(body: &[u8]) -> Result<(), ProtocolViolation> {
    let Some(mut rest) = body.get(2..) else {
        return Ok(());
    };
    if rest.is_empty() {
        return Err(breaks("MQTT-3.8.3-3", "SUBSCRIBE without a topic filter"));
    }
    while let Some(len) = field_len(rest) {
        let Some(&qos) = rest.get(2 + len) else {
            return Ok(());
        };
        if qos & 0b1111_1100 != 0 {
            return Err(breaks(
                "MQTT-3.8.3-4",
                "reserved bits of a requested QoS are set",
            ));
        }
        if qos == 3 {
            return Err(breaks("MQTT-3.8.3-4", "requested QoS 3"));
        }
        rest = &rest[3 + len..];
    }
    Ok(())
}

/// No UTF-8 string of a packet may hold U+0000 [MQTT-1.5.3-2]. (Ill-formed UTF-8
/// [MQTT-1.5.3-1] the codec refuses itself.)
fn check_strings(packet: &Packet) -> Result<(), ProtocolViolation> {
    let nul = |s: &str| memchr::memchr(0, s.as_bytes()).is_some();
    let found = match packet {
        Packet::Connect(connect) => {
            nul(&connect.client_id)
                || connect.username.as_deref().is_some_and(nul)
                || connect
                    .last_will
                    .as_ref()
                    .is_some_and(|will| nul(&will.topic))
        }
        Packet::Publish(publish) => nul(&publish.topic),
        Packet::Subscribe { topic_filters, .. } => topic_filters.iter().any(|(f, _)| nul(f)),
        Packet::Unsubscribe { topic_filters, .. } => topic_filters.iter().any(|f| nul(f)),
        _ => false,
    };
    if found {
        return Err(breaks("MQTT-1.5.3-2", "a string contains U+0000"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::num::NonZeroU16;

    use bytes::Bytes;
    use bytestring::ByteString;
    use proptest::prelude::*;
    use rmqtt_codec::types::Publish;
    use rmqtt_codec::v3::{Connect, LastWill, QoS};

    use super::*;

    #[test]
    fn remaining_length_takes_one_to_four_bytes() {
        assert_eq!(remaining_length(&[]), Ok(None));
        assert_eq!(remaining_length(&[0x00]), Ok(Some((0, 1))));
        assert_eq!(remaining_length(&[0x7F, 0xAA]), Ok(Some((127, 1))));
        assert_eq!(remaining_length(&[0x80, 0x01]), Ok(Some((128, 2))));
        assert_eq!(remaining_length(&[0x80]), Ok(None));
        assert_eq!(remaining_length(&[0xFF, 0xFF, 0xFF]), Ok(None));
        assert_eq!(
            remaining_length(&[0xFF, 0xFF, 0xFF, 0x7F]),
            Ok(Some((268_435_455, 4)))
        );
        assert!(remaining_length(&[0xFF, 0xFF, 0xFF, 0xFF]).is_err());
        assert!(remaining_length(&[0x80, 0x80, 0x80, 0x80, 0x01]).is_err());
    }

    #[test]
    fn truncated_bodies_are_left_to_the_codec() {
        // Field lengths that run past the body: no refusal here and no panic; the codec
        // refuses them when it decodes.
        for body in [
            &b""[..],
            b"\x00",
            b"\x00\x04MQ",
            b"\x00\x04MQTT",
            b"\xFF\xFF",
            b"\x00\x04MQTT\x04\x02\x00",
            b"\x00\x04MQTT\x04\x02\x00\x3C\x00\x09ab",
        ] {
            assert_eq!(check_connect(body), Ok(()), "{body:?}");
        }
        for body in [
            &b"\x00"[..],
            b"\x00\x01\x00",
            b"\x00\x01\x00\x05ab",
            b"\x00\x01\xFF\xFF",
        ] {
            assert_eq!(check_subscribe(body), Ok(()), "{body:?}");
        }
    }

    #[test]
    fn connect_payload_holds_exactly_the_announced_fields() {
        // Client id "ab", then username "u" and password "p" as the flags announce.
        let full = b"\x00\x04MQTT\x04\xC2\x00\x3C\x00\x02ab\x00\x01u\x00\x01p";
        assert_eq!(check_connect(full), Ok(()));
        let mut trailing = full.to_vec();
        trailing.push(0);
        assert!(check_connect(&trailing).is_err());
        // The same fields with the password flag clear.
        let unannounced = b"\x00\x04MQTT\x04\x82\x00\x3C\x00\x02ab\x00\x01u\x00\x01p";
        assert!(check_connect(unannounced).is_err());
    }

    #[test]
    fn every_connect_flag_combination_follows_section_3_1_2() {
        use connect_flag::{PASSWORD, RESERVED, USERNAME, WILL, WILL_QOS, WILL_RETAIN};
        for flags in 0..=u8::MAX {
            let will = flags & WILL != 0;
            let qos = (flags & WILL_QOS) >> 3;
            let legal = flags & RESERVED == 0
                && (will || (qos == 0 && flags & WILL_RETAIN == 0))
                && qos != 3
                && (flags & PASSWORD == 0 || flags & USERNAME != 0);
            assert_eq!(
                check_connect_flags(flags).is_ok(),
                legal,
                "flags {flags:#010b}"
            );
        }
    }

    #[test]
    fn fixed_header_flags_follow_table_2_2() {
        let legal = |first: u8| match first {
            0x10 | 0x20 | 0x40 | 0x50 | 0x62 | 0x70 | 0x82 | 0x90 | 0xA2 | 0xB0 | 0xC0 | 0xD0
            | 0xE0 => true,
            0x30..=0x3F => {
                let qos = (first >> 1) & 0b11;
                qos != 3 && !(qos == 0 && first & 0b1000 != 0)
            }
            _ => false,
        };
        for first in 0..=u8::MAX {
            assert_eq!(
                check_fixed_header_flags(first).is_ok(),
                legal(first),
                "{first:#04x}"
            );
        }
    }

    fn string() -> impl Strategy<Value = ByteString> {
        "[a-z0-9/$=&.?]{1,24}".prop_map(ByteString::from)
    }

    fn qos() -> impl Strategy<Value = QoS> {
        prop_oneof![
            Just(QoS::AtMostOnce),
            Just(QoS::AtLeastOnce),
            Just(QoS::ExactlyOnce)
        ]
    }

    fn packet_id() -> impl Strategy<Value = NonZeroU16> {
        (1u16..).prop_filter_map("non-zero", NonZeroU16::new)
    }

    fn connect() -> impl Strategy<Value = Packet> {
        let will = proptest::option::of((qos(), any::<bool>(), string()));
        let credentials = proptest::option::of((string(), proptest::option::of(string())));
        (any::<bool>(), any::<u16>(), string(), will, credentials).prop_map(
            |(clean_session, keep_alive, client_id, will, credentials)| {
                let (username, password) = match credentials {
                    Some((user, password)) => (Some(user), password.map(|p| p.into_bytes())),
                    None => (None, None),
                };
                Packet::Connect(Box::new(Connect {
                    clean_session,
                    keep_alive,
                    client_id,
                    last_will: will.map(|(qos, retain, topic)| LastWill {
                        qos,
                        retain,
                        topic,
                        message: Bytes::from_static(b"gone"),
                    }),
                    username,
                    password,
                    ..Connect::default()
                }))
            },
        )
    }

    /// Packets a conforming client may send after CONNECT.
    fn after_connect() -> impl Strategy<Value = Packet> {
        let payload = proptest::collection::vec(any::<u8>(), 0..40);
        prop_oneof![
            (
                qos(),
                any::<bool>(),
                any::<bool>(),
                string(),
                packet_id(),
                payload
            )
                .prop_map(|(qos, dup, retain, topic, id, payload)| {
                    let at_least_once = qos != QoS::AtMostOnce;
                    Packet::Publish(Box::new(Publish {
                        dup: dup && at_least_once,
                        retain,
                        qos,
                        topic,
                        packet_id: at_least_once.then_some(id),
                        payload: Bytes::from(payload),
                        properties: None,
                    }))
                }),
            (
                packet_id(),
                proptest::collection::vec((string(), qos()), 1..4)
            )
                .prop_map(|(packet_id, topic_filters)| Packet::Subscribe {
                    packet_id,
                    topic_filters
                }),
            (packet_id(), proptest::collection::vec(string(), 1..4)).prop_map(
                |(packet_id, topic_filters)| Packet::Unsubscribe {
                    packet_id,
                    topic_filters
                }
            ),
            packet_id().prop_map(|packet_id| Packet::PublishAck { packet_id }),
            packet_id().prop_map(|packet_id| Packet::PublishRelease { packet_id }),
            Just(Packet::PingRequest),
            Just(Packet::Disconnect),
        ]
    }

    /// Decodes `stream` fed in pieces of `chunk` bytes, as a socket delivers it.
    fn decode_in_pieces(stream: &[u8], chunk: usize, max: u32) -> Result<Vec<Packet>, Error> {
        let mut codec = StrictCodec::new(max);
        let mut buffer = BytesMut::new();
        let mut decoded = Vec::new();
        for piece in stream.chunks(chunk) {
            buffer.extend_from_slice(piece);
            while let Some(packet) = codec.decode(&mut buffer)? {
                decoded.push(packet);
            }
            // At most one unfinished packet (header of at most 5 bytes) plus the new piece.
            assert!(buffer.len() <= max as usize + 5 + chunk);
        }
        Ok(decoded)
    }

    proptest! {
        /// The strict rules refuse nothing a conforming client sends: whatever the codec
        /// encodes from well-formed packets decodes back unchanged, however the stream is cut.
        #[test]
        fn conforming_streams_pass_unchanged(
            first in connect(),
            rest in proptest::collection::vec(after_connect(), 0..8),
            chunk in 1usize..64,
        ) {
            let mut codec = Codec::new(0);
            let mut stream = BytesMut::new();
            let packets: Vec<Packet> = std::iter::once(first).chain(rest).collect();
            for packet in &packets {
                codec.encode(packet.clone(), &mut stream).expect("encode");
            }
            let decoded = decode_in_pieces(&stream, chunk, 4096).expect("conforming stream");
            prop_assert_eq!(decoded, packets);
        }

        /// Arbitrary bytes never panic and never make the framing buffer more than one packet.
        #[test]
        fn arbitrary_bytes_are_framed_within_bounds(
            stream in proptest::collection::vec(any::<u8>(), 0..512),
            chunk in 1usize..64,
            connect_first in any::<bool>(),
        ) {
            let mut input = Vec::new();
            if connect_first {
                input.extend_from_slice(b"\x10\x0C\x00\x04MQTT\x04\x02\x00\x3C\x00\x00");
            }
            input.extend(stream);
            let _ = decode_in_pieces(&input, chunk, 64);
        }
    }
}
