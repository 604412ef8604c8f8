//! The write-ahead log: one checksummed frame per acknowledged write, appended in sequence order.
//!
//! ```text
//! "IOTIDWL1" | frame(mutation) | frame(mutation) | ...
//! ```
//!
//! # Invariants
//!
//! * Frames hold strictly increasing sequence numbers.
//! * Only the last frame can be torn (writes are appended one at a time, and a failed append is
//!   cut off before the next one starts). Recovery truncates a torn tail — a frame that runs past
//!   the end of the file, or a bad frame followed only by zeros — and refuses any other damage
//!   with [`Error::Corrupt`].
//! * A new, empty log replaces the old one atomically (temp file, fsync, rename, fsync directory),
//!   so the file always starts with its magic.

use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};

use tracing::warn;

use crate::error::{Error, Result};
use crate::file::codec::{self, FrameCheck};
use crate::file::fsutil;
use crate::index::{Index, Mutation};

const MAGIC: &[u8; 8] = b"IOTIDWL1";

#[derive(Debug)]
pub(crate) struct Wal {
    file: File,
    path: PathBuf,
    len: u64,
    buf: Vec<u8>,
    payload: Vec<u8>,
}

/// Opens `path` for appending; if `create`, first creates it empty (mode 0600).
fn open_append(path: &Path, create: bool) -> Result<File> {
    if create {
        // std refuses `truncate` together with `append`, so create and truncate separately.
        drop(fsutil::open_private(path, true)?);
    }
    OpenOptions::new()
        .read(true)
        .append(true)
        .open(path)
        .map_err(|e| Error::io("open", path, e))
}

impl Wal {
    /// Creates an empty log at `path`, replacing any existing one atomically.
    pub(crate) fn create_empty(dir: &Path, path: &Path) -> Result<Wal> {
        let tmp = path.with_extension("tmp");
        let mut file = open_append(&tmp, true)?;
        file.write_all(MAGIC)
            .map_err(|e| Error::io("write", &tmp, e))?;
        file.sync_all().map_err(|e| Error::io("fsync", &tmp, e))?;
        fs::rename(&tmp, path).map_err(|e| Error::io("rename", &tmp, e))?;
        // The handle follows the renamed file, so no reopen (which could fail) is needed.
        let wal = Wal {
            file,
            path: path.to_owned(),
            len: MAGIC.len() as u64,
            buf: Vec::new(),
            payload: Vec::new(),
        };
        fsutil::sync_dir(dir)?;
        Ok(wal)
    }

    /// Opens the log at `path` (creating it if missing), applies to `index` every mutation newer
    /// than `snapshot_seq`, and truncates a torn tail.
    pub(crate) fn open_and_replay(
        dir: &Path,
        path: &Path,
        index: &mut Index,
        snapshot_seq: u64,
    ) -> Result<Wal> {
        let data = match fs::read(path) {
            Ok(d) => d,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Wal::create_empty(dir, path);
            }
            Err(e) => return Err(Error::io("read", path, e)),
        };
        let corrupt = |position: usize, reason: &str| Error::Corrupt {
            path: path.to_owned(),
            position: position as u64,
            reason: reason.to_owned(),
        };
        if data.get(..MAGIC.len()) != Some(MAGIC.as_slice()) {
            return Err(corrupt(0, "not an identity write-ahead log (bad magic)"));
        }
        let mut pos = MAGIC.len();
        let mut last_seq = 0u64;
        while let Some(rest) = data.get(pos..).filter(|r| !r.is_empty()) {
            match codec::check_frame(rest) {
                FrameCheck::Valid(payload, n) => {
                    let mutation =
                        codec::decode(payload).map_err(|reason| corrupt(pos, &reason))?;
                    if mutation.seq() <= last_seq {
                        return Err(corrupt(pos, "sequence numbers do not increase"));
                    }
                    last_seq = mutation.seq();
                    if mutation.seq() > snapshot_seq {
                        index.apply(mutation);
                    } else {
                        index.observe_seq(mutation.seq());
                    }
                    pos += n;
                }
                FrameCheck::Truncated => break,
                FrameCheck::Bad(reason) => {
                    if !is_torn_tail(rest) {
                        return Err(corrupt(pos, reason));
                    }
                    break;
                }
            }
        }
        let file = open_append(path, false)?;
        if pos < data.len() {
            warn!(path = %path.display(), position = pos, dropped = data.len() - pos, "truncating a torn write at the end of the identity log");
            file.set_len(pos as u64)
                .and_then(|()| file.sync_all())
                .map_err(|e| Error::io("truncate", path, e))?;
        }
        Ok(Wal {
            file,
            path: path.to_owned(),
            len: pos as u64,
            buf: Vec::new(),
            payload: Vec::new(),
        })
    }

    /// The log's length in bytes.
    pub(crate) fn len(&self) -> u64 {
        self.len
    }

    /// Appends one mutation and, if `fsync`, makes it durable before returning.
    ///
    /// On failure the log is cut back to its previous length; if even that fails the error says
    /// so and the caller must stop writing (`Err(true)` in the second tuple field).
    pub(crate) fn append(&mut self, mutation: &Mutation, fsync: bool) -> Result<(), (Error, bool)> {
        self.payload.clear();
        self.buf.clear();
        codec::encode(mutation, &mut self.payload);
        codec::frame(&mut self.buf, &self.payload);
        let written = self.file.write_all(&self.buf).map_err(|e| ("write", e));
        let synced = written.and_then(|()| {
            if fsync {
                self.file.sync_data().map_err(|e| ("fsync", e))
            } else {
                Ok(())
            }
        });
        match synced {
            Ok(()) => {
                self.len += self.buf.len() as u64;
                Ok(())
            }
            Err((operation, e)) => {
                let error = Error::io(operation, &self.path, e);
                // After a failed fsync the page cache can no longer be trusted (the kernel may
                // have dropped the dirty pages), so the store must be reopened either way.
                let rolled_back = operation == "write" && self.file.set_len(self.len).is_ok();
                Err((error, !rolled_back))
            }
        }
    }

    /// Makes every appended mutation durable.
    pub(crate) fn sync(&self) -> Result<()> {
        self.file
            .sync_data()
            .map_err(|e| Error::io("fsync", &self.path, e))
    }
}

/// Whether a bad frame at the start of `rest` can be a write cut short: its length runs past the
/// end of the file, or nothing but zeros follows (a file extended but never written).
fn is_torn_tail(rest: &[u8]) -> bool {
    let claimed = rest
        .get(..4)
        .and_then(|b| b.try_into().ok())
        .map(|b| u32::from_le_bytes(b) as usize + codec::FRAME_HEADER);
    claimed.is_some_and(|n| n > rest.len()) || rest.iter().all(|b| *b == 0)
}
