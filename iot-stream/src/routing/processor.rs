//! The routing processor: applies a [`RouteTable`] to the records of one topic.

use std::collections::HashMap;
use std::sync::Arc;

use async_trait::async_trait;
use iot_core::headers::HeaderCache;
use iot_core::{PartitionId, Record, StoredRecord};
use serde_json::Value;
use tracing::{debug, trace};

use super::compiled::Test;
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
#[derive(Debug)]
pub struct RoutingProcessor {
    table: RouteTable,
    source: RouteSource,
    hub_name: String,
    twins: Option<Arc<dyn TwinLookup>>,
    plan: Option<Arc<Plan>>,
    /// The header text of the records sent, shared between the copies: a partition's messages
    /// carry the same few names and values (content type, encoding, a level), so a copy
    /// references them instead of allocating each.
    headers: HeaderCache,
}

/// A snapshot worked out for this processor's source once, when it is picked up, rather than
/// for every record: which routes run, their endpoints (each once, by index) and each
/// endpoint's enrichments, with the values that do not depend on the message.
#[derive(Debug)]
struct Plan {
    snapshot: Arc<RoutingSnapshot>,
    /// Index into `snapshot.routes` and into `endpoints` of each route that runs, in order,
    /// with its condition reading body members by slot ([`with_member_slots`](super::ast::Expr::with_member_slots)), compiled
    /// ([`Test`]).
    routes: Vec<(usize, usize, Test)>,
    /// The endpoints of the running routes, then the fallback.
    endpoints: Vec<Endpoint>,
    /// Index into `endpoints` of the fallback (device messages only).
    fallback: Option<usize>,
    /// The top-level body members the running routes read, sorted: only these are parsed.
    members: Vec<String>,
}

#[derive(Debug)]
struct Endpoint {
    topic: String,
    /// The enrichments of messages sent here: their keys and values. Shared (`Arc`), so that
    /// stamping them on a record copies no text.
    enrichments: Vec<(Arc<str>, Stamp)>,
}

/// An enrichment's value, as far as it is known without the message.
#[derive(Debug)]
enum Stamp {
    Fixed(Arc<str>),
    Twin(Vec<String>),
}

impl Plan {
    fn new(snapshot: Arc<RoutingSnapshot>, source: RouteSource, hub_name: &str) -> Self {
        let mut endpoints: Vec<Endpoint> = Vec::new();
        let mut index = |topic: &str| match endpoints.iter().position(|e| e.topic == topic) {
            Some(i) => i,
            None => {
                let enrichments = snapshot
                    .enrichments
                    .iter()
                    .filter(|e| e.endpoints.iter().any(|t| t == topic))
                    .map(|e| {
                        let stamp = match &e.value {
                            EnrichmentValue::Static(v) => Stamp::Fixed(Arc::from(v.as_str())),
                            EnrichmentValue::HubName => Stamp::Fixed(Arc::from(hub_name)),
                            EnrichmentValue::Twin(steps) => Stamp::Twin(steps.clone()),
                        };
                        (Arc::from(e.key.as_str()), stamp)
                    })
                    .collect();
                endpoints.push(Endpoint {
                    topic: topic.to_owned(),
                    enrichments,
                });
                endpoints.len() - 1
            }
        };
        let mut running = Vec::new();
        let mut members = Vec::new();
        for (i, route) in snapshot.routes.iter().enumerate() {
            if route.enabled && route.source == source {
                running.push((i, index(&route.endpoint)));
                route.condition.expr.body_members(&mut members);
            }
        }
        members.sort_unstable();
        members.dedup();
        let routes = running
            .into_iter()
            .map(|(i, endpoint)| {
                let expr = snapshot.routes[i]
                    .condition
                    .expr
                    .with_member_slots(&members);
                (i, endpoint, Test::compile(&expr))
            })
            .collect();
        let fallback = match &snapshot.fallback {
            Some(topic) if source == RouteSource::DeviceMessages => Some(index(topic)),
            _ => None,
        };
        Plan {
            snapshot,
            routes,
            endpoints,
            fallback,
            members,
        }
    }
}

/// A copy with the same table, source, hub name and twins; what it works out per snapshot and
/// the header text it shares start afresh.
impl Clone for RoutingProcessor {
    fn clone(&self) -> Self {
        RoutingProcessor {
            table: self.table.clone(),
            source: self.source,
            hub_name: self.hub_name.clone(),
            twins: self.twins.clone(),
            plan: None,
            headers: HeaderCache::new(),
        }
    }
}

