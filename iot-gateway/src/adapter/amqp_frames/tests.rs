use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::BytesMut;
use fe2o3_amqp::types::messaging::Data;
use fe2o3_amqp::types::performatives::{Attach, Detach, Transfer};
use fe2o3_amqp::types::primitives::Binary;
use tokio::io::{AsyncRead, AsyncReadExt, ReadBuf};
use tokio_util::codec::Decoder;

use super::*;

/// The fuzz finding, as the fuzz target reads it: chunk size, frame kind, then the stream.
const FINDING: &[u8] = include_bytes!(
    "../../../../fuzz/findings/amqp_decode/oom-8793022bd6e093039ab0a8bf4f30c0cb758cff1e"
);

/// A frame of `kind` (0 AMQP, 1 SASL) on `channel` around `body`.
fn frame(kind: u8, channel: u16, body: &[u8]) -> Vec<u8> {
    let mut f = ((body.len() + 8) as u32).to_be_bytes().to_vec();
    f.extend_from_slice(&[2, kind]);
    f.extend_from_slice(&channel.to_be_bytes());
    f.extend_from_slice(body);
    f
}

/// A transfer frame on link `handle` with `payload`.
fn transfer(handle: u32, more: bool, aborted: bool, payload: &[u8]) -> Vec<u8> {
    transfer_resumed(handle, more, aborted, false, payload)
}

fn transfer_resumed(
    handle: u32,
    more: bool,
    aborted: bool,
    resume: bool,
    payload: &[u8],
) -> Vec<u8> {
    transfer_with(handle, Some(0), more, aborted, resume, payload)
}

fn transfer_with(
    handle: u32,
    message_format: Option<u32>,
    more: bool,
    aborted: bool,
    resume: bool,
    payload: &[u8],
) -> Vec<u8> {
    let t = Transfer {
        handle: handle.into(),
        delivery_id: Some(0),
        delivery_tag: Some(Binary::from(vec![1, 2])),
        message_format,
        settled: None,
        more,
        rcv_settle_mode: None,
        state: None,
        resume,
        aborted,
        batchable: false,
    };
    let mut body = serde_amqp::to_vec(&t).unwrap();
    body.extend_from_slice(payload);
    frame(0, 3, &body)
}

/// A `data` section of `n` bytes.
fn data(n: usize) -> Vec<u8> {
    serde_amqp::to_vec(&Data(Binary::from(vec![7u8; n]))).unwrap()
}

/// Hands out its bytes `chunk` at a time, as a slow socket does.
struct Chunked<'a> {
    bytes: &'a [u8],
    chunk: usize,
}

impl AsyncRead for Chunked<'_> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        _: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let n = self.chunk.min(self.bytes.len()).min(buf.remaining());
        buf.put_slice(&self.bytes[..n]);
        self.bytes = &self.bytes[n..];
        Poll::Ready(Ok(()))
    }
}

/// Reads `stream` through a guard `chunk` bytes at a time: what it let through, and how it ended.
async fn through_guard(stream: &[u8], chunk: usize) -> (Vec<u8>, std::io::Result<usize>) {
    let mut guard = AmqpFrameGuard::new(Chunked {
        bytes: stream,
        chunk,
    });
    let mut out = Vec::new();
    let ended = guard.read_to_end(&mut out).await;
    (out, ended)
}

#[tokio::test]
async fn headers_and_frames_pass_whole_and_one_byte_at_a_time() {
    let mut ok = b"AMQP\x03\x01\x00\x00".to_vec();
    ok.extend_from_slice(&[0, 0, 0, 8, 2, 1, 0, 0]);
    ok.extend_from_slice(b"AMQP\x00\x01\x00\x00");
    let attach = serde_amqp::to_vec(&Attach {
        name: "link".into(),
        handle: 0.into(),
        role: fe2o3_amqp::types::definitions::Role::Receiver,
        snd_settle_mode: Default::default(),
        rcv_settle_mode: Default::default(),
        source: None,
        target: None,
        unsettled: None,
        incomplete_unsettled: false,
        initial_delivery_count: None,
        max_message_size: Some(1024),
        offered_capabilities: None,
        desired_capabilities: None,
        properties: None,
    })
    .unwrap();
    ok.extend_from_slice(&frame(0, 0, &attach));
    ok.extend_from_slice(&transfer(0, false, false, &data(100)));
    for chunk in [1, 3, 7, 8192] {
        let (out, ended) = through_guard(&ok, chunk).await;
        assert_eq!(ended.unwrap(), ok.len());
        assert_eq!(out, ok);
    }
}

