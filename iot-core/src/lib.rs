//! # iot-core
//!
//! The vocabulary shared by every crate of the IoT SDK — [`DeviceId`], [`ModuleId`],
//! [`EndpointId`], [`Record`], [`Offset`],
//! [`PartitionId`], [`Error`] — and the partitioned [`Log`] that telemetry, alerts, audit and events
//! flow through. It also holds what every crate shares: [`json`] (RFC 7396 merge patch, depth
//! limits) and [`time`] (RFC 3339 parse and format).
//!
//! ## Feature flags
//!
//! * `testkit` — `iot_core::testkit`: the conformance suite for [`Log`] implementations
//!   (`testkit::run_all`), the fault-injecting `testkit::FaultyLog`, and the kill -9 crash
//!   harness. `docs/integrating.md` walks an integrator from `cargo add` to a passing suite.
#![forbid(unsafe_code)]

pub mod capabilities;
pub mod consumer;
pub mod device_id;
pub mod endpoint_id;
pub mod error;
pub mod file_log;
pub mod headers;
pub mod json;
pub mod limits;
pub mod log;
pub mod memory_log;
pub mod module_id;
pub mod names;
pub mod offset;
pub mod partitioner;
pub mod producer;
pub mod record;
pub mod retention;
pub mod storage;
mod sync_util;
#[cfg(feature = "testkit")]
pub mod testkit;
pub mod time;
pub mod timestamp;
pub mod topics;

pub use capabilities::LogCapabilities;
pub use consumer::{GroupConsumer, StartFrom};
pub use device_id::DeviceId;
pub use endpoint_id::EndpointId;
pub use error::{Error, Result};
pub use file_log::{Durability, FileLog, FileLogConfig};
pub use headers::{Headers, SharedHeaders};
pub use limits::{LogLimits, ReadLimits};
pub use log::{Appended, Log, LogExt, RetentionPolicy, RetentionReport};
pub use memory_log::MemoryLog;
pub use module_id::ModuleId;
pub use names::{GroupName, TopicName};
pub use offset::{Offset, PartitionId};
pub use partitioner::partition_for_key;
pub use producer::Producer;
pub use record::{Record, StoredRecord};
pub use timestamp::Timestamp;
pub use topics::{FileLogFactory, LogFactory, MemoryLogFactory, Topics};