impl RoutingProcessor {
    /// Routes device messages of hub `hub_name` (the value of `$iothubname`) by `table`.
    pub fn new(table: RouteTable, hub_name: &str) -> Self {
        RoutingProcessor {
            table,
            source: RouteSource::DeviceMessages,
            hub_name: hub_name.to_owned(),
            twins: None,
            plan: None,
            headers: HeaderCache::new(),
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

    /// Puts in `matched` the endpoints (indices into `plan.endpoints`) `message` goes to, in
    /// route order, each once. `twin` is the message's twin, looked up on first need.
    async fn endpoints(
        &self,
        plan: &Plan,
        message: &MessageView<'_>,
        twin: &mut MessageTwin<'_>,
        matched: &mut Vec<usize>,
    ) -> Result<()> {
        matched.clear();
        for (route, endpoint, test) in &plan.routes {
            let (route, endpoint) = (&plan.snapshot.routes[*route], *endpoint);
            let twin = if route.condition.reads_twin() {
                twin.get(self, message).await?
            } else {
                None
            };
            let scope = Scope { message, twin };
            match test.eval(&scope) {
                Some(true) if !matched.contains(&endpoint) => matched.push(endpoint),
                // Matched, to an endpoint already in the list; or not matched.
                Some(_) => {}
                // IoT Hub logs an error in its routes resource log for these; a trace here.
                None if tracing::enabled!(tracing::Level::TRACE) => trace!(
                    route = route.name.as_str(),
                    offset = message.record().offset.0,
                    // The compiled test does not tell the two apart; the tree does.
                    undefined = route.condition.expr.eval(&scope).is_none(),
                    "condition is not a Boolean: the route does not match"
                ),
                None => {}
            }
        }
        if matched.is_empty()
            && let Some(fallback) = plan.fallback
        {
            matched.push(fallback);
        }
        Ok(())
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

    /// `message` as sent to `endpoint`: with that endpoint's enrichments.
    async fn enriched(
        &mut self,
        endpoint: &Endpoint,
        message: &MessageView<'_>,
        twin: &mut MessageTwin<'_>,
    ) -> Result<Record> {
        let mut record = message
            .record()
            .record
            .clone_sharing(&mut self.headers, endpoint.enrichments.len());
        for (key, stamp) in &endpoint.enrichments {
            let value = match stamp {
                Stamp::Fixed(v) => {
                    record.headers.insert_shared_pair(key, v);
                    continue;
                }
                Stamp::Twin(steps) => {
                    let found = twin.get(self, message).await?.and_then(|t| {
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
            record.headers.insert(key.as_ref(), value);
        }
        Ok(record)
    }
}

type TwinCache = HashMap<(String, Option<String>), Option<Arc<Value>>>;

/// One message's twin: looked up (through the batch's cache) on first need, then kept, so that
/// routes and enrichments that read it do not look it up again.
struct MessageTwin<'c> {
    cache: &'c mut TwinCache,
    twin: Option<Option<Arc<Value>>>,
}

impl MessageTwin<'_> {
    async fn get(
        &mut self,
        processor: &RoutingProcessor,
        message: &MessageView<'_>,
    ) -> Result<Option<&Value>> {
        if self.twin.is_none() {
            self.twin = Some(processor.twin(message, self.cache).await?);
        }
        Ok(self.twin.as_ref().and_then(|t| t.as_deref()))
    }
}

#[async_trait]
impl StreamProcessor for RoutingProcessor {
    async fn process(&mut self, batch: &[StoredRecord], ctx: &mut Context) -> Result<()> {
        let snapshot = self.table.snapshot();
        let plan = match &self.plan {
            Some(plan) if Arc::ptr_eq(&plan.snapshot, &snapshot) => plan.clone(),
            _ => {
                debug!(
                    partition = ctx.partition().0,
                    routes = snapshot.routes.len(),
                    enrichments = snapshot.enrichments.len(),
                    fallback = snapshot.fallback.as_deref().unwrap_or("-"),
                    "routing table picked up"
                );
                let plan = Arc::new(Plan::new(snapshot, self.source, &self.hub_name));
                self.plan = Some(plan.clone());
                plan
            }
        };
        let mut cache = TwinCache::new();
        // Most messages go to one endpoint (a route's or the fallback).
        ctx.reserve(batch.len());
        let mut matched = Vec::with_capacity(plan.endpoints.len());
        for stored in batch {
            let message = MessageView::projected(stored, &plan.members);
            let mut twin = MessageTwin {
                cache: &mut cache,
                twin: None,
            };
            self.endpoints(&plan, &message, &mut twin, &mut matched)
                .await?;
            for &endpoint in &matched {
                let endpoint = &plan.endpoints[endpoint];
                let record = self.enriched(endpoint, &message, &mut twin).await?;
                ctx.emit(&endpoint.topic, record);
            }
        }
        Ok(())
    }
}

impl ProcessorFactory for RoutingProcessor {
    fn create(&self, _partition: PartitionId) -> Result<Box<dyn StreamProcessor>> {
        Ok(Box::new(self.clone()))
    }
}
