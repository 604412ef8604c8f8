//! Snapshots: every record with its slot, then the indexes, written whole and renamed into place.
//!
//! ```text
//! snapshot = frames of the storage kit:
//!   header   = "IOTREG03" next_version:u64 count:u64 unindexed_count:u32 (len:u32 utf-8)*
//!   count ×  record = slot:u32 record (binary encoding of `binary`), in slot order
//!   parts    = the index section (see `crate::index::decode_part`), about 1 MiB each
//!   trailer  = "IOTIDXND" parts:u64   (u64::MAX: the indexes were not saved)
//! ```
//!
//! A snapshot is replaced atomically, so it cannot be torn: damage to its header or records is
//! [`Error::Corrupt`] (under [`Recovery::Repair`] the records before the damage are loaded and
//! the rest dropped, logged). Damage confined to the index section leaves the records usable:
//! the indexes are derived again from them.

use std::io::{self, Write};
use std::ops::Range;
use std::path::Path;

use bytes::Bytes;
use iot_core::storage::frame::{self, FrameReader, Recovery};
use iot_core::storage::{StorageError, fs as sfs};
use tracing::warn;

use super::recovery::on_all_cores;
use super::wal::MAX_FRAME;
use crate::engine::Engine;
use crate::error::{Error, Result};
use crate::index::{Part, decode_part};
use crate::stored::Stored;

/// The format this version writes and reads: each record with its slot, then the indexes, then
/// a trailer. Any other `IOTREG…` tag is refused with [`Error::UnsupportedFormat`].
pub(super) const SNAPSHOT_MAGIC: &[u8; 8] = b"IOTREG03";
/// The body of the last frame of a snapshot is this tag and the number of index parts before
/// it, so that a section missing parts is recognised.
const SECTION_END: &[u8; 8] = b"IOTIDXND";
/// The part count of a trailer when the indexes were not saved (see [`max_slot`]).
const NOT_SAVED: u64 = u64::MAX;

/// The bound on the slots of a snapshot holding `count` records: a record's slot above it is
/// corruption, so that no damaged slot number makes open allocate absurdly. A registry with more
/// free slots than that (after mass deletes) is saved with its records renumbered densely and
/// without its indexes, which open then rebuilds.
fn max_slot(count: u64) -> u64 {
    count + count / 4 + 1024
}

/// Writes `engine` as the snapshot `target` (atomically: temporary file, fsync, rename,
/// directory fsync). Returns the snapshot's size.
pub(super) fn write_snapshot(target: &Path, engine: &Engine) -> Result<u64> {
    let mut header = Vec::with_capacity(64);
    header.extend_from_slice(SNAPSHOT_MAGIC);
    header.extend_from_slice(&engine.next_version().to_le_bytes());
    header.extend_from_slice(&(engine.len() as u64).to_le_bytes());
    let unindexed = engine.unindexed_paths();
    header.extend_from_slice(
        &u32::try_from(unindexed.len())
            .unwrap_or(u32::MAX)
            .to_le_bytes(),
    );
    for path in unindexed {
        header.extend_from_slice(&u32::try_from(path.len()).unwrap_or(u32::MAX).to_le_bytes());
        header.extend_from_slice(path.as_bytes());
    }
    let len = sfs::replace_atomically(target, |out| {
        let mut frame = Vec::with_capacity(1 << 21);
        // Writes the frame whose body `body` appends to the buffer.
        let mut put = |out: &mut dyn Write, body: &dyn Fn(&mut Vec<u8>)| -> io::Result<()> {
            frame.clear();
            let start = frame::begin(&mut frame);
            body(&mut frame);
            frame::finish(&mut frame, start).map_err(io::Error::other)?;
            out.write_all(&frame)
        };
        put(out, &|f| f.extend_from_slice(&header))?;
        // In slot order, each with its slot: the saved indexes refer to records by slot.
        let sparse = engine.slot_count() as u64 > max_slot(engine.len() as u64);
        for (position, (slot, record)) in (0u32..).zip(engine.slotted_records()) {
            let slot = if sparse { position } else { slot };
            put(out, &|f| {
                f.extend_from_slice(&slot.to_le_bytes());
                f.extend_from_slice(record.bytes());
            })?;
        }
        let mut parts = 0u64;
        if sparse {
            parts = NOT_SAVED;
        } else {
            engine.indexes().encode_section(|part| {
                parts += 1;
                put(out, &|f| f.extend_from_slice(part))
            })?;
        }
        put(out, &|f| {
            f.extend_from_slice(SECTION_END);
            f.extend_from_slice(&parts.to_le_bytes());
        })
    })?;
    Ok(len)
}

