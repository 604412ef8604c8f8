//! `FileStateStore`: the state store on local disk, as a snapshot plus a journal, built on
//! [`iot_core::storage`].
//!
//! Layout of a store directory:
//!
//! ```text
//! DIR/LOCK                   flock'ed while the store is open (iot_core::storage::DirLock)
//! DIR/state.snap             snapshot: a header frame (format, generation) and one frame per device
//! DIR/journal-GEN.log        the operations acknowledged since the snapshot of generation GEN
//! ```
//!
//! Every frame is the storage kit's `len:u32 crc:u32 hcrc:u32 body` (little-endian, CRC32C; see
//! [`iot_core::storage::frame`]), the body JSON. All files are created with mode 0600.
//!
//! # Invariants
//!
//! * The state of the store is the snapshot of generation *g* with `journal-g.log` replayed over
//!   it; journals of other generations are leftovers of a compaction and are deleted on open.
//! * An operation is written (and, with [`Durability::Fsync`], synced) to the journal **before** it
//!   is applied in memory, so a reader never sees what a crash could take back.
//! * The journal is recovered by the kit's one rule: a bad frame with no intact frame after it is
//!   a torn tail (a short, damaged or zero-filled end) and is cut off; damage followed by intact
//!   frames is refused as [`Error::Corrupt`] unless the config asks for [`Recovery::Repair`].
//!   The snapshot is replaced atomically (temporary file, fsync, rename, directory fsync), so it
//!   cannot be torn: any damage in it is refused (or, under `Repair`, cut off with a warning).
//! * After a failed write or fsync the store refuses further writes (`Error::Unavailable`);
//!   reopening runs recovery.
//! * Writers are serialised by the writer lock, which they hold across the journal write and
//!   fsync; readers take only the data lock, which is never held across file I/O, so a read never
//!   waits for a disk.

use std::fs::{self, File};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use async_trait::async_trait;
use iot_core::storage::frame::{self, FrameReader};
use iot_core::storage::{DirLock, Durability, Recovery, StorageError, fs as sfs, run_blocking};
use iot_core::{DeviceId, Timestamp};
use serde::{Deserialize, Serialize};
use tracing::{info, instrument, warn};

use super::data::{DeviceState, StateData, events_repr};
use super::{Event, LastKnown, LkvUpdate, StateStore};
use crate::error::{Error, Result};

const SNAPSHOT: &str = "state.snap";
/// Snapshot format: 2 since the store moved onto the storage kit's frames (with a header checksum).
const FORMAT: u32 = 2;
/// Largest frame accepted when reading: a length above it is damage, not data.
const MAX_FRAME: usize = 256 * 1024 * 1024;

/// How a [`FileStateStore`] writes and recovers.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct FileStateStoreConfig {
    /// When a write is acknowledged: [`Durability::Fsync`] (default) syncs the journal before
    /// each acknowledgement; [`Durability::OsBuffered`] survives a process crash, not a machine
    /// crash. [`Durability::Interval`] is refused at open (this store has no background task).
    pub durability: Durability,
    /// Compact (write a snapshot, start a new journal) once the journal exceeds this many bytes.
    /// Default 64 MiB.
    pub compact_after_bytes: u64,
    /// What open does with corruption (damage followed by intact data): refuse with
    /// [`Error::Corrupt`] ([`Recovery::Strict`], the default) or cut the file at the damage
    /// ([`Recovery::Repair`], logged). A torn tail is always cut.
    pub recovery: Recovery,
}

impl Default for FileStateStoreConfig {
    fn default() -> Self {
        FileStateStoreConfig {
            durability: Durability::Fsync,
            compact_after_bytes: 64 * 1024 * 1024,
            recovery: Recovery::Strict,
        }
    }
}

/// Chainable setters: the struct is `non_exhaustive`, so callers outside this crate start from
/// [`Default`] and change what they need.
impl FileStateStoreConfig {
    /// Sets [`durability`](Self::durability).
    pub fn durability(mut self, durability: Durability) -> Self {
        self.durability = durability;
        self
    }

    /// Sets [`compact_after_bytes`](Self::compact_after_bytes).
    pub fn compact_after_bytes(mut self, compact_after_bytes: u64) -> Self {
        self.compact_after_bytes = compact_after_bytes;
        self
    }

