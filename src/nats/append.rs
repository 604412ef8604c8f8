//! Appending a batch: one message per record, pipelined, chained so that the server stores a
//! prefix of the batch and nothing else.
//!
//! JetStream 2.9 has no atomic multi-message publish, so a batch is published record by record.
//! Appends to one partition are serialised in this process (the partition's tail lock), and
//! concurrent ones are committed together: one flusher task per partition publishes everything
//! queued as one batch, and an append that finds its partition idle publishes its own
//! ([`append`]). Every
//! record carries `Nats-Expected-Last-Sequence` (the end this writer knows, plus the records of
//! the batch before it); every record a later one follows carries a `Nats-Msg-Id` of its own
//! ([`message_id`]: the writer's random name and the sequence the record is meant for), and every
//! record after the first `Nats-Expected-Last-Msg-Id` naming the record before it. So the server
//! stores record *i* only if the stream's last message is this writer's record *i − 1*:
//!
//! * with no other writer, a batch is stored whole and contiguous;
//! * if it fails part-way (the server went away, or a writer in another process appended right
//!   after one of its records), what is stored is exactly the acknowledged prefix, never a record
//!   after a gap, and [`AppendFailed`] says how many. The stream sequence alone would not give
//!   this: record *i* expecting sequence *n* is also satisfied by another writer's record at *n*.
//!
//! Another process can therefore cut a batch short, but never put a record inside it. The
//! contract's batch atomicity is a capability this log denies (`LogCapabilities`).
//!
//! Records are published with the core client and their acknowledgements read from the
//! partition's own subscription ([`AckInbox`]), not as one JetStream request per record.
//!
//! Why message ids rather than each writer's subject sequence (the previous chain, as safe on one
//! server and as costly): in a cluster nats-server 2.9 checks a subject sequence before
//! replicating, against the leader's store, where a pipelined record's predecessor is not yet,
//! so every batch failed after its first record; message ids are checked where each replica
//! stores the message. `docs/log.md` (*Appends*) has the argument, `docs/performance.md` the
//! figures.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use async_nats::client::PublishErrorKind as CorePublishErrorKind;
use async_nats::jetstream::context::{PublishError, PublishErrorKind};
use async_nats::{HeaderMap, header};
use bytes::BytesMut;
use iot_core::{Appended, Offset, Record, Result, Timestamp};
use tokio::sync::oneshot;

use super::acks::{AckInbox, WINDOW};
use super::codec;
use super::error::{AppendFailed, Inconsistent, Timeout, backend};
use super::factory::Shared;
use super::partition::{Partition, Tail};

/// Attempts when another writer moved the tail before our first record was stored. Several
/// gateway instances append to the same partitions (docs/cluster.md): with three, a device's
/// telemetry failed under two instances' load (a kill -9 test counted 19–163 sessions closed for
/// it in one run), so a writer that lost the race tries again after a random pause that grows
/// with each loss, which lets the writers fall out of step.
const ATTEMPTS: u32 = 16;
/// How often an append that stored nothing goes back to the queue when another writer cut its
/// group's batch short or kept winning the partition (each round is up to [`ATTEMPTS`] attempts):
/// a contested partition then costs the device time, not its connection.
const REQUEUES: u32 = 8;
/// The longest pause between two attempts.
const MAX_PAUSE_US: u64 = 20_000;

/// One `append` call waiting for its partition's flusher.
#[derive(Debug)]
pub(crate) struct Waiting {
    records: Vec<Record>,
    bytes: usize,
    /// How often it went back to the queue after another writer cut its batch short.
    requeued: u32,
    reply: oneshot::Sender<Result<Appended>>,
}

