//! `MemoryLog`: the partitioned log in memory.

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;

use async_trait::async_trait;
use tokio::sync::watch;

use crate::error::{Error, Result};
use crate::limits::{LogLimits, ReadLimits};
use crate::log::{Appended, Log, RetentionPolicy, RetentionReport};
use crate::names::GroupName;
use crate::offset::{Offset, PartitionId};
use crate::record::{Record, StoredRecord};
use crate::sync_util::lock;
use crate::timestamp::Timestamp;

/// A [`Log`] held in memory: for tests, examples, and data that may be lost with the process.
///
/// Retention removes single records. Nothing survives the value being dropped.
///
/// ```
/// # tokio_test_block_on(async {
/// use iot_core::{Log, MemoryLog, Offset, PartitionId, ReadLimits, Record};
///
/// let log = MemoryLog::new(4)?;
/// let appended = log.append(PartitionId(0), vec![Record::new("dev-1", "hello")]).await?;
/// let back = log.read(PartitionId(0), appended.first, ReadLimits::default()).await?;
/// assert_eq!(back[0].record.payload, "hello");
/// # Ok::<(), iot_core::Error>(()) });
/// # fn tokio_test_block_on<F: std::future::Future>(f: F) -> F::Output {
/// #     tokio::runtime::Builder::new_current_thread().build().unwrap().block_on(f)
/// # }
/// ```
#[derive(Debug)]
pub struct MemoryLog {
    limits: LogLimits,
    partitions: Vec<MemoryPartition>,
    committed: Mutex<HashMap<(GroupName, PartitionId), Offset>>,
}

/// One partition: its records in chunks (one per appended batch, so that appending never moves
/// records already stored) and a watch of its next offset for tailing readers.
#[derive(Debug)]
struct MemoryPartition {
    state: Mutex<PartitionState>,
    next: watch::Sender<u64>,
}

/// Invariants: chunks are in offset order and contiguous; a chunk's live records are
/// `records[start..]`, the first of which has offset `base`; no chunk is empty; `earliest` is the
/// first chunk's `base` (or `next` when there are none); `bytes` is the size of the live records;
/// `last_time` is the newest enqueued time.
#[derive(Debug, Default)]
struct PartitionState {
    chunks: VecDeque<Chunk>,
    earliest: u64,
    next: u64,
    bytes: u64,
    last_time: Timestamp,
}

/// One appended batch, kept as the producer's own vector: appending moves it in without touching
/// its records, which is what makes appends cheap.
#[derive(Debug)]
struct Chunk {
    base: u64,
    start: usize,
    enqueued_time: Timestamp,
    records: Vec<Record>,
}

impl Chunk {
    fn live(&self) -> &[Record] {
        &self.records[self.start..]
    }

    /// The live records with their offsets.
    fn live_with_offsets(&self) -> impl Iterator<Item = (u64, &Record)> {
        (self.base..).zip(self.live())
    }
}

impl MemoryLog {
    /// A log with `partitions` partitions and default limits.
    pub fn new(partitions: u32) -> Result<Self> {
        Self::with_limits(partitions, LogLimits::default())
    }

    /// A log with `partitions` partitions and the given limits.
    pub fn with_limits(partitions: u32, limits: LogLimits) -> Result<Self> {
        if partitions == 0 {
            return Err(Error::Config {
                reason: "a log needs at least one partition".into(),
            });
        }
        limits.validate()?;
        Ok(MemoryLog {
            limits,
            partitions: (0..partitions)
                .map(|_| MemoryPartition {
                    state: Mutex::new(PartitionState::default()),
                    next: watch::channel(0).0,
                })
                .collect(),
            committed: Mutex::new(HashMap::new()),
        })
    }

    fn partition(&self, partition: PartitionId) -> Result<&MemoryPartition> {
        self.partitions
            .get(partition.index())
            .ok_or(Error::UnknownPartition {
                partition,
                partitions: self.partition_count(),
            })
    }
}

#[async_trait]
impl Log for MemoryLog {
    fn partition_count(&self) -> u32 {
        // The constructor takes the count as a u32.
        self.partitions.len() as u32
    }

