//! A guard in front of fe2o3-amqp's decoder, for every AMQP endpoint on that crate (the
//! gateway's own, feature `amqp`; the facade's Event Hubs endpoint reads frames itself and runs
//! the same [`AmqpFrameChecker`] on each). It holds back each frame until all of it has
//! arrived and lets it through only when it is well formed:
//!
//! * its size covers its 8-byte header (fe2o3-amqp reads the header unchecked and panics on a
//!   frame whose size says 4 to 7 bytes) and is at most the endpoint's maximum frame size;
//! * its data offset lies inside the frame and its type is AMQP (0) or SASL (1);
//! * its body is a sequence of AMQP values whose declared sizes and counts fit in the bytes
//!   present, nested at most [`AmqpFrameLimits::max_depth`] deep
//!   ([`check_amqp_values`](super::check_amqp_values)). serde_amqp's stream reader allocates
//!   a string's or binary's declared length before reading it: without this check a 16-byte
//!   frame declaring a 3.5 GB string made it allocate 3.5 GB (the fuzz finding
//!   `fuzz/findings/amqp_decode/oom-8793…`);
//! * a `transfer`'s payload — the message, which fe2o3-amqp decodes with the same reader once
//!   the last frame of the delivery is in — gets the same check on the whole message: the
//!   payloads of a multi-frame delivery are kept (per channel and link handle, at most
//!   [`AmqpFrameLimits::max_message_size`] each and four times that in all; dropped when the
//!   delivery aborts or the handle is attached or detached again or its session begins or
//!   ends, as the decoder drops its buffer) and checked when the frame with `more = false`
//!   arrives, before it is let through. Resumed transfers (`resume = true`) are refused: the
//!   decoder may read one without the buffered bytes, and no endpoint here resumes links;
//! * a batched message (message format [`AMQP_BATCH_FORMAT`], IoT Hub's `0x80013700`, named on
//!   the delivery's first `transfer`) carries encoded messages in its `data` sections, which the
//!   endpoint decodes in turn: each of those gets the same check ([`check_amqp_batch`]).
//!
//! A frame that fails fails the read ([`std::io::ErrorKind::InvalidData`]): the crate ends the
//! connection, and only that one. Bounds: the guard buffers at most one frame plus one read
//! (8 KiB) and the partial deliveries above; the checks are linear in the bytes and use no
//! recursion.
//!
//! At a boundary the next 4 bytes are either `AMQP` (a protocol header, 8 bytes: the SASL
//! exchange is followed by a second one) or a frame size. A size starting with `A` (0x41) is
//! over 1 GiB, far beyond any frame size an endpoint allows, so the two cannot be confused.

use std::collections::HashMap;
use std::fmt;
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use super::amqp_batch::{AMQP_BATCH_FORMAT, check_amqp_batch};
use super::amqp_encoding::{AmqpEncodingError, DEFAULT_MAX_DEPTH, check_amqp_values, list_items};

/// The smallest frame: its header alone.
const MIN_FRAME: u32 = 8;
/// How many bytes one read from the socket asks for.
const READ_CHUNK: usize = 8 * 1024;
/// All partial deliveries of a connection together may hold this many maximum messages.
const PARTIAL_MESSAGES: u64 = 4;

/// What [`AmqpFrameGuard`] and [`AmqpFrameChecker`] accept.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct AmqpFrameLimits {
    /// The largest frame, header included: the `max-frame-size` the endpoint announces.
    pub max_frame_size: u32,
    /// The largest message (all `transfer` payloads of one delivery): at least the links'
    /// `max-message-size`.
    pub max_message_size: u64,
    /// How deeply values may nest (lists, maps, arrays, described values).
    pub max_depth: usize,
}

impl AmqpFrameLimits {
    /// Frames up to `max_frame_size` bytes, messages up to `max_message_size`, the default depth.
    pub fn new(max_frame_size: u32, max_message_size: u64) -> Self {
        AmqpFrameLimits {
            max_frame_size,
            max_message_size,
            max_depth: DEFAULT_MAX_DEPTH,
        }
    }

    /// The same limits with a nesting depth of `max_depth`.
    pub fn with_max_depth(mut self, max_depth: usize) -> Self {
        self.max_depth = max_depth;
        self
    }
}