/// Appends `records` to `part`. Concurrent appends to one partition are committed together
/// (group commit): each call queues its batch; one flusher task per partition takes everything
/// queued (up to the batch limits), publishes it as one chained batch and answers each call with
/// its own part. While a batch is on its way the next one gathers, so a partition has one
/// publish round trip in flight however many devices write it, and writers in other processes
/// meet fewer, larger batches. The flusher is a task of its own: a caller that stops waiting
/// does not cut short a batch that also carries other callers' records.
///
/// An append that finds the partition idle (no flusher, nothing queued) publishes its batch
/// itself, in its own task, holding the partition's writer slot as a flusher would: there is no
/// one to gather with, and handing a lone batch to a new task and waiting for its answer is a
/// cost a sequential appender pays on every batch (`docs/performance.md`). Appends that arrive
/// meanwhile queue as usual and get a flusher when it is done ([`Slot`]).
pub(crate) async fn append(
    shared: &Arc<Shared>,
    part: &Arc<Partition>,
    records: Vec<Record>,
) -> Result<Appended> {
    let bytes = shared.limits.check_batch(&records)?;
    // Taking the slot under the queue's lock: nobody queued ahead of this append.
    let idle = {
        let queue = lock(&part.queue);
        queue.is_empty() && !part.flushing.swap(true, Ordering::AcqRel)
    };
    if idle {
        let _slot = Slot {
            shared: Arc::clone(shared),
            part: Arc::clone(part),
        };
        return append_alone(shared, part, &records).await;
    }
    let (reply, answer) = oneshot::channel();
    lock(&part.queue).push(Waiting {
        records,
        bytes,
        requeued: 0,
        reply,
    });
    if !part.flushing.swap(true, Ordering::AcqRel) {
        spawn_flusher(Arc::clone(shared), Arc::clone(part));
    }
    answer.await.map_err(|_| {
        backend(
            Inconsistent {
                stream: part.name().to_owned(),
                reason: "the partition's flusher stopped without answering".into(),
            },
            true,
        )
    })?
}

/// A batch published by its own caller, answered as the flusher answers an append alone in its
/// batch: as it came out, except that losing the partition to another writer before any record
/// was stored goes round again, as a requeued append would.
async fn append_alone(shared: &Shared, part: &Partition, records: &[Record]) -> Result<Appended> {
    let mut rounds = 0;
    loop {
        match append_batch(shared, part, records).await {
            Ok(appended) => return Ok(appended),
            Err(Failure::Publish(failed, _))
                if failed.acked == 0 && lost_race(failed.kind) && rounds < REQUEUES =>
            {
                rounds += 1;
                tracing::debug!(
                    stream = part.name(),
                    rounds,
                    "another writer kept the partition; the append goes again"
                );
            }
            Err(Failure::Publish(failed, _)) => return Err(failed.into()),
            Err(Failure::Other(e)) => return Err(e),
        }
    }
}

/// The partition's writer slot held by an append publishing its own batch. Released when that
/// append is done or its caller stops waiting (the tail is then reloaded before the next batch,
/// as after any failure): appends that queued meanwhile are handed to a flusher.
struct Slot {
    shared: Arc<Shared>,
    part: Arc<Partition>,
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.part.flushing.store(false, Ordering::Release);
        // As at a flusher's end: an append that queued while the slot was held started no
        // flusher; start one unless another has started since.
        if !lock(&self.part.queue).is_empty() && !self.part.flushing.swap(true, Ordering::AcqRel) {
            spawn_flusher(Arc::clone(&self.shared), Arc::clone(&self.part));
        }
    }
}

fn lock(queue: &std::sync::Mutex<Vec<Waiting>>) -> std::sync::MutexGuard<'_, Vec<Waiting>> {
    // Pushing and draining a vector cannot leave it half-changed: a poisoned lock is still sound.
    queue
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Starts a flusher for `part`, whose `flushing` flag the caller has just set. Outside a runtime
/// (a slot dropped while its runtime shuts down) or if the task never runs, its guard fails what
/// is queued and clears the flag.
fn spawn_flusher(shared: Arc<Shared>, part: Arc<Partition>) {
    let guard = Stranded {
        part: Arc::clone(&part),
        armed: true,
    };
    if let Ok(runtime) = tokio::runtime::Handle::try_current() {
        runtime.spawn(flush_queue(shared, part, guard));
    }
}

/// The flusher: commits what is queued, batch after batch, until the queue is empty.
async fn flush_queue(shared: Arc<Shared>, part: Arc<Partition>, mut guard: Stranded) {
    loop {
        let batch = take_batch(&shared, &part);
        if batch.is_empty() {
            part.flushing.store(false, Ordering::Release);
            // An append that queued after `take_batch` but saw `flushing` still set spawned no
            // flusher: look again, and carry on unless another flusher has started since.
            if lock(&part.queue).is_empty() || part.flushing.swap(true, Ordering::AcqRel) {
                guard.armed = false;
                return;
            }
            continue;
        }
        commit(&shared, &part, batch).await;
    }
}

