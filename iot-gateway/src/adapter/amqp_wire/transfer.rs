//! A `transfer` frame (AMQP 1.0 part 2, 2.7.5) written around a payload the caller appends.

use super::frame::{AMQP_FRAME, FrameWriter};
use super::{AmqpEncoder, AmqpWireError};

/// The `transfer` performative's descriptor code (`amqp:transfer:list`).
pub const TRANSFER_CODE: u64 = 0x14;

/// The fields of a `transfer` an endpoint sets on its own deliveries. The others
/// (`rcv-settle-mode`, `state`, `resume`, `aborted`) are left at the spec's defaults.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TransferFields<'t> {
    /// The link's handle on this session.
    pub handle: u32,
    /// The delivery's id; set on the first frame of a delivery.
    pub delivery_id: Option<u32>,
    /// The delivery's tag; set on the first frame of a delivery.
    pub delivery_tag: Option<&'t [u8]>,
    /// The message format; set on the first frame of a delivery.
    pub message_format: Option<u32>,
    /// Whether the delivery is settled when sent.
    pub settled: Option<bool>,
    /// Whether more frames of this delivery follow.
    pub more: bool,
    /// Whether the receiver may wait before settling (`batchable`, the last field).
    ///
    /// Set it to have every field written: some clients read the performative's fields by
    /// position and fail on the shorter list AMQP otherwise allows (pyamqp, under Microsoft's
    /// `azure-eventhub`, does).
    pub batchable: bool,
}

/// A `transfer` frame being written: [`begin`](Self::begin) writes the header and the
/// performative, the caller appends the payload (the message's bytes), and
/// [`end`](Self::end) fills in the frame's size.
#[derive(Debug)]
#[must_use = "a frame is finished with end"]
pub struct TransferFrame {
    frame: FrameWriter,
}

impl TransferFrame {
    /// Begins the frame on `channel` with the performative `fields`, the way serde_amqp
    /// encodes the same `Transfer`: fields after the last one set are left out, unset ones
    /// before it are `null`.
    pub fn begin(
        buf: &mut Vec<u8>,
        channel: u16,
        fields: &TransferFields<'_>,
    ) -> Result<Self, AmqpWireError> {
        let frame = FrameWriter::begin(buf, AMQP_FRAME, channel);
        let mut e = AmqpEncoder::new(buf);
        e.descriptor(TRANSFER_CODE);
        let list = e.begin_compound();
        e.uint(fields.handle);
        let last = if fields.batchable {
            11
        } else if fields.more {
            6
        } else if fields.settled.is_some() {
            5
        } else if fields.message_format.is_some() {
            4
        } else if fields.delivery_tag.is_some() {
            3
        } else if fields.delivery_id.is_some() {
            2
        } else {
            1
        };
        if last >= 2 {
            match fields.delivery_id {
                Some(id) => e.uint(id),
                None => e.null(),
            }
        }
        if last >= 3 {
            match fields.delivery_tag {
                Some(tag) => e.binary(tag)?,
                None => e.null(),
            }
        }
        if last >= 4 {
            match fields.message_format {
                Some(format) => e.uint(format),
                None => e.null(),
            }
        }
        if last >= 5 {
            match fields.settled {
                Some(settled) => e.boolean(settled),
                None => e.null(),
            }
        }
        if last >= 6 {
            // `more`: false is the default, written as null before later fields.
            if fields.more {
                e.boolean(true)
            } else {
                e.null()
            }
        }
        if last == 11 {
            // `rcv-settle-mode`, `state`, `resume` and `aborted` at their defaults.
            for _ in 7..11 {
                e.null();
            }
            e.boolean(true);
        }
        e.end_list(list, last)?;
        Ok(TransferFrame { frame })
    }

    /// Ends the frame: everything appended to `buf` since [`begin`](Self::begin) is its
    /// payload. A frame over 4 GiB is an error (the caller discards the buffer's tail).
    pub fn end(self, buf: &mut [u8]) -> Result<(), AmqpWireError> {
        self.frame.end(buf)
    }
}