impl Default for AmqpFrameLimits {
    /// 64 KiB frames (the AMQP endpoint's default), 1 MiB messages, depth 32.
    fn default() -> Self {
        AmqpFrameLimits::new(64 * 1024, 1024 * 1024)
    }
}

/// Why a frame was refused.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum AmqpFrameError {
    /// The size field says less than the 8-byte header.
    TooSmall(u32),
    /// The size field says more than the maximum frame size.
    TooLarge(u32),
    /// A data offset outside the frame or a frame type other than AMQP (0) and SASL (1).
    BadHeader,
    /// The body (or a message) is not a well-formed sequence of AMQP values.
    Encoding(AmqpEncodingError),
    /// An `attach`, `detach` or `transfer` without a usable `handle`, or a resumed `transfer`.
    BadTransfer,
    /// A delivery's payloads together exceed the maximum message size, or all partial
    /// deliveries together exceed four times that.
    MessageTooLarge,
}

impl fmt::Display for AmqpFrameError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            AmqpFrameError::TooSmall(size) => {
                write!(
                    f,
                    "an AMQP frame of {size} bytes is smaller than its header"
                )
            }
            AmqpFrameError::TooLarge(size) => {
                write!(
                    f,
                    "an AMQP frame of {size} bytes is over the maximum frame size"
                )
            }
            AmqpFrameError::BadHeader => write!(f, "an AMQP frame header is malformed"),
            AmqpFrameError::Encoding(e) => write!(f, "a malformed AMQP frame: {e}"),
            AmqpFrameError::BadTransfer => {
                write!(
                    f,
                    "an AMQP link performative has no valid handle, or a transfer resumes"
                )
            }
            AmqpFrameError::MessageTooLarge => {
                write!(f, "an AMQP delivery is over the maximum message size")
            }
        }
    }
}

impl std::error::Error for AmqpFrameError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            AmqpFrameError::Encoding(e) => Some(e),
            _ => None,
        }
    }
}

impl From<AmqpEncodingError> for AmqpFrameError {
    fn from(e: AmqpEncodingError) -> Self {
        AmqpFrameError::Encoding(e)
    }
}

/// The fields of a `transfer` the checker follows.
struct Transfer {
    handle: u32,
    /// Whether its message format is the batch format (continuation frames may leave the
    /// format out: then the delivery's first frame decides).
    batch: Option<bool>,
    more: bool,
    aborted: bool,
}

/// A delivery whose last frame has not arrived yet.
#[derive(Debug, Default)]
struct Partial {
    bytes: Vec<u8>,
    /// Its first frame named the batch format.
    batch: bool,
}

/// The performatives the checker looks into.
enum Performative {
    /// A link attached on handle `.0` (its delivery state starts afresh).
    Attach(u32),
    /// The link on handle `.0` detached.
    Detach(u32),
    /// The session on this channel began or ended: all its links are gone.
    Session,
    Transfer(Transfer),
    Other,
}

/// Checks whole frames, one after another, as they arrive on one connection (it keeps the
/// partial deliveries between frames). [`AmqpFrameGuard`] runs one per connection; it is public
/// so that other transports (and the fuzz target) apply exactly the same checks.
///
/// ```
/// use iot_gateway::adapter::{AmqpFrameChecker, AmqpFrameError, AmqpFrameLimits};
///
/// let mut checker = AmqpFrameChecker::new(AmqpFrameLimits::default());
/// // An empty AMQP frame (a heartbeat).
/// assert_eq!(checker.check(&[0, 0, 0, 8, 2, 0, 0, 0]), Ok(()));
/// // A frame whose body is a str32 declaring 3.5 GB.
/// let hostile = [0, 0, 0, 14, 2, 0, 0xd1, 0x8a, 0xb1, 0xd1, 0x02, 0x10, 0xff, 0x0a];
/// assert!(matches!(checker.check(&hostile), Err(AmqpFrameError::Encoding(_))));
/// ```
#[derive(Debug)]
pub struct AmqpFrameChecker {
    limits: AmqpFrameLimits,
    /// Payloads of deliveries still in progress, by channel and link handle.
    partial: HashMap<(u16, u32), Partial>,
    partial_total: u64,
}

