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
use tracing::warn;

use crate::error::{Error, Result};
use crate::file_log::frame::{self, BatchHeader, MAX_BODY_LEN};
use crate::storage::frame::{FrameReader, TornTail};
use crate::storage::{Recovery, fs::open_private};
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
    #[allow(
        clippy::disallowed_methods,
        reason = "runs where segments are opened or rolled, both on the blocking pool"
    )]
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

/// One intact batch frame read from a segment (its body not yet decoded).
#[derive(Debug)]
pub(crate) struct Frame {
    /// File position of the frame's header.
    pub(crate) position: u64,
    pub(crate) body: Bytes,
    /// File position just past the frame.
    pub(crate) end: u64,
}

impl Frame {
    /// The batch header, or the corruption of an intact frame whose body no writer produced.
    pub(crate) fn header(&self) -> std::result::Result<BatchHeader, String> {
        frame::decode_header(&self.body)
    }
}

/// Reads the intact frames of one segment from `position` up to `end`, fetching in large chunks,
/// by the storage kit's torn-tail rule: a bad frame with no intact frame after it (up to `end`) is
/// a torn tail, where the cursor stops; damage followed by intact data is [`Error::Corrupt`]
/// (under [`Recovery::Repair`], another place where the cursor stops).
///
/// A frame cut by the end of a chunk looks like a torn tail to the kit's reader; the cursor then
/// reads a larger chunk from that frame on, until the verdict is final (the chunk reaches `end`).
#[derive(Debug)]
pub(crate) struct FrameCursor<'a> {
    segment: &'a SegmentFile,
    position: u64,
    end: u64,
    recovery: Recovery,
    buf: Bytes,
    buf_start: u64,
    tail: Option<TornTail>,
}

impl<'a> FrameCursor<'a> {
    pub(crate) fn new(segment: &'a SegmentFile, position: u64, end: u64) -> Self {
        FrameCursor {
            segment,
            position,
            end,
            recovery: Recovery::Strict,
            buf: Bytes::new(),
            buf_start: position,
            tail: None,
        }
    }

    /// What to do with corruption (default [`Recovery::Strict`]).
    pub(crate) fn with_recovery(mut self, recovery: Recovery) -> Self {
        self.recovery = recovery;
        self
    }

    /// Where the cursor stopped before `end`, once [`next_frame`](Self::next_frame) returned
    /// `None`: a torn tail, or corruption cut off under [`Recovery::Repair`].
    pub(crate) fn tail(&self) -> Option<&TornTail> {
        self.tail.as_ref()
    }

    /// Bytes buffered from the current position on.
    fn buffered(&self) -> usize {
        let buf_end = self.buf_start + self.buf.len() as u64;
        if self.position < self.buf_start || self.position >= buf_end {
            0
        } else {
            (buf_end - self.position) as usize
        }
    }

    /// Reads `want` bytes (fewer at `end`) from the current position into `buf`.
    fn refill(&mut self, want: usize) -> Result<()> {
        let remaining = usize::try_from(self.end - self.position).unwrap_or(usize::MAX);
        let mut v = vec![0; want.min(remaining)];
        self.segment
            .file
            .read_exact_at(&mut v, self.position)
            .map_err(|e| Error::io("read", &self.segment.log_path, e))?;
        self.buf = Bytes::from(v);
        self.buf_start = self.position;
        Ok(())
    }

