//! Checksummed frames, and the one rule that tells a torn tail from corruption.
//!
//! ```text
//! frame = len:u32 crc:u32 hcrc:u32 body
//!   little-endian; len = byte length of body; crc = CRC32C of body;
//!   hcrc = CRC32C of the 8 bytes of len and crc
//! ```
//!
//! The header carries its own checksum so that a damaged length is recognised as damage: without
//! it, a flipped bit that makes `len` point past the end of the file looks exactly like a frame cut
//! short by a crash, and recovery would silently drop every intact frame after it.
//!
//! # The torn-tail rule
//!
//! A crash can only damage the end of a file that is written by appending: a process killed in the
//! middle of a write leaves a prefix of a frame; a power cut can also leave the file longer than
//! what reached the disk, filled with zeros or stale bytes. So when a frame fails its checks:
//!
//! * if **no intact frame starts anywhere after it**, the bad frame and everything after it are a
//!   **torn tail**: recovery cuts the file there (a short, bad or zero-filled last frame);
//! * otherwise the file is **corrupt** — damage followed by intact data is never what a crash
//!   leaves — and reading fails with [`StorageError::Corrupt`] naming the file and the position,
//!   unless the caller asked for [`Recovery::Repair`], which cuts the file at the damage and drops
//!   what follows (logged as a warning with the number of bytes).
//!
//! A frame whose header is intact but claims more than the reader's `max_body` bytes is corrupt as
//! well: no writer produced it, and allocating by it could exhaust memory. Decoders of frame bodies
//! must likewise bound every allocation by the bytes the body holds, never by a count read from it.

use std::ops::Range;
use std::path::Path;

use tracing::warn;

use crate::storage::error::{StorageError, StorageResult};

/// Bytes of a frame header.
pub const HEADER_LEN: usize = 12;

/// The bytes a frame of a `body_len`-byte body takes.
pub const fn frame_len(body_len: usize) -> usize {
    HEADER_LEN + body_len
}

/// Appends the frame of `body` to `out`.
pub fn encode(out: &mut Vec<u8>, body: &[u8]) -> StorageResult<()> {
    let start = begin(out);
    out.extend_from_slice(body);
    finish(out, start)
}

/// Where a frame being written in place starts; see [`begin`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FrameStart(usize);

/// Starts a frame whose body the caller appends to `out` directly (no copy); [`finish`] then fills
/// in the header.
pub fn begin(out: &mut Vec<u8>) -> FrameStart {
    let start = out.len();
    out.extend_from_slice(&[0; HEADER_LEN]);
    FrameStart(start)
}

/// Completes the frame started at `start`: everything appended to `out` since is its body.
pub fn finish(out: &mut [u8], start: FrameStart) -> StorageResult<()> {
    let body_start = start.0 + HEADER_LEN;
    let body = out.get(body_start..).unwrap_or_default();
    let len = u32::try_from(body.len()).map_err(|_| StorageError::TooLarge {
        what: "frame body",
        size: body.len(),
        limit: u32::MAX as usize,
    })?;
    let crc = crc32c::crc32c(body);
    let mut header = [0u8; 8];
    header[..4].copy_from_slice(&len.to_le_bytes());
    header[4..].copy_from_slice(&crc.to_le_bytes());
    let hcrc = crc32c::crc32c(&header);
    out[start.0..start.0 + 8].copy_from_slice(&header);
    out[start.0 + 8..body_start].copy_from_slice(&hcrc.to_le_bytes());
    Ok(())
}

/// What recovery does with corruption (damage followed by intact data).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub enum Recovery {
    /// Refuse: reading fails with [`StorageError::Corrupt`], and the store does not open. The
    /// default: nothing is ever dropped without an operator asking.
    #[default]
    Strict,
    /// Cut the file at the first damaged frame, dropping it and everything after it (logged as a
    /// warning). An explicit repair for an operator who has a copy or accepts the loss.
    Repair,
}

/// The end of a file that recovery cuts off.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TornTail {
    /// File position where the cut-off bytes start.
    pub position: u64,
    /// How many bytes are cut off.
    pub bytes: u64,
    /// `Some(reason)` when this was corruption cut off by [`Recovery::Repair`], not a torn write.
    pub repaired_corruption: Option<String>,
}

/// One intact frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frame<'a> {
    /// File position of the frame's header.
    pub position: u64,
    /// The frame's body.
    pub body: &'a [u8],
    /// Where the body lies in the reader's buffer (to slice a shared `Bytes` without copying).
    pub body_range: Range<usize>,
}

/// Why a frame at some position fails its checks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Bad {
    /// Fewer bytes than a header remain.
    ShortHeader,
    /// The header's checksum does not match.
    HeaderChecksum,
    /// An intact header claims more than the reader's limit.
    TooLong(usize),
    /// An intact header claims more bytes than the file holds.
    ShortBody(usize),
    /// The body's checksum does not match.
    BodyChecksum(usize),
}

