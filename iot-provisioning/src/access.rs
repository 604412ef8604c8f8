//! [`RegistryDeviceSets`]: the access matrix's query and hierarchy grants decided by the
//! registry, and [`RecordFilter`]: the same rules applied to records already in hand (a listing's
//! page). They live here because this crate already depends on both the identity store (which
//! defines [`DeviceSets`]) and the registry; neither of those depends on the other.

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::sync::{Arc, Mutex, PoisonError};

use async_trait::async_trait;
use iot_core::DeviceId;
use iot_identity::access::{DeviceSet, DeviceSets, HierarchyNode};
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
/// use iot_identity::access::{DeviceSet, DeviceSets, HierarchyNode};
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

/// Whether `record` lies under `node`: each level's metadata value, compared as text.
fn node_holds(node: &HierarchyNode, record: &DeviceRecord) -> bool {
    node.levels().iter().all(|(key, want)| {
        lookup(&record.metadata, key)
            .and_then(text_of)
            .is_some_and(|have| have == *want)
    })
}

/// A user's device sets (the sets of their grants that give one permission), decided on
/// registry records already in hand by [`RegistryDeviceSets`]' rules, with no registry read:
/// what a listing (`GET /devices`, a twin query, a count) needs to keep only the devices the
/// user may see while it pages through the registry.
///
/// ```
/// use iot_identity::access::DeviceSet;
/// use iot_provisioning::access::RecordFilter;
/// use iot_core::Timestamp;
/// use iot_registry::{DeviceDocument, DeviceRecord, ETag};
/// use serde_json::json;
///
/// let filter = RecordFilter::new([
///     DeviceSet::Node("building=HQ".parse()?),
///     DeviceSet::query("SELECT * FROM devices WHERE metadata.kind = 'tank'")?,
/// ]);
/// let doc = DeviceDocument::with_metadata(json!({"building": "HQ"})).ok_or("an object")?;
/// let now = Timestamp::now();
/// let record = DeviceRecord::new("pump-7".parse()?, doc, ETag::new("1"), now, now);
/// assert!(filter.holds(&record));
/// assert!(!filter.is_everything());
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Clone, Debug, Default)]
pub struct RecordFilter {
    everything: bool,
    devices: HashSet<DeviceId>,
    queries: Vec<Arc<Query>>,
    nodes: Vec<HierarchyNode>,
}

impl RecordFilter {
    /// Holds every device.
    pub fn everything() -> Self {
        RecordFilter {
            everything: true,
            ..RecordFilter::default()
        }
    }

    /// Holds the devices of any of `sets`. A query that does not parse holds nothing (grants
    /// are checked when given, so only a grant written by an older program can be one).
    pub fn new(sets: impl IntoIterator<Item = DeviceSet>) -> Self {
        let mut filter = RecordFilter::default();
        for set in sets {
            match set {
                DeviceSet::All => filter.everything = true,
                DeviceSet::Device(id) => {
                    filter.devices.insert(id);
                }
                DeviceSet::Query(text) => match Query::parse(&text) {
                    Ok(query) => filter.queries.push(Arc::new(query)),
                    Err(e) => {
                        tracing::warn!(error = %e, "a grant's query does not parse; it holds no device")
                    }
                },
                DeviceSet::Node(node) => filter.nodes.push(node),
                // A kind of set this build does not know holds nothing: fail closed.
                _ => {}
            }
        }
        filter
    }

    /// Whether it holds every device (a grant over all devices): a listing needs no filtering.
    pub fn is_everything(&self) -> bool {
        self.everything
    }

    /// Whether it holds nothing at all.
    pub fn is_empty(&self) -> bool {
        !self.everything
            && self.devices.is_empty()
            && self.queries.is_empty()
            && self.nodes.is_empty()
    }

    /// Whether the device of `record` is in one of the sets.
    pub fn holds(&self, record: &DeviceRecord) -> bool {
        self.everything
            || self.devices.contains(&record.device_id)
            || self.queries.iter().any(|q| q.matches(record))
            || self.nodes.iter().any(|n| node_holds(n, record))
    }
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
        Ok(self
            .record(device)
            .await?
            .is_some_and(|record| node_holds(node, &record)))
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
