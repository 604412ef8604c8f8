//! `FileRegistry`: the registry kept in memory and made durable by a write-ahead log and
//! snapshots in one directory, on the storage kit ([`iot_core::storage`]).
//!
//! # Files
//! * `LOCK` — held ([`DirLock`]) while a `FileRegistry` has the directory open.
//! * `snapshot-G` — every record and the indexes as of generation `G` (`G` in hex), replaced
//!   atomically, so it is either absent or complete (see [`snapshot`]).
//! * `wal-G` — the writes since `snapshot-G`, one frame of the kit each (see [`wal`]).
//!
//! # Recovery
//! Open ([`recovery`]) loads the newest snapshot and its log, applies the log, and follows the
//! kit's one rule: a torn tail of the log (a short, damaged or zero-filled end with no intact
//! frame after it) is cut off; damage followed by intact data is refused with
//! [`Error::Corrupt`] naming the file and position, unless
//! [`FileRegistryConfig::recovery`] is [`Recovery::Repair`](iot_core::storage::Recovery::Repair). Damage
//! in a snapshot's index section only makes open derive the indexes again from the records.
//! Files of older generations are deleted.
//!
//! # Invariants
//! * A write is appended to the log (and, with [`Durability::Fsync`], synced) before it is
//!   applied to memory and acknowledged, and writers are serialised, so readers never see a
//!   write that a crash could take back.
//! * `snapshot-G` holds every write of `wal-(G-1)` and before; `wal-G` starts empty when
//!   `snapshot-G` is written. Compaction holds the writer lock, so no write falls between.

pub(crate) mod binary;
mod config;
mod recovery;
mod snapshot;
mod wal;

use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, RwLock, RwLockReadGuard, RwLockWriteGuard};

use async_trait::async_trait;
use iot_core::storage::{DirLock, StorageError, fs as sfs, run_blocking};
use iot_core::{DeviceId, Timestamp};
use serde_json::Value;
use tracing::{debug, info, instrument, warn};

use crate::engine::{Change, Engine};
use crate::error::{Error, Result};
use crate::paging::{Page, PageRequest};
use crate::query::Query;
use crate::record::{DeviceDocument, DeviceRecord, ETag};
use crate::registry::Registry;

pub use config::FileRegistryConfig;
/// When a write counts as done: the storage kit's one durability type.
pub use iot_core::storage::Durability;

/// A durable [`Registry`] in one directory: queries run from memory (the same engine and indexes
/// as [`MemoryRegistry`](crate::MemoryRegistry)); writes go through a write-ahead log.
#[derive(Debug, Clone)]
pub struct FileRegistry {
    shared: Arc<Shared>,
}

#[derive(Debug)]
struct Shared {
    dir: PathBuf,
    config: FileRegistryConfig,
    engine: RwLock<Engine>,
    writer: Mutex<Writer>,
}

#[derive(Debug)]
struct Writer {
    file: File,
    path: PathBuf,
    generation: u64,
    wal_bytes: u64,
    snapshot_bytes: u64,
    /// Set when a failed write may have left bytes in the log that memory does not reflect.
    poisoned: bool,
    /// Held for the registry's life: dropping it releases the directory lock.
    _lock: DirLock,
}

fn snapshot_name(g: u64) -> String {
    format!("snapshot-{g:016x}")
}
fn wal_name(g: u64) -> String {
    format!("wal-{g:016x}")
}

impl FileRegistry {
    /// Opens (or creates) the registry in `dir`, recovering from any crash (see the module
    /// docs). A second opener of the directory gets [`Error::Locked`]. Opening reads the whole
    /// registry, so it runs on the blocking pool ([`run_blocking`]); sync callers use
    /// [`open_blocking`](Self::open_blocking).
    pub async fn open(dir: impl AsRef<Path>, config: FileRegistryConfig) -> Result<Self> {
        let dir = dir.as_ref().to_owned();
        run_blocking(move || Self::open_blocking(dir, config)).await
    }

