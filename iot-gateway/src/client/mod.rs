//! A device client for IoT Hub's MQTT protocol (feature `client`): what device software uses to
//! talk to Azure IoT Hub or to this project's [`Hub`](crate::Hub) behind its MQTT endpoint.
//!
//! * Built from a connection string (device or module, key, token or X.509) or from options;
//!   MQTT over TLS (8883) or MQTT over WebSocket over TLS (443), rustls only.
//! * Keeps itself connected: it reconnects with capped exponential backoff and jitter, signs a
//!   fresh SAS token and reconnects before the old one expires, restores its subscriptions, and
//!   resends unacknowledged telemetry.
//! * Telemetry goes through an **outbox** (memory, or a `FileLog` that survives a restart):
//!   [`DeviceClient::send_telemetry`] returns once the hub acknowledged the message,
//!   [`DeviceClient::enqueue_telemetry`] once it is in the outbox.
//! * C2D messages, desired-property patches and direct-method calls arrive on streams; twins are
//!   read and reported with request/response calls.
//!
//! See `docs/device-client.md` for the design.
//!
//! ```no_run
//! # async fn run() -> Result<(), iot_gateway::client::ClientError> {
//! use iot_gateway::client::{ClientOptions, DeviceClient, Message};
//!
//! let options = ClientOptions::from_connection_string(
//!     "HostName=myhub.azure-devices.net;DeviceId=dev-1;SharedAccessKey=AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=",
//! )?;
//! let client = DeviceClient::connect(options).await?;
//! client
//!     .send_telemetry(Message::new(r#"{"t":21.5}"#).property("unit", "C"))
//!     .await?;
//! let mut c2d = client.c2d_messages().await?;
//! if let Some(message) = c2d.recv().await {
//!     message.complete()?;
//! }
//! let twin = client.twin().await?;
//! client.patch_reported(&serde_json::json!({ "firmware": "1.2" })).await?;
//! client.close().await;
//! # let _ = twin; Ok(()) }
//! ```

mod backoff;
mod connection_string;
mod dps;
mod driver;
mod error;
#[cfg(feature = "client-https")]
mod https;
mod link;
mod message;
mod options;
mod outbox;
mod topics;

use std::sync::{Arc, Mutex};

use bytes::Bytes;
use rmqtt_codec::v3::QoS;
use serde_json::Value;
use tokio::sync::{mpsc, oneshot, watch};

pub use backoff::Backoff;
pub use connection_string::{ConnectionString, ConnectionStringError, Credential};
pub use dps::{DpsOptions, GLOBAL_ENDPOINT, Registration, register};
pub use driver::ConnectionState;
pub use error::ClientError;
pub use message::{C2dMessage, DesiredPatch, Message, MethodCall, Twin};
pub use options::{ClientOptions, OutboxConfig, Transport, WhenFull};
pub use outbox::Delivery;

use driver::{Command, Driver, Sinks};

/// Compiles the example of `docs/device-client.md`.
#[cfg(doctest)]
#[doc = include_str!("../../../docs/device-client.md")]
pub struct DeviceClientDoc;
use outbox::Outbox;

/// IoT Hub's largest device-to-cloud message, payload and properties.
pub const MAX_MESSAGE_BYTES: usize = 256 * 1024;

/// Refuses what the hub would refuse by closing the connection: such a message at the head of
/// the outbox would be sent again after every reconnect and block everything behind it.
fn check(message: &Message) -> Result<(), ClientError> {
    let invalid = |e: crate::Error| ClientError::InvalidMessage(e.to_string());
    let custom = crate::validate::check_properties(&message.properties).map_err(invalid)?;
    let system = crate::validate::check_system(&[
        ("message-id", &message.message_id),
        ("correlation-id", &message.correlation_id),
        ("content-type", &message.content_type),
        ("content-encoding", &message.content_encoding),
        ("user-id", &message.user_id),
        ("iothub-interface-id", &message.interface_id),
        ("iothub-outputname", &message.output_name),
        ("dt-subject", &message.component),
    ])
    .map_err(invalid)?;
    let size = message.payload.len() + custom + system;
    if size > MAX_MESSAGE_BYTES {
        return Err(ClientError::InvalidMessage(format!(
            "{size} bytes of payload and properties; at most {MAX_MESSAGE_BYTES}"
        )));
    }
    Ok(())
}

/// A connected device. Cheap to share behind an `Arc`; [`close`](Self::close) (or dropping it)
/// ends the connection task.
#[derive(Debug)]
pub struct DeviceClient {
    options: Arc<ClientOptions>,
    commands: mpsc::UnboundedSender<Command>,
    state: watch::Receiver<ConnectionState>,
    outbox: Arc<Outbox>,
    telemetry_topic: String,
    streams: Mutex<Streams>,
    task: tokio::task::JoinHandle<()>,
    registration: Option<Registration>,
}

