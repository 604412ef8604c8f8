//! The processor host: at-least-once processing with checkpoints, resume after restart,
//! independent groups, retries, dead letters, graceful shutdown.
#![allow(clippy::unwrap_used)]

use std::collections::HashMap;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use iot_core::{GroupName, Log, PartitionId, Producer, ReadLimits, Record, StoredRecord, Topics};
use iot_stream::host::dead_letter;
use iot_stream::{
    Context, Error, FnFactory, HostConfig, ProcessorFactory, ProcessorHost, Result, StreamProcessor,
};

/// Records every (partition, offset, payload) it processes; fails records whose payload is
/// `poison` always, and every batch containing `flaky` for the first `flaky_failures` attempts.
#[derive(Debug, Clone, Default)]
struct Recorder {
    seen: Arc<Mutex<Vec<(u32, u64, String)>>>,
    flaky_failures: Arc<AtomicU32>,
}

#[async_trait]
impl StreamProcessor for Recorder {
    async fn process(&mut self, batch: &[StoredRecord], ctx: &mut Context) -> Result<()> {
        for r in batch {
            let payload = String::from_utf8_lossy(&r.record.payload).into_owned();
            if payload == "poison" {
                return Err(Error::Processor {
                    reason: "poison".into(),
                });
            }
            if payload == "flaky"
                && self
                    .flaky_failures
                    .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
                    .is_ok()
            {
                return Err(Error::Processor {
                    reason: "flaky".into(),
                });
            }
        }
        for r in batch {
            let payload = String::from_utf8_lossy(&r.record.payload).into_owned();
            ctx.emit("copies", r.record.clone());
            self.seen
                .lock()
                .unwrap()
                .push((r.partition.0, r.offset.0, payload));
        }
        Ok(())
    }
}

fn factory(recorder: &Recorder) -> Arc<dyn ProcessorFactory> {
    let r = recorder.clone();
    Arc::new(FnFactory::new("recorder", move |_| {
        Ok(Box::new(r.clone()) as Box<dyn StreamProcessor>)
    }))
}

fn config() -> HostConfig {
    HostConfig::default()
        .initial_backoff(Duration::from_millis(1))
        .max_backoff(Duration::from_millis(4))
        .read_limits(ReadLimits::records(7))
}

async fn send(topics: &Topics, n: usize, prefix: &str) {
    let log = topics.topic("telemetry").await.unwrap();
    let records = (0..n)
        .map(|i| Record::new(format!("dev-{}", i % 5), format!("{prefix}{i}")))
        .collect();
    Producer::new(log).send_batch(records).await.unwrap();
}

async fn total(log: &Arc<dyn Log>) -> u64 {
    let mut n = 0;
    for p in 0..log.partition_count() {
        n += log.next_offset(PartitionId(p)).await.unwrap().0
            - log.earliest_offset(PartitionId(p)).await.unwrap().0;
    }
    n
}

#[tokio::test]
async fn processes_everything_once_commits_and_resumes() {
    let topics = Arc::new(Topics::memory(3));
    let host = ProcessorHost::new(topics.clone());
    let rec = Recorder::default();
    let group = GroupName::new("g").unwrap();
    send(&topics, 50, "a").await;
    let running = host
        .start("telemetry", group.clone(), factory(&rec), config())
        .await
        .unwrap();
    running.wait_caught_up().await.unwrap();
    running.shutdown().await.unwrap();
    assert_eq!(rec.seen.lock().unwrap().len(), 50);
    assert_eq!(total(&topics.topic("copies").await.unwrap()).await, 50);

    // A restarted group resumes at its checkpoints: only new records are processed.
    send(&topics, 20, "b").await;
    let running = host
        .start("telemetry", group, factory(&rec), config())
        .await
        .unwrap();
    running.wait_caught_up().await.unwrap();
    running.shutdown().await.unwrap();
    let seen = rec.seen.lock().unwrap().clone();
    assert_eq!(seen.len(), 70);
    let mut keys: Vec<_> = seen.iter().map(|(p, o, _)| (*p, *o)).collect();
    keys.sort();
    keys.dedup();
    assert_eq!(keys.len(), 70, "no record processed twice without a crash");
    // Per partition, offsets were processed in order.
    let mut last: HashMap<u32, u64> = HashMap::new();
    for (p, o, _) in &seen {
        if let Some(prev) = last.insert(*p, *o) {
            assert!(*o > prev);
        }
    }
}

