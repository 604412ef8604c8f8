//! `FileIdentityStore`: identities in memory, made durable by a write-ahead log and snapshots,
//! both built from the storage kit ([`iot_core::storage`]).
//!
//! # Files
//!
//! A store is one directory (mode 0700) holding, each with mode 0600:
//!
//! * `LOCK` — the kit's [`DirLock`], held while a store has the directory open;
//! * `snapshot` — every record as of a sequence number ([`snapshot`] format), replaced atomically;
//! * `wal` — every write since, one checksummed frame each ([`wal`] format).
//!
//! # Crash safety
//!
//! A write is appended to the log (and, with [`Durability::Fsync`], fsynced) before it is applied
//! in memory, published, or acknowledged, so every acknowledged write survives a crash and no
//! reader sees a write that may be lost. On open, the snapshot is loaded, log entries newer than
//! it are replayed, and a torn tail is cut off by the kit's rule; corruption is refused unless the
//! store is opened with [`Recovery::Repair`]. When the log outgrows the snapshot (and
//! [`FileIdentityStoreConfig::compact_after_wal_bytes`]), a new snapshot is written atomically and then
//! the log is replaced by an empty one; a crash between the two is harmless because replay skips
//! entries the snapshot already holds.

mod codec;
mod snapshot;
mod wal;

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError, RwLock, RwLockReadGuard, RwLockWriteGuard};

use async_trait::async_trait;
use iot_core::storage::{DirLock, fs, run_blocking};
use iot_core::{DeviceId, Timestamp};
use tracing::{info, instrument, warn};

use crate::credentials::Credentials;
use crate::error::{Error, Result};
use crate::identity::{DeviceIdentity, DeviceStatus, ETag, IdentityPage, NewIdentity};
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
    writer: Mutex<Writer>,
    changes: ChangeSender,
    _lock: DirLock,
}

#[derive(Debug)]
struct Writer {
    wal: Wal,
    snapshot_len: u64,
    /// Set when a failed write could not be rolled back, or a compaction may have left the log
    /// handle on an unlinked file: later writes are refused (`Error::Failed`) until reopen.
    failed: bool,
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
        let lock = DirLock::acquire(dir)?;
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
            writer: Mutex::new(Writer {
                wal,
                snapshot_len,
                failed: false,
            }),
            changes: ChangeSender::new(options.change_capacity),
            _lock: lock,
        });
        {
            let mut writer = inner.lock_writer();
            if inner.needs_compaction(&writer) {
                inner.compact_locked(&mut writer)?;
            }
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

    /// The identity of `id`, without going through an async call.
    pub fn get_now(&self, id: &DeviceId) -> Option<Arc<DeviceIdentity>> {
        self.inner.read_index().get(id).map(Arc::clone)
    }

    /// Makes every acknowledged write durable (useful with [`Durability::OsBuffered`]).
    pub async fn sync(&self) -> Result<()> {
        let inner = Arc::clone(&self.inner);
        run_blocking(move || inner.lock_writer().wal.sync()).await
    }

    /// Writes a snapshot and empties the log now.
    pub async fn compact(&self) -> Result<()> {
        let inner = Arc::clone(&self.inner);
        run_blocking(move || {
            let mut writer = inner.lock_writer();
            inner.compact_locked(&mut writer)
        })
        .await
    }

    async fn write(&self, op: WriteOp) -> Result<Option<DeviceIdentity>> {
        let inner = Arc::clone(&self.inner);
        run_blocking(move || inner.write(op)).await
    }
}

impl Inner {
    fn read_index(&self) -> RwLockReadGuard<'_, Index> {
        self.index.read().unwrap_or_else(PoisonError::into_inner)
    }

    fn write_index(&self) -> RwLockWriteGuard<'_, Index> {
        self.index.write().unwrap_or_else(PoisonError::into_inner)
    }

    fn lock_writer(&self) -> std::sync::MutexGuard<'_, Writer> {
        self.writer.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Plans, logs, applies and publishes one write. The writer lock serialises writes, so the
    /// plan made under the read lock is still valid when it is applied.
    fn write(&self, op: WriteOp) -> Result<Option<DeviceIdentity>> {
        let mut writer = self.lock_writer();
        if writer.failed {
            return Err(Error::Failed {
                path: writer.wal.path().to_owned(),
            });
        }
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
        let fsync = self.options.durability.syncs_each_write();
        if let Err((error, unrecoverable)) = writer.wal.append(&mutation, fsync) {
            writer.failed |= unrecoverable;
            return Err(error);
        }
        self.write_index().apply(mutation);
        self.changes.send(change);
        if self.needs_compaction(&writer)
            && let Err(e) = self.compact_locked(&mut writer)
        {
            // The write itself is durable; compaction is retried after the next write.
            warn!(error = %e, "identity store compaction failed");
        }
        Ok(record.map(|r| DeviceIdentity::clone(&r)))
    }

    fn needs_compaction(&self, writer: &Writer) -> bool {
        writer.wal.len()
            > self
                .options
                .compact_after_wal_bytes
                .max(writer.snapshot_len)
    }

    #[instrument(level = "info", skip_all, fields(dir = %self.dir.display()))]
    fn compact_locked(&self, writer: &mut Writer) -> Result<()> {
        if writer.failed {
            return Err(Error::Failed {
                path: writer.wal.path().to_owned(),
            });
        }
        let snapshot_len = {
            let index = self.read_index();
            snapshot::write(&self.dir.join(SNAPSHOT_FILE), &index)?
        };
        writer.snapshot_len = snapshot_len;
        // If this fails before its rename, the old log stays in use (replay skips what the
        // snapshot holds). Once the empty log may have been renamed into place, the old handle
        // may point at an unlinked file: appending to it would acknowledge writes that a restart
        // never sees, so the store refuses writes until reopened.
        match Wal::create_empty(&self.dir.join(WAL_FILE)) {
            Ok(wal) => writer.wal = wal,
            Err(e) => {
                writer.failed = true;
                return Err(e);
            }
        }
        info!(snapshot_bytes = snapshot_len, "identity store compacted");
        Ok(())
    }
}

#[async_trait]
impl IdentityStore for FileIdentityStore {
    #[instrument(level = "debug", skip_all, fields(device = %identity.id))]
    async fn create(&self, identity: NewIdentity) -> Result<DeviceIdentity> {
        let record = self.write(WriteOp::Create(identity)).await?;
        record.ok_or_else(missing_record)
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
        self.inner.read_index().list(after, limit)
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
