//! Messages: device-to-cloud telemetry, cloud-to-device (C2D) messages, and delivery feedback.

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use bytes::Bytes;
use iot_core::{DeviceId, Timestamp};
use serde::{Deserialize, Serialize};

use crate::error::Error;
use crate::inbox::{InboxMessage, Locked};

/// Header names the gateway writes on telemetry records (besides the well-known ones of
/// [`iot_core::headers`]: `message-id`, `correlation-id`, `content-type`, `content-encoding`).
///
/// Where IoT Hub has a name for the same thing, the header has the name IoT Hub's Event
/// Hubs-compatible endpoint shows, so that code written against IoT Hub's events reads ours.
pub mod header {
    pub use iot_core::headers::{CONTENT_ENCODING, CONTENT_TYPE, CORRELATION_ID, MESSAGE_ID};
    /// When the message stops being meaningful, Unix milliseconds (`$.exp` in MQTT).
    pub const EXPIRY_TIME: &str = "expiry-time";
    /// Who the sender says originated the message (`$.uid` in MQTT).
    pub const USER_ID: &str = "user-id";
    /// The interface the message belongs to (`$.ifid` in MQTT), e.g. Defender's security
    /// messages.
    pub const INTERFACE_ID: &str = "iothub-interface-id";
    /// The output a module sent the message on (`$.on` in MQTT).
    pub const OUTPUT_NAME: &str = "iothub-outputname";
    /// The IoT Plug and Play component that sent the message (`$.sub` in MQTT).
    pub const COMPONENT: &str = "dt-subject";
    /// The IoT Plug and Play model id the device announced when it connected (`model-id` in
    /// the MQTT username); stamped by the gateway.
    pub const MODEL_ID: &str = "dt-dataschema";
    /// The kind of a message the gateway sent on the device's behalf: [`MESSAGE_TYPE_WILL`] for a will.
    pub const MESSAGE_TYPE: &str = "iothub-MessageType";
    /// The [`MESSAGE_TYPE`] of a message the endpoint sent as the device's last will.
    pub const MESSAGE_TYPE_WILL: &str = "Will";
    /// `"true"` on a message the device published with the MQTT retain flag (nothing is
    /// retained; the flag is passed on, as IoT Hub does).
    pub const RETAIN: &str = "mqtt-retain";
    /// The device that sent the message (also the record key); stamped by the gateway.
    pub const DEVICE_ID: &str = "iothub-connection-device-id";
    /// The module that sent the message, on telemetry of a module's session (IoT Hub's
    /// `iothub-connection-module-id`; absent on a device's own telemetry).
    pub const MODULE_ID: &str = "iothub-connection-module-id";
    /// How the sending device authenticated, a JSON object as IoT Hub writes it
    /// (`{"scope":"device","type":"sas","issuer":"iothub","acceptingIpFilterRule":null}`;
    /// [`auth_method`] gives it for each kind of credential); stamped by the gateway.
    pub const AUTH_METHOD: &str = "iothub-connection-auth-method";
    /// The [`AUTH_METHOD`] value of a session whose device presented `credential`: the JSON
    /// object IoT Hub writes, with IoT Hub's `type` where it has the method (`sas`, `symkey`,
    /// `x509Certificate` for a certificate whose thumbprint the identity store holds) and
    /// `passphrase` for ours. Constant text: nothing in it comes from the device.
    pub fn auth_method(credential: &iot_identity::Presented<'_>) -> &'static str {
        use iot_identity::Presented;
        match credential {
            Presented::SasToken(_) => {
                r#"{"scope":"device","type":"sas","issuer":"iothub","acceptingIpFilterRule":null}"#
            }
            Presented::SymmetricKey(_) => {
                r#"{"scope":"device","type":"symkey","issuer":"iothub","acceptingIpFilterRule":null}"#
            }
            Presented::Thumbprint(_) | Presented::CertificateChain(_) => {
                r#"{"scope":"device","type":"x509Certificate","issuer":"iothub","acceptingIpFilterRule":null}"#
            }
            Presented::Passphrase(_) => {
                r#"{"scope":"device","type":"passphrase","issuer":"iothub","acceptingIpFilterRule":null}"#
            }
        }
    }

    /// The generation id of the sending device's identity, as
    /// [`GenerationId`](iot_identity::GenerationId) prints it; stamped by the gateway.
    pub const AUTH_GENERATION_ID: &str = "iothub-connection-auth-generation-id";
    /// When the gateway accepted the message, Unix milliseconds; stamped by the gateway just
    /// before the append (the log's own enqueued time is set during it, a moment later).
    pub const ENQUEUED_TIME: &str = "iothub-enqueuedtime";
    /// Where the message came from: [`MESSAGE_SOURCE_TELEMETRY`] for device telemetry; stamped by the gateway.
    pub const MESSAGE_SOURCE: &str = "iothub-message-source";
    /// The [`MESSAGE_SOURCE`] of device telemetry.
    pub const MESSAGE_SOURCE_TELEMETRY: &str = "Telemetry";
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
    /// Names starting with this are IoT Hub's system properties; custom properties may not use
    /// it, so a device cannot pass off its own values as the gateway's stamps.
    pub const IOTHUB_PREFIX: &str = "iothub-";
}

/// The system properties a device may set on a message (MQTT `$.mid`, `$.cid`, `$.ct`, `$.ce`,
/// `$.exp`, `$.uid`, `$.ifid`, `$.on`, `$.sub`).
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
    /// Who the sender says originated the message ([`header::USER_ID`]).
    pub user_id: Option<String>,
    /// The interface the message belongs to ([`header::INTERFACE_ID`]).
    pub interface_id: Option<String>,
    /// The output a module sent it on ([`header::OUTPUT_NAME`]).
    pub output_name: Option<String>,
    /// The IoT Plug and Play component that sent it ([`header::COMPONENT`]).
    pub component: Option<String>,
}

