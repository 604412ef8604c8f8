//! An event's AMQP encoding written straight from the stored record: the bytes fe2o3-amqp
//! sent for `event_reference::EventBuffer`'s message until 2026-12-07, without building the
//! message first.
//!
//! Why: building the message tree and serializing it is about a fifth of the endpoint's
//! work per event (docs/performance.md, "Event Hubs: where an event's cost is now"); this is
//! one pass over the record's headers per section, into a buffer the caller reuses. It is the
//! first piece of a transfer path of the endpoint's own; the table of what goes where is
//! `event.rs`'s.

use iot_core::StoredRecord;
use iot_core::headers::{CONTENT_ENCODING, CONTENT_TYPE, CORRELATION_ID, MESSAGE_ID};
use iot_gateway::adapter::{AmqpEncoder, AmqpWireError};

use super::event::{EXPIRY_TIME, IOTHUB_ENQUEUED_TIME, USER_ID, is_system};

// Section descriptor codes (AMQP 1.0 part 3, 3.2).
const MESSAGE_ANNOTATIONS: u64 = 0x72;
const PROPERTIES: u64 = 0x73;
const APPLICATION_PROPERTIES: u64 = 0x74;
const DATA: u64 = 0x75;

/// The annotations every event carries after the record's own stamps.
const STAMPS: u32 = 5;

/// Where a header goes in the event.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Section {
    /// Not sent: the hub's own enqueued-time stamp (the event carries the log's) and `$`
    /// names.
    Nowhere,
    /// A field of the properties section, by its index in that list.
    Property(usize),
    /// `absolute-expiry-time` in the properties section, from the header's milliseconds.
    Expiry(i64),
    MessageAnnotation,
    ApplicationProperty,
}

// Indexes in the properties list (AMQP 1.0 part 3, 3.2.4).
const MESSAGE_ID_FIELD: usize = 0;
const USER_ID_FIELD: usize = 1;
const CORRELATION_ID_FIELD: usize = 5;
const CONTENT_TYPE_FIELD: usize = 6;
const CONTENT_ENCODING_FIELD: usize = 7;
const EXPIRY_FIELD: usize = 8;

/// The same decisions, in the same order, as `EventBuffer::fill`.
fn section(name: &str, value: &str) -> Section {
    if name.eq_ignore_ascii_case(IOTHUB_ENQUEUED_TIME) {
        Section::Nowhere
    } else if name == MESSAGE_ID {
        Section::Property(MESSAGE_ID_FIELD)
    } else if name == CORRELATION_ID {
        Section::Property(CORRELATION_ID_FIELD)
    } else if name == CONTENT_TYPE {
        Section::Property(CONTENT_TYPE_FIELD)
    } else if name == CONTENT_ENCODING {
        Section::Property(CONTENT_ENCODING_FIELD)
    } else if let Some(ms) = (name == EXPIRY_TIME)
        .then(|| value.parse::<i64>().ok())
        .flatten()
    {
        Section::Expiry(ms)
    } else if name == USER_ID {
        Section::Property(USER_ID_FIELD)
    } else if is_system(name) {
        if name.starts_with('$') {
            Section::Nowhere
        } else {
            Section::MessageAnnotation
        }
    } else {
        Section::ApplicationProperty
    }
}

