//! The body of one record batch, carried in a storage-kit frame
//! ([`crate::storage::frame`]: `len:u32 crc:u32 hcrc:u32 body`).
//!
//! ```text
//! body    = version:u8 base_offset:u64 count:u32 enqueued_micros:u64 record{count}
//! record  = key_len:u32 key  header_count:u32 (name_len:u32 name value_len:u32 value){header_count}
//!           has_device_time:u8 device_micros:u64 payload_len:u32 payload
//! ```
//!
//! All integers are little-endian. A record's encoded length equals [`Record::size_bytes`], so a
//! batch's frame is [`FRAME_OVERHEAD`] bytes plus the sum of its records' sizes.
//!
//! The frame's checksums only say the bytes are what some writer wrote; the decoders here still
//! trust nothing read from a body: every count is checked against the bytes that remain before
//! anything is allocated by it.

use bytes::{Buf, Bytes};

use crate::error::{Error, Result};
use crate::headers::Headers;
use crate::offset::{Offset, PartitionId};
use crate::record::{Record, StoredRecord};
use crate::storage::frame as kit;
use crate::timestamp::Timestamp;

/// Bytes of the body before the first record.
pub(crate) const BODY_HEADER_LEN: usize = 1 + 8 + 4 + 8;
/// Bytes a frame costs besides its records: the kit's frame header and the batch header.
pub(crate) const FRAME_OVERHEAD: usize = kit::HEADER_LEN + BODY_HEADER_LEN;
/// The fewest bytes a record takes (empty key and payload, no headers): what bounds how many
/// records a body of a given length can hold.
pub(crate) const MIN_RECORD_LEN: usize = 4 + 4 + 1 + 8 + 4;
/// The largest body a writer produces: a batch is at most 2 GiB (`LogLimits::validate`). A frame
/// claiming more is corrupt whatever the configured limits are now, so that lowering a limit never
/// makes batches written under a higher one unreadable.
pub(crate) const MAX_BODY_LEN: usize = (u32::MAX as usize / 2) + BODY_HEADER_LEN;
/// The body format written by this version.
const VERSION: u8 = 1;

/// The fixed part of a batch, readable without decoding its records.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct BatchHeader {
    pub(crate) base_offset: u64,
    pub(crate) count: u32,
    pub(crate) enqueued_time: Timestamp,
}

impl BatchHeader {
    /// The offset after the batch's last record. [`decode_header`] refused headers for which this
    /// overflows.
    pub(crate) fn next_offset(&self) -> u64 {
        self.base_offset.saturating_add(u64::from(self.count))
    }
}

/// Appends the frame of `records` to `out`, encoding the body in place (no copy).
pub(crate) fn encode(out: &mut Vec<u8>, header: BatchHeader, records: &[Record]) -> Result<()> {
    let start = kit::begin(out);
    out.push(VERSION);
    out.extend_from_slice(&header.base_offset.to_le_bytes());
    out.extend_from_slice(&header.count.to_le_bytes());
    out.extend_from_slice(&header.enqueued_time.as_unix_micros().to_le_bytes());
    for r in records {
        put_bytes(out, r.key.as_bytes());
        put_u32(out, r.headers.len());
        for (name, value) in r.headers.iter() {
            put_bytes(out, name.as_bytes());
            put_bytes(out, value.as_bytes());
        }
        out.push(u8::from(r.device_time.is_some()));
        let device = r.device_time.map_or(0, Timestamp::as_unix_micros);
        out.extend_from_slice(&device.to_le_bytes());
        put_bytes(out, &r.payload);
    }
    kit::finish(out, start).map_err(Error::from)
}

// Lengths were checked against `LogLimits` (at most 2 GiB a batch) before encoding.
fn put_u32(out: &mut Vec<u8>, n: usize) {
    out.extend_from_slice(&(n as u32).to_le_bytes());
}

fn put_bytes(out: &mut Vec<u8>, b: &[u8]) {
    put_u32(out, b.len());
    out.extend_from_slice(b);
}

/// Decodes the fixed part of a body whose frame passed its checks, and checks that the body can
/// hold the records it claims.
pub(crate) fn decode_header(body: &[u8]) -> std::result::Result<BatchHeader, String> {
    if body.len() < BODY_HEADER_LEN {
        return Err(format!("batch body of {} bytes is too short", body.len()));
    }
    let mut b = body;
    let version = b.get_u8();
    if version != VERSION {
        return Err(format!("unknown batch format version {version}"));
    }
    let header = BatchHeader {
        base_offset: b.get_u64_le(),
        count: b.get_u32_le(),
        enqueued_time: Timestamp::from_unix_micros(b.get_u64_le()),
    };
    if header.count == 0 {
        return Err("batch holds no records".into());
    }
    let room = (body.len() - BODY_HEADER_LEN) / MIN_RECORD_LEN;
    if header.count as usize > room {
        return Err(format!(
            "batch claims {} records, but its {} bytes hold at most {room}",
            header.count,
            body.len()
        ));
    }
    if header
        .base_offset
        .checked_add(u64::from(header.count))
        .is_none()
    {
        return Err(format!(
            "batch at offset {} of {} records overflows the offset range",
            header.base_offset, header.count
        ));
    }
    Ok(header)
}

