//! `FileIdentityStore`: identities in memory, made durable by a write-ahead log and snapshots,
//! both built from the storage kit ([`iot_core::storage`]).
//!
//! # Files
//!
//! A store is one directory (mode 0700) holding, each with mode 0600:
//!
//! * `LOCK` — the kit's [`DirLock`], held while a store has the directory open;
//! * `snapshot` — every record as of a sequence number (format in the private `snapshot` module), replaced atomically;
//! * `wal` — every write since, one checksummed frame each (format in the private `wal` module).
//!
//! # Crash safety
//!
//! Writes use the kit's group commit ([`GroupCommit`]): a write is planned, staged into the log's
//! buffer and applied in memory under the planner lock (no I/O there), and acknowledged and
//! published to subscribers only once the batch holding it is written and, with
//! [`Durability::Fsync`], fsynced — concurrent writers share one fsync. A lookup that may have
//! seen a write still in flight waits for it before answering, so no reader (except
//! [`FileIdentityStore::get_now`] and `len`) reports a write that may be lost. A failed batch
//! fails the store ([`Error::Failed`]) until it is reopened. On open, the snapshot is loaded, log entries newer than
//! it are replayed, and a torn tail is cut off by the kit's rule; corruption is refused unless the
//! store is opened with [`Recovery::Repair`]. When the log outgrows the snapshot (and
//! [`FileIdentityStoreConfig::compact_after_wal_bytes`]), a new snapshot is written atomically and then
//! the log is replaced by an empty one; a crash between the two is harmless because replay skips
//! entries the snapshot already holds.

mod codec;
mod snapshot;
mod wal;

use std::collections::VecDeque;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, RwLock, RwLockReadGuard, RwLockWriteGuard};

use async_trait::async_trait;
use iot_core::storage::{DirLock, GroupCommit, fs, run_blocking};
use iot_core::{DeviceId, Timestamp};
use tracing::{info, instrument, warn};

use crate::credentials::Credentials;
use crate::error::{Error, Result};
use crate::identity::{
    DeviceIdentity, DeviceStatus, ETag, IdentityChange, IdentityPage, NewIdentity,
};
use crate::index::Index;
use crate::store::{ChangeSender, ChangeStream, IdentityStore, Lookup};

use self::wal::Wal;

pub use iot_core::storage::{Durability, Recovery};

const SNAPSHOT_FILE: &str = "snapshot";
const WAL_FILE: &str = "wal";

/// How a [`FileIdentityStore`] behaves.
///
/// ```
/// use iot_identity::{Durability, FileIdentityStoreConfig, Recovery};
///
/// let options = FileIdentityStoreConfig::with_durability(Durability::OsBuffered)
///     .compact_after_wal_bytes(1 << 20)
///     .recovery(Recovery::Strict);
/// assert_eq!(options.change_capacity, 4096);
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct FileIdentityStoreConfig {
    /// When writes are acknowledged: [`Durability::Fsync`] (the default) or
    /// [`Durability::OsBuffered`] (survives `kill -9`, not power loss; for bulk loads, followed by
    /// [`FileIdentityStore::sync`]). [`Durability::Interval`] is refused at open.
    pub durability: Durability,
    /// Compact (write a snapshot, empty the log) once the log is larger than this and than the
    /// snapshot. Default 64 MiB.
    pub compact_after_wal_bytes: u64,
    /// How many changes a subscriber may fall behind before it lags. Default 4096.
    pub change_capacity: usize,
    /// What opening does with a damaged log: [`Recovery::Strict`] (the default) refuses it with
    /// [`Error::Corrupt`]; [`Recovery::Repair`] cuts the log at the damage, dropping the writes
    /// from there on (logged). A damaged snapshot is refused either way.
    pub recovery: Recovery,
}

impl Default for FileIdentityStoreConfig {
    fn default() -> Self {
        FileIdentityStoreConfig {
            durability: Durability::Fsync,
            compact_after_wal_bytes: 64 * 1024 * 1024,
            change_capacity: 4096,
            recovery: Recovery::Strict,
        }
    }
}

impl FileIdentityStoreConfig {
    /// The defaults with `durability`.
    pub fn with_durability(durability: Durability) -> Self {
        FileIdentityStoreConfig {
            durability,
            ..Self::default()
        }
    }

