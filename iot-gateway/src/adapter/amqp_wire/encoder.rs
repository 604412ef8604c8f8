//! AMQP 1.0 values (part 1 of the spec, "Types") appended to a buffer.

use super::AmqpWireError;

// Format codes (AMQP 1.0 part 1, 1.6).
const DESCRIBED: u8 = 0x00;
const NULL: u8 = 0x40;
const TRUE: u8 = 0x41;
const FALSE: u8 = 0x42;
const UINT0: u8 = 0x43;
const ULONG0: u8 = 0x44;
const LIST0: u8 = 0x45;
const SMALL_UINT: u8 = 0x52;
const SMALL_ULONG: u8 = 0x53;
const SMALL_LONG: u8 = 0x55;
const UINT: u8 = 0x70;
const ULONG: u8 = 0x80;
const LONG: u8 = 0x81;
const TIMESTAMP: u8 = 0x83;
const VBIN8: u8 = 0xa0;
const STR8: u8 = 0xa1;
const SYM8: u8 = 0xa3;
const VBIN32: u8 = 0xb0;
const STR32: u8 = 0xb1;
const SYM32: u8 = 0xb3;
const LIST8: u8 = 0xc0;
const MAP8: u8 = 0xc1;
const LIST32: u8 = 0xd0;
const MAP32: u8 = 0xd1;

/// The longest content written in a one-byte-size form. The format allows 255; serde_amqp
/// switches to the four-byte form at 255 and this encoder does the same, so that its output
/// is byte for byte serde_amqp's.
const SHORT_MAX: usize = 254;
/// What a compound reserves for its header until its size is known: code, size and count
/// of the 32-bit form.
const LONG_HEADER: usize = 9;
/// The short form's header: code, size, count.
const SHORT_HEADER: usize = 3;

/// Appends AMQP values to a buffer.
///
/// Lengths are checked against the 32-bit size fields: a string, binary or compound over
/// 4 GiB is an error, never a wrapped size.
#[derive(Debug)]
pub struct AmqpEncoder<'a> {
    buf: &'a mut Vec<u8>,
}

/// A list or map begun with [`AmqpEncoder::begin_compound`]: where its header goes.
#[derive(Debug)]
#[must_use = "a compound is finished with end_list or end_map"]
pub struct Compound {
    start: usize,
}

impl<'a> AmqpEncoder<'a> {
    /// Appends to `buf`.
    pub fn new(buf: &'a mut Vec<u8>) -> Self {
        AmqpEncoder { buf }
    }

    /// The bytes written so far (the whole buffer).
    pub fn len(&self) -> usize {
        self.buf.len()
    }

    /// Whether the buffer is empty.
    pub fn is_empty(&self) -> bool {
        self.buf.is_empty()
    }

    /// `null`.
    pub fn null(&mut self) {
        self.buf.push(NULL);
    }

    /// A `boolean`.
    pub fn boolean(&mut self, v: bool) {
        self.buf.push(if v { TRUE } else { FALSE });
    }

    /// A `uint` in its shortest form.
    pub fn uint(&mut self, v: u32) {
        match v {
            0 => self.buf.push(UINT0),
            1..=255 => self.buf.extend_from_slice(&[SMALL_UINT, v as u8]),
            _ => {
                self.buf.push(UINT);
                self.buf.extend_from_slice(&v.to_be_bytes());
            }
        }
    }

    /// A `ulong` in its shortest form.
    pub fn ulong(&mut self, v: u64) {
        match v {
            0 => self.buf.push(ULONG0),
            1..=255 => self.buf.extend_from_slice(&[SMALL_ULONG, v as u8]),
            _ => {
                self.buf.push(ULONG);
                self.buf.extend_from_slice(&v.to_be_bytes());
            }
        }
    }

    /// A `long` in its shortest form.
    pub fn long(&mut self, v: i64) {
        match i8::try_from(v) {
            Ok(small) => self.buf.extend_from_slice(&[SMALL_LONG, small as u8]),
            Err(_) => {
                self.buf.push(LONG);
                self.buf.extend_from_slice(&v.to_be_bytes());
            }
        }
    }