/// Decodes the records of a body that [`decode_header`] accepted. Payloads share `body`'s memory.
pub(crate) fn decode_records(
    partition: PartitionId,
    header: BatchHeader,
    body: &Bytes,
) -> std::result::Result<Vec<StoredRecord>, String> {
    let mut cur = body.slice(BODY_HEADER_LEN.min(body.len())..);
    // Never trust the count for an allocation: a body of n bytes holds at most n / MIN_RECORD_LEN
    // records, whatever its header says.
    let room = cur.remaining() / MIN_RECORD_LEN;
    let mut out = Vec::with_capacity((header.count as usize).min(room));
    for i in 0..u64::from(header.count) {
        let key = take_string(&mut cur, "key")?;
        let header_count = take_u32(&mut cur, "header count")?;
        let mut headers = Headers::new();
        for _ in 0..header_count {
            let name = take_string(&mut cur, "header name")?;
            let value = take_string(&mut cur, "header value")?;
            headers.insert(name, value);
        }
        if cur.remaining() < 9 {
            return Err("truncated device time".into());
        }
        let has_device_time = cur.get_u8();
        let device_micros = cur.get_u64_le();
        let payload = take_bytes(&mut cur, "payload")?;
        let mut record = Record::new(key, payload).with_headers(headers);
        if has_device_time != 0 {
            record = record.with_device_time(Timestamp::from_unix_micros(device_micros));
        }
        out.push(StoredRecord::new(
            partition,
            Offset(header.base_offset.saturating_add(i)),
            header.enqueued_time,
            record,
        ));
    }
    if cur.has_remaining() {
        return Err(format!(
            "{} stray bytes after the last record",
            cur.remaining()
        ));
    }
    Ok(out)
}

fn take_u32(cur: &mut Bytes, what: &str) -> std::result::Result<u32, String> {
    if cur.remaining() < 4 {
        return Err(format!("truncated {what} length"));
    }
    Ok(cur.get_u32_le())
}

fn take_bytes(cur: &mut Bytes, what: &str) -> std::result::Result<Bytes, String> {
    let len = take_u32(cur, what)? as usize;
    if cur.remaining() < len {
        return Err(format!("{what} of {len} bytes overruns the batch"));
    }
    Ok(cur.split_to(len))
}

fn take_string(cur: &mut Bytes, what: &str) -> std::result::Result<String, String> {
    let raw = take_bytes(cur, what)?;
    String::from_utf8(raw.to_vec()).map_err(|_| format!("{what} is not UTF-8"))
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;
    use crate::storage::frame::FrameReader;

    fn one_body(buf: &[u8]) -> Bytes {
        let mut reader = FrameReader::new(Path::new("seg"), buf, 0, MAX_BODY_LEN);
        let frame = reader.next_frame().expect("intact").expect("a frame");
        Bytes::copy_from_slice(frame.body)
    }

    #[test]
    fn frame_round_trips_and_matches_the_size_accounting() {
        let records = vec![
            Record::new("dev-1", "hello")
                .with_header("subject", "temp")
                .with_device_time(Timestamp::from_unix_micros(42)),
            Record::new("", Bytes::new()),
        ];
        let header = BatchHeader {
            base_offset: 7,
            count: 2,
            enqueued_time: Timestamp::from_unix_micros(99),
        };
        let mut buf = Vec::new();
        encode(&mut buf, header, &records).expect("encode");
        let expected: usize =
            FRAME_OVERHEAD + records.iter().map(Record::size_bytes).sum::<usize>();
        assert_eq!(buf.len(), expected);
        assert_eq!(Record::new("", Bytes::new()).size_bytes(), MIN_RECORD_LEN);
        let body = one_body(&buf);
        assert_eq!(decode_header(&body), Ok(header));
        let back = decode_records(PartitionId(3), header, &body).expect("decode");
        assert_eq!(back.len(), 2);
        assert_eq!(back[0].offset, Offset(7));
        assert_eq!(back[1].offset, Offset(8));
        assert_eq!(back[0].record, records[0]);
        assert_eq!(back[1].record, records[1]);
    }

    /// A body with a valid checksum whose header claims more records than its bytes can hold is
    /// refused before anything is allocated by the count, and the record decoder bounds its
    /// allocation by the bytes even when handed such a header.
    #[test]
    fn a_count_larger_than_the_body_can_hold_is_refused_without_allocating_by_it() {
        let header = BatchHeader {
            base_offset: 0,
            count: 1,
            enqueued_time: Timestamp::EPOCH,
        };
        let mut buf = Vec::new();
        encode(&mut buf, header, &[Record::new("", Bytes::new())]).expect("encode");
        let mut body = one_body(&buf).to_vec();
        body[9..13].copy_from_slice(&u32::MAX.to_le_bytes());
        let err = decode_header(&body).expect_err("must refuse");
        assert!(err.contains("at most 1"), "{err}");
        let lying = BatchHeader {
            count: u32::MAX,
            ..header
        };
        let err = decode_records(PartitionId(0), lying, &Bytes::from(body))
            .expect_err("runs out of bytes");
        assert!(err.contains("truncated"), "{err}");
    }

    #[test]
    fn an_offset_overflow_is_refused() {
        let header = BatchHeader {
            base_offset: u64::MAX,
            count: 1,
            enqueued_time: Timestamp::EPOCH,
        };
        let mut buf = Vec::new();
        encode(&mut buf, header, &[Record::new("k", "v")]).expect("encode");
        assert!(decode_header(&one_body(&buf)).is_err());
    }
}
