//! The sink framework: batches cut by count, size and age; retries with backoff; dead letters;
//! restarts that lose nothing and write no batch under two names; a model check of the batch
//! cuts over any delivery chunking, ticks and restarts.
#![allow(clippy::unwrap_used, clippy::print_stderr)]

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use iot_core::{
    GroupName, Log, Offset, PartitionId, Producer, ReadLimits, Record, StoredRecord, Timestamp,
    Topics,
};
use iot_stream::sinks::{
    BatchPolicy, SINK_HEADER, Sink, SinkBatch, SinkConfig, SinkError, SinkProcessor,
};
use iot_stream::{
    Context, HostConfig, ProcessorFactory, ProcessorHost, ReferenceData, RunningGroup,
};
use proptest::prelude::*;

/// A store keyed as the object sink names objects: (partition, first offset) -> offsets.
#[derive(Debug, Default)]
struct Recorder {
    objects: Mutex<BTreeMap<(u32, u64), Vec<u64>>>,
    writes: AtomicUsize,
    /// Writes to fail (as unavailable) before the first success.
    fail_first: AtomicUsize,
    /// Batches holding a record with this header are refused.
    reject_header: Option<&'static str>,
    delay: Duration,
}

#[async_trait]
impl Sink for Recorder {
    fn name(&self) -> &str {
        "recorder"
    }

    async fn write(&self, batch: SinkBatch<'_>) -> Result<(), SinkError> {
        if !self.delay.is_zero() {
            tokio::time::sleep(self.delay).await;
        }
        if self
            .fail_first
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
            .is_ok()
        {
            return Err(SinkError::Unavailable {
                reason: "injected outage".into(),
            });
        }
        if let Some(h) = self.reject_header
            && batch
                .records
                .iter()
                .any(|r| r.record.headers.get(h).is_some())
        {
            return Err(SinkError::Rejected {
                reason: "refused".into(),
            });
        }
        let offsets: Vec<u64> = batch.records.iter().map(|r| r.offset.0).collect();
        let first = offsets[0];
        let mut objects = self.objects.lock().unwrap();
        if let Some(old) = objects.get(&(batch.partition.0, first)) {
            assert_eq!(
                old, &offsets,
                "a batch rewritten under its name with other records"
            );
        }
        objects.insert((batch.partition.0, first), offsets);
        self.writes.fetch_add(1, Ordering::SeqCst);
        Ok(())
    }
}

impl Recorder {
    /// Every stored offset of `partition`, checking that no record is in two objects.
    fn offsets(&self, partition: u32) -> Vec<u64> {
        let objects = self.objects.lock().unwrap();
        let mut all: Vec<u64> = objects
            .iter()
            .filter(|((p, _), _)| *p == partition)
            .flat_map(|(_, o)| o.iter().copied())
            .collect();
        let n = all.len();
        all.sort_unstable();
        all.dedup();
        assert_eq!(all.len(), n, "a record stored in two objects");
        all
    }
}

fn host_config() -> HostConfig {
    HostConfig::default()
        .read_limits(ReadLimits::records(7))
        .tick_interval(Duration::from_millis(20))
}

fn sink_config(batch: BatchPolicy) -> SinkConfig {
    SinkConfig::default()
        .batch(batch)
        .initial_backoff(Duration::from_millis(1))
        .max_backoff(Duration::from_millis(5))
        .max_attempts(5)
}

async fn start(topics: &Arc<Topics>, sink: Arc<Recorder>, config: SinkConfig) -> RunningGroup {
    let factory = SinkProcessor::factory(sink, config).unwrap();
    ProcessorHost::new(topics.clone())
        .start(
            "endpoint",
            GroupName::new("sink").unwrap(),
            Arc::new(factory),
            host_config(),
        )
        .await
        .unwrap()
}

async fn send(topics: &Topics, range: std::ops::Range<usize>) {
    let producer = Producer::new(topics.topic("endpoint").await.unwrap());
    for i in range {
        let mut record = Record::new(format!("dev-{}", i % 5), format!("{{\"n\":{i}}}"));
        if i % 97 == 13 {
            record = record.with_header("poison", "yes");
        }
        producer.send(record).await.unwrap();
    }
}

