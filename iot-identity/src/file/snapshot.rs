//! The snapshot file: every record as of one sequence number, replaced atomically.
//!
//! ```text
//! "IOTIDSN2" | frame(last_seq u64, count u64) | count × frame(Put mutation)
//! ```
//!
//! Frames are the storage kit's ([`iot_core::storage::frame`]). A snapshot is only ever renamed
//! into place complete and fsynced, so any damage in it is corruption, never a torn write: it is
//! refused, whatever the recovery mode (cutting a snapshot would drop identities; restore it from
//! a copy instead).
//!
//! The file is read in chunks rather than whole, so that opening a large store does not hold the
//! file and the identities decoded from it in memory at the same time.

use std::fs::File;
use std::io::{self, Read};
use std::path::Path;
use std::sync::Arc;

use iot_core::storage::frame::{self, FrameReader};
use iot_core::storage::{StorageError, fs};

use crate::error::{Error, Result};
use crate::file::codec::{self, MAX_PAYLOAD, MIN_PUT_PAYLOAD};
use crate::index::{Index, Mutation};

const MAGIC: &[u8; 8] = b"IOTIDSN2";
/// How much of the file is read at a time.
const CHUNK: usize = 1 << 20;

/// Writes `index` to `path` atomically; returns the file's size.
pub(crate) fn write(path: &Path, index: &Index) -> Result<u64> {
    let written = fs::replace_atomically(path, |out| {
        out.write_all(MAGIC)?;
        let mut buf = Vec::with_capacity(256);
        let mut header = Vec::with_capacity(16);
        header.extend_from_slice(&index.last_seq().to_le_bytes());
        header.extend_from_slice(&(index.len() as u64).to_le_bytes());
        frame::encode(&mut buf, &header).map_err(io::Error::other)?;
        out.write_all(&buf)?;
        for record in index.records() {
            buf.clear();
            let start = frame::begin(&mut buf);
            codec::encode(&Mutation::Put(Arc::clone(record)), &mut buf);
            frame::finish(&mut buf, start).map_err(io::Error::other)?;
            out.write_all(&buf)?;
        }
        Ok(())
    })?;
    Ok(written)
}

/// Loads the snapshot at `path` into `index`; returns its size. A missing file is an empty
/// snapshot.
pub(crate) fn load(path: &Path, index: &mut Index) -> Result<u64> {
    load_in_chunks(path, index, CHUNK)
}

/// [`load`], reading `chunk` bytes at a time.
fn load_in_chunks(path: &Path, index: &mut Index, chunk: usize) -> Result<u64> {
    let file = match File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(0),
        Err(e) => return Err(StorageError::io("open", path, e).into()),
    };
    let len = file
        .metadata()
        .map_err(|e| StorageError::io("stat", path, e))?
        .len();
    let mut loader = Loader {
        path,
        file_len: len,
        header: None,
        seen: 0,
    };
    let mut chunks = Chunks {
        file,
        path,
        chunk,
        buf: Vec::new(),
        base: 0,
        eof: false,
    };
    while chunks.buf.len() < MAGIC.len() && !chunks.eof {
        chunks.fill()?;
    }
    if chunks.buf.get(..MAGIC.len()) != Some(MAGIC.as_slice()) {
        return Err(corrupt(path, 0, "not an identity snapshot (bad magic)"));
    }
    chunks.consume(MAGIC.len());
    chunks.for_each_frame(|position, body| loader.frame(index, position, body))?;
    match loader.header {
        None => Err(corrupt(path, MAGIC.len() as u64, "no snapshot header")),
        Some((_, count)) if loader.seen != count => Err(corrupt(
            path,
            len,
            &format!("snapshot holds {} of its {count} records", loader.seen),
        )),
        Some(_) => Ok(len),
    }
}

fn corrupt(path: &Path, position: u64, reason: &str) -> Error {
    StorageError::corrupt(path, position, reason).into()
}

/// What has been read of a snapshot so far.
struct Loader<'p> {
    path: &'p Path,
    file_len: u64,
    /// `(last_seq, count)` once the header frame is read.
    header: Option<(u64, u64)>,
    seen: u64,
}

impl Loader<'_> {
    fn frame(&mut self, index: &mut Index, position: u64, body: &[u8]) -> Result<()> {
        let Some((last_seq, count)) = self.header else {
            let (Some(last_seq), Some(count)) = (le_u64(body, 0), le_u64(body, 8)) else {
                return Err(corrupt(self.path, position, "short snapshot header"));
            };
            index.observe_seq(last_seq);
            // Reserve by the count only as far as the file can hold that many records: a
            // damaged or crafted count must not make us allocate without limit.
            let fits = self.file_len / frame::frame_len(MIN_PUT_PAYLOAD) as u64;
            index.reserve(usize::try_from(count.min(fits)).unwrap_or(0));
            self.header = Some((last_seq, count));
            return Ok(());
        };
        if self.seen == count {
            return Err(corrupt(
                self.path,
                position,
                "records after the last one counted",
            ));
        }
        match codec::decode(body) {
            Ok(m @ Mutation::Put(_)) if m.seq() <= last_seq => index.apply(m),
            Ok(_) => {
                return Err(corrupt(
                    self.path,
                    position,
                    "snapshot holds a record newer than itself or a delete",
                ));
            }
            Err(reason) => return Err(corrupt(self.path, position, &reason)),
        }
        self.seen += 1;
        Ok(())
    }
}

