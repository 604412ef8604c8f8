//! What the client sends and receives: telemetry, C2D messages, twins, method calls.

use bytes::Bytes;
use serde_json::Value;
use tokio::sync::{mpsc, oneshot};

use super::driver::Command;
use super::error::ClientError;

/// A telemetry message: a payload and its properties.
#[derive(Debug, Clone, Default)]
pub struct Message {
    /// The body.
    pub payload: Bytes,
    /// Application properties, in order.
    pub properties: Vec<(String, String)>,
    /// `$.mid`: lets a back end drop the duplicates that at-least-once delivery allows.
    pub message_id: Option<String>,
    /// `$.cid`.
    pub correlation_id: Option<String>,
    /// `$.ct`, e.g. `application/json`.
    pub content_type: Option<String>,
    /// `$.ce`, e.g. `utf-8`.
    pub content_encoding: Option<String>,
    /// `$.exp`: when the message stops being meaningful (sent as RFC 3339 with milliseconds).
    pub expiry: Option<iot_core::Timestamp>,
    /// `$.uid`: who the sender says originated the message.
    pub user_id: Option<String>,
    /// `$.ifid`: the interface the message belongs to.
    pub interface_id: Option<String>,
    /// `$.on`: the output a module sent it on.
    pub output_name: Option<String>,
    /// `$.sub`: the IoT Plug and Play component that sent it.
    pub component: Option<String>,
}

impl Message {
    /// A message with this payload and nothing else.
    pub fn new(payload: impl Into<Bytes>) -> Self {
        Message {
            payload: payload.into(),
            ..Message::default()
        }
    }

    /// Adds an application property.
    pub fn property(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        self.properties.push((name.into(), value.into()));
        self
    }

    /// Sets `$.mid`.
    pub fn message_id(mut self, id: impl Into<String>) -> Self {
        self.message_id = Some(id.into());
        self
    }

    /// Sets `$.ct` and `$.ce` (`application/json`, `utf-8` for JSON).
    pub fn content(mut self, content_type: impl Into<String>, encoding: impl Into<String>) -> Self {
        self.content_type = Some(content_type.into());
        self.content_encoding = Some(encoding.into());
        self
    }

    /// Sets `$.cid`.
    pub fn correlation_id(mut self, id: impl Into<String>) -> Self {
        self.correlation_id = Some(id.into());
        self
    }

    /// The property bag of the telemetry topic.
    pub(crate) fn bag(&self) -> String {
        let expiry = self.expiry.map(crate::mqtt::rfc3339::format_millis);
        let system = [
            ("$.mid", &self.message_id),
            ("$.cid", &self.correlation_id),
            ("$.ct", &self.content_type),
            ("$.ce", &self.content_encoding),
            ("$.exp", &expiry),
            ("$.uid", &self.user_id),
            ("$.ifid", &self.interface_id),
            ("$.on", &self.output_name),
            ("$.sub", &self.component),
        ];
        let pairs = system
            .iter()
            .filter_map(|(k, v)| v.as_deref().map(|v| (*k, v)))
            .chain(
                self.properties
                    .iter()
                    .map(|(k, v)| (k.as_str(), v.as_str())),
            );
        super::topics::encode_bag(pairs)
    }
}

/// A cloud-to-device message. [`complete`](Self::complete) acknowledges it (the PUBACK); dropping
/// it without completing leaves it to the hub, which delivers it again once its lock expires or
/// the device reconnects.
#[derive(Debug)]
pub struct C2dMessage {
    /// The body.
    pub payload: Bytes,
    /// Every property of the topic's bag, system ones (`$.mid`, `$.exp`, `iothub-ack`, ...)
    /// included, in order.
    pub properties: Vec<(String, String)>,
    pub(crate) ack: Option<Ack>,
    #[cfg(feature = "client-https")]
    pub(crate) https: Option<super::https::HttpsSettler>,
}

#[derive(Debug)]
pub(crate) struct Ack {
    pub(crate) epoch: u64,
    pub(crate) packet_id: std::num::NonZeroU16,
    pub(crate) commands: mpsc::UnboundedSender<Command>,
}

