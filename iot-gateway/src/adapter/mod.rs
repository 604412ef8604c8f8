//! The adapter kit: what a protocol adapter needs to bring devices of another protocol to any
//! [`Gateway`](crate::Gateway), public and stable so that adapters can live outside this crate.
//! The built-in CoAP adapter ([`crate::coap`], feature `coap`) is written on it alone.
//!
//! * [`properties`] — IoT Hub's URL-encoded property bag and the mapping of its `$.` system
//!   keys to [`Telemetry`](crate::Telemetry) and from [`C2dDelivery`](crate::C2dDelivery).
//! * [`Address`] — the device addresses `devices/{id}/messages/events` and
//!   `devices/{id}/messages/devicebound[/{lockToken}[/abandon]]`, parsed from path segments.
//! * [`TokenSessions`] — for connectionless protocols: one gateway session per device, opened
//!   with the SAS token a request presents and reused while later requests present the same one.
//! * [`AmqpFrameGuard`] — for AMQP endpoints on fe2o3-amqp: holds back each frame until it is
//!   complete and closes the connection at one the crate's decoder would panic on or allocate
//!   beyond its size for ([`AmqpFrameChecker`], [`check_amqp_values`]); the messages inside an
//!   IoT Hub batch ([`AMQP_BATCH_FORMAT`]) are checked too ([`check_amqp_batch`]).
//! * [`CoalescedWrites`] — for AMQP endpoints on fe2o3-amqp: gathers the frames the crate's
//!   connection engine writes one by one into fewer system calls (and TLS records).
//! * [`AmqpEncoder`], [`TransferFrame`] — AMQP values and `transfer` frames written straight
//!   into a buffer, for an endpoint's hot path (an event encoded from a record in one pass).
//!
//! Credentials are presented as [`iot_identity::Presented`] to
//! [`Gateway::connect`](crate::Gateway::connect), which verifies them against the identity store;
//! an adapter never sees a device's keys. See `docs/protocol-adapters.md` for the guide.
//!
//! ```
//! use iot_gateway::adapter::{Address, properties};
//!
//! let address = Address::parse("/devices/sensor-1/messages/events".split('/'))?;
//! assert_eq!(address.device().as_str(), "sensor-1");
//! let pairs = properties::decode_pairs(["%24.ct=application%2Fjson", "temp=21"])?;
//! let telemetry = properties::telemetry_from_properties(pairs, &b"{\"t\":21}"[..])?;
//! assert_eq!(telemetry.system.content_type.as_deref(), Some("application/json"));
//! assert_eq!(telemetry.properties, vec![("temp".to_string(), "21".to_string())]);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

mod address;
mod amqp_batch;
mod amqp_encoding;
mod amqp_frames;
mod amqp_wire;
mod amqp_writes;
pub mod properties;
mod sessions;

pub use address::{Address, AddressError};
pub use amqp_batch::{AMQP_BATCH_FORMAT, check_amqp_batch};
pub use amqp_encoding::{AmqpEncodingError, DEFAULT_MAX_DEPTH, amqp_value_end, check_amqp_values};
pub use amqp_frames::{AmqpFrameChecker, AmqpFrameError, AmqpFrameGuard, AmqpFrameLimits};
pub use amqp_wire::{
    AMQP_FRAME, AmqpDecoder, AmqpEncoder, AmqpWireError, Compound, CompoundHeader, FRAME_HEADER,
    FrameHeader, FrameWriter, SASL_FRAME, TRANSFER_CODE, TransferFields, TransferFrame,
};
pub use amqp_writes::{COALESCE_BYTES, CoalescedWrites};
pub use properties::{LOCK_TOKEN_PROPERTY, PropertyError};
pub use sessions::{SharedSession, TokenSessions};