impl AmqpFrameChecker {
    /// A checker for a new connection.
    pub fn new(limits: AmqpFrameLimits) -> Self {
        AmqpFrameChecker {
            limits,
            partial: HashMap::new(),
            partial_total: 0,
        }
    }

    /// The limits it applies.
    pub fn limits(&self) -> AmqpFrameLimits {
        self.limits
    }

    /// Checks one complete frame, size field included.
    pub fn check(&mut self, frame: &[u8]) -> Result<(), AmqpFrameError> {
        let [a, b, c, d, doff, kind, ch0, ch1, ..] = *frame else {
            return Err(AmqpFrameError::TooSmall(frame.len() as u32));
        };
        let size = u32::from_be_bytes([a, b, c, d]);
        if size < MIN_FRAME {
            return Err(AmqpFrameError::TooSmall(size));
        }
        if size > self.limits.max_frame_size {
            return Err(AmqpFrameError::TooLarge(size));
        }
        let offset = usize::from(doff) * 4;
        if size as usize != frame.len() || offset < 8 || offset > frame.len() || kind > 1 {
            return Err(AmqpFrameError::BadHeader);
        }
        let body = &frame[offset..];
        let depth = self.limits.max_depth;
        if kind == 1 || body.is_empty() {
            // SASL frames and heartbeats carry no payload.
            return Ok(check_amqp_values(body, depth)?);
        }
        let performative_end = super::amqp_value_end(body, depth)?;
        let (performative, payload) = body.split_at(performative_end);
        let channel = u16::from_be_bytes([ch0, ch1]);
        match self::performative(performative)? {
            Performative::Transfer(t) => return self.payload(channel, t, payload),
            // A new or gone link (or session) has no delivery in progress: what the decoder
            // buffered for the handle before is dropped with the old link, so must this.
            Performative::Attach(handle) | Performative::Detach(handle) => {
                self.forget(|key| key == (channel, handle));
            }
            Performative::Session => self.forget(|(c, _)| c == channel),
            Performative::Other => {}
        }
        Ok(check_amqp_values(payload, depth)?)
    }

    /// Drops the partial deliveries whose keys match.
    fn forget(&mut self, matches: impl Fn((u16, u32)) -> bool) {
        let total = &mut self.partial_total;
        self.partial.retain(|&key, kept| {
            let keep = !matches(key);
            if !keep {
                *total -= kept.bytes.len() as u64;
            }
            keep
        });
    }

    /// Follows one `transfer`'s payload; checks the message when the delivery is complete.
    fn payload(&mut self, channel: u16, t: Transfer, payload: &[u8]) -> Result<(), AmqpFrameError> {
        let key = (channel, t.handle);
        let kept = self.partial.remove(&key);
        if let Some(kept) = &kept {
            self.partial_total -= kept.bytes.len() as u64;
        }
        if t.aborted {
            // The delivery is dropped by the receiver without being decoded.
            return Ok(());
        }
        let so_far = kept.as_ref().map_or(0, |k| k.bytes.len()) as u64;
        if so_far + payload.len() as u64 > self.limits.max_message_size {
            return Err(AmqpFrameError::MessageTooLarge);
        }
        // The first frame of a delivery names its format; later ones may repeat it.
        let batch = match &kept {
            Some(kept) => kept.batch,
            None => t.batch.unwrap_or(false),
        };
        let depth = self.limits.max_depth;
        let check = |message: &[u8]| -> Result<(), AmqpFrameError> {
            check_amqp_values(message, depth)?;
            if batch {
                check_amqp_batch(message, depth)?;
            }
            Ok(())
        };
        if !t.more {
            return match kept {
                None => check(payload),
                Some(mut kept) => {
                    kept.bytes.extend_from_slice(payload);
                    check(&kept.bytes)
                }
            };
        }
        let mut kept = kept.unwrap_or(Partial {
            bytes: Vec::new(),
            batch,
        });
        kept.bytes.extend_from_slice(payload);
        self.partial_total += kept.bytes.len() as u64;
        if self.partial_total
            > self
                .limits
                .max_message_size
                .saturating_mul(PARTIAL_MESSAGES)
        {
            return Err(AmqpFrameError::MessageTooLarge);
        }
        self.partial.insert(key, kept);
        Ok(())
    }
}

