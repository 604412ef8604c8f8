//! The `StreamProcessor` trait and the context a processor works in.

use std::collections::HashMap;
use std::fmt::{self, Debug};
use std::sync::{Arc, RwLock};

use async_trait::async_trait;
use iot_core::{Offset, PartitionId, Record, StoredRecord, Timestamp};
use serde_json::Value;

use crate::error::Result;

/// A stage of stream processing: gets batches of records of one partition, in offset order, and
/// may emit records to other topics through its [`Context`].
///
/// The [`ProcessorHost`](crate::ProcessorHost) creates one processor per partition (through a
/// [`ProcessorFactory`]) and calls it from one task, so a processor needs no locking for its own
/// state; processors that share a store clone an `Arc` of it.
///
/// # Contract
///
/// * **At-least-once.** The host commits a batch's offsets only after `process` returned `Ok`
///   and the records it emitted were appended. After a crash or a failed attempt the same records
///   (and possibly earlier ones of the partition) are delivered again, so the effects of
///   `process` must be correct when repeated: idempotent writes, or duplicates the downstream
///   accepts.
/// * **Failures.** An `Err` makes the host discard what the attempt emitted and retry the batch
///   with backoff; a record that still fails after the configured number of attempts alone goes to
///   the dead-letter topic and processing moves on. State changed by a failed attempt is not
///   rolled back, which is one more reason effects must tolerate repetition.
/// * **Time.** [`tick`](StreamProcessor::tick) is called periodically, with or without records,
///   so processors that hold data until time passes (windows) can emit it when input is idle.
/// * **State rebuilt by replay.** A processor that holds records' contributions in memory
///   across batches (open windows, an ordering buffer, histories) reports the lowest input
///   offset it still holds with [`retained_offset`](StreamProcessor::retained_offset). The host
///   then commits `min(retained, processed)` instead of the processed offset, and records the
///   processed offset apart (see [`ProcessorHost`](crate::ProcessorHost)). After a restart the
///   records from the checkpoint are delivered again to a new processor, which must rebuild the
///   same state from them; what it emits for records processed before the restart is discarded
///   by the host, and it is not ticked until it has caught up with them.
/// * `process` must not panic on any record content.
#[async_trait]
pub trait StreamProcessor: Send + Sync + Debug + 'static {
    /// Processes `batch` (non-empty, one partition, offset order).
    async fn process(&mut self, batch: &[StoredRecord], ctx: &mut Context) -> Result<()>;

    /// The lowest offset of this processor's partition whose record it still needs to rebuild
    /// its in-memory state after a restart, or `None` if it holds nothing (the default:
    /// stateless processors and processors whose state is in a store need not implement it).
    ///
    /// The host asks after each batch and each tick. Checkpoints never move back: an answer
    /// below the last checkpoint counts as the checkpoint.
    fn retained_offset(&self) -> Option<Offset> {
        None
    }

    /// Lets time pass: `now` is the wall-clock time of the host. The default does nothing.
    async fn tick(&mut self, now: Timestamp, ctx: &mut Context) -> Result<()> {
        let _ = (now, ctx);
        Ok(())
    }
}

#[deny(clippy::missing_trait_methods)]
#[async_trait]
impl<T: StreamProcessor + ?Sized> StreamProcessor for Box<T> {
    async fn process(&mut self, batch: &[StoredRecord], ctx: &mut Context) -> Result<()> {
        (**self).process(batch, ctx).await
    }
    fn retained_offset(&self) -> Option<Offset> {
        (**self).retained_offset()
    }
    async fn tick(&mut self, now: Timestamp, ctx: &mut Context) -> Result<()> {
        (**self).tick(now, ctx).await
    }
}

/// Creates the processor of each partition.
pub trait ProcessorFactory: Send + Sync + Debug + 'static {
    /// The processor that will own `partition`.
    fn create(&self, partition: PartitionId) -> Result<Box<dyn StreamProcessor>>;
}

