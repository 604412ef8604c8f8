//! Segment files and their sparse offset index.
//!
//! A partition's records live in segment files named after the offset of their first record
//! (`00000000000000000000.log`). Beside each is an index (`.idx`) of 16-byte entries
//! `offset:u64 position:u64`, one for the first batch and then one per `index_interval_bytes` of
//! log data, each pointing at the start of a batch. The index only speeds up finding an offset;
//! recovery rebuilds it from the log whenever it is missing or inconsistent.

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use bytes::Bytes;

use crate::error::{Error, Result};
use crate::file_log::frame::{self, BatchHeader, HEADER_LEN};
use crate::file_log::fs_util::open_private;
use crate::timestamp::Timestamp;

/// How much a reader fetches per system call.
const READ_CHUNK: usize = 256 * 1024;
const INDEX_ENTRY_LEN: usize = 16;

/// An open segment file. Shared (through `Arc`) with readers, which keep a removed segment's file
/// readable until they finish.
#[derive(Debug)]
pub(crate) struct SegmentFile {
    pub(crate) base: u64,
    pub(crate) log_path: PathBuf,
    pub(crate) idx_path: PathBuf,
    pub(crate) file: File,
}

/// A sparse index entry: the batch holding `offset` starts at byte `position`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct IndexEntry {
    pub(crate) offset: u64,
    pub(crate) position: u64,
}

/// A segment as its partition tracks it.
///
/// Invariants: bytes `0..size` of the file hold whole, checked batches with offsets
/// `base..next`; `index` is sorted by offset and position, and its first entry (if any) is
/// `(base, 0)`; `max_time` is the enqueued time of the newest batch.
#[derive(Debug)]
pub(crate) struct Segment {
    pub(crate) file: std::sync::Arc<SegmentFile>,
    pub(crate) size: u64,
    pub(crate) next: u64,
    pub(crate) max_time: Timestamp,
    pub(crate) index: Vec<IndexEntry>,
}

pub(crate) fn log_file_name(base: u64) -> String {
    format!("{base:020}.log")
}

