//! The processor host: runs a processor as a consumer group over a topic.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use iot_core::{
    GroupName, Log, Offset, PartitionId, Producer, ReadLimits, Record, StartFrom, StoredRecord,
    Timestamp, Topics,
};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tracing::{debug, instrument, warn};

use crate::error::{Error, Result};
use crate::processor::{Context, ProcessorFactory, ReferenceData, StreamProcessor};

/// Headers the host adds to a record it sends to the dead-letter topic.
pub mod dead_letter {
    /// Why the record failed (the processor's error, as text).
    pub const REASON: &str = "x-dead-letter-reason";
    /// The topic the record was read from.
    pub const SOURCE_TOPIC: &str = "x-source-topic";
    /// The partition it was read from.
    pub const SOURCE_PARTITION: &str = "x-source-partition";
    /// Its offset there.
    pub const SOURCE_OFFSET: &str = "x-source-offset";
    /// The consumer group that gave up on it.
    pub const GROUP: &str = "x-group";
}

/// The suffix of the companion consumer group in which the host records how far a group has
/// processed when its checkpoint is held back by a stateful processor (see [`ProcessorHost`]).
/// Group names ending with it are reserved.
pub const PROCESSED_SUFFIX: &str = ".processed";

/// How a group runs.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct HostConfig {
    /// Where a group without a committed offset starts. Default: the earliest record.
    pub start_from: StartFrom,
    /// How much one batch may hold. Default: 1 000 records or 1 MiB.
    pub read_limits: ReadLimits,
    /// Attempts per batch, and then per record, before a record is dead-lettered. Default 3.
    pub max_attempts: u32,
    /// Backoff before the second attempt; doubled for each further one. Default 50 ms.
    pub initial_backoff: Duration,
    /// Largest backoff. Default 2 s.
    pub max_backoff: Duration,
    /// Topic records that keep failing go to. Default `deadletter`.
    pub dead_letter_topic: String,
    /// How often processors are [ticked](StreamProcessor::tick) (a tick is skipped while records
    /// are waiting to be read: they move event time themselves). Default 1 s.
    pub tick_interval: Duration,
}

impl Default for HostConfig {
    fn default() -> Self {
        HostConfig {
            start_from: StartFrom::Earliest,
            read_limits: ReadLimits::default(),
            max_attempts: 3,
            initial_backoff: Duration::from_millis(50),
            max_backoff: Duration::from_secs(2),
            dead_letter_topic: "deadletter".into(),
            tick_interval: Duration::from_secs(1),
        }
    }
}

/// Chainable setters: the struct is `non_exhaustive`, so callers outside this crate start from
/// [`Default`] and change what they need.
impl HostConfig {
    /// Sets [`start_from`](Self::start_from).
    pub fn start_from(mut self, start_from: StartFrom) -> Self {
        self.start_from = start_from;
        self
    }

