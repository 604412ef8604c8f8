//! A CoAP adapter (RFC 7252 over UDP, feature `coap`): devices that speak CoAP send telemetry
//! and receive cloud-to-device messages through any [`Gateway`](crate::Gateway).
//!
//! It is the worked example of the adapter kit ([`crate::adapter`]): it reaches the gateway
//! only through that kit and the public `Gateway` / `DeviceSession` API, as an adapter written
//! outside this crate would. `docs/protocol-adapters.md` walks through it.
//!
//! | request | does |
//! | --- | --- |
//! | `POST /devices/{id}/messages/events?sas=…&{properties}` | telemetry; 2.04 once it is in the log |
//! | `GET /devices/{id}/messages/devicebound?sas=…` | the next C2D message, locked (2.05; empty and without properties when there is none) |
//! | the same GET with Observe 0 | observe it (RFC 7641): each C2D message as a confirmable notification, the next once the last is acknowledged |
//! | `DELETE /devices/{id}/messages/devicebound/{lockToken}?sas=…` | complete it (`&reject`: reject); 2.02 |
//! | `POST /devices/{id}/messages/devicebound/{lockToken}/abandon?sas=…` | abandon it; 2.04 |
//!
//! * **Authentication**: every request carries the device's SAS token as the Uri-Query option
//!   `sas=SharedAccessSignature sr=…` (in a URI, one percent-encoded query parameter). The
//!   gateway verifies it when the device's session is opened; later requests with the same
//!   token reuse that session ([`TokenSessions`](crate::adapter::TokenSessions)). No token,
//!   a bad one, or one for another device than the address names: 4.01.
//! * **Properties**: every other Uri-Query option is a `key=value` property, with IoT Hub's `$.`
//!   system keys (`$.mid`, `$.ct`, …); a Content-Format option fills the content type when
//!   `$.ct` is absent. A C2D message's properties come back in the elective option
//!   [`PROPERTIES_OPTION`] as IoT Hub's URL-encoded property bag, with its lock token as
//!   `iothub-locktoken`.
//! * **At least once**: a confirmable request is acknowledged only once carried out, and a
//!   retransmission (same peer and message id within the exchange lifetime) is answered from
//!   memory, never carried out twice.
//! * **Not supported**: DTLS (so the token travels in the clear: use it on trusted networks or
//!   under a VPN, see the guide), block-wise transfer, twins, direct methods, module
//!   identities.
//!
//! ```no_run
//! # async fn run(gateway: std::sync::Arc<dyn iot_gateway::Gateway>) -> Result<(), iot_gateway::coap::Error> {
//! use iot_gateway::coap::{CoapConfig, CoapServer};
//!
//! let server = CoapServer::bind(gateway, CoapConfig::default(), "127.0.0.1:5683".parse().expect("address")).await?;
//! println!("CoAP on {}", server.local_addr());
//! // ... later
//! server.shutdown().await;
//! # Ok(()) }
//! ```

mod config;
mod dedup;
mod error;
mod handler;
mod request;
mod server;

pub use config::CoapConfig;
pub use error::Error;
pub use request::{PROPERTIES_OPTION, REJECT_QUERY, SAS_QUERY};
pub use server::CoapServer;
