//! The encoding of one record as the payload of one JetStream message.
//!
//! NATS headers cannot carry the contract's headers faithfully (their order across names is not
//! kept, and values may not hold line breaks), so the whole record goes in the payload:
//!
//! ```text
//! version:u8 enqueued_micros:u64 size_before:u64
//! key_len:u32 key header_count:u32 (name_len:u32 name value_len:u32 value)*
//! has_device_time:u8 device_micros:u64 payload...
//! ```
//!
//! Little-endian. `size_before` is the sum of `Record::size_bytes` of every earlier record of the
//! partition, so that byte-based retention finds its cut with a binary search instead of a scan.

use bytes::{BufMut, Bytes, BytesMut};
use iot_core::{Headers, Record, Timestamp};

const VERSION: u8 = 1;

/// Bytes this encoding adds to a record beyond `Record::size_bytes` at most.
pub(crate) const OVERHEAD: usize = 1 + 8 + 8 + 1 + 8;

/// A stored message that does not decode.
#[derive(Debug, thiserror::Error)]
#[error("undecodable record in stream message: {0}")]
pub struct DecodeError(&'static str);

/// A record with what the log stored beside it.
#[derive(Debug)]
pub(crate) struct Decoded {
    pub(crate) enqueued_time: Timestamp,
    pub(crate) size_before: u64,
    pub(crate) record: Record,
}

/// The exact length of `record`'s encoding.
pub(crate) fn encoded_len(record: &Record) -> usize {
    let headers: usize = record
        .headers
        .iter()
        .map(|(name, value)| 8 + name.len() + value.len())
        .sum();
    1 + 8 + 8 + 4 + record.key.len() + 4 + headers + 1 + 8 + record.payload.len()
}

/// Encodes a record into a buffer of its own (see [`encode_into`]).
#[cfg(test)]
pub(crate) fn encode(record: &Record, enqueued_time: Timestamp, size_before: u64) -> Bytes {
    let mut buf = BytesMut::new();
    encode_into(&mut buf, record, enqueued_time, size_before)
}

/// Encodes a record into `out` (empty: each call splits off all it holds) and splits it off. The
/// returned bytes share `out`'s allocation, so a batch reserved once up front (the sum of
/// [`encoded_len`]) costs one allocation, not one per record.
pub(crate) fn encode_into(
    out: &mut BytesMut,
    record: &Record,
    enqueued_time: Timestamp,
    size_before: u64,
) -> Bytes {
    out.reserve(encoded_len(record));
    out.put_u8(VERSION);
    out.put_u64_le(enqueued_time.as_unix_micros());
    out.put_u64_le(size_before);
    put_str(out, &record.key);
    out.put_u32_le(record.headers.len() as u32);
    for (name, value) in record.headers.iter() {
        put_str(out, name);
        put_str(out, value);
    }
    match record.device_time {
        Some(t) => {
            out.put_u8(1);
            out.put_u64_le(t.as_unix_micros());
        }
        None => {
            out.put_u8(0);
            out.put_u64_le(0);
        }
    }
    out.put_slice(&record.payload);
    out.split().freeze()
}

fn put_str(out: &mut BytesMut, s: &str) {
    out.put_u32_le(s.len() as u32);
    out.put_slice(s.as_bytes());
}

/// Decodes a payload; the record's payload is a slice of `bytes` (no copy).
pub(crate) fn decode(bytes: &Bytes) -> Result<Decoded, DecodeError> {
    let mut r = Reader { bytes, at: 0 };
    if r.u8()? != VERSION {
        return Err(DecodeError("unknown version"));
    }
    let enqueued_time = Timestamp::from_unix_micros(r.u64()?);
    let size_before = r.u64()?;
    let key = r.string()?;
    let count = r.u32()?;
    // Each header takes at least 8 bytes: no allocation is sized by a count we have not seen.
    if count as usize > bytes.len().saturating_sub(r.at) / 8 {
        return Err(DecodeError("header count beyond the message"));
    }
    let mut headers = Vec::with_capacity(count as usize);
    for _ in 0..count {
        let name = r.string()?;
        let value = r.string()?;
        headers.push((name, value));
    }
    let has_time = r.u8()?;
    let device_micros = r.u64()?;
    let payload = bytes.slice(r.at..);
    let mut record =
        Record::new(key, payload).with_headers(headers.into_iter().collect::<Headers>());
    match has_time {
        0 => {}
        1 => record = record.with_device_time(Timestamp::from_unix_micros(device_micros)),
        _ => return Err(DecodeError("bad device-time flag")),
    }
    Ok(Decoded {
        enqueued_time,
        size_before,
        record,
    })
}

struct Reader<'a> {
    bytes: &'a Bytes,
    at: usize,
}

