//! `FileInbox`: the inbox in memory, made durable by the storage kit's journal
//! ([`iot_core::storage::journal`]).

use std::path::{Path, PathBuf};
use std::sync::Arc;

use async_trait::async_trait;
use iot_core::storage::{Durability, JournalConfig, Recovery, run_blocking};
use iot_core::{DeviceId, Timestamp};
use tracing::info;

use super::state::{InboxState, Op};
use super::{InboxLimits, InboxMessage, InboxStore, LockOutcome, Removed, Settlement};
use crate::error::Result;
use crate::journaled::JournaledState;
use crate::message::LockToken;

/// The journal's magic: version 2 is the storage kit's frame format (header checksums).
const MAGIC: &[u8; 8] = b"IOTGWIN2";

/// How a [`FileInbox`] is opened.
///
/// ```
/// use iot_gateway::{Durability, FileInboxConfig, Recovery};
///
/// let config = FileInboxConfig::default()
///     .durability(Durability::OsBuffered)
///     .recovery(Recovery::Repair);
/// assert_eq!(config.recovery, Recovery::Repair);
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct FileInboxConfig {
    /// When writes are acknowledged. Default [`Durability::Fsync`]; [`Durability::Interval`] is
    /// refused.
    pub durability: Durability,
    /// Compact once the journal is larger than this and than the snapshot. Default 64 MiB.
    pub compact_after_bytes: u64,
    /// What opening does with corruption (damage followed by intact data). Default
    /// [`Recovery::Strict`]: the inbox refuses to open with [`Error::Corrupt`](crate::Error::Corrupt)
    /// naming the file and position; [`Recovery::Repair`] cuts the journal there, dropping the
    /// operations from the damage on.
    pub recovery: Recovery,
}

impl Default for FileInboxConfig {
    fn default() -> Self {
        FileInboxConfig {
            durability: Durability::Fsync,
            compact_after_bytes: 64 * 1024 * 1024,
            recovery: Recovery::Strict,
        }
    }
}

impl FileInboxConfig {
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

/// A durable [`InboxStore`] in a directory.
///
/// Every change (queueing, locking — which counts a delivery —, settling, expiry) is journaled
/// before it is applied or acknowledged, so a `kill -9` loses no acknowledged message and no
/// delivery count. Locks do not survive a restart: the sessions that held them died with the
/// process, so on open every locked message is available again (and is redelivered).
///
/// Opening follows the storage kit's recovery rule: a torn last write is cut off, any other
/// damage is refused unless the config asks for [`Recovery::Repair`].
#[derive(Debug, Clone)]
pub struct FileInbox {
    inner: Arc<JournaledState<InboxState>>,
    dir: PathBuf,
}

impl FileInbox {
    /// Opens (or creates) the inbox in `dir`, recovering from any crash.
    pub async fn open(dir: impl AsRef<Path>, config: FileInboxConfig) -> Result<Self> {
        let dir = dir.as_ref().to_owned();
        run_blocking(move || Self::open_blocking(&dir, config)).await
    }

    /// [`open`](Self::open) on the calling thread.
    pub fn open_blocking(dir: &Path, config: FileInboxConfig) -> Result<Self> {
        let inner = JournaledState::open(dir, MAGIC, InboxState::default(), config.journal())?;
        let released = inner.update_unjournaled(InboxState::release_all_locks);
        info!(dir = %dir.display(), released, "inbox opened");
        Ok(FileInbox {
            inner: Arc::new(inner),
            dir: dir.to_owned(),
        })
    }

    /// The directory of the inbox.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Makes every acknowledged change durable (useful with [`Durability::OsBuffered`]).
    pub async fn sync(&self) -> Result<()> {
        self.inner.sync().await
    }

    /// Plans, applies and journals a change; returns once it is durable (group commit).
    async fn write<T>(&self, plan: impl FnOnce(&InboxState) -> Result<(Vec<Op>, T)>) -> Result<T> {
        self.inner.write(plan).await
    }
}

#[async_trait]
impl InboxStore for FileInbox {
    async fn enqueue(
        &self,
        device: &DeviceId,
        message: InboxMessage,
        now: Timestamp,
        limits: InboxLimits,
    ) -> Result<(u64, Vec<Removed>)> {
        let device = device.clone();
        self.write(move |state| {
            let (ops, seq, removed) = state.plan_enqueue(&device, message, now, limits)?;
            Ok((ops, (seq, removed)))
        })
        .await
    }

    async fn lock_next(
        &self,
        device: &DeviceId,
        now: Timestamp,
        limits: InboxLimits,
    ) -> Result<LockOutcome> {
        let device = device.clone();
        self.write(move |state| Ok(state.plan_lock_next(&device, now, limits)))
            .await
    }

    async fn settle(
        &self,
        device: &DeviceId,
        token: LockToken,
        settlement: Settlement,
    ) -> Result<Option<Removed>> {
        let device = device.clone();
        self.write(move |state| {
            let (op, removed) = state.plan_settle(&device, token, settlement)?;
            Ok((vec![op], removed))
        })
        .await
    }

    async fn purge_expired(&self, now: Timestamp) -> Result<Vec<Removed>> {
        self.write(move |state| Ok(state.plan_purge(now))).await
    }

    async fn remove_device(&self, device: &DeviceId) -> Result<usize> {
        let device = device.clone();
        self.write(move |state| {
            let ops = state.plan_remove_device(&device);
            let n = ops.len();
            Ok((ops, n))
        })
        .await
    }

    async fn depth(&self, device: &DeviceId) -> Result<usize> {
        self.inner.read(|state| state.depth(device)).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::Error;

    #[test]
    fn interval_durability_is_refused_with_the_alternatives_named() {
        let dir = tempfile::tempdir().expect("dir");
        let config = FileInboxConfig::default()
            .durability(Durability::Interval(std::time::Duration::from_millis(10)));
        match FileInbox::open_blocking(dir.path(), config) {
            Err(Error::Config { reason }) => {
                assert!(reason.contains("Durability::Fsync"), "{reason}");
            }
            other => panic!("expected a config error, got {other:?}"),
        }
    }
}
