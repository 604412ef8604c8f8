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
//! * Group commit ([`GroupCommit`]): a write is prepared, staged into the log's buffer and applied
//!   to memory under the planner lock (no I/O there), then acknowledged once the batch holding it
//!   is written and, with [`Durability::Fsync`], fsynced. Concurrent writers share one fsync.
//! * A write's ticket is durable only after every earlier ticket, so a write prepared against an
//!   earlier one (an ETag, a create after a delete) is never acknowledged before it.
//! * Readers (`get`, `query`, `count`) return only once every write they may have seen is
//!   durable, so no reader reports a write that a crash could take back. (`len` does not wait.)
//! * A failed batch fails the registry ([`Error::Poisoned`]) until it is reopened: memory may
//!   hold writes that never reached the disk.
//! * `snapshot-G` holds every write of `wal-(G-1)` and before; `wal-G` starts empty when
//!   `snapshot-G` is written. Compaction holds the planner lock, so no write falls between.

pub(crate) mod binary;
mod config;
mod recovery;
mod snapshot;
mod wal;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, RwLock, RwLockReadGuard, RwLockWriteGuard};

use async_trait::async_trait;
use iot_core::storage::{DirLock, GroupCommit, StorageError, WalFile, fs as sfs, run_blocking};
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
    /// Orders writers: a write is prepared, staged and applied under it (memory only, no I/O).
    planner: Mutex<Planner>,
    /// The log of the current generation, shared by concurrent writers (group commit).
    group: Arc<GroupCommit>,
    compacting: AtomicBool,
    /// Held for the registry's life: dropping it releases the directory lock.
    _lock: Arc<DirLock>,
}