/// What `performative` (checked already) is, with the fields the checker follows.
fn performative(bytes: &[u8]) -> Result<Performative, AmqpFrameError> {
    // 0x00, then the descriptor: a smallulong or ulong code, or the symbol name.
    let (code, list_at) = match bytes {
        [0x00, 0x53, code, ..] => (*code, 3),
        [0x00, 0x80, 0, 0, 0, 0, 0, 0, 0, code, ..] => (*code, 10),
        [0x00, 0xa3, n, rest @ ..] => {
            let name = rest.get(..usize::from(*n)).unwrap_or_default();
            let code = match name {
                b"amqp:begin:list" => 0x11,
                b"amqp:attach:list" => 0x12,
                b"amqp:transfer:list" => 0x14,
                b"amqp:detach:list" => 0x16,
                b"amqp:end:list" => 0x17,
                _ => return Ok(Performative::Other),
            };
            (code, 3 + usize::from(*n))
        }
        _ => return Ok(Performative::Other),
    };
    let items = || list_items(bytes, list_at, bytes.len(), 10).ok_or(AmqpFrameError::BadTransfer);
    let handle = |items: &[(usize, usize)], i: usize| match items.get(i).map(|&(s, e)| &bytes[s..e])
    {
        Some([0x43]) => Ok(0),
        Some([0x52, h]) => Ok(u32::from(*h)),
        Some([0x70, a, b, c, d]) => Ok(u32::from_be_bytes([*a, *b, *c, *d])),
        _ => Err(AmqpFrameError::BadTransfer),
    };
    Ok(match code {
        0x11 | 0x17 => Performative::Session,
        // attach: name 0, handle 1.
        0x12 => Performative::Attach(handle(&items()?, 1)?),
        0x16 => Performative::Detach(handle(&items()?, 0)?),
        0x14 => {
            // handle 0, delivery-id, delivery-tag, message-format, settled, more 5,
            // rcv-settle-mode, state, resume 8, aborted 9, batchable.
            let items = items()?;
            let flag = |i: usize| {
                matches!(
                    items.get(i).map(|&(s, e)| &bytes[s..e]),
                    Some([0x41]) | Some([0x56, 1..=255])
                )
            };
            // A resumed delivery is decoded by fe2o3-amqp on its own when it does not continue
            // the buffered one: the checker could not know which bytes the decoder reads. The
            // endpoints keep no link state across attaches, so nothing legitimate resumes.
            if flag(8) {
                return Err(AmqpFrameError::BadTransfer);
            }
            // message-format: a uint (uint0, smalluint or uint), or left out.
            let batch = match items.get(3).map(|&(s, e)| &bytes[s..e]) {
                Some([0x70, a, b, c, d]) => {
                    Some(u32::from_be_bytes([*a, *b, *c, *d]) == AMQP_BATCH_FORMAT)
                }
                Some([0x43] | [0x52, _]) => Some(false),
                _ => None,
            };
            Performative::Transfer(Transfer {
                handle: handle(&items, 0)?,
                batch,
                more: flag(5),
                aborted: flag(9),
            })
        }
        _ => Performative::Other,
    })
}

/// Where the guard is in the byte stream: one buffer of bytes read, of which
/// `buf[..checked]` are whole checked units and `buf[..handed]` have been handed on already.
/// Units are checked where they lie and handed on from there: no byte is copied between
/// buffers, and the buffer is compacted once per socket read rather than once per frame.
#[derive(Debug)]
struct Framing {
    checker: AmqpFrameChecker,
    /// The bytes read are `buf[..end]`; what follows is scratch for the next read, kept
    /// initialised so that a read (and every poll that finds nothing) does not zero it again.
    buf: Vec<u8>,
    end: usize,
    checked: usize,
    handed: usize,
    /// The refusal, reported once the units checked before it have been handed on.
    refused: Option<AmqpFrameError>,
}

impl Framing {
    /// Moves `checked` past every complete, checked unit after it.
    fn advance(&mut self) -> Result<(), AmqpFrameError> {
        loop {
            let rest = &self.buf[self.checked..self.end];
            let Some(&head) = rest.first_chunk::<4>() else {
                return Ok(());
            };
            let header = &head == b"AMQP";
            let unit = if header {
                8
            } else {
                let size = u32::from_be_bytes(head);
                if size < MIN_FRAME {
                    return Err(AmqpFrameError::TooSmall(size));
                }
                if size > self.checker.limits.max_frame_size {
                    return Err(AmqpFrameError::TooLarge(size));
                }
                size as usize
            };
            if rest.len() < unit {
                return Ok(());
            }
            if !header {
                self.checker.check(&rest[..unit])?;
            }
            self.checked += unit;
        }
    }