/// A flusher that ends any other way than by finding the queue empty (its runtime shut down,
/// or a panic, or it never ran) must not leave `flushing` set: no append would start another,
/// and every later one would wait forever. It fails what is queued (their callers get an error
/// at once) and lets the next append start a flusher.
struct Stranded {
    part: Arc<Partition>,
    armed: bool,
}

impl Drop for Stranded {
    fn drop(&mut self) {
        if self.armed {
            drop(std::mem::take(&mut *lock(&self.part.queue)));
            self.part.flushing.store(false, Ordering::Release);
        }
    }
}

/// The queued appends, oldest first, that fit one batch (at least one).
fn take_batch(shared: &Shared, part: &Partition) -> Vec<Waiting> {
    let mut queue = lock(&part.queue);
    let (mut records, mut bytes, mut take) = (0usize, 0usize, 0usize);
    for waiting in queue.iter() {
        let (r, b) = (records + waiting.records.len(), bytes + waiting.bytes);
        if take > 0 && (r > shared.limits.max_batch_records || b > shared.limits.max_batch_bytes) {
            break;
        }
        (records, bytes, take) = (r, b, take + 1);
    }
    queue.drain(..take).collect()
}

/// Publishes the appends of `batch` as one batch and answers each. When another writer cut in
/// (after part of it was stored, or before any), the appends wholly after the cut stored
/// nothing: they go back to the front of the queue (a few times at most) instead of failing, so
/// a device's message is refused only when the partition stays contested.
async fn commit(shared: &Shared, part: &Partition, batch: Vec<Waiting>) {
    let mut parts = Vec::with_capacity(batch.len());
    let mut records = Vec::with_capacity(batch.iter().map(|w| w.records.len()).sum());
    for waiting in batch {
        parts.push((
            waiting.records.len() as u64,
            waiting.bytes,
            waiting.requeued,
            waiting.reply,
        ));
        records.extend(waiting.records);
    }
    let result = append_batch(shared, part, &records).await;
    // Where another writer cut in: after some of ours was stored, or before any of it (once
    // `append_batch` has lost every attempt, under another writer that keeps the stream busy).
    let cut_at = match &result {
        Err(Failure::Publish(failed, _)) if lost_race(failed.kind) => Some(failed.acked),
        _ => None,
    };
    if parts.len() == 1 && cut_at.is_none() {
        // Alone in its batch (no concurrent appends): the outcome as it is, source and all.
        let answer = match result {
            Ok(appended) => Ok(appended),
            Err(Failure::Publish(failed, _)) => Err(failed.into()),
            Err(Failure::Other(e)) => Err(e),
        };
        if let Some((_, _, _, reply)) = parts.pop() {
            let _ = reply.send(answer);
        }
        return;
    }
    let mut skip = 0u64;
    let mut rest = records.into_iter();
    let mut again = Vec::new();
    for (count, bytes, requeued, reply) in parts {
        let own: Vec<Record> = rest.by_ref().take(count as usize).collect();
        if cut_at.is_some_and(|acked| skip >= acked) && requeued < REQUEUES {
            again.push(Waiting {
                records: own,
                bytes,
                requeued: requeued + 1,
                reply,
            });
            skip += count;
            continue;
        }
        let answer = match &result {
            Ok(appended) => Ok(Appended {
                partition: appended.partition,
                first: Offset(appended.first.0 + skip),
                count,
                enqueued_time: appended.enqueued_time,
            }),
            Err(Failure::Publish(failed, enqueued_time)) => {
                let mine = failed.for_part(skip, count);
                if mine.acked == count {
                    // Wholly before the cut: stored, and that is all this append asked.
                    Ok(Appended {
                        partition: mine.partition,
                        first: mine.first,
                        count,
                        enqueued_time: *enqueued_time,
                    })
                } else {
                    Err(mine.into())
                }
            }
            Err(Failure::Other(e)) => Err(clone_error(e)),
        };
        skip += count;
        // The caller may have stopped waiting; what it appended is stored (or not) all the same.
        let _ = reply.send(answer);
    }
    if !again.is_empty() {
        tracing::debug!(
            stream = part.name(),
            appends = again.len(),
            "another writer cut in; the appends after the cut go again"
        );
        lock(&part.queue).splice(0..0, again);
    }
}

