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
//! * An operation is appended (and, with [`Durability::Fsync`], fsynced) before the store applies
//!   it in memory or acknowledges it, so a crash loses nothing acknowledged.
//! * WAL sequence numbers strictly increase. Recovery follows the kit's torn-tail rule: a torn
//!   last frame is cut off, damage followed by intact frames is refused with
//!   [`StorageError::Corrupt`] (or cut off when the store is opened with [`Recovery::Repair`]).
//! * A snapshot is renamed into place complete and fsynced, so any damage in it is corruption.
//!   After a snapshot the WAL is replaced by an empty one; replay skips operations the snapshot
//!   holds, so a crash between the two steps is harmless.
//! * After a write that failed and could not be undone, the journal refuses writes
//!   ([`StorageError::Failed`]) until the store is reopened.

#![allow(
    clippy::disallowed_methods,
    reason = "the kit's blocking primitives; async callers reach them through run_blocking"
)]

use std::io::Write;
use std::path::{Path, PathBuf};

use serde::Serialize;
use serde::de::DeserializeOwned;
use tracing::{info, warn};

use crate::storage::dir_lock::DirLock;
use crate::storage::durability::Durability;
use crate::storage::error::{StorageError, StorageResult};
use crate::storage::frame::{self, FrameReader, Recovery};
use crate::storage::fs;

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

/// A write-ahead journal with snapshots over one directory; see the [module docs](self).
#[derive(Debug)]
pub struct Journal {
    dir: PathBuf,
    magic: [u8; 8],
    wal: std::fs::File,
    wal_len: u64,
    snapshot_len: u64,
    last_seq: u64,
    config: JournalConfig,
    failed: bool,
    buf: Vec<u8>,
    _lock: DirLock,
}

impl Journal {
    /// Opens (or creates) the journal in `dir` and replays it into `state`. Blocking: async
    /// callers run it through [`run_blocking`](super::run_blocking).
    pub fn open<S: Journaled>(
        dir: &Path,
        magic: &[u8; 8],
        state: &mut S,
        config: JournalConfig,
    ) -> StorageResult<Journal> {
        config
            .durability
            .require_no_background_sync("a journal store")?;
        fs::create_dir_durably(dir)?;
        let lock = DirLock::acquire(dir)?;
        let snapshot_path = dir.join(SNAPSHOT_FILE);
        fs::remove_leftover_temp(&snapshot_path)?;
        let wal_path = dir.join(WAL_FILE);
        fs::remove_leftover_temp(&wal_path)?;
        let (snapshot_seq, snapshot_len) =
            load_snapshot(&snapshot_path, magic, state, config.max_op_bytes + 8)?;
        let (last_seq, wal_len) = replay_wal(&wal_path, magic, state, snapshot_seq, &config)?;
        let wal = fs::open_append(&wal_path, false)?;
        Ok(Journal {
            dir: dir.to_owned(),
            magic: *magic,
            wal,
            wal_len,
            snapshot_len,
            last_seq: last_seq.max(snapshot_seq),
            config,
            failed: false,
            buf: Vec::new(),
            _lock: lock,
        })
    }

    /// The journal's directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Appends `ops` as one write (one fsync with [`Durability::Fsync`]). On error nothing of
    /// `ops` is durable and the caller must not apply them.
    pub fn append<O: Serialize>(&mut self, ops: &[O]) -> StorageResult<()> {
        if ops.is_empty() {
            return Ok(());
        }
        let path = self.dir.join(WAL_FILE);
        if self.failed {
            return Err(StorageError::Failed { path });
        }
        self.buf.clear();
        let mut seq = self.last_seq;
        for op in ops {
            seq += 1;
            let start = frame::begin(&mut self.buf);
            self.buf.extend_from_slice(&seq.to_le_bytes());
            let op_start = self.buf.len();
            serde_json::to_writer(&mut self.buf, op)
                .map_err(|e| StorageError::io("encode", &path, std::io::Error::other(e)))?;
            let size = self.buf.len() - op_start;
            if size > self.config.max_op_bytes {
                return Err(StorageError::TooLarge {
                    what: "journal operation",
                    size,
                    limit: self.config.max_op_bytes,
                });
            }
            frame::finish(&mut self.buf, start)?;
        }
        let written = self.wal.write_all(&self.buf).map_err(|e| ("write", e));
        let synced = written.and_then(|()| {
            if self.config.durability.syncs_each_write() {
                self.wal.sync_data().map_err(|e| ("fsync", e))
            } else {
                Ok(())
            }
        });
        match synced {
            Ok(()) => {
                self.wal_len += self.buf.len() as u64;
                self.last_seq = seq;
                Ok(())
            }
            Err((operation, e)) => {
                // After a failed fsync the page cache cannot be trusted: reopen either way.
                let rolled_back = operation == "write" && self.wal.set_len(self.wal_len).is_ok();
                self.failed |= !rolled_back;
                Err(StorageError::io(operation, path, e))
            }
        }
    }

    /// Writes a snapshot and empties the WAL once the WAL has outgrown the snapshot and the
    /// configured size. A failure is logged, not returned: the writes are durable already.
    pub fn maybe_compact<S: Journaled>(&mut self, state: &S) {
        if self.wal_len <= self.config.compact_after_bytes.max(self.snapshot_len) {
            return;
        }
        if let Err(e) = self.compact(state) {
            warn!(dir = %self.dir.display(), error = %e, "journal compaction failed");
        }
    }

