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
//! * Only the last frame can be torn (writes are appended one at a time, and a failed append is
//!   cut off before the next one starts). Recovery follows the kit's rule
//!   ([`iot_core::storage::frame`]): a bad frame with no intact frame after it is a torn tail and
//!   is cut off; damage followed by intact frames is refused with [`Error::Corrupt`], or cut off
//!   there when the store is opened with [`Recovery::Repair`].
//! * A frame that passes its checksums but does not decode, or breaks the sequence order, is
//!   refused whatever the recovery mode: no crash writes such a frame.
//! * A new, empty log replaces the old one atomically (temp file, fsync, rename, fsync directory),
//!   so the file always starts with its magic.

use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};

use iot_core::storage::frame;
use iot_core::storage::{Recovery, StorageError, fs};

use crate::error::{Error, Result};
use crate::file::codec::{self, MAX_PAYLOAD};
use crate::index::{Index, Mutation};

const MAGIC: &[u8; 8] = b"IOTIDWL2";

#[derive(Debug)]
pub(crate) struct Wal {
    file: File,
    path: PathBuf,
    len: u64,
    buf: Vec<u8>,
}

impl Wal {
    /// Creates an empty log at `path`, replacing any existing one atomically, and opens it.
    pub(crate) fn create_empty(path: &Path) -> Result<Wal> {
        fs::write_atomically(path, MAGIC)?;
        Ok(Wal {
            file: fs::open_append(path, false)?,
            path: path.to_owned(),
            len: MAGIC.len() as u64,
            buf: Vec::new(),
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
            buf: Vec::new(),
        })
    }

    /// The log's length in bytes.
    pub(crate) fn len(&self) -> u64 {
        self.len
    }

    /// The log file.
    pub(crate) fn path(&self) -> &Path {
        &self.path
    }

    /// Appends one mutation and, if `fsync`, makes it durable before returning.
    ///
    /// On failure the log is cut back to its previous length; if even that fails the error says
    /// so and the caller must stop writing (`true` in the second tuple field).
    #[allow(
        clippy::disallowed_methods,
        reason = "the store calls it inside run_blocking"
    )]
    pub(crate) fn append(&mut self, mutation: &Mutation, fsync: bool) -> Result<(), (Error, bool)> {
        self.buf.clear();
        let start = frame::begin(&mut self.buf);
        codec::encode(mutation, &mut self.buf);
        let payload = self.buf.len() - frame::HEADER_LEN;
        // Recovery refuses frames over the limit, so one must never be written.
        if payload > MAX_PAYLOAD {
            let too_large = StorageError::TooLarge {
                what: "identity record",
                size: payload,
                limit: MAX_PAYLOAD,
            };
            return Err((too_large.into(), false));
        }
        frame::finish(&mut self.buf, start).map_err(|e| (e.into(), false))?;
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
                let error = StorageError::io(operation, &self.path, e).into();
                // After a failed fsync the page cache can no longer be trusted (the kernel may
                // have dropped the dirty pages), so the store must be reopened either way.
                let rolled_back = operation == "write" && self.file.set_len(self.len).is_ok();
                Err((error, !rolled_back))
            }
        }
    }

    /// Makes every appended mutation durable.
    #[allow(
        clippy::disallowed_methods,
        reason = "the store calls it inside run_blocking"
    )]
    pub(crate) fn sync(&self) -> Result<()> {
        self.file
            .sync_data()
            .map_err(|e| StorageError::io("fsync", &self.path, e).into())
    }
}