    /// Sets when writes are acknowledged.
    pub fn durability(mut self, durability: Durability) -> Self {
        self.durability = durability;
        self
    }

    /// Sets the log size after which the store compacts.
    pub fn compact_after_wal_bytes(mut self, bytes: u64) -> Self {
        self.compact_after_wal_bytes = bytes;
        self
    }

    /// Sets how many changes a subscriber may fall behind.
    pub fn change_capacity(mut self, capacity: usize) -> Self {
        self.change_capacity = capacity;
        self
    }

    /// Sets what opening does with a damaged log.
    pub fn recovery(mut self, recovery: Recovery) -> Self {
        self.recovery = recovery;
        self
    }
}

/// A durable [`IdentityStore`] in a directory; see the [module docs](self) for the files and the
/// crash-safety argument.
///
/// All identities are held in memory (as in [`MemoryIdentityStore`](crate::MemoryIdentityStore)),
/// so lookups never touch the disk. Writes are serialised and run on tokio's blocking pool.
/// One store at a time may open a directory ([`Error::Locked`] otherwise).
#[derive(Debug, Clone)]
pub struct FileIdentityStore {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    dir: PathBuf,
    options: FileIdentityStoreConfig,
    index: RwLock<Index>,
    /// Orders writers; holds the snapshot's size. Planning, staging and applying happen under
    /// it, file I/O does not (except compaction).
    planner: Mutex<u64>,
    group: Arc<GroupCommit>,
    compacting: AtomicBool,
    /// Changes staged but not yet published, in ticket order; published once durable.
    pending: Mutex<VecDeque<(u64, IdentityChange)>>,
    changes: ChangeSender,
    _lock: Arc<DirLock>,
}

enum WriteOp {
    Create(NewIdentity),
    SetStatus(DeviceId, DeviceStatus, Option<ETag>),
    ReplaceCredentials(DeviceId, Credentials, Option<ETag>),
    Delete(DeviceId, Option<ETag>),
}

impl FileIdentityStore {
    /// Opens (or creates) the store in `dir`, recovering from any crash, on the blocking pool.
    pub async fn open(dir: impl AsRef<Path>, options: FileIdentityStoreConfig) -> Result<Self> {
        let dir = dir.as_ref().to_owned();
        run_blocking(move || Self::open_blocking(&dir, options)).await
    }

    /// [`open`](Self::open) on the calling thread.
    #[instrument(level = "info", skip_all, fields(dir = %dir.as_ref().display()))]
    pub fn open_blocking(dir: impl AsRef<Path>, options: FileIdentityStoreConfig) -> Result<Self> {
        let dir = dir.as_ref();
        options.durability.require_no_background_sync(
            "FileIdentityStore (call FileIdentityStore::sync to make OsBuffered writes durable)",
        )?;
        fs::create_dir_durably(dir)?;
        let lock = Arc::new(DirLock::acquire(dir)?);
        for file in [SNAPSHOT_FILE, WAL_FILE] {
            fs::remove_leftover_temp(&dir.join(file))?;
        }
        let mut index = Index::default();
        let snapshot_len = snapshot::load(&dir.join(SNAPSHOT_FILE), &mut index)?;
        let snapshot_seq = index.last_seq();
        let wal = Wal::open_and_replay(
            &dir.join(WAL_FILE),
            &mut index,
            snapshot_seq,
            options.recovery,
        )?;
        info!(
            identities = index.len(),
            wal_bytes = wal.len(),
            snapshot_bytes = snapshot_len,
            "identity store opened"
        );
        let inner = Arc::new(Inner {
            dir: dir.to_owned(),
            options,
            index: RwLock::new(index),
            planner: Mutex::new(snapshot_len),
            group: GroupCommit::locked(wal.into_wal_file(), options.durability, lock.clone()),
            compacting: AtomicBool::new(false),
            pending: Mutex::new(VecDeque::new()),
            changes: ChangeSender::new(options.change_capacity),
            _lock: lock,
        });
        if inner.needs_compaction() {
            inner.compact()?;
        }
        Ok(FileIdentityStore { inner })
    }

    /// The directory of the store.
    pub fn dir(&self) -> &Path {
        &self.inner.dir
    }

    /// How many identities the store holds.
    pub fn len(&self) -> usize {
        self.inner.read_index().len()
    }

