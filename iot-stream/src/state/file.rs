//! `FileStateStore`: the state store on local disk, as a snapshot plus a journal.
//!
//! Layout of a store directory:
//!
//! ```text
//! DIR/LOCK                   flock'ed while the store is open
//! DIR/state.snap             snapshot: a header frame (format, generation) and one frame per device
//! DIR/journal-GEN.log        the operations acknowledged since the snapshot of generation GEN
//! ```
//!
//! Every frame is `len:u32 crc:u32 body` (little-endian, `crc` = CRC32C of `body`, `body` JSON).
//! All files are created with mode 0600.
//!
//! # Invariants
//!
//! * The state of the store is the snapshot of generation *g* with `journal-g.log` replayed over
//!   it; journals of other generations are leftovers of a compaction and are deleted on open.
//! * An operation is written (and, with `fsync`, synced) to the journal **before** it is applied
//!   in memory, so a reader never sees what a crash could take back.
//! * Only the last frame of the journal can be torn: a frame that fails its checks and reaches
//!   the end of the file is truncated on open; one followed by more data is refused as
//!   [`Error::Corrupt`]. The snapshot is replaced atomically (temporary file, fsync, rename,
//!   directory fsync), so any damage in it is refused.
//! * After a failed write or fsync the store refuses further writes (`Error::Unavailable`);
//!   reopening runs recovery.

use std::fs::{self, File, OpenOptions, TryLockError};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use async_trait::async_trait;
use iot_core::{DeviceId, Timestamp};
use serde::{Deserialize, Serialize};
use tracing::{info, instrument, warn};

use super::data::{DeviceState, StateData, events_repr};
use super::{Event, LastKnown, LkvUpdate, StateStore};
use crate::error::{Error, Result};

const SNAPSHOT: &str = "state.snap";
const FORMAT: u32 = 1;
const FRAME_HEADER: usize = 8;
/// Largest frame accepted when reading: a length above it is damage, not data.
const MAX_FRAME: usize = 256 * 1024 * 1024;

/// How a [`FileStateStore`] writes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FileStateStoreConfig {
    /// Fsync the journal before acknowledging each write (default `true`). Without it a process
    /// crash loses nothing acknowledged, a machine crash may.
    pub fsync: bool,
    /// Compact (write a snapshot, start a new journal) once the journal exceeds this many bytes.
    /// Default 64 MiB.
    pub compact_after_bytes: u64,
}

impl Default for FileStateStoreConfig {
    fn default() -> Self {
        FileStateStoreConfig {
            fsync: true,
            compact_after_bytes: 64 * 1024 * 1024,
        }
    }
}

/// One journal entry.
#[derive(Serialize, Deserialize)]
enum Op {
    Events {
        device: DeviceId,
        #[serde(with = "events_repr")]
        events: Vec<Event>,
    },
    Lkv {
        device: DeviceId,
        update: LkvUpdate,
    },
    Retention {
        before: Timestamp,
    },
}

/// One snapshot frame.
#[derive(Serialize, Deserialize)]
enum SnapshotFrame {
    Header {
        format: u32,
        generation: u64,
    },
    Device {
        device: DeviceId,
        state: DeviceState,
    },
}

/// A [`StateStore`] on local disk: all state in memory, every write journaled first (CRC32C-framed,
/// fsync'ed by default), compacted into an atomically replaced snapshot. See the module docs for
/// the file layout and invariants.
///
/// ```
/// # tokio::runtime::Builder::new_multi_thread().enable_all().build().unwrap().block_on(async {
/// use iot_core::{DeviceId, Timestamp};
/// use iot_stream::{FileStateStore, FileStateStoreConfig, LkvUpdate, StateStore};
/// use serde_json::json;
///
/// let dir = tempfile::tempdir().unwrap();
/// let dev = DeviceId::new("dev-1")?;
/// let store = FileStateStore::open(dir.path(), FileStateStoreConfig::default()).await?;
/// let update = LkvUpdate { patch: json!({"temp": 21}), key_frame: false,
///     source_time: Timestamp::from_unix_millis(1), source: None };
/// store.merge_last_known(&dev, update).await?;
/// drop(store);
/// let store = FileStateStore::open(dir.path(), FileStateStoreConfig::default()).await?;
/// assert_eq!(store.last_known(&dev).await?.map(|l| l.values()), Some(json!({"temp": 21})));
/// # Ok::<(), iot_stream::Error>(()) }).unwrap();
/// ```
#[derive(Debug, Clone)]
pub struct FileStateStore {
    inner: Arc<Mutex<Inner>>,
}

