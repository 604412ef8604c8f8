use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::{Context, Poll, Wake, Waker};

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, DuplexStream, ReadBuf};

use super::*;

/// A waker that counts its wakes.
#[derive(Default)]
struct Counting(AtomicUsize);

impl Wake for Counting {
    fn wake(self: Arc<Self>) {
        self.0.fetch_add(1, Ordering::SeqCst);
    }
}

struct Harness {
    wrapped: CoalescedWrites<DuplexStream>,
    peer: DuplexStream,
    wakes: Arc<Counting>,
    waker: Waker,
}

impl Harness {
    fn new() -> Self {
        let (ours, peer) = tokio::io::duplex(1 << 20);
        let wakes = Arc::new(Counting::default());
        Harness {
            wrapped: CoalescedWrites::new(ours),
            peer,
            waker: Waker::from(wakes.clone()),
            wakes,
        }
    }

    /// What the engine does per frame: `send` (write it, then flush).
    fn send(&mut self, frame: &[u8]) {
        let mut cx = Context::from_waker(&self.waker);
        let mut w = Pin::new(&mut self.wrapped);
        assert!(
            matches!(w.as_mut().poll_write(&mut cx, frame), Poll::Ready(Ok(n)) if n == frame.len())
        );
        assert!(matches!(w.poll_flush(&mut cx), Poll::Ready(Ok(()))));
    }

    /// The engine waiting for the peer: one poll of a read (nothing comes in these tests).
    fn wait_for_peer(&mut self) {
        let mut cx = Context::from_waker(&self.waker);
        let mut space = [0u8; 16];
        let mut buf = ReadBuf::new(&mut space);
        assert!(
            Pin::new(&mut self.wrapped)
                .poll_read(&mut cx, &mut buf)
                .is_pending()
        );
    }

    /// Everything the peer can read now, without waiting.
    fn peer_has(&mut self) -> Vec<u8> {
        let mut cx = Context::from_waker(Waker::noop());
        let mut got = Vec::new();
        loop {
            let mut space = [0u8; 4096];
            let mut buf = ReadBuf::new(&mut space);
            match Pin::new(&mut self.peer).poll_read(&mut cx, &mut buf) {
                Poll::Ready(Ok(())) if !buf.filled().is_empty() => {
                    got.extend_from_slice(buf.filled())
                }
                _ => return got,
            }
        }
    }

    fn wakes(&self) -> usize {
        self.wakes.0.load(Ordering::SeqCst)
    }
}

#[test]
fn a_single_frame_is_written_on_the_engines_next_turn_and_its_task_is_woken_for_it() {
    let mut h = Harness::new();
    h.send(b"frame one");
    // Flushed by the engine, but held: more frames may follow.
    assert!(h.peer_has().is_empty());
    // The engine waits for the peer: the wrapper asks for another turn instead of a timer.
    h.wait_for_peer();
    assert_eq!(h.wakes(), 1);
    // That turn finds nothing new: the frame goes out.
    h.wait_for_peer();
    assert_eq!(h.peer_has(), b"frame one");
    // Nothing waits any more: no further wakes.
    h.wait_for_peer();
    assert_eq!(h.wakes(), 1);
}

#[test]
fn frames_sent_between_two_waits_go_out_in_one_write_in_order() {
    let mut h = Harness::new();
    h.send(b"a");
    h.wait_for_peer();
    h.send(b"b");
    h.send(b"c");
    // The wait after new frames holds them once more.
    h.wait_for_peer();
    assert!(h.peer_has().is_empty());
    h.wait_for_peer();
    assert_eq!(h.peer_has(), b"abc");
    assert_eq!(h.wakes(), 2);
}

#[test]
fn a_full_buffer_is_written_without_waiting_for_a_read() {
    let mut h = Harness::new();
    let frame = vec![7u8; 1000];
    let mut sent = 0;
    while sent < COALESCE_BYTES {
        h.send(&frame);
        sent += frame.len();
    }
    assert_eq!(h.peer_has().len(), sent);
    assert_eq!(h.wakes(), 0);
}

#[test]
fn a_write_larger_than_the_buffer_goes_straight_through() {
    let mut h = Harness::new();
    let big = vec![1u8; COALESCE_BYTES + 1];
    h.send(&big);
    assert_eq!(h.peer_has(), big);
}

#[tokio::test]
async fn shutdown_writes_what_is_held() {
    let (ours, mut peer) = tokio::io::duplex(1 << 16);
    let mut wrapped = CoalescedWrites::new(ours);
    tokio::io::AsyncWriteExt::write_all(&mut wrapped, b"last frame")
        .await
        .expect("write");
    tokio::io::AsyncWriteExt::flush(&mut wrapped)
        .await
        .expect("flush");
    tokio::io::AsyncWriteExt::shutdown(&mut wrapped)
        .await
        .expect("shutdown");
    let mut got = Vec::new();
    peer.read_to_end(&mut got).await.expect("read");
    assert_eq!(got, b"last frame");
}

#[tokio::test]
async fn reads_pass_through() {
    let (ours, mut peer) = tokio::io::duplex(1 << 16);
    let mut wrapped = CoalescedWrites::new(ours);
    tokio::io::AsyncWriteExt::write_all(&mut peer, b"from the peer")
        .await
        .expect("write");
    drop(peer);
    let mut got = Vec::new();
    wrapped.read_to_end(&mut got).await.expect("read");
    assert_eq!(got, b"from the peer");
}