    /// Sets [`read_limits`](Self::read_limits).
    pub fn read_limits(mut self, read_limits: ReadLimits) -> Self {
        self.read_limits = read_limits;
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
    pub fn dead_letter_topic(mut self, dead_letter_topic: impl Into<String>) -> Self {
        self.dead_letter_topic = dead_letter_topic.into();
        self
    }

    /// Sets [`tick_interval`](Self::tick_interval).
    pub fn tick_interval(mut self, tick_interval: Duration) -> Self {
        self.tick_interval = tick_interval;
        self
    }
}

/// Runs [`StreamProcessor`]s as consumer groups over topics opened from one [`Topics`].
///
/// For each group it starts one worker task per partition of the input topic. A worker reads a
/// batch from its partition's position, gives it to its processor (retrying with exponential
/// backoff; a record that still fails after [`HostConfig::max_attempts`] goes to the dead-letter
/// topic), appends what the processor emitted, then commits the offset after the batch: a crash
/// at any point re-delivers at most the uncommitted batch (at-least-once). A restarted group
/// resumes at its committed offsets. Groups are independent: each has its own positions.
///
/// **Stateful processors.** When a processor reports the lowest offset it still holds
/// ([`StreamProcessor::retained_offset`], e.g. the oldest event in an open window), the worker
/// commits `min(retained, processed)` as the group's checkpoint, and, before that, the processed
/// offset in the companion group `<group>.processed` ([`PROCESSED_SUFFIX`]). A restarted worker
/// resumes at the checkpoint and feeds the records up to the processed offset to its new processor
/// in **rebuild mode**: what the processor emits for them (and any dead letters) is discarded,
/// because it was delivered before the restart, and the processor is not ticked until the rebuild
/// is over. The state it rebuilt from those records then carries on; outputs of the batch that was
/// in flight at a crash may be emitted again (at-least-once).
///
/// ```
/// # tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(async {
/// use std::sync::Arc;
/// use iot_core::{GroupName, Producer, Record, Topics};
/// use iot_stream::{processors::Router, HostConfig, ProcessorHost};
///
/// let topics = Arc::new(Topics::memory(2));
/// let host = ProcessorHost::new(topics.clone());
/// let router = Router::by_header("subject").route("alarm", "alarms");
/// let group = host
///     .start("telemetry", GroupName::new("router")?, Arc::new(router), HostConfig::default())
///     .await?;
/// let telemetry = topics.topic("telemetry").await?;
/// Producer::new(telemetry).send(Record::new("dev-1", "{}").with_header("subject", "alarm")).await?;
/// group.wait_caught_up().await?;
/// group.shutdown().await?;
/// let alarms = topics.topic("alarms").await?;
/// let mut total = 0;
/// for p in 0..2 { total += alarms.next_offset(iot_core::PartitionId(p)).await?.get(); }
/// assert_eq!(total, 1);
/// # Ok::<(), iot_stream::Error>(()) }).unwrap();
/// ```
#[derive(Debug, Clone)]
pub struct ProcessorHost {
    topics: Arc<Topics>,
    reference: ReferenceData,
}

impl ProcessorHost {
    /// A host reading and writing topics of `topics`.
    pub fn new(topics: Arc<Topics>) -> Self {
        ProcessorHost {
            topics,
            reference: ReferenceData::new(),
        }
    }

    /// The reference data every processor of this host sees.
    pub fn reference_data(&self) -> &ReferenceData {
        &self.reference
    }

    /// The topics this host reads and writes.
    pub fn topics(&self) -> &Arc<Topics> {
        &self.topics
    }

    /// Starts consumer group `group` over topic `input`, one processor per partition from
    /// `factory`.
    #[instrument(skip_all, fields(input = input, group = %group))]
    pub async fn start(
        &self,
        input: &str,
        group: GroupName,
        factory: Arc<dyn ProcessorFactory>,
        config: HostConfig,
    ) -> Result<RunningGroup> {
        if config.max_attempts == 0 {
            return Err(Error::invalid("HostConfig.max_attempts must be at least 1"));
        }
        config.read_limits.validate()?;
        let log = self.topics.topic(input).await?;
        let (stop_tx, stop_rx) = watch::channel(false);
        let mut progress = Vec::new();
        let mut tasks = Vec::new();
        let mark_group = GroupName::new(format!("{group}{PROCESSED_SUFFIX}")).map_err(|e| {
            Error::invalid(format!(
                "group {group}: no room for its {PROCESSED_SUFFIX} companion group: {e}"
            ))
        })?;
        for p in 0..log.partition_count() {
            let partition = PartitionId(p);
            let position = match log.committed(&group, partition).await? {
                Some(c) => c.0,
                None => match config.start_from {
                    StartFrom::Earliest => log.earliest_offset(partition).await?.0,
                    StartFrom::Latest => log.next_offset(partition).await?.0,
                },
            };
            let processed = log
                .committed(&mark_group, partition)
                .await?
                .map_or(position, |m| m.0.max(position));
            let processor = factory.create(partition)?;
            let (tx, rx) = watch::channel(Progress {
                committed: position,
                processed,
                failed: None,
            });
            progress.push(rx);
            let worker = Worker {
                input: input.to_owned(),
                log: log.clone(),
                topics: self.topics.clone(),
                group: group.clone(),
                mark_group: mark_group.clone(),
                partition,
                position,
                checkpoint: position,
                processed,
                processor,
                config: config.clone(),
                reference: self.reference.clone(),
                progress: tx,
                outputs: HashMap::new(),
            };
            tasks.push(tokio::spawn(worker.run(stop_rx.clone())));
        }
        debug!(partitions = tasks.len(), "group started");
        Ok(RunningGroup {
            group,
            log,
            stop: stop_tx,
            tasks,
            progress,
        })
    }
}

/// A worker's published state.
#[derive(Clone, Debug)]
struct Progress {
    /// The group's checkpoint.
    committed: u64,
    /// The offset after the last record processed (at or after `committed`).
    processed: u64,
    failed: Option<String>,
}

/// A consumer group started by [`ProcessorHost::start`]. Dropping it stops its workers
/// abruptly (like a crash: uncommitted work is redone by the next run); call
/// [`shutdown`](Self::shutdown) to stop them after their current batch.
#[derive(Debug)]
pub struct RunningGroup {
    group: GroupName,
    log: Arc<dyn Log>,
    stop: watch::Sender<bool>,
    tasks: Vec<JoinHandle<Result<()>>>,
    progress: Vec<watch::Receiver<Progress>>,
}

impl RunningGroup {
    /// The group's name.
    pub fn group(&self) -> &GroupName {
        &self.group
    }

