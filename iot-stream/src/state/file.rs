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
//! * Writes use the kit's group commit ([`GroupCommit`]): an operation is staged for the journal
//!   and applied in memory under the data lock, and acknowledged only once the batch holding it is
//!   written (and, with [`Durability::Fsync`], synced); concurrent writers share one fsync. A
//!   reader returns only once every write it may have seen is durable, so it never reports what
//!   a crash could take back.
//! * The journal is recovered by the kit's one rule: a bad frame with no intact frame after it is
//!   a torn tail (a short, damaged or zero-filled end) and is cut off; damage followed by intact
//!   frames is refused as [`Error::Corrupt`] unless the config asks for [`Recovery::Repair`].
//!   The snapshot is replaced atomically (temporary file, fsync, rename, directory fsync), so it
//!   cannot be torn: any damage in it is refused (or, under `Repair`, cut off with a warning).
//! * After a failed write or fsync the store refuses further writes (`Error::Unavailable`);
//!   reopening runs recovery.
//! * Writers are ordered by the data lock, held only for in-memory work (and compaction's capture
//!   of the state): no writer or reader holds it across an fsync.

use std::fs;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use async_trait::async_trait;
use iot_core::storage::frame::{self, FrameReader};
use iot_core::storage::{
    DirLock, Durability, GroupCommit, Recovery, StorageError, WalFile, fs as sfs, run_blocking,
};
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
    /// The state. Also orders writers: a write is planned, staged for the group commit and
    /// applied under it (memory only); never held across file I/O except by compaction's capture.
    data: Mutex<StateData>,
    /// The journal of the current generation, shared by concurrent writers (group commit).
    group: Arc<GroupCommit>,
    dir: PathBuf,
    config: FileStateStoreConfig,
    /// The current generation; changed only by compaction, under `data`.
    generation: Mutex<u64>,
    compacting: AtomicBool,
    /// Held while the store is open.
    _lock: Arc<DirLock>,
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
        let dir_lock = Arc::new(DirLock::acquire(dir)?);
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
        let group = GroupCommit::locked(
            WalFile {
                file: journal,
                path: journal_path,
                len: journal_bytes,
            },
            config.durability,
            dir_lock.clone(),
        );
        let shared = Shared {
            data: Mutex::new(data),
            group,
            dir: dir.to_owned(),
            config,
            generation: Mutex::new(generation),
            compacting: AtomicBool::new(false),
            _lock: dir_lock,
        };
        if repaired {
            // Rewrite the repaired snapshot, so that the repair lasts.
            shared.compact()?;
        }
        Ok(shared)
    }

    /// Stages `op` for the next group commit and applies it; the caller holds `data` (which
    /// orders writers). Returns the ticket to wait for. An operation that cannot be applied is
    /// refused before it is staged, so the journal never holds what memory does not.
    fn commit(&self, data: &mut StateData, op: Op) -> Result<u64> {
        let mut body = Vec::new();
        encode_json(&mut body, &op)?;
        // Last-known values can refuse an update (a patch too deep, say): try it on a copy first.
        let lkv = match &op {
            Op::Lkv { device, update } => {
                let mut lkv = data
                    .devices
                    .get(device)
                    .and_then(|d| d.lkv.clone())
                    .unwrap_or_default();
                lkv.apply(update)?;
                Some(lkv)
            }
            _ => None,
        };
        let ticket = self.group.stage(|buf| {
            buf.extend_from_slice(&body);
            Ok::<_, Error>(())
        })?;
        match (op, lkv) {
            (Op::Lkv { device, .. }, Some(lkv)) => {
                data.devices.entry(device).or_default().lkv = Some(lkv);
            }
            (op, _) => apply(data, op)?,
        }
        Ok(ticket)
    }

    fn wants_compaction(&self) -> bool {
        self.group.file_len() > self.config.compact_after_bytes
            && !self.compacting.load(Ordering::Relaxed)
    }

    /// Compacts unless another writer is. The writes are durable already: a failure is logged.
    fn compact_if_wanted(&self) {
        if !self.wants_compaction() || self.compacting.swap(true, Ordering::AcqRel) {
            return;
        }
        if let Err(e) = self.compact() {
            warn!(error = %e, "state store compaction failed");
        }
        self.compacting.store(false, Ordering::Release);
    }

    /// Writes a snapshot of the next generation and starts its empty journal. The state is
    /// encoded under `data` (so nothing is staged meanwhile and the snapshot covers every ticket
    /// the old journal was owed); the files are written after it is released.
    fn compact(&self) -> Result<()> {
        let data = lock(&self.data);
        let next = *lock(&self.generation) + 1;
        let mut out = Vec::new();
        encode_json(
            &mut out,
            &SnapshotFrame::Header {
                format: FORMAT,
                generation: next,
            },
        )?;
        for (device, state) in &data.devices {
            encode_json(
                &mut out,
                &SnapshotFrame::Device {
                    device: device.clone(),
                    state: state.clone(),
                },
            )?;
        }
        let devices = data.devices.len();
        let mut data = Some(data);
        self.group.rotate(|old| {
            drop(data.take());
            sfs::write_atomically(&self.dir.join(SNAPSHOT), &out)
                .map_err(|e| (Error::from(e), true))?;
            // From here the snapshot names the new generation: failing to start its journal
            // fails the store, or writes would go to a journal the next open ignores.
            let path = self.dir.join(journal_name(next));
            let journal = sfs::open_append(&path, true)
                .and_then(|journal| sfs::sync_dir(&self.dir).map(|()| journal))
                .map_err(|e| (Error::from(e), false))?;
            if let Err(e) = sfs::remove_durably(old) {
                // Harmless: the next open removes journals of other generations.
                warn!(error = %e, "could not remove the compacted journal");
            }
            Ok(WalFile {
                file: journal,
                path,
                len: 0,
            })
        })?;
        *lock(&self.generation) = next;
        info!(generation = next, devices, "state store compacted");
        Ok(())
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
        let shared = self.shared.clone();
        run_blocking(move || shared.compact()).await
    }

    /// Reads the state and returns once every write the read may have seen is durable.
    async fn read<T>(&self, f: impl FnOnce(&StateData) -> T) -> Result<T> {
        let (out, ticket) = {
            let data = lock(&self.shared.data);
            (f(&data), self.shared.group.last_staged())
        };
        self.shared.group.wait(ticket).await?;
        Ok(out)
    }

    /// Plans (and stages and applies, through `Shared::commit`) a write under the data lock,
    /// then waits for the group commit that makes it durable; compacts when the journal grew.
    async fn write<T>(
        &self,
        f: impl FnOnce(&Shared, &mut StateData) -> Result<(Option<u64>, T)>,
    ) -> Result<T> {
        let (ticket, out) = {
            let mut data = lock(&self.shared.data);
            let (ticket, out) = f(&self.shared, &mut data)?;
            // A write that changed nothing still read state that may be in flight.
            (
                ticket.unwrap_or_else(|| self.shared.group.last_staged()),
                out,
            )
        };
        self.shared.group.wait(ticket).await?;
        if self.shared.wants_compaction() {
            let shared = self.shared.clone();
            run_blocking(move || {
                shared.compact_if_wanted();
                Ok::<_, Error>(())
            })
            .await?;
        }
        Ok(out)
    }
}