/// Parses a segment's base offset from its file name.
pub(crate) fn parse_log_file_name(name: &str) -> Option<u64> {
    let digits = name.strip_suffix(".log")?;
    if digits.len() != 20 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

impl SegmentFile {
    pub(crate) fn open(dir: &Path, base: u64, create: bool) -> Result<Self> {
        let log_path = dir.join(log_file_name(base));
        let idx_path = log_path.with_extension("idx");
        let file = open_private(&log_path, create)?;
        Ok(SegmentFile {
            base,
            log_path,
            idx_path,
            file,
        })
    }

    pub(crate) fn len(&self) -> Result<u64> {
        self.file
            .metadata()
            .map(|m| m.len())
            .map_err(|e| Error::io("stat", &self.log_path, e))
    }

    pub(crate) fn corrupt(&self, position: u64, reason: impl Into<String>) -> Error {
        Error::Corrupt {
            path: self.log_path.clone(),
            position,
            reason: reason.into(),
        }
    }
}

impl Segment {
    /// The position of the batch holding `offset`, or of an earlier batch of this segment.
    pub(crate) fn position_for(&self, offset: u64) -> u64 {
        let after = self.index.partition_point(|e| e.offset <= offset);
        after
            .checked_sub(1)
            .and_then(|i| self.index.get(i))
            .map_or(0, |e| e.position)
    }

    /// Writes the whole index file anew (after recovery rebuilt it).
    pub(crate) fn rewrite_index(&self) -> Result<()> {
        let mut bytes = Vec::with_capacity(self.index.len() * INDEX_ENTRY_LEN);
        for e in &self.index {
            bytes.extend_from_slice(&e.offset.to_le_bytes());
            bytes.extend_from_slice(&e.position.to_le_bytes());
        }
        let path = &self.file.idx_path;
        let file = open_private(path, true)?;
        file.set_len(0)
            .and_then(|()| file.write_all_at(&bytes, 0))
            .and_then(|()| file.sync_data())
            .map_err(|e| Error::io("write index", path, e))
    }
}

pub(crate) fn encode_index_entry(e: IndexEntry) -> [u8; INDEX_ENTRY_LEN] {
    let mut out = [0; INDEX_ENTRY_LEN];
    out[..8].copy_from_slice(&e.offset.to_le_bytes());
    out[8..].copy_from_slice(&e.position.to_le_bytes());
    out
}

/// Loads an index file, returning `None` if it is missing or inconsistent with a log of `log_len`
/// bytes starting at offset `base`.
pub(crate) fn load_index(path: &Path, base: u64, log_len: u64) -> Option<Vec<IndexEntry>> {
    let raw = std::fs::read(path).ok()?;
    let entries: Vec<IndexEntry> = raw
        .chunks_exact(INDEX_ENTRY_LEN)
        .map(|c| IndexEntry {
            offset: u64::from_le_bytes(c[..8].try_into().unwrap_or_default()),
            position: u64::from_le_bytes(c[8..].try_into().unwrap_or_default()),
        })
        .collect();
    let first_ok = entries
        .first()
        .is_none_or(|e| e.offset == base && e.position == 0);
    let sorted = entries
        .windows(2)
        .all(|w| w[0].offset < w[1].offset && w[0].position < w[1].position);
    let in_file = entries.last().is_none_or(|e| e.position < log_len);
    let complete = raw.len() % INDEX_ENTRY_LEN == 0 && (log_len == 0) == entries.is_empty();
    (first_ok && sorted && in_file && complete).then_some(entries)
}

/// One checked batch frame read from a segment.
#[derive(Debug)]
pub(crate) struct Frame {
    pub(crate) position: u64,
    pub(crate) header: BatchHeader,
    pub(crate) body: Bytes,
}

impl Frame {
    pub(crate) fn end(&self) -> u64 {
        self.position + HEADER_LEN as u64 + self.body.len() as u64
    }
}

/// Why a frame could not be read.
#[derive(Debug)]
pub(crate) enum FrameError {
    /// The bytes end inside a frame: what a crash in the middle of a write leaves.
    Torn { position: u64, reason: String },
    /// A whole frame is present but fails its checks.
    Bad { position: u64, reason: String },
    /// The read itself failed.
    Io(Error),
}

impl FrameError {
    pub(crate) fn position(&self) -> Option<u64> {
        match self {
            FrameError::Torn { position, .. } | FrameError::Bad { position, .. } => Some(*position),
            FrameError::Io(_) => None,
        }
    }

    pub(crate) fn into_error(self, segment: &SegmentFile) -> Error {
        match self {
            FrameError::Torn { position, reason } | FrameError::Bad { position, reason } => {
                segment.corrupt(position, reason)
            }
            FrameError::Io(e) => e,
        }
    }
}

/// Reads checked frames of one segment from `position` up to `end`, fetching in large chunks.
/// Lengths are checked against `end` before anything is allocated for them.
#[derive(Debug)]
pub(crate) struct FrameCursor<'a> {
    segment: &'a SegmentFile,
    position: u64,
    end: u64,
    buf: Bytes,
    buf_start: u64,
}

impl<'a> FrameCursor<'a> {
    pub(crate) fn new(segment: &'a SegmentFile, position: u64, end: u64) -> Self {
        FrameCursor {
            segment,
            position,
            end,
            buf: Bytes::new(),
            buf_start: position,
        }
    }

    pub(crate) fn position(&self) -> u64 {
        self.position
    }

    /// Makes `len` bytes from the current position available in `buf`.
    fn fill(&mut self, len: usize) -> Result<(), FrameError> {
        let have_from = self.position.saturating_sub(self.buf_start) as usize;
        if self.position >= self.buf_start && have_from + len <= self.buf.len() {
            return Ok(());
        }
        let remaining = (self.end - self.position) as usize;
        let want = len.max(READ_CHUNK).min(remaining);
        let mut v = vec![0; want];
        self.segment
            .file
            .read_exact_at(&mut v, self.position)
            .map_err(|e| FrameError::Io(Error::io("read", &self.segment.log_path, e)))?;
        self.buf = Bytes::from(v);
        self.buf_start = self.position;
        Ok(())
    }

