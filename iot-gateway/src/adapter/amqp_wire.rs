//! AMQP 1.0 written straight into a buffer: values, described sections and frames, for an
//! endpoint's hot path where building fe2o3-amqp's typed values first costs more than the
//! bytes themselves.
//!
//! Why this exists: an Event Hubs event or a telemetry transfer sent through fe2o3-amqp is
//! first built as a `Message` tree (a string and a map entry per property), then serialized
//! into a buffer that starts empty and grows, then wrapped by a `Transfer` serialized the same
//! way (docs/performance.md, the issue-21 sections). Written here, the same bytes come from the
//! record in one pass into a buffer the connection reuses.
//!
//! * [`AmqpEncoder`] — primitive values, descriptors, lists and maps (sizes filled in when a
//!   compound ends).
//! * [`AmqpDecoder`] — values read in place, bounds-checked, so that a reader takes what it
//!   needs from a message and skips the rest.
//! * [`FrameWriter`], [`FrameHeader`] — the 8-byte frame header written and read.
//! * [`TransferFrame`] — a `transfer` frame ([`TransferFields`]): header, performative, payload.
//!
//! The encodings are the ones serde_amqp (fe2o3-amqp's codec) chooses for the same values, so
//! that output can be compared byte for byte with it in tests: the shortest form of each
//! number, `str8`/`sym8`/`vbin8`/`list8`/`map8` while the content is at most 254 bytes (one
//! less than the format allows, as serde_amqp does), the 32-bit forms above.
//!
//! ```
//! use iot_gateway::adapter::{AmqpEncoder, TransferFields, TransferFrame};
//!
//! let mut buf = Vec::new();
//! let fields = TransferFields {
//!     handle: 1,
//!     delivery_id: Some(7),
//!     delivery_tag: Some(&7u32.to_be_bytes()),
//!     message_format: Some(0),
//!     settled: Some(true),
//!     more: false,
//!     batchable: false,
//! };
//! let frame = TransferFrame::begin(&mut buf, 0, &fields)?;
//! let mut message = AmqpEncoder::new(&mut buf);
//! message.descriptor(0x75); // a data section
//! message.binary(b"hi");
//! frame.end(&mut buf)?;
//! // size, data offset 2, type AMQP, channel 0, then the `transfer` performative.
//! assert_eq!(&buf[..4], &(buf.len() as u32).to_be_bytes());
//! assert_eq!(&buf[4..11], &[2, 0, 0, 0, 0x00, 0x53, 0x14]);
//! assert!(buf.ends_with(&[0x00, 0x53, 0x75, 0xa0, 2, b'h', b'i']));
//! # Ok::<(), iot_gateway::adapter::AmqpWireError>(())
//! ```

mod decoder;
mod encoder;
mod frame;
mod transfer;

pub use decoder::{AmqpDecoder, CompoundHeader};
pub use encoder::{AmqpEncoder, Compound};
pub use frame::{AMQP_FRAME, FRAME_HEADER, FrameHeader, FrameWriter, SASL_FRAME};
pub use transfer::{TRANSFER_CODE, TransferFields, TransferFrame};

/// Why a frame could not be written.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum AmqpWireError {
    /// A frame or compound value would be larger than its 32-bit size field can say.
    #[error("an AMQP frame or value of {0} bytes is over 4 GiB")]
    TooLarge(usize),
    /// Bytes that are not the value or frame asked for, or that end inside it.
    #[error("malformed AMQP encoding at byte {at}")]
    Malformed {
        /// Where the value (or frame) that could not be read starts.
        at: usize,
    },
}

#[cfg(test)]
mod tests;
