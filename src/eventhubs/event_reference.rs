//! The endpoint's event as fe2o3-amqp's `Message`, as its sender sent it until 2026-12-07: the
//! tests' reference for [`encode_event`](super::encode_event), which must write the same bytes
//! that serde_amqp writes for this message.

use std::fmt::Write;

use fe2o3_amqp::link::delivery::Sendable;
use fe2o3_amqp::types::messaging::annotations::OwnedKey;
use fe2o3_amqp::types::messaging::{
    ApplicationProperties, Data, Message, MessageAnnotations, MessageId, Properties,
};
use fe2o3_amqp::types::primitives::{Binary, OrderedMap, SimpleValue, Symbol, Timestamp, Value};
use iot_core::StoredRecord;
use iot_core::headers::{CONTENT_ENCODING, CONTENT_TYPE, CORRELATION_ID, MESSAGE_ID};

use super::event::{EXPIRY_TIME, IOTHUB_ENQUEUED_TIME, USER_ID, is_system};

fn millis(t: iot_core::Timestamp) -> Timestamp {
    Timestamp::from_milliseconds(i64::try_from(t.as_unix_millis()).unwrap_or(i64::MAX))
}

/// One link's outgoing event, rebuilt in place for each record.
///
/// Why: building a fresh `Message` per record cost about 30 allocations (every annotation's
/// symbol and string, the maps growing, the payload) and as many frees, a third of the link's
/// own work. Consecutive records of a partition nearly always carry the same header names in
/// the same order, so the maps keep their keys and only the values are overwritten (into the
/// strings' existing buffers); a record with other names replaces the maps' tails from the
/// first difference. The message is the same as a freshly built one: same sections, same
/// entries in the same order.
#[derive(Debug)]
pub(crate) struct EventBuffer {
    sendable: Sendable<Data>,
}

impl EventBuffer {
    pub(crate) fn new() -> Self {
        EventBuffer {
            sendable: Sendable::builder()
                .message(Message {
                    header: None,
                    delivery_annotations: None,
                    message_annotations: Some(MessageAnnotations(OrderedMap::with_capacity(10))),
                    properties: None,
                    application_properties: None,
                    body: Data(Binary::from(Vec::new())),
                    footer: None,
                })
                .build(),
        }
    }

    /// The event for `stored`, ready to send with `Sender::send_batchable_ref`.
    pub(crate) fn fill(&mut self, stored: &StoredRecord) -> &Sendable<Data> {
        let record = &stored.record;
        let offset = stored.offset.0;
        let enqueued = millis(stored.enqueued_time);
        let message = &mut self.sendable.message;
        let annotations = message
            .message_annotations
            .get_or_insert_with(|| MessageAnnotations(OrderedMap::new()));
        let mut annotations = Entries::new(&mut annotations.0);
        let mut application = Entries::new(
            &mut message
                .application_properties
                .get_or_insert_with(|| ApplicationProperties(OrderedMap::new()))
                .0,
        );
        let mut properties = Properties::default();
        let mut has_properties = false;
        for (name, value) in record.headers.iter() {
            if name.eq_ignore_ascii_case(IOTHUB_ENQUEUED_TIME) {
                continue;
            }
            if name == MESSAGE_ID {
                properties.message_id = Some(MessageId::String(value.to_owned()));
                has_properties = true;
            } else if name == CORRELATION_ID {
                properties.correlation_id = Some(MessageId::String(value.to_owned()));
                has_properties = true;
            } else if name == CONTENT_TYPE {
                properties.content_type = Some(Symbol::from(value));
                has_properties = true;
            } else if name == CONTENT_ENCODING {
                properties.content_encoding = Some(Symbol::from(value));
                has_properties = true;
            } else if name == EXPIRY_TIME
                && let Ok(ms) = value.parse::<i64>()
            {
                properties.absolute_expiry_time = Some(Timestamp::from_milliseconds(ms));
                has_properties = true;
            } else if name == USER_ID {
                properties.user_id = Some(Binary::from(value.as_bytes().to_vec()));
                has_properties = true;
            } else if is_system(name) {
                if !name.starts_with('$') {
                    annotations.set(name, |v| set_string(v, value));
                }
            } else {
                application.set(name, |v| match v {
                    SimpleValue::String(s) => {
                        s.clear();
                        s.push_str(value);
                    }
                    other => *other = SimpleValue::String(value.to_owned()),
                });
            }
        }
        annotations.set(IOTHUB_ENQUEUED_TIME, |v| {
            *v = Value::Timestamp(enqueued.clone())
        });
        annotations.set("x-opt-sequence-number", |v| {
            *v = Value::Long(i64::try_from(offset).unwrap_or(i64::MAX))
        });
        annotations.set("x-opt-offset", |v| match v {
            Value::String(s) => {
                s.clear();
                // Writing into a String cannot fail.
                let _ = write!(s, "{offset}");
            }
            other => *other = Value::String(offset.to_string()),
        });
        annotations.set("x-opt-enqueued-time", |v| *v = Value::Timestamp(enqueued));
        annotations.set("x-opt-partition-key", |v| set_string(v, &record.key));
        annotations.finish();
        if application.finish() == 0 {
            message.application_properties = None;
        }
        message.properties = has_properties.then_some(properties);
        let body = &mut message.body.0;
        body.clear();
        body.extend_from_slice(&record.payload);
        &self.sendable
    }
}

