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

/// Invariants: `records[i].offset == base + i`; `bytes` is the sum of the records' sizes;
/// `next` (the watch value) is `base + records.len()`; `last_time` is the newest enqueued time.
#[derive(Debug)]
struct MemoryPartition {
    state: Mutex<PartitionState>,
    next: watch::Sender<u64>,
}

#[derive(Debug, Default)]
struct PartitionState {
    base: u64,
    records: VecDeque<StoredRecord>,
    bytes: u64,
    last_time: Timestamp,
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
        let first = state.base + state.records.len() as u64;
        let enqueued_time = Timestamp::now().max(state.last_time);
        state.last_time = enqueued_time;
        state.records.extend(
            records
                .into_iter()
                .zip(first..)
                .map(|(r, o)| StoredRecord::new(partition, Offset(o), enqueued_time, r)),
        );
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
        let next = state.base + state.records.len() as u64;
        if from.0 < state.base {
            return Err(Error::OffsetTruncated {
                partition,
                offset: from,
                earliest: Offset(state.base),
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
        let start = (from.0 - state.base) as usize;
        for stored in state.records.range(start..).take(limits.max_records) {
            let size = stored.record.size_bytes();
            if !out.is_empty() && bytes + size > limits.max_bytes {
                break;
            }
            bytes += size;
            out.push(stored.clone());
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
        Ok(Offset(lock(&self.partition(partition)?.state).base))
    }

    async fn next_offset(&self, partition: PartitionId) -> Result<Offset> {
        let state = lock(&self.partition(partition)?.state);
        Ok(Offset(state.base + state.records.len() as u64))
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
            let mut state = lock(&p.state);
            while let Some(oldest) = state.records.front() {
                let too_old = cutoff.is_some_and(|c| oldest.enqueued_time < c);
                let too_big = policy.max_bytes.is_some_and(|max| state.bytes > max);
                if !(too_old || too_big) {
                    break;
                }
                let size = oldest.record.size_bytes() as u64;
                state.records.pop_front();
                state.base += 1;
                state.bytes -= size;
                report.records_removed += 1;
                report.bytes_removed += size;
            }
        }
        Ok(report)
    }

    async fn sync(&self) -> Result<()> {
        Ok(())
    }
}
