//! The write-ahead log: one frame of the storage kit per write.
//!
//! ```text
//! wal body = version:u64 kind:u8 payload
//!   kind 3: a record in the binary encoding of `binary` (the one snapshots use)
//!   kind 2: a deletion; payload = the device id (UTF-8)
//! ```

use std::path::Path;

use bytes::Bytes;
use iot_core::DeviceId;
use iot_core::storage::StorageError;
use iot_core::storage::frame::{self, Recovery};
use tracing::debug;

use super::recovery::on_all_cores;
use crate::engine::Change;
use crate::error::{Error, Result};
use crate::stored::Stored;

/// A log entry holding a record in the binary encoding of [`super::binary`].
const WAL_PUT: u8 = 3;
/// A log entry deleting a device.
const WAL_DELETE: u8 = 2;

/// Largest frame body: far above any document the limits allow, far below a length that could
/// make a reader allocate absurdly from a damaged header.
pub(super) const MAX_FRAME: usize = 64 * 1024 * 1024;

/// Appends the frame of `change` at `version` to `out`, encoding it in place.
pub(super) fn encode_change(out: &mut Vec<u8>, change: &Change, version: u64) -> Result<()> {
    let start = frame::begin(out);
    let body_start = out.len();
    out.extend_from_slice(&version.to_le_bytes());
    match change {
        Change::Put(record) => {
            out.push(WAL_PUT);
            out.extend_from_slice(record.bytes());
        }
        Change::Delete(id) => {
            out.push(WAL_DELETE);
            out.extend_from_slice(id.as_str().as_bytes());
        }
    }
    let size = out.len() - body_start;
    if size > MAX_FRAME {
        out.truncate(body_start - frame::HEADER_LEN);
        return Err(Error::DocumentTooLarge {
            size,
            limit: MAX_FRAME,
        });
    }
    frame::finish(out, start)?;
    Ok(())
}

/// Decodes the entry whose body is `body` of `file` (the log's bytes, shared by the records it
/// holds), at file position `position`.
fn decode_change(
    path: &Path,
    file: &Bytes,
    position: u64,
    body: std::ops::Range<usize>,
) -> Result<(Change, u64)> {
    let corrupt = |reason: String| Error::from(StorageError::corrupt(path, position, reason));
    let bytes = file.get(body.clone()).unwrap_or_default();
    let (version, rest) = bytes
        .split_first_chunk::<8>()
        .ok_or_else(|| corrupt("entry too short".into()))?;
    let version = u64::from_le_bytes(*version);
    let (kind, payload) = rest
        .split_first()
        .ok_or_else(|| corrupt("entry too short".into()))?;
    let change = match *kind {
        WAL_PUT => Change::Put(
            Stored::from_bytes(file.slice(body.start + 9..body.end))
                .map_err(|e| corrupt(format!("bad record: {e}")))?,
        ),
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

/// Reads the log's entries by the storage kit's rule: a torn tail (short, damaged or
/// zero-filled end) is cut off the file durably; damage followed by intact frames is
/// [`Error::Corrupt`] unless `recovery` is `Repair`, which cuts the log there. Returns the
/// entries with the log's length after recovery.
pub(super) fn read_wal(path: &Path, recovery: Recovery) -> Result<(Vec<(Change, u64)>, u64)> {
    let Some(file) = iot_core::storage::fs::read_optional(path)? else {
        return Ok((Vec::new(), 0));
    };
    let file = Bytes::from(file);
    let scan = frame::recover_file(path, &file, 0, MAX_FRAME, recovery)?;
    // Entries are decoded on all cores, like a snapshot's records; the first bad one (in log
    // order) is reported.
    let changes = on_all_cores(&scan.frames, |position, body| {
        decode_change(path, &file, position, body.clone())
    })?;
    debug!(entries = changes.len(), "log read");
    Ok((changes, scan.valid_end))
}
