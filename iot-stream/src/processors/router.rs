//! The router: records to other topics by a discriminator.

use std::collections::HashMap;

use async_trait::async_trait;
use iot_core::{PartitionId, StoredRecord};

use crate::error::Result;
use crate::processor::{Context, ProcessorFactory, StreamProcessor};

/// What a [`Router`] looks at.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RouteBy {
    /// A header, normally a discriminator: `subject`, `stream-id` or `$version`.
    Header(String),
    /// A top-level field of a JSON payload (strings as they are, other scalars as JSON text).
    PayloadField(String),
}

/// Sends each record, unchanged, to the topic its discriminator value maps to; records with no
/// route go to the default topic if there is one, else nowhere.
///
/// ```
/// use iot_stream::processors::Router;
/// let router = Router::by_header("subject")
///     .route("temperature", "temperatures")
///     .route("alarm", "alarms")
///     .otherwise("unrouted");
/// ```
#[derive(Clone, Debug)]
pub struct Router {
    by: RouteBy,
    routes: HashMap<String, String>,
    default: Option<String>,
}

impl Router {
    /// A router on header `name`.
    pub fn by_header(name: impl Into<String>) -> Self {
        Self::new(RouteBy::Header(name.into()))
    }

    /// A router on top-level payload field `name`.
    pub fn by_payload_field(name: impl Into<String>) -> Self {
        Self::new(RouteBy::PayloadField(name.into()))
    }

    /// A router with no routes.
    pub fn new(by: RouteBy) -> Self {
        Router {
            by,
            routes: HashMap::new(),
            default: None,
        }
    }

    /// Sends records whose discriminator is `value` to `topic`.
    pub fn route(mut self, value: impl Into<String>, topic: impl Into<String>) -> Self {
        self.routes.insert(value.into(), topic.into());
        self
    }

    /// Sends records with no route to `topic`.
    pub fn otherwise(mut self, topic: impl Into<String>) -> Self {
        self.default = Some(topic.into());
        self
    }

    /// The topic `record` goes to.
    pub fn topic_for(&self, record: &StoredRecord) -> Option<&str> {
        let value = match &self.by {
            RouteBy::Header(name) => record.record.headers.get(name).map(str::to_owned),
            RouteBy::PayloadField(name) => {
                serde_json::from_slice::<serde_json::Value>(&record.record.payload)
                    .ok()
                    .and_then(|v| match v.get(name)? {
                        serde_json::Value::String(s) => Some(s.clone()),
                        serde_json::Value::Null => None,
                        other => Some(other.to_string()),
                    })
            }
        };
        value
            .and_then(|v| self.routes.get(&v))
            .or(self.default.as_ref())
            .map(String::as_str)
    }
}

#[async_trait]
impl StreamProcessor for Router {
    async fn process(&mut self, batch: &[StoredRecord], ctx: &mut Context) -> Result<()> {
        for record in batch {
            if let Some(topic) = self.topic_for(record) {
                let topic = topic.to_owned();
                ctx.emit(&topic, record.record.clone());
            }
        }
        Ok(())
    }
}

impl ProcessorFactory for Router {
    fn create(&self, _partition: PartitionId) -> Result<Box<dyn StreamProcessor>> {
        Ok(Box::new(self.clone()))
    }
}
