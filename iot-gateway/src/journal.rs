//! A write-ahead journal with snapshots, shared by the file-backed inbox and twin stores.
//!
//! # Files
//!
//! A store directory holds `LOCK` (an exclusive advisory lock while open), `snapshot` (the whole
//! state as of a sequence number, replaced atomically) and `wal` (every operation since). Both
//! data files are a magic string followed by frames:
//!
//! ```text
//! frame = [payload length u32 LE][CRC32C of payload u32 LE][payload]
//! wal payload      = [sequence u64 LE][operation as JSON]
//! snapshot         = magic | frame([last sequence u64 LE][operation count u64 LE]) | count × frame(op)
//! ```
//!
//! # Invariants
//!
//! * An operation is appended (and, with [`Durability::Fsync`], fsynced) before the store applies
//!   it in memory or acknowledges it, so a crash loses nothing acknowledged.
//! * WAL sequence numbers strictly increase. Only the last frame can be torn: recovery cuts off a
//!   frame that runs past the end of the file or is followed only by zeros, and refuses any other
//!   damage with [`Error::Corrupt`].
//! * A snapshot is renamed into place complete and fsynced, so damage in it is corruption. After a
//!   snapshot the WAL is replaced by an empty one; replay skips entries the snapshot holds, so a
//!   crash between the two steps is harmless.

use std::fs::{self, File, OpenOptions, TryLockError};
use std::io::{self, BufWriter, Read, Write};
use std::path::{Path, PathBuf};

use serde::Serialize;
use serde::de::DeserializeOwned;
use tracing::{info, warn};

use crate::error::{Error, Result};

const FRAME_HEADER: usize = 8;
/// The largest frame payload accepted (a C2D message is at most 256 KiB, base64 in JSON).
const MAX_PAYLOAD: usize = 4 * 1024 * 1024;
const LOCK_FILE: &str = "LOCK";
const SNAPSHOT_FILE: &str = "snapshot";
const WAL_FILE: &str = "wal";

/// When a file store acknowledges a write.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Durability {
    /// After the journal is fsynced: survives power loss. The default.
    #[default]
    Fsync,
    /// After the journal is written to the OS: survives a crash of the process (`kill -9`), not
    /// of the machine.
    OsBuffered,
}

/// State that a [`Journal`] makes durable.
pub(crate) trait Journaled {
    /// One change.
    type Op: Serialize + DeserializeOwned;
    /// Applies a change (replay and live writes go through here).
    fn apply(&mut self, op: Self::Op);
    /// Operations that rebuild the current state from empty, for a snapshot.
    fn snapshot_ops(&self) -> Vec<Self::Op>;
}

#[derive(Debug)]
pub(crate) struct Journal {
    dir: PathBuf,
    wal: File,
    wal_len: u64,
    snapshot_len: u64,
    last_seq: u64,
    durability: Durability,
    compact_after: u64,
    /// Set after a write that could not be undone: later writes are refused until reopen.
    failed: bool,
    buf: Vec<u8>,
    _lock: File,
}

impl Journal {
    /// Opens (or creates) the journal in `dir` and replays it into `state`.
    pub(crate) fn open<S: Journaled>(
        dir: &Path,
        magic: &[u8; 8],
        state: &mut S,
        durability: Durability,
        compact_after: u64,
    ) -> Result<Journal> {
        let existed = dir.is_dir();
        create_dir(dir)?;
        if !existed && let Some(parent) = dir.parent().filter(|p| !p.as_os_str().is_empty()) {
            // The new directory's entry must be durable too, or a power loss can take the whole
            // store with it after writes were acknowledged.
            sync_dir(parent)?;
        }
        let lock_path = dir.join(LOCK_FILE);
        let lock = open_rw(&lock_path, false)?;
        match lock.try_lock() {
            Ok(()) => {}
            Err(TryLockError::WouldBlock) => return Err(Error::Locked { path: lock_path }),
            Err(TryLockError::Error(e)) => return Err(Error::io("lock", lock_path, e)),
        }
        let tmp = dir.join(SNAPSHOT_FILE).with_extension("tmp");
        match fs::remove_file(&tmp) {
            Ok(()) | Err(_) => {}
        }
        let snapshot_path = dir.join(SNAPSHOT_FILE);
        let (snapshot_seq, snapshot_len) = load_snapshot(&snapshot_path, magic, state)?;
        let wal_path = dir.join(WAL_FILE);
        let (last_seq, wal_len) = replay_wal(&wal_path, magic, state, snapshot_seq)?;
        let wal = OpenOptions::new()
            .append(true)
            .open(&wal_path)
            .map_err(|e| Error::io("open", &wal_path, e))?;
        Ok(Journal {
            dir: dir.to_owned(),
            wal,
            wal_len,
            snapshot_len,
            last_seq: last_seq.max(snapshot_seq),
            durability,
            compact_after,
            failed: false,
            buf: Vec::new(),
            _lock: lock,
        })
    }

