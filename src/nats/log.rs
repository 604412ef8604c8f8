//! `NatsLog`: the `Log` trait over one JetStream stream per partition.

use std::sync::Arc;

use async_nats::jetstream::stream::Stream;
use async_trait::async_trait;
use iot_core::{
    Appended, Error, GroupName, Log, LogCapabilities, Offset, PartitionId, ReadLimits, Record,
    Result, RetentionPolicy, RetentionReport, StoredRecord, Timestamp, TopicName,
};

use super::error::request;
use super::factory::Shared;
use super::naming::TopicNames;
use super::partition::Partition;
use super::{append, cursor, groups, retention, tail};

/// A topic of the log in NATS JetStream; opened by [`NatsLogFactory`](super::NatsLogFactory).
///
/// Offsets are stream sequences minus one. What it lacks of the `Log` contract is stated in
/// [`Log::capabilities`]: batches are not atomic (JetStream 2.9 has no atomic multi-message
/// publish) and `sync` cannot force the server to disk. `docs/log.md` describes the mapping and
/// what an acknowledged append survives.
#[derive(Debug)]
pub struct NatsLog {
    shared: Arc<Shared>,
    topic: TopicName,
    names: TopicNames,
    partitions: Vec<Arc<Partition>>,
}

impl NatsLog {
    pub(crate) fn new(
        shared: Arc<Shared>,
        topic: TopicName,
        names: TopicNames,
        streams: Vec<Stream>,
    ) -> Self {
        let partitions = streams
            .into_iter()
            .enumerate()
            .map(|(p, stream)| {
                let id = PartitionId(p as u32);
                Arc::new(Partition::new(
                    id,
                    stream,
                    &names.subject(id),
                    &shared.writer,
                ))
            })
            .collect();
        NatsLog {
            shared,
            topic,
            names,
            partitions,
        }
    }

    /// The topic this log holds.
    pub fn topic(&self) -> &TopicName {
        &self.topic
    }

    /// The JetStream stream holding `partition`.
    pub fn stream_name(&self, partition: PartitionId) -> Result<String> {
        Ok(self.partition(partition)?.name().to_owned())
    }

    fn partition(&self, partition: PartitionId) -> Result<&Arc<Partition>> {
        self.partitions
            .get(partition.index())
            .ok_or(Error::UnknownPartition {
                partition,
                partitions: self.partition_count(),
            })
    }
}

impl Drop for NatsLog {
    fn drop(&mut self) {
        // Each watcher task holds its partition; dropping the watcher aborts the task.
        for part in &self.partitions {
            if let Ok(mut slot) = part.watcher.lock() {
                slot.take();
            }
        }
    }
}

#[async_trait]
impl Log for NatsLog {
    fn partition_count(&self) -> u32 {
        self.partitions.len() as u32
    }

    fn capabilities(&self) -> LogCapabilities {
        LogCapabilities::FULL
            .atomic_batches(false)
            .forced_sync(false)
    }

    async fn append(&self, partition: PartitionId, records: Vec<Record>) -> Result<Appended> {
        let part = self.partition(partition)?;
        append::append(&self.shared, part, records).await
    }

    async fn read(
        &self,
        partition: PartitionId,
        from: Offset,
        limits: ReadLimits,
    ) -> Result<Vec<StoredRecord>> {
        let part = self.partition(partition)?;
        cursor::read(&self.shared, part, from, limits).await
    }

    async fn wait_for(&self, partition: PartitionId, offset: Offset) -> Result<Offset> {
        let part = self.partition(partition)?;
        tail::wait_for(&self.shared, part, offset).await
    }

    async fn earliest_offset(&self, partition: PartitionId) -> Result<Offset> {
        let part = self.partition(partition)?;
        Ok(part.bounds(&self.shared).await?.earliest)
    }

    async fn next_offset(&self, partition: PartitionId) -> Result<Offset> {
        let part = self.partition(partition)?;
        Ok(part.bounds(&self.shared).await?.next)
    }

    async fn commit(
        &self,
        group: &GroupName,
        partition: PartitionId,
        offset: Offset,
    ) -> Result<()> {
        let part = self.partition(partition)?;
        groups::commit(&self.shared, &self.names, part, group, offset).await
    }

    async fn committed(&self, group: &GroupName, partition: PartitionId) -> Result<Option<Offset>> {
        let part = self.partition(partition)?;
        groups::committed(&self.shared, &self.names, part, group).await
    }

    async fn enforce_retention(
        &self,
        policy: &RetentionPolicy,
        now: Timestamp,
    ) -> Result<RetentionReport> {
        let mut report = RetentionReport::default();
        for part in &self.partitions {
            let r = retention::enforce(&self.shared, part, policy, now).await?;
            report.records_removed += r.records_removed;
            report.bytes_removed += r.bytes_removed;
        }
        Ok(report)
    }

    /// JetStream acknowledges an append once the server has stored it; the client cannot ask the
    /// server to fsync (the log states `forced_sync: false`). This waits until everything this
    /// connection sent has reached the server, which is all a client can do.
    async fn sync(&self) -> Result<()> {
        self.shared
            .timed("flushing the connection", async {
                self.shared.client.flush().await.map_err(request)
            })
            .await
    }
}