    /// The next intact frame; `None` at `end` or where the cursor stopped (see [`tail`](Self::tail)).
    pub(crate) fn next_frame(&mut self) -> Result<Option<Frame>> {
        if self.tail.is_some() || self.position >= self.end {
            return Ok(None);
        }
        // First try what is buffered; read more only when the kit's reader cannot decide.
        let mut want = 0;
        loop {
            let have = self.buffered();
            if have == 0 || have < want {
                self.refill(want.max(READ_CHUNK))?;
            }
            let off = (self.position - self.buf_start) as usize;
            let reaches_end = self.buf_start + self.buf.len() as u64 >= self.end;
            let (body, tail) = {
                let mut reader = FrameReader::new(
                    &self.segment.log_path,
                    &self.buf[off..],
                    self.position,
                    MAX_BODY_LEN,
                )
                .with_recovery(self.recovery);
                match reader.next_frame()? {
                    Some(f) => (Some(f.body_range), None),
                    None => (None, reader.torn_tail().cloned()),
                }
            };
            if let Some(range) = body {
                let position = self.position;
                let end = position + range.end as u64;
                let body = self.buf.slice(off + range.start..off + range.end);
                self.position = end;
                return Ok(Some(Frame {
                    position,
                    body,
                    end,
                }));
            }
            match tail {
                Some(tail) if reaches_end || tail.repaired_corruption.is_some() => {
                    self.tail = Some(tail);
                    return Ok(None);
                }
                // Cut by the end of the chunk: read a larger one.
                Some(_) => want = self.buffered().max(READ_CHUNK / 2).saturating_mul(2),
                None => return Ok(None),
            }
        }
    }
}

/// What a scan of a segment found.
#[derive(Debug)]
pub(crate) struct ScanOutcome {
    /// End of the last good batch.
    pub(crate) valid_end: u64,
    pub(crate) next: u64,
    pub(crate) max_time: Timestamp,
    pub(crate) index: Vec<IndexEntry>,
    /// Where the scan stopped before the end of the file: a torn tail, or corruption cut off
    /// under [`Recovery::Repair`].
    pub(crate) tail: Option<TornTail>,
}

/// Reads every batch of `segment` from `start` (a batch boundary holding offset `expected`),
/// checking frames, batch headers and offset continuity, and rebuilding index entries every
/// `interval` bytes.
///
/// An intact frame whose batch does not decode or breaks offset continuity is corruption (no crash
/// leaves a whole frame that its writer did not produce): [`Error::Corrupt`], or under
/// [`Recovery::Repair`] the place where the scan stops.
pub(crate) fn scan(
    segment: &SegmentFile,
    start: u64,
    expected: u64,
    max_time: Timestamp,
    interval: u64,
    mut index: Vec<IndexEntry>,
    recovery: Recovery,
) -> Result<ScanOutcome> {
    let len = segment.len()?;
    let mut cursor = FrameCursor::new(segment, start, len).with_recovery(recovery);
    let mut out = ScanOutcome {
        valid_end: start,
        next: expected,
        max_time,
        index: Vec::new(),
        tail: None,
    };
    let mut last_indexed = index.last().map(|e| e.position);
    while let Some(f) = cursor.next_frame()? {
        let checked = f.header().and_then(|h| {
            if h.base_offset == out.next {
                Ok(h)
            } else {
                Err(format!(
                    "batch starts at offset {} where {} was expected",
                    h.base_offset, out.next
                ))
            }
        });
        let header = match (checked, recovery) {
            (Ok(h), _) => h,
            (Err(reason), Recovery::Strict) => return Err(segment.corrupt(f.position, reason)),
            (Err(reason), Recovery::Repair) => {
                warn!(path = %segment.log_path.display(), position = f.position,
                    dropped_bytes = len - f.position, %reason,
                    "repair: cutting off a corrupt batch and everything after it");
                out.tail = Some(TornTail {
                    position: f.position,
                    bytes: len - f.position,
                    repaired_corruption: Some(reason),
                });
                break;
            }
        };
        if last_indexed.is_none_or(|p| f.position >= p + interval)
            && last_indexed != Some(f.position)
        {
            index.push(IndexEntry {
                offset: header.base_offset,
                position: f.position,
            });
            last_indexed = Some(f.position);
        }
        out.next = header.next_offset();
        out.max_time = out.max_time.max(header.enqueued_time);
        out.valid_end = f.end;
    }
    if out.tail.is_none() {
        out.tail = cursor.tail().cloned();
    }
    out.index = index;
    Ok(out)
}
