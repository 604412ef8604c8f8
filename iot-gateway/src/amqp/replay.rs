//! A stream that gives back the protocol header the endpoint read to choose a path: IoT Hub
//! takes both `AMQP 3 1 0 0` (SASL first) and `AMQP 0 1 0 0` (no SASL; the client then
//! authenticates with `$cbs` — the Node SDK does this), and fe2o3-amqp's acceptor handles one
//! kind per acceptor, so the header is peeked and replayed to the acceptor chosen.

use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// `io` with `head` read again first.
#[derive(Debug)]
pub(super) struct Replay<Io> {
    head: Vec<u8>,
    pos: usize,
    io: Io,
}

impl<Io> Replay<Io> {
    pub(super) fn new(head: Vec<u8>, io: Io) -> Self {
        Replay { head, pos: 0, io }
    }
}

impl<Io: AsyncRead + Unpin> AsyncRead for Replay<Io> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let this = &mut *self;
        if this.pos < this.head.len() {
            let n = (this.head.len() - this.pos).min(buf.remaining());
            buf.put_slice(&this.head[this.pos..this.pos + n]);
            this.pos += n;
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut this.io).poll_read(cx, buf)
    }
}

impl<Io: AsyncWrite + Unpin> AsyncWrite for Replay<Io> {
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
    use tokio::io::AsyncReadExt;

    #[tokio::test]
    async fn the_head_comes_first_then_the_stream() {
        let mut r = Replay::new(b"AMQP".to_vec(), &b"\x00\x01\x00\x00rest"[..]);
        let mut all = Vec::new();
        r.read_to_end(&mut all).await.expect("read");
        assert_eq!(all, b"AMQP\x00\x01\x00\x00rest");
    }
}