#[derive(Debug)]
struct Inner {
    dir: PathBuf,
    config: FileStateStoreConfig,
    data: StateData,
    generation: u64,
    journal: File,
    journal_bytes: u64,
    failed: Option<String>,
    _lock: File,
}

fn open_private(path: &Path, append: bool) -> Result<File> {
    let mut options = OpenOptions::new();
    options.read(true).create(true);
    if append {
        options.append(true);
    } else {
        options.write(true);
    }
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    options.open(path).map_err(|e| Error::io("open", path, e))
}

fn sync_dir(dir: &Path) -> Result<()> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| Error::io("fsync directory", dir, e))
}

fn journal_name(generation: u64) -> String {
    format!("journal-{generation:020}.log")
}

fn frame(body: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(FRAME_HEADER + body.len());
    out.extend_from_slice(&(body.len() as u32).to_le_bytes());
    out.extend_from_slice(&crc32c::crc32c(body).to_le_bytes());
    out.extend_from_slice(body);
    out
}

/// Why the rest of a file was refused, and whether the bad frame reaches the end of the file (a
/// torn tail) or is followed by more data (damage in the middle).
type Refusal = Option<(String, bool)>;

/// Splits `bytes` into frame bodies. Returns the bodies, the length of the valid prefix, and the
/// reason the rest (if any) was refused.
fn frames(bytes: &[u8]) -> (Vec<&[u8]>, usize, Refusal) {
    let mut out = Vec::new();
    let mut at = 0;
    while at < bytes.len() {
        let rest = &bytes[at..];
        let bad = |reason: String, reaches_end: bool| Some((reason, reaches_end));
        if rest.len() < FRAME_HEADER {
            return (out, at, bad("short frame header".into(), true));
        }
        let len = u32::from_le_bytes([rest[0], rest[1], rest[2], rest[3]]) as usize;
        let crc = u32::from_le_bytes([rest[4], rest[5], rest[6], rest[7]]);
        if len > MAX_FRAME || FRAME_HEADER + len > rest.len() {
            return (
                out,
                at,
                bad(format!("frame length {len} runs past the file"), true),
            );
        }
        let body = &rest[FRAME_HEADER..FRAME_HEADER + len];
        if crc32c::crc32c(body) != crc {
            let reaches_end = FRAME_HEADER + len == rest.len();
            return (out, at, bad("checksum mismatch".into(), reaches_end));
        }
        out.push(body);
        at += FRAME_HEADER + len;
    }
    (out, at, None)
}

