//! Reading: an ordered push consumer per partition, kept between reads.
//!
//! A reader that goes forward (a consumer group, a tail) reads each record once from a consumer
//! that the server pushes to with flow control; a read anywhere else replaces the consumer. The
//! end of a read is the stream's last sequence as of the read's start, so a read never waits
//! for records that do not exist yet.

use async_nats::jetstream::consumer::DeliverPolicy;
use async_nats::jetstream::consumer::push::{Ordered, OrderedConfig};
use bytes::Bytes;
use futures::StreamExt;
use iot_core::{Error, Offset, ReadLimits, Result, StoredRecord};

use super::error::{backend, request};
use super::factory::Shared;
use super::partition::Partition;

pub(crate) struct Cursor {
    /// Stream sequence of the next message this cursor hands out.
    next_seq: u64,
    messages: Ordered,
    /// A message taken from the consumer but not returned (it did not fit the byte budget).
    peeked: Option<(u64, Bytes)>,
}

impl std::fmt::Debug for Cursor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cursor")
            .field("next_seq", &self.next_seq)
            .finish_non_exhaustive()
    }
}

impl Cursor {
    async fn open(shared: &Shared, part: &Partition, start_seq: u64) -> Result<Self> {
        let config = OrderedConfig {
            deliver_subject: shared.client.new_inbox(),
            filter_subject: part.subject.to_string(),
            deliver_policy: DeliverPolicy::ByStartSequence {
                start_sequence: start_seq,
            },
            ..OrderedConfig::default()
        };
        let messages = shared
            .timed("creating a read consumer", async {
                let consumer = part.stream.create_consumer(config).await.map_err(request)?;
                consumer.messages().await.map_err(request)
            })
            .await?;
        Ok(Cursor {
            next_seq: start_seq,
            messages,
            peeked: None,
        })
    }

    async fn next_message(&mut self) -> Result<(u64, Bytes)> {
        if let Some(m) = self.peeked.take() {
            return Ok(m);
        }
        let message = self
            .messages
            .next()
            .await
            .ok_or(Error::Closed)?
            .map_err(request)?;
        let seq = message
            .info()
            .map_err(|e| backend(e, false))?
            .stream_sequence;
        Ok((seq, message.payload.clone()))
    }
}

pub(crate) async fn read(
    shared: &Shared,
    part: &Partition,
    from: Offset,
    limits: ReadLimits,
) -> Result<Vec<StoredRecord>> {
    limits.validate()?;
    let bounds = part.bounds(shared).await?;
    part.check(from, bounds)?;
    if from == bounds.next {
        return Ok(Vec::new());
    }
    let last_seq = bounds.next.get();
    let start_seq = from.get() + 1;
    let mut guard = part.cursor.lock().await;
    if guard.as_ref().is_none_or(|c| c.next_seq != start_seq) {
        *guard = None;
        *guard = Some(Cursor::open(shared, part, start_seq).await?);
    }
    let Some(cursor) = guard.as_mut() else {
        return Err(Error::Closed);
    };
    let result = shared
        .timed("reading", fill(part, cursor, last_seq, limits))
        .await;
    if result.is_err() {
        // The consumer's position is unknown after a failure; the next read starts afresh.
        *guard = None;
    }
    result
}

async fn fill(
    part: &Partition,
    cursor: &mut Cursor,
    last_seq: u64,
    limits: ReadLimits,
) -> Result<Vec<StoredRecord>> {
    let mut out = Vec::new();
    let mut bytes = 0usize;
    while out.len() < limits.max_records && cursor.next_seq <= last_seq {
        let (seq, payload) = cursor.next_message().await?;
        if seq < cursor.next_seq {
            // A redelivery after the client recreated its consumer.
            continue;
        }
        if seq > cursor.next_seq {
            // Retention removed records while we read: the contract's error if nothing was read.
            if out.is_empty() {
                return Err(Error::OffsetTruncated {
                    partition: part.id,
                    offset: Offset(cursor.next_seq - 1),
                    earliest: Offset(seq - 1),
                });
            }
            cursor.peeked = Some((seq, payload));
            break;
        }
        let decoded = part.decode(seq, &payload)?;
        let size = decoded.record.size_bytes();
        if !out.is_empty() && bytes + size > limits.max_bytes {
            cursor.peeked = Some((seq, payload));
            break;
        }
        bytes += size;
        out.push(StoredRecord::new(
            part.id,
            Offset(seq - 1),
            decoded.enqueued_time,
            decoded.record,
        ));
        cursor.next_seq = seq + 1;
    }
    Ok(out)
}