/// Overwrites `v` with the string `s`, into its buffer when it already holds a string.
fn set_string(v: &mut Value, s: &str) {
    match v {
        Value::String(old) => {
            old.clear();
            old.push_str(s);
        }
        other => *other = Value::String(s.to_owned()),
    }
}

/// A map's keys, as this endpoint's maps have them: `Symbol` annotation keys, `String`
/// application property names.
trait Key {
    fn is(&self, name: &str) -> bool;
    fn from_name(name: &str) -> Self;
}

impl Key for OwnedKey {
    fn is(&self, name: &str) -> bool {
        matches!(self, OwnedKey::Symbol(s) if s.as_str() == name)
    }
    fn from_name(name: &str) -> Self {
        OwnedKey::Symbol(Symbol::from(name))
    }
}

impl Key for String {
    fn is(&self, name: &str) -> bool {
        self == name
    }
    fn from_name(name: &str) -> Self {
        name.to_owned()
    }
}

/// Sets a map's entries in order, reusing the entry at each position when it has the same key.
struct Entries<'a, K, V> {
    map: &'a mut OrderedMap<K, V>,
    /// Entries set so far; the map's entries from here on are the previous record's.
    next: usize,
}

impl<'a, K: Key + std::hash::Hash + Eq, V: Default> Entries<'a, K, V> {
    fn new(map: &'a mut OrderedMap<K, V>) -> Self {
        Entries { map, next: 0 }
    }

    /// Sets `name`'s value with `write` (given the old value, or a default for a new entry).
    fn set(&mut self, name: &str, write: impl FnOnce(&mut V)) {
        if let Some((key, value)) = self.map.as_inner_mut().get_index_mut(self.next)
            && key.is(name)
        {
            write(value);
            self.next += 1;
            return;
        }
        // Another key here: the previous record's tail goes. Names are unique in a record's
        // headers, but should one repeat, its value replaces the earlier one in place, as a
        // map insert does.
        let map = self.map.as_inner_mut();
        map.truncate(self.next);
        let (index, _) = map.insert_full(K::from_name(name), V::default());
        if let Some((_, value)) = map.get_index_mut(index) {
            write(value);
        }
        if index == self.next {
            self.next += 1;
        }
    }

    /// Drops the entries not set for this record; returns how many are left.
    fn finish(self) -> usize {
        self.map.as_inner_mut().truncate(self.next);
        self.next
    }
}

/// The event for `stored`, built fresh (the tests' reference for [`EventBuffer`]).
#[cfg(test)]
pub(crate) fn to_message(stored: &StoredRecord) -> Message<Data> {
    EventBuffer::new().fill(stored).message.clone()
}

