//! How a grant's query or hierarchy node is decided: a trait the caller implements, so this
//! crate needs no registry.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Debug;
use std::sync::Arc;

use async_trait::async_trait;
use iot_core::DeviceId;

use super::grant::HierarchyNode;
use crate::error::Result;

/// Decides membership of the device sets that need outside knowledge: registry queries and
/// hierarchy nodes. `iot_provisioning::RegistryDeviceSets` implements it over any registry.
///
/// # Contract
///
/// * Answers reflect the device's current record: a device moved to another floor leaves the old
///   floor's grants at once.
/// * A device the resolver does not know matches nothing.
/// * An error (an unreachable registry) makes the check deny: access control fails closed.
#[async_trait]
pub trait DeviceSets: Send + Sync + Debug + 'static {
    /// Whether `device` satisfies the `WHERE` clause of the registry query `query`.
    async fn matches_query(&self, device: &DeviceId, query: &str) -> Result<bool>;

    /// Whether `device` lies under `node` (its metadata has each of the node's values).
    async fn under_node(&self, device: &DeviceId, node: &HierarchyNode) -> Result<bool>;

    /// Refuses a query that can never match (bad syntax) when a grant names it. The provided
    /// method accepts everything.
    fn check_query(&self, query: &str) -> Result<()> {
        let _ = query;
        Ok(())
    }
}

#[async_trait]
impl<T: DeviceSets + ?Sized> DeviceSets for Arc<T> {
    async fn matches_query(&self, device: &DeviceId, query: &str) -> Result<bool> {
        (**self).matches_query(device, query).await
    }
    async fn under_node(&self, device: &DeviceId, node: &HierarchyNode) -> Result<bool> {
        (**self).under_node(device, node).await
    }
    fn check_query(&self, query: &str) -> Result<()> {
        (**self).check_query(query)
    }
}

/// [`DeviceSets`] from tables given up front: the members of each query, and each device's
/// hierarchy metadata. For deployments without a registry, and for tests. A query it was not
/// told about matches nothing.
#[derive(Debug, Default, Clone)]
pub struct StaticDeviceSets {
    queries: BTreeMap<String, BTreeSet<DeviceId>>,
    metadata: BTreeMap<DeviceId, BTreeMap<String, String>>,
}

impl StaticDeviceSets {
    /// No query members and no metadata.
    pub fn new() -> Self {
        Self::default()
    }

    /// `query` matches exactly `devices`.
    pub fn with_query(
        mut self,
        query: impl Into<String>,
        devices: impl IntoIterator<Item = DeviceId>,
    ) -> Self {
        self.queries
            .insert(query.into(), devices.into_iter().collect());
        self
    }

    /// `device` has the hierarchy metadata `levels` (key, value).
    pub fn with_metadata<K: Into<String>, V: Into<String>>(
        mut self,
        device: DeviceId,
        levels: impl IntoIterator<Item = (K, V)>,
    ) -> Self {
        self.metadata.insert(
            device,
            levels
                .into_iter()
                .map(|(k, v)| (k.into(), v.into()))
                .collect(),
        );
        self
    }
}

#[async_trait]
impl DeviceSets for StaticDeviceSets {
    async fn matches_query(&self, device: &DeviceId, query: &str) -> Result<bool> {
        Ok(self.queries.get(query).is_some_and(|m| m.contains(device)))
    }

    async fn under_node(&self, device: &DeviceId, node: &HierarchyNode) -> Result<bool> {
        Ok(self.metadata.get(device).is_some_and(|meta| {
            node.levels()
                .iter()
                .all(|(k, v)| meta.get(k).is_some_and(|have| have == v))
        }))
    }
}
