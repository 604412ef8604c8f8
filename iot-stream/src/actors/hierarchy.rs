//! The actor hierarchy (building → floor → room → sensor) taken from registry metadata.

use std::collections::HashMap;

use iot_registry::{Query, Registry, RegistryExt};
use serde_json::Value;
use tracing::warn;

use crate::error::{Error, Result};

/// Which actor is whose parent: a device's parent is the node of its deepest location level,
/// each node's parent is the node one level up.
///
/// Node ids name their path, `level=value` pairs joined by commas (`building=B7`,
/// `building=B7,floor=2`, `building=B7,floor=2,room=R1`), so they are valid device ids and
/// record keys, unique per path, and an actor can tell its level from its id.
///
/// ```
/// # tokio::runtime::Builder::new_current_thread().build().unwrap().block_on(async {
/// use iot_core::DeviceId;
/// use iot_registry::{DeviceDocument, MemoryRegistry, Registry};
/// use iot_stream::actors::Hierarchy;
/// use serde_json::json;
///
/// let registry = MemoryRegistry::new();
/// let doc = DeviceDocument::with_metadata(json!({"building": "B7", "floor": 2, "room": "R1"})).unwrap();
/// registry.create(&DeviceId::new("t-1")?, doc).await?;
/// let tree = Hierarchy::from_registry(&registry, &["building", "floor", "room"]).await?;
/// assert_eq!(tree.parent("t-1"), Some("building=B7,floor=2,room=R1"));
/// assert_eq!(tree.parent("building=B7,floor=2,room=R1"), Some("building=B7,floor=2"));
/// assert_eq!(tree.parent("building=B7"), None);
/// # Ok::<(), Box<dyn std::error::Error>>(()) }).unwrap();
/// ```
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Hierarchy {
    parents: HashMap<String, String>,
}

impl Hierarchy {
    /// An empty hierarchy.
    pub fn new() -> Self {
        Self::default()
    }

    /// Makes `parent` the parent of `child`.
    pub fn insert(&mut self, child: impl Into<String>, parent: impl Into<String>) {
        self.parents.insert(child.into(), parent.into());
    }

    /// The parent of `id`, if it has one.
    pub fn parent(&self, id: &str) -> Option<&str> {
        self.parents.get(id).map(String::as_str)
    }

    /// The direct children of `id`, sorted.
    pub fn children(&self, id: &str) -> Vec<&str> {
        let mut out: Vec<&str> = self
            .parents
            .iter()
            .filter(|(_, p)| p.as_str() == id)
            .map(|(c, _)| c.as_str())
            .collect();
        out.sort_unstable();
        out
    }

    /// How many child → parent links it holds.
    pub fn len(&self) -> usize {
        self.parents.len()
    }

    /// Whether it holds no link.
    pub fn is_empty(&self) -> bool {
        self.parents.is_empty()
    }

    /// The node id of a path of `(level, value)` pairs.
    pub fn node_id<'a>(path: impl IntoIterator<Item = (&'a str, &'a str)>) -> String {
        let mut id = String::new();
        for (level, value) in path {
            if !id.is_empty() {
                id.push(',');
            }
            id.push_str(level);
            id.push('=');
            id.push_str(value);
        }
        id
    }

    /// Builds the hierarchy from every device's metadata fields named by `levels`, outermost
    /// first (`["building", "floor", "room"]`). A device's path is the prefix of levels it has
    /// (strings or numbers); a device with none has no parent. A value that could not be part
    /// of a node id (empty, or with characters device ids refuse, `,` or `=`) cuts the path
    /// there, with a warning.
    pub async fn from_registry<R: Registry + ?Sized>(
        registry: &R,
        levels: &[&str],
    ) -> Result<Hierarchy> {
        let query = Query::parse("SELECT * FROM devices").map_err(|e| Error::External {
            what: "registry",
            reason: e.to_string(),
        })?;
        let devices = registry
            .query_all(&query)
            .await
            .map_err(|e| Error::External {
                what: "registry",
                reason: e.to_string(),
            })?;
        let mut tree = Hierarchy::new();
        for device in devices {
            let mut path: Vec<(&str, String)> = Vec::new();
            for level in levels {
                let value = match device.metadata.get(*level) {
                    Some(Value::String(s)) => s.clone(),
                    Some(Value::Number(n)) => n.to_string(),
                    _ => break,
                };
                if value.is_empty()
                    || value.contains([',', '='])
                    || !value.chars().all(iot_core::device_id::is_allowed)
                {
                    warn!(device = %device.device_id, level, "location value unusable in a node id; path cut here");
                    break;
                }
                path.push((level, value));
            }
            let ids: Vec<String> = (1..=path.len())
                .map(|n| Hierarchy::node_id(path[..n].iter().map(|(l, v)| (*l, v.as_str()))))
                .collect();
            if let Some(leaf_parent) = ids.last() {
                tree.insert(device.device_id.as_str(), leaf_parent.clone());
            }
            for pair in ids.windows(2) {
                tree.insert(pair[1].clone(), pair[0].clone());
            }
        }
        Ok(tree)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use iot_core::DeviceId;
    use iot_registry::{DeviceDocument, MemoryRegistry};
    use serde_json::json;

    #[tokio::test]
    async fn paths_are_cut_at_missing_or_unusable_levels() {
        let registry = MemoryRegistry::new();
        for (id, metadata) in [
            ("full", json!({"building": "B", "floor": 1, "room": "R1"})),
            ("no-room", json!({"building": "B", "floor": 2})),
            ("gap", json!({"building": "B", "room": "R9"})),
            (
                "comma",
                json!({"building": "B", "floor": "1,2", "room": "R1"}),
            ),
            ("equals", json!({"building": "B=C"})),
            ("nothing", json!({"kind": "temp"})),
            ("object", json!({"building": {"name": "B"}})),
        ] {
            let doc = DeviceDocument::with_metadata(metadata).expect("an object");
            registry
                .create(&DeviceId::new(id).expect("valid"), doc)
                .await
                .expect("created");
        }
        let tree = Hierarchy::from_registry(&registry, &["building", "floor", "room"])
            .await
            .expect("read");
        assert_eq!(tree.parent("full"), Some("building=B,floor=1,room=R1"));
        assert_eq!(
            tree.parent("building=B,floor=1,room=R1"),
            Some("building=B,floor=1")
        );
        assert_eq!(tree.parent("building=B,floor=1"), Some("building=B"));
        assert_eq!(tree.parent("building=B"), None);
        assert_eq!(tree.parent("no-room"), Some("building=B,floor=2"));
        // A missing level ends the path: a room without a floor hangs off the building.
        assert_eq!(tree.parent("gap"), Some("building=B"));
        assert_eq!(tree.parent("comma"), Some("building=B"));
        for id in ["equals", "nothing", "object"] {
            assert_eq!(tree.parent(id), None, "{id}");
        }
        assert_eq!(
            tree.children("building=B"),
            vec!["building=B,floor=1", "building=B,floor=2", "comma", "gap"]
        );
    }
}
