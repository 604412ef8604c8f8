//! The snapshot file: every record as of one sequence number, replaced atomically.
//!
//! ```text
//! "IOTIDSN1" | frame(last_seq u64, count u64) | count × frame(Put mutation)
//! ```
//!
//! A snapshot is only ever renamed into place complete and fsynced, so any damage in it is
//! corruption, never a torn write: it is refused, not repaired.

use std::fs::File;
use std::io::{BufReader, Read};
use std::path::Path;
use std::sync::Arc;

use crate::error::{Error, Result};
use crate::file::codec::{self, FRAME_HEADER, FrameCheck, MAX_PAYLOAD};
use crate::file::fsutil;
use crate::index::{Index, Mutation};

const MAGIC: &[u8; 8] = b"IOTIDSN1";

/// Writes `index` to `path` atomically; returns the file's size.
pub(crate) fn write(dir: &Path, path: &Path, index: &Index) -> Result<u64> {
    fsutil::replace_atomically(dir, path, |out| {
        out.write_all(MAGIC)?;
        let mut buf = Vec::with_capacity(256);
        let mut header = Vec::with_capacity(16);
        header.extend_from_slice(&index.last_seq().to_le_bytes());
        header.extend_from_slice(&(index.len() as u64).to_le_bytes());
        codec::frame(&mut buf, &header);
        out.write_all(&buf)?;
        let mut payload = Vec::with_capacity(256);
        for record in index.records() {
            payload.clear();
            buf.clear();
            codec::encode(&Mutation::Put(Arc::clone(record)), &mut payload);
            codec::frame(&mut buf, &payload);
            out.write_all(&buf)?;
        }
        Ok(())
    })
}

/// Loads the snapshot at `path` into `index`; returns its size. A missing file is an empty
/// snapshot.
pub(crate) fn load(path: &Path, index: &mut Index) -> Result<u64> {
    let file = match File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(0),
        Err(e) => return Err(Error::io("open", path, e)),
    };
    let len = file
        .metadata()
        .map_err(|e| Error::io("stat", path, e))?
        .len();
    let mut reader = SnapshotReader {
        inner: BufReader::with_capacity(1 << 20, file),
        path,
        position: 0,
        buf: Vec::with_capacity(MAX_PAYLOAD + FRAME_HEADER),
    };
    let mut magic = [0u8; 8];
    reader.read_exact(&mut magic)?;
    if &magic != MAGIC {
        return Err(reader.corrupt("not an identity snapshot (bad magic)"));
    }
    reader.position = MAGIC.len() as u64;
    let header = reader.frame()?;
    let (Some(last_seq), Some(count)) = (le_u64(&header, 0), le_u64(&header, 8)) else {
        return Err(reader.corrupt("short snapshot header"));
    };
    index.observe_seq(last_seq);
    // Reserve from the count, bounded by what the file can hold (a damaged count must not make us
    // allocate without limit).
    let plausible = len / 40;
    index.reserve(usize::try_from(count.min(plausible)).unwrap_or(0));
    for _ in 0..count {
        let payload = reader.frame()?;
        match codec::decode(&payload) {
            Ok(m @ Mutation::Put(_)) if m.seq() <= last_seq => index.apply(m),
            Ok(_) => {
                return Err(reader.corrupt("snapshot holds a record newer than itself or a delete"));
            }
            Err(reason) => return Err(reader.corrupt(&reason)),
        }
    }
    let mut rest = [0u8; 1];
    match reader.inner.read(&mut rest) {
        Ok(0) => Ok(len),
        Ok(_) => Err(reader.corrupt("bytes after the last record")),
        Err(e) => Err(Error::io("read", path, e)),
    }
}

fn le_u64(buf: &[u8], at: usize) -> Option<u64> {
    buf.get(at..at + 8)
        .and_then(|b| b.try_into().ok())
        .map(u64::from_le_bytes)
}

struct SnapshotReader<'p> {
    inner: BufReader<File>,
    path: &'p Path,
    position: u64,
    buf: Vec<u8>,
}

impl SnapshotReader<'_> {
    fn corrupt(&self, reason: &str) -> Error {
        Error::Corrupt {
            path: self.path.to_owned(),
            position: self.position,
            reason: reason.to_owned(),
        }
    }

    fn read_exact(&mut self, out: &mut [u8]) -> Result<()> {
        match self.inner.read_exact(out) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => {
                Err(self.corrupt("snapshot ends early"))
            }
            Err(e) => Err(Error::io("read", self.path, e)),
        }
    }

    /// The next frame's payload (copied into a reused buffer and returned as a slice owner).
    fn frame(&mut self) -> Result<Vec<u8>> {
        let mut header = [0u8; FRAME_HEADER];
        self.read_exact(&mut header)?;
        let len = u32::from_le_bytes([header[0], header[1], header[2], header[3]]) as usize;
        if len == 0 || len > MAX_PAYLOAD {
            return Err(self.corrupt("impossible frame length"));
        }
        let mut buf = std::mem::take(&mut self.buf);
        buf.clear();
        buf.extend_from_slice(&header);
        buf.resize(FRAME_HEADER + len, 0);
        let result = self.read_exact(&mut buf[FRAME_HEADER..]);
        let checked = result.and_then(|()| match codec::check_frame(&buf) {
            FrameCheck::Valid(payload, _) => Ok(payload.to_vec()),
            FrameCheck::Bad(reason) => Err(self.corrupt(reason)),
            FrameCheck::Truncated => Err(self.corrupt("snapshot ends early")),
        });
        self.buf = buf;
        self.position += (FRAME_HEADER + len) as u64;
        checked
    }
}
