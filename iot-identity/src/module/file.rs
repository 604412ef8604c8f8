//! `FileModuleStore`: module identities in memory, made durable by the storage kit's
//! write-ahead journal with snapshots ([`iot_core::storage::journal`]).

use std::path::{Path, PathBuf};
use std::sync::Arc;

use async_trait::async_trait;
use iot_core::storage::{Durability, Journal, JournalConfig, Recovery, run_blocking};
use iot_core::{DeviceId, ModuleId};

use super::state::{ModuleState, Plan};
use super::{ModuleChangeSender, ModuleChanges, ModuleIdentity, ModuleStore, NewModule};
use crate::credentials::Credentials;
use crate::error::{Error, Result};
use crate::identity::ETag;

/// The journal's magic (first version).
const MAGIC: &[u8; 8] = b"IOTMOD01";

/// How a [`FileModuleStore`] is opened.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct FileModuleStoreConfig {
    /// When writes are acknowledged. Default [`Durability::Fsync`]; [`Durability::Interval`] is
    /// refused.
    pub durability: Durability,
    /// What opening does with damage followed by intact data. Default [`Recovery::Strict`].
    pub recovery: Recovery,
}

impl Default for FileModuleStoreConfig {
    fn default() -> Self {
        FileModuleStoreConfig {
            durability: Durability::Fsync,
            recovery: Recovery::Strict,
        }
    }
}

impl FileModuleStoreConfig {
    /// Sets when writes are acknowledged.
    pub fn durability(mut self, durability: Durability) -> Self {
        self.durability = durability;
        self
    }

    /// Sets what opening does with corruption.
    pub fn recovery(mut self, recovery: Recovery) -> Self {
        self.recovery = recovery;
        self
    }
}

/// A durable [`ModuleStore`] in a directory of its own: every write is journaled (and, with
/// [`Durability::Fsync`], fsynced; concurrent writers share one) before it is acknowledged.
/// The directory holds the modules' keys: keep it as private as the device identity store's.
#[derive(Debug, Clone)]
pub struct FileModuleStore {
    journal: Journal<ModuleState>,
    changes: ModuleChangeSender,
    dir: PathBuf,
}

impl FileModuleStore {
    /// Opens (or creates) the store in `dir`, recovering from any crash.
    pub async fn open(dir: impl AsRef<Path>, config: FileModuleStoreConfig) -> Result<Self> {
        let dir = dir.as_ref().to_owned();
        run_blocking(move || Self::open_blocking(&dir, config)).await
    }

    /// [`open`](Self::open) on the calling thread.
    pub fn open_blocking(dir: &Path, config: FileModuleStoreConfig) -> Result<Self> {
        let journal_config =
            JournalConfig::with_durability(config.durability).recovery(config.recovery);
        let journal = Journal::open(dir, MAGIC, ModuleState::default(), journal_config)?;
        Ok(FileModuleStore {
            journal,
            changes: ModuleChangeSender::default(),
            dir: dir.to_owned(),
        })
    }

    /// The store's directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    async fn write<T>(&self, plan: impl FnOnce(&ModuleState) -> Result<Plan<T>>) -> Result<T>
    where
        T: Send,
    {
        let (out, changes) = self.journal.write::<_, Error>(plan).await?;
        for change in changes {
            self.changes.send(change);
        }
        Ok(out)
    }
}

#[async_trait]
impl ModuleStore for FileModuleStore {
    async fn create(&self, module: NewModule) -> Result<ModuleIdentity> {
        self.write(|s| s.plan_create(module)).await
    }

    async fn get(
        &self,
        device: &DeviceId,
        module: &ModuleId,
    ) -> Result<Option<Arc<ModuleIdentity>>> {
        Ok(self.journal.read(|s| s.get(device, module)).await?)
    }

    async fn list(&self, device: &DeviceId) -> Result<Vec<Arc<ModuleIdentity>>> {
        Ok(self.journal.read(|s| s.list(device)).await?)
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
            .await
    }

    async fn delete(
        &self,
        device: &DeviceId,
        module: &ModuleId,
        if_match: Option<ETag>,
    ) -> Result<()> {
        self.write(|s| s.plan_delete(device, module, if_match))
            .await
    }

    async fn delete_device(&self, device: &DeviceId) -> Result<usize> {
        self.write(|s| s.plan_delete_device(device)).await
    }

    fn subscribe(&self) -> ModuleChanges {
        self.changes.subscribe()
    }
}
