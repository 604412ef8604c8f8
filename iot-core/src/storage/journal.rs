//! A write-ahead journal with snapshots, for stores whose whole state fits in memory (the
//! gateway's inbox and twins, the MQTT endpoint's persistent sessions, ...).
//!
//! # Files
//!
//! A journal directory holds `LOCK` (see [`DirLock`]), `snapshot` (the whole state as of a
//! sequence number, replaced atomically) and `wal` (every operation since). Both data files start
//! with the store's 8-byte magic and a 4-byte kind, followed by [frames](super::frame):
//!
//! ```text
//! wal      = magic "WAL_" frame(seq:u64 op-as-JSON)*
//! snapshot = magic "SNAP" frame(last_seq:u64 op_count:u64) frame(op-as-JSON){op_count}
//! ```
//!
//! # Invariants
//!
//! * Writes use [group commit](super::group): a write plans its operations from the state, then
//!   stages them and applies them under the state lock, and is acknowledged only once the batch
//!   holding them is written (and, with [`Durability::Fsync`], fsynced), so a crash loses nothing
//!   acknowledged. Concurrent writers share one fsync.
//! * A read returns only once every write it may have seen is durable.
//! * WAL sequence numbers strictly increase. Recovery follows the kit's torn-tail rule: a torn
//!   last frame is cut off, damage followed by intact frames is refused with
//!   [`StorageError::Corrupt`] (or cut off when the store is opened with [`Recovery::Repair`]).
//! * A snapshot is renamed into place complete and fsynced, so any damage in it is corruption.
//!   After a snapshot the WAL is replaced by an empty one; replay skips operations the snapshot
//!   holds, so a crash between the two steps is harmless.
//! * After a failed batch (memory already holds its writes), the journal refuses writes and reads
//!   that may have seen them ([`StorageError::Failed`]) until the store is reopened.
//! * Compaction holds the state lock while [`GroupCommit::rotate`] takes what is staged, so the
//!   snapshot covers every operation the old WAL was owed; it is written after the lock is released.

#![allow(
    clippy::disallowed_methods,
    reason = "the kit's blocking primitives; async callers reach them through run_blocking"
)]

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use serde::Serialize;
use serde::de::DeserializeOwned;
use tracing::{info, warn};

use crate::storage::blocking::run_blocking_storage;
use crate::storage::dir_lock::DirLock;
use crate::storage::durability::Durability;
use crate::storage::error::{StorageError, StorageResult};
use crate::storage::frame::{self, FrameReader, Recovery};
use crate::storage::fs;
use crate::storage::group::{GroupCommit, WalFile};

const SNAPSHOT_FILE: &str = "snapshot";
const WAL_FILE: &str = "wal";
const WAL_KIND: &[u8; 4] = b"WAL_";
const SNAP_KIND: &[u8; 4] = b"SNAP";
const PREFIX_LEN: usize = 12;

/// State that a [`Journal`] makes durable.
pub trait Journaled {
    /// One change.
    type Op: Serialize + DeserializeOwned;
    /// Applies a change (replay and live writes both go through here).
    fn apply(&mut self, op: Self::Op);
    /// Operations that rebuild the current state from empty, for a snapshot.
    fn snapshot_ops(&self) -> Vec<Self::Op>;
}

/// How a [`Journal`] is opened.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct JournalConfig {
    /// When an append is acknowledged. [`Durability::Interval`] is refused. Default
    /// [`Durability::Fsync`].
    pub durability: Durability,
    /// A snapshot is written once the WAL is larger than this and than the last snapshot.
    /// Default 4 MiB.
    pub compact_after_bytes: u64,
    /// The largest encoded operation. Default 4 MiB.
    pub max_op_bytes: usize,
    /// What recovery does with corruption. Default [`Recovery::Strict`].
    pub recovery: Recovery,
}

impl Default for JournalConfig {
    fn default() -> Self {
        JournalConfig {
            durability: Durability::Fsync,
            compact_after_bytes: 4 * 1024 * 1024,
            max_op_bytes: 4 * 1024 * 1024,
            recovery: Recovery::Strict,
        }
    }
}

