//! `FileRegistry`: the registry kept in memory and made durable by a write-ahead log and
//! snapshots in one directory.
//!
//! # Files
//! * `LOCK` — held (advisory lock) while a `FileRegistry` has the directory open.
//! * `snapshot-G` — every record and the indexes as of generation `G` (`G` in hex), written whole
//!   to a temporary file, fsynced and renamed into place, so it is either absent or complete.
//! * `wal-G` — the writes since `snapshot-G`, one checksummed frame each (see [`frame`]).
//!
//! # Recovery
//! Open loads the newest snapshot and its log, applies the log, cuts off a torn last frame (what
//! a crash during an append leaves), and refuses damage anywhere else with
//! [`Error::Corrupt`](crate::Error::Corrupt) — except in a snapshot's index section, which can
//! be derived again from the records and is then rebuilt. Files of older generations are
//! deleted. Snapshots carry a format tag: `IOTREG03` (records with their slots, then the indexes;
//! see [`binary`] and `crate::index::persist`) is written, `IOTREG02` (binary records) and
//! `IOTREG01` (JSON records) are still read, any other `IOTREG…` tag is refused with
//! [`Error::UnsupportedFormat`](crate::Error::UnsupportedFormat).
//!
//! # Invariants
//! * A write is appended to the log (and, with [`Durability::Fsync`], synced) before it is
//!   applied to memory and acknowledged, and writers are serialised, so readers never see a
//!   write that a crash could take back.
//! * `snapshot-G` holds every write of `wal-(G-1)` and before; `wal-G` starts empty when
//!   `snapshot-G` is written. Compaction holds the writer lock, so no write falls between.

pub(crate) mod binary;
mod frame;

use std::collections::{BTreeMap, HashMap};
use std::fs::{self, File, OpenOptions};
use std::io::{BufWriter, Write};
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, RwLock, RwLockReadGuard, RwLockWriteGuard};

use async_trait::async_trait;
use iot_core::{DeviceId, Timestamp};
use serde_json::Value;
use tracing::{debug, info, instrument, warn};

use crate::engine::{Change, Engine, RegistryConfig};
use crate::error::{Error, Result};
use crate::index::{Part, decode_part};
use crate::paging::{Page, PageRequest};
use crate::query::Query;
use crate::record::{DeviceDocument, DeviceRecord, ETag};
use crate::registry::Registry;
use crate::stored::Stored;
use frame::{FrameReader, Next};

/// When a write counts as done.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub enum Durability {
    /// The log is fsynced before each write is acknowledged: nothing acknowledged is lost even
    /// to a power failure. The default.
    #[default]
    Fsync,
    /// The log is written to the operating system before each write is acknowledged: nothing
    /// acknowledged is lost when the process crashes or is killed, but a power failure may lose
    /// the last writes (never corrupt older ones). Much faster for bulk loads.
    OsBuffered,
}

/// Settings of a [`FileRegistry`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FileConfig {
    /// Limits, unindexed paths, page size.
    pub registry: RegistryConfig,
    /// When writes are acknowledged.
    pub durability: Durability,
    /// Write a new snapshot when the log passes this many bytes (and half the snapshot's size).
    /// Default 64 MiB.
    pub compact_after_bytes: u64,
}

impl Default for FileConfig {
    fn default() -> Self {
        FileConfig {
            registry: RegistryConfig::default(),
            durability: Durability::default(),
            compact_after_bytes: 64 * 1024 * 1024,
        }
    }
}

/// A log entry holding a record as JSON (written by earlier versions; still read).
const WAL_PUT: u8 = 1;
/// A log entry holding a record in the binary encoding of [`binary`] (written now).
const WAL_PUT_BINARY: u8 = 3;
const WAL_DELETE: u8 = 2;
/// Snapshot format 1: records as JSON. Still read; no longer written.
const SNAPSHOT_MAGIC_JSON: &[u8; 8] = b"IOTREG01";
/// Snapshot format 2: records in the binary encoding of [`binary`], in device-id order. Still
/// read; no longer written.
const SNAPSHOT_MAGIC_BINARY: &[u8; 8] = b"IOTREG02";
/// Snapshot format 3: each record with its slot, then the indexes (see
/// [`crate::index::decode_part`]), then a trailer. Written by this version: reopening loads the
/// indexes instead of deriving them from every record.
const SNAPSHOT_MAGIC: &[u8; 8] = b"IOTREG03";
/// The body of the last frame of a format-3 snapshot is this tag and the number of index parts
/// before it, so that a section missing parts is recognised.
const SECTION_END: &[u8; 8] = b"IOTIDXND";
/// The part count of a trailer when the indexes were not saved (see [`max_slot`]).
const NOT_SAVED: u64 = u64::MAX;

/// The bound on the slots of a format-3 snapshot holding `count` records: a record's slot above
/// it is corruption, so that no damaged slot number makes open allocate absurdly. A registry
/// with more free slots than that (after mass deletes) is saved with its records renumbered
/// densely and without its indexes, which open then rebuilds.
fn max_slot(count: u64) -> u64 {
    count + count / 4 + 1024
}

/// A durable [`Registry`] in one directory: queries run from memory (the same engine and indexes
/// as [`MemoryRegistry`](crate::MemoryRegistry)); writes go through a write-ahead log.
#[derive(Debug, Clone)]
pub struct FileRegistry {
    shared: Arc<Shared>,
}

#[derive(Debug)]
struct Shared {
    dir: PathBuf,
    config: FileConfig,
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
    _lock: File,
}

fn snapshot_name(g: u64) -> String {
    format!("snapshot-{g:016x}")
}
fn wal_name(g: u64) -> String {
    format!("wal-{g:016x}")
}

impl FileRegistry {
    /// Opens (or creates) the registry in `dir`, recovering from any crash.
    #[instrument(skip_all, fields(dir = %dir.as_ref().display()))]
    pub fn open(dir: impl AsRef<Path>, config: FileConfig) -> Result<Self> {
        let dir = dir.as_ref().to_owned();
        config.registry.validate()?;
        fs::create_dir_all(&dir).map_err(|e| Error::io("create directory", &dir, e))?;
        let lock_path = dir.join("LOCK");
        let lock = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)
            .map_err(|e| Error::io("open", &lock_path, e))?;
        match lock.try_lock() {
            Ok(()) => {}
            Err(fs::TryLockError::WouldBlock) => return Err(Error::Locked { path: lock_path }),
            Err(fs::TryLockError::Error(e)) => return Err(Error::io("lock", &lock_path, e)),
        }