    /// Sets [`recovery`](Self::recovery).
    pub fn recovery(mut self, recovery: Recovery) -> Self {
        self.recovery = recovery;
        self
    }
}

impl FileStateStoreConfig {
    fn validate(&self) -> Result<()> {
        Ok(self
            .durability
            .require_no_background_sync("FileStateStore")?)
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
    shared: Arc<Shared>,
}

#[derive(Debug)]
struct Shared {
    /// Held by writers across the journal write (and fsync); taken before `data`.
    writer: Mutex<Writer>,
    /// The state; held only for in-memory work.
    data: Mutex<StateData>,
}

#[derive(Debug)]
struct Writer {
    dir: PathBuf,
    config: FileStateStoreConfig,
    generation: u64,
    journal: File,
    journal_bytes: u64,
    failed: Option<String>,
    _lock: DirLock,
}

fn journal_name(generation: u64) -> String {
    format!("journal-{generation:020}.log")
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// What the snapshot holds: its generation, the devices' state, and whether a repair dropped part
/// of it (it must then be rewritten, or the next strict open would refuse it again).
struct Snapshot {
    generation: u64,
    data: StateData,
    repaired: bool,
}

/// Reads the snapshot. It is replaced atomically, so a damaged end is not a torn write: it is
/// refused like any other damage unless `recovery` is `Repair`.
fn read_snapshot(path: &Path, bytes: &[u8], recovery: Recovery) -> Result<Snapshot> {
    let mut reader = FrameReader::new(path, bytes, 0, MAX_FRAME).with_recovery(recovery);
    let mut data = StateData::default();
    let mut generation = None;
    while let Some(f) = reader.next_frame()? {
        let decoded: SnapshotFrame =
            serde_json::from_slice(f.body).map_err(|e| reader.corrupt_body(&f, e.to_string()))?;
        match (generation, decoded) {
            (
                None,
                SnapshotFrame::Header {
                    format,
                    generation: g,
                },
            ) if format == FORMAT => generation = Some(g),
            (None, SnapshotFrame::Header { format, .. }) => {
                return Err(reader
                    .corrupt_body(&f, format!("unknown snapshot format {format}"))
                    .into());
            }
            (Some(_), SnapshotFrame::Device { device, state }) => {
                data.devices.insert(device, state);
            }
            _ => return Err(reader.corrupt_body(&f, "unexpected snapshot frame").into()),
        }
    }
    // A cut that is not already a repair is a damaged end, never a torn write.
    if let Some(tail) = reader.torn_tail()
        && tail.repaired_corruption.is_none()
    {
        if recovery == Recovery::Strict {
            return Err(StorageError::corrupt(
                path,
                tail.position,
                "damaged end of a snapshot (snapshots are replaced atomically, never torn)",
            )
            .into());
        }
        warn!(path = %path.display(), position = tail.position, dropped_bytes = tail.bytes,
            "repair: ignoring the damaged end of the snapshot");
    }
    let Some(generation) = generation else {
        return Err(StorageError::corrupt(path, 0, "snapshot without a header frame").into());
    };
    Ok(Snapshot {
        generation,
        data,
        repaired: reader.torn_tail().is_some(),
    })
}

/// Replays the journal over `data`, cutting a torn tail (or, under `Repair`, corruption) off the
/// file. Returns the journal's length after recovery.
fn replay_journal(path: &Path, data: &mut StateData, recovery: Recovery) -> Result<u64> {
    let Some(bytes) = sfs::read_optional(path)? else {
        return Ok(0);
    };
    let scan = frame::recover_file(path, &bytes, 0, MAX_FRAME, recovery)?;
    for (position, body) in &scan.frames {
        let op: Op = serde_json::from_slice(&bytes[body.clone()])
            .map_err(|e| StorageError::corrupt(path, *position, e.to_string()))?;
        apply(data, op)?;
    }
    Ok(scan.valid_end)
}

impl Shared {
    fn open(dir: &Path, config: FileStateStoreConfig) -> Result<Shared> {
        config.validate()?;
        sfs::create_dir_durably(dir)?;
        let dir_lock = DirLock::acquire(dir)?;
        let snapshot = dir.join(SNAPSHOT);
        sfs::remove_leftover_temp(&snapshot)?;
        let Snapshot {
            generation,
            mut data,
            repaired,
        } = match sfs::read_optional(&snapshot)? {
            Some(bytes) => read_snapshot(&snapshot, &bytes, config.recovery)?,
            None => Snapshot {
                generation: 0,
                data: StateData::default(),
                repaired: false,
            },
        };
        let journal_path = dir.join(journal_name(generation));
        let journal_bytes = replay_journal(&journal_path, &mut data, config.recovery)?;
        let journal = sfs::open_append(&journal_path, true)?;
        sfs::sync_dir(dir)?;
        // Journals of other generations were folded into the snapshot (or never were).
        let current = journal_name(generation);
        let entries = fs::read_dir(dir).map_err(|e| StorageError::io("list", dir, e))?;
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            if name.starts_with("journal-")
                && name != current
                && let Err(e) = sfs::remove_durably(&entry.path())
            {
                warn!(error = %e, "could not remove a stale journal");
            }
        }
        let shared = Shared {
            writer: Mutex::new(Writer {
                dir: dir.to_owned(),
                config,
                generation,
                journal,
                journal_bytes,
                failed: None,
                _lock: dir_lock,
            }),
            data: Mutex::new(data),
        };
        if repaired {
            // Rewrite the repaired snapshot, so that the repair lasts.
            let mut writer = lock(&shared.writer);
            shared.compact(&mut writer)?;
        }
        Ok(shared)
    }

    /// Journals `op` (durably if configured), then applies it. The caller holds `writer`.
    #[allow(
        clippy::disallowed_methods,
        reason = "writers run on the blocking pool"
    )]
    fn commit(&self, writer: &mut Writer, op: Op) -> Result<()> {
        if let Some(reason) = &writer.failed {
            return Err(Error::Unavailable {
                reason: reason.clone(),
            });
        }
        let body = serde_json::to_vec(&op).map_err(|e| Error::invalid(e.to_string()))?;
        let mut bytes = Vec::with_capacity(frame::frame_len(body.len()));
        frame::encode(&mut bytes, &body)?;
        let written = writer.journal.write_all(&bytes).and_then(|()| {
            if writer.config.durability.syncs_each_write() {
                writer.journal.sync_data()
            } else {
                Ok(())
            }
        });
        if let Err(e) = written {
            // What reached the file is unknown: only a reopen (recovery) can tell.
            writer.failed = Some(format!("journal write failed: {e}"));
            return Err(StorageError::io(
                "write",
                writer.dir.join(journal_name(writer.generation)),
                e,
            )
            .into());
        }
        writer.journal_bytes += bytes.len() as u64;
        apply(&mut lock(&self.data), op)?;
        if writer.journal_bytes > writer.config.compact_after_bytes {
            self.compact(writer)?;
        }
        Ok(())
    }

    /// Writes a snapshot of the next generation and starts its empty journal. The caller holds
    /// `writer`, so the state cannot change meanwhile; the data lock is held only to encode it.
    fn compact(&self, writer: &mut Writer) -> Result<()> {
        let next = writer.generation + 1;
        let (out, devices) = {
            let data = lock(&self.data);
            let mut out = Vec::new();
            let header = SnapshotFrame::Header {
                format: FORMAT,
                generation: next,
            };
            encode_json(&mut out, &header)?;
            for (device, state) in &data.devices {
                encode_json(
                    &mut out,
                    &SnapshotFrame::Device {
                        device: device.clone(),
                        state: state.clone(),
                    },
                )?;
            }
            (out, data.devices.len())
        };
        sfs::write_atomically(&writer.dir.join(SNAPSHOT), &out)?;
        // From here the snapshot names the new generation: failing to start its journal must stop
        // writes, or they would go to a journal the next open ignores.
        let started = sfs::open_append(&writer.dir.join(journal_name(next)), true)
            .and_then(|journal| sfs::sync_dir(&writer.dir).map(|()| journal));
        match started {
            Ok(journal) => {
                let old = writer.dir.join(journal_name(writer.generation));
                writer.journal = journal;
                writer.generation = next;
                writer.journal_bytes = 0;
                if let Err(e) = sfs::remove_durably(&old) {
                    // Harmless: the next open removes journals of other generations.
                    warn!(error = %e, "could not remove the compacted journal");
                }
                info!(generation = next, devices, "state store compacted");
                Ok(())
            }
            Err(e) => {
                writer.failed = Some(format!("compaction failed: {e}"));
                Err(e.into())
            }
        }
    }
}

