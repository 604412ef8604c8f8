//! Frames read from the socket: each held back until complete, checked by the adapter kit's
//! [`AmqpFrameChecker`] (sizes, encodings, multi-frame messages within limits), then split into
//! its performative (decoded with serde_amqp, fe2o3-amqp's types) and its payload.

use bytes::{Bytes, BytesMut};
use fe2o3_amqp::types::performatives::Performative;
use iot_gateway::adapter::{
    AmqpFrameChecker, AmqpFrameLimits, DEFAULT_MAX_DEPTH, FrameHeader, amqp_value_end,
};
use tokio::io::{AsyncRead, AsyncReadExt};

use super::EngineError;

/// How much one read asks for at least.
const READ_CHUNK: usize = 16 * 1024;

/// One frame's contents.
#[derive(Debug)]
pub(crate) struct RawFrame {
    pub(crate) frame_type: u8,
    pub(crate) channel: u16,
    /// The frame's body (after the header): a performative and a payload, or nothing (a
    /// heartbeat).
    pub(crate) body: Bytes,
}

impl RawFrame {
    /// The body's leading value (the performative or SASL frame) and the bytes after it.
    pub(crate) fn split_body(&self) -> Result<(Bytes, Bytes), EngineError> {
        let end = amqp_value_end(&self.body, DEFAULT_MAX_DEPTH)
            .map_err(|e| EngineError::Frame(e.to_string()))?;
        Ok((self.body.slice(..end), self.body.slice(end..)))
    }

    /// The AMQP performative and payload; `None` for an empty frame (a heartbeat).
    pub(crate) fn performative(&self) -> Result<Option<(Performative, Bytes)>, EngineError> {
        if self.body.is_empty() {
            return Ok(None);
        }
        let (value, payload) = self.split_body()?;
        let performative = serde_amqp::from_slice(&value)
            .map_err(|e| EngineError::Frame(format!("not a performative: {e}")))?;
        Ok(Some((performative, payload)))
    }
}

/// Reads frames (and the protocol headers between them) from one connection.
pub(crate) struct FrameReader<R> {
    io: R,
    buf: BytesMut,
    checker: AmqpFrameChecker,
    max_frame_size: u32,
}

impl<R: AsyncRead + Unpin> FrameReader<R> {
    pub(crate) fn new(io: R, limits: AmqpFrameLimits) -> Self {
        FrameReader {
            io,
            buf: BytesMut::with_capacity(READ_CHUNK),
            checker: AmqpFrameChecker::new(limits),
            max_frame_size: limits.max_frame_size,
        }
    }

    /// Reads more bytes; an end of stream is [`EngineError::Closed`].
    async fn fill(&mut self, want: usize) -> Result<(), EngineError> {
        self.buf.reserve(want.max(READ_CHUNK));
        let n = self.io.read_buf(&mut self.buf).await?;
        if n == 0 {
            return Err(EngineError::Closed);
        }
        Ok(())
    }

    /// The 8-byte protocol header (`AMQP` and a protocol id and version).
    pub(crate) async fn protocol_header(&mut self) -> Result<[u8; 8], EngineError> {
        while self.buf.len() < 8 {
            self.fill(8 - self.buf.len()).await?;
        }
        let mut header = [0u8; 8];
        header.copy_from_slice(&self.buf.split_to(8));
        Ok(header)
    }

    /// The next whole, checked frame. Cancel safe: what was read stays in the buffer.
    pub(crate) async fn frame(&mut self) -> Result<RawFrame, EngineError> {
        loop {
            let header = FrameHeader::parse(&self.buf, self.max_frame_size)
                .map_err(|_| EngineError::Frame("a bad frame header".into()))?;
            match header {
                Some(h) if self.buf.len() >= h.size as usize => {
                    let frame = self.buf.split_to(h.size as usize).freeze();
                    self.checker
                        .check(&frame)
                        .map_err(|e| EngineError::Frame(e.to_string()))?;
                    return Ok(RawFrame {
                        frame_type: h.frame_type,
                        channel: h.channel,
                        body: frame.slice(h.body_offset..),
                    });
                }
                Some(h) => {
                    let missing = h.size as usize - self.buf.len();
                    self.fill(missing).await?;
                }
                None => self.fill(8).await?,
            }
        }
    }
}