        let (snapshots, wals) = list_generations(&dir)?;
        let generation = snapshots.iter().copied().max().unwrap_or(0);
        let mut engine = Engine::new(config.registry.clone())?;
        let started = std::time::Instant::now();
        let snapshot_path = dir.join(snapshot_name(generation));
        let wal_path = dir.join(wal_name(generation));
        // The snapshot and the log are read and decoded at the same time: each has serial parts
        // (reading the file, checking frames) that the other can overlap.
        let (snapshot, wal) = std::thread::scope(|scope| {
            let wal = scope.spawn(|| {
                if wal_path.exists() {
                    read_wal(&wal_path)
                } else {
                    Ok((Vec::new(), 0))
                }
            });
            let snapshot = if snapshots.contains(&generation) {
                load_snapshot(&snapshot_path)
            } else {
                Ok((Loaded::Records(Vec::new()), 1, 0))
            };
            let wal = wal.join().unwrap_or_else(|p| std::panic::resume_unwind(p));
            (snapshot, wal)
        });
        let (loaded, mut next_version, snapshot_bytes) = snapshot?;
        let (changes, wal_bytes) = wal?;
        let read = started.elapsed();
        let mut loaded_at = read;
        match loaded {
            Loaded::Records(records) => {
                // The log is folded into the snapshot's records, then memory and indexes are
                // built in one go: far cheaper than building from the snapshot and replaying
                // record by record.
                let records = fold(records, changes, &mut next_version)
                    .map_err(|id| duplicate(&dir, generation, &id))?;
                engine
                    .bulk_load(records)
                    .map_err(|id| duplicate(&dir, generation, &id))?;
            }
            Loaded::Slots {
                slots,
                section,
                unindexed,
            } => {
                // Indexes saved with another list of unindexed paths would answer wrongly.
                let section = match section {
                    Ok(Some(_)) if unindexed != config.registry.unindexed_paths => {
                        info!("unindexed paths changed since the snapshot: rebuilding indexes");
                        None
                    }
                    Ok(parts) => parts,
                    Err(reason) => {
                        warn!(path = %snapshot_path.display(), reason, "snapshot index section unusable: rebuilding indexes from the records");
                        None
                    }
                };
                let rejected = engine
                    .load_slots(slots, section, changes.len())
                    .map_err(|id| duplicate(&dir, generation, &id))?;
                if let Some(reason) = rejected {
                    warn!(path = %snapshot_path.display(), reason, "snapshot index section failed its checks: rebuilding indexes from the records");
                }
                loaded_at = started.elapsed();
                engine.apply_log(changes);
            }
        }
        engine.apply_version_floor(next_version);
        // Older generations are fully contained in the snapshot just loaded.
        for g in snapshots.iter().filter(|&&g| g != generation) {
            remove_file(&dir.join(snapshot_name(*g)))?;
        }
        for g in wals.iter().filter(|&&g| g != generation) {
            remove_file(&dir.join(wal_name(*g)))?;
        }
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&wal_path)
            .map_err(|e| Error::io("open", &wal_path, e))?;
        sync_dir(&dir)?;
        info!(
            devices = engine.len(),
            generation,
            wal_bytes,
            read_ms = read.as_millis() as u64,
            loaded_ms = loaded_at.as_millis() as u64,
            total_ms = started.elapsed().as_millis() as u64,
            "registry opened"
        );
        Ok(FileRegistry {
            shared: Arc::new(Shared {
                dir,
                engine: RwLock::new(engine),
                writer: Mutex::new(Writer {
                    file,
                    path: wal_path,
                    generation,
                    wal_bytes,
                    snapshot_bytes,
                    poisoned: false,
                    _lock: lock,
                }),
                config,
            }),
        })
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
    /// automatically, see [`FileConfig::compact_after_bytes`]).
    pub async fn compact(&self) -> Result<()> {
        let shared = self.shared.clone();
        blocking(move || {
            let mut writer = shared.lock_writer()?;
            shared.compact(&mut writer)
        })
        .await
    }

    /// Makes every acknowledged write durable now (useful after writes with
    /// [`Durability::OsBuffered`]).
    pub async fn sync(&self) -> Result<()> {
        let shared = self.shared.clone();
        blocking(move || {
            let writer = shared.lock_writer()?;
            writer
                .file
                .sync_data()
                .map_err(|e| Error::io("fsync", &writer.path, e))
        })
        .await
    }

    async fn write(
        &self,
        prepare: impl FnOnce(&Engine, Timestamp) -> Result<Change> + Send + 'static,
        id: DeviceId,
    ) -> Result<Option<DeviceRecord>> {
        let shared = self.shared.clone();
        blocking(move || shared.write(prepare, &id)).await
    }
}

