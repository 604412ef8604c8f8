//! The routing processor: applies a [`RouteTable`] to the records of one topic.

use std::collections::HashMap;
use std::sync::Arc;

use async_trait::async_trait;
use iot_core::{PartitionId, Record, StoredRecord};
use serde_json::Value;
use tracing::{debug, trace};

use super::eval::Scope;
use super::message::MessageView;
use super::route::{EnrichmentValue, RouteSource, RouteTable, RoutingSnapshot};
use super::twin::TwinLookup;
use crate::error::Result;
use crate::processor::{Context, ProcessorFactory, StreamProcessor};

/// Routes the records of one topic (messages of one [`RouteSource`]): each record goes, once, to
/// every endpoint (topic) of an enabled route of that source whose condition holds, with the
/// enrichments of that endpoint added as headers; a device message no route matched goes to the
/// fallback endpoint when the fallback route is enabled.
///
/// It is its own [`ProcessorFactory`]; run it with [`ProcessorHost::start`](crate::ProcessorHost::start)
/// as a consumer group, which commits after each batch, so a restart re-sends at most the batch in
/// flight and loses nothing. Route changes in the [`RouteTable`] apply from the next batch.
#[derive(Clone, Debug)]
pub struct RoutingProcessor {
    table: RouteTable,
    source: RouteSource,
    hub_name: String,
    twins: Option<Arc<dyn TwinLookup>>,
    seen: Option<Arc<RoutingSnapshot>>,
}

impl RoutingProcessor {
    /// Routes device messages of hub `hub_name` (the value of `$iothubname`) by `table`.
    pub fn new(table: RouteTable, hub_name: &str) -> Self {
        RoutingProcessor {
            table,
            source: RouteSource::DeviceMessages,
            hub_name: hub_name.to_owned(),
            twins: None,
            seen: None,
        }
    }

    /// The same processor for messages of `source`.
    pub fn with_source(mut self, source: RouteSource) -> Self {
        self.source = source;
        self
    }

    /// The same processor reading twins from `twins` (without it every `$twin` path is
    /// undefined and twin enrichments stamp their path text).
    pub fn with_twins(mut self, twins: Arc<dyn TwinLookup>) -> Self {
        self.twins = Some(twins);
        self
    }

    /// The endpoints `record` goes to under `snapshot`, in route order, each once; `twins`
    /// caches this batch's lookups.
    async fn endpoints(
        &self,
        snapshot: &RoutingSnapshot,
        message: &MessageView<'_>,
        twins: &mut TwinCache,
    ) -> Result<Vec<String>> {
        let mut endpoints: Vec<String> = Vec::new();
        for route in &snapshot.routes {
            if !route.enabled || route.source != self.source {
                continue;
            }
            let twin = if route.condition.reads_twin() {
                self.twin(message, twins).await?
            } else {
                None
            };
            let scope = Scope {
                message,
                twin: twin.as_deref(),
            };
            match route.condition.expr.eval(&scope).as_deref() {
                Some(Value::Bool(true)) => {
                    if !endpoints.contains(&route.endpoint) {
                        endpoints.push(route.endpoint.clone());
                    }
                }
                Some(Value::Bool(false)) => {}
                // IoT Hub logs an error in its routes resource log for these; a trace here.
                other => trace!(
                    route = route.name.as_str(),
                    offset = message.record().offset.0,
                    undefined = other.is_none(),
                    "condition is not a Boolean: the route does not match"
                ),
            }
        }
        if endpoints.is_empty()
            && self.source == RouteSource::DeviceMessages
            && let Some(fallback) = &snapshot.fallback
        {
            endpoints.push(fallback.clone());
        }
        Ok(endpoints)
    }

    async fn twin(
        &self,
        message: &MessageView<'_>,
        cache: &mut TwinCache,
    ) -> Result<Option<Arc<Value>>> {
        let Some(lookup) = &self.twins else {
            return Ok(None);
        };
        let key = (
            message.device_id().to_owned(),
            message.module_id().map(str::to_owned),
        );
        if let Some(twin) = cache.get(&key) {
            return Ok(twin.clone());
        }
        let twin = lookup.twin(&key.0, key.1.as_deref()).await?.map(Arc::new);
        cache.insert(key, twin.clone());
        Ok(twin)
    }

    /// `record` as sent to `endpoint`: with that endpoint's enrichments.
    async fn enriched(
        &self,
        snapshot: &RoutingSnapshot,
        endpoint: &str,
        message: &MessageView<'_>,
        twins: &mut TwinCache,
    ) -> Result<Record> {
        let mut record = message.record().record.clone();
        for enrichment in &snapshot.enrichments {
            if !enrichment.endpoints.iter().any(|e| e == endpoint) {
                continue;
            }
            let value = match &enrichment.value {
                EnrichmentValue::Static(v) => v.clone(),
                EnrichmentValue::HubName => self.hub_name.clone(),
                EnrichmentValue::Twin(steps) => {
                    let twin = self.twin(message, twins).await?;
                    let found = twin.as_deref().and_then(|t| {
                        steps
                            .iter()
                            .try_fold(t, |v, step| v.as_object()?.get(step.as_str()))
                    });
                    match found {
                        Some(Value::String(s)) => s.clone(),
                        Some(other) => other.to_string(),
                        // IoT Hub stamps the path itself when the twin has no such value.
                        None => format!("$twin.{}", steps.join(".")),
                    }
                }
            };
            record.headers.insert(enrichment.key.as_str(), value);
        }
        Ok(record)
    }
}

type TwinCache = HashMap<(String, Option<String>), Option<Arc<Value>>>;

#[async_trait]
impl StreamProcessor for RoutingProcessor {
    async fn process(&mut self, batch: &[StoredRecord], ctx: &mut Context) -> Result<()> {
        let snapshot = self.table.snapshot();
        if !self
            .seen
            .as_ref()
            .is_some_and(|seen| Arc::ptr_eq(seen, &snapshot))
        {
            debug!(
                partition = ctx.partition().0,
                routes = snapshot.routes.len(),
                enrichments = snapshot.enrichments.len(),
                fallback = snapshot.fallback.as_deref().unwrap_or("-"),
                "routing table picked up"
            );
            self.seen = Some(snapshot.clone());
        }
        let mut twins = TwinCache::new();
        for stored in batch {
            let message = MessageView::new(stored);
            let endpoints = self.endpoints(&snapshot, &message, &mut twins).await?;
            for endpoint in endpoints {
                let record = self
                    .enriched(&snapshot, &endpoint, &message, &mut twins)
                    .await?;
                ctx.emit(&endpoint, record);
            }
        }
        Ok(())
    }
}

impl ProcessorFactory for RoutingProcessor {
    fn create(&self, _partition: PartitionId) -> Result<Box<dyn StreamProcessor>> {
        let mut processor = self.clone();
        processor.seen = None;
        Ok(Box::new(processor))
    }
}
