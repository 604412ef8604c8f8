//! Messages: device-to-cloud telemetry, cloud-to-device (C2D) messages, and delivery feedback.

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use bytes::Bytes;
use iot_core::{DeviceId, Timestamp};
use serde::{Deserialize, Serialize};

use crate::error::Error;

/// Header names the gateway writes on telemetry records (besides the well-known ones of
/// [`iot_core::headers`]: `message-id`, `correlation-id`, `content-type`, `content-encoding`).
pub mod header {
    pub use iot_core::headers::{CONTENT_ENCODING, CONTENT_TYPE, CORRELATION_ID, MESSAGE_ID};
    /// When the message stops being meaningful, Unix milliseconds (`$.exp` in MQTT).
    pub const EXPIRY_TIME: &str = "expiry-time";
    /// `"true"` on a message the endpoint sent on the device's behalf as its last will.
    pub const WILL: &str = "$will";
    /// The device that sent the message (also the record key).
    pub const DEVICE_ID: &str = "$device-id";
    /// Connection events: `"connected"` or `"disconnected"`.
    pub const EVENT: &str = "$event";
    /// Connection events: why a session ended (a [`CloseReason`](crate::CloseReason) name).
    pub const REASON: &str = "$reason";
    /// Twin change records: `"desired"` or `"reported"`.
    pub const SECTION: &str = "$section";
    /// Twin change records: the section's version after the change.
    pub const VERSION: &str = iot_core::headers::VERSION;
    /// Names starting with this are reserved for the gateway; custom properties may not use it.
    pub const RESERVED_PREFIX: &str = "$";
}

/// The system properties a message may carry (MQTT `$.mid`, `$.cid`, `$.ct`, `$.ce`, `$.exp`).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SystemProperties {
    /// The sender's id for the message.
    pub message_id: Option<String>,
    /// The id of the message this one relates to.
    pub correlation_id: Option<String>,
    /// The payload's media type.
    pub content_type: Option<String>,
    /// The payload's encoding.
    pub content_encoding: Option<String>,
    /// When the message stops being meaningful.
    pub expiry: Option<Timestamp>,
}

/// A device-to-cloud message as an endpoint hands it to [`DeviceSession::send_telemetry`](crate::DeviceSession::send_telemetry).
///
/// It becomes one log record keyed by the device id: system properties become the well-known
/// headers, custom properties follow in their order, and a will message carries
/// [`header::WILL`]`: "true"`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Telemetry {
    /// The opaque body.
    pub payload: Bytes,
    /// System properties.
    pub system: SystemProperties,
    /// Custom (application) properties, in order. Names may not start with `$` nor repeat a
    /// system property's header name.
    pub properties: Vec<(String, String)>,
    /// When the device says the event happened.
    pub device_time: Option<Timestamp>,
    /// Whether the endpoint sends this as the device's last will (the device vanished).
    pub will: bool,
}

impl Telemetry {
    /// A message with `payload` and nothing else.
    pub fn new(payload: impl Into<Bytes>) -> Self {
        Telemetry {
            payload: payload.into(),
            ..Default::default()
        }
    }

    /// Adds a custom property.
    pub fn with_property(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        self.properties.push((name.into(), value.into()));
        self
    }
}

/// Which settlements of a C2D message produce a feedback record.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub enum AckRequest {
    /// No feedback (the default).
    #[default]
    None,
    /// Feedback when the device completes the message.
    Positive,
    /// Feedback when the message expires, is rejected or is dead-lettered.
    Negative,
    /// Both.
    Full,
}

impl AckRequest {
    /// Whether a settlement with `status` produces feedback.
    pub fn wants(self, status: FeedbackStatus) -> bool {
        match self {
            AckRequest::None => false,
            AckRequest::Full => true,
            AckRequest::Positive => status == FeedbackStatus::Success,
            AckRequest::Negative => status != FeedbackStatus::Success,
        }
    }
}

/// A cloud-to-device message as the back end sends it ([`Gateway::send_c2d`](crate::Gateway::send_c2d)).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct C2dMessage {
    /// The opaque body.
    pub payload: Bytes,
    /// The message id; the gateway makes one up when `None`.
    pub message_id: Option<String>,
    /// Correlation id.
    pub correlation_id: Option<String>,
    /// Media type of the payload.
    pub content_type: Option<String>,
    /// Encoding of the payload.
    pub content_encoding: Option<String>,
    /// Time to live; the gateway's default (1 hour) when `None`, at most its maximum (2 days).
    pub ttl: Option<Duration>,
    /// Which settlements produce feedback.
    pub ack: AckRequest,
    /// Custom properties, in order (same rules as telemetry).
    pub properties: Vec<(String, String)>,
}