#[derive(Debug)]
struct Streams {
    c2d: Option<mpsc::UnboundedReceiver<C2dMessage>>,
    desired: Option<mpsc::UnboundedReceiver<DesiredPatch>>,
    methods: Option<mpsc::UnboundedReceiver<MethodCall>>,
}

impl Drop for DeviceClient {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl DeviceClient {
    /// Opens the outbox and starts the connection task. Returns at once: the first connection is
    /// made in the background (watch [`connection_state`](Self::connection_state), or simply
    /// send: messages wait in the outbox). Fails only on options that cannot work — and, with
    /// [`ClientOptions::with_dps`], when the DPS registration (made here, before anything
    /// else) fails: a refusal is [`ClientError::Dps`], an unreachable endpoint
    /// [`ClientError::Connect`] or [`ClientError::Timeout`].
    pub async fn connect(mut options: ClientOptions) -> Result<DeviceClient, ClientError> {
        let registration = match &options.dps {
            Some(dps) => {
                let registration = dps::register(dps).await?;
                tracing::debug!(
                    hub = %registration.assigned_hub,
                    device = %registration.device_id,
                    "registered through DPS"
                );
                options.assigned(&registration);
                Some(registration)
            }
            None => None,
        };
        let tls = link::tls_config(&options)?;
        let outbox = Outbox::open(&options.outbox).await?;
        let options = Arc::new(options);
        let (command_tx, commands) = mpsc::unbounded_channel();
        let (state_tx, state) = watch::channel(ConnectionState::Connecting);
        let (c2d_tx, c2d) = mpsc::unbounded_channel();
        let (desired_tx, desired) = mpsc::unbounded_channel();
        let (methods_tx, methods) = mpsc::unbounded_channel();
        let driver = Driver::new(
            options.clone(),
            tls,
            outbox.clone(),
            commands,
            command_tx.clone(),
            state_tx,
            Sinks {
                c2d: c2d_tx,
                desired: desired_tx,
                methods: methods_tx,
            },
        );
        let task = tokio::spawn(driver.run());
        let telemetry_topic = format!(
            "{}/messages/events/",
            topics::identity_prefix(&options.device_id, options.module_id.as_deref())
        );
        Ok(DeviceClient {
            options,
            commands: command_tx,
            state,
            outbox,
            telemetry_topic,
            streams: Mutex::new(Streams {
                c2d: Some(c2d),
                desired: Some(desired),
                methods: Some(methods),
            }),
            task,
            registration,
        })
    }

    /// What DPS assigned, when the client registered through it
    /// ([`ClientOptions::with_dps`]).
    pub fn registration(&self) -> Option<&Registration> {
        self.registration.as_ref()
    }

    /// The connection's state now and its changes.
    pub fn connection_state(&self) -> watch::Receiver<ConnectionState> {
        self.state.clone()
    }

    /// Waits until the client is connected (or closed: [`ClientError::Closed`]).
    pub async fn connected(&self) -> Result<(), ClientError> {
        let mut state = self.state.clone();
        state
            .wait_for(|s| {
                matches!(
                    s,
                    ConnectionState::Connected { .. } | ConnectionState::Closed
                )
            })
            .await
            .map_err(|_| ClientError::Closed)
            .and_then(|s| match *s {
                ConnectionState::Closed => Err(ClientError::Closed),
                _ => Ok(()),
            })
    }

    /// Puts a telemetry message in the outbox and returns once it is there (on disk for a file
    /// outbox); await the [`Delivery`] for the hub's PUBACK. Fails with
    /// [`ClientError::OutboxFull`] when the outbox is full and its policy is
    /// [`WhenFull::Error`], and with [`ClientError::InvalidMessage`] for a message the hub would
    /// refuse (IoT Hub's property rules, [`MAX_MESSAGE_BYTES`]).
    pub async fn enqueue_telemetry(&self, message: Message) -> Result<Delivery, ClientError> {
        if self.task.is_finished() {
            return Err(ClientError::Closed);
        }
        check(&message)?;
        let topic = format!("{}{}", self.telemetry_topic, message.bag());
        self.outbox.enqueue(topic, message.payload).await
    }

    /// Sends a telemetry message and waits for the hub's PUBACK (however long the hub is away:
    /// wrap it in a time-out if that matters).
    pub async fn send_telemetry(&self, message: Message) -> Result<(), ClientError> {
        self.enqueue_telemetry(message).await?.acknowledged().await
    }

    /// Telemetry messages waiting for their PUBACK.
    pub async fn outbox_len(&self) -> usize {
        self.outbox.len().await
    }

    async fn subscribe(&self, filter: String, qos: QoS) -> Result<(), ClientError> {
        let (done, subscribed) = oneshot::channel();
        self.commands
            .send(Command::Subscribe { filter, qos, done })
            .map_err(|_| ClientError::Closed)?;
        subscribed.await.map_err(|_| ClientError::Closed)
    }

