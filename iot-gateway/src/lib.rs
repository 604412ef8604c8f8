//! # iot-gateway
//!
//! The cloud gateway: where devices meet the system. It authenticates them against the identity
//! store, brokers their telemetry into the log, holds cloud-to-device messages for them in a
//! durable inbox, and carries twins and direct methods.
//!
//! * [`Gateway`] / [`DeviceSession`] — the contract protocol endpoints (MQTT, HTTP) sit on.
//! * [`adapter`] — the kit for protocol adapters of one's own (property bags, device addresses,
//!   sessions for connectionless protocols); see `docs/protocol-adapters.md`.
//! * [`Hub`] — the reference gateway over a log ([`iot_core::Topics`]), an
//!   [`iot_identity::IdentityStore`], an [`InboxStore`] and a [`TwinStore`] (memory and
//!   file-backed implementations of each).
//!
//! ## Feature flags
//!
//! * `testkit` — the public conformance suites `testkit` for `Gateway`, `InboxStore` and
//!   `TwinStore` implementations, and fault-injecting store wrappers.
//! * `mqtt` (default) — the MQTT 3.1.1 endpoint.
//! * `http` — the HTTP endpoint: IoT Hub's service REST API and shared access policies
//!   (module `http`; it turns on `mqtt` for the shared TLS configuration).
//! * `client` — a device client for IoT Hub's MQTT protocol (module `client`), with an outbox
//!   for store-and-forward.
//! * `coap` — a CoAP adapter (module `coap`, RFC 7252 over UDP): telemetry, C2D and SAS
//!   authentication, written on the public adapter kit ([`adapter`]) alone.
//! * `edge` — the field gateway's upstream forwarder (module `edge`): a local hub's telemetry
//!   forwarded to a cloud hub, one device client per leaf device; C2D and methods back down.
#![forbid(unsafe_code)]

pub mod adapter;
pub mod error;
pub mod events;
pub mod gateway;
pub mod hub;
pub mod inbox;
mod journaled;
pub mod message;
pub mod method;
mod rfc3339;
mod sync_util;
#[cfg(feature = "testkit")]
pub mod testkit;
pub mod throttle;
pub mod twins;
pub mod validate;

pub use error::{CloseReason, Error, Result, ThrottleScope, ThrottledOperation};
pub use gateway::{
    DeviceActivity, DeviceSession, Gateway, SessionEvent, SessionOptions, Subscription,
};
pub use hub::{Hub, HubBuilder, HubConfig, SessionObserver};
pub use inbox::{FileInbox, FileInboxConfig, InboxLimits, InboxStore, MemoryInbox};
// When a file store acknowledges a write, and what its recovery does with corruption: the
// storage kit's types, shared by every store of the SDK.
pub use iot_core::storage::{Durability, Recovery};
pub use message::{
    AckRequest, C2dDelivery, C2dMessage, C2dReceipt, Feedback, FeedbackStatus, LockToken,
    SystemProperties, Telemetry,
};
pub use method::{MethodCall, MethodRequest, MethodResponse};
pub use throttle::{Rate, ThrottleConfig};
pub use twins::{
    DesiredPatch, FileTwinStore, FileTwinStoreConfig, MemoryTwinStore, Twin, TwinLimits,
    TwinSection, TwinStore,
};
// ---- gateway core (issue 6): modules are declared above this line ----

#[cfg(feature = "mqtt")]
pub mod mqtt;
// IoT Hub's WebSocket transport, shared by the MQTT and AMQP endpoints.
#[cfg(feature = "mqtt")]
mod websocket;

#[cfg(feature = "http")]
pub mod http;

#[cfg(feature = "http")]
pub mod fleet;

#[cfg(feature = "client")]
pub mod client;

#[cfg(feature = "edge")]
pub mod edge;

#[cfg(feature = "amqp")]
pub mod amqp;
#[cfg(feature = "coap")]
pub mod coap;
