//! The outbox: telemetry waits here until the hub acknowledged it, so that sends survive a lost
//! connection (in memory) or a restart of the process (in a `FileLog`).
//!
//! Both kinds keep the unacknowledged messages in a queue in memory, in the order they were
//! enqueued, each with a sequence number; the file kind also appends each message to a one-partition
//! `FileLog` before it is queued (its offset is the sequence number) and commits, as the consumer
//! group `delivered`, the oldest offset still unacknowledged. Opening a file outbox queues every
//! record from that offset on. The connection task sends from the queue in order and removes an
//! entry when its PUBACK arrives; on a new connection it sends again everything still queued.

use std::collections::{HashMap, VecDeque};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use iot_core::storage::Durability;
use iot_core::{FileLog, FileLogConfig, GroupName, Log, Offset, PartitionId, ReadLimits, Record};
use tokio::sync::{Mutex, Notify, oneshot};

use super::error::ClientError;
use super::options::{OutboxConfig, WhenFull};

/// One queued message: its topic (with the property bag) and payload.
#[derive(Debug, Clone)]
pub(crate) struct Entry {
    pub(crate) seq: u64,
    pub(crate) topic: String,
    pub(crate) payload: Bytes,
}

#[derive(Debug, Default)]
struct State {
    queue: VecDeque<Entry>,
    /// Next sequence number in memory; a file outbox uses the log's offsets.
    next_seq: u64,
    waiters: HashMap<u64, oneshot::Sender<()>>,
}

/// A message that is in the outbox; awaiting it waits for the hub's PUBACK.
#[derive(Debug)]
pub struct Delivery {
    rx: oneshot::Receiver<()>,
}

impl Delivery {
    /// Waits until the hub acknowledged the message. Fails with [`ClientError::Closed`] if the
    /// client closed first (a file outbox still holds the message for the next client).
    pub async fn acknowledged(self) -> Result<(), ClientError> {
        self.rx.await.map_err(|_| ClientError::Closed)
    }
}

#[derive(Debug)]
pub(crate) struct Outbox {
    state: Mutex<State>,
    log: Option<FileLog>,
    capacity: usize,
    when_full: WhenFull,
    /// Woken when a message is queued (the connection task waits on it).
    pub(crate) queued: Notify,
    /// Woken when an acknowledgement makes room.
    room: Notify,
}

const PARTITION: PartitionId = PartitionId(0);

/// How long opening waits for a directory that is still locked. A dropped client's connection
/// task is cancelled asynchronously, so its log (and lock) can outlive the drop by a moment; a
/// new client on the same directory waits for that instead of failing.
const LOCK_PATIENCE: Duration = Duration::from_secs(2);

