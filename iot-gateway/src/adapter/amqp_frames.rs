//! A frame-size guard in front of fe2o3-amqp's decoder (for every AMQP endpoint on that crate:
//! the gateway's own, feature `amqp`, and the facade's Event Hubs endpoint), which reads a frame's 4-byte header
//! (data offset, type, channel) without checking that the frame has one: a frame whose size
//! field says 4 to 7 bytes makes it panic (found by `fuzz/fuzz_targets/amqp_decode.rs`). The
//! panic would stay inside the connection's task, but input from outside must not panic
//! anything: the guard follows the frame boundaries of the bytes read and fails the read (the
//! connection closes) at the first frame smaller than its own 8-byte header.
//!
//! At a boundary the next 4 bytes are either `AMQP` (a protocol header, 8 bytes: the SASL
//! exchange is followed by a second one) or a frame size. A size starting with `A` (0x41) is
//! over 1 GiB, far beyond any frame size this endpoint allows, so the two cannot be confused.

use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// The smallest frame: its header alone.
const MIN_FRAME: u32 = 8;

/// Where the guard is in the byte stream.
#[derive(Debug, Default)]
pub(crate) struct Framing {
    /// Bytes of the current unit (header or frame) still to pass before the next boundary.
    skip: u64,
    /// The first bytes of the next unit, until there are 4.
    head: [u8; 4],
    have: usize,
}

impl Framing {
    /// Follows `bytes`; `Err` at the first undersized frame.
    pub(crate) fn follow(&mut self, mut bytes: &[u8]) -> Result<(), u32> {
        while !bytes.is_empty() {
            if self.skip > 0 {
                let n = usize::try_from(self.skip.min(bytes.len() as u64)).unwrap_or(bytes.len());
                self.skip -= n as u64;
                bytes = &bytes[n..];
                continue;
            }
            let n = (4 - self.have).min(bytes.len());
            self.head[self.have..self.have + n].copy_from_slice(&bytes[..n]);
            self.have += n;
            bytes = &bytes[n..];
            if self.have < 4 {
                break;
            }
            self.have = 0;
            if &self.head == b"AMQP" {
                self.skip = 4;
            } else {
                let size = u32::from_be_bytes(self.head);
                if size < MIN_FRAME {
                    return Err(size);
                }
                self.skip = u64::from(size - 4);
            }
        }
        Ok(())
    }
}

/// `io`, with the frame boundaries of every byte read followed: a read fails
/// ([`std::io::ErrorKind::InvalidData`]) at the first frame smaller than its 8-byte header, so
/// that fe2o3-amqp's decoder never sees one. Wrap the stream (after TLS) before handing it to
/// the crate's acceptor.
#[derive(Debug)]
pub struct AmqpFrameGuard<Io> {
    io: Io,
    framing: Framing,
}

impl<Io> AmqpFrameGuard<Io> {
    /// Guards `io`, which starts at a protocol header.
    pub fn new(io: Io) -> Self {
        AmqpFrameGuard {
            io,
            framing: Framing::default(),
        }
    }
}

impl<Io: AsyncRead + Unpin> AsyncRead for AmqpFrameGuard<Io> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let this = &mut *self;
        let before = buf.filled().len();
        let polled = Pin::new(&mut this.io).poll_read(cx, buf);
        if let Poll::Ready(Ok(())) = &polled
            && let Err(size) = this.framing.follow(&buf.filled()[before..])
        {
            return Poll::Ready(Err(std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                format!("an AMQP frame of {size} bytes is smaller than its header"),
            )));
        }
        polled
    }
}

impl<Io: AsyncWrite + Unpin> AsyncWrite for AmqpFrameGuard<Io> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.io).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn headers_and_frames_pass_undersized_frames_do_not() {
        let mut f = Framing::default();
        let mut ok = b"AMQP\x03\x01\x00\x00".to_vec();
        ok.extend_from_slice(&[0, 0, 0, 8, 2, 1, 0, 0]);
        ok.extend_from_slice(b"AMQP\x00\x01\x00\x00");
        ok.extend_from_slice(&[0, 0, 0, 10, 2, 0, 0, 0, 0xaa, 0xbb]);
        // One byte at a time, as a slow socket delivers it.
        for b in &ok {
            assert_eq!(f.follow(std::slice::from_ref(b)), Ok(()));
        }
        assert_eq!(f.follow(&[0, 0, 0, 5, 2]), Err(5));
        assert_eq!(Framing::default().follow(&[0, 0, 0, 0]), Err(0));
    }
}