#[cfg(test)]
mod tests {
    use fe2o3_amqp::types::messaging::annotations::OwnedKey;
    use iot_core::{Offset, PartitionId, Record};

    use super::*;

    fn stored(offset: u64, record: Record) -> StoredRecord {
        StoredRecord::new(
            PartitionId(0),
            Offset(offset),
            iot_core::Timestamp::from_unix_millis(1_700_000_000_000 + offset),
            record,
        )
    }

    #[test]
    fn a_reused_buffer_gives_each_record_the_message_a_fresh_one_gives() {
        // Records whose header names change from one to the next: more, fewer, reordered, none,
        // a system property, so that the buffer's maps grow, shrink and are rebuilt.
        let records = [
            Record::new("a", "1")
                .with_header("iothub-connection-device-id", "a")
                .with_header("n", "1")
                .with_header("sensor", "t"),
            Record::new("a", "22")
                .with_header("iothub-connection-device-id", "a")
                .with_header("n", "2")
                .with_header("sensor", "t"),
            Record::new("b", "").with_header("sensor", "h"),
            Record::new("b", "333")
                .with_header("iothub-message-source", "Telemetry")
                .with_header("iothub-connection-device-id", "b")
                .with_header("message-id", "m")
                .with_header("$.ct", "x"),
            Record::new("c", "4")
                .with_header("iothub-connection-device-id", "c")
                .with_header("sensor", "t")
                .with_header("n", "4")
                .with_header("extra", "e"),
            Record::new("c", "5").with_header("iothub-connection-device-id", "c"),
        ];
        let mut reused = EventBuffer::new();
        for (i, record) in records.into_iter().enumerate() {
            let stored = stored(1000 + i as u64 * 7, record);
            let fresh = to_message(&stored);
            let again = &reused.fill(&stored).message;
            assert_eq!(again, &fresh, "record {i}");
            let keys = |m: &Message<Data>| {
                m.message_annotations
                    .as_ref()
                    .map(|a| a.0.keys().cloned().collect::<Vec<_>>())
            };
            assert_eq!(keys(again), keys(&fresh), "annotation order of record {i}");
            let names = |m: &Message<Data>| {
                m.application_properties
                    .as_ref()
                    .map(|a| a.0.keys().cloned().collect::<Vec<_>>())
            };
            assert_eq!(names(again), names(&fresh), "property order of record {i}");
        }
    }

    #[test]
    fn maps_stamps_to_annotations_and_properties_to_application_properties() {
        let record = Record::new("dev-1", "{}")
            .with_header("iothub-connection-device-id", "dev-1")
            .with_header("message-id", "m1")
            .with_header("content-type", "application/json")
            .with_header("level", "hot");
        let stored = StoredRecord::new(
            PartitionId(2),
            Offset(41),
            iot_core::Timestamp::from_unix_millis(1_700_000_000_000),
            record,
        );
        let m = to_message(&stored);
        let ann = m.message_annotations.expect("annotations");
        let get = |k: &str| ann.get(&OwnedKey::Symbol(Symbol::from(k))).cloned();
        assert_eq!(
            get("iothub-connection-device-id"),
            Some(Value::String("dev-1".into()))
        );
        assert_eq!(get("x-opt-sequence-number"), Some(Value::Long(41)));
        assert_eq!(get("x-opt-offset"), Some(Value::String("41".into())));
        assert_eq!(
            get("x-opt-enqueued-time"),
            Some(Value::Timestamp(Timestamp::from_milliseconds(
                1_700_000_000_000
            )))
        );
        let app = m.application_properties.expect("application properties");
        assert_eq!(app.get("level"), Some(&SimpleValue::String("hot".into())));
        assert_eq!(app.len(), 1);
        let props = m.properties.expect("properties");
        assert_eq!(props.message_id, Some(MessageId::String("m1".into())));
        assert_eq!(&m.body.0[..], b"{}");
    }
}
