//! `MemoryModuleStore`: module identities in memory only.

use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use async_trait::async_trait;
use iot_core::storage::Journaled;
use iot_core::{DeviceId, ModuleId};

use super::state::{ModuleState, Plan};
use super::{ModuleChangeSender, ModuleChanges, ModuleIdentity, ModuleStore, NewModule};
use crate::credentials::Credentials;
use crate::error::Result;
use crate::identity::ETag;

/// A [`ModuleStore`] held in memory; everything is lost when it is dropped.
///
/// ```
/// use iot_identity::{Credentials, MemoryModuleStore, ModuleStore, NewModule};
///
/// # tokio::runtime::Builder::new_current_thread().build().expect("rt").block_on(async {
/// let store = MemoryModuleStore::new();
/// let module = NewModule::new("edge-1".parse()?, "filter".parse()?,
///     Credentials::generate_symmetric_keys());
/// store.create(module).await?;
/// assert_eq!(store.list(&"edge-1".parse()?).await?.len(), 1);
/// # Ok::<(), iot_identity::Error>(())
/// # }).expect("example");
/// ```
#[derive(Debug, Default)]
pub struct MemoryModuleStore {
    state: Mutex<ModuleState>,
    changes: ModuleChangeSender,
}

impl MemoryModuleStore {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
    }

    fn state(&self) -> MutexGuard<'_, ModuleState> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn write<T>(&self, plan: impl FnOnce(&ModuleState) -> Result<Plan<T>>) -> Result<T> {
        let (out, changes) = {
            let mut state = self.state();
            let (ops, out) = plan(&state)?;
            for op in ops {
                state.apply(op);
            }
            out
        };
        for change in changes {
            self.changes.send(change);
        }
        Ok(out)
    }
}

#[async_trait]
impl ModuleStore for MemoryModuleStore {
    async fn create(&self, module: NewModule) -> Result<ModuleIdentity> {
        self.write(|s| s.plan_create(module))
    }

    async fn get(
        &self,
        device: &DeviceId,
        module: &ModuleId,
    ) -> Result<Option<Arc<ModuleIdentity>>> {
        Ok(self.state().get(device, module))
    }

    async fn list(&self, device: &DeviceId) -> Result<Vec<Arc<ModuleIdentity>>> {
        Ok(self.state().list(device))
    }

    async fn replace(
        &self,
        device: &DeviceId,
        module: &ModuleId,
        credentials: Credentials,
        managed_by: Option<String>,
        if_match: Option<ETag>,
    ) -> Result<ModuleIdentity> {
        self.write(|s| s.plan_replace(device, module, credentials, managed_by, if_match))
    }

    async fn delete(
        &self,
        device: &DeviceId,
        module: &ModuleId,
        if_match: Option<ETag>,
    ) -> Result<()> {
        self.write(|s| s.plan_delete(device, module, if_match))
    }

    async fn delete_device(&self, device: &DeviceId) -> Result<usize> {
        self.write(|s| s.plan_delete_device(device))
    }

    fn subscribe(&self) -> ModuleChanges {
        self.changes.subscribe()
    }
}