    /// Appends `ops` as one write (one fsync with [`Durability::Fsync`]).
    pub(crate) fn append<O: Serialize>(&mut self, ops: &[O]) -> Result<()> {
        if ops.is_empty() {
            return Ok(());
        }
        let path = self.dir.join(WAL_FILE);
        if self.failed {
            return Err(Error::io(
                "write",
                path,
                io::Error::other(
                    "an earlier write failed and could not be undone; reopen the store",
                ),
            ));
        }
        self.buf.clear();
        let mut seq = self.last_seq;
        let mut payload = Vec::with_capacity(256);
        for op in ops {
            seq += 1;
            payload.clear();
            payload.extend_from_slice(&seq.to_le_bytes());
            serde_json::to_writer(&mut payload, op)
                .map_err(|e| Error::io("encode", &path, io::Error::other(e)))?;
            if payload.len() > MAX_PAYLOAD {
                return Err(Error::invalid("an operation is too large for the journal"));
            }
            frame(&mut self.buf, &payload);
        }
        let written = self.wal.write_all(&self.buf).map_err(|e| ("write", e));
        let synced = written.and_then(|()| match self.durability {
            Durability::Fsync => self.wal.sync_data().map_err(|e| ("fsync", e)),
            Durability::OsBuffered => Ok(()),
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
                Err(Error::io(operation, path, e))
            }
        }
    }

    /// Writes a snapshot and empties the WAL if the WAL has outgrown the snapshot and the
    /// configured size. Failure is logged, not returned: the write itself is durable already.
    pub(crate) fn maybe_compact<S: Journaled>(&mut self, magic: &[u8; 8], state: &S) {
        if self.wal_len <= self.compact_after.max(self.snapshot_len) {
            return;
        }
        if let Err(e) = self.compact(magic, state) {
            warn!(dir = %self.dir.display(), error = %e, "journal compaction failed");
        }
    }

    pub(crate) fn compact<S: Journaled>(&mut self, magic: &[u8; 8], state: &S) -> Result<()> {
        let ops = state.snapshot_ops();
        let last_seq = self.last_seq;
        let snapshot_path = self.dir.join(SNAPSHOT_FILE);
        self.snapshot_len = replace_atomically(&self.dir, &snapshot_path, |out| {
            out.write_all(magic)?;
            out.write_all(b"SNAP")?;
            let mut buf = Vec::new();
            let mut header = Vec::with_capacity(16);
            header.extend_from_slice(&last_seq.to_le_bytes());
            header.extend_from_slice(&(ops.len() as u64).to_le_bytes());
            frame(&mut buf, &header);
            out.write_all(&buf)?;
            for op in &ops {
                let payload = serde_json::to_vec(op).map_err(io::Error::other)?;
                buf.clear();
                frame(&mut buf, &payload);
                out.write_all(&buf)?;
            }
            Ok(())
        })?;
        let wal_path = self.dir.join(WAL_FILE);
        // Once the empty WAL may have been renamed into place, `self.wal` may be an unlinked
        // file: appending to it would acknowledge writes that a restart never sees.
        let reopened = replace_atomically(&self.dir, &wal_path, |out| {
            out.write_all(magic)?;
            out.write_all(b"WAL_")
        })
        .and_then(|_| {
            OpenOptions::new()
                .append(true)
                .open(&wal_path)
                .map_err(|e| Error::io("open", &wal_path, e))
        });
        self.wal = match reopened {
            Ok(wal) => wal,
            Err(e) => {
                self.failed = true;
                return Err(e);
            }
        };
        self.wal_len = 12;
        info!(dir = %self.dir.display(), snapshot_bytes = self.snapshot_len, "journal compacted");
        Ok(())
    }