    /// The committed position (checkpoint) of each partition, as last published by the workers.
    /// It stays behind [`processed`](Self::processed) while a stateful processor holds records.
    pub fn committed(&self) -> Vec<Offset> {
        self.progress
            .iter()
            .map(|rx| Offset(rx.borrow().committed))
            .collect()
    }

    /// The offset after the last record processed in each partition.
    pub fn processed(&self) -> Vec<Offset> {
        self.progress
            .iter()
            .map(|rx| Offset(rx.borrow().processed))
            .collect()
    }

    /// Waits until every record appended to the input before this call has been processed, its
    /// outputs delivered and its progress recorded (committed, or recorded in the companion
    /// group while a stateful processor holds it). Fails if a worker stopped on an error.
    pub async fn wait_caught_up(&self) -> Result<()> {
        for (i, rx) in self.progress.iter().enumerate() {
            let target = self.log.next_offset(PartitionId(i as u32)).await?.0;
            let mut rx = rx.clone();
            let state = rx
                .wait_for(|p| p.processed >= target || p.failed.is_some())
                .await
                .map_err(|_| Error::Closed)?;
            if let Some(reason) = &state.failed {
                return Err(Error::Processor {
                    reason: reason.clone(),
                });
            }
        }
        Ok(())
    }

    /// Stops the workers after the batch each is processing, and waits for them. Returns the
    /// first error a worker stopped with.
    pub async fn shutdown(mut self) -> Result<()> {
        let _ = self.stop.send(true);
        let mut first = Ok(());
        for task in std::mem::take(&mut self.tasks) {
            let outcome = match task.await {
                Ok(r) => r,
                Err(e) => Err(Error::Processor {
                    reason: format!("worker task failed: {e}"),
                }),
            };
            if first.is_ok() {
                first = outcome;
            }
        }
        first
    }
}

impl Drop for RunningGroup {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
    }
}

/// The task that owns one partition of one group.
#[derive(Debug)]
struct Worker {
    input: String,
    log: Arc<dyn Log>,
    topics: Arc<Topics>,
    group: GroupName,
    /// Where the processed offset is recorded while the checkpoint is held back.
    mark_group: GroupName,
    partition: PartitionId,
    /// The next offset to read.
    position: u64,
    /// The last committed checkpoint.
    checkpoint: u64,
    /// The offset after the last record processed, in this run or before a restart: records
    /// below it are read in rebuild mode.
    processed: u64,
    processor: Box<dyn StreamProcessor>,
    config: HostConfig,
    reference: ReferenceData,
    progress: watch::Sender<Progress>,
    /// The logs of the topics this worker has emitted to. [`Topics`] keeps its map behind an
    /// async lock; taking it once per output topic and batch (eleven times for a routing
    /// processor with ten endpoints and a fallback) had the workers of the other partitions
    /// wait on it, be woken, and often resume on the other thread, which then freed their
    /// records across malloc arenas: `routing_bench` made ten times the futex calls of the
    /// same run with this map and kept two cores 69-86 % busy instead of 83-100 %
    /// (docs/performance.md, "Routing: the host's topic lookups").
    outputs: HashMap<String, Arc<dyn Log>>,
}

impl Worker {
    async fn run(mut self, mut stop: watch::Receiver<bool>) -> Result<()> {
        let outcome = self.run_loop(&mut stop).await;
        if let Err(e) = &outcome {
            warn!(group = %self.group, partition = %self.partition, error = %e, "worker stopped");
            self.progress
                .send_modify(|p| p.failed = Some(e.to_string()));
        }
        outcome
    }

