//! A log record seen as an IoT Hub message: system properties, application properties and a
//! JSON body, as the routing query language names them.

use std::borrow::Cow;
use std::sync::OnceLock;

use iot_core::StoredRecord;
use iot_core::headers::{CONTENT_ENCODING, CONTENT_TYPE, CORRELATION_ID, MESSAGE_ID};
use iot_core::time::format_rfc3339;
use serde::de::{DeserializeSeed, Deserializer, MapAccess, SeqAccess, Visitor};
use serde_json::Value;
use smallvec::SmallVec;

use super::scan;
use crate::rules::project::Field;

/// The header the gateway stamps with the sending device's id.
pub const DEVICE_ID_HEADER: &str = "iothub-connection-device-id";
/// The header that carries the sending module's id, when a module sent the message.
pub const MODULE_ID_HEADER: &str = "iothub-connection-module-id";

/// Headers that are system properties even without a reserved prefix, so an application
/// property lookup never returns them.
const SYSTEM_HEADERS: [&str; 6] = [
    CONTENT_TYPE,
    CONTENT_ENCODING,
    MESSAGE_ID,
    CORRELATION_ID,
    "user-id",
    "expiry-time",
];

/// Whether `name` is reserved for system properties (any ASCII case): such a header is never an
/// application property.
pub(crate) fn is_reserved(name: &str) -> bool {
    SYSTEM_HEADERS.iter().any(|s| s.eq_ignore_ascii_case(name))
        || name.starts_with('$')
        || starts_with_ignore_case(name, "iothub-")
        || starts_with_ignore_case(name, "dt-")
}

/// What a system property's name (as the query language writes it after `$`) reads.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum SystemName {
    /// The header of that name.
    Header(&'static str),
    /// `connectionDeviceId`: the gateway's stamp, else the record key.
    DeviceId,
    /// `enqueuedTime`: the log's time, as RFC 3339.
    EnqueuedTime,
    /// A header name IoT Hub uses (`iothub-…`, `dt-…`), read in any ASCII case.
    Prefixed,
    /// No system property.
    None,
}

impl SystemName {
    /// The system property `name` names (any ASCII case).
    pub(crate) fn resolve(name: &str) -> Self {
        let is = |a: &str, b: &str| name.eq_ignore_ascii_case(a) || name.eq_ignore_ascii_case(b);
        if is("contenttype", "content-type") {
            SystemName::Header(CONTENT_TYPE)
        } else if is("contentencoding", "content-encoding") {
            SystemName::Header(CONTENT_ENCODING)
        } else if is("messageid", "message-id") {
            SystemName::Header(MESSAGE_ID)
        } else if is("correlationid", "correlation-id") {
            SystemName::Header(CORRELATION_ID)
        } else if is("userid", "user-id") {
            SystemName::Header("user-id")
        } else if is("connectiondeviceid", DEVICE_ID_HEADER) {
            SystemName::DeviceId
        } else if is("connectionmoduleid", MODULE_ID_HEADER) {
            SystemName::Header(MODULE_ID_HEADER)
        } else if is("enqueuedtime", "iothub-enqueuedtime") {
            SystemName::EnqueuedTime
        } else if starts_with_ignore_case(name, "iothub-") || starts_with_ignore_case(name, "dt-") {
            SystemName::Prefixed
        } else {
            SystemName::None
        }
    }
}

/// A record read as a message. The body is decoded at most once, on first use.
#[derive(Debug)]
pub struct MessageView<'a> {
    record: &'a StoredRecord,
    body: OnceLock<Option<Value>>,
    /// The top-level body members conditions read (sorted), when the routing processor knows
    /// them: then only those are parsed ([`member`](Self::member)).
    members: &'a [String],
    /// Their values (`None`: absent), once parsed; `None` when the body is not UTF-8 (read
    /// through [`body`](Self::body) then).
    projected: OnceLock<Option<MemberSlots<'a>>>,
}

/// The values of the members a projection reads, in place for as many as conditions commonly
/// read: one fewer allocation per message.
type MemberSlots<'a> = SmallVec<[Option<Field<'a>>; 8]>;

/// A top-level member of the body.
pub(crate) enum Member<'v, 'a> {
    /// From the parsed body.
    Value(&'v Value),
    /// From the projection: scalars as they are in the payload.
    Field(&'v Field<'a>),
}

impl<'a> MessageView<'a> {
    /// The message `record` holds.
    pub fn new(record: &'a StoredRecord) -> Self {
        Self::projected(record, &[])
    }