    /// Makes every appended operation durable.
    pub(crate) fn sync(&self) -> Result<()> {
        self.wal
            .sync_data()
            .map_err(|e| Error::io("fsync", self.dir.join(WAL_FILE), e))
    }
}

fn frame(out: &mut Vec<u8>, payload: &[u8]) {
    let len = u32::try_from(payload.len()).unwrap_or(u32::MAX);
    out.extend_from_slice(&len.to_le_bytes());
    out.extend_from_slice(&crc32c::crc32c(payload).to_le_bytes());
    out.extend_from_slice(payload);
}

enum FrameCheck<'a> {
    Valid(&'a [u8], usize),
    Truncated,
    Bad(&'static str),
}

fn check_frame(buf: &[u8]) -> FrameCheck<'_> {
    let (Some(len), Some(crc)) = (le_u32(buf, 0), le_u32(buf, 4)) else {
        return FrameCheck::Truncated;
    };
    let len = len as usize;
    if len == 0 || len > MAX_PAYLOAD {
        return FrameCheck::Bad("impossible frame length");
    }
    let Some(payload) = buf.get(FRAME_HEADER..FRAME_HEADER + len) else {
        return FrameCheck::Truncated;
    };
    if crc32c::crc32c(payload) != crc {
        return FrameCheck::Bad("checksum mismatch");
    }
    FrameCheck::Valid(payload, FRAME_HEADER + len)
}

fn le_u32(buf: &[u8], at: usize) -> Option<u32> {
    buf.get(at..at + 4)
        .and_then(|b| b.try_into().ok())
        .map(u32::from_le_bytes)
}

fn le_u64(buf: &[u8], at: usize) -> Option<u64> {
    buf.get(at..at + 8)
        .and_then(|b| b.try_into().ok())
        .map(u64::from_le_bytes)
}

fn corrupt(path: &Path, position: usize, reason: impl Into<String>) -> Error {
    Error::Corrupt {
        path: path.to_owned(),
        position: position as u64,
        reason: reason.into(),
    }
}

fn read_all(path: &Path) -> Result<Option<Vec<u8>>> {
    let mut file = match File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(Error::io("open", path, e)),
    };
    let mut data = Vec::new();
    file.read_to_end(&mut data)
        .map_err(|e| Error::io("read", path, e))?;
    Ok(Some(data))
}