impl JournalConfig {
    /// The defaults with `durability`.
    pub fn with_durability(durability: Durability) -> Self {
        JournalConfig {
            durability,
            ..Self::default()
        }
    }

    /// Sets the compaction threshold.
    pub fn compact_after_bytes(mut self, bytes: u64) -> Self {
        self.compact_after_bytes = bytes;
        self
    }

    /// Sets the largest encoded operation.
    pub fn max_op_bytes(mut self, bytes: usize) -> Self {
        self.max_op_bytes = bytes;
        self
    }

    /// Sets what recovery does with corruption.
    pub fn recovery(mut self, recovery: Recovery) -> Self {
        self.recovery = recovery;
        self
    }
}

/// A store's state in memory with a write-ahead journal behind it; see the [module docs](self).
/// Cloning is cheap and shares the store.
#[derive(Debug)]
pub struct Journal<S> {
    inner: Arc<Inner<S>>,
}

impl<S> Clone for Journal<S> {
    fn clone(&self) -> Self {
        Journal {
            inner: Arc::clone(&self.inner),
        }
    }
}

#[derive(Debug)]
struct Inner<S> {
    dir: PathBuf,
    magic: [u8; 8],
    config: JournalConfig,
    /// The state and the last operation sequence number, changed only together with staging.
    state: Mutex<Ordered<S>>,
    group: Arc<GroupCommit>,
    snapshot_len: AtomicU64,
    compacting: AtomicBool,
    /// Held for the journal's life: dropping it releases the directory.
    _lock: Arc<DirLock>,
}