    /// A `timestamp`: milliseconds since the Unix epoch.
    pub fn timestamp(&mut self, unix_millis: i64) {
        self.buf.push(TIMESTAMP);
        self.buf.extend_from_slice(&unix_millis.to_be_bytes());
    }

    /// A descriptor with a numeric code; the described value follows.
    pub fn descriptor(&mut self, code: u64) {
        self.buf.push(DESCRIBED);
        self.ulong(code);
    }

    /// A UTF-8 `string`.
    pub fn string(&mut self, s: &str) -> Result<(), AmqpWireError> {
        self.variable(STR8, STR32, s.as_bytes())
    }

    /// A `symbol` (its bytes as given; AMQP symbols are ASCII).
    pub fn symbol(&mut self, s: &str) -> Result<(), AmqpWireError> {
        self.variable(SYM8, SYM32, s.as_bytes())
    }

    /// A `binary`.
    pub fn binary(&mut self, b: &[u8]) -> Result<(), AmqpWireError> {
        self.variable(VBIN8, VBIN32, b)
    }

    fn variable(&mut self, short: u8, long: u8, bytes: &[u8]) -> Result<(), AmqpWireError> {
        let len = bytes.len();
        if len <= SHORT_MAX {
            self.buf.extend_from_slice(&[short, len as u8]);
        } else {
            let len = u32::try_from(len).map_err(|_| AmqpWireError::TooLarge(len))?;
            self.buf.push(long);
            self.buf.extend_from_slice(&len.to_be_bytes());
        }
        self.buf.extend_from_slice(bytes);
        Ok(())
    }

    /// Begins a list or map: its items follow, then [`end_list`](Self::end_list) or
    /// [`end_map`](Self::end_map) writes its header.
    pub fn begin_compound(&mut self) -> Compound {
        let start = self.buf.len();
        self.buf.extend_from_slice(&[0; LONG_HEADER]);
        Compound { start }
    }

    /// Ends a list of `count` items.
    pub fn end_list(&mut self, list: Compound, count: u32) -> Result<(), AmqpWireError> {
        if self.buf.len() == list.start + LONG_HEADER {
            // No items: `list0`, as serde_amqp writes an empty list.
            self.buf.truncate(list.start);
            self.buf.push(LIST0);
            return Ok(());
        }
        self.end_compound(list, LIST8, LIST32, count)
    }

    /// Ends a map of `entries` key-value pairs.
    pub fn end_map(&mut self, map: Compound, entries: u32) -> Result<(), AmqpWireError> {
        let count = entries
            .checked_mul(2)
            .ok_or(AmqpWireError::TooLarge(entries as usize))?;
        self.end_compound(map, MAP8, MAP32, count)
    }

    fn end_compound(
        &mut self,
        c: Compound,
        short: u8,
        long: u8,
        count: u32,
    ) -> Result<(), AmqpWireError> {
        let content = self.buf.len() - c.start - LONG_HEADER;
        if content <= SHORT_MAX && count <= 255 {
            // The short header: move the content up over the 6 bytes not needed.
            let header = [short, content as u8 + 1, count as u8];
            self.buf[c.start..c.start + SHORT_HEADER].copy_from_slice(&header);
            self.buf
                .copy_within(c.start + LONG_HEADER.., c.start + SHORT_HEADER);
            self.buf
                .truncate(self.buf.len() - (LONG_HEADER - SHORT_HEADER));
        } else {
            let size = content
                .checked_add(4)
                .and_then(|s| u32::try_from(s).ok())
                .ok_or(AmqpWireError::TooLarge(content))?;
            self.buf[c.start] = long;
            self.buf[c.start + 1..c.start + 5].copy_from_slice(&size.to_be_bytes());
            self.buf[c.start + 5..c.start + 9].copy_from_slice(&count.to_be_bytes());
        }
        Ok(())
    }
}
