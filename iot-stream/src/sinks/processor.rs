//! `SinkProcessor`: a sink run as a stream processor over its endpoint's topic.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use iot_core::{Offset, PartitionId, StoredRecord, Timestamp};
use tracing::{debug, warn};

use super::batch::BatchPolicy;
use super::sink::{Sink, SinkBatch, SinkError};
use crate::error::Result;
use crate::host::dead_letter;
use crate::processor::{Context, ProcessorFactory, StreamProcessor};

/// The header naming the sink that gave up on a dead-lettered record.
pub const SINK_HEADER: &str = "x-sink";

/// How a sink processor batches, retries and dead-letters.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct SinkConfig {
    /// When a batch is complete. Default [`BatchPolicy::default`].
    pub batch: BatchPolicy,
    /// Attempts per batch before its records are dead-lettered. Default 8.
    pub max_attempts: u32,
    /// Backoff before the second attempt, doubled for each further one (each wait drawn between
    /// half and all of it, so that endpoints are not retried in lockstep). Default 100 ms.
    pub initial_backoff: Duration,
    /// Largest backoff. Default 10 s.
    pub max_backoff: Duration,
    /// Topic of the records the sink gave up on. Default `deadletter`.
    pub dead_letter_topic: String,
}

impl Default for SinkConfig {
    fn default() -> Self {
        SinkConfig {
            batch: BatchPolicy::default(),
            max_attempts: 8,
            initial_backoff: Duration::from_millis(100),
            max_backoff: Duration::from_secs(10),
            dead_letter_topic: "deadletter".into(),
        }
    }
}

/// Chainable setters (the struct is `non_exhaustive`).
impl SinkConfig {
    /// Sets [`batch`](Self::batch).
    pub fn batch(mut self, batch: BatchPolicy) -> Self {
        self.batch = batch;
        self
    }
    /// Sets [`max_attempts`](Self::max_attempts).
    pub fn max_attempts(mut self, max_attempts: u32) -> Self {
        self.max_attempts = max_attempts;
        self
    }
    /// Sets [`initial_backoff`](Self::initial_backoff).
    pub fn initial_backoff(mut self, initial_backoff: Duration) -> Self {
        self.initial_backoff = initial_backoff;
        self
    }
    /// Sets [`max_backoff`](Self::max_backoff).
    pub fn max_backoff(mut self, max_backoff: Duration) -> Self {
        self.max_backoff = max_backoff;
        self
    }
    /// Sets [`dead_letter_topic`](Self::dead_letter_topic).
    pub fn dead_letter_topic(mut self, topic: impl Into<String>) -> Self {
        self.dead_letter_topic = topic.into();
        self
    }
}

/// Runs a [`Sink`] over an endpoint's topic in the [`ProcessorHost`](crate::ProcessorHost): one
/// processor per partition cuts the records into batches ([`BatchPolicy`]), writes each complete
/// batch with retries and backoff, and dead-letters the records of a batch the sink refused or
/// that kept failing.
///
/// **Delivery.** The records of the open batch (and of complete batches not yet written) are
/// held in memory and reported as [`retained_offset`](StreamProcessor::retained_offset), so the
/// group's checkpoint stays at the first record not yet written. A restart replays from there and
/// cuts the same batches: nothing is lost, and at most the batch that was being written when the
/// process died is written again — under the same name, for a sink that names its output after
/// the batch (at-least-once; exactly-once for idempotent sinks). While the host replays records
/// processed before a restart ([`Context::is_rebuilding`]), batches are cut but not written:
/// writing waits until the replay is over, so what a failed write dead-letters is never discarded.
///
/// The processor does its own retries (the host's would re-feed single records, which a batch
/// cannot be split into): `process` and `tick` only fail when the log fails.
#[derive(Debug)]
pub struct SinkProcessor {
    sink: Arc<dyn Sink>,
    config: SinkConfig,
    partition: PartitionId,
    /// Complete batches not yet written, oldest first.
    complete: VecDeque<Vec<StoredRecord>>,
    open: Vec<StoredRecord>,
    open_bytes: usize,
    /// The offset after the last record taken: a retried or replayed batch skips what it holds.
    next: Option<u64>,
}

impl SinkProcessor {
    /// A factory of sink processors writing to `sink` (one per partition); start it with
    /// [`ProcessorHost::start`](crate::ProcessorHost::start) over the endpoint's topic.
    pub fn factory(sink: Arc<dyn Sink>, config: SinkConfig) -> Result<SinkFactory> {
        config.batch.validate()?;
        if config.max_attempts == 0 {
            return Err(crate::Error::invalid(
                "SinkConfig.max_attempts must be at least 1",
            ));
        }
        Ok(SinkFactory { sink, config })
    }