impl Bad {
    fn reason(self, max_body: usize) -> String {
        match self {
            Bad::ShortHeader => "incomplete frame header".into(),
            Bad::HeaderChecksum => "frame header checksum mismatch".into(),
            Bad::TooLong(n) => format!("frame claims {n} bytes, more than the limit of {max_body}"),
            Bad::ShortBody(n) => format!("frame of {n} bytes runs past the end of the file"),
            Bad::BodyChecksum(_) => "frame checksum mismatch".into(),
        }
    }

    /// Where an intact frame could start after this bad one: past its body when the header is
    /// intact (the length is trustworthy), else at the next byte.
    fn resume(self, at: usize) -> usize {
        match self {
            Bad::ShortBody(n) | Bad::BodyChecksum(n) => at + HEADER_LEN + n,
            Bad::ShortHeader | Bad::HeaderChecksum | Bad::TooLong(_) => at + 1,
        }
    }
}

fn le_u32(data: &[u8], at: usize) -> u32 {
    let mut b = [0u8; 4];
    b.copy_from_slice(&data[at..at + 4]);
    u32::from_le_bytes(b)
}

/// Checks the frame at `at`; on success returns the range of its body.
fn check_at(data: &[u8], at: usize, max_body: usize) -> Result<Range<usize>, Bad> {
    let Some(header) = data.get(at..at + HEADER_LEN) else {
        return Err(Bad::ShortHeader);
    };
    if crc32c::crc32c(&header[..8]) != le_u32(header, 8) {
        return Err(Bad::HeaderChecksum);
    }
    let len = le_u32(header, 0) as usize;
    if len > max_body {
        return Err(Bad::TooLong(len));
    }
    let body = at + HEADER_LEN..at + HEADER_LEN + len;
    let Some(bytes) = data.get(body.clone()) else {
        return Err(Bad::ShortBody(len));
    };
    if crc32c::crc32c(bytes) != le_u32(header, 4) {
        return Err(Bad::BodyChecksum(len));
    }
    Ok(body)
}

/// The position of the first intact frame starting at or after `from`, if any.
fn intact_frame_from(data: &[u8], from: usize, max_body: usize) -> Option<usize> {
    let last_start = data.len().checked_sub(HEADER_LEN)?;
    (from..=last_start).find(|&at| check_at(data, at, max_body).is_ok())
}

/// Reads the frames of one file (or of the part of it in `data`), applying the torn-tail rule.
///
/// ```
/// use std::path::Path;
/// use iot_core::storage::frame::{self, FrameReader};
///
/// let mut file = Vec::new();
/// frame::encode(&mut file, b"one")?;
/// frame::encode(&mut file, b"two")?;
/// file.extend_from_slice(&[0; 100]); // a zero-filled tail, as a power cut can leave
/// let mut reader = FrameReader::new(Path::new("wal"), &file, 0, 1024);
/// let mut bodies = Vec::new();
/// while let Some(frame) = reader.next_frame()? {
///     bodies.push(frame.body.to_vec());
/// }
/// assert_eq!(bodies, [b"one".to_vec(), b"two".to_vec()]);
/// assert_eq!(reader.torn_tail().map(|t| t.bytes), Some(100));
/// # Ok::<(), iot_core::storage::StorageError>(())
/// ```
#[derive(Debug)]
pub struct FrameReader<'a> {
    path: &'a Path,
    data: &'a [u8],
    base: u64,
    max_body: usize,
    recovery: Recovery,
    pos: usize,
    tail: Option<TornTail>,
    done: bool,
}

impl<'a> FrameReader<'a> {
    /// Reads `data`, the bytes of `path` from file position `base` (after a magic header, say) to
    /// the end of the file. Frames longer than `max_body` are corrupt.
    pub fn new(path: &'a Path, data: &'a [u8], base: u64, max_body: usize) -> Self {
        FrameReader {
            path,
            data,
            base,
            max_body,
            recovery: Recovery::Strict,
            pos: 0,
            tail: None,
            done: false,
        }
    }

    /// Sets what to do with corruption (default [`Recovery::Strict`]).
    pub fn with_recovery(mut self, recovery: Recovery) -> Self {
        self.recovery = recovery;
        self
    }