    /// The message `record` holds, of whose body conditions read only the top-level members
    /// `members` (sorted, no duplicates): a scan of the body fills those alone, skipping the
    /// rest, with strings borrowed from the payload, instead of building the whole body as a
    /// JSON value. This is the routing processor's view; conditions behave the same either way.
    pub(crate) fn projected(record: &'a StoredRecord, members: &'a [String]) -> Self {
        MessageView {
            record,
            body: OnceLock::new(),
            members,
            projected: OnceLock::new(),
        }
    }

    /// Top-level body member `name`, when the body may be queried, parses and has it.
    pub(crate) fn member(&self, name: &str) -> Option<Member<'_, 'a>> {
        if let Some(i) = scan::find(self.members, name)
            && let Some(slots) = self.projected.get_or_init(|| self.project()).as_ref()
        {
            return slots.get(i)?.as_ref().map(Member::Field);
        }
        self.body()?.as_object()?.get(name).map(Member::Value)
    }

    /// [`member`](Self::member) `name`, which is `members[slot]` of this view's projection (the
    /// routing plan worked the slot out): no name is compared.
    pub(crate) fn member_at(&self, slot: usize, name: &str) -> Option<Member<'_, 'a>> {
        debug_assert_eq!(self.members.get(slot).map(String::as_str), Some(name));
        if let Some(slots) = self.projected.get_or_init(|| self.project()).as_ref() {
            return slots.get(slot)?.as_ref().map(Member::Field);
        }
        self.body()?.as_object()?.get(name).map(Member::Value)
    }

    /// The projection's slots; `None` when the body is not UTF-8 text (its text is decoded into a
    /// new string, which slots borrowing from it cannot outlive).
    fn project(&self) -> Option<MemberSlots<'a>> {
        let mut slots = MemberSlots::from_elem(None, self.members.len());
        let Some(encoding) = self.encoding() else {
            // Not queryable: every member is undefined.
            return Some(slots);
        };
        let text = match decode(&self.record.record.payload, encoding) {
            Some(Cow::Borrowed(text)) => text,
            Some(Cow::Owned(_)) => return None,
            None => return Some(slots),
        };
        if scan::flat_object(text, self.members, &mut slots).is_none() {
            // Not a body the fast scan reads (it may have filled some slots): serde_json's.
            slots.fill(None);
            if !scan_members(text, self.members, &mut slots) {
                // A body that does not parse has no members, as when parsed whole.
                slots.fill(None);
            }
        }
        Some(slots)
    }