fn lost_race(kind: PublishErrorKind) -> bool {
    matches!(
        kind,
        PublishErrorKind::WrongLastSequence | PublishErrorKind::WrongLastMessageId
    )
}

/// Another failure than a refused publish (a timeout, an inconsistent stream), as each append
/// of the batch reports it: the same message and retryability, the original as the source.
fn clone_error(e: &iot_core::Error) -> iot_core::Error {
    backend(SharedFailure(e.to_string()), e.is_retryable())
}

/// The failure of a group-committed batch, as one of its appends sees it.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
struct SharedFailure(String);

/// Appends one (combined) batch, retrying when another writer moved the tail first.
async fn append_batch(
    shared: &Shared,
    part: &Partition,
    records: &[Record],
) -> std::result::Result<Appended, Failure> {
    let mut writer = part.writer.lock().await;
    let mut attempt: u32 = 0;
    loop {
        attempt += 1;
        let tail = match writer.tail.take() {
            Some(tail) => tail,
            None => part.load_tail(shared).await.map_err(Failure::Other)?,
        };
        let acks = match &mut writer.acks {
            Some(acks) => acks,
            empty => empty.insert(
                AckInbox::open(&shared.client)
                    .await
                    .map_err(|e| Failure::Other(backend(e, true)))?,
            ),
        };
        // `writer.tail` stays `None` unless the batch is stored whole: after any failure the
        // next append reloads the tail from the server.
        let outcome = publish(shared, part, records, tail, acks).await;
        if writer.acks.as_ref().is_some_and(AckInbox::is_closed) {
            // The client was closed for good: a later append subscribes again (and fails
            // there, with the client's own error, if it is still closed).
            writer.acks = None;
        }
        match outcome {
            Ok((appended, tail)) => {
                writer.tail = Some(tail);
                return Ok(appended);
            }
            Err(Failure::Publish(e, _))
                if e.acked == 0 && lost_race(e.kind) && attempt < ATTEMPTS =>
            {
                // Another writer appended first; none of our records was stored (each expects
                // the one before it), so the batch can go again after the new tail.
                tracing::debug!(
                    stream = part.name(),
                    attempt,
                    "tail moved by another writer; retrying"
                );
                tokio::time::sleep(pause_after_lost_race(attempt)).await;
            }
            Err(failure) => return Err(failure),
        }
    }
}

/// A random pause of up to 200 µs · 2^attempt (at most 20 ms): short against an append's round
/// trip at first, then long enough that two writers stop colliding.
fn pause_after_lost_race(attempt: u32) -> std::time::Duration {
    let cap = 200u64
        .saturating_mul(1u64 << attempt.min(16))
        .min(MAX_PAUSE_US);
    std::time::Duration::from_micros(rand::random::<u64>() % cap.max(1))
}

/// The message id of this writer's record meant for stream sequence `seq`. No other message
/// ever has it within the server's duplicate window (which drops a message whose id it already
/// holds): writers' names are random, and a writer stores at most one record at a sequence.
fn message_id(writer: &str, seq: u64) -> String {
    format!("{writer}.{seq}")
}

enum Failure {
    /// The batch failed; the enqueued time its records were given.
    Publish(AppendFailed, Timestamp),
    Other(iot_core::Error),
}