    /// The next intact frame; `None` at the end of the data or at a torn tail (see
    /// [`torn_tail`](Self::torn_tail)); [`StorageError::Corrupt`] for damage followed by intact
    /// data under [`Recovery::Strict`].
    pub fn next_frame(&mut self) -> StorageResult<Option<Frame<'a>>> {
        if self.done || self.pos >= self.data.len() {
            self.done = true;
            return Ok(None);
        }
        let at = self.pos;
        match check_at(self.data, at, self.max_body) {
            Ok(body) => {
                self.pos = body.end;
                Ok(Some(Frame {
                    position: self.base + at as u64,
                    body: &self.data[body.clone()],
                    body_range: body,
                }))
            }
            Err(bad) => {
                self.done = true;
                self.end_at_bad_frame(at, bad)?;
                Ok(None)
            }
        }
    }

    fn end_at_bad_frame(&mut self, at: usize, bad: Bad) -> StorageResult<()> {
        let position = self.base + at as u64;
        let bytes = (self.data.len() - at) as u64;
        let reason = bad.reason(self.max_body);
        // An intact header claiming more than any writer wrote is never a torn write.
        let intact_after = match bad {
            Bad::TooLong(_) => Some(at),
            _ => intact_frame_from(self.data, bad.resume(at), self.max_body),
        };
        let Some(next) = intact_after else {
            self.tail = Some(TornTail {
                position,
                bytes,
                repaired_corruption: None,
            });
            return Ok(());
        };
        let reason = if next == at {
            reason
        } else {
            format!(
                "{reason}, followed by intact data at byte {}",
                self.base + next as u64
            )
        };
        match self.recovery {
            Recovery::Strict => Err(StorageError::corrupt(self.path, position, reason)),
            Recovery::Repair => {
                warn!(path = %self.path.display(), position, dropped_bytes = bytes, %reason,
                    "repair: cutting off corrupt data and everything after it");
                self.tail = Some(TornTail {
                    position,
                    bytes,
                    repaired_corruption: Some(reason),
                });
                Ok(())
            }
        }
    }

    /// File position just past the last intact frame read so far.
    pub fn valid_end(&self) -> u64 {
        self.base + self.pos as u64
    }

    /// The torn tail (or repaired corruption) found at the end, once [`next_frame`](Self::next_frame)
    /// returned `None`.
    pub fn torn_tail(&self) -> Option<&TornTail> {
        self.tail.as_ref()
    }

    /// Corruption inside an intact frame (its body does not decode): an error naming the frame's
    /// position, for a caller to return.
    pub fn corrupt_body(&self, frame: &Frame<'_>, reason: impl Into<String>) -> StorageError {
        StorageError::corrupt(self.path, frame.position, reason)
    }
}

/// All the intact frames of `data` at once, by [`FrameReader`]'s rules.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FrameScan {
    /// Each intact frame: its file position and the range of its body in `data`.
    pub frames: Vec<(u64, Range<usize>)>,
    /// File position just past the last intact frame: where the file should end.
    pub valid_end: u64,
    /// What is cut off, if anything.
    pub torn_tail: Option<TornTail>,
}

impl FrameScan {
    /// Scans `data` (the bytes of `path` from position `base` to its end).
    pub fn scan(
        path: &Path,
        data: &[u8],
        base: u64,
        max_body: usize,
        recovery: Recovery,
    ) -> StorageResult<FrameScan> {
        let mut reader = FrameReader::new(path, data, base, max_body).with_recovery(recovery);
        let mut frames = Vec::new();
        while let Some(frame) = reader.next_frame()? {
            frames.push((frame.position, frame.body_range));
        }
        Ok(FrameScan {
            frames,
            valid_end: reader.valid_end(),
            torn_tail: reader.tail,
        })
    }
}