    fn take<T>(&self, pick: impl FnOnce(&mut Streams) -> Option<T>) -> Result<T, ClientError> {
        let mut streams = self
            .streams
            .lock()
            .map_err(|_| ClientError::Protocol("stream registry poisoned".into()))?;
        pick(&mut streams)
            .ok_or_else(|| ClientError::Config("this stream was already taken".into()))
    }

    /// Subscribes to C2D messages (once; kept across reconnects) and returns their stream, after
    /// the hub acknowledged the subscription. [`C2dMessage::complete`] sends the PUBACK.
    pub async fn c2d_messages(&self) -> Result<mpsc::UnboundedReceiver<C2dMessage>, ClientError> {
        let rx = self.take(|s| s.c2d.take())?;
        let filter = format!(
            "{}/messages/devicebound/#",
            topics::identity_prefix(&self.options.device_id, self.options.module_id.as_deref())
        );
        self.subscribe(filter, QoS::AtLeastOnce).await?;
        Ok(rx)
    }

    /// Subscribes to desired-property patches and returns their stream.
    pub async fn desired_patches(
        &self,
    ) -> Result<mpsc::UnboundedReceiver<DesiredPatch>, ClientError> {
        let rx = self.take(|s| s.desired.take())?;
        self.subscribe(topics::DESIRED_PATCHES.into(), QoS::AtMostOnce)
            .await?;
        Ok(rx)
    }

    /// Subscribes to direct-method calls and returns their stream; answer each with
    /// [`MethodCall::respond`].
    pub async fn method_calls(&self) -> Result<mpsc::UnboundedReceiver<MethodCall>, ClientError> {
        let rx = self.take(|s| s.methods.take())?;
        self.subscribe(topics::METHODS.into(), QoS::AtMostOnce)
            .await?;
        Ok(rx)
    }

    /// Runs `handler` for every direct-method call (in a task of its own): it returns the status
    /// and JSON body of the answer.
    pub async fn handle_methods<F, Fut>(&self, handler: F) -> Result<(), ClientError>
    where
        F: Fn(String, Bytes) -> Fut + Send + 'static,
        Fut: std::future::Future<Output = (u16, Value)> + Send,
    {
        let mut calls = self.method_calls().await?;
        tokio::spawn(async move {
            while let Some(call) = calls.recv().await {
                let (status, body) = handler(call.name.clone(), call.payload.clone()).await;
                if call.respond(status, &body).is_err() {
                    return;
                }
            }
        });
        Ok(())
    }

    async fn twin_request(
        &self,
        topic: String,
        body: Bytes,
    ) -> Result<(u16, String, Bytes), ClientError> {
        self.subscribe(topics::TWIN_RESPONSES.into(), QoS::AtMostOnce)
            .await?;
        let (reply, answer) = oneshot::channel();
        self.commands
            .send(Command::Twin { topic, body, reply })
            .map_err(|_| ClientError::Closed)?;
        let timeout = self.options.operation_timeout;
        match tokio::time::timeout(timeout, answer).await {
            Ok(Ok(answer)) => Ok(answer),
            Ok(Err(_)) => Err(ClientError::Closed),
            Err(_) => Err(ClientError::Timeout(timeout)),
        }
    }

    /// Reads the device's twin.
    pub async fn twin(&self) -> Result<Twin, ClientError> {
        let (status, _, body) = self
            .twin_request("$iothub/twin/GET/".into(), Bytes::new())
            .await?;
        if status != 200 {
            return Err(ClientError::TwinStatus { status });
        }
        let mut doc: Value = serde_json::from_slice(&body)
            .map_err(|e| ClientError::Protocol(format!("twin: {e}")))?;
        Ok(Twin {
            desired: doc
                .get_mut("desired")
                .map(Value::take)
                .unwrap_or(Value::Null),
            reported: doc
                .get_mut("reported")
                .map(Value::take)
                .unwrap_or(Value::Null),
        })
    }

    /// Patches the reported properties; returns their new version.
    pub async fn patch_reported(&self, patch: &Value) -> Result<u64, ClientError> {
        let body = serde_json::to_vec(patch).map_err(|e| ClientError::Protocol(e.to_string()))?;
        let (status, bag, _) = self
            .twin_request(
                "$iothub/twin/PATCH/properties/reported/".into(),
                body.into(),
            )
            .await?;
        if status != 204 && status != 200 {
            return Err(ClientError::TwinStatus { status });
        }
        topics::bag_value(&bag, "$version")
            .and_then(|v| v.parse().ok())
            .ok_or_else(|| ClientError::Protocol("reported patch answer without $version".into()))
    }

    /// Disconnects (DISCONNECT if connected) and stops the connection task. Messages still in a
    /// file outbox stay there for the next client on its directory.
    pub async fn close(self) {
        let (done, closed) = oneshot::channel();
        if self.commands.send(Command::Close { done }).is_ok() {
            let _ = closed.await;
        }
    }
}
