//! Registering through the Device Provisioning Service over MQTT before connecting.
//!
//! DPS's device protocol, as the Azure device SDKs speak it and as this project's MQTT endpoint
//! serves it (`iot-gateway/src/mqtt/dps`, docs/provisioning.md): CONNECT with client id = the
//! registration id, username `{idScope}/registrations/{registrationId}/api-version=2019-03-31…`
//! and a SAS token for `{idScope}/registrations/{registrationId}` signed with the device's key;
//! SUBSCRIBE `$dps/registrations/res/#`; PUBLISH
//! `$dps/registrations/PUT/iotdps-register/?$rid=…` with `{"registrationId", "payload"}`; on
//! `202` (`"assigning"`) poll `$dps/registrations/GET/iotdps-get-operationstatus/?$rid=…&operationId=…`
//! after the answer's `retry-after` until `200` (`"assigned"`) gives the hub and device id.
//!
//! With a group enrollment the device's key is HMAC-SHA256 of its registration id under the
//! group key ([`DpsOptions::group_key`] derives it, as DPS documents); the same key then signs
//! the hub tokens.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use bytestring::ByteString;
use iot_identity::{SymmetricKey, sas};
use rmqtt_codec::types::Publish;
use rmqtt_codec::v3::{Connect, ConnectAckReason, Packet, QoS};
use serde_json::{Value, json};

use super::error::ClientError;
use super::link::{self, Link};
use super::options::{Auth, ClientOptions, Transport};
use super::topics;

/// Azure's global DPS endpoint.
pub const GLOBAL_ENDPOINT: &str = "global.azure-devices-provisioning.net";
/// The DPS api-version the username names.
const API_VERSION: &str = "2019-03-31";
/// Lifetime of the registration token.
const TOKEN_LIFETIME: u64 = 3600;
/// Status polls before giving up on an operation that stays `assigning`.
const MAX_POLLS: u32 = 30;
/// The longest `retry-after` honoured between polls.
const MAX_RETRY_AFTER: Duration = Duration::from_secs(30);

/// Where and how a device registers: the DPS endpoint, its id scope, its registration id and
/// its key (an individual enrollment's, or derived from a group's).
#[derive(Clone)]
pub struct DpsOptions {
    pub(crate) endpoint: String,
    pub(crate) port: Option<u16>,
    pub(crate) transport: Transport,
    pub(crate) id_scope: String,
    pub(crate) registration_id: String,
    pub(crate) key: SymmetricKey,
    pub(crate) ca_roots_pem: Option<Vec<u8>>,
    pub(crate) payload: Option<Value>,
    pub(crate) timeout: Duration,
}

impl std::fmt::Debug for DpsOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DpsOptions")
            .field("endpoint", &self.endpoint)
            .field("port", &self.port)
            .field("transport", &self.transport)
            .field("id_scope", &self.id_scope)
            .field("registration_id", &self.registration_id)
            .field("key", &"<redacted>")
            .finish_non_exhaustive()
    }
}

impl DpsOptions {
    /// An individual enrollment with a symmetric key: `key` is the enrollment's.
    pub fn symmetric_key(
        endpoint: &str,
        id_scope: &str,
        registration_id: &str,
        key: SymmetricKey,
    ) -> Self {
        DpsOptions {
            endpoint: endpoint.into(),
            port: None,
            transport: Transport::Mqtt,
            id_scope: id_scope.into(),
            registration_id: registration_id.into(),
            key,
            ca_roots_pem: None,
            payload: None,
            timeout: Duration::from_secs(60),
        }
    }

    /// A group enrollment with a symmetric key: the device's key is derived from `group_key`
    /// and the registration id (HMAC-SHA256), as DPS does.
    pub fn group_key(
        endpoint: &str,
        id_scope: &str,
        registration_id: &str,
        group_key: &SymmetricKey,
    ) -> Self {
        let key = group_key.derive_for_device(registration_id);
        DpsOptions::symmetric_key(endpoint, id_scope, registration_id, key)
    }

    /// Another port than the transport's (8883 or 443).
    pub fn port(mut self, port: u16) -> Self {
        self.port = Some(port);
        self
    }

    /// MQTT/TLS (default) or MQTT over WebSocket/TLS.
    pub fn transport(mut self, transport: Transport) -> Self {
        self.transport = transport;
        self
    }