fn encode_json(out: &mut Vec<u8>, value: &impl Serialize) -> Result<()> {
    let start = frame::begin(out);
    serde_json::to_writer(&mut *out, value).map_err(|e| Error::invalid(e.to_string()))?;
    frame::finish(out, start)?;
    Ok(())
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
    /// Opens (creating if needed) the store in `dir`, running recovery: a torn journal tail is
    /// cut off; corruption is refused with [`Error::Corrupt`] (naming the file and position)
    /// unless `config.recovery` is [`Recovery::Repair`]. A second opener of the same directory
    /// gets [`Error::Locked`].
    #[instrument(skip_all, fields(dir = %dir.as_ref().display()))]
    pub async fn open(dir: impl AsRef<Path>, config: FileStateStoreConfig) -> Result<Self> {
        let dir = dir.as_ref().to_owned();
        let shared = run_blocking(move || Shared::open(&dir, config)).await?;
        Ok(FileStateStore {
            shared: Arc::new(shared),
        })
    }

    /// Folds the journal into a new snapshot now.
    pub async fn compact(&self) -> Result<()> {
        self.write(|shared, writer| shared.compact(writer)).await
    }

    fn data(&self) -> MutexGuard<'_, StateData> {
        lock(&self.shared.data)
    }

    /// Runs the write `f` under the writer lock on the blocking pool (it writes and fsyncs).
    async fn write<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Shared, &mut Writer) -> Result<T> + Send + 'static,
    ) -> Result<T> {
        let shared = self.shared.clone();
        run_blocking(move || {
            let mut writer = lock(&shared.writer);
            f(&shared, &mut writer)
        })
        .await
    }
}

