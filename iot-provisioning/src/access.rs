//! [`RegistryDeviceSets`]: the access matrix's query and hierarchy grants decided by the
//! registry. It lives here because this crate already depends on both the identity store (which
//! defines [`DeviceSets`]) and the registry; neither of those depends on the other.

use std::collections::HashMap;
use std::fmt;
use std::sync::{Arc, Mutex, PoisonError};

use async_trait::async_trait;
use iot_core::DeviceId;
use iot_identity::access::{DeviceSets, HierarchyNode};
use iot_registry::{DeviceRecord, Query, Registry};
use serde_json::Value;

/// How many parsed grant queries are kept; the cache is emptied when it would grow past this.
const QUERY_CACHE: usize = 1024;

/// Decides grants over registry queries and hierarchy nodes from the device's registry record:
/// a query set holds the device if the query's `WHERE` clause matches the record (`ORDER BY` and
/// `LIMIT` play no part); a node `building=HQ/floor=3` holds it if its metadata has each value
/// (`metadata.building` is `"HQ"`, `metadata.floor` is `3` or `"3"`; keys may be dotted paths).
/// A device without a record is in no such set.
///
/// ```
/// use std::sync::Arc;
/// use iot_identity::access::{DeviceSets, HierarchyNode};
/// use iot_provisioning::access::RegistryDeviceSets;
/// use iot_registry::{DeviceDocument, MemoryRegistry, Registry};
/// use serde_json::json;
///
/// # tokio::runtime::Builder::new_current_thread().build().expect("rt").block_on(async {
/// let registry = Arc::new(MemoryRegistry::new());
/// let doc = DeviceDocument::with_metadata(json!({"building": "HQ", "floor": 3})).expect("object");
/// registry.create(&"pump-7".parse()?, doc).await?;
/// let sets = RegistryDeviceSets::new(registry);
/// let floor: HierarchyNode = "building=HQ/floor=3".parse()?;
/// assert!(sets.under_node(&"pump-7".parse()?, &floor).await?);
/// let q = "SELECT * FROM devices WHERE metadata.floor > 2";
/// assert!(sets.matches_query(&"pump-7".parse()?, q).await?);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// # }).expect("example");
/// ```
pub struct RegistryDeviceSets {
    registry: Arc<dyn Registry>,
    queries: Mutex<HashMap<String, Arc<Query>>>,
}

impl fmt::Debug for RegistryDeviceSets {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RegistryDeviceSets")
            .field("registry", &self.registry)
            .finish_non_exhaustive()
    }
}

impl RegistryDeviceSets {
    /// Sets decided by `registry`.
    pub fn new(registry: Arc<dyn Registry>) -> Self {
        RegistryDeviceSets {
            registry,
            queries: Mutex::new(HashMap::new()),
        }
    }

    fn parsed(&self, text: &str) -> iot_identity::Result<Arc<Query>> {
        let mut cache = self.queries.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(q) = cache.get(text) {
            return Ok(Arc::clone(q));
        }
        let query =
            Arc::new(
                Query::parse(text).map_err(|e| iot_identity::Error::InvalidInput {
                    reason: format!("a grant's registry query does not parse: {e}"),
                })?,
            );
        if cache.len() >= QUERY_CACHE {
            cache.clear();
        }
        cache.insert(text.to_owned(), Arc::clone(&query));
        Ok(query)
    }

    async fn record(&self, device: &DeviceId) -> iot_identity::Result<Option<DeviceRecord>> {
        self.registry.get(device).await.map_err(|e| {
            let retryable = e.is_retryable();
            iot_identity::Error::backend("registry", e, retryable)
        })
    }
}

/// The text a metadata value is compared by: strings as they are, numbers and booleans as JSON
/// prints them; objects, arrays and null match no node value.
fn text_of(value: &Value) -> Option<String> {
    match value {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        Value::Bool(b) => Some(b.to_string()),
        _ => None,
    }
}

fn lookup<'a>(metadata: &'a serde_json::Map<String, Value>, path: &str) -> Option<&'a Value> {
    let mut parts = path.split('.');
    let mut value = metadata.get(parts.next()?)?;
    for part in parts {
        value = value.as_object()?.get(part)?;
    }
    Some(value)
}

#[async_trait]
impl DeviceSets for RegistryDeviceSets {
    async fn matches_query(&self, device: &DeviceId, query: &str) -> iot_identity::Result<bool> {
        let query = self.parsed(query)?;
        Ok(self
            .record(device)
            .await?
            .is_some_and(|record| query.matches(&record)))
    }

    async fn under_node(
        &self,
        device: &DeviceId,
        node: &HierarchyNode,
    ) -> iot_identity::Result<bool> {
        Ok(self.record(device).await?.is_some_and(|record| {
            node.levels().iter().all(|(key, want)| {
                lookup(&record.metadata, key)
                    .and_then(text_of)
                    .is_some_and(|have| have == *want)
            })
        }))
    }

    fn check_query(&self, query: &str) -> iot_identity::Result<()> {
        self.parsed(query).map(drop)
    }
}

#[cfg(test)]
mod tests {
    use iot_registry::{DeviceDocument, MemoryRegistry};
    use serde_json::json;

    use super::*;

    #[tokio::test]
    async fn nodes_and_queries_follow_the_record() {
        let registry = Arc::new(MemoryRegistry::new());
        let sets = RegistryDeviceSets::new(registry.clone());
        let id: DeviceId = "pump-7".parse().expect("id");
        let doc = |floor: Value| {
            DeviceDocument::with_metadata(json!({"site": {"building": "HQ"}, "floor": floor}))
                .expect("object")
        };
        let node: HierarchyNode = "site.building=HQ/floor=3".parse().expect("node");
        let query =
            "SELECT * FROM devices WHERE metadata.floor = 3 ORDER BY metadata.floor LIMIT 1";
        assert!(
            !sets.under_node(&id, &node).await.expect("node"),
            "no record"
        );
        assert!(!sets.matches_query(&id, query).await.expect("query"));
        registry.create(&id, doc(json!(3))).await.expect("create");
        assert!(sets.under_node(&id, &node).await.expect("node"));
        assert!(sets.matches_query(&id, query).await.expect("query"));
        registry
            .replace(&id, doc(json!("3")), None)
            .await
            .expect("replace");
        assert!(
            sets.under_node(&id, &node).await.expect("node"),
            "\"3\" is 3"
        );
        registry
            .replace(&id, doc(json!(4)), None)
            .await
            .expect("moved");
        assert!(!sets.under_node(&id, &node).await.expect("node"));
        assert!(!sets.matches_query(&id, query).await.expect("query"));
        let other: HierarchyNode = "site=HQ".parse().expect("node");
        assert!(
            !sets
                .under_node(&id, &other)
                .await
                .expect("object values match nothing")
        );
        assert!(sets.check_query("SELECT * FROM").is_err());
        assert!(sets.matches_query(&id, "not a query").await.is_err());
    }
}
