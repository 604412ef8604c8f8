//! Endpoints behind routing: sinks that take an endpoint's topic to object storage, webhooks or
//! queues, run as stream processors in the [`ProcessorHost`](crate::ProcessorHost).
//!
//! Routing (`crate::routing`) appends each routed message to its endpoint's topic; a
//! [`SinkProcessor`] runs over that topic as a consumer group, cuts it into batches
//! ([`BatchPolicy`]), and hands each complete batch to a [`Sink`], with retries, backoff and a
//! dead-letter topic. The group's checkpoint stays at the first record not yet written, so a
//! restart loses nothing and writes at most one batch again.
//!
//! ```
//! # tokio::runtime::Builder::new_multi_thread().enable_all().build().unwrap().block_on(async {
//! use std::sync::{Arc, Mutex};
//! use async_trait::async_trait;
//! use iot_core::{GroupName, Producer, Record, Topics};
//! use iot_stream::sinks::{BatchPolicy, Sink, SinkBatch, SinkConfig, SinkError, SinkProcessor};
//! use iot_stream::{HostConfig, ProcessorHost};
//!
//! #[derive(Debug, Default)]
//! struct Counter(Mutex<usize>);
//! #[async_trait]
//! impl Sink for Counter {
//!     fn name(&self) -> &str { "counter" }
//!     async fn write(&self, batch: SinkBatch<'_>) -> Result<(), SinkError> {
//!         *self.0.lock().unwrap() += batch.records.len();
//!         Ok(())
//!     }
//! }
//!
//! let topics = Arc::new(Topics::memory(1));
//! let sink = Arc::new(Counter::default());
//! let config = SinkConfig::default().batch(BatchPolicy { max_records: 2, ..BatchPolicy::default() });
//! let factory = SinkProcessor::factory(sink.clone(), config)?;
//! let host = ProcessorHost::new(topics.clone());
//! let group = host.start("alerts", GroupName::new("archive")?, Arc::new(factory), HostConfig::default()).await?;
//! let producer = Producer::new(topics.topic("alerts").await?);
//! for i in 0..5 {
//!     producer.send(Record::new("dev-1", format!("{{\"n\":{i}}}"))).await?;
//! }
//! group.wait_caught_up().await?;
//! group.shutdown().await?;
//! // Two full batches of two; the fifth record waits for its batch to fill or to age.
//! assert_eq!(*sink.0.lock().unwrap(), 4);
//! # Ok::<(), iot_stream::Error>(()) }).unwrap();
//! ```
//!
//! See `docs/routing.md` ("Endpoints") for the sinks and their delivery guarantees.

mod batch;
mod event;
#[cfg(feature = "nats")]
pub mod nats;
#[cfg(feature = "object-store")]
pub mod object;
mod processor;
#[cfg(feature = "rabbitmq")]
pub mod rabbitmq;
mod sink;
#[cfg(feature = "webhook")]
pub mod webhook;

pub use batch::BatchPolicy;
pub use event::{MissingProperty, Template, event_id};
pub use processor::{SINK_HEADER, SinkConfig, SinkFactory, SinkProcessor};
pub use sink::{Sink, SinkBatch, SinkError};