    /// Trusts only these CA certificates (PEM) for the DPS endpoint.
    pub fn ca_roots_pem(mut self, pem: &[u8]) -> Self {
        self.ca_roots_pem = Some(pem.to_vec());
        self
    }

    /// The custom `payload` of the registration request (handed to DPS's allocation).
    pub fn payload(mut self, payload: Value) -> Self {
        self.payload = Some(payload);
        self
    }

    /// How long the whole registration may take (default 60 s).
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }
}

/// What DPS assigned.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct Registration {
    /// The hub to connect to.
    pub assigned_hub: String,
    /// The device id on that hub.
    pub device_id: String,
    /// The whole `registrationState` DPS answered with.
    pub state: Value,
}

/// Registers through DPS and returns the assignment. A refusal is
/// [`ClientError::Dps`] with DPS's status and message.
pub async fn register(options: &DpsOptions) -> Result<Registration, ClientError> {
    tokio::time::timeout(options.timeout, register_now(options))
        .await
        .map_err(|_| ClientError::Timeout(options.timeout))?
}

async fn register_now(options: &DpsOptions) -> Result<Registration, ClientError> {
    // The link's options: the endpoint, its port and trust, the registration id as the client.
    let mut link_options = ClientOptions::with_key(
        &options.endpoint,
        &options.registration_id,
        options.key.clone(),
    )
    .transport(options.transport);
    if let Some(port) = options.port {
        link_options = link_options.port(port);
    }
    if let Some(pem) = &options.ca_roots_pem {
        link_options = link_options.ca_roots_pem(pem);
    }
    let tls: Arc<rustls::ClientConfig> = link::tls_config(&link_options)?;
    let mut link = link::open(&link_options, &tls)
        .await
        .map_err(ClientError::Connect)?;

    let Auth::Key(key) = &link_options.auth else {
        return Err(ClientError::Config("DPS registration needs a key".into()));
    };
    let resource = format!(
        "{}/registrations/{}",
        options.id_scope, options.registration_id
    );
    let token = sas::generate(&resource, key, sas::unix_now() + TOKEN_LIFETIME, None)
        .map_err(|e| ClientError::Config(format!("signing the registration token: {e}")))?;
    let username = format!(
        "{}/registrations/{}/api-version={API_VERSION}&ClientVersion=iot-sdk-rust%2F{}",
        options.id_scope,
        options.registration_id,
        env!("CARGO_PKG_VERSION")
    );
    let connect = Connect {
        clean_session: true,
        keep_alive: 60,
        client_id: ByteString::from(options.registration_id.as_str()),
        username: Some(ByteString::from(username)),
        password: Some(Bytes::copy_from_slice(token.as_str().as_bytes())),
        ..Connect::default()
    };
    send(&mut link, Packet::Connect(Box::new(connect))).await?;
    match next(&mut link).await? {
        Packet::ConnectAck(ack) => match ack.return_code {
            ConnectAckReason::ConnectionAccepted => {}
            refused => {
                return Err(ClientError::Connect(format!(
                    "DPS CONNACK refused: {}",
                    refused.reason()
                )));
            }
        },
        other => return Err(protocol(format!("expected CONNACK, got {other:?}"))),
    }
    send(
        &mut link,
        Packet::Subscribe {
            packet_id: packet_id(1),
            topic_filters: vec![(
                ByteString::from_static("$dps/registrations/res/#"),
                QoS::AtLeastOnce,
            )],
        },
    )
    .await?;
    loop {
        match next(&mut link).await? {
            Packet::SubscribeAck { .. } => break,
            Packet::PingResponse => {}
            other => return Err(protocol(format!("expected SUBACK, got {other:?}"))),
        }
    }

    let mut body = json!({ "registrationId": options.registration_id });
    if let Some(payload) = &options.payload {
        body["payload"] = payload.clone();
    }
    let mut rid = 1u16;
    let mut answer = request(
        &mut link,
        rid,
        format!("$dps/registrations/PUT/iotdps-register/?$rid={rid}"),
        Bytes::from(body.to_string()),
    )
    .await?;
    for _ in 0..MAX_POLLS {
        match answer.status {
            200 => {
                let _ = send(&mut link, Packet::Disconnect).await;
                return assigned(&answer.body);
            }
            202 => {
                let operation = answer.body["operationId"]
                    .as_str()
                    .ok_or_else(|| protocol("a 202 without operationId".into()))?
                    .to_owned();
                tokio::time::sleep(answer.retry_after.min(MAX_RETRY_AFTER)).await;
                rid = rid.wrapping_add(1).max(1);
                answer = request(
                    &mut link,
                    rid,
                    format!(
                        "$dps/registrations/GET/iotdps-get-operationstatus/?$rid={rid}&operationId={}",
                        topics::escape(&operation)
                    ),
                    // The Azure SDKs send a single space; DPS ignores the body.
                    Bytes::from_static(b" "),
                )
                .await?;
            }
            status if status >= 429 => {
                // Throttled or a passing failure: ask again after the given delay.
                tokio::time::sleep(answer.retry_after.min(MAX_RETRY_AFTER)).await;
                rid = rid.wrapping_add(1).max(1);
                answer = request(
                    &mut link,
                    rid,
                    format!("$dps/registrations/PUT/iotdps-register/?$rid={rid}"),
                    Bytes::from(body.to_string()),
                )
                .await?;
            }
            status => {
                let message = answer.body["message"]
                    .as_str()
                    .unwrap_or("registration refused")
                    .to_owned();
                return Err(ClientError::Dps { status, message });
            }
        }
    }
    Err(protocol(format!(
        "the registration was still not assigned after {MAX_POLLS} polls"
    )))
}

