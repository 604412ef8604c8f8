//! AMQP 1.0 values read in place from a byte slice, without building typed values: a reader
//! takes what it needs from a message (an annotation, the body) and skips the rest.

use super::AmqpWireError;
use crate::adapter::amqp_encoding::{DEFAULT_MAX_DEPTH, amqp_value_end};

/// Reads values one after another from a slice. Every read checks its bounds: on bytes that
/// are not what the caller asked for, or that end too soon, it returns
/// [`AmqpWireError::Malformed`] and never panics.
#[derive(Clone, Debug)]
pub struct AmqpDecoder<'a> {
    bytes: &'a [u8],
    pos: usize,
}

/// A list or map being read: how many items it has, and where it ends.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CompoundHeader {
    /// Items (a map's keys and values both count).
    pub count: u32,
    /// The offset just past its last item.
    pub end: usize,
}

impl<'a> AmqpDecoder<'a> {
    /// Reads `bytes` from the start.
    pub fn new(bytes: &'a [u8]) -> Self {
        AmqpDecoder { bytes, pos: 0 }
    }

    /// Where the next value starts.
    pub fn position(&self) -> usize {
        self.pos
    }

    /// Whether every byte has been read.
    pub fn is_done(&self) -> bool {
        self.pos >= self.bytes.len()
    }