    async fn append(&self, partition: PartitionId, records: Vec<Record>) -> Result<Appended> {
        let size = self.limits.check_batch(&records)?;
        let p = self.partition(partition)?;
        let count = records.len() as u64;
        let mut state = lock(&p.state);
        let first = state.next;
        let enqueued_time = Timestamp::now().max(state.last_time);
        state.chunks.push_back(Chunk {
            base: first,
            start: 0,
            enqueued_time,
            records,
        });
        state.last_time = enqueued_time;
        state.next = first + count;
        state.bytes += size as u64;
        p.next.send_replace(first + count);
        Ok(Appended {
            partition,
            first: Offset(first),
            count,
            enqueued_time,
        })
    }

    async fn read(
        &self,
        partition: PartitionId,
        from: Offset,
        limits: ReadLimits,
    ) -> Result<Vec<StoredRecord>> {
        limits.validate()?;
        let p = self.partition(partition)?;
        let state = lock(&p.state);
        let next = state.next;
        if from.0 < state.earliest {
            return Err(Error::OffsetTruncated {
                partition,
                offset: from,
                earliest: Offset(state.earliest),
            });
        }
        if from.0 > next {
            return Err(Error::OffsetBeyondEnd {
                partition,
                offset: from,
                next: Offset(next),
            });
        }
        let mut out = Vec::new();
        let mut bytes = 0usize;
        let first_chunk = state
            .chunks
            .partition_point(|c| c.base <= from.0)
            .saturating_sub(1);
        let live = state
            .chunks
            .range(first_chunk..)
            .flat_map(|c| {
                c.live_with_offsets()
                    .map(move |(o, r)| (o, c.enqueued_time, r))
            })
            .skip_while(|(o, _, _)| *o < from.0);
        for (offset, enqueued_time, record) in live.take(limits.max_records) {
            let size = record.size_bytes();
            if !out.is_empty() && bytes + size > limits.max_bytes {
                break;
            }
            bytes += size;
            out.push(StoredRecord::new(
                partition,
                Offset(offset),
                enqueued_time,
                record.clone(),
            ));
        }
        Ok(out)
    }

    async fn wait_for(&self, partition: PartitionId, offset: Offset) -> Result<Offset> {
        let mut rx = self.partition(partition)?.next.subscribe();
        let next = rx
            .wait_for(|next| *next > offset.0)
            .await
            .map_err(|_| Error::Closed)?;
        Ok(Offset(*next))
    }

    async fn earliest_offset(&self, partition: PartitionId) -> Result<Offset> {
        Ok(Offset(lock(&self.partition(partition)?.state).earliest))
    }

    async fn next_offset(&self, partition: PartitionId) -> Result<Offset> {
        Ok(Offset(lock(&self.partition(partition)?.state).next))
    }

    async fn commit(
        &self,
        group: &GroupName,
        partition: PartitionId,
        offset: Offset,
    ) -> Result<()> {
        let next = self.next_offset(partition).await?;
        if offset > next {
            return Err(Error::OffsetBeyondEnd {
                partition,
                offset,
                next,
            });
        }
        lock(&self.committed).insert((group.clone(), partition), offset);
        Ok(())
    }

    async fn committed(&self, group: &GroupName, partition: PartitionId) -> Result<Option<Offset>> {
        self.partition(partition)?;
        Ok(lock(&self.committed)
            .get(&(group.clone(), partition))
            .copied())
    }

    async fn enforce_retention(
        &self,
        policy: &RetentionPolicy,
        now: Timestamp,
    ) -> Result<RetentionReport> {
        let mut report = RetentionReport::default();
        let cutoff = policy.max_age.map(|age| now.saturating_sub(age));
        for p in &self.partitions {
            let mut guard = lock(&p.state);
            let state = &mut *guard;
            while let Some(chunk) = state.chunks.front_mut() {
                let Some(oldest) = chunk.live().first() else {
                    state.chunks.pop_front();
                    continue;
                };
                let too_old = cutoff.is_some_and(|c| chunk.enqueued_time < c);
                let too_big = policy.max_bytes.is_some_and(|max| state.bytes > max);
                if !(too_old || too_big) {
                    break;
                }
                let size = oldest.size_bytes() as u64;
                chunk.start += 1;
                chunk.base += 1;
                state.earliest += 1;
                state.bytes -= size;
                report.records_removed += 1;
                report.bytes_removed += size;
                if chunk.start == chunk.records.len() {
                    state.chunks.pop_front();
                }
            }
        }
        Ok(report)
    }
}