#[derive(Debug)]
struct Planner {
    generation: u64,
    snapshot_bytes: u64,
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
        let lock = Arc::new(DirLock::acquire(&dir)?);
        let recovered = recovery::recover(&dir, &config)?;
        let wal_path = dir.join(wal_name(recovered.generation));
        let file = sfs::open_append(&wal_path, true)?;
        sfs::sync_dir(&dir)?;
        let snapshot_repaired = recovered.snapshot_repaired;
        let group = GroupCommit::locked(
            WalFile {
                file,
                path: wal_path,
                len: recovered.wal_bytes,
            },
            config.durability,
            lock.clone(),
        );
        let registry = FileRegistry {
            shared: Arc::new(Shared {
                dir,
                engine: RwLock::new(recovered.engine),
                planner: Mutex::new(Planner {
                    generation: recovered.generation,
                    snapshot_bytes: recovered.snapshot_bytes,
                }),
                group,
                compacting: AtomicBool::new(false),
                config,
                _lock: lock,
            }),
        };
        if snapshot_repaired {
            // The damaged snapshot would be refused again by the next strict open.
            registry.shared.compact()?;
        }
        Ok(registry)
    }

    /// How many records the registry holds (including writes still in their group's fsync).
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
        run_blocking(move || shared.compact()).await
    }

    /// Prepares, stages and applies a write under the planner lock, then waits for the group
    /// commit that makes it durable; compacts afterwards when the log has grown.
    async fn write(
        &self,
        prepare: impl FnOnce(&Engine, Timestamp) -> Result<Change>,
        id: DeviceId,
    ) -> Result<Option<DeviceRecord>> {
        let (ticket, record) = self.shared.stage(prepare, &id)?;
        self.shared.group.wait(ticket).await?;
        if self.shared.wants_compaction() {
            let shared = self.shared.clone();
            run_blocking(move || {
                shared.compact_if_wanted();
                Ok::<_, Error>(())
            })
            .await?;
        }
        Ok(record)
    }

    /// Reads from memory and returns once every write the read may have seen is durable, so a
    /// reader never reports a write that a crash could take back.
    async fn read_durable<T>(&self, f: impl FnOnce(&Engine) -> Result<T>) -> Result<T> {
        let (out, ticket) = {
            let engine = self.shared.read();
            (f(&engine), self.shared.group.last_staged())
        };
        let out = out?;
        if !self.shared.group.is_durable(ticket) {
            self.shared.group.wait(ticket).await?;
        }
        Ok(out)
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

    fn lock_planner(&self) -> MutexGuard<'_, Planner> {
        self.planner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Validates, stages and applies one write; returns its ticket and the record as written.
    /// The planner lock orders writers, so the change prepared under the read lock is still valid
    /// when it is applied, and ticket order is apply order. Readers of the engine may see the
    /// write before its ticket is durable; they wait for it (see `read_durable`).
    fn stage(
        &self,
        prepare: impl FnOnce(&Engine, Timestamp) -> Result<Change>,
        id: &DeviceId,
    ) -> Result<(u64, Option<DeviceRecord>)> {
        let _planner = self.lock_planner();
        let (change, version) = {
            let engine = self.read();
            (prepare(&engine, Timestamp::now())?, engine.next_version())
        };
        let ticket = self
            .group
            .stage(|buf| wal::encode_change(buf, &change, version))?;
        let mut engine = self.write_engine();
        engine.apply(change, version);
        Ok((ticket, engine.get(id)?))
    }

    fn wants_compaction(&self) -> bool {
        let wal_bytes = self.group.file_len();
        wal_bytes >= self.config.compact_after_bytes
            && wal_bytes >= self.lock_planner().snapshot_bytes / 2
            && !self.compacting.load(Ordering::Relaxed)
    }

    /// Compacts unless another writer is. The writes are durable already; a failed compaction
    /// leaves the old generation in place and is retried after a later write.
    fn compact_if_wanted(&self) {
        if !self.wants_compaction() || self.compacting.swap(true, Ordering::AcqRel) {
            return;
        }
        if let Err(e) = self.compact() {
            warn!(error = %e, "registry compaction failed");
        }
        self.compacting.store(false, Ordering::Release);
    }

    /// Writes `snapshot-(G+1)` and starts the empty `wal-(G+1)`. Holds the planner lock, so
    /// nothing is staged meanwhile and the snapshot covers every ticket the log has taken.
    fn compact(&self) -> Result<()> {
        let mut planner = self.lock_planner();
        let next = planner.generation + 1;
        let mut bytes = 0;
        self.group.rotate(|_old| {
            bytes = {
                let engine = self.read();
                snapshot::write_snapshot(&self.dir.join(snapshot_name(next)), &engine)
                    .map_err(|e| (e, true))?
            };
            // From here `snapshot-(G+1)` is the newest: the old log is no longer read on open,
            // so a failure leaves the registry failed rather than appending to it.
            let wal_path = self.dir.join(wal_name(next));
            let file = sfs::open_append(&wal_path, true)
                .and_then(|file| {
                    file.set_len(0)
                        .map_err(|e| StorageError::io("truncate", &wal_path, e))?;
                    sfs::sync_dir(&self.dir)?;
                    Ok(file)
                })
                .map_err(|e| (Error::from(e), false))?;
            Ok(WalFile {
                file,
                path: wal_path,
                len: 0,
            })
        })?;
        let old = planner.generation;
        planner.generation = next;
        planner.snapshot_bytes = bytes;
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
        self.read_durable(|engine| engine.get(id)).await
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
        self.read_durable(|engine| engine.query(query, page)).await
    }

    async fn count(&self, query: &Query) -> Result<u64> {
        self.read_durable(|engine| Ok(engine.count(query))).await
    }

    /// Makes every acknowledged write durable now (useful after writes with
    /// [`Durability::OsBuffered`]; with [`Durability::Fsync`] every write already is).
    async fn sync(&self) -> Result<()> {
        let shared = self.shared.clone();
        run_blocking(move || Ok(shared.group.sync_blocking()?)).await
    }
}

fn written(id: &DeviceId, record: Option<DeviceRecord>) -> Result<DeviceRecord> {
    record.ok_or_else(|| Error::NotFound { id: id.clone() })
}

#[cfg(test)]
mod tests;
