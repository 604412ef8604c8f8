//! The partitioned log trait.

use std::fmt::Debug;
use std::ops::Range;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;

use crate::capabilities::LogCapabilities;
use crate::error::Result;
use crate::limits::ReadLimits;
use crate::names::GroupName;
use crate::offset::{Offset, PartitionId};
use crate::record::{Record, StoredRecord};
use crate::timestamp::Timestamp;

/// A durable, partitioned, append-only log of [`Record`]s — the backbone every other part of the SDK
/// writes to and reads from.
///
/// One `Log` is one topic. Its partition count is fixed when it is created.
///
/// # Contract
///
/// Every implementation must hold these; `iot_core::testkit::run_all` (feature `testkit`) checks
/// them, and `docs/integrating.md` shows how to run it against your own implementation.
///
/// * **Dense offsets.** A successful [`append`](Log::append) of *n* records gives them the offsets
///   `next .. next + n` of that partition, in batch order, contiguously (no other append's record
///   lands inside the batch), and atomically: a concurrent reader sees all of the batch or none of
///   it. Offsets are never reused, even after retention.
/// * **Faithful reads.** [`read`](Log::read) returns records in offset order, starting exactly at
///   `from`, with key, headers (in order), device time and payload as appended; reading at
///   [`next_offset`](Log::next_offset) returns an empty vector; past it is
///   [`Error::OffsetBeyondEnd`](crate::Error::OffsetBeyondEnd); below
///   [`earliest_offset`](Log::earliest_offset) is
///   [`Error::OffsetTruncated`](crate::Error::OffsetTruncated). Read limits are honoured, except that
///   the first record is returned whatever its size.
/// * **Enqueued time** is set by the log and never decreases within a partition.
/// * **Limits.** Appends over the log's [`LogLimits`](crate::LogLimits) fail with a typed error and
///   append nothing. An empty batch is [`Error::InvalidInput`](crate::Error::InvalidInput).
/// * **Tailing.** [`wait_for`](Log::wait_for) returns as soon as the partition's next offset is past
///   the given offset, without polling; dropping its future is harmless (cancel safe).
/// * **Consumer groups.** [`commit`](Log::commit) stores a group's position per partition (the next
///   offset the group wants); [`committed`](Log::committed) returns the last one stored, or `None`.
///   Committing past `next_offset` is an error. Durable logs keep commits across restarts.
/// * **Retention** removes a prefix of a partition, never a record the policy keeps; it may keep
///   more than the policy requires (the granularity is the implementation's: a `FileLog` removes
///   whole segments and never the one being written).
/// * **Visibility.** A record is visible to readers once its append is acknowledged by the log's
///   durability policy; a durable log never lets a reader see a record it may later lose to a crash
///   it promises to survive.
/// * Unknown partitions are [`Error::UnknownPartition`](crate::Error::UnknownPartition); no input
///   makes an implementation panic.
/// * **Capabilities.** Atomic batches and a `sync` that forces data to disk are properties a
///   backend may lack (a message broker without atomic multi-message publish, say). A log states
///   which it gives in [`capabilities`](Log::capabilities); every other rule here holds for every
///   log.
/// * **Backend failures** (a lost connection, a refused query) are
///   [`Error::Backend`](crate::Error::Backend), carrying the backend's own error as the source
///   and saying whether a retry may help.
#[async_trait]
pub trait Log: Send + Sync + Debug + 'static {
    /// The number of partitions, fixed for the log's life.
    fn partition_count(&self) -> u32;

    /// Appends `records` to `partition` as one atomic batch and returns where they went.
    async fn append(&self, partition: PartitionId, records: Vec<Record>) -> Result<Appended>;

    /// Reads records of `partition` from offset `from`, bounded by `limits`.
    async fn read(
        &self,
        partition: PartitionId,
        from: Offset,
        limits: ReadLimits,
    ) -> Result<Vec<StoredRecord>>;

    /// Waits until the partition holds a record at `offset` or later, and returns its next offset
    /// (which is then greater than `offset`). Returns at once if it already does.
    async fn wait_for(&self, partition: PartitionId, offset: Offset) -> Result<Offset>;

    /// The offset of the oldest record still held (equal to `next_offset` when the partition is
    /// empty).
    async fn earliest_offset(&self, partition: PartitionId) -> Result<Offset>;

    /// The offset the next appended record will get.
    async fn next_offset(&self, partition: PartitionId) -> Result<Offset>;

    /// Stores `offset` as consumer group `group`'s position in `partition`.
    async fn commit(&self, group: &GroupName, partition: PartitionId, offset: Offset)
    -> Result<()>;

    /// The position consumer group `group` last committed in `partition`.
    async fn committed(&self, group: &GroupName, partition: PartitionId) -> Result<Option<Offset>>;

    /// Removes records that `policy` no longer keeps, as of `now`, in every partition.
    async fn enforce_retention(
        &self,
        policy: &RetentionPolicy,
        now: Timestamp,
    ) -> Result<RetentionReport>;

    /// The properties of this contract that the log gives beyond those every log holds.
    ///
    /// Provided: the default states all of them ([`LogCapabilities::FULL`]). A backend that lacks
    /// one overrides it, and the conformance suite then skips that check by name instead of failing.
    fn capabilities(&self) -> LogCapabilities {
        LogCapabilities::FULL
    }

    /// Makes every acknowledged record durable now, whatever the durability policy (unless the
    /// log's [`capabilities`](Log::capabilities) deny `forced_sync`: then it is as durable as the
    /// backend makes it, and `sync` only waits for what the backend offers).
    ///
    /// Provided: the default does nothing, which is right for a log that is not durable
    /// (in memory) or that makes every append durable before acknowledging it (most databases).
    /// A log that acknowledges before it is durable (a buffered or interval-synced file) must
    /// override it.
    async fn sync(&self) -> Result<()> {
        Ok(())
    }
}

