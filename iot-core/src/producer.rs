//! `Producer`: appends records to the partition their key selects.

use std::sync::Arc;

use futures::future::try_join_all;
use tracing::instrument;

use crate::error::Result;
use crate::log::Log;
use crate::offset::{Offset, PartitionId};
use crate::partitioner::partition_for_key;
use crate::record::Record;

/// Appends records to a [`Log`], choosing each record's partition by its key with
/// [`partition_for_key`], so one device's records stay in order in one partition.
///
/// ```
/// # tokio::runtime::Builder::new_current_thread().build().unwrap().block_on(async {
/// use std::sync::Arc;
/// use iot_core::{MemoryLog, Producer, Record};
///
/// let producer = Producer::new(Arc::new(MemoryLog::new(4)?));
/// let (partition, offset) = producer.send(Record::new("dev-1", "on")).await?;
/// let (again, next) = producer.send(Record::new("dev-1", "off")).await?;
/// assert_eq!(partition, again);
/// assert_eq!(next, offset.next());
/// # Ok::<(), iot_core::Error>(()) }).unwrap();
/// ```
#[derive(Clone, Debug)]
pub struct Producer {
    log: Arc<dyn Log>,
}

impl Producer {
    /// A producer writing to `log`.
    pub fn new(log: Arc<dyn Log>) -> Self {
        Producer { log }
    }

    /// The log written to.
    pub fn log(&self) -> &Arc<dyn Log> {
        &self.log
    }

    /// The partition `key` maps to in this log.
    pub fn partition_for(&self, key: &str) -> PartitionId {
        partition_for_key(key, self.log.partition_count())
    }

    /// Appends one record; returns its partition and offset.
    pub async fn send(&self, record: Record) -> Result<(PartitionId, Offset)> {
        let partition = self.partition_for(&record.key);
        let appended = self.log.append(partition, vec![record]).await?;
        Ok((partition, appended.first))
    }

    /// Appends records, one batch per partition (appended concurrently), and returns each record's
    /// position in input order. Each partition's batch is atomic and keeps input order; the batch
    /// as a whole is not atomic across partitions: on error some partitions may have been written.
    #[instrument(level = "trace", skip_all, fields(records = records.len()))]
    pub async fn send_batch(&self, records: Vec<Record>) -> Result<Vec<(PartitionId, Offset)>> {
        let n = self.log.partition_count() as usize;
        let mut groups: Vec<(Vec<usize>, Vec<Record>)> =
            (0..n).map(|_| Default::default()).collect();
        for (i, record) in records.into_iter().enumerate() {
            let p = self.partition_for(&record.key).index();
            groups[p].0.push(i);
            groups[p].1.push(record);
        }
        let total: usize = groups.iter().map(|g| g.0.len()).sum();
        let mut placed = Vec::with_capacity(groups.len());
        let mut appends = Vec::new();
        for (p, (indices, batch)) in groups.into_iter().enumerate() {
            if batch.is_empty() {
                continue;
            }
            placed.push(indices);
            appends.push(self.log.append(PartitionId(p as u32), batch));
        }
        let results = try_join_all(appends).await?;
        let mut out = vec![(PartitionId(0), Offset(0)); total];
        for (indices, appended) in placed.into_iter().zip(results) {
            for (i, offset) in indices.into_iter().zip(appended.offsets()) {
                out[i] = (appended.partition, Offset(offset));
            }
        }
        Ok(out)
    }
}