#[async_trait]
impl StateStore for FileStateStore {
    async fn append_events(&self, device: &DeviceId, events: Vec<Event>) -> Result<usize> {
        let device = device.clone();
        self.write(move |shared, writer| {
            let fresh = lock(&shared.data).fresh_events(&device, events);
            let n = fresh.len();
            if n > 0 {
                shared.commit(
                    writer,
                    Op::Events {
                        device,
                        events: fresh,
                    },
                )?;
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
        Ok(self.data().read(device, from, to, limit))
    }

    async fn enforce_retention(&self, before: Timestamp) -> Result<u64> {
        self.write(move |shared, writer| {
            let removed: u64 = lock(&shared.data)
                .devices
                .values()
                .map(|d| d.events.partition_point(|e| e.time < before) as u64)
                .sum();
            if removed > 0 {
                shared.commit(writer, Op::Retention { before })?;
            }
            Ok(removed)
        })
        .await
    }

    async fn last_known(&self, device: &DeviceId) -> Result<Option<LastKnown>> {
        Ok(self.data().devices.get(device).and_then(|d| d.lkv.clone()))
    }

    async fn merge_last_known(&self, device: &DeviceId, update: LkvUpdate) -> Result<bool> {
        let device = device.clone();
        self.write(move |shared, writer| {
            if !lock(&shared.data).would_apply(&device, &update)? {
                return Ok(false);
            }
            shared.commit(writer, Op::Lkv { device, update })?;
            Ok(true)
        })
        .await
    }

    async fn devices(&self) -> Result<Vec<DeviceId>> {
        Ok(self.data().devices())
    }
}

// The setters are the only way other crates can build these (`non_exhaustive`): each must set
// its own field and nothing else. Values differ from the defaults and from each other, so a
// setter that writes the wrong field leaves the expected one at its default and fails.
#[cfg(test)]
mod setter_tests {
    use super::*;

    #[test]
    fn each_setter_sets_its_own_field() {
        let built = FileStateStoreConfig::default()
            .durability(Durability::OsBuffered)
            .compact_after_bytes(100)
            .recovery(Recovery::Repair);
        let expected = FileStateStoreConfig {
            durability: Durability::OsBuffered,
            compact_after_bytes: 100,
            recovery: Recovery::Repair,
        };
        assert_eq!(built, expected);
    }
}
