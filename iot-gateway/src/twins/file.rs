//! `FileTwinStore`: twins in memory, made durable by the storage kit's journal
//! ([`iot_core::storage::journal`]).

use std::path::{Path, PathBuf};
use std::sync::Arc;

use async_trait::async_trait;
use iot_core::storage::{Durability, JournalConfig, Recovery, run_blocking};
use iot_core::{DeviceId, ModuleId};
use serde_json::Value;

use super::state::{Op, TwinState};
use super::{Section, Twin, TwinLimits, TwinStore};
use crate::error::Result;
use crate::journaled::JournaledState;

/// The journal's magic: version 2 is the storage kit's frame format (header checksums).
const MAGIC: &[u8; 8] = b"IOTGWTW2";

/// How a [`FileTwinStore`] is opened.
///
/// ```
/// use iot_gateway::{Durability, FileTwinStoreConfig, Recovery};
///
/// let config = FileTwinStoreConfig::default().durability(Durability::OsBuffered);
/// assert_eq!(config.recovery, Recovery::Strict);
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct FileTwinStoreConfig {
    /// When writes are acknowledged. Default [`Durability::Fsync`]; [`Durability::Interval`] is
    /// refused.
    pub durability: Durability,
    /// Compact once the journal is larger than this and than the snapshot. Default 64 MiB.
    pub compact_after_bytes: u64,
    /// What opening does with corruption (damage followed by intact data). Default
    /// [`Recovery::Strict`]: the store refuses to open with [`Error::Corrupt`](crate::Error::Corrupt)
    /// naming the file and position; [`Recovery::Repair`] cuts the journal there, dropping the
    /// changes from the damage on.
    pub recovery: Recovery,
}

impl Default for FileTwinStoreConfig {
    fn default() -> Self {
        FileTwinStoreConfig {
            durability: Durability::Fsync,
            compact_after_bytes: 64 * 1024 * 1024,
            recovery: Recovery::Strict,
        }
    }
}

impl FileTwinStoreConfig {
    /// Sets when writes are acknowledged.
    pub fn durability(mut self, durability: Durability) -> Self {
        self.durability = durability;
        self
    }

    /// Sets the compaction threshold.
    pub fn compact_after_bytes(mut self, bytes: u64) -> Self {
        self.compact_after_bytes = bytes;
        self
    }

    /// Sets what opening does with corruption.
    pub fn recovery(mut self, recovery: Recovery) -> Self {
        self.recovery = recovery;
        self
    }

    fn journal(self) -> JournalConfig {
        JournalConfig::with_durability(self.durability)
            .compact_after_bytes(self.compact_after_bytes)
            .recovery(self.recovery)
    }
}

/// A durable [`TwinStore`] in a directory: each accepted patch journals the twin's new content
/// before it is acknowledged. Opening follows the storage kit's recovery rule (see
/// [`FileTwinStoreConfig::recovery`]).
#[derive(Debug, Clone)]
pub struct FileTwinStore {
    inner: Arc<JournaledState<TwinState>>,
    dir: PathBuf,
}

impl FileTwinStore {
    /// Opens (or creates) the store in `dir`, recovering from any crash.
    pub async fn open(dir: impl AsRef<Path>, config: FileTwinStoreConfig) -> Result<Self> {
        let dir = dir.as_ref().to_owned();
        run_blocking(move || Self::open_blocking(&dir, config)).await
    }

    /// [`open`](Self::open) on the calling thread.
    pub fn open_blocking(dir: &Path, config: FileTwinStoreConfig) -> Result<Self> {
        let inner = JournaledState::open(dir, MAGIC, TwinState::default(), config.journal())?;
        Ok(FileTwinStore {
            inner: Arc::new(inner),
            dir: dir.to_owned(),
        })
    }

    /// The directory of the store.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Makes every acknowledged change durable (useful with [`Durability::OsBuffered`]).
    pub async fn sync(&self) -> Result<()> {
        self.inner.sync().await
    }

    /// Plans, applies and journals a change; returns once it is durable (group commit).
    async fn write<T>(&self, plan: impl FnOnce(&TwinState) -> Result<(Vec<Op>, T)>) -> Result<T> {
        self.inner.write(plan).await
    }
}

#[async_trait]
impl TwinStore for FileTwinStore {
    async fn get(&self, device: &DeviceId) -> Result<Twin> {
        self.inner.read(|state| state.get(device)).await
    }

    async fn patch(
        &self,
        device: &DeviceId,
        section: Section,
        patch: &Value,
        if_version: Option<u64>,
        limits: TwinLimits,
    ) -> Result<Twin> {
        let device = device.clone();
        let patch = patch.clone();
        self.write(move |state| {
            let twin = state.plan_patch(&device, section, &patch, if_version, limits)?;
            let op = Op::Put {
                device,
                twin: twin.clone(),
            };
            Ok((vec![op], twin))
        })
        .await
    }

    async fn remove(&self, device: &DeviceId) -> Result<()> {
        if !self.inner.read(|state| state.has(device)).await? {
            return Ok(());
        }
        let device = device.clone();
        self.write(move |state| {
            // Planned again under the writer lock: another writer may have removed it meanwhile.
            let ops = if state.has(&device) {
                vec![Op::Remove { device }]
            } else {
                Vec::new()
            };
            Ok((ops, ()))
        })
        .await
    }

    async fn get_module(&self, device: &DeviceId, module: &ModuleId) -> Result<Twin> {
        self.inner
            .read(|state| state.get_module(device, module))
            .await
    }

    async fn patch_module(
        &self,
        device: &DeviceId,
        module: &ModuleId,
        section: Section,
        patch: &Value,
        if_version: Option<u64>,
        limits: TwinLimits,
    ) -> Result<Twin> {
        let (device, module, patch) = (device.clone(), module.clone(), patch.clone());
        self.write(move |state| {
            let twin =
                state.plan_module_patch(&device, &module, section, &patch, if_version, limits)?;
            let op = Op::PutModule {
                device,
                module,
                twin: twin.clone(),
            };
            Ok((vec![op], twin))
        })
        .await
    }

    async fn remove_module(&self, device: &DeviceId, module: &ModuleId) -> Result<()> {
        let (device, module) = (device.clone(), module.clone());
        self.write(move |state| {
            let ops = if state.has_module(&device, &module) {
                vec![Op::RemoveModule { device, module }]
            } else {
                Vec::new()
            };
            Ok((ops, ()))
        })
        .await
    }
}
