//! Message routing over the hub's own stores: [`HubTwins`] gives the routing processor
//! (`iot_stream::routing`) the twin a route condition or an enrichment reads — tags from the
//! device registry, desired and reported properties from the gateway's twin store.

use std::sync::Arc;

use async_trait::async_trait;
use iot_core::DeviceId;
use iot_gateway::TwinStore;
use iot_registry::Registry;
use iot_stream::routing::TwinLookup;
use serde_json::{Value, json};

/// The twins of a hub for routing: `$twin.tags.…` from the registry record's `tags`,
/// `$twin.properties.desired|reported.…` from the [`TwinStore`].
///
/// A device the registry does not know has no twin (every `$twin` path is undefined). Module
/// twins are not kept by the gateway, so a module's message has no twin either (IoT Hub reads
/// the module twin then, which does not inherit the device's tags). Store failures are
/// retryable [`iot_stream::Error::External`] errors: the routing batch is retried.
#[derive(Clone, Debug)]
pub struct HubTwins {
    registry: Arc<dyn Registry>,
    twins: Arc<dyn TwinStore>,
}

impl HubTwins {
    /// Twins from `registry` (tags) and `twins` (properties).
    pub fn new(registry: Arc<dyn Registry>, twins: Arc<dyn TwinStore>) -> Self {
        HubTwins { registry, twins }
    }
}

#[async_trait]
impl TwinLookup for HubTwins {
    async fn twin(&self, device: &str, module: Option<&str>) -> iot_stream::Result<Option<Value>> {
        if module.is_some() {
            return Ok(None);
        }
        let Ok(id) = DeviceId::new(device) else {
            return Ok(None);
        };
        let external = |what: &'static str| {
            move |e: &dyn std::fmt::Display| iot_stream::Error::External {
                what,
                reason: e.to_string(),
            }
        };
        let record = self
            .registry
            .get(&id)
            .await
            .map_err(|e| external("registry")(&e))?;
        let Some(record) = record else {
            return Ok(None);
        };
        let twin = self
            .twins
            .get(&id)
            .await
            .map_err(|e| external("twin store")(&e))?;
        Ok(Some(json!({
            "tags": record.tags,
            "properties": {
                "desired": twin.desired.properties,
                "reported": twin.reported.properties,
            }
        })))
    }
}