    /// The bytes not read yet.
    pub fn rest(&self) -> &'a [u8] {
        self.bytes.get(self.pos..).unwrap_or_default()
    }

    fn malformed(&self) -> AmqpWireError {
        AmqpWireError::Malformed { at: self.pos }
    }

    fn take(&mut self, n: usize) -> Result<&'a [u8], AmqpWireError> {
        let end = self.pos.checked_add(n).ok_or_else(|| self.malformed())?;
        let bytes = self
            .bytes
            .get(self.pos..end)
            .ok_or_else(|| self.malformed())?;
        self.pos = end;
        Ok(bytes)
    }

    fn code(&mut self) -> Result<u8, AmqpWireError> {
        Ok(self.take(1)?[0])
    }

    fn be<const N: usize>(&mut self) -> Result<[u8; N], AmqpWireError> {
        let mut out = [0; N];
        out.copy_from_slice(self.take(N)?);
        Ok(out)
    }

    /// The next value's format code, without reading it.
    pub fn peek_code(&self) -> Option<u8> {
        self.bytes.get(self.pos).copied()
    }

    /// Reads a `null` if one is next; says whether it was.
    pub fn null(&mut self) -> bool {
        if self.peek_code() == Some(0x40) {
            self.pos += 1;
            true
        } else {
            false
        }
    }

    /// A descriptor with a numeric code (`0x00` then a `ulong`).
    pub fn descriptor(&mut self) -> Result<u64, AmqpWireError> {
        let at = self.pos;
        if self.code()? != 0x00 {
            self.pos = at;
            return Err(self.malformed());
        }
        self.ulong()
    }

    /// A `boolean` (any of its three encodings).
    pub fn boolean(&mut self) -> Result<bool, AmqpWireError> {
        let at = self.pos;
        match self.code()? {
            0x41 => Ok(true),
            0x42 => Ok(false),
            0x56 => match self.code()? {
                0 => Ok(false),
                1 => Ok(true),
                _ => Err(AmqpWireError::Malformed { at }),
            },
            _ => Err(AmqpWireError::Malformed { at }),
        }
    }

    /// A `uint` (or a smaller unsigned type, which widens without loss).
    pub fn uint(&mut self) -> Result<u32, AmqpWireError> {
        let at = self.pos;
        match self.code()? {
            0x43 => Ok(0),
            0x52 | 0x50 => Ok(u32::from(self.code()?)),
            0x60 => Ok(u32::from(u16::from_be_bytes(self.be()?))),
            0x70 => Ok(u32::from_be_bytes(self.be()?)),
            _ => Err(AmqpWireError::Malformed { at }),
        }
    }

    /// A `ulong` (or a smaller unsigned type).
    pub fn ulong(&mut self) -> Result<u64, AmqpWireError> {
        let at = self.pos;
        match self.code()? {
            0x44 => Ok(0),
            0x53 => Ok(u64::from(self.code()?)),
            0x80 => Ok(u64::from_be_bytes(self.be()?)),
            _ => {
                self.pos = at;
                self.uint().map(u64::from)
            }
        }
    }

    /// A `long` (or a smaller signed type).
    pub fn long(&mut self) -> Result<i64, AmqpWireError> {
        let at = self.pos;
        match self.code()? {
            0x55 | 0x54 | 0x51 => Ok(i64::from(self.code()? as i8)),
            0x61 => Ok(i64::from(i16::from_be_bytes(self.be()?))),
            0x71 => Ok(i64::from(i32::from_be_bytes(self.be()?))),
            0x81 => Ok(i64::from_be_bytes(self.be()?)),
            _ => Err(AmqpWireError::Malformed { at }),
        }
    }

    /// A `timestamp`, in Unix milliseconds.
    pub fn timestamp(&mut self) -> Result<i64, AmqpWireError> {
        let at = self.pos;
        match self.code()? {
            0x83 => Ok(i64::from_be_bytes(self.be()?)),
            _ => Err(AmqpWireError::Malformed { at }),
        }
    }

    fn variable(&mut self, short: u8, long: u8) -> Result<&'a [u8], AmqpWireError> {
        let at = self.pos;
        let code = self.code()?;
        let len = if code == short {
            usize::from(self.code()?)
        } else if code == long {
            u32::from_be_bytes(self.be()?) as usize
        } else {
            return Err(AmqpWireError::Malformed { at });
        };
        self.take(len).map_err(|_| AmqpWireError::Malformed { at })
    }

    /// A `string`.
    pub fn string(&mut self) -> Result<&'a str, AmqpWireError> {
        let at = self.pos;
        std::str::from_utf8(self.variable(0xa1, 0xb1)?).map_err(|_| AmqpWireError::Malformed { at })
    }

    /// A `symbol`.
    pub fn symbol(&mut self) -> Result<&'a str, AmqpWireError> {
        let at = self.pos;
        std::str::from_utf8(self.variable(0xa3, 0xb3)?).map_err(|_| AmqpWireError::Malformed { at })
    }

    /// A `binary`.
    pub fn binary(&mut self) -> Result<&'a [u8], AmqpWireError> {
        self.variable(0xa0, 0xb0)
    }

    fn compound(&mut self, short: u8, long: u8) -> Result<CompoundHeader, AmqpWireError> {
        let at = self.pos;
        let code = self.code()?;
        let (size, count, width) = if code == short {
            let [size, count] = self.be::<2>()?;
            (usize::from(size), u32::from(count), 1)
        } else if code == long {
            let size = u32::from_be_bytes(self.be()?) as usize;
            let count = u32::from_be_bytes(self.be()?);
            (size, count, 4)
        } else {
            return Err(AmqpWireError::Malformed { at });
        };
        // The size counts the count field and the items.
        let end = (self.pos - width)
            .checked_add(size)
            .filter(|end| *end <= self.bytes.len() && size >= width)
            .ok_or(AmqpWireError::Malformed { at })?;
        Ok(CompoundHeader { count, end })
    }

    /// A list's header (`list0`, `list8` or `list32`); its items follow.
    pub fn list(&mut self) -> Result<CompoundHeader, AmqpWireError> {
        if self.peek_code() == Some(0x45) {
            self.pos += 1;
            return Ok(CompoundHeader {
                count: 0,
                end: self.pos,
            });
        }
        self.compound(0xc0, 0xd0)
    }

    /// A map's header (`map8` or `map32`); its keys and values follow, alternately.
    pub fn map(&mut self) -> Result<CompoundHeader, AmqpWireError> {
        self.compound(0xc1, 0xd1)
    }

    /// Skips one value of any type, checking its encoding.
    pub fn skip(&mut self) -> Result<(), AmqpWireError> {
        let at = self.pos;
        let len = amqp_value_end(self.rest(), DEFAULT_MAX_DEPTH)
            .map_err(|_| AmqpWireError::Malformed { at })?;
        self.pos += len;
        Ok(())
    }

    /// Moves to `end` (the end of a compound whose remaining items are not wanted).
    pub fn skip_to(&mut self, end: usize) -> Result<(), AmqpWireError> {
        if end < self.pos || end > self.bytes.len() {
            return Err(self.malformed());
        }
        self.pos = end;
        Ok(())
    }
}