    /// The record.
    pub fn record(&self) -> &'a StoredRecord {
        self.record
    }

    fn header(&self, name: &str) -> Option<&'a str> {
        self.record.record.headers.get(name)
    }

    /// The sending device: the gateway's stamp, else the record key.
    pub fn device_id(&self) -> &'a str {
        self.header(DEVICE_ID_HEADER)
            .unwrap_or(self.record.record.key.as_str())
    }

    /// The sending module, if a module sent it.
    pub fn module_id(&self) -> Option<&'a str> {
        self.header(MODULE_ID_HEADER)
    }

    /// Application property `name`: exact name first, then ignoring ASCII case (IoT Hub's
    /// message properties are not case-sensitive). System headers are never application
    /// properties.
    pub fn app_property(&self, name: &str) -> Option<&'a str> {
        self.app_property_named(name, is_reserved(name))
    }

    /// [`app_property`](Self::app_property) with `reserved` = [`is_reserved`]`(name)` worked
    /// out beforehand (a condition's names are known when it is parsed).
    pub(crate) fn app_property_named(&self, name: &str, reserved: bool) -> Option<&'a str> {
        if reserved {
            // Every header matching a reserved name, in any case, is reserved too.
            return None;
        }
        let headers = &self.record.record.headers;
        headers.get(name).or_else(|| {
            headers
                .iter()
                .find(|(n, _)| n.eq_ignore_ascii_case(name) && !is_reserved(n))
                .map(|(_, v)| v)
        })
    }

    /// System property `name` as the query language writes it after `$` (any ASCII case):
    /// `contentType`, `contentEncoding`, `messageId`, `correlationId`, `userId`,
    /// `connectionDeviceId`, `connectionModuleId`, `enqueuedTime` (RFC 3339, the log's time), or
    /// a header name IoT Hub uses (`iothub-enqueuedtime`, `dt-dataschema`, `dt-subject`, …).
    /// `None` when the name is no system property or the message does not have it.
    pub fn system_property(&self, name: &str) -> Option<Value> {
        self.system_text(name).map(Value::from)
    }

    /// [`system_property`](Self::system_property) as text, borrowed from the record except for
    /// `enqueuedTime` (conditions read it for every message: no copy, no lower-cased name).
    pub(crate) fn system_text(&self, name: &str) -> Option<Cow<'a, str>> {
        self.system_text_of(SystemName::resolve(name), name)
    }

    /// [`system_text`](Self::system_text) of `name`, already resolved to `property`.
    pub(crate) fn system_text_of(&self, property: SystemName, name: &str) -> Option<Cow<'a, str>> {
        match property {
            SystemName::Header(header) => self.header(header).map(Cow::Borrowed),
            SystemName::DeviceId => Some(Cow::Borrowed(self.device_id())),
            SystemName::EnqueuedTime => {
                let micros =
                    i64::try_from(self.record.enqueued_time.as_unix_micros()).unwrap_or(i64::MAX);
                Some(Cow::Owned(format_rfc3339(micros)))
            }
            SystemName::Prefixed => self
                .record
                .record
                .headers
                .iter()
                .find(|(n, _)| n.eq_ignore_ascii_case(name))
                .map(|(_, v)| Cow::Borrowed(v)),
            SystemName::None => None,
        }
    }

    /// Whether the body may be queried: content type `application/json` and content encoding
    /// UTF-8, UTF-16 or UTF-32, as IoT Hub requires.
    pub fn body_is_queryable(&self) -> bool {
        self.encoding().is_some()
    }

    fn encoding(&self) -> Option<Encoding> {
        let content_type = self.header(CONTENT_TYPE)?;
        // What devices send nearly always, exactly: read first, for every message routed.
        if content_type == "application/json" && self.header(CONTENT_ENCODING) == Some("utf-8") {
            return Some(Encoding::Utf8);
        }
        let media = content_type.split(';').next()?.trim();
        if !media.eq_ignore_ascii_case("application/json") {
            return None;
        }
        let encoding = self.header(CONTENT_ENCODING)?.trim();
        [
            ("utf-8", Encoding::Utf8),
            ("utf-16", Encoding::Utf16),
            ("utf-32", Encoding::Utf32),
        ]
        .into_iter()
        .find(|(name, _)| encoding.eq_ignore_ascii_case(name))
        .map(|(_, e)| e)
    }

    /// The body as JSON, when it may be queried and parses.
    pub fn body(&self) -> Option<&Value> {
        self.body
            .get_or_init(|| {
                let text = decode(&self.record.record.payload, self.encoding()?)?;
                serde_json::from_str(&text).ok()
            })
            .as_ref()
    }
}

#[derive(Clone, Copy, Debug)]
enum Encoding {
    Utf8,
    Utf16,
    Utf32,
}

fn starts_with_ignore_case(text: &str, prefix: &str) -> bool {
    text.get(..prefix.len())
        .is_some_and(|p| p.eq_ignore_ascii_case(prefix))
}

/// The body's text: UTF-8 as it is in the record (no copy). UTF-16 and UTF-32 are
/// little-endian unless a byte order mark says otherwise (as .NET, whose names these are, reads
/// them).
fn decode(bytes: &[u8], encoding: Encoding) -> Option<Cow<'_, str>> {
    match encoding {
        Encoding::Utf8 => {
            let bytes = bytes.strip_prefix(&[0xEF, 0xBB, 0xBF]).unwrap_or(bytes);
            std::str::from_utf8(bytes).ok().map(Cow::Borrowed)
        }
        Encoding::Utf16 => {
            let (big, bytes) = match bytes {
                [0xFE, 0xFF, rest @ ..] => (true, rest),
                [0xFF, 0xFE, rest @ ..] => (false, rest),
                _ => (false, bytes),
            };
            if bytes.len() % 2 != 0 {
                return None;
            }
            let units = bytes.chunks_exact(2).map(|c| {
                let pair = [c[0], c[1]];
                if big {
                    u16::from_be_bytes(pair)
                } else {
                    u16::from_le_bytes(pair)
                }
            });
            char::decode_utf16(units)
                .collect::<Result<String, _>>()
                .ok()
                .map(Cow::Owned)
        }
        Encoding::Utf32 => {
            let (big, bytes) = match bytes {
                [0x00, 0x00, 0xFE, 0xFF, rest @ ..] => (true, rest),
                [0xFF, 0xFE, 0x00, 0x00, rest @ ..] => (false, rest),
                _ => (false, bytes),
            };
            if bytes.len() % 4 != 0 {
                return None;
            }
            bytes
                .chunks_exact(4)
                .map(|c| {
                    let quad = [c[0], c[1], c[2], c[3]];
                    char::from_u32(if big {
                        u32::from_be_bytes(quad)
                    } else {
                        u32::from_le_bytes(quad)
                    })
                })
                .collect::<Option<String>>()
                .map(Cow::Owned)
        }
    }
}