    /// Cuts `batch` (the host's read) into batches. Records that join the open batch left from
    /// an earlier read are copied into it; batches that start and end inside `batch` are returned
    /// as slices of it, so that they are written from the host's read without a copy of each
    /// record; the records of a batch still open at the end are copied into `open`. The cuts are
    /// those a record-by-record walk makes (see [`BatchPolicy`]), so a replay cuts the same.
    fn cut<'b>(&mut self, batch: &'b [StoredRecord]) -> Vec<&'b [StoredRecord]> {
        // A retried or replayed read starts with records already taken.
        let skip = self
            .next
            .map_or(0, |n| batch.partition_point(|r| r.offset.0 < n));
        let mut rest = batch.get(skip..).unwrap_or_default();
        let Some(last) = rest.last() else {
            return Vec::new();
        };
        self.next = Some(last.offset.0 + 1);
        // First the records that continue the open batch, copied.
        while let (Some(first), Some(next)) = (self.open.first(), rest.first()) {
            if !self
                .config
                .batch
                .admits(first, self.open.len(), self.open_bytes, next)
            {
                self.close_open();
                break;
            }
            self.open_bytes += next.record.size_bytes();
            self.open.push(next.clone());
            rest = &rest[1..];
            // A full batch is written now rather than when the next record arrives (same cut).
            if self.open.len() >= self.config.batch.max_records {
                self.close_open();
                break;
            }
        }
        // Then whole batches inside this read, borrowed.
        let mut cuts = Vec::new();
        while let Some(first) = rest.first() {
            let (mut count, mut bytes) = (1, first.record.size_bytes());
            while count < rest.len() && self.config.batch.admits(first, count, bytes, &rest[count])
            {
                bytes += rest[count].record.size_bytes();
                count += 1;
            }
            if count == rest.len() && count < self.config.batch.max_records {
                // Still open: a later record may join it.
                self.open.extend_from_slice(rest);
                self.open_bytes = bytes;
                break;
            }
            cuts.push(&rest[..count]);
            rest = &rest[count..];
        }
        cuts
    }

    fn close_open(&mut self) {
        if !self.open.is_empty() {
            self.complete.push_back(std::mem::take(&mut self.open));
            self.open_bytes = 0;
        }
    }

    /// Writes the complete batches, oldest first.
    async fn write_complete(&mut self, ctx: &mut Context) {
        while let Some(batch) = self.complete.pop_front() {
            self.write(&batch, ctx).await;
        }
    }

    /// Writes one batch with retries; dead-letters it when the sink refuses it or gives up.
    async fn write(&self, records: &[StoredRecord], ctx: &mut Context) {
        let batch = SinkBatch {
            partition: self.partition,
            records,
        };
        let mut backoff = self.config.initial_backoff;
        let mut attempt = 1;
        let error = loop {
            match self.sink.write(batch).await {
                Ok(()) => {
                    debug!(
                        sink = self.sink.name(),
                        partition = self.partition.0,
                        records = records.len(),
                        first = records.first().map(|r| r.offset.0),
                        "batch written"
                    );
                    return;
                }
                Err(e) if e.is_retryable() && attempt < self.config.max_attempts => {
                    warn!(sink = self.sink.name(), partition = self.partition.0, attempt,
                        error = %e, "batch not written; retrying");
                    tokio::time::sleep(jittered(backoff)).await;
                    backoff = (backoff * 2).min(self.config.max_backoff);
                    attempt += 1;
                }
                Err(e) => break e,
            }
        };
        self.dead_letter(records, &error, ctx);
    }

    fn dead_letter(&self, records: &[StoredRecord], error: &SinkError, ctx: &mut Context) {
        warn!(sink = self.sink.name(), partition = self.partition.0, records = records.len(),
            error = %error, "batch dead-lettered");
        let reason = error.to_string();
        for stored in records {
            let record = stored
                .record
                .clone()
                .with_header(dead_letter::REASON, reason.clone())
                .with_header(dead_letter::SOURCE_PARTITION, stored.partition.to_string())
                .with_header(dead_letter::SOURCE_OFFSET, stored.offset.to_string())
                .with_header(SINK_HEADER, self.sink.name());
            ctx.emit(&self.config.dead_letter_topic, record);
        }
    }
}

#[async_trait]
impl StreamProcessor for SinkProcessor {
    async fn process(&mut self, batch: &[StoredRecord], ctx: &mut Context) -> Result<()> {
        let cuts = self.cut(batch);
        if ctx.is_rebuilding() {
            // Nothing is written while rebuilding: the batches cut wait, in order, after those
            // already waiting.
            self.complete
                .extend(cuts.into_iter().map(<[StoredRecord]>::to_vec));
            return Ok(());
        }
        // Batches completed earlier are older than those cut from this read.
        self.write_complete(ctx).await;
        for records in cuts {
            self.write(records, ctx).await;
        }
        Ok(())
    }

    fn retained_offset(&self) -> Option<Offset> {
        self.complete
            .front()
            .and_then(|b| b.first())
            .or_else(|| self.open.first())
            .map(|r| r.offset)
    }

    async fn tick(&mut self, now: Timestamp, ctx: &mut Context) -> Result<()> {
        // The host ticks only when no record is waiting and reads `now` before checking, so no
        // record still to come can belong to a batch whose deadline has passed.
        if self
            .open
            .first()
            .is_some_and(|first| now >= self.config.batch.deadline(first))
        {
            self.close_open();
        }
        self.write_complete(ctx).await;
        Ok(())
    }
}

/// A wait drawn uniformly from `[backoff / 2, backoff]`: partitions (and hub instances) that
/// failed together against one endpoint do not all retry in the same instant.
fn jittered(backoff: Duration) -> Duration {
    use std::hash::{BuildHasher, Hasher};
    // `RandomState` is seeded afresh per call (per-thread keys, advanced each time): plenty of
    // randomness for spreading retries, with no RNG dependency.
    let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
    hasher.write_u128(backoff.as_nanos());
    let fraction = (hasher.finish() >> 11) as f64 / (1u64 << 53) as f64;
    backoff.mul_f64(0.5 + fraction / 2.0)
}

/// Makes the [`SinkProcessor`] of each partition; see [`SinkProcessor::factory`].
#[derive(Debug, Clone)]
pub struct SinkFactory {
    sink: Arc<dyn Sink>,
    config: SinkConfig,
}

impl ProcessorFactory for SinkFactory {
    fn create(&self, partition: PartitionId) -> Result<Box<dyn StreamProcessor>> {
        Ok(Box::new(SinkProcessor {
            sink: self.sink.clone(),
            config: self.config.clone(),
            partition,
            complete: VecDeque::new(),
            open: Vec::new(),
            open_bytes: 0,
            next: None,
        }))
    }
}