/// A device-to-cloud message as an endpoint hands it to [`DeviceSession::send_telemetry`](crate::DeviceSession::send_telemetry).
///
/// It becomes one log record keyed by the device id: system properties become the well-known
/// headers, custom properties follow in their order, a will message carries
/// [`header::MESSAGE_TYPE`]`: "Will"`, and the gateway stamps who sent it and when
/// ([`header::DEVICE_ID`], [`header::AUTH_METHOD`], [`header::AUTH_GENERATION_ID`],
/// [`header::ENQUEUED_TIME`], [`header::MESSAGE_SOURCE`], and [`header::MODEL_ID`] when the
/// session announced a model).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Telemetry {
    /// The opaque body.
    pub payload: Bytes,
    /// System properties.
    pub system: SystemProperties,
    /// Custom (application) properties, in order. Names may not start with `$` or `iothub-`
    /// nor repeat a header name the gateway writes itself.
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
    /// The name IoT Hub gives it (`iothub-ack`): `"none"`, `"positive"`, `"negative"` or
    /// `"full"`.
    pub fn as_str(self) -> &'static str {
        match self {
            AckRequest::None => "none",
            AckRequest::Positive => "positive",
            AckRequest::Negative => "negative",
            AckRequest::Full => "full",
        }
    }

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
/// [`reject`](crate::DeviceSession::reject). A token stays valid until the message is settled
/// or delivered again: once its lock lapses the next lookup may lock the message anew (with a new
/// token), and from then on the old one is [`LockLost`](crate::Error::LockLost). A lapsed lock
/// that nobody took over still settles (the device was only slow; the conformance suite counts
/// on it, whatever the lock duration).
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
    /// Which settlements produce feedback, as the sender asked.
    pub ack: AckRequest,
    /// How many times it has been delivered, this one included.
    pub delivery_count: u32,
    /// When the lock of this delivery lapses (the message is then delivered again).
    pub locked_until: Timestamp,
}