#[tokio::test]
async fn groups_are_independent() {
    let topics = Arc::new(Topics::memory(2));
    let host = ProcessorHost::new(topics.clone());
    send(&topics, 30, "x").await;
    let (a, b) = (Recorder::default(), Recorder::default());
    let ga = host
        .start(
            "telemetry",
            GroupName::new("a").unwrap(),
            factory(&a),
            config(),
        )
        .await
        .unwrap();
    let gb = host
        .start(
            "telemetry",
            GroupName::new("b").unwrap(),
            factory(&b),
            config(),
        )
        .await
        .unwrap();
    ga.wait_caught_up().await.unwrap();
    gb.wait_caught_up().await.unwrap();
    ga.shutdown().await.unwrap();
    gb.shutdown().await.unwrap();
    assert_eq!(a.seen.lock().unwrap().len(), 30);
    assert_eq!(b.seen.lock().unwrap().len(), 30);
}

#[tokio::test]
async fn retries_then_dead_letters_only_the_failing_record() {
    let topics = Arc::new(Topics::memory(1));
    let host = ProcessorHost::new(topics.clone());
    let log = topics.topic("telemetry").await.unwrap();
    let producer = Producer::new(log);
    for p in ["ok1", "flaky", "poison", "ok2"] {
        producer.send(Record::new("dev-1", p)).await.unwrap();
    }
    let rec = Recorder::default();
    rec.flaky_failures.store(2, Ordering::SeqCst);
    let running = host
        .start(
            "telemetry",
            GroupName::new("g").unwrap(),
            factory(&rec),
            config(),
        )
        .await
        .unwrap();
    running.wait_caught_up().await.unwrap();
    running.shutdown().await.unwrap();
    let mut seen: Vec<_> = rec
        .seen
        .lock()
        .unwrap()
        .iter()
        .map(|s| s.2.clone())
        .collect();
    seen.sort();
    assert_eq!(seen, ["flaky", "ok1", "ok2"]);
    let dlq = topics.topic("deadletter").await.unwrap();
    let dead = dlq
        .read(PartitionId(0), iot_core::Offset(0), ReadLimits::default())
        .await
        .unwrap();
    assert_eq!(dead.len(), 1);
    let h = &dead[0].record.headers;
    assert_eq!(dead[0].record.payload, "poison");
    assert_eq!(h.get(dead_letter::SOURCE_OFFSET), Some("2"));
    assert_eq!(h.get(dead_letter::SOURCE_TOPIC), Some("telemetry"));
    assert_eq!(h.get(dead_letter::GROUP), Some("g"));
    assert!(
        h.get(dead_letter::REASON)
            .is_some_and(|r| r.contains("poison"))
    );
}

#[tokio::test]
async fn tails_new_records_and_shuts_down_gracefully() {
    let topics = Arc::new(Topics::memory(2));
    let host = ProcessorHost::new(topics.clone());
    let rec = Recorder::default();
    let group = GroupName::new("g").unwrap();
    let running = host
        .start("telemetry", group.clone(), factory(&rec), config())
        .await
        .unwrap();
    for round in 0..3 {
        send(&topics, 10, &format!("r{round}-")).await;
        running.wait_caught_up().await.unwrap();
    }
    let committed = running.committed();
    running.shutdown().await.unwrap();
    assert_eq!(rec.seen.lock().unwrap().len(), 30);
    let log = topics.topic("telemetry").await.unwrap();
    for (p, c) in committed.iter().enumerate() {
        assert_eq!(
            log.committed(&group, PartitionId(p as u32)).await.unwrap(),
            Some(*c)
        );
        assert_eq!(log.next_offset(PartitionId(p as u32)).await.unwrap(), *c);
    }
}

#[tokio::test]
async fn refuses_a_bad_config() {
    let host = ProcessorHost::new(Arc::new(Topics::memory(1)));
    let cfg = HostConfig::default().max_attempts(0);
    let r = host
        .start(
            "telemetry",
            GroupName::new("g").unwrap(),
            factory(&Recorder::default()),
            cfg,
        )
        .await;
    assert!(matches!(r, Err(Error::InvalidInput { .. })));
}