    /// Whether the store holds no identity.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The identity of `id`, without going through an async call. Unlike
    /// [`get`](IdentityStore::get) it does not wait for a write in flight to become durable.
    pub fn get_now(&self, id: &DeviceId) -> Option<Arc<DeviceIdentity>> {
        self.inner.read_index().get(id).map(Arc::clone)
    }

    /// Makes every acknowledged write durable (useful with [`Durability::OsBuffered`]).
    pub async fn sync(&self) -> Result<()> {
        let inner = Arc::clone(&self.inner);
        run_blocking(move || Ok(inner.group.sync_blocking()?)).await
    }

    /// Writes a snapshot and empties the log now.
    pub async fn compact(&self) -> Result<()> {
        let inner = Arc::clone(&self.inner);
        run_blocking(move || inner.compact()).await
    }

    /// Stages one write, waits for the group commit that makes it durable, publishes what became
    /// durable, and compacts when the log has grown.
    async fn write(&self, op: WriteOp) -> Result<Option<DeviceIdentity>> {
        let (ticket, record) = self.inner.stage(op)?;
        self.inner.group.wait(ticket).await?;
        self.inner.publish_durable();
        if self.inner.needs_compaction() {
            let inner = Arc::clone(&self.inner);
            run_blocking(move || {
                inner.compact_if_wanted();
                Ok::<_, Error>(())
            })
            .await?;
        }
        Ok(record)
    }
}