async fn publish(
    shared: &Shared,
    part: &Partition,
    records: &[Record],
    tail: Tail,
    inbox: &mut AckInbox,
) -> std::result::Result<(Appended, Tail), Failure> {
    let enqueued_time = Timestamp::now().max(tail.last_time);
    let first = Offset(tail.last_seq);
    let total = records.len() as u64;
    let mut size = tail.size_after;
    let mut acks = inbox.begin(records.len());
    let mut sent = 0usize;
    let mut send_error = None;
    // One allocation for the whole batch's encodings; each message's payload is a slice of it.
    let mut buf = BytesMut::with_capacity(records.iter().map(codec::encoded_len).sum());
    // Sending waits only for room in the client's buffer and for the window's acknowledgements,
    // but bound it too: a stuck connection must not hang the caller.
    let send = async {
        // The id of record i − 1, which record i names.
        let mut previous: Option<String> = None;
        for (i, record) in records.iter().enumerate() {
            // The stream's last sequence before record i: record i − 1's, if it was stored.
            let before = tail.last_seq + i as u64;
            let mut headers = HeaderMap::new();
            headers.insert(header::NATS_EXPECTED_LAST_SEQUENCE, before.to_string());
            // Ids go in as `String`s, which the header map keeps as they are.
            if let Some(id) = previous.take() {
                // ... and that last message is ours: record i − 1 of this batch.
                headers.insert(header::NATS_EXPECTED_LAST_MESSAGE_ID, id);
            }
            if i + 1 < records.len() {
                // Only a record that a later one names needs an id.
                let id = message_id(&shared.writer, before + 1);
                headers.insert(header::NATS_MESSAGE_ID, id.clone());
                previous = Some(id);
            }
            size += record.size_bytes() as u64;
            if sent.saturating_sub(acks.received()) >= WINDOW {
                acks.wait_for(sent + 1 - WINDOW).await;
            }
            let payload = codec::encode_into(&mut buf, record, enqueued_time, size);
            match shared
                .client
                .publish_with_reply_and_headers(
                    part.publish_subject.clone(),
                    acks.reply(i),
                    headers,
                    payload,
                )
                .await
            {
                Ok(()) => sent += 1,
                Err(e) => {
                    send_error = Some(PublishError::with_source(
                        match e.kind() {
                            CorePublishErrorKind::MaxPayloadExceeded => {
                                PublishErrorKind::MaxPayloadExceeded
                            }
                            _ => PublishErrorKind::BrokenPipe,
                        },
                        e,
                    ));
                    break;
                }
            }
            // What has come back meanwhile, so that the subscription's channel never fills.
            acks.take_ready();
        }
    };
    if tokio::time::timeout(shared.config.request_timeout, send)
        .await
        .is_err()
    {
        return Err(Failure::Other(backend(
            Timeout {
                what: "sending an append",
                millis: shared.config.request_timeout.as_millis() as u64,
            },
            true,
        )));
    }
    // The rest of the acknowledgements, under one deadline for the batch; what has not come by
    // then counts as timed out.
    let _ = tokio::time::timeout(shared.config.request_timeout, acks.wait_for(sent)).await;
    let missing = if acks.is_closed() {
        PublishErrorKind::BrokenPipe
    } else {
        PublishErrorKind::TimedOut
    };
    let acks = acks
        .into_results()
        .into_iter()
        .take(sent)
        .map(|ack| ack.unwrap_or_else(|| Err(PublishError::new(missing))));
    let mut acked = 0u64;
    let mut failure = None;
    for ack in acks {
        match ack {
            Ok(sequence) if failure.is_none() => {
                let expected = tail.last_seq + 1 + acked;
                if sequence != expected {
                    return Err(Failure::Other(backend(
                        Inconsistent {
                            stream: part.name().to_owned(),
                            reason: format!(
                                "record stored at sequence {sequence} where {expected} was expected (another writer on a stream that was empty?)"
                            ),
                        },
                        false,
                    )));
                }
                acked += 1;
            }
            Ok(sequence) => {
                // Each record names the one before it, so none can be stored after one that was
                // not: the server broke the chain.
                return Err(Failure::Other(backend(
                    Inconsistent {
                        stream: part.name().to_owned(),
                        reason: format!(
                            "record stored at sequence {sequence} after an earlier record of its batch failed"
                        ),
                    },
                    false,
                )));
            }
            Err(e) => {
                if failure.is_none() {
                    failure = Some(e);
                }
            }
        }
    }
    if let Some(e) = failure.or(send_error) {
        return Err(Failure::Publish(
            AppendFailed::new(part.id, first, acked, total, e),
            enqueued_time,
        ));
    }
    let appended = Appended {
        partition: part.id,
        first,
        count: total,
        enqueued_time,
    };
    let tail = Tail {
        last_seq: tail.last_seq + total,
        size_after: size,
        last_time: enqueued_time,
    };
    Ok((appended, tail))
}