/// Appends the event for `stored` (its message sections, the `transfer`'s payload) to `buf`.
///
/// The bytes are those serde_amqp writes for the message an fe2o3-amqp sender of this
/// endpoint sends: message annotations (the record's `iothub-*`/`dt-*` stamps, then
/// `iothub-enqueuedtime`, `x-opt-sequence-number`, `x-opt-offset`, `x-opt-enqueued-time`,
/// `x-opt-partition-key`), the properties section when the record has a message id,
/// correlation id, content type or encoding, expiry or user id, the application properties
/// when it has any, and one `data` section with the payload. A record's header names are
/// unique ([`iot_core::headers::Headers`]), so each is written once.
///
/// ```
/// use iot_sdk::core::{Offset, PartitionId, Record, StoredRecord, Timestamp};
///
/// let record = Record::new("sensor-1", "21.5").with_header("unit", "C");
/// let stored = StoredRecord::new(PartitionId(0), Offset(7), Timestamp::from_unix_millis(1), record);
/// let mut buf = Vec::new();
/// iot_sdk::eventhubs::encode_event(&stored, &mut buf)?;
/// assert!(buf.starts_with(&[0x00, 0x53, 0x72])); // message annotations first
/// assert!(buf.ends_with(&[0x00, 0x53, 0x75, 0xa0, 4, b'2', b'1', b'.', b'5'])); // the data section
/// # Ok::<(), iot_sdk::gateway::adapter::AmqpWireError>(())
/// ```
pub fn encode_event(stored: &StoredRecord, buf: &mut Vec<u8>) -> Result<(), AmqpWireError> {
    let record = &stored.record;
    let offset = stored.offset.0;
    let enqueued = i64::try_from(stored.enqueued_time.as_unix_millis()).unwrap_or(i64::MAX);
    let mut e = AmqpEncoder::new(buf);

    e.descriptor(MESSAGE_ANNOTATIONS);
    let map = e.begin_compound();
    let mut entries = STAMPS;
    for (name, value) in record.headers.iter() {
        if section(name, value) == Section::MessageAnnotation {
            e.symbol(name)?;
            e.string(value)?;
            entries += 1;
        }
    }
    e.symbol(IOTHUB_ENQUEUED_TIME)?;
    e.timestamp(enqueued);
    e.symbol("x-opt-sequence-number")?;
    e.long(i64::try_from(offset).unwrap_or(i64::MAX));
    e.symbol("x-opt-offset")?;
    let mut digits = [0u8; 20];
    e.string(decimal(offset, &mut digits))?;
    e.symbol("x-opt-enqueued-time")?;
    e.timestamp(enqueued);
    e.symbol("x-opt-partition-key")?;
    e.string(&record.key)?;
    e.end_map(map, entries)?;

    properties(&mut e, stored)?;

    let application = record
        .headers
        .iter()
        .filter(|(name, value)| section(name, value) == Section::ApplicationProperty)
        .count();
    if application > 0 {
        e.descriptor(APPLICATION_PROPERTIES);
        let map = e.begin_compound();
        for (name, value) in record.headers.iter() {
            if section(name, value) == Section::ApplicationProperty {
                e.string(name)?;
                e.string(value)?;
            }
        }
        e.end_map(map, application as u32)?;
    }

    e.descriptor(DATA);
    e.binary(&record.payload)
}