impl Inner {
    fn read_index(&self) -> RwLockReadGuard<'_, Index> {
        self.index.read().unwrap_or_else(PoisonError::into_inner)
    }

    fn write_index(&self) -> RwLockWriteGuard<'_, Index> {
        self.index.write().unwrap_or_else(PoisonError::into_inner)
    }

    fn lock_planner(&self) -> MutexGuard<'_, u64> {
        self.planner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Plans, stages and applies one write; returns its ticket and the record written. The
    /// planner lock orders writers, so the plan made under the read lock is still valid when it
    /// is applied, and ticket order is apply order.
    fn stage(&self, op: WriteOp) -> Result<(u64, Option<DeviceIdentity>)> {
        let _planner = self.lock_planner();
        let now = Timestamp::now();
        let (mutation, change, record) = {
            let index = self.read_index();
            match op {
                WriteOp::Create(new) => {
                    let p = index.plan_create(new, now)?;
                    (p.mutation(), p.change, Some(p.record))
                }
                WriteOp::SetStatus(id, status, if_match) => {
                    let p = index.plan_set_status(&id, status, if_match, now)?;
                    (p.mutation(), p.change, Some(p.record))
                }
                WriteOp::ReplaceCredentials(id, credentials, if_match) => {
                    let p = index.plan_replace_credentials(&id, credentials, if_match, now)?;
                    (p.mutation(), p.change, Some(p.record))
                }
                WriteOp::Delete(id, if_match) => {
                    let (m, c) = index.plan_delete(&id, if_match)?;
                    (m, c, None)
                }
            }
        };
        let ticket = self.group.stage(|buf| wal::encode(&mutation, buf))?;
        self.write_index().apply(mutation);
        lock(&self.pending).push_back((ticket, change));
        Ok((ticket, record.map(|r| DeviceIdentity::clone(&r))))
    }

    /// A write for a synchronous caller (the unit tests): flushes on the calling thread.
    #[cfg(test)]
    fn write_blocking(&self, op: WriteOp) -> Result<Option<DeviceIdentity>> {
        let (ticket, record) = self.stage(op)?;
        self.group.wait_blocking(ticket)?;
        self.publish_durable();
        Ok(record)
    }

    /// Publishes, in ticket order, every staged change that is durable now.
    fn publish_durable(&self) {
        let mut pending = lock(&self.pending);
        while let Some((ticket, _)) = pending.front() {
            if !self.group.is_durable(*ticket) {
                break;
            }
            if let Some((_, change)) = pending.pop_front() {
                self.changes.send(change);
            }
        }
    }

    fn needs_compaction(&self) -> bool {
        let snapshot_len = *self.lock_planner();
        self.group.file_len() > self.options.compact_after_wal_bytes.max(snapshot_len)
            && !self.compacting.load(Ordering::Relaxed)
    }

    /// Compacts unless another writer is; a failure is logged (the writes are durable already)
    /// and compaction is retried after a later write.
    fn compact_if_wanted(&self) {
        if !self.needs_compaction() || self.compacting.swap(true, Ordering::AcqRel) {
            return;
        }
        if let Err(e) = self.compact() {
            warn!(error = %e, "identity store compaction failed");
        }
        self.compacting.store(false, Ordering::Release);
    }

    /// Writes a snapshot and replaces the log by an empty one. Holds the planner lock, so nothing
    /// is staged meanwhile and the snapshot covers every ticket the log has taken.
    #[instrument(level = "info", skip_all, fields(dir = %self.dir.display()))]
    fn compact(&self) -> Result<()> {
        let mut planner = self.lock_planner();
        let mut snapshot_len = 0;
        self.group.rotate(|_| {
            snapshot_len = {
                let index = self.read_index();
                snapshot::write(&self.dir.join(SNAPSHOT_FILE), &index).map_err(|e| (e, true))?
            };
            // If the snapshot failed before its rename, the old log stays in use (replay skips
            // what the snapshot holds). Once the empty log may have been renamed into place, the
            // old handle may point at an unlinked file: the store then fails until reopened.
            let wal = Wal::create_empty(&self.dir.join(WAL_FILE)).map_err(|e| (e, false))?;
            Ok(wal.into_wal_file())
        })?;
        *planner = snapshot_len;
        drop(planner);
        self.publish_durable();
        info!(snapshot_bytes = snapshot_len, "identity store compacted");
        Ok(())
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

#[async_trait]
impl IdentityStore for FileIdentityStore {
    #[instrument(level = "debug", skip_all, fields(device = %identity.id))]
    async fn create(&self, identity: NewIdentity) -> Result<DeviceIdentity> {
        let record = self.write(WriteOp::Create(identity)).await?;
        record.ok_or_else(missing_record)
    }

    fn get<'a>(&'a self, id: &'a DeviceId) -> Lookup<'a> {
        let (found, ticket) = {
            let index = self.inner.read_index();
            (
                index.get(id).map(Arc::clone),
                self.inner.group.last_staged(),
            )
        };
        if self.inner.group.is_durable(ticket) {
            return Lookup::ready(Ok(found));
        }
        // The answer may show a write still in its group's fsync: answer once it is durable.
        Lookup::new(async move {
            self.inner.group.wait(ticket).await?;
            Ok(found)
        })
    }

    #[instrument(level = "debug", skip_all, fields(device = %id, enabled = status.is_enabled()))]
    async fn set_status(
        &self,
        id: &DeviceId,
        status: DeviceStatus,
        if_match: Option<ETag>,
    ) -> Result<DeviceIdentity> {
        let record = self
            .write(WriteOp::SetStatus(id.clone(), status, if_match))
            .await?;
        record.ok_or_else(missing_record)
    }

    #[instrument(level = "debug", skip_all, fields(device = %id, kind = credentials.kind_name()))]
    async fn replace_credentials(
        &self,
        id: &DeviceId,
        credentials: Credentials,
        if_match: Option<ETag>,
    ) -> Result<DeviceIdentity> {
        let record = self
            .write(WriteOp::ReplaceCredentials(
                id.clone(),
                credentials,
                if_match,
            ))
            .await?;
        record.ok_or_else(missing_record)
    }

    #[instrument(level = "debug", skip_all, fields(device = %id))]
    async fn delete(&self, id: &DeviceId, if_match: Option<ETag>) -> Result<()> {
        self.write(WriteOp::Delete(id.clone(), if_match))
            .await
            .map(drop)
    }

    async fn list(&self, after: Option<&DeviceId>, limit: usize) -> Result<IdentityPage> {
        let (page, ticket) = {
            let index = self.inner.read_index();
            (index.list(after, limit), self.inner.group.last_staged())
        };
        self.inner.group.wait(ticket).await?;
        page
    }

    fn subscribe(&self) -> ChangeStream {
        self.inner.changes.subscribe()
    }

    async fn sync(&self) -> Result<()> {
        FileIdentityStore::sync(self).await
    }
}

/// Puts always return their record; this only guards against a future refactoring mistake.
fn missing_record() -> Error {
    Error::invalid("internal error: a write returned no record")
}

#[cfg(test)]
mod tests;