/// What a snapshot holds: the records in their slots; the decoded index section (`None`: not
/// saved), or why it cannot be used (the records are intact either way, and the indexes can be
/// derived from them); the unindexed paths of the registry that wrote it; the next version it
/// recorded; its size; whether a repair dropped records (the snapshot must then be rewritten).
#[derive(Debug)]
pub(super) struct Loaded {
    pub(super) slots: Vec<Option<Stored>>,
    pub(super) section: std::result::Result<Option<Vec<Part>>, String>,
    pub(super) unindexed: Vec<String>,
    pub(super) next_version: u64,
    pub(super) size: u64,
    pub(super) repaired: bool,
}

/// Reads the snapshot `path`. See the module docs for what counts as corruption.
pub(super) fn load_snapshot(path: &Path, recovery: Recovery) -> Result<Loaded> {
    let file = Bytes::from(
        sfs::read_optional(path)?.ok_or_else(|| StorageError::corrupt(path, 0, "missing"))?,
    );
    let corrupt =
        |position: u64, reason: &str| Error::from(StorageError::corrupt(path, position, reason));
    let mut reader = FrameReader::new(path, &file, 0, MAX_FRAME).with_recovery(recovery);
    let header = match reader.next_frame()? {
        Some(f) => f.body,
        None => return Err(corrupt(0, "missing snapshot header")),
    };
    let Some((magic, rest)) = header.split_first_chunk::<8>() else {
        return Err(corrupt(0, "bad snapshot header"));
    };
    if magic != SNAPSHOT_MAGIC {
        if magic.starts_with(b"IOTREG") {
            // A snapshot of another format, or not a snapshot at all: refused as it is, never
            // rewritten, so that the software that wrote it can still read it.
            return Err(Error::UnsupportedFormat {
                path: path.to_owned(),
                found: String::from_utf8_lossy(magic).into_owned(),
            });
        }
        return Err(corrupt(0, "bad snapshot header"));
    }
    let bad_header = || corrupt(0, "bad snapshot header");
    let (next_version, rest) = rest.split_first_chunk::<8>().ok_or_else(bad_header)?;
    let (count, rest) = rest.split_first_chunk::<8>().ok_or_else(bad_header)?;
    let (next_version, count) = (
        u64::from_le_bytes(*next_version),
        u64::from_le_bytes(*count),
    );
    let unindexed = unindexed_list(rest).ok_or_else(bad_header)?;

    // The records. No allocation is sized by `count`: the frames are collected as they are found.
    let mut frames: Vec<(u64, Range<usize>)> = Vec::new();
    while (frames.len() as u64) < count {
        match reader.next_frame()? {
            Some(f) => frames.push((f.position, f.body_range)),
            None => break,
        }
    }
    let mut section_problem = None;
    let repaired = (frames.len() as u64) < count;
    if repaired {
        let position = reader.valid_end();
        let reason = format!("snapshot holds {} of its {count} records", frames.len());
        if recovery == Recovery::Strict {
            return Err(corrupt(position, &reason));
        }
        warn!(path = %path.display(), position, %reason,
            "repair: loading the records before the damage, dropping the rest");
        section_problem = Some("records lost to a repair".to_owned());
    }
    // The index section: damage there leaves the records usable; it is reported, and the
    // indexes rebuilt.
    let mut section_frames: Vec<(u64, Range<usize>)> = Vec::new();
    while section_problem.is_none() {
        match reader.next_frame() {
            Ok(Some(f)) => section_frames.push((f.position, f.body_range)),
            Ok(None) => {
                if let Some(tail) = reader.torn_tail() {
                    section_problem =
                        Some(format!("index section damaged at byte {}", tail.position));
                }
                break;
            }
            Err(e) => section_problem = Some(e.to_string()),
        }
    }
    let records = on_all_cores(&frames, |position, body| {
        let bytes = file.get(body.clone()).unwrap_or_default();
        let (slot, _) = bytes
            .split_first_chunk::<4>()
            .ok_or_else(|| corrupt(position, "record too short"))?;
        let record = Stored::from_bytes(file.slice(body.start + 4..body.end))
            .map_err(|e| corrupt(position, &format!("bad record: {e}")))?;
        Ok::<_, Error>((u32::from_le_bytes(*slot), record))
    })?;
    // The bound holds `count` to what the file can hold (each record takes a frame).
    let count = count.min(file.len() as u64 / frame::HEADER_LEN as u64);
    let slots = into_slots(records, max_slot(count)).map_err(|reason| corrupt(0, &reason))?;
    let section = match section_problem {
        Some(problem) => Err(problem),
        None => decode_section(&file, &section_frames),
    };
    Ok(Loaded {
        slots,
        section,
        unindexed,
        next_version,
        size: file.len() as u64,
        repaired,
    })
}

