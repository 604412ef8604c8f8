//! A connection's byte stream as packets: what the connection reads next, and how its replies
//! are written.
//!
//! Replies are not written one by one. They gather in the write buffer while the device has
//! more packets ready, and go out in one write when it has none: a client that sends a window
//! of QoS 1 PUBLISHes without waiting (rumqttc, the Azure SDKs) gets the window's PUBACKs in one
//! system call instead of one each, which on the out-of-process benchmark was most of the
//! endpoint's system calls.

use std::future::{Future, poll_fn};
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use futures::{Sink, SinkExt, StreamExt};
use rmqtt_codec::error::EncodeError;
use rmqtt_codec::v3::Packet;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::time::timeout;
use tokio_util::codec::Framed;

use super::error::Error;
use super::framing::StrictCodec;

/// Starting size of a connection's read and write buffers. tokio-util's default is 8 KiB each,
/// which at 10 000 mostly idle devices is most of the endpoint's memory; MQTT packets of an idle
/// device (CONNECT, PINGREQ, PUBACK) are far smaller, and a buffer grows when a packet needs it.
const IO_BUFFER_BYTES: usize = 1024;

pub(crate) type Transport<IO> = Framed<IO, StrictCodec>;

/// A new connection's transport, refusing packets larger than `max_packet_size`.
pub(crate) fn framed<IO>(io: IO, max_packet_size: u32) -> Transport<IO>
where
    IO: AsyncRead + AsyncWrite,
{
    Framed::with_capacity(io, StrictCodec::new(max_packet_size), IO_BUFFER_BYTES)
}

/// What a connection reads next.
pub(crate) enum Input {
    /// A packet, or the error that ended reading.
    Packet(Result<Packet, Error>),
    /// Nothing buffered or readable now, and replies wait in the write buffer: time to
    /// [`flush`].
    Idle,
    /// The device closed its end.
    Closed,
}

/// Packets handled while replies wait in the write buffer after which the replies go out even
/// though more packets are ready. Without it a device that never pauses (QoS 0 telemetry as
/// fast as it can) would hold back a reply it asked for (a twin answer) until its stream paused
/// or the replies filled the buffer. A window of QoS 1 PUBLISHes (16 in the benchmark) is far
/// smaller.
pub(crate) const MAX_PACKETS_BEFORE_FLUSH: usize = 64;

/// The next packet from the device; [`Input::Idle`] instead of waiting when none is ready and
/// replies wait to be written, so that a burst of packets is answered in one write. `handled`
/// is how many packets were handled since the buffer was last written out: from
/// [`MAX_PACKETS_BEFORE_FLUSH`] on, `Idle` comes first.
pub(crate) fn next_input<IO>(
    transport: &mut Transport<IO>,
    handled: usize,
) -> impl Future<Output = Input> + '_
where
    IO: AsyncRead + AsyncWrite + Unpin,
{
    poll_fn(move |cx| {
        let waiting = !transport.write_buffer().is_empty();
        if waiting && handled >= MAX_PACKETS_BEFORE_FLUSH {
            return Poll::Ready(Input::Idle);
        }
        match transport.poll_next_unpin(cx) {
            Poll::Ready(Some(read)) => Poll::Ready(Input::Packet(read)),
            Poll::Ready(None) => Poll::Ready(Input::Closed),
            Poll::Pending if waiting => Poll::Ready(Input::Idle),
            Poll::Pending => Poll::Pending,
        }
    })
}

/// Puts a packet in the write buffer, for [`flush`] to write out. Waits (up to `limit`) only
/// when the buffer is full of replies the device has not read.
pub(crate) async fn buffer<IO>(
    transport: &mut Transport<IO>,
    packet: Packet,
    limit: Duration,
) -> Result<(), Error>
where
    IO: AsyncRead + AsyncWrite + Unpin,
{
    // `poll_ready` answers at once while the buffer has room, which is every time unless the
    // device stopped reading: then no timer is needed, and none is made. (The context is not
    // kept across the await below: it is not `Send`.)
    let ready = Pin::new(&mut *transport).poll_ready(&mut Context::from_waker(Waker::noop()));
    let buffered = match ready {
        Poll::Ready(Ok(())) => Pin::new(&mut *transport).start_send(packet),
        Poll::Ready(Err(e)) => Err(e),
        Poll::Pending => match timeout(limit, transport.feed(packet)).await {
            Err(_) => return Err(timed_out()),
            Ok(buffered) => buffered,
        },
    };
    buffered.map_err(encode_error)
}

/// Writes out what [`buffer`] put in the write buffer, giving up after `limit`.
pub(crate) async fn flush<IO>(transport: &mut Transport<IO>, limit: Duration) -> Result<(), Error>
where
    IO: AsyncRead + AsyncWrite + Unpin,
{
    match timeout(limit, transport.flush()).await {
        Err(_) => Err(timed_out()),
        Ok(written) => written.map_err(encode_error),
    }
}

/// Writes one packet at once (with anything buffered before it), giving up after `limit`: for
/// the answers of the handshake, after which the connection may close.
pub(crate) async fn write_now<IO>(
    transport: &mut Transport<IO>,
    packet: Packet,
    limit: Duration,
) -> Result<(), Error>
where
    IO: AsyncRead + AsyncWrite + Unpin,
{
    match timeout(limit, transport.send(packet)).await {
        Err(_) => Err(timed_out()),
        Ok(written) => written.map_err(encode_error),
    }
}

/// Writes out what is buffered (replies to the last packets) and closes the stream, giving up
/// after `limit`: the connection ends either way.
pub(crate) async fn close<IO>(transport: &mut Transport<IO>, limit: Duration)
where
    IO: AsyncRead + AsyncWrite + Unpin,
{
    let _ = timeout(limit, SinkExt::<Packet>::close(transport)).await;
}

fn encode_error(e: EncodeError) -> Error {
    Error::Io(io::Error::other(e.to_string()))
}

fn timed_out() -> Error {
    Error::Io(io::Error::new(
        io::ErrorKind::TimedOut,
        "the client did not read for the whole write timeout",
    ))
}