#[derive(Debug)]
struct Ordered<S> {
    state: S,
    last_seq: u64,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl<S: Journaled> Journal<S> {
    /// Opens (or creates) the journal in `dir` and replays it into `state`. Blocking: async
    /// callers run it through [`run_blocking`](super::run_blocking).
    pub fn open(
        dir: &Path,
        magic: &[u8; 8],
        mut state: S,
        config: JournalConfig,
    ) -> StorageResult<Journal<S>> {
        config
            .durability
            .require_no_background_sync("a journal store")?;
        fs::create_dir_durably(dir)?;
        let lock = Arc::new(DirLock::acquire(dir)?);
        let snapshot_path = dir.join(SNAPSHOT_FILE);
        fs::remove_leftover_temp(&snapshot_path)?;
        let wal_path = dir.join(WAL_FILE);
        fs::remove_leftover_temp(&wal_path)?;
        let (snapshot_seq, snapshot_len) =
            load_snapshot(&snapshot_path, magic, &mut state, config.max_op_bytes + 8)?;
        let (last_seq, wal_len) = replay_wal(&wal_path, magic, &mut state, snapshot_seq, &config)?;
        let file = fs::open_append(&wal_path, false)?;
        let group = GroupCommit::locked(
            WalFile {
                file,
                path: wal_path,
                len: wal_len,
            },
            config.durability,
            lock.clone(),
        );
        Ok(Journal {
            inner: Arc::new(Inner {
                dir: dir.to_owned(),
                magic: *magic,
                config,
                state: Mutex::new(Ordered {
                    state,
                    last_seq: last_seq.max(snapshot_seq),
                }),
                group,
                snapshot_len: AtomicU64::new(snapshot_len),
                compacting: AtomicBool::new(false),
                _lock: lock,
            }),
        })
    }

    /// The journal's directory.
    pub fn dir(&self) -> &Path {
        &self.inner.dir
    }

    /// The write-ahead file in [`dir`](Self::dir) (what recovery reads after the snapshot).
    pub fn wal_path(&self) -> PathBuf {
        self.inner.dir.join(WAL_FILE)
    }

    /// How many batches the journal has written (each one fsync under [`Durability::Fsync`]).
    pub fn batches(&self) -> u64 {
        self.inner.group.batches()
    }

    /// Reads the state. What `f` sees may include writes still in their group's fsync, so the
    /// result is returned only once they are durable: a reader never reports a write that a
    /// crash could take back.
    pub async fn read<T>(&self, f: impl FnOnce(&S) -> T) -> StorageResult<T> {
        let (out, ticket) = self.read_now(f);
        self.inner.group.wait(ticket).await?;
        Ok(out)
    }

    /// [`read`](Self::read) for a synchronous caller.
    pub fn read_blocking<T>(&self, f: impl FnOnce(&S) -> T) -> StorageResult<T> {
        let (out, ticket) = self.read_now(f);
        self.inner.group.wait_blocking(ticket)?;
        Ok(out)
    }

    fn read_now<T>(&self, f: impl FnOnce(&S) -> T) -> (T, u64) {
        let ordered = lock(&self.inner.state);
        (f(&ordered.state), self.inner.group.last_staged())
    }

    /// Changes the state without journaling it, before the store is shared (e.g. releasing the
    /// locks of a previous process on open).
    pub fn update_unjournaled<T>(&self, f: impl FnOnce(&mut S) -> T) -> T {
        f(&mut lock(&self.inner.state).state)
    }

    /// Plans operations from the state, stages them for the next group commit, applies them, and
    /// returns what the plan returned once they are durable. A plan that fails changes nothing;
    /// an error after staging (a failed batch) leaves the journal failed (see the module docs).
    pub async fn write<T, E: From<StorageError>>(
        &self,
        plan: impl FnOnce(&S) -> Result<(Vec<S::Op>, T), E>,
    ) -> Result<T, E>
    where
        S: Send + 'static,
    {
        let (ticket, out) = self.stage(plan)?;
        self.inner.group.wait(ticket).await?;
        if self.wants_compaction() {
            let this = self.clone();
            run_blocking_storage(move || {
                this.compact_if_wanted();
                Ok(())
            })
            .await?;
        }
        Ok(out)
    }

    /// [`write`](Self::write) for a synchronous caller.
    pub fn write_blocking<T, E: From<StorageError>>(
        &self,
        plan: impl FnOnce(&S) -> Result<(Vec<S::Op>, T), E>,
    ) -> Result<T, E> {
        let (ticket, out) = self.stage(plan)?;
        self.inner.group.wait_blocking(ticket)?;
        self.compact_if_wanted();
        Ok(out)
    }

    /// Plans, stages and applies like [`write`](Self::write), but returns without waiting for
    /// the batch: the write is durable once any later `write`, `read` or their blocking forms
    /// return (they wait for every earlier ticket). With [`Durability::Fsync`] the group's
    /// flusher writes and fsyncs it in the background meanwhile. For a caller that makes many
    /// writes durable with one wait at the end (a bulk request's finishes), or a write whose loss
    /// in a crash is harmless.
    pub fn write_deferred<T, E: From<StorageError>>(
        &self,
        plan: impl FnOnce(&S) -> Result<(Vec<S::Op>, T), E>,
    ) -> Result<T, E> {
        let (_ticket, out) = self.stage(plan)?;
        Ok(out)
    }

    fn stage<T, E: From<StorageError>>(
        &self,
        plan: impl FnOnce(&S) -> Result<(Vec<S::Op>, T), E>,
    ) -> Result<(u64, T), E> {
        let inner = &*self.inner;
        let mut ordered = lock(&inner.state);
        let (ops, out) = plan(&ordered.state)?;
        if ops.is_empty() {
            // The plan read state that may include writes still in flight.
            return Ok((inner.group.last_staged(), out));
        }
        let mut seq = ordered.last_seq;
        let ticket = inner.group.stage(|buf| {
            for op in &ops {
                seq += 1;
                encode_op(buf, seq, op, inner.config.max_op_bytes, &inner.dir)?;
            }
            Ok::<_, StorageError>(())
        })?;
        ordered.last_seq = seq;
        for op in ops {
            ordered.state.apply(op);
        }
        Ok((ticket, out))
    }

    fn wants_compaction(&self) -> bool {
        let inner = &*self.inner;
        let limit = inner
            .config
            .compact_after_bytes
            .max(inner.snapshot_len.load(Ordering::Relaxed));
        inner.group.file_len() > limit && !inner.compacting.load(Ordering::Relaxed)
    }

    /// Compacts when the WAL has outgrown the snapshot and the configured size, unless another
    /// writer is compacting. A failure is logged, not returned: the writes are durable already.
    fn compact_if_wanted(&self) {
        if !self.wants_compaction() || self.inner.compacting.swap(true, Ordering::AcqRel) {
            return;
        }
        if let Err(e) = self.compact_blocking() {
            warn!(dir = %self.inner.dir.display(), error = %e, "journal compaction failed");
        }
        self.inner.compacting.store(false, Ordering::Release);
    }

    /// Writes a snapshot of the state and empties the WAL. Blocking.
    pub fn compact_blocking(&self) -> StorageResult<()> {
        let inner = &*self.inner;
        // Under the state lock nothing is staged: the snapshot taken here covers every ticket
        // that `rotate` takes over. The lock is released before the files are written.
        let ordered = lock(&inner.state);
        let ops = ordered.state.snapshot_ops();
        let last_seq = ordered.last_seq;
        let mut ordered = Some(ordered);
        inner.group.rotate::<StorageError>(|wal_path| {
            drop(ordered.take());
            let snapshot_len =
                write_snapshot(&inner.dir, &inner.magic, last_seq, &ops).map_err(|e| (e, true))?;
            inner.snapshot_len.store(snapshot_len, Ordering::Relaxed);
            // Once the empty WAL may have been renamed into place, the old file may be unlinked:
            // appending to it would acknowledge writes that a restart never sees.
            let file = new_wal(wal_path, &inner.magic)
                .and_then(|()| fs::open_append(wal_path, false))
                .map_err(|e| (e, false))?;
            info!(dir = %inner.dir.display(), snapshot_bytes = snapshot_len, "journal compacted");
            Ok(WalFile {
                file,
                path: wal_path.to_owned(),
                len: PREFIX_LEN as u64,
            })
        })
    }

    /// Makes every appended operation durable (with [`Durability::OsBuffered`]). Blocking.
    pub fn sync_blocking(&self) -> StorageResult<()> {
        self.inner.group.sync_blocking()
    }

    /// Makes every appended operation durable (with [`Durability::OsBuffered`]).
    pub async fn sync(&self) -> StorageResult<()> {
        let group = Arc::clone(&self.inner.group);
        run_blocking_storage(move || group.sync_blocking()).await
    }
}

fn encode_op<O: Serialize>(
    buf: &mut Vec<u8>,
    seq: u64,
    op: &O,
    max_op_bytes: usize,
    dir: &Path,
) -> StorageResult<()> {
    let start = frame::begin(buf);
    buf.extend_from_slice(&seq.to_le_bytes());
    let op_start = buf.len();
    serde_json::to_writer(&mut *buf, op)
        .map_err(|e| StorageError::io("encode", dir.join(WAL_FILE), std::io::Error::other(e)))?;
    let size = buf.len() - op_start;
    if size > max_op_bytes {
        return Err(StorageError::TooLarge {
            what: "journal operation",
            size,
            limit: max_op_bytes,
        });
    }
    frame::finish(buf, start)
}

fn write_snapshot<O: Serialize>(
    dir: &Path,
    magic: &[u8; 8],
    last_seq: u64,
    ops: &[O],
) -> StorageResult<u64> {
    fs::replace_atomically(&dir.join(SNAPSHOT_FILE), |out| {
        out.write_all(magic)?;
        out.write_all(SNAP_KIND)?;
        let mut buf = Vec::new();
        let mut header = Vec::with_capacity(16);
        header.extend_from_slice(&last_seq.to_le_bytes());
        header.extend_from_slice(&(ops.len() as u64).to_le_bytes());
        frame::encode(&mut buf, &header).map_err(std::io::Error::other)?;
        out.write_all(&buf)?;
        for op in ops {
            buf.clear();
            let start = frame::begin(&mut buf);
            serde_json::to_writer(&mut buf, op).map_err(std::io::Error::other)?;
            frame::finish(&mut buf, start).map_err(std::io::Error::other)?;
            out.write_all(&buf)?;
        }
        Ok(())
    })
}

fn new_wal(path: &Path, magic: &[u8; 8]) -> StorageResult<()> {
    fs::replace_atomically(path, |out| {
        out.write_all(magic)?;
        out.write_all(WAL_KIND)
    })
    .map(|_| ())
}

fn check_prefix(path: &Path, data: &[u8], magic: &[u8; 8], kind: &[u8; 4]) -> StorageResult<()> {
    if data.get(..8) != Some(&magic[..]) || data.get(8..PREFIX_LEN) != Some(&kind[..]) {
        return Err(StorageError::corrupt(
            path,
            0,
            "not a file of this store (bad magic)",
        ));
    }
    Ok(())
}

fn decode_op<O: DeserializeOwned>(path: &Path, position: u64, bytes: &[u8]) -> StorageResult<O> {
    serde_json::from_slice(bytes)
        .map_err(|e| StorageError::corrupt(path, position, format!("undecodable operation: {e}")))
}

/// Loads the snapshot into `state`; returns its last sequence number and size.
fn load_snapshot<S: Journaled>(
    path: &Path,
    magic: &[u8; 8],
    state: &mut S,
    max_body: usize,
) -> StorageResult<(u64, u64)> {
    let Some(data) = fs::read_optional(path)? else {
        return Ok((0, 0));
    };
    check_prefix(path, &data, magic, SNAP_KIND)?;
    let body = &data[PREFIX_LEN..];
    // A snapshot is complete before it is renamed into place: any bad frame is corruption, torn
    // or not.
    let mut reader = FrameReader::new(path, body, PREFIX_LEN as u64, max_body);
    let header = reader
        .next_frame()?
        .ok_or_else(|| StorageError::corrupt(path, PREFIX_LEN as u64, "no snapshot header"))?;
    let (Some(last_seq), Some(count)) = (le_u64(header.body, 0), le_u64(header.body, 8)) else {
        return Err(reader.corrupt_body(&header, "short snapshot header"));
    };
    let mut seen = 0u64;
    while let Some(frame) = reader.next_frame()? {
        if seen == count {
            return Err(reader.corrupt_body(&frame, "operations after the last one counted"));
        }
        state.apply(decode_op(path, frame.position, frame.body)?);
        seen += 1;
    }
    if let Some(tail) = reader.torn_tail() {
        return Err(StorageError::corrupt(
            path,
            tail.position,
            "snapshot ends in a damaged frame",
        ));
    }
    if seen != count {
        return Err(StorageError::corrupt(
            path,
            reader.valid_end(),
            format!("snapshot holds {seen} of its {count} operations"),
        ));
    }
    Ok((last_seq, data.len() as u64))
}

/// Replays the WAL (creating it if missing) into `state`, cutting off a torn tail; returns the
/// last sequence number and the valid length.
fn replay_wal<S: Journaled>(
    path: &Path,
    magic: &[u8; 8],
    state: &mut S,
    snapshot_seq: u64,
    config: &JournalConfig,
) -> StorageResult<(u64, u64)> {
    let data = match fs::read_optional(path)? {
        Some(d) if d.len() >= PREFIX_LEN => d,
        // Missing, or torn while being created (it is only ever created by an atomic rename, so
        // this is a leftover of a crash before any operation): start empty.
        _ => {
            new_wal(path, magic)?;
            return Ok((0, PREFIX_LEN as u64));
        }
    };
    check_prefix(path, &data, magic, WAL_KIND)?;
    let body = &data[PREFIX_LEN..];
    let scan = frame::recover_file(
        path,
        body,
        PREFIX_LEN as u64,
        config.max_op_bytes + 8,
        config.recovery,
    )?;
    let mut last_seq = 0;
    for (position, range) in scan.frames {
        let payload = &body[range];
        let seq = le_u64(payload, 0)
            .ok_or_else(|| StorageError::corrupt(path, position, "frame without a sequence"))?;
        if seq <= last_seq {
            return Err(StorageError::corrupt(
                path,
                position,
                "sequence numbers do not increase",
            ));
        }
        last_seq = seq;
        if seq > snapshot_seq {
            state.apply(decode_op(path, position, &payload[8..])?);
        }
    }
    Ok((last_seq, scan.valid_end))
}

fn le_u64(buf: &[u8], at: usize) -> Option<u64> {
    buf.get(at..at + 8)
        .and_then(|b| b.try_into().ok())
        .map(u64::from_le_bytes)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;
    use std::io::Write;

    #[derive(Debug, Default)]
    struct Kv(BTreeMap<u32, u32>);

    impl Journaled for Kv {
        type Op = (u32, u32);
        fn apply(&mut self, (k, v): (u32, u32)) {
            self.0.insert(k, v);
        }
        fn snapshot_ops(&self) -> Vec<(u32, u32)> {
            self.0.iter().map(|(k, v)| (*k, *v)).collect()
        }
    }

    const MAGIC: &[u8; 8] = b"TESTJRN1";

    fn buffered() -> JournalConfig {
        JournalConfig::with_durability(Durability::OsBuffered)
    }

    fn open(dir: &Path) -> StorageResult<Journal<Kv>> {
        Journal::open(dir, MAGIC, Kv::default(), buffered())
    }

    fn put(j: &Journal<Kv>, k: u32, v: u32) -> StorageResult<()> {
        j.write_blocking(|_| Ok::<_, StorageError>((vec![(k, v)], ())))
    }

    fn entries(j: &Journal<Kv>) -> usize {
        j.read_blocking(|kv| kv.0.len()).expect("read")
    }

    fn write_n(dir: &Path, n: u32) {
        let j = open(dir).expect("open");
        for i in 0..n {
            put(&j, i, i * 2).expect("append");
        }
    }

    #[test]
    fn replays_truncates_torn_tail_and_compacts() {
        let dir = tempfile::tempdir().expect("dir");
        write_n(dir.path(), 10);
        let wal = dir.path().join(WAL_FILE);
        let mut f = fs::open_append(&wal, false).expect("wal");
        f.write_all(&[200, 0, 0, 0, 1, 2]).expect("torn");
        drop(f);
        let j = open(dir.path()).expect("reopen");
        assert_eq!(entries(&j), 10);
        put(&j, 100, 1).expect("append after recovery");
        j.compact_blocking().expect("compact");
        put(&j, 101, 2).expect("append after compaction");
        drop(j);
        let again = open(dir.path()).expect("open");
        assert_eq!(entries(&again), 12);
        assert_eq!(
            again
                .read_blocking(|kv| kv.0.get(&101).copied())
                .expect("read"),
            Some(2)
        );
    }

    #[test]
    fn a_zero_filled_tail_is_torn() {
        let dir = tempfile::tempdir().expect("dir");
        write_n(dir.path(), 3);
        let wal = dir.path().join(WAL_FILE);
        let mut data = std::fs::read(&wal).expect("read");
        let len = data.len();
        data.extend_from_slice(&[0; 8192]);
        std::fs::write(&wal, data).expect("write");
        let j = open(dir.path()).expect("reopen");
        assert_eq!(entries(&j), 3);
        assert_eq!(std::fs::metadata(&wal).expect("stat").len(), len as u64);
    }

    #[test]
    fn a_flipped_byte_followed_by_good_frames_is_refused_then_repaired_on_request() {
        let dir = tempfile::tempdir().expect("dir");
        write_n(dir.path(), 3);
        let wal = dir.path().join(WAL_FILE);
        let original = std::fs::read(&wal).expect("read");
        // Every byte of the first two frames, including their length fields.
        let frame_len = (original.len() - PREFIX_LEN) / 3;
        for i in PREFIX_LEN..PREFIX_LEN + 2 * frame_len {
            let mut data = original.clone();
            data[i] ^= 0x10;
            std::fs::write(&wal, &data).expect("write");
            match open(dir.path()) {
                Err(StorageError::Corrupt { path, .. }) => assert_eq!(path, wal),
                other => panic!("byte {i}: {other:?}"),
            }
        }
        let j = Journal::open(
            dir.path(),
            MAGIC,
            Kv::default(),
            buffered().recovery(Recovery::Repair),
        )
        .expect("repair");
        assert_eq!(entries(&j), 1, "repair keeps what precedes the damage");
    }

    #[test]
    fn a_crafted_huge_frame_is_a_typed_error() {
        let dir = tempfile::tempdir().expect("dir");
        write_n(dir.path(), 2);
        let wal = dir.path().join(WAL_FILE);
        let mut data = std::fs::read(&wal).expect("read");
        let at = PREFIX_LEN;
        let mut header = [0u8; 8];
        header[..4].copy_from_slice(&u32::MAX.to_le_bytes());
        data[at..at + 8].copy_from_slice(&header);
        data[at + 8..at + 12].copy_from_slice(&crc32c::crc32c(&header).to_le_bytes());
        std::fs::write(&wal, &data).expect("write");
        assert!(matches!(
            open(dir.path()),
            Err(StorageError::Corrupt { .. })
        ));
    }

    #[test]
    fn refuses_a_second_opener_and_interval_durability() {
        let dir = tempfile::tempdir().expect("dir");
        let _j = open(dir.path()).expect("open");
        assert!(matches!(open(dir.path()), Err(StorageError::Locked { .. })));
        let other = tempfile::tempdir().expect("dir");
        let config =
            JournalConfig::with_durability(Durability::Interval(std::time::Duration::from_secs(1)));
        assert!(matches!(
            Journal::open(other.path(), MAGIC, Kv::default(), config),
            Err(StorageError::Config { .. })
        ));
    }

    #[test]
    fn a_damaged_snapshot_is_refused() {
        let dir = tempfile::tempdir().expect("dir");
        {
            let j = open(dir.path()).expect("open");
            for i in 0..5 {
                put(&j, i, i).expect("append");
            }
            j.compact_blocking().expect("compact");
        }
        let snap = dir.path().join(SNAPSHOT_FILE);
        let mut data = std::fs::read(&snap).expect("read");
        let last = data.len() - 1;
        data[last] ^= 1;
        std::fs::write(&snap, &data).expect("write");
        assert!(matches!(
            open(dir.path()),
            Err(StorageError::Corrupt { .. })
        ));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn concurrent_fsync_writers_are_all_acknowledged_and_a_reopen_shows_exactly_them() {
        let dir = tempfile::tempdir().expect("dir");
        // A tiny compaction threshold, so snapshots are written while writers keep staging.
        let config = JournalConfig::default().compact_after_bytes(2048);
        let j = Journal::open(dir.path(), MAGIC, Kv::default(), config.clone()).expect("open");
        let tasks: Vec<_> = (0..32u32)
            .map(|w| {
                let j = j.clone();
                tokio::spawn(async move {
                    let mut acked = Vec::new();
                    for i in 0..25u32 {
                        let key = w * 1000 + i;
                        j.write(|_| Ok::<_, StorageError>((vec![(key, i)], ())))
                            .await
                            .expect("acknowledged");
                        acked.push(key);
                    }
                    acked
                })
            })
            .collect();
        let mut acked = Vec::new();
        for t in tasks {
            acked.extend(t.await.expect("task"));
        }
        assert!(j.batches() <= 32 * 25);
        drop(j);
        let again = Journal::open(dir.path(), MAGIC, Kv::default(), config).expect("reopen");
        let keys = again
            .read(|kv| kv.0.keys().copied().collect::<Vec<_>>())
            .await
            .expect("read");
        acked.sort_unstable();
        assert_eq!(keys, acked);
        assert!(dir.path().join(SNAPSHOT_FILE).exists(), "compaction ran");
    }
}
