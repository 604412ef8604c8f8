//! One partition: its stream, its append state and its read cursor.

use std::sync::Mutex as SyncMutex;
use std::sync::atomic::AtomicBool;

use async_nats::Subject;
use async_nats::jetstream::stream::Stream;
use iot_core::{Error, Offset, PartitionId, Result, Timestamp};
use tokio::sync::Mutex;

use super::acks::AckInbox;
use super::append::Waiting;
use super::codec;
use super::cursor::Cursor;
use super::error::{Inconsistent, request};
use super::factory::Shared;
use super::tail::Watcher;

/// What an appender must know about the end of the partition: the last stream sequence (the
/// offset of the next record), the bytes held before it, and the last enqueued time.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Tail {
    pub(crate) last_seq: u64,
    pub(crate) size_after: u64,
    pub(crate) last_time: Timestamp,
}

/// What this process's appends to the partition hold, one batch at a time: the tail and the
/// subscription their acknowledgements come from.
#[derive(Debug, Default)]
pub(crate) struct Writer {
    /// `None` until loaded from the server, and again after any failed append (the server may
    /// hold more than we know).
    pub(crate) tail: Option<Tail>,
    /// `None` until the first append, and again after the client closed its subscription.
    pub(crate) acks: Option<AckInbox>,
}

/// The partition's held range: offsets `earliest .. next`.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Bounds {
    pub(crate) earliest: Offset,
    pub(crate) next: Offset,
}

#[derive(Debug)]
pub(crate) struct Partition {
    pub(crate) id: PartitionId,
    pub(crate) stream: Stream,
    /// Every subject of the partition's stream (`BASE.*`), for consumers.
    pub(crate) subject: Subject,
    /// This writer's own subject in the stream (`BASE.WRITER`), for appends: each message says
    /// which writer stored it.
    pub(crate) publish_subject: Subject,
    /// Held by the append in progress: one batch at a time.
    pub(crate) writer: Mutex<Writer>,
    pub(crate) cursor: Mutex<Option<Cursor>>,
    pub(crate) watcher: SyncMutex<Option<Watcher>>,
    /// Appends waiting for the partition's flusher (group commit, see `append`).
    pub(crate) queue: SyncMutex<Vec<Waiting>>,
    /// Whether a flusher task is running for this partition.
    pub(crate) flushing: AtomicBool,
}

impl Partition {
    pub(crate) fn new(id: PartitionId, stream: Stream, base: &str, writer: &str) -> Self {
        Partition {
            id,
            stream,
            subject: Subject::from(format!("{base}.*")),
            publish_subject: Subject::from(format!("{base}.{writer}")),
            writer: Mutex::new(Writer::default()),
            cursor: Mutex::new(None),
            watcher: SyncMutex::new(None),
            queue: SyncMutex::new(Vec::new()),
            flushing: AtomicBool::new(false),
        }
    }

    pub(crate) fn name(&self) -> &str {
        &self.stream.cached_info().config.name
    }

    /// Offsets are stream sequences minus one: the stream's first message is offset 0, and a
    /// purge (all retention ever does) moves the first sequence without renumbering.
    pub(crate) async fn bounds(&self, shared: &Shared) -> Result<Bounds> {
        let info = shared
            .timed("reading stream state", async {
                self.stream.get_info().await.map_err(request)
            })
            .await?;
        let state = info.state;
        let next = Offset(state.last_sequence);
        let earliest = if state.messages == 0 {
            next
        } else {
            Offset(state.first_sequence.saturating_sub(1))
        };
        Ok(Bounds { earliest, next })
    }

    /// The stored record at offset `offset`, decoded.
    pub(crate) async fn get(&self, shared: &Shared, offset: Offset) -> Result<codec::Decoded> {
        let seq = offset.get() + 1;
        let message = shared
            .timed("reading a message", async {
                self.stream.get_raw_message(seq).await.map_err(request)
            })
            .await?;
        self.decode(seq, &message.payload)
    }

    pub(crate) fn decode(&self, seq: u64, payload: &bytes::Bytes) -> Result<codec::Decoded> {
        codec::decode(payload).map_err(|e| {
            super::error::backend(
                Inconsistent {
                    stream: self.name().to_owned(),
                    reason: format!("sequence {seq}: {e}"),
                },
                false,
            )
        })
    }

    /// Reads the tail from the server: the state, then the last message.
    pub(crate) async fn load_tail(&self, shared: &Shared) -> Result<Tail> {
        let bounds = self.bounds(shared).await?;
        if bounds.earliest == bounds.next {
            // Empty (never written, or purged): byte sums and times restart, and nothing held
            // can be compared with them.
            return Ok(Tail {
                last_seq: bounds.next.get(),
                size_after: 0,
                last_time: Timestamp::EPOCH,
            });
        }
        let last = self.get(shared, Offset(bounds.next.get() - 1)).await?;
        Ok(Tail {
            last_seq: bounds.next.get(),
            size_after: last.size_before + last.record.size_bytes() as u64,
            last_time: last.enqueued_time,
        })
    }

    pub(crate) fn check(&self, offset: Offset, bounds: Bounds) -> Result<()> {
        if offset < bounds.earliest {
            return Err(Error::OffsetTruncated {
                partition: self.id,
                offset,
                earliest: bounds.earliest,
            });
        }
        if offset > bounds.next {
            return Err(Error::OffsetBeyondEnd {
                partition: self.id,
                offset,
                next: bounds.next,
            });
        }
        Ok(())
    }
}