/// The guard reads into scratch it keeps between reads (not zeroed again per poll): frames
/// larger than one read, and small ones after them, pass whole and in order whatever the reads'
/// sizes, with the incomplete frame at each read's end kept across the buffer's growth.
#[tokio::test]
async fn frames_larger_than_a_read_pass_whole_between_small_ones() {
    let mut ok = b"AMQP\x00\x01\x00\x00".to_vec();
    for (handle, size) in [(0, 100), (1, 20_000), (2, 10), (3, 40_000), (4, 3_000)] {
        ok.extend_from_slice(&transfer(handle, false, false, &data(size)));
    }
    for chunk in [1_000, 5_000, 8_191, 8_192, 8_193, 100_000] {
        let (out, ended) = through_guard(&ok, chunk).await;
        assert_eq!(ended.unwrap(), ok.len(), "chunk {chunk}");
        assert_eq!(out, ok, "chunk {chunk}");
    }
}

#[tokio::test]
async fn a_frame_cut_short_by_the_end_of_the_stream_is_not_handed_on() {
    let mut stream = b"AMQP\x00\x01\x00\x00".to_vec();
    let whole = transfer(0, false, false, &data(10));
    stream.extend_from_slice(&whole[..whole.len() - 1]);
    let (out, ended) = through_guard(&stream, 5).await;
    assert_eq!(ended.unwrap(), 8);
    assert_eq!(out, b"AMQP\x00\x01\x00\x00");
}

#[test]
fn headers_that_are_too_small_too_large_or_malformed_are_refused() {
    let mut c = AmqpFrameChecker::new(AmqpFrameLimits::new(512, 4096));
    assert_eq!(
        c.check(&[0, 0, 0, 5, 2, 0, 0]),
        Err(AmqpFrameError::TooSmall(7))
    );
    assert_eq!(
        c.check(&[0, 0, 0, 5, 2, 0, 0, 0]),
        Err(AmqpFrameError::TooSmall(5))
    );
    let big = frame(0, 0, &[0x40; 600]);
    assert_eq!(c.check(&big), Err(AmqpFrameError::TooLarge(608)));
    // A size field that disagrees with the bytes handed over.
    let mut short = frame(0, 0, &[0x40; 100]);
    short.truncate(50);
    assert_eq!(c.check(&short), Err(AmqpFrameError::BadHeader));
    // Data offset 1 (inside the header) and 200 (past the end); frame type 2.
    assert_eq!(
        c.check(&[0, 0, 0, 9, 1, 0, 0, 0, 0x40]),
        Err(AmqpFrameError::BadHeader)
    );
    assert_eq!(
        c.check(&[0, 0, 0, 9, 200, 0, 0, 0, 0x40]),
        Err(AmqpFrameError::BadHeader)
    );
    assert_eq!(
        c.check(&[0, 0, 0, 9, 2, 2, 0, 0, 0x40]),
        Err(AmqpFrameError::BadHeader)
    );
    // An extended header (data offset 3) is skipped.
    assert_eq!(
        c.check(&[0, 0, 0, 13, 3, 0, 0, 0, 1, 2, 3, 4, 0x40]),
        Ok(())
    );
}

#[tokio::test]
async fn the_fuzz_finding_is_refused_before_the_decoder_sees_it() {
    let [_chunk, kind, stream @ ..] = FINDING else {
        panic!("the finding is at least two bytes")
    };
    assert_eq!(kind & 1, 0, "an AMQP frame, as the fuzz target reads it");
    let mut input = b"AMQP\x00\x01\x00\x00".to_vec();
    input.extend_from_slice(stream);
    let (out, ended) = through_guard(&input, 1).await;
    let refused = ended.unwrap_err();
    assert_eq!(refused.kind(), std::io::ErrorKind::InvalidData);
    let cause = refused
        .get_ref()
        .and_then(|e| e.downcast_ref::<AmqpFrameError>())
        .unwrap();
    assert_eq!(
        cause,
        &AmqpFrameError::Encoding(AmqpEncodingError::Truncated { at: 0 })
    );
    // Only the protocol header reached the decoder's side.
    assert_eq!(out, b"AMQP\x00\x01\x00\x00");
    // The same frame with its string's declared size made honest passes the guard, and the
    // decoder then decodes it (to an error: a string is no performative) without the 3.5 GB.
    let mut honest = stream.to_vec();
    honest[9..13].copy_from_slice(&1u32.to_be_bytes());
    AmqpFrameChecker::new(AmqpFrameLimits::default())
        .check(&honest)
        .unwrap();
    let mut body = BytesMut::from(&honest[4..]);
    assert!(
        fe2o3_amqp::frames::amqp::FrameDecoder {}
            .decode(&mut body)
            .is_err()
    );
}