    /// Drops the bytes handed on, keeping the rest (an incomplete unit) at the start.
    fn compact(&mut self) {
        if self.handed > 0 {
            self.buf.copy_within(self.handed..self.end, 0);
            self.end -= self.handed;
            self.checked -= self.handed;
            self.handed = 0;
        }
    }
}

/// `io`, with every frame read held back until it is complete and then checked
/// ([`AmqpFrameChecker`]; the module documentation lists the checks). A read fails
/// ([`std::io::ErrorKind::InvalidData`], the [`AmqpFrameError`] inside) at the first frame
/// refused, so fe2o3-amqp's decoder never sees it. Wrap the stream (after TLS) before handing
/// it to the crate's acceptor.
///
/// ```
/// use iot_gateway::adapter::{AmqpFrameGuard, AmqpFrameLimits};
/// use tokio::io::AsyncReadExt;
///
/// # tokio::runtime::Builder::new_current_thread().build().unwrap().block_on(async {
/// let mut stream = b"AMQP\x00\x01\x00\x00".to_vec();
/// // A frame whose body declares a 3.5 GB string.
/// stream.extend_from_slice(&[0, 0, 0, 14, 2, 0, 0, 0, 0xb1, 0xd1, 0x02, 0x10, 0xff, 0x0a]);
/// let mut guarded = AmqpFrameGuard::with_limits(&stream[..], AmqpFrameLimits::default());
/// let mut read = Vec::new();
/// let refused = guarded.read_to_end(&mut read).await.unwrap_err();
/// assert_eq!(refused.kind(), std::io::ErrorKind::InvalidData);
/// assert_eq!(read, b"AMQP\x00\x01\x00\x00"); // the header passed, the frame did not
/// # });
/// ```
#[derive(Debug)]
pub struct AmqpFrameGuard<Io> {
    io: Io,
    framing: Framing,
}

impl<Io> AmqpFrameGuard<Io> {
    /// Guards `io`, which starts at a protocol header, with the default limits.
    pub fn new(io: Io) -> Self {
        AmqpFrameGuard::with_limits(io, AmqpFrameLimits::default())
    }

    /// Guards `io`, which starts at a protocol header, with `limits` (the endpoint's frame and
    /// message sizes).
    pub fn with_limits(io: Io, limits: AmqpFrameLimits) -> Self {
        AmqpFrameGuard {
            io,
            framing: Framing {
                checker: AmqpFrameChecker::new(limits),
                buf: Vec::new(),
                end: 0,
                checked: 0,
                handed: 0,
                refused: None,
            },
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
        let framing = &mut this.framing;
        loop {
            if framing.handed < framing.checked {
                let n = buf.remaining().min(framing.checked - framing.handed);
                buf.put_slice(&framing.buf[framing.handed..framing.handed + n]);
                framing.handed += n;
                return Poll::Ready(Ok(()));
            }
            if let Some(e) = framing.refused.clone() {
                return Poll::Ready(Err(std::io::Error::new(std::io::ErrorKind::InvalidData, e)));
            }
            framing.compact();
            // Read straight behind what is kept, into scratch zeroed once when the buffer grew
            // (not on every poll: the engine polls its transport on every turn).
            let kept = framing.end;
            if framing.buf.len() < kept + READ_CHUNK {
                framing.buf.resize(kept + READ_CHUNK, 0);
            }
            let mut read = ReadBuf::new(&mut framing.buf[kept..kept + READ_CHUNK]);
            let polled = Pin::new(&mut this.io).poll_read(cx, &mut read);
            let filled = read.filled().len();
            framing.end = kept + filled;
            match polled {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                // End of stream: a unit cut short is never handed on.
                Poll::Ready(Ok(())) if filled == 0 => return Poll::Ready(Ok(())),
                Poll::Ready(Ok(())) => {
                    if let Err(e) = framing.advance() {
                        framing.refused = Some(e);
                    }
                }
            }
        }
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
mod tests;
