//! `ProvisionerBuilder::sync_stores()` makes the provisioner call `Registry::sync` (and
//! `IdentityStore::sync`) before it finishes an intent, and only then: a registry whose sync
//! fails fails the operation when syncing is asked for, and is never synced otherwise.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use async_trait::async_trait;
use iot_core::DeviceId;
use iot_identity::MemoryIdentityStore;
use iot_provisioning::{Provisioner, Provisioning, RegisterRequest};
use iot_registry::{
    DeviceDocument, DeviceRecord, ETag, Error, MemoryRegistry, Page, PageRequest, Query, Registry,
    Result,
};
use serde_json::{Value, json};

/// A memory registry whose `sync` counts its calls and fails.
#[derive(Debug, Default)]
struct SyncFails {
    inner: MemoryRegistry,
    syncs: AtomicU64,
}

#[async_trait]
impl Registry for SyncFails {
    async fn create(&self, id: &DeviceId, doc: DeviceDocument) -> Result<DeviceRecord> {
        self.inner.create(id, doc).await
    }
    async fn get(&self, id: &DeviceId) -> Result<Option<DeviceRecord>> {
        self.inner.get(id).await
    }
    async fn replace(
        &self,
        id: &DeviceId,
        doc: DeviceDocument,
        if_match: Option<&ETag>,
    ) -> Result<DeviceRecord> {
        self.inner.replace(id, doc, if_match).await
    }
    async fn merge(
        &self,
        id: &DeviceId,
        patch: &Value,
        if_match: Option<&ETag>,
    ) -> Result<DeviceRecord> {
        self.inner.merge(id, patch, if_match).await
    }
    async fn delete(&self, id: &DeviceId, if_match: Option<&ETag>) -> Result<()> {
        self.inner.delete(id, if_match).await
    }
    async fn query(&self, query: &Query, page: &PageRequest) -> Result<Page> {
        self.inner.query(query, page).await
    }
    async fn count(&self, query: &Query) -> Result<u64> {
        self.inner.count(query).await
    }
    async fn sync(&self) -> Result<()> {
        self.syncs.fetch_add(1, Ordering::SeqCst);
        Err(Error::backend("test", "the disk is gone", true))
    }
}

async fn register(sync_stores: bool) -> (iot_provisioning::Result<()>, u64) {
    let registry = Arc::new(SyncFails::default());
    let mut builder = Provisioner::builder(
        Arc::new(MemoryIdentityStore::new()),
        Arc::clone(&registry) as Arc<dyn Registry>,
    );
    if sync_stores {
        builder = builder.sync_stores();
    }
    let p = builder.open().await.expect("open");
    let id = DeviceId::new("synced").unwrap();
    let result = p
        .register(RegisterRequest::new(id, json!({"floor": 1})))
        .await
        .map(drop);
    (result, registry.syncs.load(Ordering::SeqCst))
}

#[tokio::test]
async fn sync_stores_syncs_the_registry_before_finishing() {
    let (result, syncs) = register(true).await;
    assert!(syncs >= 1, "the registry was never synced");
    assert!(result.is_err(), "a failed sync must fail the operation");
}

#[tokio::test]
async fn without_sync_stores_the_registry_is_never_synced() {
    let (result, syncs) = register(false).await;
    result.expect("register");
    assert_eq!(syncs, 0);
}