    /// Writes a snapshot of `state` and empties the WAL.
    pub fn compact<S: Journaled>(&mut self, state: &S) -> StorageResult<()> {
        let ops = state.snapshot_ops();
        let last_seq = self.last_seq;
        let magic = self.magic;
        let snapshot_path = self.dir.join(SNAPSHOT_FILE);
        self.snapshot_len = fs::replace_atomically(&snapshot_path, |out| {
            out.write_all(&magic)?;
            out.write_all(SNAP_KIND)?;
            let mut buf = Vec::new();
            let mut header = Vec::with_capacity(16);
            header.extend_from_slice(&last_seq.to_le_bytes());
            header.extend_from_slice(&(ops.len() as u64).to_le_bytes());
            frame::encode(&mut buf, &header).map_err(std::io::Error::other)?;
            out.write_all(&buf)?;
            for op in &ops {
                buf.clear();
                let start = frame::begin(&mut buf);
                serde_json::to_writer(&mut buf, op).map_err(std::io::Error::other)?;
                frame::finish(&mut buf, start).map_err(std::io::Error::other)?;
                out.write_all(&buf)?;
            }
            Ok(())
        })?;
        let wal_path = self.dir.join(WAL_FILE);
        // Once the empty WAL may have been renamed into place, `self.wal` may be an unlinked
        // file: appending to it would acknowledge writes that a restart never sees.
        let reopened = new_wal(&wal_path, &magic).and_then(|()| fs::open_append(&wal_path, false));
        self.wal = match reopened {
            Ok(wal) => wal,
            Err(e) => {
                self.failed = true;
                return Err(e);
            }
        };
        self.wal_len = PREFIX_LEN as u64;
        info!(dir = %self.dir.display(), snapshot_bytes = self.snapshot_len, "journal compacted");
        Ok(())
    }

    /// Makes every appended operation durable (with [`Durability::OsBuffered`]).
    pub fn sync(&self) -> StorageResult<()> {
        self.wal
            .sync_data()
            .map_err(|e| StorageError::io("fsync", self.dir.join(WAL_FILE), e))
    }
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

    #[derive(Default)]
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
        JournalConfig::with_durability(Durability::OsBuffered).compact_after_bytes(0)
    }

    fn open(dir: &Path, kv: &mut Kv) -> StorageResult<Journal> {
        Journal::open(dir, MAGIC, kv, buffered())
    }

    fn write_n(dir: &Path, n: u32) {
        let mut kv = Kv::default();
        let mut j = open(dir, &mut kv).expect("open");
        for i in 0..n {
            j.append(&[(i, i * 2)]).expect("append");
            kv.apply((i, i * 2));
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
        let mut kv = Kv::default();
        let mut j = open(dir.path(), &mut kv).expect("reopen");
        assert_eq!(kv.0.len(), 10);
        j.append(&[(100, 1)]).expect("append after recovery");
        kv.apply((100, 1));
        j.compact(&kv).expect("compact");
        j.append(&[(101, 2)]).expect("append after compaction");
        drop(j);
        let mut again = Kv::default();
        let _j = open(dir.path(), &mut again).expect("open");
        assert_eq!(again.0.len(), 12);
        assert_eq!(again.0.get(&101), Some(&2));
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
        let mut kv = Kv::default();
        let _j = open(dir.path(), &mut kv).expect("reopen");
        assert_eq!(kv.0.len(), 3);
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
            match open(dir.path(), &mut Kv::default()) {
                Err(StorageError::Corrupt { path, .. }) => assert_eq!(path, wal),
                other => panic!("byte {i}: {other:?}"),
            }
        }
        let mut kv = Kv::default();
        let _j = Journal::open(
            dir.path(),
            MAGIC,
            &mut kv,
            buffered().recovery(Recovery::Repair),
        )
        .expect("repair");
        assert_eq!(kv.0.len(), 1, "repair keeps what precedes the damage");
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
            open(dir.path(), &mut Kv::default()),
            Err(StorageError::Corrupt { .. })
        ));
    }

    #[test]
    fn refuses_a_second_opener_and_interval_durability() {
        let dir = tempfile::tempdir().expect("dir");
        let _j = open(dir.path(), &mut Kv::default()).expect("open");
        assert!(matches!(
            open(dir.path(), &mut Kv::default()),
            Err(StorageError::Locked { .. })
        ));
        let other = tempfile::tempdir().expect("dir");
        let config =
            JournalConfig::with_durability(Durability::Interval(std::time::Duration::from_secs(1)));
        assert!(matches!(
            Journal::open(other.path(), MAGIC, &mut Kv::default(), config),
            Err(StorageError::Config { .. })
        ));
    }

    #[test]
    fn a_damaged_snapshot_is_refused() {
        let dir = tempfile::tempdir().expect("dir");
        {
            let mut kv = Kv::default();
            let mut j = open(dir.path(), &mut kv).expect("open");
            for i in 0..5 {
                j.append(&[(i, i)]).expect("append");
                kv.apply((i, i));
            }
            j.compact(&kv).expect("compact");
        }
        let snap = dir.path().join(SNAPSHOT_FILE);
        let mut data = std::fs::read(&snap).expect("read");
        let last = data.len() - 1;
        data[last] ^= 1;
        std::fs::write(&snap, &data).expect("write");
        assert!(matches!(
            open(dir.path(), &mut Kv::default()),
            Err(StorageError::Corrupt { .. })
        ));
    }
}