fn read_all(path: &Path) -> Result<Option<Vec<u8>>> {
    match File::open(path) {
        Ok(mut f) => {
            let mut buf = Vec::new();
            f.read_to_end(&mut buf)
                .map_err(|e| Error::io("read", path, e))?;
            Ok(Some(buf))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(Error::io("open", path, e)),
    }
}

fn corrupt(path: &Path, position: usize, reason: impl Into<String>) -> Error {
    Error::Corrupt {
        path: path.to_owned(),
        position: position as u64,
        reason: reason.into(),
    }
}

impl Inner {
    fn open(dir: &Path, config: FileStateStoreConfig) -> Result<Inner> {
        if !dir.is_dir() {
            fs::create_dir_all(dir).map_err(|e| Error::io("create directory", dir, e))?;
            if let Some(parent) = dir.parent() {
                sync_dir(parent)?;
            }
        }
        let lock_path = dir.join("LOCK");
        let lock = open_private(&lock_path, false)?;
        match lock.try_lock() {
            Ok(()) => {}
            Err(TryLockError::WouldBlock) => return Err(Error::Locked { path: lock_path }),
            Err(TryLockError::Error(e)) => return Err(Error::io("lock", lock_path, e)),
        }
        let mut data = StateData::default();
        let snapshot = dir.join(SNAPSHOT);
        let mut generation = 0;
        if let Some(bytes) = read_all(&snapshot)? {
            let (bodies, valid, bad) = frames(&bytes);
            if let Some((reason, _)) = bad {
                return Err(corrupt(&snapshot, valid, reason));
            }
            let mut position = 0;
            for (i, body) in bodies.into_iter().enumerate() {
                let frame: SnapshotFrame = serde_json::from_slice(body)
                    .map_err(|e| corrupt(&snapshot, position, e.to_string()))?;
                match (i, frame) {
                    (
                        0,
                        SnapshotFrame::Header {
                            format,
                            generation: g,
                        },
                    ) if format == FORMAT => {
                        generation = g;
                    }
                    (_, SnapshotFrame::Device { device, state }) if i > 0 => {
                        data.devices.insert(device, state);
                    }
                    _ => return Err(corrupt(&snapshot, position, "unexpected frame")),
                }
                position += FRAME_HEADER + body.len();
            }
        }
        let journal_path = dir.join(journal_name(generation));
        let mut journal_bytes = 0;
        if let Some(bytes) = read_all(&journal_path)? {
            let (bodies, valid, bad) = frames(&bytes);
            let mut position = 0;
            for body in bodies {
                let op: Op = serde_json::from_slice(body)
                    .map_err(|e| corrupt(&journal_path, position, e.to_string()))?;
                apply(&mut data, op)?;
                position += FRAME_HEADER + body.len();
            }
            if let Some((reason, reaches_end)) = bad {
                if !reaches_end {
                    return Err(corrupt(&journal_path, valid, reason));
                }
                warn!(path = %journal_path.display(), dropped = bytes.len() - valid, %reason,
                    "truncating the torn tail of the journal");
                let f = open_private(&journal_path, false)?;
                f.set_len(valid as u64)
                    .and_then(|()| f.sync_all())
                    .map_err(|e| Error::io("truncate", &journal_path, e))?;
            }
            journal_bytes = valid as u64;
        }
        let journal = open_private(&journal_path, true)?;
        sync_dir(dir)?;
        // Journals of other generations were folded into the snapshot (or never were).
        if let Ok(entries) = fs::read_dir(dir) {
            for entry in entries.flatten() {
                let name = entry.file_name().to_string_lossy().into_owned();
                let stale_journal =
                    name.starts_with("journal-") && name != journal_name(generation);
                if stale_journal || name.ends_with(".tmp") {
                    let _ = fs::remove_file(entry.path());
                }
            }
        }
        Ok(Inner {
            dir: dir.to_owned(),
            config,
            data,
            generation,
            journal,
            journal_bytes,
            failed: None,
            _lock: lock,
        })
    }

    /// Journals `op` (durably if configured), then applies it.
    fn commit(&mut self, op: Op) -> Result<()> {
        if let Some(reason) = &self.failed {
            return Err(Error::Unavailable {
                reason: reason.clone(),
            });
        }
        let body = serde_json::to_vec(&op).map_err(|e| Error::invalid(e.to_string()))?;
        let bytes = frame(&body);
        let path = self.dir.join(journal_name(self.generation));
        let written = self.journal.write_all(&bytes).and_then(|()| {
            if self.config.fsync {
                self.journal.sync_data()
            } else {
                Ok(())
            }
        });
        if let Err(e) = written {
            self.failed = Some(format!("journal write failed: {e}"));
            return Err(Error::io("write", path, e));
        }
        self.journal_bytes += bytes.len() as u64;
        apply(&mut self.data, op)?;
        if self.journal_bytes > self.config.compact_after_bytes {
            self.compact()?;
        }
        Ok(())
    }

    /// Writes a snapshot of the next generation and starts its empty journal.
    fn compact(&mut self) -> Result<()> {
        let next = self.generation + 1;
        let mut out = frame(
            &serde_json::to_vec(&SnapshotFrame::Header {
                format: FORMAT,
                generation: next,
            })
            .map_err(|e| Error::invalid(e.to_string()))?,
        );
        for (device, state) in &self.data.devices {
            let body = serde_json::to_vec(&SnapshotFrame::Device {
                device: device.clone(),
                state: state.clone(),
            })
            .map_err(|e| Error::invalid(e.to_string()))?;
            out.extend_from_slice(&frame(&body));
        }
        let tmp = self.dir.join(format!("{SNAPSHOT}.tmp"));
        let target = self.dir.join(SNAPSHOT);
        {
            let mut f = open_private(&tmp, false)?;
            f.set_len(0)
                .and_then(|()| f.write_all(&out))
                .and_then(|()| f.sync_all())
                .map_err(|e| Error::io("write", &tmp, e))?;
        }
        fs::rename(&tmp, &target).map_err(|e| Error::io("rename", &target, e))?;
        // From here the snapshot names the new generation: failing to start its journal must stop
        // writes, or they would go to a journal the next open ignores.
        let started = (|| {
            sync_dir(&self.dir)?;
            let journal = open_private(&self.dir.join(journal_name(next)), true)?;
            sync_dir(&self.dir)?;
            Ok::<_, Error>(journal)
        })();
        match started {
            Ok(journal) => {
                let old = self.dir.join(journal_name(self.generation));
                self.journal = journal;
                self.generation = next;
                self.journal_bytes = 0;
                let _ = fs::remove_file(old);
                info!(
                    generation = next,
                    devices = self.data.devices.len(),
                    "state store compacted"
                );
                Ok(())
            }
            Err(e) => {
                self.failed = Some(format!("compaction failed: {e}"));
                Err(e)
            }
        }
    }
}

fn apply(data: &mut StateData, op: Op) -> Result<()> {
    match op {
        Op::Events { device, events } => {
            data.append(&device, events);
        }
        Op::Lkv { device, update } => {
            data.merge(&device, &update)?;
        }
        Op::Retention { before } => {
            data.retention(before);
        }
    }
    Ok(())
}

impl FileStateStore {
    /// Opens (creating if needed) the store in `dir`, running recovery.
    #[instrument(skip_all, fields(dir = %dir.as_ref().display()))]
    pub async fn open(dir: impl AsRef<Path>, config: FileStateStoreConfig) -> Result<Self> {
        let dir = dir.as_ref().to_owned();
        let inner = tokio::task::spawn_blocking(move || Inner::open(&dir, config))
            .await
            .map_err(|e| Error::Processor {
                reason: format!("open task failed: {e}"),
            })??;
        Ok(FileStateStore {
            inner: Arc::new(Mutex::new(inner)),
        })
    }

    /// Folds the journal into a new snapshot now.
    pub async fn compact(&self) -> Result<()> {
        self.blocking(|inner| inner.compact()).await
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Runs `f` on the store's state on the blocking pool (it writes and fsyncs).
    async fn blocking<T: Send + 'static>(
        &self,
        f: impl FnOnce(&mut Inner) -> Result<T> + Send + 'static,
    ) -> Result<T> {
        let inner = self.inner.clone();
        tokio::task::spawn_blocking(move || {
            let mut guard = inner.lock().unwrap_or_else(PoisonError::into_inner);
            f(&mut guard)
        })
        .await
        .map_err(|e| Error::Processor {
            reason: format!("state store task failed: {e}"),
        })?
    }
}

#[async_trait]
impl StateStore for FileStateStore {
    async fn append_events(&self, device: &DeviceId, events: Vec<Event>) -> Result<usize> {
        let device = device.clone();
        self.blocking(move |inner| {
            let fresh = inner.data.fresh_events(&device, events);
            let n = fresh.len();
            if n > 0 {
                inner.commit(Op::Events {
                    device,
                    events: fresh,
                })?;
            }
            Ok(n)
        })
        .await
    }

    async fn read_events(
        &self,
        device: &DeviceId,
        from: Timestamp,
        to: Timestamp,
        limit: usize,
    ) -> Result<Vec<Event>> {
        Ok(self.lock().data.read(device, from, to, limit))
    }

    async fn enforce_retention(&self, before: Timestamp) -> Result<u64> {
        self.blocking(move |inner| {
            let removed: u64 = inner
                .data
                .devices
                .values()
                .map(|d| d.events.partition_point(|e| e.time < before) as u64)
                .sum();
            if removed > 0 {
                inner.commit(Op::Retention { before })?;
            }
            Ok(removed)
        })
        .await
    }

    async fn last_known(&self, device: &DeviceId) -> Result<Option<LastKnown>> {
        Ok(self
            .lock()
            .data
            .devices
            .get(device)
            .and_then(|d| d.lkv.clone()))
    }

    async fn merge_last_known(&self, device: &DeviceId, update: LkvUpdate) -> Result<bool> {
        let device = device.clone();
        self.blocking(move |inner| {
            if !inner.data.would_apply(&device, &update)? {
                return Ok(false);
            }
            inner.commit(Op::Lkv { device, update })?;
            Ok(true)
        })
        .await
    }

    async fn devices(&self) -> Result<Vec<DeviceId>> {
        Ok(self.lock().data.devices())
    }
}