#[test]
fn a_message_declaring_more_than_it_holds_is_refused() {
    let mut c = AmqpFrameChecker::new(AmqpFrameLimits::default());
    assert_eq!(c.check(&transfer(1, false, false, &data(300))), Ok(()));
    // A data section whose vbin32 says 3 GB: fe2o3-amqp's receiver would allocate that much.
    let hostile = [0x00, 0x53, 0x75, 0xb0, 0xc0, 0, 0, 0, 1, 2, 3];
    assert!(matches!(
        c.check(&transfer(1, false, false, &hostile)),
        Err(AmqpFrameError::Encoding(
            AmqpEncodingError::Truncated { .. }
        ))
    ));
}

#[test]
fn multi_frame_deliveries_are_checked_whole_at_their_last_frame() {
    let limits = AmqpFrameLimits::new(64 * 1024, 10_000);
    let message = data(2_000);
    let (a, rest) = message.split_at(5); // the split falls inside the vbin32 size field
    let (b, c) = rest.split_at(1_000);
    let mut checker = AmqpFrameChecker::new(limits);
    assert_eq!(checker.check(&transfer(0, true, false, a)), Ok(()));
    assert_eq!(checker.check(&transfer(0, true, false, b)), Ok(()));
    // Another link's delivery in between does not mix with this one.
    assert_eq!(checker.check(&transfer(1, false, false, &data(3))), Ok(()));
    assert_eq!(checker.check(&transfer(0, false, false, c)), Ok(()));

    // The same delivery with one byte missing at the end is refused at its last frame.
    let mut checker = AmqpFrameChecker::new(limits);
    assert_eq!(checker.check(&transfer(0, true, false, a)), Ok(()));
    assert_eq!(checker.check(&transfer(0, true, false, b)), Ok(()));
    assert!(checker.check(&transfer(0, false, false, &c[1..])).is_err());

    // An aborted delivery is dropped: what follows on that link starts afresh.
    let mut checker = AmqpFrameChecker::new(limits);
    assert_eq!(checker.check(&transfer(0, true, false, a)), Ok(()));
    assert_eq!(checker.check(&transfer(0, false, true, &[])), Ok(()));
    assert_eq!(checker.check(&transfer(0, false, false, &data(5))), Ok(()));
}

#[test]
fn deliveries_over_the_message_size_are_refused() {
    let limits = AmqpFrameLimits::new(64 * 1024, 4_000);
    let mut checker = AmqpFrameChecker::new(limits);
    let chunk = vec![0x40; 1_500];
    assert_eq!(checker.check(&transfer(0, true, false, &chunk)), Ok(()));
    assert_eq!(checker.check(&transfer(0, true, false, &chunk)), Ok(()));
    assert_eq!(
        checker.check(&transfer(0, true, false, &chunk)),
        Err(AmqpFrameError::MessageTooLarge)
    );
    // Many links each below the limit, together over four messages' worth.
    let mut checker = AmqpFrameChecker::new(limits);
    let refused = (0..20).find(|&h| checker.check(&transfer(h, true, false, &chunk)).is_err());
    assert_eq!(refused, Some(10));
}

#[test]
fn transfers_without_a_handle_are_refused() {
    // Descriptor 0x14 with an empty list, and with a string where the handle goes.
    let mut c = AmqpFrameChecker::new(AmqpFrameLimits::default());
    assert_eq!(
        c.check(&frame(0, 0, &[0x00, 0x53, 0x14, 0x45])),
        Err(AmqpFrameError::BadTransfer)
    );
    assert_eq!(
        c.check(&frame(0, 0, &[0x00, 0x53, 0x14, 0xc0, 4, 1, 0xa1, 1, b'x'])),
        Err(AmqpFrameError::BadTransfer)
    );
}