    async fn run_loop(&mut self, stop: &mut watch::Receiver<bool>) -> Result<()> {
        let mut ticker = tokio::time::interval(self.config.tick_interval);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            if *stop.borrow() {
                return Ok(());
            }
            tokio::select! {
                changed = stop.changed() => {
                    if changed.is_err() || *stop.borrow() {
                        return Ok(());
                    }
                }
                _ = ticker.tick() => self.tick().await?,
                ready = self.log.wait_for(self.partition, Offset(self.position)) => {
                    ready?;
                    self.step().await?;
                }
            }
        }
    }

    async fn tick(&mut self) -> Result<()> {
        if self.position < self.processed {
            // Rebuilding: time must not close windows before their records are back.
            return Ok(());
        }
        // The clock is read before checking that nothing is waiting: a record appended after
        // the check is enqueued at or after `now`, so the tick never moves event time past a
        // record still to come, and a replay of the log rebuilds what the records built (see
        // `WindowEngine::tick`). With records waiting, they move event time themselves.
        let now = Timestamp::now();
        if self.log.next_offset(self.partition).await?.0 > self.position {
            return Ok(());
        }
        let mut ctx = Context::new(self.partition, self.reference.clone());
        self.processor.tick(now, &mut ctx).await?;
        self.deliver(ctx.take_emitted()).await?;
        // Windows the tick closed may let the checkpoint move.
        self.commit().await
    }

    /// Records progress after `position` advanced or the processor's state changed: the
    /// processed offset in the companion group when the checkpoint stays behind it (first, so
    /// that a crash between the two writes never leaves the checkpoint ahead of the rebuild
    /// bound), then the checkpoint.
    async fn commit(&mut self) -> Result<()> {
        let end = self.position;
        let checkpoint = self
            .processor
            .retained_offset()
            .map_or(end, |r| r.0.min(end))
            .max(self.checkpoint);
        if checkpoint < end && end > self.processed {
            self.log
                .commit(&self.mark_group, self.partition, Offset(end))
                .await?;
        }
        if checkpoint != self.checkpoint {
            self.log
                .commit(&self.group, self.partition, Offset(checkpoint))
                .await?;
        }
        self.checkpoint = checkpoint;
        self.processed = self.processed.max(end);
        let processed = self.processed;
        self.progress.send_modify(|p| {
            p.committed = checkpoint;
            p.processed = processed;
        });
        Ok(())
    }

    /// Reads, processes, delivers and commits one batch.
    #[instrument(level = "debug", skip_all, fields(group = %self.group, partition = %self.partition))]
    async fn step(&mut self) -> Result<()> {
        let from = Offset(self.position);
        let records = match self
            .log
            .read(self.partition, from, self.config.read_limits)
            .await
        {
            Ok(r) => r,
            Err(iot_core::Error::OffsetTruncated { earliest, .. }) => {
                warn!(skipped_to = %earliest, "records the group had not processed were removed by retention");
                self.position = earliest.0;
                return Ok(());
            }
            Err(e) => return Err(e.into()),
        };
        let mut records = records;
        let rebuilding = self.position < self.processed;
        if rebuilding
            && records
                .first()
                .is_some_and(|r| r.offset.0 >= self.processed)
        {
            // Retention removed the rest of the rebuild range: nothing left to rebuild from.
            self.position = self.processed;
        } else if rebuilding {
            // A batch is either all rebuild or all new records.
            records.retain(|r| r.offset.0 < self.processed);
        }
        let rebuilding = self.position < self.processed;
        let Some(last) = records.last() else {
            return Ok(());
        };
        let end = last.offset.0 + 1;
        let (emitted, dead) = self.process_with_retries(&records, rebuilding).await;
        if rebuilding {
            debug!(
                records = records.len(),
                "rebuilt state from records processed before the restart"
            );
        } else {
            self.deliver(emitted).await?;
            self.deliver(dead).await?;
        }
        self.position = end;
        self.commit().await
    }

    /// Processes `records` with retries. Returns what to emit and what to dead-letter.
    async fn process_with_retries(
        &mut self,
        records: &[StoredRecord],
        rebuilding: bool,
    ) -> (Vec<(String, Record)>, Vec<(String, Record)>) {
        match self.attempts(records, rebuilding).await {
            Ok(emitted) => return (emitted, Vec::new()),
            Err(e) if records.len() == 1 => {
                return (Vec::new(), vec![self.dead_letter(&records[0], &e)]);
            }
            Err(_) => {}
        }
        // The batch keeps failing: isolate the records that fail alone.
        let mut emitted = Vec::new();
        let mut dead = Vec::new();
        for record in records {
            match self
                .attempts(std::slice::from_ref(record), rebuilding)
                .await
            {
                Ok(out) => emitted.extend(out),
                Err(e) => dead.push(self.dead_letter(record, &e)),
            }
        }
        (emitted, dead)
    }

    async fn attempts(
        &mut self,
        records: &[StoredRecord],
        rebuilding: bool,
    ) -> Result<Vec<(String, Record)>> {
        let mut backoff = self.config.initial_backoff;
        let mut attempt = 1;
        loop {
            let mut ctx =
                Context::new(self.partition, self.reference.clone()).with_rebuilding(rebuilding);
            match self.processor.process(records, &mut ctx).await {
                Ok(()) => return Ok(ctx.take_emitted()),
                // Retrying cannot fix bad input.
                Err(e) if attempt >= self.config.max_attempts || !e.is_retryable() => {
                    return Err(e);
                }
                Err(e) => {
                    warn!(group = %self.group, partition = %self.partition, attempt,
                        records = records.len(), error = %e, "processing failed; retrying");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(self.config.max_backoff);
                    attempt += 1;
                }
            }
        }
    }

    fn dead_letter(&self, record: &StoredRecord, error: &Error) -> (String, Record) {
        warn!(group = %self.group, partition = %self.partition, offset = %record.offset,
            error = %error, "record dead-lettered");
        let out = record
            .record
            .clone()
            .with_header(dead_letter::REASON, error.to_string())
            .with_header(dead_letter::SOURCE_TOPIC, self.input.clone())
            .with_header(dead_letter::SOURCE_PARTITION, record.partition.to_string())
            .with_header(dead_letter::SOURCE_OFFSET, record.offset.to_string())
            .with_header(dead_letter::GROUP, self.group.to_string());
        (self.config.dead_letter_topic.clone(), out)
    }

    /// Appends emitted records, topic by topic, each to the partition its key selects.
    async fn deliver(&mut self, emitted: Vec<(String, Record)>) -> Result<()> {
        if emitted.is_empty() {
            return Ok(());
        }
        let mut by_topic: BTreeMap<String, Vec<Record>> = BTreeMap::new();
        for (topic, record) in emitted {
            by_topic.entry(topic).or_default().push(record);
        }
        for (topic, records) in by_topic {
            let log = match self.outputs.get(&topic) {
                Some(log) => log.clone(),
                None => {
                    let log = self.topics.topic(&topic).await?;
                    self.outputs.insert(topic, log.clone());
                    log
                }
            };
            Producer::new(log).send_batch(records).await?;
        }
        Ok(())
    }
}

// The setters are the only way other crates can build these (`non_exhaustive`): each must set
// its own field and nothing else. Values differ from the defaults and from each other, so a
// setter that writes the wrong field leaves the expected one at its default and fails.
#[cfg(test)]
mod setter_tests {
    use super::*;

    #[test]
    fn each_setter_sets_its_own_field() {
        let built = HostConfig::default()
            .start_from(StartFrom::Latest)
            .read_limits(ReadLimits::records(7))
            .max_attempts(9)
            .initial_backoff(Duration::from_millis(11))
            .max_backoff(Duration::from_millis(13))
            .dead_letter_topic("dl")
            .tick_interval(Duration::from_millis(17));
        let expected = HostConfig {
            start_from: StartFrom::Latest,
            read_limits: ReadLimits::records(7),
            max_attempts: 9,
            initial_backoff: Duration::from_millis(11),
            max_backoff: Duration::from_millis(13),
            dead_letter_topic: "dl".to_owned(),
            tick_interval: Duration::from_millis(17),
        };
        // HostConfig has no PartialEq (nothing else needs it); its Debug output shows every field.
        assert_eq!(format!("{built:?}"), format!("{expected:?}"));
    }
}