/// Recovery of an append-only file: scans `data` (the whole of `path` from position `base`),
/// cuts a torn tail (or, under [`Recovery::Repair`], corruption) off the file durably, and
/// returns the scan.
pub fn recover_file(
    path: &Path,
    data: &[u8],
    base: u64,
    max_body: usize,
    recovery: Recovery,
) -> StorageResult<FrameScan> {
    let scan = FrameScan::scan(path, data, base, max_body, recovery)?;
    if let Some(tail) = &scan.torn_tail {
        if tail.repaired_corruption.is_none() {
            warn!(path = %path.display(), position = tail.position, dropped_bytes = tail.bytes,
                "cutting off a torn write at the end of the file");
        }
        crate::storage::fs::truncate_durably(path, scan.valid_end)?;
    }
    Ok(scan)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const MAX: usize = 1 << 20;

    fn file_of(bodies: &[&[u8]]) -> (Vec<u8>, Vec<usize>) {
        let mut out = Vec::new();
        let mut starts = Vec::new();
        for b in bodies {
            starts.push(out.len());
            encode(&mut out, b).expect("encode");
        }
        (out, starts)
    }

    fn scan(data: &[u8], recovery: Recovery) -> StorageResult<FrameScan> {
        FrameScan::scan(Path::new("f"), data, 0, MAX, recovery)
    }

    #[test]
    fn intact_frames_read_back() {
        let (data, _) = file_of(&[b"a", b"", b"hello world"]);
        let s = scan(&data, Recovery::Strict).expect("scan");
        let bodies: Vec<&[u8]> = s.frames.iter().map(|(_, r)| &data[r.clone()]).collect();
        assert_eq!(bodies, [&b"a"[..], b"", b"hello world"]);
        assert_eq!(s.valid_end, data.len() as u64);
        assert_eq!(s.torn_tail, None);
    }

    #[test]
    fn every_prefix_of_a_last_frame_is_a_torn_tail() {
        let (data, starts) = file_of(&[b"first", b"second frame", b"third frame body"]);
        let last = starts[2];
        for cut in last + 1..data.len() {
            let s = scan(&data[..cut], Recovery::Strict).expect("torn");
            assert_eq!(s.frames.len(), 2, "cut at {cut}");
            assert_eq!(s.valid_end, last as u64);
            assert_eq!(s.torn_tail.as_ref().map(|t| t.position), Some(last as u64));
        }
    }

    #[test]
    fn a_zero_filled_tail_is_torn() {
        let (mut data, _) = file_of(&[b"first", b"second"]);
        let end = data.len();
        data.extend_from_slice(&[0; 4096]);
        let s = scan(&data, Recovery::Strict).expect("zeros");
        assert_eq!(s.frames.len(), 2);
        assert_eq!(s.valid_end, end as u64);
        // A last frame whose body never reached the disk (zeros after an intact header).
        let (mut data, starts) = file_of(&[b"first", b"second body"]);
        for b in &mut data[starts[1] + HEADER_LEN..] {
            *b = 0;
        }
        let s = scan(&data, Recovery::Strict).expect("zeroed body");
        assert_eq!(s.frames.len(), 1);
        assert_eq!(s.valid_end, starts[1] as u64);
    }

    #[test]
    fn any_damage_followed_by_an_intact_frame_is_corruption() {
        let (data, starts) = file_of(&[b"first", b"second", b"third"]);
        for i in 0..starts[2] {
            for bit in [0, 3, 7] {
                let mut damaged = data.clone();
                damaged[i] ^= 1 << bit;
                match scan(&damaged, Recovery::Strict) {
                    Err(StorageError::Corrupt { position, .. }) => {
                        assert!(position <= i as u64, "byte {i}: position {position}");
                    }
                    other => panic!("byte {i} bit {bit}: {other:?}"),
                }
                let repaired = scan(&damaged, Recovery::Repair).expect("repair");
                let tail = repaired.torn_tail.expect("cut");
                assert!(tail.repaired_corruption.is_some());
                assert!(repaired.frames.len() < 3);
            }
        }
    }

    #[test]
    fn a_huge_length_with_a_valid_header_checksum_is_corruption_not_an_allocation() {
        let (mut data, starts) = file_of(&[b"first", b"last"]);
        let at = starts[1];
        let mut header = [0u8; 8];
        header[..4].copy_from_slice(&u32::MAX.to_le_bytes());
        data[at..at + 8].copy_from_slice(&header);
        let hcrc = crc32c::crc32c(&header);
        data[at + 8..at + 12].copy_from_slice(&hcrc.to_le_bytes());
        assert!(matches!(
            scan(&data, Recovery::Strict),
            Err(StorageError::Corrupt { position, .. }) if position == at as u64
        ));
    }

    #[test]
    fn recover_file_cuts_the_tail_durably() {
        let dir = tempfile::tempdir().expect("dir");
        let path = dir.path().join("wal");
        let (mut data, starts) = file_of(&[b"one", b"two"]);
        data.truncate(data.len() - 2);
        std::fs::write(&path, &data).expect("write");
        let s = recover_file(&path, &data, 0, MAX, Recovery::Strict).expect("recover");
        assert_eq!(s.frames.len(), 1);
        assert_eq!(
            std::fs::metadata(&path).expect("stat").len(),
            starts[1] as u64
        );
    }

    proptest! {
        /// Whatever bytes follow the intact frames, a scan never panics, never returns a frame that
        /// was not written, and keeps every written frame before the damage.
        #[test]
        fn garbage_never_panics_or_invents_frames(
            bodies in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..64), 0..8),
            garbage in proptest::collection::vec(any::<u8>(), 0..200),
        ) {
            let refs: Vec<&[u8]> = bodies.iter().map(Vec::as_slice).collect();
            let (mut data, _) = file_of(&refs);
            data.extend_from_slice(&garbage);
            if let Ok(s) = scan(&data, Recovery::Repair) {
                prop_assert!(s.frames.len() >= bodies.len());
                for ((_, r), b) in s.frames.iter().zip(&bodies) {
                    prop_assert_eq!(&data[r.clone()], b.as_slice());
                }
            }
        }
    }
}
