//! Length- and checksum-framed entries, as the write-ahead log and the snapshots store them.
//!
//! ```text
//! frame = len:u32 crc:u32 hcrc:u32 body
//!   little-endian; crc = CRC32C of body; hcrc = CRC32C of the 8 bytes of len and crc;
//!   0 < len <= MAX_FRAME
//! ```
//!
//! The header has its own checksum so that a damaged length in the middle of a file is recognised
//! as damage, not mistaken for a frame cut short by a crash (which would silently drop every
//! frame after it).

use std::ops::Range;
use std::path::{Path, PathBuf};

use bytes::Bytes;

use crate::error::{Error, Result};

/// Bytes of a frame header.
pub(crate) const HEADER_LEN: u64 = 12;
/// Largest frame body: far above any document the limits allow, far below a length that could
/// make a reader allocate absurdly from a damaged header.
pub(crate) const MAX_FRAME: u32 = 64 * 1024 * 1024;

/// Appends the frame of `body` to `out`.
pub(crate) fn encode(out: &mut Vec<u8>, body: &[u8]) {
    // Bodies are bounded by the document limits (at most MAX_FRAME, checked by the callers).
    let len = u32::try_from(body.len()).unwrap_or(u32::MAX);
    let mut header = [0u8; 8];
    header[..4].copy_from_slice(&len.to_le_bytes());
    header[4..].copy_from_slice(&crc32c::crc32c(body).to_le_bytes());
    out.extend_from_slice(&header);
    out.extend_from_slice(&crc32c::crc32c(&header).to_le_bytes());
    out.extend_from_slice(body);
}

/// What reading the next frame found.
#[derive(Debug)]
pub(crate) enum Next {
    /// A whole, intact frame starting at `position`; its body is `body` of
    /// [`FrameReader::bytes`].
    Frame { position: u64, body: Range<usize> },
    /// The clean end of the file.
    End,
    /// An incomplete or damaged last frame starting at `position`: what a crash in the middle
    /// of an append leaves. Nothing intact follows it.
    TornTail { position: u64 },
}

/// Reads frames one after the other, telling a torn tail (which recovery may cut off) from
/// damage in the middle (which it must refuse).
///
/// The whole file is read into memory at once: recovery decodes every frame anyway, and frame
/// bodies are then borrowed from one buffer instead of each being copied into its own
/// allocation (a million of them for a large snapshot). Records kept encoded in memory share
/// that buffer (see [`FrameReader::share`]).
pub(crate) struct FrameReader {
    bytes: Bytes,
    path: PathBuf,
    position: u64,
}

impl FrameReader {
    pub(crate) fn open(path: &Path) -> Result<Self> {
        let bytes = std::fs::read(path).map_err(|e| Error::io("read", path, e))?;
        Ok(FrameReader {
            bytes: Bytes::from(bytes),
            path: path.to_owned(),
            position: 0,
        })
    }

    pub(crate) fn path(&self) -> &Path {
        &self.path
    }

    /// The file's bytes, which the bodies of [`Next::Frame`] index.
    pub(crate) fn bytes(&self) -> &[u8] {
        &self.bytes
    }

    /// `part` of [`FrameReader::bytes`] as a handle sharing the file's buffer (no copy); `None`
    /// if `part` is not inside the buffer.
    pub(crate) fn share(&self, part: &[u8]) -> Option<Bytes> {
        if part.is_empty() {
            return Some(Bytes::new());
        }
        let start = (part.as_ptr() as usize).checked_sub(self.bytes.as_ptr() as usize)?;
        let end = start.checked_add(part.len())?;
        (end <= self.bytes.len()).then(|| self.bytes.slice(start..end))
    }

    fn corrupt(&self, position: u64, reason: &str) -> Error {
        Error::Corrupt {
            path: self.path.clone(),
            position,
            reason: reason.to_owned(),
        }
    }

