//! A log record seen as an IoT Hub message: system properties, application properties and a
//! JSON body, as the routing query language names them.

use std::sync::OnceLock;

use iot_core::StoredRecord;
use iot_core::headers::{CONTENT_ENCODING, CONTENT_TYPE, CORRELATION_ID, MESSAGE_ID};
use iot_core::time::format_rfc3339;
use serde_json::Value;

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

/// A record read as a message. The body is decoded at most once, on first use.
#[derive(Debug)]
pub struct MessageView<'a> {
    record: &'a StoredRecord,
    body: OnceLock<Option<Value>>,
}

impl<'a> MessageView<'a> {
    /// The message `record` holds.
    pub fn new(record: &'a StoredRecord) -> Self {
        MessageView {
            record,
            body: OnceLock::new(),
        }
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
        let is_system = |n: &str| {
            SYSTEM_HEADERS.iter().any(|s| s.eq_ignore_ascii_case(n))
                || n.starts_with('$')
                || n.get(..7)
                    .is_some_and(|p| p.eq_ignore_ascii_case("iothub-"))
                || n.get(..3).is_some_and(|p| p.eq_ignore_ascii_case("dt-"))
        };
        let headers = &self.record.record.headers;
        headers.get(name).filter(|_| !is_system(name)).or_else(|| {
            headers
                .iter()
                .find(|(n, _)| n.eq_ignore_ascii_case(name) && !is_system(n))
                .map(|(_, v)| v)
        })
    }

    /// System property `name` as the query language writes it after `$` (any ASCII case):
    /// `contentType`, `contentEncoding`, `messageId`, `correlationId`, `userId`,
    /// `connectionDeviceId`, `connectionModuleId`, `enqueuedTime` (RFC 3339, the log's time), or
    /// a header name IoT Hub uses (`iothub-enqueuedtime`, `dt-dataschema`, `dt-subject`, …).
    /// `None` when the name is no system property or the message does not have it.
    pub fn system_property(&self, name: &str) -> Option<Value> {
        let lower = name.to_ascii_lowercase();
        let header = match lower.as_str() {
            "contenttype" | "content-type" => CONTENT_TYPE,
            "contentencoding" | "content-encoding" => CONTENT_ENCODING,
            "messageid" | "message-id" => MESSAGE_ID,
            "correlationid" | "correlation-id" => CORRELATION_ID,
            "userid" | "user-id" => "user-id",
            "connectiondeviceid" | "iothub-connection-device-id" => {
                return Some(Value::from(self.device_id()));
            }
            "connectionmoduleid" | "iothub-connection-module-id" => MODULE_ID_HEADER,
            "enqueuedtime" | "iothub-enqueuedtime" => {
                let micros =
                    i64::try_from(self.record.enqueued_time.as_unix_micros()).unwrap_or(i64::MAX);
                return Some(Value::from(format_rfc3339(micros)));
            }
            other if other.starts_with("iothub-") || other.starts_with("dt-") => {
                return self
                    .record
                    .record
                    .headers
                    .iter()
                    .find(|(n, _)| n.eq_ignore_ascii_case(other))
                    .map(|(_, v)| Value::from(v));
            }
            _ => return None,
        };
        self.header(header).map(Value::from)
    }

    /// Whether the body may be queried: content type `application/json` and content encoding
    /// UTF-8, UTF-16 or UTF-32, as IoT Hub requires.
    pub fn body_is_queryable(&self) -> bool {
        self.encoding().is_some()
    }

    fn encoding(&self) -> Option<Encoding> {
        let media = self.header(CONTENT_TYPE)?.split(';').next()?.trim();
        if !media.eq_ignore_ascii_case("application/json") {
            return None;
        }
        let encoding = self.header(CONTENT_ENCODING)?.trim().to_ascii_lowercase();
        match encoding.as_str() {
            "utf-8" => Some(Encoding::Utf8),
            "utf-16" => Some(Encoding::Utf16),
            "utf-32" => Some(Encoding::Utf32),
            _ => None,
        }
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

/// The body's text. UTF-16 and UTF-32 are little-endian unless a byte order mark says
/// otherwise (as .NET, whose names these are, reads them).
fn decode(bytes: &[u8], encoding: Encoding) -> Option<String> {
    match encoding {
        Encoding::Utf8 => {
            let bytes = bytes.strip_prefix(&[0xEF, 0xBB, 0xBF]).unwrap_or(bytes);
            std::str::from_utf8(bytes).ok().map(str::to_owned)
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
                .collect()
        }
    }
}