/// Loads the snapshot into `state`; returns its last sequence number and size.
fn load_snapshot<S: Journaled>(path: &Path, magic: &[u8; 8], state: &mut S) -> Result<(u64, u64)> {
    let Some(data) = read_all(path)? else {
        return Ok((0, 0));
    };
    if data.get(..8) != Some(&magic[..]) || data.get(8..12) != Some(&b"SNAP"[..]) {
        return Err(corrupt(path, 0, "not a snapshot of this store (bad magic)"));
    }
    let mut pos = 12;
    let header = match check_frame(&data[pos..]) {
        FrameCheck::Valid(p, n) => {
            pos += n;
            p
        }
        _ => return Err(corrupt(path, pos, "bad snapshot header")),
    };
    let (Some(last_seq), Some(count)) = (le_u64(header, 0), le_u64(header, 8)) else {
        return Err(corrupt(path, pos, "short snapshot header"));
    };
    for _ in 0..count {
        match check_frame(&data[pos..]) {
            FrameCheck::Valid(payload, n) => {
                let op = serde_json::from_slice(payload)
                    .map_err(|e| corrupt(path, pos, format!("undecodable operation: {e}")))?;
                state.apply(op);
                pos += n;
            }
            FrameCheck::Truncated => return Err(corrupt(path, pos, "snapshot ends early")),
            FrameCheck::Bad(reason) => return Err(corrupt(path, pos, reason)),
        }
    }
    if pos != data.len() {
        return Err(corrupt(path, pos, "bytes after the last operation"));
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
) -> Result<(u64, u64)> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let data = match read_all(path)? {
        Some(d) if d.len() >= 12 => d,
        // Missing, or torn while being created (only ever created by an atomic rename, so this
        // is a leftover of a crash before any operation): start empty.
        _ => {
            replace_atomically(dir, path, |out| {
                out.write_all(magic)?;
                out.write_all(b"WAL_")
            })?;
            return Ok((0, 12));
        }
    };
    if data.get(..8) != Some(&magic[..]) || data.get(8..12) != Some(&b"WAL_"[..]) {
        return Err(corrupt(path, 0, "not a journal of this store (bad magic)"));
    }
    let mut pos = 12;
    let mut last_seq = 0;
    while pos < data.len() {
        let rest = &data[pos..];
        match check_frame(rest) {
            FrameCheck::Valid(payload, n) => {
                let seq = le_u64(payload, 0).ok_or_else(|| corrupt(path, pos, "short frame"))?;
                if seq <= last_seq {
                    return Err(corrupt(path, pos, "sequence numbers do not increase"));
                }
                last_seq = seq;
                if seq > snapshot_seq {
                    let op = serde_json::from_slice(&payload[8..])
                        .map_err(|e| corrupt(path, pos, format!("undecodable operation: {e}")))?;
                    state.apply(op);
                }
                pos += n;
            }
            FrameCheck::Truncated => break,
            FrameCheck::Bad(reason) => {
                // A torn write can leave a complete header before a payload of zeros or stale
                // bytes (the file grew before the data reached the disk), so a bad frame is the
                // torn tail when it reaches the end of the file or only zeros follow it.
                let claimed = le_u32(rest, 0).map(|n| (n as usize).saturating_add(FRAME_HEADER));
                let torn = claimed.is_some_and(|end| {
                    rest.get(end..)
                        .is_none_or(|after| after.iter().all(|b| *b == 0))
                }) || rest.iter().all(|b| *b == 0);
                if !torn {
                    return Err(corrupt(path, pos, reason));
                }
                break;
            }
        }
    }
    if pos < data.len() {
        warn!(path = %path.display(), position = pos, dropped = data.len() - pos, "truncating a torn write at the end of a journal");
        let file = OpenOptions::new()
            .write(true)
            .open(path)
            .map_err(|e| Error::io("open", path, e))?;
        file.set_len(pos as u64)
            .and_then(|()| file.sync_all())
            .map_err(|e| Error::io("truncate", path, e))?;
    }
    Ok((last_seq, pos as u64))
}

fn open_rw(path: &Path, truncate: bool) -> Result<File> {
    let mut options = OpenOptions::new();
    options
        .read(true)
        .write(true)
        .create(true)
        .truncate(truncate);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    options.open(path).map_err(|e| Error::io("open", path, e))
}

fn create_dir(dir: &Path) -> Result<()> {
    let mut builder = fs::DirBuilder::new();
    builder.recursive(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::DirBuilderExt;
        builder.mode(0o700);
    }
    builder
        .create(dir)
        .map_err(|e| Error::io("create directory", dir, e))
}

fn sync_dir(dir: &Path) -> Result<()> {
    #[cfg(unix)]
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| Error::io("fsync directory", dir, e))?;
    #[cfg(not(unix))]
    let _ = dir;
    Ok(())
}

/// Replaces `target` atomically: temp file, fsync, rename, fsync the directory.
fn replace_atomically(
    dir: &Path,
    target: &Path,
    write: impl FnOnce(&mut dyn Write) -> io::Result<()>,
) -> Result<u64> {
    let tmp = target.with_extension("tmp");
    let file = open_rw(&tmp, true)?;
    let mut out = BufWriter::with_capacity(1 << 20, file);
    write(&mut out).map_err(|e| Error::io("write", &tmp, e))?;
    let file = out
        .into_inner()
        .map_err(|e| Error::io("write", &tmp, e.into_error()))?;
    file.sync_all().map_err(|e| Error::io("fsync", &tmp, e))?;
    let len = file
        .metadata()
        .map_err(|e| Error::io("stat", &tmp, e))?
        .len();
    drop(file);
    fs::rename(&tmp, target).map_err(|e| Error::io("rename", &tmp, e))?;
    sync_dir(dir)?;
    Ok(len)
}