#[async_trait]
impl StateStore for FileStateStore {
    async fn append_events(&self, device: &DeviceId, events: Vec<Event>) -> Result<usize> {
        let device = device.clone();
        self.write(move |shared, data| {
            let fresh = data.fresh_events(&device, events);
            let n = fresh.len();
            if n == 0 {
                return Ok((None, 0));
            }
            let ticket = shared.commit(
                data,
                Op::Events {
                    device,
                    events: fresh,
                },
            )?;
            Ok((Some(ticket), n))
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
        self.read(|data| data.read(device, from, to, limit)).await
    }

    async fn enforce_retention(&self, before: Timestamp) -> Result<u64> {
        self.write(move |shared, data| {
            let removed: u64 = data
                .devices
                .values()
                .map(|d| d.events.partition_point(|e| e.time < before) as u64)
                .sum();
            if removed == 0 {
                return Ok((None, 0));
            }
            let ticket = shared.commit(data, Op::Retention { before })?;
            Ok((Some(ticket), removed))
        })
        .await
    }

    async fn last_known(&self, device: &DeviceId) -> Result<Option<LastKnown>> {
        self.read(|data| data.devices.get(device).and_then(|d| d.lkv.clone()))
            .await
    }

    async fn merge_last_known(&self, device: &DeviceId, update: LkvUpdate) -> Result<bool> {
        let device = device.clone();
        self.write(move |shared, data| {
            if !data.would_apply(&device, &update)? {
                return Ok((None, false));
            }
            let ticket = shared.commit(data, Op::Lkv { device, update })?;
            Ok((Some(ticket), true))
        })
        .await
    }

    async fn devices(&self) -> Result<Vec<DeviceId>> {
        self.read(StateData::devices).await
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