/// Fills `slots` with the top-level members `names` (sorted) of `text` with serde_json, each
/// value read as a parse into a `Value` reads it; whether the whole text parsed.
pub(crate) fn scan_members<'a>(
    text: &'a str,
    names: &'a [String],
    slots: &mut [Option<Field<'a>>],
) -> bool {
    let mut de = serde_json::Deserializer::from_str(text);
    Slots {
        names,
        values: slots,
    }
    .deserialize(&mut de)
    .is_ok()
        && de.end().is_ok()
}

/// A member name, borrowed from the payload unless it has escapes.
struct Name<'a>(Cow<'a, str>);

impl<'de> serde::Deserialize<'de> for Name<'de> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        match <Field<'de> as serde::Deserialize<'de>>::deserialize(d)? {
            Field::Str(s) => Ok(Name(s)),
            _ => Err(serde::de::Error::custom("a member name must be a string")),
        }
    }
}

/// Fills the slots of the named top-level members of a body; anything but an object has none.
struct Slots<'s, 'a> {
    names: &'a [String],
    values: &'s mut [Option<Field<'a>>],
}

impl<'de: 'a, 'a> DeserializeSeed<'de> for Slots<'_, 'a> {
    type Value = ();

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de: 'a, 'a> Visitor<'de> for Slots<'_, 'a> {
    type Value = ();

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("a JSON value")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        while let Some(key) = map.next_key::<Name<'de>>()? {
            match scan::find(self.names, key.0.as_ref()) {
                // A repeated member: the last one counts, as in a parsed `Value`.
                Some(i) => self.values[i] = Some(map.next_value::<Field<'de>>()?),
                None => {
                    map.next_value::<Skip>()?;
                }
            }
        }
        Ok(())
    }

    fn visit_bool<E>(self, _: bool) -> Result<(), E> {
        Ok(())
    }
    fn visit_i64<E>(self, _: i64) -> Result<(), E> {
        Ok(())
    }
    fn visit_u64<E>(self, _: u64) -> Result<(), E> {
        Ok(())
    }
    fn visit_f64<E>(self, _: f64) -> Result<(), E> {
        Ok(())
    }
    fn visit_str<E>(self, _: &str) -> Result<(), E> {
        Ok(())
    }
    fn visit_unit<E>(self) -> Result<(), E> {
        Ok(())
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        while seq.next_element::<Skip>()?.is_some() {}
        Ok(())
    }
}

/// A value read and dropped. Unlike `IgnoredAny` (which only scans: `1e400` passes), it is read
/// as a parse into a `Value` reads it, so a body the full parse refuses is refused here too;
/// it keeps nothing.
struct Skip;

impl<'de> serde::Deserialize<'de> for Skip {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(SkipVisitor)
    }
}

struct SkipVisitor;

impl<'de> Visitor<'de> for SkipVisitor {
    type Value = Skip;

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("a JSON value")
    }
    fn visit_bool<E>(self, _: bool) -> Result<Skip, E> {
        Ok(Skip)
    }
    fn visit_i64<E>(self, _: i64) -> Result<Skip, E> {
        Ok(Skip)
    }
    fn visit_u64<E>(self, _: u64) -> Result<Skip, E> {
        Ok(Skip)
    }
    fn visit_f64<E>(self, _: f64) -> Result<Skip, E> {
        Ok(Skip)
    }
    fn visit_str<E>(self, _: &str) -> Result<Skip, E> {
        Ok(Skip)
    }
    fn visit_unit<E>(self) -> Result<Skip, E> {
        Ok(Skip)
    }
    fn visit_none<E>(self) -> Result<Skip, E> {
        Ok(Skip)
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Skip, A::Error> {
        while map.next_entry::<Skip, Skip>()?.is_some() {}
        Ok(Skip)
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Skip, A::Error> {
        while seq.next_element::<Skip>()?.is_some() {}
        Ok(Skip)
    }
}