impl C2dDelivery {
    /// The delivery of `message` under `lock_token`, locked until `locked_until`: what a gateway
    /// hands out as [`SessionEvent::C2d`](crate::SessionEvent::C2d). The delivery count is the
    /// token's ([`LockToken::delivery`]), so the two cannot disagree.
    pub fn new(lock_token: LockToken, message: InboxMessage, locked_until: Timestamp) -> Self {
        C2dDelivery {
            lock_token,
            message_id: message.message_id,
            correlation_id: message.correlation_id,
            content_type: message.content_type,
            content_encoding: message.content_encoding,
            properties: message.properties,
            payload: message.payload,
            enqueued_at: message.enqueued_at,
            expires_at: message.expires_at,
            ack: message.ack,
            delivery_count: lock_token.delivery,
            locked_until,
        }
    }
}

/// What an [`InboxStore::lock_next`](crate::InboxStore::lock_next) locked, handed to the device.
impl From<Locked> for C2dDelivery {
    fn from(locked: Locked) -> Self {
        C2dDelivery::new(locked.token, locked.message, locked.locked_until)
    }
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

impl Feedback {
    /// The feedback record of message `message_id` of `device_id`, which ended with `status` at
    /// `at` after `delivery_count` deliveries; no correlation id, offset 0 (a gateway sets the
    /// stream position it read the record from with [`with_offset`](Self::with_offset)).
    pub fn new(
        device_id: DeviceId,
        message_id: impl Into<String>,
        status: FeedbackStatus,
        at: Timestamp,
        delivery_count: u32,
    ) -> Self {
        Feedback {
            offset: 0,
            device_id,
            message_id: message_id.into(),
            correlation_id: None,
            status,
            at,
            delivery_count,
        }
    }

    /// Sets [`correlation_id`](Self::correlation_id).
    pub fn with_correlation_id(mut self, correlation_id: Option<String>) -> Self {
        self.correlation_id = correlation_id;
        self
    }

    /// Sets [`offset`](Self::offset).
    pub fn with_offset(mut self, offset: u64) -> Self {
        self.offset = offset;
        self
    }
}

// Other crates build these values only through their constructors (`non_exhaustive`): each
// field must come from where the constructor says.
#[cfg(test)]
mod constructor_tests {
    use super::*;

    #[test]
    fn a_delivery_takes_the_message_and_the_tokens_count() {
        let now = Timestamp::from_unix_millis(1_000);
        let message = InboxMessage::new("m1", "body", now, Duration::from_secs(60))
            .with_correlation_id("c1")
            .with_content(Some("text/plain".into()), Some("utf-8".into()))
            .with_properties(vec![("k".into(), "v".into())])
            .with_ack(AckRequest::Full);
        let token = LockToken {
            sequence: 7,
            delivery: 3,
        };
        let until = Timestamp::from_unix_millis(2_000);
        let d = C2dDelivery::from(Locked::new(token, message, until));
        let expected = C2dDelivery {
            lock_token: token,
            message_id: "m1".into(),
            correlation_id: Some("c1".into()),
            content_type: Some("text/plain".into()),
            content_encoding: Some("utf-8".into()),
            properties: vec![("k".into(), "v".into())],
            payload: Bytes::from_static(b"body"),
            enqueued_at: now,
            expires_at: Timestamp::from_unix_millis(61_000),
            ack: AckRequest::Full,
            delivery_count: 3,
            locked_until: until,
        };
        assert_eq!(d, expected);
    }

    #[test]
    fn feedback_setters_set_their_own_field() {
        let device: DeviceId = "dev-1".parse().expect("id");
        let at = Timestamp::from_unix_millis(5);
        let built = Feedback::new(device.clone(), "m1", FeedbackStatus::Rejected, at, 2)
            .with_correlation_id(Some("c1".into()))
            .with_offset(9);
        let expected = Feedback {
            offset: 9,
            device_id: device,
            message_id: "m1".into(),
            correlation_id: Some("c1".into()),
            status: FeedbackStatus::Rejected,
            at,
            delivery_count: 2,
        };
        assert_eq!(built, expected);
    }
}
