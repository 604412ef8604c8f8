//! An MQTT 3.1.1 endpoint over any [`Gateway`](crate::Gateway), speaking Azure IoT Hub's device
//! protocol so that unmodified device software (the Azure IoT device SDKs, paho, mosquitto
//! clients) can connect.
//!
//! * Client id = device id; username `{host}/{deviceId}/?api-version=…`; password = SAS token,
//!   checked by the gateway.
//! * Telemetry on `devices/{id}/messages/events/{property bag}`; C2D on
//!   `devices/{id}/messages/devicebound/{property bag}` at the subscription's QoS (PUBACK
//!   completes the message); twin GET and reported PATCH with `$rid`; desired patches;
//!   direct methods.
//! * Made with [`MqttServer::with_onboarding`], the same listeners serve DPS's device protocol
//!   too: a CONNECT whose username is `{idScope}/registrations/{registrationId}/…` is a
//!   registration through an enrollment (`$dps/registrations/…` topics), answered as DPS answers.
//! * Anything outside the device's own topics, QoS 2, a second CONNECT, malformed packets and
//!   packets that break MQTT 3.1.1's rules on flags and reserved bits close that one connection;
//!   bytes that cannot start a CONNECT close it at the first byte.
//!
//! See `docs/mqtt.md` for the design.
//!
//! ```no_run
//! # async fn run(gateway: std::sync::Arc<dyn iot_gateway::Gateway>) -> Result<(), iot_gateway::mqtt::Error> {
//! use iot_gateway::mqtt::{MqttConfig, MqttServer};
//!
//! let server = MqttServer::new(gateway, MqttConfig::default())?;
//! let addr = server.listen_tcp("127.0.0.1:1884".parse().expect("address")).await?;
//! println!("MQTT on {addr}");
//! // ... later
//! server.shutdown().await;
//! # Ok(()) }
//! ```

pub(crate) mod client_chain;
mod config;
mod connect;
pub(crate) mod dps;
mod error;
mod framing;
mod pending;
mod persistent;
mod property_bag;
pub(crate) use crate::rfc3339;
mod server;
mod session;
mod shared;
mod subscriptions;
mod telemetry;
mod tls;
mod topics;
mod transport;
mod username;

pub use config::MqttConfig;
pub use error::{Error, ProtocolViolation};
pub use server::MqttServer;
pub use telemetry::LOCK_TOKEN_PROPERTY;
pub use tls::{SelfSigned, TlsConfig};