/// A file read a chunk at a time, with the part not yet parsed kept in `buf`.
struct Chunks<'p> {
    file: File,
    path: &'p Path,
    chunk: usize,
    /// Bytes read but not yet consumed; `buf[0]` is at file position `base`.
    buf: Vec<u8>,
    base: u64,
    eof: bool,
}

impl Chunks<'_> {
    /// Reads up to one more chunk onto the end of `buf`.
    fn fill(&mut self) -> Result<()> {
        let start = self.buf.len();
        self.buf.resize(start + self.chunk.max(1), 0);
        let mut filled = start;
        while filled < self.buf.len() {
            match self.file.read(&mut self.buf[filled..]) {
                Ok(0) => {
                    self.eof = true;
                    break;
                }
                Ok(n) => filled += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(StorageError::io("read", self.path, e).into()),
            }
        }
        self.buf.truncate(filled);
        Ok(())
    }

    fn consume(&mut self, n: usize) {
        self.buf.drain(..n);
        self.base += n as u64;
    }

    /// Calls `f` with the position and body of every frame to the end of the file. Any bad frame
    /// is corruption: a snapshot is complete before it is renamed into place.
    fn for_each_frame(&mut self, mut f: impl FnMut(u64, &[u8]) -> Result<()>) -> Result<()> {
        loop {
            let (consumed, stopped_at) = {
                let mut reader = FrameReader::new(self.path, &self.buf, self.base, MAX_PAYLOAD);
                while let Some(frame) = reader.next_frame()? {
                    f(frame.position, frame.body)?;
                }
                let stopped_at = reader.torn_tail().map(|t| t.position);
                ((reader.valid_end() - self.base) as usize, stopped_at)
            };
            if let Some(position) = stopped_at {
                // A frame cut by the end of the chunk looks torn until the rest is read; one
                // that still fails with a whole frame's worth of bytes after it, or at the end
                // of the file, is damage.
                let left = self.buf.len() - consumed;
                if self.eof || left >= frame::frame_len(MAX_PAYLOAD) {
                    return Err(corrupt(self.path, position, "damaged snapshot frame"));
                }
            }
            self.consume(consumed);
            if self.eof {
                return Ok(());
            }
            self.fill()?;
        }
    }
}

fn le_u64(buf: &[u8], at: usize) -> Option<u64> {
    buf.get(at..at + 8)
        .and_then(|b| b.try_into().ok())
        .map(u64::from_le_bytes)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::credentials::Credentials;
    use crate::identity::NewIdentity;
    use iot_core::{DeviceId, Timestamp};

    fn index_of(n: usize) -> Index {
        let mut index = Index::default();
        for i in 0..n {
            let id = DeviceId::new(format!("device-{i}")).unwrap();
            let new = NewIdentity::new(id, Credentials::generate_symmetric_keys());
            let plan = index
                .plan_create(new, Timestamp::from_unix_micros(1))
                .unwrap();
            index.apply(plan.mutation());
        }
        index
    }

    fn ids(index: &Index) -> Vec<(String, u64)> {
        index
            .records()
            .map(|r| (r.id.to_string(), r.etag.0))
            .collect()
    }

    #[test]
    fn frames_split_across_chunks_load_and_damage_is_found_in_any_chunking() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("snapshot");
        let index = index_of(40);
        let len = write(&path, &index).unwrap();
        for chunk in [1, 5, 12, 97, 1000, CHUNK] {
            let mut loaded = Index::default();
            let read = load_in_chunks(&path, &mut loaded, chunk)
                .unwrap_or_else(|e| panic!("chunk {chunk}: {e}"));
            assert_eq!(read, len);
            assert_eq!(ids(&loaded), ids(&index), "chunk {chunk}");
            assert_eq!(loaded.last_seq(), index.last_seq());
        }
        let good = std::fs::read(&path).unwrap();
        let middle = good.len() / 2;
        let mut bad = good.clone();
        bad[middle] ^= 0x10;
        std::fs::write(&path, &bad).unwrap();
        for chunk in [1, 5, 97, CHUNK] {
            let result = load_in_chunks(&path, &mut Index::default(), chunk);
            assert!(
                matches!(&result, Err(Error::Corrupt { position, .. }) if *position <= middle as u64),
                "chunk {chunk}: {result:?}"
            );
        }
    }
}