/// `n` in decimal, in `out` (20 digits hold any `u64`).
fn decimal(mut n: u64, out: &mut [u8; 20]) -> &str {
    let mut i = out.len();
    loop {
        i -= 1;
        out[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    // Only ASCII digits were written.
    std::str::from_utf8(&out[i..]).unwrap_or_default()
}

/// The properties section, when one of its fields is set: fields after the last one set are
/// left out, unset ones before it are `null`.
fn properties(e: &mut AmqpEncoder<'_>, stored: &StoredRecord) -> Result<(), AmqpWireError> {
    let mut fields: [Option<(&str, Section)>; EXPIRY_FIELD + 1] = [None; EXPIRY_FIELD + 1];
    for (name, value) in stored.record.headers.iter() {
        match section(name, value) {
            s @ Section::Property(i) => fields[i] = Some((value, s)),
            s @ Section::Expiry(_) => fields[EXPIRY_FIELD] = Some((value, s)),
            _ => {}
        }
    }
    let Some(last) = fields.iter().rposition(Option::is_some) else {
        return Ok(());
    };
    e.descriptor(PROPERTIES);
    let list = e.begin_compound();
    for (i, field) in fields[..=last].iter().enumerate() {
        match (i, field) {
            (_, None) => e.null(),
            (_, Some((_, Section::Expiry(ms)))) => e.timestamp(*ms),
            (USER_ID_FIELD, Some((value, _))) => e.binary(value.as_bytes())?,
            (CONTENT_TYPE_FIELD | CONTENT_ENCODING_FIELD, Some((value, _))) => e.symbol(value)?,
            (_, Some((value, _))) => e.string(value)?,
        }
    }
    e.end_list(list, last as u32 + 1)
}

#[cfg(test)]
mod tests {
    use fe2o3_amqp::types::messaging::message::__private::Serializable;
    use iot_core::{Offset, PartitionId, Record};
    use proptest::prelude::*;

    use super::super::event_reference::EventBuffer;
    use super::*;

    /// What fe2o3-amqp's sender serializes for the endpoint's message.
    fn reference(stored: &StoredRecord) -> Vec<u8> {
        let mut events = EventBuffer::new();
        let message = &events.fill(stored).message;
        serde_amqp::to_vec(&Serializable(message)).expect("serde_amqp encodes the event")
    }

    fn encoded(stored: &StoredRecord) -> Vec<u8> {
        let mut buf = Vec::new();
        encode_event(stored, &mut buf).expect("encodes");
        buf
    }

    fn names() -> impl Strategy<Value = String> {
        prop_oneof![
            Just("message-id".to_owned()),
            Just("correlation-id".to_owned()),
            Just("content-type".to_owned()),
            Just("content-encoding".to_owned()),
            Just("expiry-time".to_owned()),
            Just("user-id".to_owned()),
            Just("iothub-enqueuedtime".to_owned()),
            Just("IoTHub-EnqueuedTime".to_owned()),
            Just("iothub-connection-device-id".to_owned()),
            Just("iothub-message-source".to_owned()),
            Just("dt-subject".to_owned()),
            Just("$.ct".to_owned()),
            "[a-z]{1,12}",
            (250usize..260).prop_map(|n| "p".repeat(n)),
        ]
    }

    fn values() -> impl Strategy<Value = String> {
        prop_oneof![
            "[a-z0-9]{0,10}",
            "-?[0-9]{1,13}",
            "\\PC{0,6}",
            (250usize..260).prop_map(|n| "v".repeat(n)),
        ]
    }

    prop_compose! {
        fn records()(
            key in "[a-z0-9-]{0,20}",
            headers in proptest::collection::vec((names(), values()), 0..14),
            payload in prop_oneof![
                proptest::collection::vec(any::<u8>(), 0..300),
                (0usize..70_000).prop_map(|n| vec![7u8; n]),
            ],
            offset in prop_oneof![0u64..300, any::<u64>()],
            enqueued in prop_oneof![0u64..2_000_000_000_000, any::<u64>()],
        ) -> StoredRecord {
            let mut record = Record::new(key, payload);
            for (name, value) in headers {
                record = record.with_header(name, value);
            }
            StoredRecord::new(
                PartitionId(1),
                Offset(offset),
                iot_core::Timestamp::from_unix_millis(enqueued),
                record,
            )
        }
    }

    proptest! {
        #[test]
        fn the_bytes_are_those_fe2o3_amqp_sends_for_the_endpoints_message(stored in records()) {
            prop_assert_eq!(encoded(&stored), reference(&stored));
        }
    }

    #[test]
    fn a_telemetry_record_with_many_annotations_switches_to_the_long_map_form() {
        // Enough stamps that the annotations map is over 254 bytes: the 32-bit form.
        let mut record = Record::new("dev", "x");
        for i in 0..12 {
            record = record.with_header(format!("iothub-stamp-{i}"), "a value of some length");
        }
        let stored = StoredRecord::new(
            PartitionId(0),
            Offset(9),
            iot_core::Timestamp::from_unix_millis(1),
            record,
        );
        let bytes = encoded(&stored);
        assert_eq!(&bytes[..4], &[0x00, 0x53, 0x72, 0xd1]);
        assert_eq!(bytes, reference(&stored));
    }
}