async fn open_log(dir: &Path, durability: Durability) -> Result<FileLog, ClientError> {
    let config = FileLogConfig::with_partitions(1).durability(durability);
    let give_up = tokio::time::Instant::now() + LOCK_PATIENCE;
    loop {
        match FileLog::open(dir, config.clone()).await {
            Ok(log) => return Ok(log),
            Err(iot_core::Error::Locked { .. }) if tokio::time::Instant::now() < give_up => {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            Err(e) => return Err(ClientError::Outbox(e)),
        }
    }
}
const TOPIC_HEADER: &str = "topic";

fn delivered_group() -> Result<GroupName, ClientError> {
    GroupName::new("delivered").map_err(ClientError::Outbox)
}

impl Outbox {
    pub(crate) async fn open(config: &OutboxConfig) -> Result<Arc<Outbox>, ClientError> {
        let (log, capacity, when_full) = match config {
            OutboxConfig::Memory {
                capacity,
                when_full,
            } => (None, *capacity, *when_full),
            OutboxConfig::File {
                dir,
                capacity,
                when_full,
                durability,
            } => (
                Some(open_log(dir, *durability).await?),
                *capacity,
                *when_full,
            ),
        };
        let mut state = State::default();
        if let Some(log) = &log {
            let committed = log
                .committed(&delivered_group()?, PARTITION)
                .await
                .map_err(ClientError::Outbox)?;
            let earliest = log
                .earliest_offset(PARTITION)
                .await
                .map_err(ClientError::Outbox)?;
            let end = log
                .next_offset(PARTITION)
                .await
                .map_err(ClientError::Outbox)?;
            let mut at = committed.unwrap_or(earliest).max(earliest);
            while at < end {
                let records = log
                    .read(PARTITION, at, ReadLimits::default())
                    .await
                    .map_err(ClientError::Outbox)?;
                let Some(last) = records.last() else { break };
                at = Offset(last.offset.0 + 1);
                for r in records {
                    let topic = r
                        .record
                        .headers
                        .get(TOPIC_HEADER)
                        .unwrap_or_default()
                        .to_string();
                    state.queue.push_back(Entry {
                        seq: r.offset.0,
                        topic,
                        payload: r.record.payload,
                    });
                }
            }
            state.next_seq = end.0;
            if !state.queue.is_empty() {
                tracing::info!(
                    messages = state.queue.len(),
                    "outbox: messages from an earlier run will be sent"
                );
            }
        }
        Ok(Arc::new(Outbox {
            state: Mutex::new(state),
            log,
            capacity: capacity.max(1),
            when_full,
            queued: Notify::new(),
            room: Notify::new(),
        }))
    }

    /// Queues a message (on disk first, for a file outbox), or refuses or waits when full.
    pub(crate) async fn enqueue(
        &self,
        topic: String,
        payload: Bytes,
    ) -> Result<Delivery, ClientError> {
        loop {
            // Registered before the check so that an acknowledgement between the check and the
            // wait is not missed.
            let room = self.room.notified();
            {
                let mut state = self.state.lock().await;
                if state.queue.len() < self.capacity {
                    let seq = match &self.log {
                        Some(log) => {
                            let mut record = Record::new("outbox", payload.clone());
                            record.headers.insert(TOPIC_HEADER, topic.clone());
                            log.append(PARTITION, vec![record])
                                .await
                                .map_err(ClientError::Outbox)?
                                .first
                                .0
                        }
                        None => state.next_seq,
                    };
                    state.next_seq = seq + 1;
                    state.queue.push_back(Entry {
                        seq,
                        topic,
                        payload,
                    });
                    let (tx, rx) = oneshot::channel();
                    state.waiters.insert(seq, tx);
                    drop(state);
                    self.queued.notify_one();
                    return Ok(Delivery { rx });
                }
                if self.when_full == WhenFull::Error {
                    return Err(ClientError::OutboxFull {
                        capacity: self.capacity,
                    });
                }
            }
            room.await;
        }
    }

    /// Up to `n` queued messages with sequence numbers from `from` on, oldest first.
    pub(crate) async fn entries_from(&self, from: u64, n: usize) -> Vec<Entry> {
        let state = self.state.lock().await;
        // The queue is in sequence order (entries leave it, never move in it).
        let start = state.queue.partition_point(|e| e.seq < from);
        state.queue.range(start..).take(n).cloned().collect()
    }

    /// The oldest unacknowledged sequence number (where a new connection starts sending).
    pub(crate) async fn oldest(&self) -> u64 {
        let state = self.state.lock().await;
        state.queue.front().map_or(state.next_seq, |e| e.seq)
    }

    /// Number of messages waiting for their PUBACK.
    pub(crate) async fn len(&self) -> usize {
        self.state.lock().await.queue.len()
    }

    /// The hub acknowledged `seq`: forget it, tell its sender, and (file) move the committed
    /// position to the oldest message still unacknowledged.
    pub(crate) async fn acknowledge(&self, seq: u64) -> Result<(), ClientError> {
        let mut state = self.state.lock().await;
        let Some(index) = state.queue.iter().position(|e| e.seq == seq) else {
            return Ok(());
        };
        state.queue.remove(index);
        if let Some(waiter) = state.waiters.remove(&seq) {
            let _ = waiter.send(());
        }
        let oldest = state.queue.front().map_or(state.next_seq, |e| e.seq);
        drop(state);
        self.room.notify_waiters();
        if let Some(log) = &self.log {
            log.commit(&delivered_group()?, PARTITION, Offset(oldest))
                .await
                .map_err(ClientError::Outbox)?;
        }
        Ok(())
    }
}
