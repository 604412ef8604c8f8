//! `FileInbox`: the inbox in memory, made durable by a journal (see [`crate::journal`]).

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use iot_core::{DeviceId, Timestamp};
use tracing::info;

use super::state::{InboxState, Op};
use super::{InboxLimits, InboxMessage, InboxStore, LockOutcome, Removed, Settlement};
use crate::error::Result;
use crate::journal::{Durability, Journal, Journaled, run_blocking};
use crate::message::LockToken;
use crate::sync_util::lock;

const MAGIC: &[u8; 8] = b"IOTGWIN1";

/// How a [`FileInbox`] behaves.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FileInboxOptions {
    /// When writes are acknowledged. Default [`Durability::Fsync`].
    pub durability: Durability,
    /// Compact once the journal is larger than this and than the snapshot. Default 64 MiB.
    pub compact_after_bytes: u64,
}

impl Default for FileInboxOptions {
    fn default() -> Self {
        FileInboxOptions {
            durability: Durability::Fsync,
            compact_after_bytes: 64 * 1024 * 1024,
        }
    }
}

/// A durable [`InboxStore`] in a directory.
///
/// Every change (queueing, locking — which counts a delivery —, settling, expiry) is journaled
/// before it is applied or acknowledged, so a `kill -9` loses no acknowledged message and no
/// delivery count. Locks do not survive a restart: the sessions that held them died with the
/// process, so on open every locked message is available again (and is redelivered).
#[derive(Debug, Clone)]
pub struct FileInbox {
    inner: Arc<Mutex<Inner>>,
    dir: PathBuf,
}

#[derive(Debug)]
struct Inner {
    state: InboxState,
    journal: Journal,
}

impl Inner {
    fn commit(&mut self, ops: Vec<Op>) -> Result<()> {
        self.journal.append(&ops)?;
        for op in ops {
            self.state.apply(op);
        }
        self.journal.maybe_compact(MAGIC, &self.state);
        Ok(())
    }
}

impl FileInbox {
    /// Opens (or creates) the inbox in `dir`, recovering from any crash.
    pub async fn open(dir: impl AsRef<Path>, options: FileInboxOptions) -> Result<Self> {
        let dir = dir.as_ref().to_owned();
        run_blocking(move || Self::open_blocking(&dir, options)).await
    }

    /// [`open`](Self::open) on the calling thread.
    pub fn open_blocking(dir: &Path, options: FileInboxOptions) -> Result<Self> {
        let mut state = InboxState::default();
        let journal = Journal::open(
            dir,
            MAGIC,
            &mut state,
            options.durability,
            options.compact_after_bytes,
        )?;
        let released = state.release_all_locks();
        info!(dir = %dir.display(), released, "inbox opened");
        Ok(FileInbox {
            inner: Arc::new(Mutex::new(Inner { state, journal })),
            dir: dir.to_owned(),
        })
    }

    /// The directory of the inbox.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Makes every acknowledged change durable (useful with [`Durability::OsBuffered`]).
    pub async fn sync(&self) -> Result<()> {
        let inner = Arc::clone(&self.inner);
        run_blocking(move || lock(&inner).journal.sync()).await
    }

    async fn with<T: Send + 'static>(
        &self,
        f: impl FnOnce(&mut Inner) -> Result<T> + Send + 'static,
    ) -> Result<T> {
        let inner = Arc::clone(&self.inner);
        run_blocking(move || f(&mut lock(&inner))).await
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
        self.with(move |inner| {
            let (ops, seq, removed) = inner.state.plan_enqueue(&device, message, now, limits)?;
            inner.commit(ops)?;
            Ok((seq, removed))
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
        self.with(move |inner| {
            let (ops, outcome) = inner.state.plan_lock_next(&device, now, limits);
            inner.commit(ops)?;
            Ok(outcome)
        })
        .await
    }

    async fn settle(
        &self,
        device: &DeviceId,
        token: LockToken,
        settlement: Settlement,
    ) -> Result<Option<Removed>> {
        let device = device.clone();
        self.with(move |inner| {
            let (op, removed) = inner.state.plan_settle(&device, token, settlement)?;
            inner.commit(vec![op])?;
            Ok(removed)
        })
        .await
    }

    async fn purge_expired(&self, now: Timestamp) -> Result<Vec<Removed>> {
        self.with(move |inner| {
            let (ops, removed) = inner.state.plan_purge(now);
            inner.commit(ops)?;
            Ok(removed)
        })
        .await
    }

    async fn remove_device(&self, device: &DeviceId) -> Result<usize> {
        let device = device.clone();
        self.with(move |inner| {
            let ops = inner.state.plan_remove_device(&device);
            let n = ops.len();
            inner.commit(ops)?;
            Ok(n)
        })
        .await
    }

    async fn depth(&self, device: &DeviceId) -> Result<usize> {
        Ok(lock(&self.inner).state.depth(device))
    }
}
