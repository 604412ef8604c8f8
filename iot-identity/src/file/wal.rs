//! The write-ahead log: one frame of the storage kit per acknowledged write, appended in sequence
//! order.
//!
//! ```text
//! "IOTIDWL2" | frame(mutation) | frame(mutation) | ...
//! ```
//!
//! # Invariants
//!
//! * Frames hold strictly increasing sequence numbers.
//! * Only the last frames can be torn (frames are appended in batches by the kit's group commit,
//!   and a failed batch fails the store until it is reopened). Recovery follows the kit's rule
//!   ([`iot_core::storage::frame`]): a bad frame with no intact frame after it is a torn tail and
//!   is cut off; damage followed by intact frames is refused with [`Error::Corrupt`], or cut off
//!   there when the store is opened with [`Recovery::Repair`].
//! * A frame that passes its checksums but does not decode, or breaks the sequence order, is
//!   refused whatever the recovery mode: no crash writes such a frame.
//! * A new, empty log replaces the old one atomically (temp file, fsync, rename, fsync directory),
//!   so the file always starts with its magic.

use std::fs::File;
use std::path::{Path, PathBuf};

use iot_core::storage::frame;
use iot_core::storage::{Recovery, StorageError, WalFile, fs};

use crate::error::{Error, Result};
use crate::file::codec::{self, MAX_PAYLOAD};
use crate::index::{Index, Mutation};

const MAGIC: &[u8; 8] = b"IOTIDWL2";

#[derive(Debug)]
pub(crate) struct Wal {
    file: File,
    path: PathBuf,
    len: u64,
}

impl Wal {
    /// Creates an empty log at `path`, replacing any existing one atomically, and opens it.
    pub(crate) fn create_empty(path: &Path) -> Result<Wal> {
        fs::write_atomically(path, MAGIC)?;
        Ok(Wal {
            file: fs::open_append(path, false)?,
            path: path.to_owned(),
            len: MAGIC.len() as u64,
        })
    }

    /// Opens the log at `path` (creating it if missing), applies to `index` every mutation newer
    /// than `snapshot_seq`, and cuts off a torn tail (or, under [`Recovery::Repair`], corruption).
    pub(crate) fn open_and_replay(
        path: &Path,
        index: &mut Index,
        snapshot_seq: u64,
        recovery: Recovery,
    ) -> Result<Wal> {
        let Some(data) = fs::read_optional(path)? else {
            return Wal::create_empty(path);
        };
        // The log is only ever put in place by an atomic rename, magic included: a file without
        // it was not written by this store.
        if data.get(..MAGIC.len()) != Some(MAGIC.as_slice()) {
            return Err(StorageError::corrupt(
                path,
                0,
                "not an identity write-ahead log (bad magic)",
            )
            .into());
        }
        let body = &data[MAGIC.len()..];
        let scan = frame::recover_file(path, body, MAGIC.len() as u64, MAX_PAYLOAD, recovery)?;
        let mut last_seq = 0u64;
        for (position, range) in scan.frames {
            let corrupt =
                |reason: String| Error::from(StorageError::corrupt(path, position, reason));
            let mutation = codec::decode(&body[range]).map_err(corrupt)?;
            if mutation.seq() <= last_seq {
                return Err(corrupt("sequence numbers do not increase".into()));
            }
            last_seq = mutation.seq();
            if mutation.seq() > snapshot_seq {
                index.apply(mutation);
            } else {
                index.observe_seq(mutation.seq());
            }
        }
        Ok(Wal {
            file: fs::open_append(path, false)?,
            path: path.to_owned(),
            len: scan.valid_end,
        })
    }

    /// The log's length in bytes.
    pub(crate) fn len(&self) -> u64 {
        self.len
    }

    /// The log as the storage kit's group commit writes it.
    pub(crate) fn into_wal_file(self) -> WalFile {
        WalFile {
            file: self.file,
            path: self.path,
            len: self.len,
        }
    }
}

/// Appends the frame of `mutation` to `buf` (a group commit's staging buffer). A record over
/// the limit is refused: recovery refuses such frames, so one must never be written.
pub(crate) fn encode(mutation: &Mutation, buf: &mut Vec<u8>) -> Result<()> {
    let start = frame::begin(buf);
    let body_start = buf.len();
    codec::encode(mutation, buf);
    let payload = buf.len() - body_start;
    if payload > MAX_PAYLOAD {
        return Err(StorageError::TooLarge {
            what: "identity record",
            size: payload,
            limit: MAX_PAYLOAD,
        }
        .into());
    }
    frame::finish(buf, start)?;
    Ok(())
}