/// Runs blocking file work off the async executor.
async fn blocking<T: Send + 'static>(f: impl FnOnce() -> Result<T> + Send + 'static) -> Result<T> {
    match tokio::task::spawn_blocking(f).await {
        Ok(result) => result,
        Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
        Err(_) => Err(Error::Io {
            operation: "run blocking task",
            path: PathBuf::new(),
            source: std::io::Error::other("the runtime is shutting down"),
        }),
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
        encode_change(&mut frame, &change, version)?;
        let before = writer.wal_bytes;
        let appended = writer
            .file
            .write_all(&frame)
            .and_then(|()| match self.config.durability {
                Durability::Fsync => writer.file.sync_data(),
                Durability::OsBuffered => Ok(()),
            });
        if let Err(e) = appended {
            // Take the partial frame back so that the log matches memory; if even that fails,
            // refuse further writes until a reopen recovers from the file.
            if writer.file.set_len(before).is_err() {
                writer.poisoned = true;
            }
            warn!(error = %e, "registry log append failed");
            return Err(Error::io("append", &writer.path, e));
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
        let final_path = self.dir.join(snapshot_name(next));
        let tmp_path = self.dir.join(format!("{}.tmp", snapshot_name(next)));
        let bytes = {
            let engine = self.read();
            write_snapshot(&tmp_path, &engine)?
        };
        fs::rename(&tmp_path, &final_path).map_err(|e| Error::io("rename", &tmp_path, e))?;
        let wal_path = self.dir.join(wal_name(next));
        let file = OpenOptions::new()
            .create(true)
            .truncate(true)
            .write(true)
            .open(&wal_path)
            .map_err(|e| Error::io("create", &wal_path, e))?;
        sync_dir(&self.dir)?;
        let old = writer.generation;
        writer.file = file;
        writer.path = wal_path;
        writer.generation = next;
        writer.wal_bytes = 0;
        writer.snapshot_bytes = bytes;
        // From here the new generation is authoritative; leftovers are removed on the next open.
        for name in [snapshot_name(old), wal_name(old)] {
            let path = self.dir.join(name);
            if path.exists() && fs::remove_file(&path).is_err() {
                debug!(path = %path.display(), "stale file left for the next open");
            }
        }
        info!(generation = next, bytes, "registry snapshot written");
        Ok(())
    }
}

fn encode_change(out: &mut Vec<u8>, change: &Change, version: u64) -> Result<()> {
    let mut body = Vec::with_capacity(256);
    body.extend_from_slice(&version.to_le_bytes());
    match change {
        Change::Put(record) => {
            body.push(WAL_PUT_BINARY);
            body.extend_from_slice(record.bytes());
        }
        Change::Delete(id) => {
            body.push(WAL_DELETE);
            body.extend_from_slice(id.as_str().as_bytes());
        }
    }
    if body.len() > frame::MAX_FRAME as usize {
        return Err(Error::DocumentTooLarge {
            size: body.len(),
            limit: frame::MAX_FRAME as usize,
        });
    }
    frame::encode(out, &body);
    Ok(())
}

fn decode_change(reader: &FrameReader, position: u64, body: &[u8]) -> Result<(Change, u64)> {
    let corrupt = |reason: String| Error::Corrupt {
        path: reader.path().to_owned(),
        position,
        reason,
    };
    let (version, rest) = body
        .split_first_chunk::<8>()
        .ok_or_else(|| corrupt("entry too short".into()))?;
    let version = u64::from_le_bytes(*version);
    let (kind, payload) = rest
        .split_first()
        .ok_or_else(|| corrupt("entry too short".into()))?;
    let change = match *kind {
        WAL_PUT_BINARY => Change::Put(
            reader
                .share(payload)
                .ok_or_else(|| "outside the file".to_owned())
                .and_then(Stored::from_bytes)
                .map_err(|e| corrupt(format!("bad record: {e}")))?,
        ),
        WAL_PUT => Change::Put(Stored::encode(
            &serde_json::from_slice(payload).map_err(|e| corrupt(format!("bad record: {e}")))?,
        )),
        WAL_DELETE => {
            let id = std::str::from_utf8(payload)
                .ok()
                .and_then(|s| DeviceId::new(s).ok())
                .ok_or_else(|| corrupt("bad device id".into()))?;
            Change::Delete(id)
        }
        other => return Err(corrupt(format!("unknown entry kind {other}"))),
    };
    Ok((change, version))
}

/// The records a snapshot and the log after it leave, in device-id order when the snapshot is
/// (snapshots are written so); the id of a duplicate in the snapshot is an error. Raises
/// `next_version` past every logged write.
fn fold(
    records: Vec<Stored>,
    changes: Vec<(Change, u64)>,
    next_version: &mut u64,
) -> std::result::Result<Vec<Stored>, DeviceId> {
    if changes.is_empty() {
        return Ok(records);
    }
    if !records
        .windows(2)
        .all(|w| matches!(w, [a, b] if a.device_id() < b.device_id()))
    {
        return fold_unordered(records, changes, next_version);
    }
    // A sorted snapshot (which also rules out duplicates): a logged write finds its record by
    // binary search, with no map over a million ids to build. Writes to ids the snapshot does
    // not hold are kept in an ordered map and merged in at the end.
    let mut records = records;
    let mut live = vec![true; records.len()];
    let mut added: BTreeMap<DeviceId, Stored> = BTreeMap::new();
    for (change, version) in changes {
        *next_version = (*next_version).max(version.saturating_add(1));
        let id = match &change {
            Change::Put(record) => record.device_id(),
            Change::Delete(id) => id,
        };
        match records.binary_search_by(|r| r.device_id().cmp(id)) {
            Ok(i) => match change {
                Change::Put(record) => {
                    if let (Some(place), Some(alive)) = (records.get_mut(i), live.get_mut(i)) {
                        *place = record;
                        *alive = true;
                    }
                }
                Change::Delete(_) => {
                    if let Some(alive) = live.get_mut(i) {
                        *alive = false;
                    }
                }
            },
            Err(_) => match change {
                Change::Put(record) => {
                    added.insert(record.device_id().clone(), record);
                }
                Change::Delete(id) => {
                    added.remove(&id);
                }
            },
        }
    }
    let mut out = Vec::with_capacity(records.len() + added.len());
    let mut added = added.into_values().peekable();
    for (record, alive) in records.into_iter().zip(live) {
        while let Some(new) = added.next_if(|a| a.device_id() < record.device_id()) {
            out.push(new);
        }
        if alive {
            out.push(record);
        }
    }
    out.extend(added);
    Ok(out)
}

/// [`fold`] for a snapshot not in device-id order (none this code writes, but cheap to keep).
fn fold_unordered(
    records: Vec<Stored>,
    changes: Vec<(Change, u64)>,
    next_version: &mut u64,
) -> std::result::Result<Vec<Stored>, DeviceId> {
    let mut position: HashMap<DeviceId, usize> = HashMap::with_capacity(records.len());
    for (i, r) in records.iter().enumerate() {
        if position.insert(r.device_id().clone(), i).is_some() {
            return Err(r.device_id().clone());
        }
    }
    let mut slots: Vec<Option<Stored>> = records.into_iter().map(Some).collect();
    for (change, version) in changes {
        *next_version = (*next_version).max(version.saturating_add(1));
        match change {
            Change::Put(record) => match position.get(record.device_id()) {
                Some(&i) => {
                    if let Some(slot) = slots.get_mut(i) {
                        *slot = Some(record);
                    }
                }
                None => {
                    position.insert(record.device_id().clone(), slots.len());
                    slots.push(Some(record));
                }
            },
            Change::Delete(id) => {
                if let Some(slot) = position.remove(&id).and_then(|i| slots.get_mut(i)) {
                    *slot = None;
                }
            }
        }
    }
    Ok(slots.into_iter().flatten().collect())
}

fn duplicate(dir: &Path, generation: u64, id: &DeviceId) -> Error {
    Error::Corrupt {
        path: dir.join(snapshot_name(generation)),
        position: 0,
        reason: format!("device {id} appears twice"),
    }
}

/// Reads the log's entries, cutting off a torn tail; returns them with the log's valid length.
fn read_wal(path: &Path) -> Result<(Vec<(Change, u64)>, u64)> {
    let mut reader = FrameReader::open(path)?;
    let mut frames = Vec::new();
    let len = loop {
        match reader.next_frame()? {
            Next::Frame { position, body } => frames.push((position, body)),
            Next::End => {
                break fs::metadata(path)
                    .map_err(|e| Error::io("stat", path, e))?
                    .len();
            }
            Next::TornTail { position } => {
                warn!(position, entries = frames.len(), path = %path.display(), "cutting off a torn log tail");
                let file = OpenOptions::new()
                    .write(true)
                    .open(path)
                    .map_err(|e| Error::io("open", path, e))?;
                file.set_len(position)
                    .map_err(|e| Error::io("truncate", path, e))?;
                file.sync_all().map_err(|e| Error::io("fsync", path, e))?;
                break position;
            }
        }
    };
    // Entries are decoded on all cores, like a snapshot's records; the first bad one (in log
    // order) is reported.
    let changes = on_all_cores(reader.bytes(), &frames, |position, body| {
        decode_change(&reader, position, body)
    })?;
    debug!(entries = changes.len(), "log read");
    Ok((changes, len))
}

/// Applies `decode` to every frame on all cores, keeping the order; the first error in frame
/// order wins.
fn on_all_cores<T: Send, E: Send>(
    bytes: &[u8],
    frames: &[(u64, Range<usize>)],
    decode: impl Fn(u64, &[u8]) -> std::result::Result<T, E> + Sync,
) -> std::result::Result<Vec<T>, E> {
    let threads = std::thread::available_parallelism()
        .map_or(1, |n| n.get())
        .clamp(1, 8);
    let chunk = frames.len().div_ceil(threads).max(1);
    let decode = &decode;
    let parsed: Vec<std::thread::Result<std::result::Result<Vec<T>, E>>> =
        std::thread::scope(|scope| {
            let handles: Vec<_> = frames
                .chunks(chunk)
                .map(|part| {
                    scope.spawn(move || {
                        part.iter()
                            .map(|(position, body)| {
                                decode(*position, bytes.get(body.clone()).unwrap_or_default())
                            })
                            .collect()
                    })
                })
                .collect();
            handles.into_iter().map(|h| h.join()).collect()
        });
    let mut out = Vec::with_capacity(frames.len());
    for part in parsed {
        match part {
            Ok(part) => out.extend(part?),
            Err(panic) => std::panic::resume_unwind(panic),
        }
    }
    Ok(out)
}

fn write_snapshot(path: &Path, engine: &Engine) -> Result<u64> {
    let file = OpenOptions::new()
        .create(true)
        .truncate(true)
        .write(true)
        .open(path)
        .map_err(|e| Error::io("create", path, e))?;
    let mut out = BufWriter::with_capacity(1 << 20, file);
    let mut header = Vec::with_capacity(64);
    header.extend_from_slice(SNAPSHOT_MAGIC);
    header.extend_from_slice(&engine.next_version().to_le_bytes());
    header.extend_from_slice(&(engine.len() as u64).to_le_bytes());
    let unindexed = engine.unindexed_paths();
    header.extend_from_slice(
        &u32::try_from(unindexed.len())
            .unwrap_or(u32::MAX)
            .to_le_bytes(),
    );
    for path in unindexed {
        header.extend_from_slice(&u32::try_from(path.len()).unwrap_or(u32::MAX).to_le_bytes());
        header.extend_from_slice(path.as_bytes());
    }
    let mut frame = Vec::with_capacity(1 << 21);
    frame::encode(&mut frame, &header);
    let mut total = 0u64;
    let mut body = Vec::with_capacity(4096);
    let mut put = |out: &mut BufWriter<File>, frame: &[u8]| -> Result<()> {
        total += frame.len() as u64;
        out.write_all(frame)
            .map_err(|e| Error::io("write", path, e))
    };
    put(&mut out, &frame)?;
    // In slot order, each with its slot: the saved indexes refer to records by slot.
    let sparse = engine.slot_count() as u64 > max_slot(engine.len() as u64);
    for (position, (slot, record)) in (0u32..).zip(engine.slotted_records()) {
        body.clear();
        body.extend_from_slice(&if sparse { position } else { slot }.to_le_bytes());
        body.extend_from_slice(record.bytes());
        frame.clear();
        frame::encode(&mut frame, &body);
        put(&mut out, &frame)?;
    }
    let mut parts = 0u64;
    if sparse {
        parts = NOT_SAVED;
    } else {
        engine.indexes().encode_section(|part| {
            frame.clear();
            frame::encode(&mut frame, part);
            parts += 1;
            put(&mut out, &frame)
        })?;
    }
    body.clear();
    body.extend_from_slice(SECTION_END);
    body.extend_from_slice(&parts.to_le_bytes());
    frame.clear();
    frame::encode(&mut frame, &body);
    put(&mut out, &frame)?;
    let file = out
        .into_inner()
        .map_err(|e| Error::io("write", path, e.into_error()))?;
    file.sync_all().map_err(|e| Error::io("fsync", path, e))?;
    Ok(total)
}

/// What a snapshot holds.
#[derive(Debug)]
enum Loaded {
    /// Formats 1 and 2: the records, in device-id order.
    Records(Vec<Stored>),
    /// Format 3: the records in their slots; the decoded index section (`None`: not saved),
    /// or why it cannot be used (the records are intact either way, and the indexes can be
    /// derived from them); the unindexed paths of the registry that wrote it.
    Slots {
        slots: Vec<Option<Stored>>,
        section: std::result::Result<Option<Vec<Part>>, String>,
        unindexed: Vec<String>,
    },
}

/// Reads a snapshot; any damage to its header or records is corruption (snapshots are renamed
/// into place only when complete). Returns what it holds, the next version it recorded, and
/// its size.
fn load_snapshot(path: &Path) -> Result<(Loaded, u64, u64)> {
    let mut reader = FrameReader::open(path)?;
    let corrupt = |position: u64, reason: &str| Error::Corrupt {
        path: path.to_owned(),
        position,
        reason: reason.to_owned(),
    };
    let header = match reader.next_frame()? {
        Next::Frame { body, .. } => reader.bytes().get(body).unwrap_or_default().to_vec(),
        _ => return Err(corrupt(0, "missing snapshot header")),
    };
    let Some((magic, rest)) = header.split_first_chunk::<8>() else {
        return Err(corrupt(0, "bad snapshot header"));
    };
    let format = match magic {
        SNAPSHOT_MAGIC => Format::Indexed,
        SNAPSHOT_MAGIC_BINARY => Format::Binary,
        SNAPSHOT_MAGIC_JSON => Format::Json,
        // A snapshot of another (newer) format, or not a snapshot at all: refused as it is,
        // never rewritten, so that the software that wrote it can still read it.
        other if other.starts_with(b"IOTREG") => {
            return Err(Error::UnsupportedFormat {
                path: path.to_owned(),
                found: String::from_utf8_lossy(other).into_owned(),
            });
        }
        _ => return Err(corrupt(0, "bad snapshot header")),
    };
    let bad_header = || corrupt(0, "bad snapshot header");
    let (next_version, rest) = rest.split_first_chunk::<8>().ok_or_else(bad_header)?;
    let (count, rest) = rest.split_first_chunk::<8>().ok_or_else(bad_header)?;
    let (next_version, count) = (
        u64::from_le_bytes(*next_version),
        u64::from_le_bytes(*count),
    );
    let unindexed = match format {
        Format::Indexed => unindexed_list(rest).ok_or_else(bad_header)?,
        _ if rest.is_empty() => Vec::new(),
        _ => return Err(bad_header()),
    };
    let mut frames: Vec<(u64, Range<usize>)> = Vec::new();
    while (frames.len() as u64) < count {
        match reader.next_frame()? {
            Next::Frame { position, body } => frames.push((position, body)),
            Next::End => break,
            Next::TornTail { position } => return Err(corrupt(position, "truncated snapshot")),
        }
    }
    // Formats 1 and 2 end after the records; format 3 has its index section there. Damage in
    // that section leaves the records usable: it is reported, and the indexes rebuilt.
    let mut section_frames: Vec<(u64, Range<usize>)> = Vec::new();
    let mut section_problem = None;
    loop {
        match reader.next_frame() {
            Ok(Next::Frame { position, body }) => section_frames.push((position, body)),
            Ok(Next::End) => break,
            Ok(Next::TornTail { position }) => {
                section_problem = Some(format!("index section cut short at byte {position}"));
                break;
            }
            Err(e) => {
                section_problem = Some(e.to_string());
                break;
            }
        }
    }
    if frames.len() as u64 != count
        || (!matches!(format, Format::Indexed) && !section_frames.is_empty())
    {
        return Err(corrupt(
            0,
            &format!(
                "snapshot holds {} records, header says {count}",
                frames.len() + section_frames.len()
            ),
        ));
    }
    let size = fs::metadata(path)
        .map_err(|e| Error::io("stat", path, e))?
        .len();
    let bad_record = |(position, e): (u64, String)| corrupt(position, &format!("bad record: {e}"));
    let loaded = match format {
        Format::Json => Loaded::Records(
            on_all_cores(reader.bytes(), &frames, |position, body| {
                serde_json::from_slice::<DeviceRecord>(body)
                    .map(|r| Stored::encode(&r))
                    .map_err(|e| (position, e.to_string()))
            })
            .map_err(bad_record)?,
        ),
        Format::Binary => Loaded::Records(
            on_all_cores(reader.bytes(), &frames, |position, body| {
                shared(&reader, body)
                    .and_then(Stored::from_bytes)
                    .map_err(|e| (position, e))
            })
            .map_err(bad_record)?,
        ),
        Format::Indexed => {
            let records = on_all_cores(reader.bytes(), &frames, |position, body| {
                let (slot, record) = body
                    .split_first_chunk::<4>()
                    .ok_or_else(|| (position, "record too short".to_owned()))?;
                let record = shared(&reader, record)
                    .and_then(Stored::from_bytes)
                    .map_err(|e| (position, e))?;
                Ok((u32::from_le_bytes(*slot), record))
            })
            .map_err(bad_record)?;
            drop(frames);
            let slots =
                into_slots(records, max_slot(count)).map_err(|reason| corrupt(0, &reason))?;
            let section = match section_problem {
                Some(problem) => Err(problem),
                None => decode_section(reader.bytes(), &section_frames),
            };
            Loaded::Slots {
                slots,
                section,
                unindexed,
            }
        }
    };
    Ok((loaded, next_version, size))
}

/// `part` of the file `reader` holds, sharing its buffer (records are kept so in memory).
fn shared(reader: &FrameReader, part: &[u8]) -> std::result::Result<bytes::Bytes, String> {
    reader
        .share(part)
        .ok_or_else(|| "record outside the file".to_owned())
}

/// The unindexed paths of a format-3 header: `count:u32 (len:u32 utf-8)*`, nothing after.
fn unindexed_list(mut bytes: &[u8]) -> Option<Vec<String>> {
    let (count, rest) = bytes.split_first_chunk::<4>()?;
    bytes = rest;
    let mut out = Vec::new();
    for _ in 0..u32::from_le_bytes(*count) {
        let (len, rest) = bytes.split_first_chunk::<4>()?;
        let len = u32::from_le_bytes(*len) as usize;
        let text = rest.get(..len)?;
        out.push(std::str::from_utf8(text).ok()?.to_owned());
        bytes = rest.get(len..)?;
    }
    bytes.is_empty().then_some(out)
}

/// Places records (in ascending slot order, as snapshots store them) in their slots.
fn into_slots(
    records: Vec<(u32, Stored)>,
    max_slot: u64,
) -> std::result::Result<Vec<Option<Stored>>, String> {
    if let Some((slot, _)) = records.last()
        && u64::from(*slot) > max_slot
    {
        return Err(format!("record slot {slot} above the bound {max_slot}"));
    }
    // Without free slots (the common case) the records' own buffer is reused.
    if (0u32..).zip(&records).all(|(i, (slot, _))| i == *slot) {
        return Ok(records
            .into_iter()
            .map(|(_, record)| Some(record))
            .collect());
    }
    let len = records.last().map_or(0, |(slot, _)| *slot as usize + 1);
    let mut slots = Vec::with_capacity(len);
    for (slot, record) in records {
        if (slot as usize) < slots.len() {
            return Err(format!("record slots out of order at slot {slot}"));
        }
        slots.resize_with(slot as usize, || None);
        slots.push(Some(record));
    }
    Ok(slots)
}

/// Decodes the index section (its parts on all cores) and checks its trailer.
fn decode_section(
    bytes: &[u8],
    frames: &[(u64, Range<usize>)],
) -> std::result::Result<Option<Vec<Part>>, String> {
    let Some(((_, trailer), parts)) = frames.split_last() else {
        return Err("index section missing".into());
    };
    let trailer = bytes.get(trailer.clone()).unwrap_or_default();
    match trailer.split_first_chunk::<8>() {
        Some((tag, count))
            if tag == SECTION_END
                && parts.is_empty()
                && count == NOT_SAVED.to_le_bytes().as_slice() =>
        {
            return Ok(None);
        }
        Some((tag, count))
            if tag == SECTION_END && count == (parts.len() as u64).to_le_bytes().as_slice() => {}
        _ => return Err("index section incomplete".into()),
    }
    on_all_cores(bytes, parts, |position, body| {
        decode_part(body).map_err(|e| format!("index part at byte {position}: {e}"))
    })
    .map(Some)
}

/// How a snapshot encodes its records.
#[derive(Clone, Copy, Debug)]
enum Format {
    Json,
    Binary,
    Indexed,
}

fn list_generations(dir: &Path) -> Result<(Vec<u64>, Vec<u64>)> {
    let mut snapshots = Vec::new();
    let mut wals = Vec::new();
    for entry in fs::read_dir(dir).map_err(|e| Error::io("list", dir, e))? {
        let entry = entry.map_err(|e| Error::io("list", dir, e))?;
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        if name.ends_with(".tmp") {
            // An unfinished snapshot of a crashed compaction.
            remove_file(&entry.path())?;
        } else if let Some(g) = name.strip_prefix("snapshot-") {
            if let Ok(g) = u64::from_str_radix(g, 16) {
                snapshots.push(g);
            }
        } else if let Some(g) = name.strip_prefix("wal-")
            && let Ok(g) = u64::from_str_radix(g, 16)
        {
            wals.push(g);
        }
    }
    Ok((snapshots, wals))
}

fn remove_file(path: &Path) -> Result<()> {
    fs::remove_file(path).map_err(|e| Error::io("remove", path, e))
}

fn sync_dir(dir: &Path) -> Result<()> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| Error::io("fsync directory", dir, e))
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
}