    /// [`open`](Self::open) on the calling thread, for callers without a runtime; it blocks
    /// while it reads the whole registry.
    #[instrument(skip_all, fields(dir = %dir.as_ref().display()))]
    pub fn open_blocking(dir: impl AsRef<Path>, config: FileRegistryConfig) -> Result<Self> {
        let dir = dir.as_ref().to_owned();
        config.validate()?;
        sfs::create_dir_durably(&dir)?;
        let lock = DirLock::acquire(&dir)?;
        let recovered = recovery::recover(&dir, &config)?;
        let wal_path = dir.join(wal_name(recovered.generation));
        let file = sfs::open_append(&wal_path, true)?;
        sfs::sync_dir(&dir)?;
        let snapshot_repaired = recovered.snapshot_repaired;
        let registry = FileRegistry {
            shared: Arc::new(Shared {
                dir,
                engine: RwLock::new(recovered.engine),
                writer: Mutex::new(Writer {
                    file,
                    path: wal_path,
                    generation: recovered.generation,
                    wal_bytes: recovered.wal_bytes,
                    snapshot_bytes: recovered.snapshot_bytes,
                    poisoned: false,
                    _lock: lock,
                }),
                config,
            }),
        };
        if snapshot_repaired {
            // The damaged snapshot would be refused again by the next strict open.
            let shared = &registry.shared;
            let mut writer = shared.lock_writer()?;
            shared.compact(&mut writer)?;
        }
        Ok(registry)
    }

    /// How many records the registry holds.
    pub fn len(&self) -> usize {
        self.shared.read().len()
    }

    /// Whether the registry holds no record.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The directory of the registry.
    pub fn dir(&self) -> &Path {
        &self.shared.dir
    }

    /// Writes a snapshot of every record now and starts an empty log (normally done
    /// automatically, see [`FileRegistryConfig::compact_after_bytes`]).
    pub async fn compact(&self) -> Result<()> {
        let shared = self.shared.clone();
        run_blocking(move || {
            let mut writer = shared.lock_writer()?;
            shared.compact(&mut writer)
        })
        .await
    }

    async fn write(
        &self,
        prepare: impl FnOnce(&Engine, Timestamp) -> Result<Change> + Send + 'static,
        id: DeviceId,
    ) -> Result<Option<DeviceRecord>> {
        let shared = self.shared.clone();
        run_blocking(move || shared.write(prepare, &id)).await
    }
}

impl Shared {
    // Every critical section leaves the engine consistent before anything in it can panic.
    fn read(&self) -> RwLockReadGuard<'_, Engine> {
        self.engine.read().unwrap_or_else(PoisonError::into_inner)
    }

    fn write_engine(&self) -> RwLockWriteGuard<'_, Engine> {
        self.engine.write().unwrap_or_else(PoisonError::into_inner)
    }

    fn lock_writer(&self) -> Result<MutexGuard<'_, Writer>> {
        let writer = self.writer.lock().unwrap_or_else(PoisonError::into_inner);
        if writer.poisoned {
            return Err(Error::Poisoned);
        }
        Ok(writer)
    }

    /// Validates, logs, applies. The writer lock serialises writers, so the change prepared
    /// under the read lock is still valid when it is applied.
    #[allow(
        clippy::disallowed_methods,
        reason = "called only through run_blocking"
    )]
    fn write(
        &self,
        prepare: impl FnOnce(&Engine, Timestamp) -> Result<Change>,
        id: &DeviceId,
    ) -> Result<Option<DeviceRecord>> {
        let mut writer = self.lock_writer()?;
        let (change, version) = {
            let engine = self.read();
            (prepare(&engine, Timestamp::now())?, engine.next_version())
        };
        let mut frame = Vec::new();
        wal::encode_change(&mut frame, &change, version)?;
        let before = writer.wal_bytes;
        let appended = writer.file.write_all(&frame).and_then(|()| {
            if self.config.durability.syncs_each_write() {
                writer.file.sync_data()
            } else {
                Ok(())
            }
        });
        if let Err(e) = appended {
            // Take the partial frame back so that the log matches memory; if even that fails,
            // refuse further writes until a reopen recovers from the file.
            if writer.file.set_len(before).is_err() {
                writer.poisoned = true;
            }
            warn!(error = %e, "registry log append failed");
            return Err(StorageError::io("append", &writer.path, e).into());
        }
        writer.wal_bytes += frame.len() as u64;
        let record = {
            let mut engine = self.write_engine();
            engine.apply(change, version);
            engine.get(id)?
        };
        if writer.wal_bytes >= self.config.compact_after_bytes
            && writer.wal_bytes >= writer.snapshot_bytes / 2
        {
            // The write is durable already; a failed compaction leaves the old generation in
            // place and is retried after the next write.
            if let Err(e) = self.compact(&mut writer) {
                warn!(error = %e, "registry compaction failed");
            }
        }
        Ok(record)
    }

    fn compact(&self, writer: &mut Writer) -> Result<()> {
        let next = writer.generation + 1;
        let bytes = {
            let engine = self.read();
            snapshot::write_snapshot(&self.dir.join(snapshot_name(next)), &engine)?
        };
        let wal_path = self.dir.join(wal_name(next));
        let file = sfs::open_append(&wal_path, true)?;
        file.set_len(0)
            .map_err(|e| StorageError::io("truncate", &wal_path, e))?;
        sfs::sync_dir(&self.dir)?;
        let old = writer.generation;
        writer.file = file;
        writer.path = wal_path;
        writer.generation = next;
        writer.wal_bytes = 0;
        writer.snapshot_bytes = bytes;
        // From here the new generation is authoritative; leftovers are removed on the next open.
        for name in [snapshot_name(old), wal_name(old)] {
            let path = self.dir.join(name);
            if let Err(e) = sfs::remove_durably(&path) {
                debug!(path = %path.display(), error = %e, "stale file left for the next open");
            }
        }
        info!(generation = next, bytes, "registry snapshot written");
        Ok(())
    }
}

