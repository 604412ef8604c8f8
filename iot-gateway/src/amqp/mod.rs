//! IoT Hub's AMQP 1.0 endpoint (feature `amqp`): devices send telemetry and receive
//! cloud-to-device messages, back ends send C2D messages and read delivery feedback, over any
//! [`Gateway`](crate::Gateway). `docs/amqp.md` describes it.
//!
//! * **Transport**: TLS ([`AmqpServer::listen_tls`], IoT Hub's port 5671) with the MQTT
//!   endpoint's [`TlsConfig`](crate::mqtt::TlsConfig), or plain TCP for tests; WebSocket
//!   (`/$iothub/websocket`, subprotocol `AMQPWSB10`) on a listener of its own
//!   ([`AmqpServer::listen_wss`], [`AmqpServer::listen_ws`]) or handed over by an HTTPS server
//!   that answered the upgrade ([`AmqpServer::serve_upgraded`];
//!   [`http::WebSocketUpgrades`](crate::http::WebSocketUpgrades) serves it beside the REST API
//!   on one port, as IoT Hub's 443 does).
//! * **Security**: SASL ANONYMOUS then claims-based security — a `put-token` on the `$cbs`
//!   node with a device SAS token (or a service token of a shared access policy) — or SASL
//!   PLAIN with the token as password. A token authorizes links until it expires; a newer
//!   token renews it; expiry closes the links it authorized.
//! * **Device links**: `/devices/{id}/messages/events` (telemetry) and
//!   `/devices/{id}/messages/devicebound` (C2D; accepted = complete, rejected = reject,
//!   released/modified = abandon).
//! * **Twin and direct methods**: `/devices/{id}/twin` and `/devices/{id}/methods/devicebound`
//!   (a sender and a receiver each, correlated by correlation ids), as IoT Hub serves them.
//! * **Service links**: `/messages/devicebound` (send C2D; `to` names the device) and
//!   `/messages/serviceBound/feedback` (feedback batches).
//!
//! Built on `fe2o3-amqp` (its `acceptor` side): framing, performatives, sessions, flow control
//! and SASL framing are the crate's; the nodes, security and mapping to the gateway are here.
//!
//! ```no_run
//! # async fn run(gateway: std::sync::Arc<dyn iot_gateway::Gateway>, tls: iot_gateway::mqtt::TlsConfig) -> Result<(), iot_gateway::amqp::Error> {
//! use iot_gateway::amqp::{AmqpConfig, AmqpServer};
//!
//! let server = AmqpServer::new(gateway, AmqpConfig::default())?;
//! let bound = server.listen_tls("127.0.0.1:5681".parse().expect("address"), tls).await?;
//! println!("amqps on {bound}");
//! // ... later
//! server.shutdown().await;
//! # Ok(()) }
//! ```

mod c2d;
mod cbs;
mod claims;
mod config;
mod conn;
mod connection;
mod convert;
mod device_wait;
mod error;
mod links;
mod methods;
mod replay;
mod router;
mod sasl;
mod server;
mod service;
mod telemetry;
mod transport;
mod twin;

pub use config::AmqpConfig;
pub use convert::FEEDBACK_CONTENT_TYPE;
pub use error::Error;
pub use server::AmqpServer;