impl Reader<'_> {
    fn take(&mut self, n: usize) -> Result<&[u8], DecodeError> {
        let end = self
            .at
            .checked_add(n)
            .filter(|&end| end <= self.bytes.len())
            .ok_or(DecodeError("truncated"))?;
        let out = &self.bytes[self.at..end];
        self.at = end;
        Ok(out)
    }

    fn u8(&mut self) -> Result<u8, DecodeError> {
        Ok(self.take(1)?[0])
    }

    fn u32(&mut self) -> Result<u32, DecodeError> {
        let mut b = [0; 4];
        b.copy_from_slice(self.take(4)?);
        Ok(u32::from_le_bytes(b))
    }

    fn u64(&mut self) -> Result<u64, DecodeError> {
        let mut b = [0; 8];
        b.copy_from_slice(self.take(8)?);
        Ok(u64::from_le_bytes(b))
    }

    fn string(&mut self) -> Result<String, DecodeError> {
        let len = self.u32()? as usize;
        let raw = self.take(len)?;
        String::from_utf8(raw.to_vec()).map_err(|_| DecodeError("a string is not UTF-8"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_come_back_whole() {
        let record = Record::new("dev-1", "payload")
            .with_header("b", "line\r\nbreak")
            .with_header("a", "")
            .with_device_time(Timestamp::from_unix_millis(5));
        let bytes = encode(&record, Timestamp::from_unix_micros(7), 99);
        let d = decode(&bytes).unwrap();
        assert_eq!(d.record, record);
        assert_eq!(d.enqueued_time, Timestamp::from_unix_micros(7));
        assert_eq!(d.size_before, 99);
        assert!(bytes.len() <= record.size_bytes() + OVERHEAD);
        assert_eq!(bytes.len(), encoded_len(&record));
        let bare = Record::new("", Bytes::new());
        assert_eq!(
            decode(&encode(&bare, Timestamp::EPOCH, 0)).unwrap().record,
            bare
        );
    }

    #[test]
    fn records_encoded_into_one_buffer_stay_apart() {
        let a = Record::new("a", "first").with_header("h", "1");
        let b = Record::new("bb", "second").with_device_time(Timestamp::from_unix_millis(9));
        let mut buf = BytesMut::with_capacity(encoded_len(&a) + encoded_len(&b));
        let ea = encode_into(&mut buf, &a, Timestamp::from_unix_micros(1), 0);
        let eb = encode_into(&mut buf, &b, Timestamp::from_unix_micros(2), 40);
        assert_eq!(ea, encode(&a, Timestamp::from_unix_micros(1), 0));
        assert_eq!(decode(&ea).unwrap().record, a);
        let db = decode(&eb).unwrap();
        assert_eq!((db.record, db.size_before), (b, 40));
        // A buffer too small for the next record grows instead of failing.
        let c = Record::new("c", vec![7u8; 1000]);
        assert_eq!(
            decode(&encode_into(&mut buf, &c, Timestamp::EPOCH, 0))
                .unwrap()
                .record,
            c
        );
    }

    #[test]
    fn every_truncation_and_bad_byte_is_an_error_not_a_panic() {
        let record = Record::new("k", "v").with_header("h", "x");
        let bytes = encode(&record, Timestamp::EPOCH, 0);
        for cut in 0..bytes.len() - 1 {
            // Cutting inside the payload still decodes (the payload is the rest); anything
            // before it must fail cleanly.
            let _ = decode(&bytes.slice(..cut));
        }
        for i in 0..bytes.len() {
            for v in [0u8, 1, 0x7f, 0xff] {
                let mut damaged = bytes.to_vec();
                damaged[i] = v;
                let _ = decode(&Bytes::from(damaged));
            }
        }
        assert!(decode(&Bytes::from_static(&[2])).is_err());
        assert!(decode(&Bytes::new()).is_err());
    }
}