/// Where an appended batch went.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Appended {
    /// The partition written.
    pub partition: PartitionId,
    /// The offset of the first record of the batch.
    pub first: Offset,
    /// How many records the batch held.
    pub count: u64,
    /// The enqueued time given to every record of the batch.
    pub enqueued_time: Timestamp,
}

impl Appended {
    /// The offsets of the batch, in order.
    pub fn offsets(&self) -> Range<u64> {
        self.first.0..self.first.0 + self.count
    }

    /// The offset of the last record of the batch.
    pub fn last(&self) -> Offset {
        Offset(self.first.0 + self.count.saturating_sub(1))
    }

    /// The offset after the batch.
    pub fn next(&self) -> Offset {
        Offset(self.first.0 + self.count)
    }
}

/// What a retention pass keeps. `None` means no bound of that kind.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RetentionPolicy {
    /// Remove records enqueued longer ago than this.
    pub max_age: Option<Duration>,
    /// Keep each partition within this many bytes ([`Record::size_bytes`] summed), removing the
    /// oldest records first.
    pub max_bytes: Option<u64>,
}

/// What a retention pass removed.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RetentionReport {
    /// Records removed, over all partitions.
    pub records_removed: u64,
    /// Bytes removed, over all partitions.
    pub bytes_removed: u64,
}

macro_rules! forward_log {
    ($ptr:ident) => {
        #[deny(clippy::missing_trait_methods)]
        #[async_trait]
        impl<T: Log + ?Sized> Log for $ptr<T> {
            fn partition_count(&self) -> u32 {
                (**self).partition_count()
            }
            fn capabilities(&self) -> LogCapabilities {
                (**self).capabilities()
            }
            async fn append(
                &self,
                partition: PartitionId,
                records: Vec<Record>,
            ) -> Result<Appended> {
                (**self).append(partition, records).await
            }
            async fn read(
                &self,
                partition: PartitionId,
                from: Offset,
                limits: ReadLimits,
            ) -> Result<Vec<StoredRecord>> {
                (**self).read(partition, from, limits).await
            }
            async fn wait_for(&self, partition: PartitionId, offset: Offset) -> Result<Offset> {
                (**self).wait_for(partition, offset).await
            }
            async fn earliest_offset(&self, partition: PartitionId) -> Result<Offset> {
                (**self).earliest_offset(partition).await
            }
            async fn next_offset(&self, partition: PartitionId) -> Result<Offset> {
                (**self).next_offset(partition).await
            }
            async fn commit(
                &self,
                group: &GroupName,
                partition: PartitionId,
                offset: Offset,
            ) -> Result<()> {
                (**self).commit(group, partition, offset).await
            }
            async fn committed(
                &self,
                group: &GroupName,
                partition: PartitionId,
            ) -> Result<Option<Offset>> {
                (**self).committed(group, partition).await
            }
            async fn enforce_retention(
                &self,
                policy: &RetentionPolicy,
                now: Timestamp,
            ) -> Result<RetentionReport> {
                (**self).enforce_retention(policy, now).await
            }
            async fn sync(&self) -> Result<()> {
                (**self).sync().await
            }
        }
    };
}

forward_log!(Arc);
forward_log!(Box);

/// Conveniences for every [`Log`]; implementors write none of this.
#[async_trait]
pub trait LogExt: Log {
    /// Appends one record.
    async fn append_one(&self, partition: PartitionId, record: Record) -> Result<Offset> {
        Ok(self.append(partition, vec![record]).await?.first)
    }

    /// The partitions of this log.
    fn partitions(&self) -> std::iter::Map<Range<u32>, fn(u32) -> PartitionId> {
        (0..self.partition_count()).map(PartitionId as fn(u32) -> PartitionId)
    }
}

impl<T: Log + ?Sized> LogExt for T {}