    fn slice(&self, len: usize) -> Bytes {
        let from = (self.position - self.buf_start) as usize;
        self.buf.slice(from..from + len)
    }

    /// The next frame, `Ok(None)` at `end`.
    pub(crate) fn next_frame(&mut self) -> Result<Option<Frame>, FrameError> {
        if self.position >= self.end {
            return Ok(None);
        }
        let position = self.position;
        let remaining = self.end - position;
        if remaining < HEADER_LEN as u64 {
            return Err(FrameError::Torn {
                position,
                reason: format!("{remaining} bytes left, less than a frame header"),
            });
        }
        self.fill(HEADER_LEN)?;
        let head = self.slice(HEADER_LEN);
        let Some((len, crc)) = frame::read_header(&head) else {
            return Err(FrameError::Torn {
                position,
                reason: "unreadable frame header".into(),
            });
        };
        if len as u64 > remaining - HEADER_LEN as u64 {
            return Err(FrameError::Torn {
                position,
                reason: format!(
                    "frame of {len} bytes runs past the end of the data ({} bytes left)",
                    remaining - HEADER_LEN as u64
                ),
            });
        }
        self.fill(HEADER_LEN + len)?;
        let body = self.slice(HEADER_LEN + len).slice(HEADER_LEN..);
        let header =
            frame::check_body(&body, crc).map_err(|reason| FrameError::Bad { position, reason })?;
        self.position += (HEADER_LEN + len) as u64;
        Ok(Some(Frame {
            position,
            header,
            body,
        }))
    }
}

/// What a scan of a segment found.
#[derive(Debug)]
pub(crate) struct ScanOutcome {
    /// End of the last good frame.
    pub(crate) valid_end: u64,
    pub(crate) next: u64,
    pub(crate) max_time: Timestamp,
    pub(crate) index: Vec<IndexEntry>,
    /// The first frame that failed, if any, with the reason.
    pub(crate) failure: Option<(u64, String)>,
}

/// Reads every frame of `segment` from `start` (a batch boundary holding offset `expected`),
/// checking checksums and offset continuity, and rebuilding index entries every `interval` bytes.
pub(crate) fn scan(
    segment: &SegmentFile,
    start: u64,
    expected: u64,
    max_time: Timestamp,
    interval: u64,
    mut index: Vec<IndexEntry>,
) -> Result<ScanOutcome> {
    let len = segment.len()?;
    let mut cursor = FrameCursor::new(segment, start, len);
    let mut out = ScanOutcome {
        valid_end: start,
        next: expected,
        max_time,
        index: Vec::new(),
        failure: None,
    };
    let mut last_indexed = index.last().map(|e| e.position);
    loop {
        match cursor.next_frame() {
            Ok(None) => break,
            Ok(Some(f)) => {
                if f.header.base_offset != out.next {
                    out.failure = Some((
                        f.position,
                        format!(
                            "batch starts at offset {} where {} was expected",
                            f.header.base_offset, out.next
                        ),
                    ));
                    break;
                }
                if last_indexed.is_none_or(|p| f.position >= p + interval)
                    && last_indexed != Some(f.position)
                {
                    index.push(IndexEntry {
                        offset: f.header.base_offset,
                        position: f.position,
                    });
                    last_indexed = Some(f.position);
                }
                out.next = f.header.next_offset();
                out.max_time = out.max_time.max(f.header.enqueued_time);
                out.valid_end = f.end();
            }
            Err(FrameError::Io(e)) => return Err(e),
            Err(e) => {
                let position = e.position().unwrap_or(cursor.position());
                let reason = match e {
                    FrameError::Torn { reason, .. } | FrameError::Bad { reason, .. } => reason,
                    FrameError::Io(_) => String::new(),
                };
                out.failure = Some((position, reason));
                break;
            }
        }
    }
    out.index = index;
    Ok(out)
}