#[async_trait]
impl Registry for FileRegistry {
    #[instrument(skip_all, fields(device = %id))]
    async fn create(&self, id: &DeviceId, doc: DeviceDocument) -> Result<DeviceRecord> {
        let for_prepare = id.clone();
        written(
            id,
            self.write(
                move |e, now| e.prepare_create(&for_prepare, doc, now),
                id.clone(),
            )
            .await?,
        )
    }

    async fn get(&self, id: &DeviceId) -> Result<Option<DeviceRecord>> {
        self.shared.read().get(id)
    }

    #[instrument(skip_all, fields(device = %id))]
    async fn replace(
        &self,
        id: &DeviceId,
        doc: DeviceDocument,
        if_match: Option<&ETag>,
    ) -> Result<DeviceRecord> {
        let for_prepare = id.clone();
        let if_match = if_match.cloned();
        written(
            id,
            self.write(
                move |e, now| e.prepare_replace(&for_prepare, doc, if_match.as_ref(), now),
                id.clone(),
            )
            .await?,
        )
    }

    #[instrument(skip_all, fields(device = %id))]
    async fn merge(
        &self,
        id: &DeviceId,
        patch: &Value,
        if_match: Option<&ETag>,
    ) -> Result<DeviceRecord> {
        let for_prepare = id.clone();
        let if_match = if_match.cloned();
        let patch = patch.clone();
        written(
            id,
            self.write(
                move |e, now| e.prepare_merge(&for_prepare, &patch, if_match.as_ref(), now),
                id.clone(),
            )
            .await?,
        )
    }

    #[instrument(skip_all, fields(device = %id))]
    async fn delete(&self, id: &DeviceId, if_match: Option<&ETag>) -> Result<()> {
        let for_prepare = id.clone();
        let if_match = if_match.cloned();
        self.write(
            move |e, _| e.prepare_delete(&for_prepare, if_match.as_ref()),
            id.clone(),
        )
        .await?;
        Ok(())
    }

    async fn query(&self, query: &Query, page: &PageRequest) -> Result<Page> {
        self.shared.read().query(query, page)
    }

    async fn count(&self, query: &Query) -> Result<u64> {
        Ok(self.shared.read().count(query))
    }

    /// Makes every acknowledged write durable now (useful after writes with
    /// [`Durability::OsBuffered`]; with [`Durability::Fsync`] every write already is).
    #[allow(
        clippy::disallowed_methods,
        reason = "the fsync runs inside run_blocking"
    )]
    async fn sync(&self) -> Result<()> {
        let shared = self.shared.clone();
        run_blocking(move || {
            let writer = shared.lock_writer()?;
            writer
                .file
                .sync_data()
                .map_err(|e| StorageError::io("fsync", &writer.path, e).into())
        })
        .await
    }
}

fn written(id: &DeviceId, record: Option<DeviceRecord>) -> Result<DeviceRecord> {
    record.ok_or_else(|| Error::NotFound { id: id.clone() })
}

#[cfg(test)]
mod tests;