impl C2dMessage {
    /// The value of a property.
    pub fn property(&self, name: &str) -> Option<&str> {
        self.properties
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    /// `$.mid`.
    pub fn message_id(&self) -> Option<&str> {
        self.property("$.mid")
    }

    /// Completes the message: sends its PUBACK (on the connection it arrived on; if that one is
    /// gone the hub delivers the message again and it must be completed then). A message
    /// delivered at QoS 0 needs nothing.
    pub fn complete(mut self) -> Result<(), ClientError> {
        match self.ack.take() {
            Some(ack) => ack
                .commands
                .send(Command::PubAck {
                    epoch: ack.epoch,
                    packet_id: ack.packet_id,
                })
                .map_err(|_| ClientError::Closed),
            None => Ok(()),
        }
    }

    /// This hub's lock token of the delivery (`iothub-locktoken`), the `ETag` of the HTTPS
    /// device API's settlement calls. Azure IoT Hub does not send one over MQTT.
    pub fn lock_token(&self) -> Option<&str> {
        self.property(crate::mqtt::LOCK_TOKEN_PROPERTY)
    }

    /// Rejects the message: the hub dead-letters it and writes `rejected` feedback if the
    /// sender asked for it. Sent over the hub's HTTPS device API
    /// ([`ClientOptions::https_port`](super::ClientOptions::https_port)), then the PUBACK frees
    /// the MQTT packet id. A lock the hub no longer holds is
    /// [`ClientError::HttpsStatus`] 412.
    #[cfg(feature = "client-https")]
    pub async fn reject(self) -> Result<(), ClientError> {
        self.settle_over_https(super::https::Settle::Reject).await
    }

    /// Abandons the message: the hub makes it available again and delivers it anew (counting
    /// the delivery; dead-lettered after its maximum delivery count). Over HTTPS, as
    /// [`reject`](Self::reject).
    #[cfg(feature = "client-https")]
    pub async fn abandon(self) -> Result<(), ClientError> {
        self.settle_over_https(super::https::Settle::Abandon).await
    }

    #[cfg(feature = "client-https")]
    async fn settle_over_https(self, how: super::https::Settle) -> Result<(), ClientError> {
        let https = self.https.as_ref().ok_or(ClientError::Unsupported(
            "reject and abandon go over the HTTPS device API: set ClientOptions::https_port",
        ))?;
        let token = self.lock_token().ok_or(ClientError::Unsupported(
            "the hub sent no iothub-locktoken with this message",
        ))?;
        https.settle(token, how).await?;
        // Settled: the PUBACK only frees the packet id (the hub ignores it for a settled
        // delivery). A message that came at QoS 0 has none.
        self.complete()
    }
}

/// A device twin as the device sees it.
#[derive(Debug, Clone, PartialEq)]
pub struct Twin {
    /// Desired properties, with `$version`.
    pub desired: Value,
    /// Reported properties, with `$version`.
    pub reported: Value,
}

/// A desired-properties patch pushed by the hub (`$version` inside).
#[derive(Debug, Clone, PartialEq)]
pub struct DesiredPatch {
    /// The patch.
    pub patch: Value,
    /// Its `$version`, if the hub sent one.
    pub version: Option<u64>,
}

/// A direct-method call; [`respond`](Self::respond) answers it.
#[derive(Debug)]
pub struct MethodCall {
    /// The method's name.
    pub name: String,
    /// The payload (JSON).
    pub payload: Bytes,
    pub(crate) rid: String,
    pub(crate) commands: mpsc::UnboundedSender<Command>,
}

impl MethodCall {
    /// Answers with `status` and a JSON body. Sent only if the connection the call came on is
    /// still up; otherwise the caller has already been told the device is offline.
    pub fn respond(self, status: u16, body: &Value) -> Result<(), ClientError> {
        let payload = serde_json::to_vec(body).map_err(|e| ClientError::Protocol(e.to_string()))?;
        self.commands
            .send(Command::Publish {
                topic: format!("$iothub/methods/res/{status}/?$rid={}", self.rid),
                payload: payload.into(),
            })
            .map_err(|_| ClientError::Closed)
    }
}

/// Where a twin request's answer goes: status, the answer's bag, body.
pub(crate) type TwinReply = oneshot::Sender<(u16, String, Bytes)>;
