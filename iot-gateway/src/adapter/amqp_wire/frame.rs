//! The 8-byte frame header (AMQP 1.0 part 2, 2.3): written around a body, and read back.

use super::AmqpWireError;

/// The frame header's data offset in 4-byte words: the 8-byte header, no extension.
const DOFF: u8 = 2;
/// The header's length.
pub const FRAME_HEADER: usize = 8;

/// Frame type 0: an AMQP frame.
pub const AMQP_FRAME: u8 = 0;
/// Frame type 1: a SASL frame.
pub const SASL_FRAME: u8 = 1;

/// A frame being written: [`begin`](Self::begin) writes the header, the caller appends the
/// body (a performative, then a payload), and [`end`](Self::end) fills in the frame's size.
#[derive(Debug)]
#[must_use = "a frame is finished with end"]
pub struct FrameWriter {
    start: usize,
}

impl FrameWriter {
    /// Begins a frame of `frame_type` ([`AMQP_FRAME`] or [`SASL_FRAME`]) on `channel`.
    pub fn begin(buf: &mut Vec<u8>, frame_type: u8, channel: u16) -> Self {
        let start = buf.len();
        buf.extend_from_slice(&[0, 0, 0, 0, DOFF, frame_type]);
        buf.extend_from_slice(&channel.to_be_bytes());
        FrameWriter { start }
    }

    /// Ends the frame: everything appended to `buf` since [`begin`](Self::begin) is its body.
    /// A frame over 4 GiB is an error (the caller discards the buffer's tail).
    pub fn end(self, buf: &mut [u8]) -> Result<(), AmqpWireError> {
        let size = buf.len() - self.start;
        let size32 = u32::try_from(size).map_err(|_| AmqpWireError::TooLarge(size))?;
        buf[self.start..self.start + 4].copy_from_slice(&size32.to_be_bytes());
        Ok(())
    }
}

/// A frame's header, read from the start of a buffer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FrameHeader {
    /// The whole frame's size, header included.
    pub size: u32,
    /// Where the body starts, in bytes from the frame's start.
    pub body_offset: usize,
    /// [`AMQP_FRAME`] or [`SASL_FRAME`] (others are refused).
    pub frame_type: u8,
    /// The channel (the session's, on AMQP frames).
    pub channel: u16,
}

impl FrameHeader {
    /// Reads the header at the start of `bytes`: `Ok(None)` until 8 bytes are there; an error
    /// for a size below the header or above `max_frame_size`, a data offset outside the frame,
    /// or an unknown frame type. The body is complete once `bytes` holds `size` bytes.
    pub fn parse(bytes: &[u8], max_frame_size: u32) -> Result<Option<Self>, AmqpWireError> {
        let Some(header) = bytes.get(..FRAME_HEADER) else {
            return Ok(None);
        };
        let size = u32::from_be_bytes([header[0], header[1], header[2], header[3]]);
        let body_offset = usize::from(header[4]) * 4;
        let frame_type = header[5];
        let bad = AmqpWireError::Malformed { at: 0 };
        if (size as usize) < FRAME_HEADER || size > max_frame_size {
            return Err(bad);
        }
        if body_offset < FRAME_HEADER || body_offset > size as usize {
            return Err(bad);
        }
        if frame_type != AMQP_FRAME && frame_type != SASL_FRAME {
            return Err(bad);
        }
        Ok(Some(FrameHeader {
            size,
            body_offset,
            frame_type,
            channel: u16::from_be_bytes([header[6], header[7]]),
        }))
    }
}