/// A [`ProcessorFactory`] from a closure, with a name for `Debug`.
pub struct FnFactory<F> {
    name: String,
    make: F,
}

impl<F> FnFactory<F>
where
    F: Fn(PartitionId) -> Result<Box<dyn StreamProcessor>> + Send + Sync + 'static,
{
    /// A factory named `name` calling `make` for each partition.
    pub fn new(name: impl Into<String>, make: F) -> Self {
        FnFactory {
            name: name.into(),
            make,
        }
    }
}

impl<F> Debug for FnFactory<F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FnFactory")
            .field("name", &self.name)
            .finish()
    }
}

impl<F> ProcessorFactory for FnFactory<F>
where
    F: Fn(PartitionId) -> Result<Box<dyn StreamProcessor>> + Send + Sync + 'static,
{
    fn create(&self, partition: PartitionId) -> Result<Box<dyn StreamProcessor>> {
        (self.make)(partition)
    }
}

/// Reference data processors may read: named tables of JSON values by key (for example device
/// thresholds). Cheap to clone; every clone sees the same tables.
#[derive(Clone, Debug, Default)]
pub struct ReferenceData {
    tables: Arc<RwLock<HashMap<String, HashMap<String, Value>>>>,
}

impl ReferenceData {
    /// No tables.
    pub fn new() -> Self {
        Self::default()
    }

    /// Sets `key` of `table` to `value`.
    pub fn set(&self, table: &str, key: &str, value: Value) {
        let mut tables = self
            .tables
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        tables
            .entry(table.to_owned())
            .or_default()
            .insert(key.to_owned(), value);
    }

    /// The value of `key` in `table`.
    pub fn get(&self, table: &str, key: &str) -> Option<Value> {
        let tables = self
            .tables
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        tables.get(table).and_then(|t| t.get(key)).cloned()
    }
}

/// What a processor sees of the host while processing: its partition, reference data, and a
/// buffer of records to emit. Emitted records are appended (to the partition their key selects)
/// only when the attempt succeeds.
#[derive(Debug)]
pub struct Context {
    partition: PartitionId,
    reference: ReferenceData,
    emitted: Vec<(String, Record)>,
    rebuilding: bool,
}

impl Context {
    /// A context for a processor of `partition`; the host makes these, tests may too.
    pub fn new(partition: PartitionId, reference: ReferenceData) -> Self {
        Context {
            partition,
            reference,
            emitted: Vec::new(),
            rebuilding: false,
        }
    }

    /// Marks the context as one of a rebuild: the host replays records processed before a
    /// restart and discards what is emitted for them (see [`ProcessorHost`](crate::ProcessorHost)).
    pub fn with_rebuilding(mut self, rebuilding: bool) -> Self {
        self.rebuilding = rebuilding;
        self
    }

    /// Whether the records being processed were processed before a restart and are only replayed
    /// to rebuild state: whatever is emitted now is discarded, so a processor with side effects
    /// outside the log (a sink) should defer them until this is `false`.
    pub fn is_rebuilding(&self) -> bool {
        self.rebuilding
    }

    /// The partition being processed.
    pub fn partition(&self) -> PartitionId {
        self.partition
    }

    /// The reference data.
    pub fn reference(&self) -> &ReferenceData {
        &self.reference
    }

    /// Emits `record` to `topic` (appended after the attempt succeeds).
    pub fn emit(&mut self, topic: &str, record: Record) {
        self.emitted.push((topic.to_owned(), record));
    }

    /// Makes room for `additional` more emitted records, so that a processor that knows about
    /// how many it will emit (one per record of the batch, say) does not grow the list as it
    /// goes.
    pub fn reserve(&mut self, additional: usize) {
        self.emitted.reserve(additional);
    }

    /// The records emitted so far, in order.
    pub fn emitted(&self) -> &[(String, Record)] {
        &self.emitted
    }

    /// Takes the records emitted so far.
    pub fn take_emitted(&mut self) -> Vec<(String, Record)> {
        std::mem::take(&mut self.emitted)
    }
}