    pub(crate) fn next_frame(&mut self) -> Result<Next> {
        let position = self.position;
        let len_of_file = self.bytes.len() as u64;
        let remaining = len_of_file - position;
        if remaining == 0 {
            return Ok(Next::End);
        }
        if remaining < HEADER_LEN {
            return Ok(Next::TornTail { position });
        }
        let at = position as usize;
        let Some(&header) = self
            .bytes
            .get(at..)
            .and_then(|rest| rest.first_chunk::<{ HEADER_LEN as usize }>())
        else {
            return Ok(Next::TornTail { position });
        };
        let [l0, l1, l2, l3, c0, c1, c2, c3, h0, h1, h2, h3] = header;
        let len = u32::from_le_bytes([l0, l1, l2, l3]);
        let crc = u32::from_le_bytes([c0, c1, c2, c3]);
        let header_crc = u32::from_le_bytes([h0, h1, h2, h3]);
        if header == [0; HEADER_LEN as usize]
            && self
                .bytes
                .get(at..)
                .is_some_and(|rest| rest.iter().all(|b| *b == 0))
        {
            // A zero-filled tail (a file extended but never written, after a power loss).
            return Ok(Next::TornTail { position });
        }
        if crc32c::crc32c(&[l0, l1, l2, l3, c0, c1, c2, c3]) != header_crc {
            return Err(self.corrupt(position, "frame header checksum mismatch"));
        }
        if len == 0 || len > MAX_FRAME {
            return Err(self.corrupt(position, &format!("impossible frame length {len}")));
        }
        let end = position + HEADER_LEN + u64::from(len);
        if end > len_of_file {
            return Ok(Next::TornTail { position });
        }
        let body = at + HEADER_LEN as usize..end as usize;
        let intact = self
            .bytes
            .get(body.clone())
            .is_some_and(|b| crc32c::crc32c(b) == crc);
        if !intact {
            if end == len_of_file {
                return Ok(Next::TornTail { position });
            }
            return Err(self.corrupt(position, "checksum mismatch in the middle of the file"));
        }
        self.position = end;
        Ok(Next::Frame { position, body })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs::File;
    use std::io::Write;

    fn frames(bodies: &[&[u8]]) -> Vec<u8> {
        let mut out = Vec::new();
        for b in bodies {
            encode(&mut out, b);
        }
        out
    }

    fn read_all(bytes: &[u8]) -> Result<(Vec<Vec<u8>>, Option<u64>)> {
        let dir = tempfile::tempdir().map_err(|e| Error::io("tempdir", "/tmp", e))?;
        let path = dir.path().join("f");
        let mut f = File::create(&path).map_err(|e| Error::io("create", &path, e))?;
        f.write_all(bytes)
            .map_err(|e| Error::io("write", &path, e))?;
        let mut r = FrameReader::open(&path)?;
        let mut out = Vec::new();
        loop {
            match r.next_frame()? {
                Next::Frame { body, .. } => out.push(r.bytes()[body].to_vec()),
                Next::End => return Ok((out, None)),
                Next::TornTail { position } => return Ok((out, Some(position))),
            }
        }
    }

    #[test]
    fn every_truncation_is_a_torn_tail_after_the_intact_frames() {
        let bytes = frames(&[b"one", b"two", b"three"]);
        let boundaries = [0, 15, 30, 47];
        assert_eq!(bytes.len(), 47);
        for cut in 0..=bytes.len() {
            let (got, torn) = read_all(&bytes[..cut])
                .map_err(|e| e.to_string())
                .unwrap_or_default();
            let whole = boundaries.iter().filter(|&&b| b <= cut).count() - 1;
            assert_eq!(got.len(), whole, "cut at {cut}");
            assert_eq!(torn.is_some(), !boundaries.contains(&cut), "cut at {cut}");
        }
    }

    #[test]
    fn damage_in_the_middle_is_refused_and_at_the_end_is_torn() {
        // Any damaged byte of "two" (the length, a checksum, the body) is refused.
        for at in 15..30 {
            let mut bytes = frames(&[b"one", b"two", b"three"]);
            bytes[at] ^= 0x10;
            assert!(
                matches!(read_all(&bytes), Err(Error::Corrupt { position: 15, .. })),
                "damage at {at}"
            );
        }
        let mut bytes = frames(&[b"one", b"two", b"three"]);
        let last = bytes.len() - 1;
        bytes[last] ^= 1;
        assert!(matches!(read_all(&bytes), Ok((ref v, Some(30))) if v.len() == 2));
        let mut bytes = frames(&[b"one"]);
        bytes.extend_from_slice(&[0; 100]);
        assert!(matches!(read_all(&bytes), Ok((ref v, Some(15))) if v.len() == 1));
    }
}
