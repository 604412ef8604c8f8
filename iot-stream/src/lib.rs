//! # iot-stream
//!
//! Stream processing over the partitioned log of [`iot_core`]: the [`StreamProcessor`] trait and
//! the [`ProcessorHost`] that runs processors as consumer groups (one worker per partition,
//! checkpoint after success, retries, dead letters), the device [`StateStore`] (raw event history
//! and last known values) with memory and file implementations, built-in processors, and
//! virtual device [`actors`] on top of them.
//!
//! ```
//! # tokio::runtime::Builder::new_multi_thread().enable_all().build().unwrap().block_on(async {
//! use std::sync::Arc;
//! use iot_core::{DeviceId, GroupName, Producer, Record, Topics};
//! use iot_stream::{processors::LastKnownValues, HostConfig, MemoryStateStore, ProcessorHost, StateStore};
//! use serde_json::json;
//!
//! let topics = Arc::new(Topics::memory(4));
//! let store = Arc::new(MemoryStateStore::new());
//! let host = ProcessorHost::new(topics.clone());
//! let lkv = LastKnownValues::new(store.clone());
//! let group = host.start("telemetry", GroupName::new("lkv")?, Arc::new(lkv), HostConfig::default()).await?;
//!
//! let producer = Producer::new(topics.topic("telemetry").await?);
//! producer.send(Record::new("dev-1", r#"{"temp": 20, "door": "open"}"#)).await?;
//! producer.send(Record::new("dev-1", r#"{"temp": 21, "door": null}"#)).await?;
//! group.wait_caught_up().await?;
//! group.shutdown().await?;
//!
//! let values = store.last_known(&DeviceId::new("dev-1")?).await?.map(|l| l.values());
//! assert_eq!(values, Some(json!({"temp": 21})));
//! # Ok::<(), iot_stream::Error>(()) }).unwrap();
//! ```
//!
//! ## Feature flags
//!
//! * `testkit`: the public conformance suite `iot_stream::testkit` for `StateStore` implementations
//!   (`run_all` over a `StateStoreFactory`) and the fault-injecting `FaultyStateStore`.
//! * `object-store`: the object-storage endpoint `sinks::object` (arrow-rs `object_store`; local
//!   files built in), writing batches as JSON lines.
//! * `parquet`: Parquet as that endpoint's format (arrow-rs `parquet`; implies `object-store`).
//! * `webhook`: the HTTP webhook endpoint `sinks::webhook` (hyper's client, rustls on ring;
//!   HMAC-SHA256 signatures).
//! * `nats`: the NATS endpoint `sinks::nats` (async-nats; core NATS or JetStream with acks).
//! * `rabbitmq`: the RabbitMQ endpoint `sinks::rabbitmq` (lapin; publisher confirms).
#![forbid(unsafe_code)]

#[doc = include_str!("../../docs/actors.md")]
pub mod actors;
pub mod error;
pub mod host;
pub mod processor;
pub mod processors;
pub mod routing;
pub mod rules;
pub mod sinks;
pub mod state;
#[cfg(feature = "testkit")]
pub mod testkit;
pub mod window;

pub use error::{Error, Result};
pub use host::{HostConfig, PROCESSED_SUFFIX, ProcessorHost, RunningGroup};
pub use processor::{Context, FnFactory, ProcessorFactory, ReferenceData, StreamProcessor};
pub use state::{
    Event, FileStateStore, FileStateStoreConfig, LastKnown, LkvUpdate, MemoryStateStore,
    SourcePosition, StateStore,
};
