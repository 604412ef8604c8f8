//! The on-disk frame of one record batch.
//!
//! ```text
//! frame   = len:u32 crc:u32 body              (len = byte length of body; crc = CRC32C of body)
//! body    = version:u8 base_offset:u64 count:u32 enqueued_micros:u64 record{count}
//! record  = key_len:u32 key  header_count:u32 (name_len:u32 name value_len:u32 value){header_count}
//!           has_device_time:u8 device_micros:u64 payload_len:u32 payload
//! ```
//!
//! All integers are little-endian. A record's encoded length equals [`Record::size_bytes`], so a
//! batch's frame is [`FRAME_OVERHEAD`] bytes plus the sum of its records' sizes.

use bytes::{Buf, Bytes};

use crate::headers::Headers;
use crate::offset::{Offset, PartitionId};
use crate::record::{Record, StoredRecord};
use crate::timestamp::Timestamp;

/// Bytes of the frame header (`len` and `crc`).
pub(crate) const HEADER_LEN: usize = 8;
/// Bytes of the body before the first record.
pub(crate) const BODY_HEADER_LEN: usize = 1 + 8 + 4 + 8;
/// Bytes a frame costs besides its records.
pub(crate) const FRAME_OVERHEAD: usize = HEADER_LEN + BODY_HEADER_LEN;
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
    pub(crate) fn next_offset(&self) -> u64 {
        self.base_offset + u64::from(self.count)
    }
}

/// Appends the frame of `records` to `out`.
pub(crate) fn encode(out: &mut Vec<u8>, header: BatchHeader, records: &[Record]) {
    let start = out.len();
    out.extend_from_slice(&[0; HEADER_LEN]);
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
    let body = &out[start + HEADER_LEN..];
    let len = body.len() as u32;
    let crc = crc32c::crc32c(body);
    out[start..start + 4].copy_from_slice(&len.to_le_bytes());
    out[start + 4..start + 8].copy_from_slice(&crc.to_le_bytes());
}

// Lengths were checked against `LogLimits` (at most 2 GiB a batch) before encoding.
fn put_u32(out: &mut Vec<u8>, n: usize) {
    out.extend_from_slice(&(n as u32).to_le_bytes());
}

fn put_bytes(out: &mut Vec<u8>, b: &[u8]) {
    put_u32(out, b.len());
    out.extend_from_slice(b);
}

/// Reads the frame header at the start of `buf`: the body length and its checksum.
pub(crate) fn read_header(buf: &[u8]) -> Option<(usize, u32)> {
    let len = u32::from_le_bytes(buf.get(0..4)?.try_into().ok()?);
    let crc = u32::from_le_bytes(buf.get(4..8)?.try_into().ok()?);
    Some((len as usize, crc))
}

/// Checks a body against its checksum and decodes its fixed part.
pub(crate) fn check_body(body: &[u8], crc: u32) -> Result<BatchHeader, String> {
    if body.len() < BODY_HEADER_LEN {
        return Err(format!("batch body of {} bytes is too short", body.len()));
    }
    let actual = crc32c::crc32c(body);
    if actual != crc {
        return Err(format!(
            "checksum mismatch (stored {crc:#010x}, computed {actual:#010x})"
        ));
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
    Ok(header)
}

/// Decodes the records of a checked body. Payloads share `body`'s memory.
pub(crate) fn decode_records(
    partition: PartitionId,
    header: BatchHeader,
    body: &Bytes,
) -> Result<Vec<StoredRecord>, String> {
    let mut cur = body.slice(BODY_HEADER_LEN..);
    let mut out = Vec::with_capacity(header.count as usize);
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
            Offset(header.base_offset + i),
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

fn take_u32(cur: &mut Bytes, what: &str) -> Result<u32, String> {
    if cur.remaining() < 4 {
        return Err(format!("truncated {what} length"));
    }
    Ok(cur.get_u32_le())
}

fn take_bytes(cur: &mut Bytes, what: &str) -> Result<Bytes, String> {
    let len = take_u32(cur, what)? as usize;
    if cur.remaining() < len {
        return Err(format!("{what} of {len} bytes overruns the batch"));
    }
    Ok(cur.split_to(len))
}

fn take_string(cur: &mut Bytes, what: &str) -> Result<String, String> {
    let raw = take_bytes(cur, what)?;
    String::from_utf8(raw.to_vec()).map_err(|_| format!("{what} is not UTF-8"))
}

#[cfg(test)]
mod tests {
    use super::*;

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
        encode(&mut buf, header, &records);
        let expected: usize =
            FRAME_OVERHEAD + records.iter().map(Record::size_bytes).sum::<usize>();
        assert_eq!(buf.len(), expected);
        let (len, crc) = read_header(&buf).expect("header");
        let body = Bytes::copy_from_slice(&buf[HEADER_LEN..HEADER_LEN + len]);
        assert_eq!(check_body(&body, crc), Ok(header));
        let back = decode_records(PartitionId(3), header, &body).expect("decode");
        assert_eq!(back.len(), 2);
        assert_eq!(back[0].offset, Offset(7));
        assert_eq!(back[1].offset, Offset(8));
        assert_eq!(back[0].record, records[0]);
        assert_eq!(back[1].record, records[1]);
    }

    #[test]
    fn any_flipped_bit_is_caught() {
        let mut buf = Vec::new();
        let header = BatchHeader {
            base_offset: 0,
            count: 1,
            enqueued_time: Timestamp::EPOCH,
        };
        encode(&mut buf, header, &[Record::new("k", "payload")]);
        for i in HEADER_LEN..buf.len() {
            for bit in 0..8 {
                let mut damaged = buf.clone();
                damaged[i] ^= 1 << bit;
                let (len, crc) = read_header(&damaged).expect("header");
                assert!(check_body(&damaged[HEADER_LEN..HEADER_LEN + len], crc).is_err());
            }
        }
    }
}