/// One DPS answer.
struct Answer {
    status: u16,
    retry_after: Duration,
    body: Value,
}

/// Publishes a request (QoS 1) and waits for the answer with its `$rid`.
async fn request(
    link: &mut Link,
    rid: u16,
    topic: String,
    payload: Bytes,
) -> Result<Answer, ClientError> {
    let publish = Publish {
        dup: false,
        retain: false,
        qos: QoS::AtLeastOnce,
        topic: ByteString::from(topic),
        packet_id: Some(packet_id(rid)),
        payload,
        properties: None,
    };
    send(link, Packet::Publish(Box::new(publish))).await?;
    loop {
        match next(link).await? {
            Packet::Publish(publish) => {
                if let Some(id) = publish.packet_id {
                    send(link, Packet::PublishAck { packet_id: id }).await?;
                }
                // `$dps/registrations/res/{status}/?$rid={rid}[&retry-after={s}]`
                let Some(rest) = publish.topic.strip_prefix("$dps/registrations/res/") else {
                    continue;
                };
                let (status, bag) = rest.split_once("/?").unwrap_or((rest, ""));
                if topics::bag_value(bag, "$rid").as_deref() != Some(rid.to_string().as_str()) {
                    continue;
                }
                let status: u16 = status
                    .parse()
                    .map_err(|_| protocol(format!("answer status {status:?}")))?;
                let retry_after = topics::bag_value(bag, "retry-after")
                    .and_then(|s| s.parse::<u64>().ok())
                    .map_or(Duration::from_secs(1), Duration::from_secs);
                let body = serde_json::from_slice(&publish.payload).unwrap_or(Value::Null);
                return Ok(Answer {
                    status,
                    retry_after,
                    body,
                });
            }
            Packet::PublishAck { .. } | Packet::PingResponse => {}
            other => return Err(protocol(format!("unexpected {other:?}"))),
        }
    }
}

/// The assignment of a `200` answer.
fn assigned(body: &Value) -> Result<Registration, ClientError> {
    let state = &body["registrationState"];
    let field = |name: &str| {
        state[name]
            .as_str()
            .filter(|s| !s.is_empty())
            .map(str::to_owned)
            .ok_or_else(|| protocol(format!("an assignment without {name}")))
    };
    Ok(Registration {
        assigned_hub: field("assignedHub")?,
        device_id: field("deviceId")?,
        state: state.clone(),
    })
}

async fn send(link: &mut Link, packet: Packet) -> Result<(), ClientError> {
    link.writer.send(packet).await.map_err(ClientError::Connect)
}

async fn next(link: &mut Link) -> Result<Packet, ClientError> {
    match link.packets.recv().await {
        Some(Ok(packet)) => Ok(packet),
        Some(Err(reason)) => Err(ClientError::Connect(reason)),
        None => Err(ClientError::Connect("the DPS connection closed".into())),
    }
}

fn packet_id(n: u16) -> std::num::NonZeroU16 {
    std::num::NonZeroU16::new(n).unwrap_or(std::num::NonZeroU16::MIN)
}

fn protocol(reason: String) -> ClientError {
    ClientError::Protocol(format!("DPS: {reason}"))
}