/// The unindexed paths of a header: `count:u32 (len:u32 utf-8)*`, nothing after.
fn unindexed_list(mut bytes: &[u8]) -> Option<Vec<String>> {
    let (count, rest) = bytes.split_first_chunk::<4>()?;
    bytes = rest;
    // No capacity from `count`: each path is checked against the bytes as it is read.
    let mut out = Vec::new();
    for _ in 0..u32::from_le_bytes(*count) {
        let (len, rest) = bytes.split_first_chunk::<4>()?;
        let len = u32::from_le_bytes(*len) as usize;
        let text = rest.get(..len)?;
        out.push(std::str::from_utf8(text).ok()?.to_owned());
        bytes = rest.get(len..)?;
    }
    bytes.is_empty().then_some(out)
}

/// Places records (in ascending slot order, as snapshots store them) in their slots.
fn into_slots(
    records: Vec<(u32, Stored)>,
    max_slot: u64,
) -> std::result::Result<Vec<Option<Stored>>, String> {
    if let Some((slot, _)) = records.last()
        && u64::from(*slot) > max_slot
    {
        return Err(format!("record slot {slot} above the bound {max_slot}"));
    }
    // Without free slots (the common case) the records' own buffer is reused.
    if (0u32..).zip(&records).all(|(i, (slot, _))| i == *slot) {
        return Ok(records
            .into_iter()
            .map(|(_, record)| Some(record))
            .collect());
    }
    let len = records.last().map_or(0, |(slot, _)| *slot as usize + 1);
    let mut slots = Vec::with_capacity(len);
    for (slot, record) in records {
        if (slot as usize) < slots.len() {
            return Err(format!("record slots out of order at slot {slot}"));
        }
        slots.resize_with(slot as usize, || None);
        slots.push(Some(record));
    }
    Ok(slots)
}

/// Decodes the index section (its parts on all cores) and checks its trailer.
fn decode_section(
    bytes: &[u8],
    frames: &[(u64, Range<usize>)],
) -> std::result::Result<Option<Vec<Part>>, String> {
    let Some(((_, trailer), parts)) = frames.split_last() else {
        return Err("index section missing".into());
    };
    let trailer = bytes.get(trailer.clone()).unwrap_or_default();
    match trailer.split_first_chunk::<8>() {
        Some((tag, count))
            if tag == SECTION_END
                && parts.is_empty()
                && count == NOT_SAVED.to_le_bytes().as_slice() =>
        {
            return Ok(None);
        }
        Some((tag, count))
            if tag == SECTION_END && count == (parts.len() as u64).to_le_bytes().as_slice() => {}
        _ => return Err("index section incomplete".into()),
    }
    on_all_cores(parts, |position, body| {
        decode_part(bytes.get(body.clone()).unwrap_or_default())
            .map_err(|e| format!("index part at byte {position}: {e}"))
    })
    .map(Some)
}
