//! `MemoryIdentityStore`: identities in a hash map, for tests, single-process deployments and as the
//! cache inside `FileIdentityStore`.

use std::sync::{Arc, PoisonError, RwLock, RwLockReadGuard, RwLockWriteGuard};

use async_trait::async_trait;
use iot_core::{DeviceId, Timestamp};
use tracing::instrument;

use crate::credentials::Credentials;
use crate::error::Result;
use crate::identity::{DeviceIdentity, DeviceStatus, ETag, IdentityPage, NewIdentity};
use crate::index::{Index, Planned};
use crate::store::{ChangeSender, ChangeStream, IdentityStore, Lookup};

/// An [`IdentityStore`] held in memory only; everything is lost when it is dropped.
///
/// Lookups take a shared lock and hand out the stored record behind an `Arc` (one reference
/// count bumped, nothing copied or allocated). About 410 bytes per identity with two 32-byte
/// symmetric keys (`examples/identity_bench.rs` measures it).
///
/// ```
/// use iot_identity::{Credentials, IdentityStore, MemoryIdentityStore, NewIdentity};
///
/// # tokio_test_block_on(async {
/// let store = MemoryIdentityStore::new();
/// let id = "sensor-1".parse()?;
/// store.create(NewIdentity::new(id, Credentials::generate_symmetric_keys())).await?;
/// assert!(store.get(&"sensor-1".parse()?).await?.is_some());
/// # Ok::<(), iot_identity::Error>(())
/// # });
/// # fn tokio_test_block_on<F: std::future::Future>(f: F) -> F::Output {
/// #     tokio::runtime::Builder::new_current_thread().build().map(|rt| rt.block_on(f)).expect("runtime")
/// # }
/// ```
#[derive(Debug, Default)]
pub struct MemoryIdentityStore {
    index: RwLock<Index>,
    changes: ChangeSender,
}

impl MemoryIdentityStore {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
    }

    /// How many identities the store holds.
    pub fn len(&self) -> usize {
        self.read().len()
    }

    /// Whether the store holds no identity.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Pre-allocates room for `additional` more identities (for bulk loads).
    pub fn reserve(&self, additional: usize) {
        self.write().reserve(additional);
    }

    /// The identity of `id`, without going through an async call (the gateway's hot path).
    pub fn get_now(&self, id: &DeviceId) -> Option<Arc<DeviceIdentity>> {
        self.read().get(id).map(Arc::clone)
    }

    // Critical sections never panic halfway through a change, so a poisoned lock still guards
    // consistent data.
    fn read(&self) -> RwLockReadGuard<'_, Index> {
        self.index.read().unwrap_or_else(PoisonError::into_inner)
    }

    fn write(&self) -> RwLockWriteGuard<'_, Index> {
        self.index.write().unwrap_or_else(PoisonError::into_inner)
    }

    fn commit_put(&self, index: &mut Index, planned: Planned) -> DeviceIdentity {
        index.apply(planned.mutation());
        self.changes.send(planned.change);
        DeviceIdentity::clone(&planned.record)
    }
}

#[async_trait]
impl IdentityStore for MemoryIdentityStore {
    #[instrument(level = "debug", skip_all, fields(device = %identity.id))]
    async fn create(&self, identity: NewIdentity) -> Result<DeviceIdentity> {
        let mut index = self.write();
        let planned = index.plan_create(identity, Timestamp::now())?;
        Ok(self.commit_put(&mut index, planned))
    }

    fn get<'a>(&'a self, id: &'a DeviceId) -> Lookup<'a> {
        Lookup::ready(Ok(self.get_now(id)))
    }

    #[instrument(level = "debug", skip_all, fields(device = %id, enabled = status.is_enabled()))]
    async fn set_status(
        &self,
        id: &DeviceId,
        status: DeviceStatus,
        if_match: Option<ETag>,
    ) -> Result<DeviceIdentity> {
        let mut index = self.write();
        let planned = index.plan_set_status(id, status, if_match, Timestamp::now())?;
        Ok(self.commit_put(&mut index, planned))
    }

    #[instrument(level = "debug", skip_all, fields(device = %id, kind = credentials.kind_name()))]
    async fn replace_credentials(
        &self,
        id: &DeviceId,
        credentials: Credentials,
        if_match: Option<ETag>,
    ) -> Result<DeviceIdentity> {
        let mut index = self.write();
        let planned =
            index.plan_replace_credentials(id, credentials, if_match, Timestamp::now())?;
        Ok(self.commit_put(&mut index, planned))
    }

    #[instrument(level = "debug", skip_all, fields(device = %id))]
    async fn delete(&self, id: &DeviceId, if_match: Option<ETag>) -> Result<()> {
        let mut index = self.write();
        let (mutation, change) = index.plan_delete(id, if_match)?;
        index.apply(mutation);
        self.changes.send(change);
        Ok(())
    }

    async fn list(&self, after: Option<&DeviceId>, limit: usize) -> Result<IdentityPage> {
        self.read().list(after, limit)
    }

    fn subscribe(&self) -> ChangeStream {
        self.changes.subscribe()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn lookups_share_the_stored_record() {
        let store = MemoryIdentityStore::new();
        let id: DeviceId = "shared-1".parse().expect("id");
        let created = store
            .create(NewIdentity::new(
                id.clone(),
                Credentials::generate_symmetric_keys(),
            ))
            .await
            .expect("create");
        let (Some(a), Some(b)) = (store.get_now(&id), store.get(&id).await.expect("get")) else {
            panic!("the identity exists");
        };
        assert!(Arc::ptr_eq(&a, &b), "a lookup copies nothing");
        assert_eq!(*a, created);
        let updated = store
            .set_status(&id, DeviceStatus::disabled("test"), None)
            .await
            .expect("disable");
        assert!(a.status.is_enabled(), "a record held is a snapshot");
        assert_eq!(store.get_now(&id).as_deref(), Some(&updated));
    }
}
