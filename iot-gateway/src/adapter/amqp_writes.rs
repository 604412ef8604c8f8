//! Write coalescing under fe2o3-amqp's connection engine, for every AMQP endpoint on that crate
//! (the gateway's own, feature `amqp`; the facade's Event Hubs endpoint used it until it got an
//! engine of its own, which writes many events at once by itself).
//!
//! Why: the engine sends each outgoing frame on its own (`SinkExt::send`: encode, write,
//! flush), so an endpoint streaming events or settling deliveries pays one system call (and over
//! TLS one TLS record) per frame, however many frames its sessions have queued. This wrapper
//! takes the frames' bytes into a buffer and writes them out together: when a read of the
//! connection finds that no frame was added since the previous read (the engine has gone back
//! to waiting for the peer with nothing more to send), or once [`COALESCE_BYTES`] are waiting.
//!
//! Why no frame waits for long, and none for the peer:
//!
//! * the engine's loop polls the transport for incoming frames whenever it waits for anything
//!   (its `select!` over incoming frames, outgoing session frames, control and heartbeat), and
//!   every handshake step that writes then reads the peer's answer. A read that finds bytes
//!   added since the read before wakes its task at once and leaves them; the next read, when
//!   nothing was added in between, writes them. So a frame is written no later than the
//!   engine's second wait after it, which is one turn of its task, not a timer;
//! * the engine awaits something other than the transport only for local progress (handing an
//!   incoming frame to a session, session control): the peer's answer to anything waiting here
//!   could not be read until that ends either, so keeping the bytes meanwhile cannot hold up
//!   anything the peer would have unblocked;
//! * [`COALESCE_BYTES`] bounds what waits, and a shutdown writes everything first.
//!
//! A reader of the wrapped stream that waits without reading (not fe2o3-amqp's engine) would
//! see its bytes sit until its next read: the wrapper is for that engine only.

use std::pin::Pin;
use std::task::{Context, Poll, ready};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// Bytes gathered before they are written whatever the engine does next: about forty
/// events of the Event Hubs endpoint, under one loopback segment and under one TLS record
/// (16 KiB), and little to hold per busy connection.
pub const COALESCE_BYTES: usize = 16 * 1024;

/// A buffer that grew past this is given back once written out, so that an idle connection
/// holds little.
const KEEP_CAPACITY: usize = 2 * COALESCE_BYTES;

/// `io` with its writes gathered ([module documentation](self)): `poll_write` takes the bytes
/// into a buffer, `poll_flush` writes them only once [`COALESCE_BYTES`] are waiting, and a
/// read writes them when no write came since the read before. Wrap the stream (after TLS)
/// under the frame guard, before handing it to fe2o3-amqp's acceptor.
#[derive(Debug)]
pub struct CoalescedWrites<Io> {
    io: Io,
    /// Bytes taken and not yet written to `io`: `pending[written..]`.
    pending: Vec<u8>,
    written: usize,
    /// Bytes were taken since the last read looked.
    added: bool,
    /// `io` was written to and not flushed since (TLS keeps records until flushed).
    unflushed: bool,
}

impl<Io> CoalescedWrites<Io> {
    /// Gathers the writes to `io`.
    pub fn new(io: Io) -> Self {
        CoalescedWrites {
            io,
            pending: Vec::new(),
            written: 0,
            added: false,
            unflushed: false,
        }
    }

    /// Bytes taken and not yet written.
    fn waiting(&self) -> usize {
        self.pending.len() - self.written
    }
}

impl<Io: AsyncWrite + Unpin> CoalescedWrites<Io> {
    /// Writes everything waiting to `io` and flushes it.
    fn poll_write_out(&mut self, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        while self.written < self.pending.len() {
            let n = ready!(Pin::new(&mut self.io).poll_write(cx, &self.pending[self.written..]))?;
            if n == 0 {
                return Poll::Ready(Err(std::io::ErrorKind::WriteZero.into()));
            }
            self.written += n;
            self.unflushed = true;
        }
        self.pending.clear();
        self.written = 0;
        if self.pending.capacity() > KEEP_CAPACITY {
            self.pending = Vec::new();
        }
        if self.unflushed {
            ready!(Pin::new(&mut self.io).poll_flush(cx))?;
            self.unflushed = false;
        }
        Poll::Ready(Ok(()))
    }
}

impl<Io: AsyncRead + AsyncWrite + Unpin> AsyncRead for CoalescedWrites<Io> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let this = &mut *self;
        if this.waiting() > 0 || this.unflushed {
            if this.added {
                // Frames came since the last read: the engine may have more to send. Look
                // again on the task's next turn, which this wake makes sure of.
                this.added = false;
                cx.waker().wake_by_ref();
            } else if let Poll::Ready(Err(e)) = this.poll_write_out(cx) {
                // Pending: `io` wakes this task when it can take more.
                return Poll::Ready(Err(e));
            }
        }
        Pin::new(&mut this.io).poll_read(cx, buf)
    }
}

impl<Io: AsyncWrite + Unpin> AsyncWrite for CoalescedWrites<Io> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let this = &mut *self;
        if this.waiting() >= COALESCE_BYTES {
            ready!(this.poll_write_out(cx))?;
        }
        if this.waiting() == 0 && buf.len() >= COALESCE_BYTES {
            // A large write gains nothing from the buffer.
            let n = ready!(Pin::new(&mut this.io).poll_write(cx, buf))?;
            this.unflushed = true;
            return Poll::Ready(Ok(n));
        }
        this.pending.extend_from_slice(buf);
        this.added = true;
        Poll::Ready(Ok(buf.len()))
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        let this = &mut *self;
        if this.waiting() >= COALESCE_BYTES {
            return this.poll_write_out(cx);
        }
        // Deferred: the next read that finds no new bytes writes them (module documentation).
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        let this = &mut *self;
        ready!(this.poll_write_out(cx))?;
        Pin::new(&mut this.io).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests;