fn written(id: &DeviceId, record: Option<DeviceRecord>) -> Result<DeviceRecord> {
    record.ok_or_else(|| Error::NotFound { id: id.clone() })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::record::DeviceDocument;
    use serde_json::json;

    fn record(id: &str, n: u64) -> DeviceRecord {
        let doc = DeviceDocument::with_metadata(json!({"n": n, "id": id})).expect("an object");
        DeviceRecord::new(
            DeviceId::new(id).expect("a valid id"),
            doc,
            ETag::from_version(n),
            Timestamp::from_unix_micros(n),
            Timestamp::from_unix_micros(n),
        )
    }

    fn stored(id: &str, n: u64) -> Stored {
        Stored::encode(&record(id, n))
    }

    fn decoded(records: Vec<Stored>) -> Vec<DeviceRecord> {
        records.iter().filter_map(|r| r.decode().ok()).collect()
    }

    fn id(s: &str) -> DeviceId {
        DeviceId::new(s).expect("a valid id")
    }

    /// The ordered fold (binary search) and the map-based one agree, in id order.
    #[test]
    fn sorted_fold_equals_unordered_fold() {
        let snapshot = || vec![stored("a", 1), stored("c", 2), stored("e", 3)];
        let changes = || {
            vec![
                (Change::Put(stored("b", 4)), 4),
                (Change::Delete(id("c")), 5),
                (Change::Put(stored("c", 6)), 6),
                (Change::Delete(id("b")), 7),
                (Change::Put(stored("f", 8)), 8),
                (Change::Put(stored("a", 9)), 9),
                (Change::Delete(id("e")), 10),
                (Change::Put(stored("0", 11)), 11),
                (Change::Delete(id("zz")), 12),
            ]
        };
        let (mut v1, mut v2) = (1, 1);
        let sorted = fold(snapshot(), changes(), &mut v1)
            .map(decoded)
            .map_err(|e| e.to_string());
        let mut unordered = fold_unordered(snapshot(), changes(), &mut v2)
            .map(decoded)
            .map_err(|e| e.to_string());
        if let Ok(u) = &mut unordered {
            u.sort_by(|a, b| a.device_id.cmp(&b.device_id));
        }
        assert_eq!(sorted, unordered);
        let ids: Vec<String> = sorted
            .unwrap_or_default()
            .iter()
            .map(|r| format!("{}{}", r.device_id, r.etag.as_str()))
            .collect();
        assert_eq!(ids, ["0b", "a9", "c6", "f8"]);
        assert_eq!((v1, v2), (13, 13));
        // A duplicate in an unordered snapshot is reported.
        let dup = vec![stored("b", 1), stored("a", 2), stored("b", 3)];
        assert_eq!(
            fold(dup, changes(), &mut v1)
                .map(decoded)
                .map_err(|e| e.to_string()),
            Err("b".to_owned())
        );
    }

    fn write_file(path: &Path, frames: &[Vec<u8>]) {
        let mut bytes = Vec::new();
        for body in frames {
            frame::encode(&mut bytes, body);
        }
        assert!(fs::write(path, bytes).is_ok());
    }

    fn header(magic: &[u8; 8], next_version: u64, count: u64) -> Vec<u8> {
        let mut h = magic.to_vec();
        h.extend_from_slice(&next_version.to_le_bytes());
        h.extend_from_slice(&count.to_le_bytes());
        h
    }

    /// A snapshot of format 1 (JSON records) and a log of JSON entries, as earlier versions
    /// wrote them, are still read; the next compaction rewrites the snapshot in format 2.
    #[tokio::test]
    async fn json_snapshots_of_format_1_are_still_read() {
        let dir = tempfile::tempdir().expect("a temporary directory");
        let mut frames = vec![header(SNAPSHOT_MAGIC_JSON, 20, 2)];
        for r in [record("a", 1), record("b", 2)] {
            frames.push(serde_json::to_vec(&r).unwrap_or_default());
        }
        write_file(&dir.path().join(snapshot_name(3)), &frames);
        // The log of those versions held records as JSON (kind 1).
        let mut put = 21u64.to_le_bytes().to_vec();
        put.push(WAL_PUT);
        put.extend(serde_json::to_vec(&record("c", 21)).unwrap_or_default());
        let mut wal = Vec::new();
        frame::encode(&mut wal, &put);
        assert!(encode_change(&mut wal, &Change::Delete(id("a")), 22).is_ok());
        assert!(fs::write(dir.path().join(wal_name(3)), wal).is_ok());

        let check = |registry: &FileRegistry| {
            let engine = registry.shared.read();
            let ids: Vec<String> = engine
                .records()
                .map(|r| r.device_id().to_string())
                .collect();
            assert_eq!(engine.next_version(), 23);
            assert_eq!(engine.get(&id("b")).ok().flatten(), Some(record("b", 2)));
            assert_eq!(engine.get(&id("c")).ok().flatten(), Some(record("c", 21)));
            ids.len()
        };
        let registry = FileRegistry::open(dir.path(), FileConfig::default());
        assert!(registry.is_ok());
        let Ok(registry) = registry else { return };
        assert_eq!(check(&registry), 2);
        assert!(registry.compact().await.is_ok());
        drop(registry);
        let snapshot = fs::read(dir.path().join(snapshot_name(4))).unwrap_or_default();
        assert_eq!(snapshot.get(12..20), Some(&SNAPSHOT_MAGIC[..]));
        let reopened = FileRegistry::open(dir.path(), FileConfig::default());
        assert!(reopened.as_ref().is_ok_and(|r| check(r) == 2));
    }

    fn small_scalar() -> impl proptest::strategy::Strategy<Value = Value> {
        use proptest::prelude::*;
        prop_oneof![
            (0i64..4).prop_map(|i| json!(i)),
            (0u8..4).prop_map(|i| json!(format!("s{i}"))),
            any::<bool>().prop_map(|b| json!(b)),
            Just(Value::Null),
            Just(json!(1.5)),
            Just(json!([1, 2])),
        ]
    }

    fn small_document() -> impl proptest::strategy::Strategy<Value = DeviceDocument> {
        use proptest::prelude::*;
        (
            proptest::option::of(small_scalar()),
            proptest::option::of(small_scalar()),
            proptest::option::of(small_scalar()),
            proptest::option::of(0u8..3),
        )
            .prop_map(|(a, x, t, state)| {
                let mut metadata = serde_json::Map::new();
                if let Some(a) = a {
                    metadata.insert("a".into(), a);
                }
                if let Some(x) = x {
                    metadata.insert("o".into(), json!({"x": x}));
                }
                let mut tags = serde_json::Map::new();
                if let Some(t) = t {
                    tags.insert("t".into(), t);
                }
                DeviceDocument {
                    metadata,
                    tags,
                    state_ref: state.map(|s| format!("st{s}")),
                }
            })
    }

    /// The change a step makes of `engine`'s state (`None`: the step is refused).
    fn step_change(engine: &Engine, step: &(u8, Option<DeviceDocument>)) -> Option<Change> {
        let id = id(&format!("d{:02}", step.0));
        let now = Timestamp::from_unix_micros(7);
        match &step.1 {
            Some(doc) if engine.get(&id).is_ok_and(|r| r.is_some()) => {
                engine.prepare_replace(&id, doc.clone(), None, now).ok()
            }
            Some(doc) => engine.prepare_create(&id, doc.clone(), now).ok(),
            None => engine.prepare_delete(&id, None).ok(),
        }
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig { cases: 64, ..Default::default() })]

        /// A registry reopened from a snapshot with saved indexes, plus a log applied in bulk
        /// or write by write, equals the registry that made every write itself: same records,
        /// same indexes (slots named by device id). So does one whose indexes are rebuilt.
        #[test]
        fn saved_indexes_and_bulk_logs_equal_indexes_built_write_by_write(
            steps in proptest::collection::vec(
                (0u8..24, proptest::option::weighted(0.8, small_document())),
                0..120,
            ),
            split in 0usize..120,
            bulk in proptest::prelude::any::<bool>(),
            unindexed in proptest::prelude::any::<bool>(),
        ) {
            let config = RegistryConfig {
                unindexed_paths: if unindexed { vec!["metadata.o.x".into()] } else { Vec::new() },
                ..RegistryConfig::default()
            };
            let engine = || Engine::new(config.clone()).expect("a valid configuration");
            let (mut reference, mut base) = (engine(), engine());
            let mut log = Vec::new();
            for (i, step) in steps.iter().enumerate() {
                let Some(change) = step_change(&reference, step) else { continue };
                let version = reference.next_version();
                if i < split {
                    base.apply(change.clone(), version);
                } else {
                    log.push((change.clone(), version));
                }
                reference.apply(change, version);
            }
            let dir = tempfile::tempdir().expect("a temporary directory");
            let path = dir.path().join("snapshot");
            proptest::prop_assert!(write_snapshot(&path, &base).is_ok());
            let loaded = load_snapshot(&path).map_err(|e| e.to_string());
            let Ok((Loaded::Slots { slots, section, unindexed: saved }, next_version, _)) = loaded
            else {
                return Err(proptest::test_runner::TestCaseError::fail(format!("{loaded:?}")));
            };
            proptest::prop_assert_eq!(&saved, &config.unindexed_paths);
            proptest::prop_assert!(
                matches!(section, Ok(Some(_))),
                "{:?}",
                section.as_ref().err()
            );
            for section in [section.ok().flatten(), None] {
                let mut reopened = engine();
                let rejected = reopened.load_slots(slots.clone(), section, 0);
                proptest::prop_assert!(matches!(rejected, Ok(None)), "{:?}", rejected);
                reopened.apply_version_floor(next_version);
                proptest::prop_assert_eq!(reopened.canonical(), base.canonical());
                reopened.apply_log_from(log.clone(), if bulk { 0 } else { usize::MAX });
                proptest::prop_assert_eq!(reopened.canonical(), reference.canonical());
                proptest::prop_assert_eq!(reopened.next_version(), reference.next_version());
            }
        }
    }

    async fn filled(dir: &Path, n: u64) -> FileRegistry {
        let registry = FileRegistry::open(
            dir,
            FileConfig {
                durability: Durability::OsBuffered,
                ..FileConfig::default()
            },
        )
        .expect("opens");
        for i in 0..n {
            let doc = DeviceDocument::with_metadata(json!({"i": i, "even": i % 2 == 0}))
                .expect("an object");
            assert!(registry.create(&id(&format!("d{i:04}")), doc).await.is_ok());
        }
        registry
    }

    fn even_count(registry: &FileRegistry) -> u64 {
        let q = Query::parse("SELECT COUNT() FROM devices WHERE metadata.even = true")
            .expect("a query");
        registry.shared.read().count(&q)
    }

    /// Damage confined to the index section (a flipped byte, a missing trailer) leaves the
    /// records usable: the indexes are rebuilt from them. Damage to a record is refused.
    #[tokio::test]
    async fn a_damaged_index_section_is_rebuilt_and_a_damaged_record_refused() {
        let dir = tempfile::tempdir().expect("a temporary directory");
        let registry = filled(dir.path(), 300).await;
        assert!(registry.compact().await.is_ok());
        drop(registry);
        let path = dir.path().join(snapshot_name(1));
        let pristine = fs::read(&path).unwrap_or_default();
        let last_record_end = {
            // Frames: header, 300 records, index parts, trailer.
            let mut at = 0usize;
            for _ in 0..301 {
                let len = pristine
                    .get(at..at + 4)
                    .and_then(|b| b.try_into().ok())
                    .map_or(0, u32::from_le_bytes);
                at += 12 + len as usize;
            }
            at
        };
        let damaged = |edit: &dyn Fn(&mut Vec<u8>)| {
            let mut bytes = pristine.clone();
            edit(&mut bytes);
            assert!(fs::write(&path, &bytes).is_ok());
            FileRegistry::open(dir.path(), FileConfig::default())
        };
        for edit in [
            &(|b: &mut Vec<u8>| b[last_record_end + 20] ^= 0x40) as &dyn Fn(&mut Vec<u8>),
            &|b: &mut Vec<u8>| b.truncate(b.len() - 3),
            &|b: &mut Vec<u8>| b.truncate(last_record_end),
        ] {
            let reopened = damaged(edit);
            assert!(reopened.is_ok(), "{reopened:?}");
            if let Ok(r) = reopened {
                assert_eq!((r.len(), even_count(&r)), (300, 150));
            }
        }
        let reopened = damaged(&|b: &mut Vec<u8>| b[last_record_end - 5] ^= 0x40);
        assert!(
            matches!(reopened, Err(Error::Corrupt { .. })),
            "{reopened:?}"
        );
    }

    /// A registry with more free slots than records (after mass deletes) is saved renumbered,
    /// without its indexes, and reopens with them rebuilt.
    #[tokio::test]
    async fn a_sparse_registry_is_saved_densely() {
        let dir = tempfile::tempdir().expect("a temporary directory");
        let registry = filled(dir.path(), 3000).await;
        for i in (0..3000).filter(|i| i % 10 != 0) {
            assert!(
                registry
                    .delete(&id(&format!("d{i:04}")), None)
                    .await
                    .is_ok()
            );
        }
        assert!(registry.compact().await.is_ok());
        drop(registry);
        let loaded = load_snapshot(&dir.path().join(snapshot_name(1))).map_err(|e| e.to_string());
        assert!(
            matches!(&loaded, Ok((Loaded::Slots { slots, section: Ok(None), .. }, _, _)) if slots.len() == 300),
            "{:?}",
            loaded.as_ref().map(|(l, _, _)| match l {
                Loaded::Slots { slots, section, .. } => format!(
                    "{} slots, section {:?}",
                    slots.len(),
                    section.as_ref().map(Option::is_some)
                ),
                Loaded::Records(r) => format!("{} records", r.len()),
            })
        );
        let reopened = FileRegistry::open(dir.path(), FileConfig::default());
        assert!(
            reopened
                .as_ref()
                .is_ok_and(|r| (r.len(), even_count(r)) == (300, 300))
        );
    }

    /// A snapshot of format 2 (binary records in id order, no indexes), as the previous version
    /// wrote it, still opens with its log; the next compaction writes format 3.
    #[tokio::test]
    async fn binary_snapshots_of_format_2_are_still_read() {
        let dir = tempfile::tempdir().expect("a temporary directory");
        let mut frames = vec![header(SNAPSHOT_MAGIC_BINARY, 20, 3)];
        for r in [record("a", 1), record("b", 2), record("c", 3)] {
            let mut body = Vec::new();
            binary::encode_record(&mut body, &r);
            frames.push(body);
        }
        write_file(&dir.path().join(snapshot_name(5)), &frames);
        let mut wal = Vec::new();
        assert!(encode_change(&mut wal, &Change::Put(stored("d", 21)), 21).is_ok());
        assert!(encode_change(&mut wal, &Change::Delete(id("b")), 22).is_ok());
        assert!(fs::write(dir.path().join(wal_name(5)), wal).is_ok());
        let check = |registry: &FileRegistry| {
            let engine = registry.shared.read();
            assert_eq!(engine.next_version(), 23);
            assert_eq!(engine.get(&id("c")).ok().flatten(), Some(record("c", 3)));
            assert_eq!(engine.get(&id("d")).ok().flatten(), Some(record("d", 21)));
            assert_eq!(engine.get(&id("b")).ok().flatten(), None);
            let q =
                Query::parse("SELECT COUNT() FROM devices WHERE metadata.n >= 3").expect("a query");
            (engine.len(), engine.count(&q))
        };
        let registry = FileRegistry::open(dir.path(), FileConfig::default());
        let Ok(registry) = registry else {
            panic!("{registry:?}")
        };
        assert_eq!(check(&registry), (3, 2));
        assert!(registry.compact().await.is_ok());
        drop(registry);
        let snapshot = fs::read(dir.path().join(snapshot_name(6))).unwrap_or_default();
        assert_eq!(snapshot.get(12..20), Some(&SNAPSHOT_MAGIC[..]));
        let reopened = FileRegistry::open(dir.path(), FileConfig::default());
        assert!(reopened.as_ref().is_ok_and(|r| check(r) == (3, 2)));
    }

    /// A compaction that crashed while writing its snapshot leaves a `.tmp` file: open deletes
    /// it and recovers from the previous generation; a changed list of unindexed paths makes
    /// open rebuild the saved indexes rather than trust them.
    #[tokio::test]
    async fn a_snapshot_cut_short_by_a_crash_is_ignored() {
        let dir = tempfile::tempdir().expect("a temporary directory");
        let registry = filled(dir.path(), 200).await;
        assert!(registry.compact().await.is_ok());
        let more = DeviceDocument::with_metadata(json!({"even": true})).expect("an object");
        assert!(registry.create(&id("late"), more).await.is_ok());
        drop(registry);
        let snapshot = fs::read(dir.path().join(snapshot_name(1))).unwrap_or_default();
        let tmp = dir.path().join(format!("{}.tmp", snapshot_name(2)));
        assert!(fs::write(&tmp, &snapshot[..snapshot.len() / 2]).is_ok());
        let reopened = FileRegistry::open(dir.path(), FileConfig::default());
        assert!(
            reopened
                .as_ref()
                .is_ok_and(|r| (r.len(), even_count(r)) == (201, 101))
        );
        assert!(!tmp.exists());
        drop(reopened);
        let config = FileConfig {
            registry: RegistryConfig {
                unindexed_paths: vec!["metadata.even".into()],
                ..RegistryConfig::default()
            },
            ..FileConfig::default()
        };
        let reopened = FileRegistry::open(dir.path(), config);
        assert!(
            reopened
                .as_ref()
                .is_ok_and(|r| (r.len(), even_count(r)) == (201, 101))
        );
        let paths = reopened
            .map(|r| r.shared.read().indexed_paths())
            .unwrap_or(0);
        // deviceId, metadata, tags, metadata.i (metadata.even is not indexed).
        assert_eq!(paths, 4);
    }

    /// A snapshot of a format this version does not know is refused with a typed error and
    /// left alone.
    #[test]
    fn snapshots_of_an_unknown_format_are_refused() {
        let dir = tempfile::tempdir().expect("a temporary directory");
        let path = dir.path().join(snapshot_name(1));
        write_file(&path, &[header(b"IOTREG09", 5, 0)]);
        let before = fs::read(&path).unwrap_or_default();
        let result = FileRegistry::open(dir.path(), FileConfig::default());
        assert!(
            matches!(&result, Err(Error::UnsupportedFormat { found, .. }) if found == "IOTREG09"),
            "{result:?}"
        );
        assert_eq!(fs::read(&path).unwrap_or_default(), before);
        write_file(&path, &[header(b"NOTREG01", 5, 0)]);
        assert!(matches!(
            FileRegistry::open(dir.path(), FileConfig::default()),
            Err(Error::Corrupt { .. })
        ));
    }
}