impl C2dMessage {
    /// A message with `payload` and defaults for everything else.
    pub fn new(payload: impl Into<Bytes>) -> Self {
        C2dMessage {
            payload: payload.into(),
            ..Default::default()
        }
    }
}

/// What [`Gateway::send_c2d`](crate::Gateway::send_c2d) answers: the message is queued.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct C2dReceipt {
    /// The message id (the caller's, or the one made up).
    pub message_id: String,
    /// When it expires.
    pub expires_at: Timestamp,
}

/// Names one delivery of one C2D message: settle it with
/// [`complete`](crate::DeviceSession::complete), [`abandon`](crate::DeviceSession::abandon) or
/// [`reject`](crate::DeviceSession::reject). A token stops being valid when the message is
/// settled or its lock expires (a redelivery gets a new token).
///
/// `Display`/`FromStr` round-trip it (`"{sequence}.{delivery}"`) for protocols that carry tokens
/// as text.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct LockToken {
    /// The message's sequence number in the device's inbox.
    pub sequence: u64,
    /// Which delivery of it (1 for the first).
    pub delivery: u32,
}

impl fmt::Display for LockToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}", self.sequence, self.delivery)
    }
}

impl fmt::Debug for LockToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "LockToken({self})")
    }
}

impl FromStr for LockToken {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self, Error> {
        let bad = || Error::invalid("a lock token is \"{sequence}.{delivery}\"");
        let (seq, delivery) = s.split_once('.').ok_or_else(bad)?;
        Ok(LockToken {
            sequence: seq.parse().map_err(|_| bad())?,
            delivery: delivery.parse().map_err(|_| bad())?,
        })
    }
}

/// A C2D message handed to a device session, locked until it is settled or the lock expires.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct C2dDelivery {
    /// Settles this delivery.
    pub lock_token: LockToken,
    /// The message id.
    pub message_id: String,
    /// Correlation id.
    pub correlation_id: Option<String>,
    /// Media type.
    pub content_type: Option<String>,
    /// Encoding.
    pub content_encoding: Option<String>,
    /// Custom properties, in order.
    pub properties: Vec<(String, String)>,
    /// The body.
    pub payload: Bytes,
    /// When it was queued.
    pub enqueued_at: Timestamp,
    /// When it expires.
    pub expires_at: Timestamp,
    /// How many times it has been delivered, this one included.
    pub delivery_count: u32,
    /// When the lock of this delivery lapses (the message is then delivered again).
    pub locked_until: Timestamp,
}

/// How a C2D message ended, as reported in [`Feedback`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[non_exhaustive]
pub enum FeedbackStatus {
    /// The device completed it.
    Success,
    /// It expired before the device completed it.
    Expired,
    /// It was delivered the maximum number of times without being completed (dead-lettered).
    DeliveryCountExceeded,
    /// The device rejected it (dead-lettered).
    Rejected,
}

impl FeedbackStatus {
    /// A stable name (`"success"`, `"expired"`, `"delivery-count-exceeded"`, `"rejected"`).
    pub fn as_str(self) -> &'static str {
        match self {
            FeedbackStatus::Success => "success",
            FeedbackStatus::Expired => "expired",
            FeedbackStatus::DeliveryCountExceeded => "delivery-count-exceeded",
            FeedbackStatus::Rejected => "rejected",
        }
    }
}

/// One delivery-feedback record, read with [`Gateway::read_feedback`](crate::Gateway::read_feedback).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct Feedback {
    /// The feedback stream position of this record; read on from `offset + 1`.
    #[serde(skip)]
    pub offset: u64,
    /// The device the message was for.
    pub device_id: DeviceId,
    /// The message id.
    pub message_id: String,
    /// Its correlation id.
    pub correlation_id: Option<String>,
    /// How it ended.
    pub status: FeedbackStatus,
    /// When it ended.
    pub at: Timestamp,
    /// How many times it had been delivered.
    pub delivery_count: u32,
}
