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
use bytestring::ByteString;
use iot_core::storage::Durability;
use iot_core::{FileLog, FileLogConfig, GroupName, Log, Offset, PartitionId, ReadLimits, Record};
use tokio::sync::{Mutex, Notify, oneshot};

use super::error::ClientError;
use super::options::{OutboxConfig, WhenFull};

/// One queued message: its topic (with the property bag) and payload.
#[derive(Debug, Clone)]
pub(crate) struct Entry {
    pub(crate) seq: u64,
    /// Shared, not copied, when the entry is sent (again).
    pub(crate) topic: ByteString,
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
                        topic: ByteString::from(topic),
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
                        topic: ByteString::from(topic),
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
    #[cfg(test)]
    pub(crate) async fn acknowledge(&self, seq: u64) -> Result<(), ClientError> {
        self.acknowledge_all(&[seq]).await
    }

    /// [`acknowledge`](Self::acknowledge) for a run of PUBACKs read together: one lock, one
    /// wake-up of senders waiting for room and (file) one commit for all of them.
    pub(crate) async fn acknowledge_all(&self, seqs: &[u64]) -> Result<(), ClientError> {
        if seqs.is_empty() {
            return Ok(());
        }
        let mut state = self.state.lock().await;
        let mut removed = false;
        for &seq in seqs {
            // PUBACKs come in send order, so the entry is nearly always at the front.
            let Some(index) = state.queue.iter().position(|e| e.seq == seq) else {
                continue;
            };
            state.queue.remove(index);
            removed = true;
            if let Some(waiter) = state.waiters.remove(&seq) {
                let _ = waiter.send(());
            }
        }
        if !removed {
            return Ok(());
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

#[cfg(test)]
mod tests {
    use super::*;

    async fn enqueue_n(outbox: &Outbox, n: usize) -> Vec<Delivery> {
        let mut d = Vec::new();
        for i in 0..n {
            d.push(
                outbox
                    .enqueue(format!("t/{i}"), Bytes::from(i.to_string()))
                    .await
                    .expect("enqueue"),
            );
        }
        d
    }

    fn payloads(entries: &[Entry]) -> Vec<String> {
        entries
            .iter()
            .map(|e| String::from_utf8_lossy(&e.payload).into_owned())
            .collect()
    }

    #[tokio::test]
    async fn acknowledgements_in_any_order_leave_the_rest_in_order() {
        let outbox = Outbox::open(&OutboxConfig::Memory {
            capacity: 10,
            when_full: WhenFull::Error,
        })
        .await
        .expect("open");
        let mut deliveries = enqueue_n(&outbox, 4).await;
        outbox.acknowledge(2).await.expect("ack");
        outbox.acknowledge(0).await.expect("ack");
        let d3 = deliveries.pop().expect("d3");
        let d2 = deliveries.pop().expect("d2");
        d2.acknowledged().await.expect("2 acknowledged");
        assert_eq!(outbox.oldest().await, 1);
        assert_eq!(payloads(&outbox.entries_from(0, 10).await), ["1", "3"]);
        assert_eq!(payloads(&outbox.entries_from(2, 10).await), ["3"]);
        assert_eq!(payloads(&outbox.entries_from(0, 1).await), ["1"]);
        // Acknowledging twice (a duplicate PUBACK) changes nothing.
        outbox.acknowledge(2).await.expect("ack");
        assert_eq!(outbox.len().await, 2);
        drop(d3);
        let dropped_sender = outbox.acknowledge(3).await;
        assert!(
            dropped_sender.is_ok(),
            "a sender that stopped waiting is fine"
        );
    }

    #[tokio::test]
    async fn a_file_outbox_reopens_at_the_oldest_unacknowledged_message() {
        let dir = tempfile::tempdir().expect("dir");
        let config = OutboxConfig::File {
            dir: dir.path().to_path_buf(),
            capacity: 10,
            when_full: WhenFull::Error,
            durability: Durability::Fsync,
        };
        {
            let outbox = Outbox::open(&config).await.expect("open");
            let _d = enqueue_n(&outbox, 5).await;
            outbox.acknowledge(0).await.expect("ack");
            outbox.acknowledge(1).await.expect("ack");
            // Out of order: 3 is acknowledged but 2 is not, so 3 comes back (at least once).
            outbox.acknowledge(3).await.expect("ack");
        }
        let outbox = Outbox::open(&config).await.expect("reopen");
        let entries = outbox.entries_from(0, 10).await;
        assert_eq!(payloads(&entries), ["2", "3", "4"]);
        assert_eq!(entries[0].topic, "t/2");
        // New messages continue the sequence after the old ones.
        let _d = outbox
            .enqueue("t/5".into(), Bytes::from("5"))
            .await
            .expect("enqueue");
        assert_eq!(
            payloads(&outbox.entries_from(0, 10).await),
            ["2", "3", "4", "5"]
        );
    }
}
