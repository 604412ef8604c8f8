//! IoT Hub message routing: conditions in IoT Hub's routing query syntax, routes to endpoints
//! (log topics), enrichments, and the fallback route, run as a stream processor.
//!
//! ```
//! # tokio::runtime::Builder::new_multi_thread().enable_all().build().unwrap().block_on(async {
//! use std::sync::Arc;
//! use iot_core::{GroupName, Producer, Record, Topics};
//! use iot_stream::routing::{Route, RouteTable, RoutingProcessor};
//! use iot_stream::{HostConfig, ProcessorHost};
//!
//! let topics = Arc::new(Topics::memory(2));
//! let table = RouteTable::new().with_fallback("events");
//! table.add(Route::new("critical", "level = 'critical'", "alerts")?)?;
//! let host = ProcessorHost::new(topics.clone());
//! let routing = RoutingProcessor::new(table.clone(), "my-hub");
//! let group = host.start("telemetry", GroupName::new("routing")?, Arc::new(routing), HostConfig::default()).await?;
//!
//! let producer = Producer::new(topics.topic("telemetry").await?);
//! producer.send(Record::new("dev-1", "{}").with_header("level", "critical")).await?;
//! producer.send(Record::new("dev-1", "{}").with_header("level", "info")).await?;
//! group.wait_caught_up().await?;
//! group.shutdown().await?;
//! # Ok::<(), iot_stream::Error>(()) }).unwrap();
//! ```
//!
//! See `docs/routing.md` for what the language supports and how it differs from IoT Hub.

mod ast;
mod compiled;
mod eval;
mod lexer;
mod message;
mod parser;
mod processor;
mod route;
mod scan;
mod twin;

pub use message::{DEVICE_ID_HEADER, MODULE_ID_HEADER, MessageView};
pub use processor::RoutingProcessor;
pub use route::{
    Condition, Enrichment, EnrichmentValue, MAX_ENRICHMENTS, Route, RouteSource, RouteTable,
    RoutingSnapshot,
};
pub use twin::{MemoryTwins, TwinLookup};

use serde_json::Value;

impl Condition {
    /// Evaluates the condition on `message` with `twin` (the document
    /// `{"tags": …, "properties": {"desired": …, "reported": …}}`, if any): `Some(true)` or
    /// `Some(false)` when it evaluates to a Boolean, `None` when it is undefined or not a Boolean
    /// (a route then does not match).
    pub fn evaluate(&self, message: &MessageView<'_>, twin: Option<&Value>) -> Option<bool> {
        self.test.eval(&eval::Scope { message, twin })
    }

    /// The value of the expression (a condition is an expression): `None` is undefined.
    pub fn value(&self, message: &MessageView<'_>, twin: Option<&Value>) -> Option<Value> {
        self.expr
            .eval(&eval::Scope { message, twin })
            .map(eval::V::into_owned)
    }
}

#[cfg(test)]
mod tests;