/// Runs blocking file work on tokio's blocking pool when there is a runtime, inline otherwise.
pub(crate) async fn run_blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T> + Send + 'static,
) -> Result<T> {
    match tokio::runtime::Handle::try_current() {
        Ok(handle) => handle.spawn_blocking(f).await.map_err(|e| {
            Error::io(
                "run blocking task",
                PathBuf::new(),
                io::Error::other(e.to_string()),
            )
        })?,
        Err(_) => f(),
    }
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

    #[test]
    fn replays_truncates_torn_tail_and_compacts() {
        let dir = tempfile::tempdir().expect("dir");
        {
            let mut kv = Kv::default();
            let mut j =
                Journal::open(dir.path(), MAGIC, &mut kv, Durability::OsBuffered, 0).expect("open");
            for i in 0..10 {
                j.append(&[(i, i * 2)]).expect("append");
                kv.apply((i, i * 2));
            }
        }
        // A torn write: half a frame at the end.
        let wal = dir.path().join(WAL_FILE);
        let mut f = OpenOptions::new().append(true).open(&wal).expect("wal");
        f.write_all(&[200, 0, 0, 0, 1, 2]).expect("torn");
        drop(f);
        let mut kv = Kv::default();
        let mut j =
            Journal::open(dir.path(), MAGIC, &mut kv, Durability::OsBuffered, 0).expect("reopen");
        assert_eq!(kv.0.len(), 10);
        j.append(&[(100, 1)]).expect("append after recovery");
        kv.apply((100, 1));
        j.compact(MAGIC, &kv).expect("compact");
        j.append(&[(101, 2)]).expect("append after compaction");
        drop(j);
        let mut again = Kv::default();
        let _j = Journal::open(dir.path(), MAGIC, &mut again, Durability::Fsync, 0).expect("open");
        assert_eq!(again.0.len(), 12);
        assert_eq!(again.0.get(&101), Some(&2));
    }

    #[test]
    fn a_last_frame_with_a_zeroed_payload_is_a_torn_tail() {
        let dir = tempfile::tempdir().expect("dir");
        {
            let mut kv = Kv::default();
            let mut j =
                Journal::open(dir.path(), MAGIC, &mut kv, Durability::OsBuffered, 0).expect("open");
            for i in 0..3 {
                j.append(&[(i, i)]).expect("append");
            }
        }
        // The file grew by the last frame but only its header reached the disk.
        let wal = dir.path().join(WAL_FILE);
        let mut data = fs::read(&wal).expect("read");
        let len = data.len();
        // The three operations encode to the same length.
        let frame_len = (len - 12) / 3;
        for b in &mut data[len - frame_len + FRAME_HEADER..] {
            *b = 0;
        }
        fs::write(&wal, data).expect("write");
        let mut kv = Kv::default();
        let mut j =
            Journal::open(dir.path(), MAGIC, &mut kv, Durability::Fsync, 0).expect("reopen");
        assert_eq!(kv.0.len(), 2);
        assert_eq!(
            fs::metadata(&wal).expect("stat").len(),
            (len - frame_len) as u64
        );
        j.append(&[(7, 7)]).expect("append after recovery");
        drop(j);
        let mut again = Kv::default();
        let _j = Journal::open(dir.path(), MAGIC, &mut again, Durability::Fsync, 0).expect("open");
        assert_eq!(again.0.get(&7), Some(&7));
        assert_eq!(again.0.len(), 3);
    }

    #[test]
    fn refuses_damage_in_the_middle_and_a_second_opener() {
        let dir = tempfile::tempdir().expect("dir");
        {
            let mut kv = Kv::default();
            let mut j =
                Journal::open(dir.path(), MAGIC, &mut kv, Durability::OsBuffered, 0).expect("open");
            assert!(matches!(
                Journal::open(dir.path(), MAGIC, &mut Kv::default(), Durability::Fsync, 0),
                Err(Error::Locked { .. })
            ));
            for i in 0..3 {
                j.append(&[(i, i)]).expect("append");
            }
        }
        let wal = dir.path().join(WAL_FILE);
        let mut data = fs::read(&wal).expect("read");
        data[12 + FRAME_HEADER + 2] ^= 0xff;
        fs::write(&wal, data).expect("write");
        assert!(matches!(
            Journal::open(dir.path(), MAGIC, &mut Kv::default(), Durability::Fsync, 0),
            Err(Error::Corrupt { .. })
        ));
    }
}
