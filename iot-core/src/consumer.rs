//! `GroupConsumer`: a consumer-group reader that tails every partition and commits.

use std::sync::Arc;

use futures::future::select_all;
use tracing::{instrument, warn};

use crate::error::{Error, Result};
use crate::limits::ReadLimits;
use crate::log::{Log, LogExt};
use crate::names::GroupName;
use crate::offset::{Offset, PartitionId};
use crate::record::StoredRecord;

/// Where a group with no committed offset starts.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum StartFrom {
    /// The oldest record still held.
    #[default]
    Earliest,
    /// Only records appended after the consumer starts.
    Latest,
}

/// Reads every partition of a log on behalf of consumer group `group`, from the group's committed
/// positions, and commits what it has handed out when asked.
///
/// Delivery is at-least-once: records handed out but not yet committed when the process stops are
/// handed out again to the next consumer of the group. If retention removed records the group had
/// not read, the consumer skips to the earliest offset and logs a warning.
///
/// ```
/// # tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(async {
/// use std::sync::Arc;
/// use iot_core::{GroupConsumer, GroupName, Log, MemoryLog, Producer, Record, StartFrom};
///
/// let log: Arc<dyn Log> = Arc::new(MemoryLog::new(2)?);
/// Producer::new(log.clone()).send(Record::new("dev-1", "42")).await?;
///
/// let group = GroupName::new("alerts")?;
/// let mut consumer = GroupConsumer::new(log.clone(), group.clone(), StartFrom::Earliest).await?;
/// let batch = consumer.next_batch().await?;
/// assert_eq!(batch[0].record.payload, "42");
/// consumer.commit().await?;
///
/// // A new consumer of the same group resumes after what was committed.
/// let again = GroupConsumer::new(log, group, StartFrom::Earliest).await?;
/// assert_eq!(again.position(batch[0].partition), batch[0].offset.next());
/// # Ok::<(), iot_core::Error>(()) }).unwrap();
/// ```
#[derive(Debug)]
pub struct GroupConsumer {
    log: Arc<dyn Log>,
    group: GroupName,
    limits: ReadLimits,
    /// Next offset to hand out, per partition.
    positions: Vec<u64>,
    /// Last committed offset, per partition.
    committed: Vec<Option<u64>>,
    /// Partition to look at first next time, so that a busy partition cannot starve the others.
    cursor: usize,
}

impl GroupConsumer {
    /// A consumer of `group`, positioned at the group's committed offsets (or `start` where it has
    /// none).
    pub async fn new(log: Arc<dyn Log>, group: GroupName, start: StartFrom) -> Result<Self> {
        let mut positions = Vec::new();
        let mut committed = Vec::new();
        for p in log.partitions() {
            let c = log.committed(&group, p).await?;
            let position = match (c, start) {
                (Some(c), _) => c.0,
                (None, StartFrom::Earliest) => log.earliest_offset(p).await?.0,
                (None, StartFrom::Latest) => log.next_offset(p).await?.0,
            };
            positions.push(position);
            committed.push(c.map(Offset::get));
        }
        Ok(GroupConsumer {
            log,
            group,
            limits: ReadLimits::default(),
            positions,
            committed,
            cursor: 0,
        })
    }

    /// Sets how much one partition may contribute to a batch.
    pub fn with_read_limits(mut self, limits: ReadLimits) -> Self {
        self.limits = limits;
        self
    }

    /// The group this consumer reads for.
    pub fn group(&self) -> &GroupName {
        &self.group
    }

    /// The next offset this consumer will hand out from `partition`.
    pub fn position(&self, partition: PartitionId) -> Offset {
        Offset(self.positions.get(partition.index()).copied().unwrap_or(0))
    }

    /// Moves the consumer's position in `partition` (takes effect on the next batch; commit to
    /// make it the group's).
    pub fn seek(&mut self, partition: PartitionId, offset: Offset) -> Result<()> {
        let slot = self
            .positions
            .get_mut(partition.index())
            .ok_or(Error::UnknownPartition {
                partition,
                partitions: self.log.partition_count(),
            })?;
        *slot = offset.0;
        Ok(())
    }

    /// The next records available in any partition, waiting (without polling) until there are
    /// some. Each partition contributes at most one read's worth (see
    /// [`with_read_limits`](Self::with_read_limits)). Cancel safe: nothing is handed out until the
    /// future completes.
    #[instrument(level = "trace", skip_all, fields(group = %self.group))]
    pub async fn next_batch(&mut self) -> Result<Vec<StoredRecord>> {
        loop {
            let batch = self.try_next_batch().await?;
            if !batch.is_empty() {
                return Ok(batch);
            }
            let waits = self
                .log
                .partitions()
                .map(|p| {
                    let log = self.log.clone();
                    let at = Offset(self.positions[p.index()]);
                    Box::pin(async move { log.wait_for(p, at).await })
                })
                .collect::<Vec<_>>();
            let (first, _, _) = select_all(waits).await;
            first?;
        }
    }

    /// The next records available in any partition, or an empty vector if there are none now.
    pub async fn try_next_batch(&mut self) -> Result<Vec<StoredRecord>> {
        let n = self.positions.len();
        let mut out = Vec::new();
        for step in 0..n {
            let i = (self.cursor + step) % n;
            let p = PartitionId(i as u32);
            let records = match self
                .log
                .read(p, Offset(self.positions[i]), self.limits)
                .await
            {
                Ok(records) => records,
                Err(Error::OffsetTruncated { earliest, .. }) => {
                    warn!(group = %self.group, partition = %p, skipped_to = %earliest,
                        "records the group had not read were removed by retention");
                    self.positions[i] = earliest.0;
                    self.log.read(p, earliest, self.limits).await?
                }
                Err(e) => return Err(e),
            };
            if let Some(last) = records.last() {
                self.positions[i] = last.offset.0 + 1;
            }
            out.extend(records);
        }
        self.cursor = (self.cursor + 1) % n.max(1);
        Ok(out)
    }

    /// Commits the position of every partition that moved since the last commit.
    pub async fn commit(&mut self) -> Result<()> {
        for (i, position) in self.positions.iter().enumerate() {
            if self.committed[i] != Some(*position) {
                self.log
                    .commit(&self.group, PartitionId(i as u32), Offset(*position))
                    .await?;
                self.committed[i] = Some(*position);
            }
        }
        Ok(())
    }
}