/// Waits until every record of the endpoint topic is written (the checkpoint at the end).
async fn wait_written(topics: &Topics, group: &RunningGroup) {
    let log = topics.topic("endpoint").await.unwrap();
    let guard = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let mut ends = Vec::new();
        for p in 0..log.partition_count() {
            ends.push(log.next_offset(PartitionId(p)).await.unwrap());
        }
        if group.committed() == ends {
            return;
        }
        assert!(
            tokio::time::Instant::now() < guard,
            "the sink never caught up"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

async fn all_offsets(topics: &Topics, topic: &str, partition: u32) -> Vec<StoredRecord> {
    let log: Arc<dyn Log> = topics.topic(topic).await.unwrap();
    log.read(PartitionId(partition), Offset(0), ReadLimits::default())
        .await
        .unwrap()
}

#[tokio::test]
async fn batches_close_by_count_and_by_age_and_every_record_is_written_once() {
    let topics = Arc::new(Topics::memory(2));
    let sink = Arc::new(Recorder::default());
    let policy = BatchPolicy {
        max_records: 10,
        max_bytes: 1 << 20,
        max_age: Duration::from_millis(300),
    };
    let group = start(&topics, sink.clone(), sink_config(policy)).await;
    send(&topics, 0..95).await;
    group.wait_caught_up().await.unwrap();
    // The partial batches close by age, with no further record.
    wait_written(&topics, &group).await;
    group.shutdown().await.unwrap();
    let mut total = 0;
    for p in 0..2 {
        let expected: Vec<u64> = all_offsets(&topics, "endpoint", p)
            .await
            .iter()
            .map(|r| r.offset.0)
            .collect();
        assert_eq!(sink.offsets(p), expected);
        total += expected.len();
    }
    assert_eq!(total, 95);
    let objects = sink.objects.lock().unwrap();
    assert!(
        objects.values().all(|o| o.len() <= 10),
        "a batch over max_records"
    );
    assert_eq!(
        sink.writes.load(Ordering::SeqCst),
        objects.len(),
        "a batch written twice"
    );
}

#[tokio::test]
async fn an_unavailable_endpoint_is_retried_and_a_refused_batch_is_dead_lettered() {
    let topics = Arc::new(Topics::memory(1));
    let sink = Arc::new(Recorder {
        fail_first: AtomicUsize::new(3),
        reject_header: Some("poison"),
        ..Recorder::default()
    });
    let policy = BatchPolicy {
        max_records: 5,
        ..BatchPolicy::default()
    };
    let group = start(&topics, sink.clone(), sink_config(policy)).await;
    send(&topics, 0..40).await;
    wait_written(&topics, &group).await;
    group.shutdown().await.unwrap();

    // Record 13 is poison: its batch (offsets 10..15 when cut by five) is refused.
    let dead = all_offsets(&topics, "deadletter", 0).await;
    let dead_offsets: Vec<&str> = dead
        .iter()
        .map(|r| r.record.headers.get("x-source-offset").unwrap())
        .collect();
    assert_eq!(dead_offsets, ["10", "11", "12", "13", "14"]);
    assert!(
        dead.iter()
            .all(|r| r.record.headers.get(SINK_HEADER) == Some("recorder"))
    );
    assert!(
        dead[0]
            .record
            .headers
            .get("x-dead-letter-reason")
            .unwrap()
            .contains("refused")
    );
    let written = sink.offsets(0);
    let expected: Vec<u64> = (0..40).filter(|o| !(10..15).contains(o)).collect();
    assert_eq!(written, expected, "the outage was retried; nothing lost");
    assert_eq!(sink.fail_first.load(Ordering::SeqCst), 0);
}

#[tokio::test]
async fn a_sink_that_keeps_failing_dead_letters_after_its_attempts() {
    let topics = Arc::new(Topics::memory(1));
    let sink = Arc::new(Recorder {
        fail_first: AtomicUsize::new(usize::MAX),
        ..Recorder::default()
    });
    let policy = BatchPolicy {
        max_records: 4,
        ..BatchPolicy::default()
    };
    let group = start(&topics, sink.clone(), sink_config(policy).max_attempts(3)).await;
    send(&topics, 0..8).await;
    wait_written(&topics, &group).await;
    group.shutdown().await.unwrap();
    assert_eq!(all_offsets(&topics, "deadletter", 0).await.len(), 8);
    assert_eq!(
        usize::MAX - sink.fail_first.load(Ordering::SeqCst),
        6,
        "3 attempts per batch"
    );
    assert!(sink.offsets(0).is_empty());
}

#[tokio::test]
async fn a_crash_loses_nothing_and_writes_no_batch_under_two_names() {
    let topics = Arc::new(Topics::memory(2));
    let sink = Arc::new(Recorder {
        delay: Duration::from_millis(3),
        ..Recorder::default()
    });
    let policy = BatchPolicy {
        max_records: 9,
        max_bytes: 1 << 20,
        max_age: Duration::from_millis(200),
    };
    send(&topics, 0..600).await;
    let group = start(&topics, sink.clone(), sink_config(policy)).await;
    let guard = tokio::time::Instant::now() + Duration::from_secs(30);
    while sink.writes.load(Ordering::SeqCst) < 20 {
        assert!(tokio::time::Instant::now() < guard, "no progress");
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    // A crash: the workers are aborted wherever they are (mid-batch, mid-write).
    drop(group);
    let before = sink.writes.load(Ordering::SeqCst);
    eprintln!("crash after {before} writes");
    send(&topics, 600..700).await;
    let group = start(&topics, sink.clone(), sink_config(policy)).await;
    wait_written(&topics, &group).await;
    group.shutdown().await.unwrap();
    let mut total = 0;
    for p in 0..2 {
        let expected: Vec<u64> = all_offsets(&topics, "endpoint", p)
            .await
            .iter()
            .map(|r| r.offset.0)
            .collect();
        assert_eq!(sink.offsets(p), expected, "partition {p}");
        total += expected.len();
    }
    assert_eq!(total, 700);
    let objects = sink.objects.lock().unwrap().len();
    let writes = sink.writes.load(Ordering::SeqCst);
    assert!(
        writes <= objects + 2,
        "{writes} writes for {objects} batches: more than one batch per partition written again"
    );
}

// ---- model check of the batch cuts --------------------------------------------------------

/// The batches `policy` cuts `records` into, by first offset.
fn model(records: &[StoredRecord], policy: &BatchPolicy) -> BTreeMap<u64, Vec<u64>> {
    let mut out = BTreeMap::new();
    let mut open: Vec<&StoredRecord> = Vec::new();
    let mut bytes = 0;
    for r in records {
        let fits = open.first().is_none_or(|first| {
            open.len() < policy.max_records
                && bytes + r.record.size_bytes() <= policy.max_bytes
                && r.enqueued_time < first.enqueued_time.saturating_add(policy.max_age)
        });
        if !fits {
            out.insert(open[0].offset.0, open.iter().map(|r| r.offset.0).collect());
            open.clear();
            bytes = 0;
        }
        bytes += r.record.size_bytes();
        open.push(r);
    }
    if let Some(first) = open.first() {
        out.insert(first.offset.0, open.iter().map(|r| r.offset.0).collect());
    }
    out
}

#[derive(Clone, Debug)]
enum Step {
    /// Feed the next `n` records as one batch.
    Feed(usize),
    /// Tick at the next record's enqueued time (the host's clock never passes a record to come).
    Tick,
    /// Crash: a new processor resumes from the last checkpoint.
    Crash,
}

fn step() -> impl Strategy<Value = Step> {
    prop_oneof![
        6 => (1usize..12).prop_map(Step::Feed),
        2 => Just(Step::Tick),
        1 => Just(Step::Crash),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(200))]

    #[test]
    fn batches_are_cut_as_the_model_cuts_them_whatever_the_chunks_ticks_and_crashes(
        gaps in prop::collection::vec((0u64..40, 0usize..60), 1..120),
        max_records in 1usize..12,
        max_bytes in 40usize..400,
        max_age in 10u64..100,
        steps in prop::collection::vec(step(), 1..80),
    ) {
        let mut t = 1_000_000u64;
        let records: Vec<StoredRecord> = gaps.iter().enumerate().map(|(i, (gap, size))| {
            t += gap * 1_000;
            StoredRecord::new(PartitionId(0), Offset(i as u64), Timestamp::from_unix_micros(t),
                Record::new("d", vec![b'x'; *size]))
        }).collect();
        let policy = BatchPolicy { max_records, max_bytes, max_age: Duration::from_millis(max_age) };
        let expected = model(&records, &policy);
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        runtime.block_on(async {
            let sink = Arc::new(Recorder::default());
            let factory = SinkProcessor::factory(sink.clone(), sink_config(policy)).unwrap();
            let mut processor = factory.create(PartitionId(0)).unwrap();
            let mut checkpoint = 0usize;
            let mut next = 0usize;
            let ctx = || Context::new(PartitionId(0), ReferenceData::new());
            let commit = |p: &dyn iot_stream::StreamProcessor, next: usize| {
                p.retained_offset().map_or(next, |o| o.0 as usize)
            };
            for step in steps.iter().chain(std::iter::repeat_n(&Step::Feed(usize::MAX), 1)) {
                match step {
                    Step::Feed(n) => {
                        let end = next.saturating_add(*n).min(records.len());
                        if end > next {
                            processor.process(&records[next..end], &mut ctx()).await.unwrap();
                            next = end;
                            checkpoint = commit(&*processor, next).max(checkpoint);
                        }
                    }
                    Step::Tick => {
                        let now = records.get(next).map_or(Timestamp::from_unix_micros(t), |r| r.enqueued_time);
                        processor.tick(now, &mut ctx()).await.unwrap();
                        checkpoint = commit(&*processor, next).max(checkpoint);
                    }
                    Step::Crash => {
                        processor = factory.create(PartitionId(0)).unwrap();
                        next = checkpoint;
                    }
                }
            }
            // Time passes with no more records: the last batch closes.
            let end = Timestamp::from_unix_micros(t).saturating_add(policy.max_age);
            processor.tick(end, &mut ctx()).await.unwrap();
            assert_eq!(processor.retained_offset(), None);
            let got: BTreeMap<u64, Vec<u64>> = sink.objects.lock().unwrap().iter()
                .map(|((_, first), offsets)| (*first, offsets.clone())).collect();
            assert_eq!(got, expected);
        });
    }
}