#[test]
fn a_new_link_on_the_same_handle_starts_without_the_old_partial_delivery() {
    // A data section whose vbin32 promises 16 bytes, left incomplete.
    let prefix = [0x00, 0x53, 0x75, 0xb0, 0, 0, 0, 16];
    // On their own, these 16 bytes are a str32 declaring 4 GB.
    let mut hidden = vec![0xb1, 0xff, 0xff, 0xff, 0xff];
    hidden.resize(16, 0);
    // Continuing the delivery, they are the binary's contents: fine.
    let mut c = AmqpFrameChecker::new(AmqpFrameLimits::default());
    assert_eq!(c.check(&transfer(0, true, false, &prefix)), Ok(()));
    assert_eq!(c.check(&transfer(0, false, false, &hidden)), Ok(()));
    // After a detach (and a new attach on handle 0), fe2o3-amqp decodes them alone: refused.
    let detach = serde_amqp::to_vec(&Detach {
        handle: 0.into(),
        closed: true,
        error: None,
    })
    .unwrap();
    let mut c = AmqpFrameChecker::new(AmqpFrameLimits::default());
    assert_eq!(c.check(&transfer(0, true, false, &prefix)), Ok(()));
    assert_eq!(c.check(&frame(0, 3, &detach)), Ok(()));
    assert!(c.check(&transfer(0, false, false, &hidden)).is_err());
    // A partial delivery on another channel is not touched by this channel's detach.
    let mut c = AmqpFrameChecker::new(AmqpFrameLimits::default());
    assert_eq!(c.check(&transfer(0, true, false, &prefix)), Ok(()));
    assert_eq!(c.check(&frame(0, 4, &detach)), Ok(()));
    assert_eq!(c.check(&transfer(0, false, false, &hidden)), Ok(()));
}

#[test]
fn resumed_transfers_are_refused() {
    let mut c = AmqpFrameChecker::new(AmqpFrameLimits::default());
    assert_eq!(
        c.check(&transfer_resumed(0, false, false, true, &data(4))),
        Err(AmqpFrameError::BadTransfer)
    );
}

#[tokio::test]
async fn the_fuzz_seeds_pass_whole() {
    // Valid AMQP and SASL streams (open, begin, attach, single- and multi-frame transfers with
    // properties and application properties, detach; SASL PLAIN then open), as the fuzz target
    // reads them: chunk size, header kind, stream.
    let seeds: [&[u8]; 2] = [
        include_bytes!("../../../../fuzz/corpus/amqp_decode/seed-amqp-chunk7"),
        include_bytes!("../../../../fuzz/corpus/amqp_decode/seed-sasl"),
    ];
    for seed in seeds {
        let [chunk, kind, stream @ ..] = seed else {
            panic!("a seed has at least two bytes")
        };
        let mut input = if kind & 1 == 1 {
            b"AMQP\x03\x01\x00\x00".to_vec()
        } else {
            b"AMQP\x00\x01\x00\x00".to_vec()
        };
        input.extend_from_slice(stream);
        let (out, ended) = through_guard(&input, usize::from(*chunk)).await;
        assert_eq!(ended.unwrap(), input.len());
        assert_eq!(out, input);
    }
}

#[test]
fn the_messages_inside_a_batch_are_checked_too() {
    // A data section holding a "message" whose binary declares 3.5 GB: harmless bytes in a
    // plain message, a message to decode in a batch.
    let hostile = serde_amqp::to_vec(&Data(Binary::from(vec![
        0x00, 0x53, 0x75, 0xb0, 0xd1, 0x02, 0x10, 0xff, 0x0a,
    ])))
    .unwrap();
    let good = serde_amqp::to_vec(&Data(Binary::from(data(10)))).unwrap();
    let mut checker = AmqpFrameChecker::new(AmqpFrameLimits::default());
    assert_eq!(
        checker.check(&transfer_with(0, Some(0), false, false, false, &hostile)),
        Ok(())
    );
    assert_eq!(
        checker.check(&transfer_with(
            0,
            Some(AMQP_BATCH_FORMAT),
            false,
            false,
            false,
            &good
        )),
        Ok(())
    );
    assert!(matches!(
        checker.check(&transfer_with(
            0,
            Some(AMQP_BATCH_FORMAT),
            false,
            false,
            false,
            &hostile
        )),
        Err(AmqpFrameError::Encoding(_))
    ));
    // Over two frames, the second leaving the format out: the first frame's format decides.
    let (a, b) = hostile.split_at(4);
    let mut checker = AmqpFrameChecker::new(AmqpFrameLimits::default());
    assert_eq!(
        checker.check(&transfer_with(
            1,
            Some(AMQP_BATCH_FORMAT),
            true,
            false,
            false,
            a
        )),
        Ok(())
    );
    assert!(matches!(
        checker.check(&transfer_with(1, None, false, false, false, b)),
        Err(AmqpFrameError::Encoding(_))
    ));
}
