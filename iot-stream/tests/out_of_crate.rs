//! The `StateStore` an integrator would write — outside this crate, over a `Mutex<BTreeMap>`,
//! public API only — must pass the whole conformance suite, twice over the same "database" and
//! across reopens, and behind the fault wrapper.
//!
//! Rows are kept in plain columns (time, sequence, source partition and offset, payload) and
//! events are rebuilt with the public constructors, as a database backend must; the last known
//! values record is stored as its serde JSON document, as a JSON column would hold it.
//!
//! A stateful `StreamProcessor` written outside the crate (`Batcher`, at the end) runs under the
//! public `ProcessorHost`: its `retained_offset` holds the checkpoint back, and after a restart
//! the host replays what it held so the new processor rebuilds it and flushes it on `tick`.
//! (`tests/host.rs` runs a stateless out-of-crate processor through retries, dead letters and
//! resumption.)

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use async_trait::async_trait;
use iot_core::{
    DeviceId, GroupName, Offset, PartitionId, Producer, ReadLimits, Record, StoredRecord,
    Timestamp, Topics,
};
use iot_stream::testkit::{self, FaultMode, FaultPlan, FaultyStateStore, StateStoreFactory};
use iot_stream::{
    Context, Error, Event, FnFactory, HostConfig, LastKnown, LkvUpdate, ProcessorFactory,
    ProcessorHost, Result, SourcePosition, StateStore, StreamProcessor,
};
use serde_json::json;

/// One stored event: (device, time in µs, sequence) → (source partition, source offset, payload).
type EventKey = (String, u64, u64);
type EventRow = (Option<u32>, Option<u64>, Vec<u8>);

/// The "database": tables as ordered maps.
#[derive(Debug, Default)]
struct Db {
    events: BTreeMap<EventKey, EventRow>,
    /// device → the last source position stored with an event (partition, offset).
    last_event: BTreeMap<String, (u32, u64)>,
    /// device → the last known values document (JSON text).
    last_known: BTreeMap<String, String>,
    /// The next sequence number, so equal times keep append order.
    next_seq: u64,
}

#[derive(Debug)]
struct BTreeMapStateStore {
    db: Arc<Mutex<Db>>,
}

fn backend(reason: &str) -> Error {
    Error::backend("btreemap", std::io::Error::other(reason.to_owned()), false)
}

impl BTreeMapStateStore {
    fn lock(&self) -> Result<MutexGuard<'_, Db>> {
        self.db.lock().map_err(|_| backend("poisoned"))
    }
}

fn device_id(s: &str) -> Result<DeviceId> {
    DeviceId::new(s).map_err(|e| Error::backend("btreemap", e, false))
}

#[async_trait]
impl StateStore for BTreeMapStateStore {
    async fn append_events(&self, device: &DeviceId, events: Vec<Event>) -> Result<usize> {
        let mut db = self.lock()?;
        let key = device.as_str().to_owned();
        let mut last = db
            .last_event
            .get(&key)
            .map(|&(partition, offset)| SourcePosition { partition, offset });
        let mut stored = 0;
        for e in events {
            if let Some(s) = e.source {
                if s.is_covered_by(last) {
                    continue;
                }
                last = Some(s);
            }
            let seq = db.next_seq;
            db.next_seq += 1;
            db.events.insert(
                (key.clone(), e.time.as_unix_micros(), seq),
                (
                    e.source.map(|s| s.partition),
                    e.source.map(|s| s.offset),
                    e.payload.to_vec(),
                ),
            );
            stored += 1;
        }
        if let Some(s) = last {
            db.last_event.insert(key, (s.partition, s.offset));
        }
        Ok(stored)
    }

    async fn read_events(
        &self,
        device: &DeviceId,
        from: Timestamp,
        to: Timestamp,
        limit: usize,
    ) -> Result<Vec<Event>> {
        let db = self.lock()?;
        let key = device.as_str().to_owned();
        let start = (key.clone(), from.as_unix_micros(), 0);
        let end = (key, to.as_unix_micros(), 0);
        if start >= end {
            return Ok(Vec::new());
        }
        Ok(db
            .events
            .range(start..end)
            .take(limit)
            .map(|((_, time, _), (partition, offset, payload))| {
                let event = Event::new(Timestamp::from_unix_micros(*time), payload.clone());
                match (partition, offset) {
                    (Some(partition), Some(offset)) => event.with_source(SourcePosition {
                        partition: *partition,
                        offset: *offset,
                    }),
                    _ => event,
                }
            })
            .collect())
    }

    async fn enforce_retention(&self, before: Timestamp) -> Result<u64> {
        let mut db = self.lock()?;
        let cut = before.as_unix_micros();
        let old = db.events.len();
        db.events.retain(|(_, time, _), _| *time >= cut);
        Ok(u64::try_from(old - db.events.len()).unwrap_or(u64::MAX))
    }

    async fn last_known(&self, device: &DeviceId) -> Result<Option<LastKnown>> {
        let db = self.lock()?;
        db.last_known
            .get(device.as_str())
            .map(|text| {
                serde_json::from_str(text).map_err(|e| Error::backend("btreemap", e, false))
            })
            .transpose()
    }

    async fn merge_last_known(&self, device: &DeviceId, update: LkvUpdate) -> Result<bool> {
        let mut db = self.lock()?;
        let mut record: LastKnown = match db.last_known.get(device.as_str()) {
            Some(text) => {
                serde_json::from_str(text).map_err(|e| Error::backend("btreemap", e, false))?
            }
            None => LastKnown::new(),
        };
        // `apply` refuses a bad patch before changing anything, and the row is written only after.
        if !record.apply(&update)? {
            return Ok(false);
        }
        let text =
            serde_json::to_string(&record).map_err(|e| Error::backend("btreemap", e, false))?;
        db.last_known.insert(device.as_str().to_owned(), text);
        Ok(true)
    }

    async fn devices(&self) -> Result<Vec<DeviceId>> {
        let db = self.lock()?;
        let mut names: Vec<&String> = db
            .events
            .keys()
            .map(|(d, _, _)| d)
            .chain(db.last_event.keys())
            .chain(db.last_known.keys())
            .collect();
        names.sort();
        names.dedup();
        names.into_iter().map(|n| device_id(n)).collect()
    }
}

/// Opens handles on one shared database; a reopen is a new handle on the same data.
#[derive(Default)]
struct Factory {
    db: Arc<Mutex<Db>>,
}

#[async_trait]
impl StateStoreFactory for Factory {
    async fn open(&self) -> Result<Arc<dyn StateStore>> {
        Ok(Arc::new(BTreeMapStateStore {
            db: Arc::clone(&self.db),
        }))
    }

    async fn reopen(&self, previous: Arc<dyn StateStore>) -> Option<Result<Arc<dyn StateStore>>> {
        drop(previous);
        Some(self.open().await)
    }
}

#[tokio::test]
async fn a_btreemap_store_passes_the_suite_twice_over_one_database() {
    let factory = Factory::default();
    testkit::run_all(&factory).await;
    let after_one = factory.db.lock().map(|db| db.last_known.len()).unwrap_or(0);
    testkit::run_all(&factory).await;
    let after_two = factory.db.lock().map(|db| db.last_known.len()).unwrap_or(0);
    assert!(after_one > 0 && after_two > after_one, "both runs wrote");
}

#[tokio::test]
async fn a_btreemap_store_passes_the_suite_behind_the_fault_wrapper() {
    struct Faulty(Factory, Arc<FaultPlan>);

    #[async_trait]
    impl StateStoreFactory for Faulty {
        async fn open(&self) -> Result<Arc<dyn StateStore>> {
            let store = BTreeMapStateStore {
                db: Arc::clone(&self.0.db),
            };
            Ok(Arc::new(FaultyStateStore::new(store, Arc::clone(&self.1))))
        }
    }

    let plan = FaultPlan::counting();
    testkit::run_all(&Faulty(Factory::default(), Arc::clone(&plan))).await;
    assert!(plan.calls() > 0);
}

/// An injected fault is a retryable backend error; before forwarding it changes nothing, after
/// forwarding the write took effect although the caller saw a failure.
#[tokio::test]
async fn injected_faults_are_retryable_and_before_or_after_the_write() {
    let device = testkit::fresh_id("tk-fault");
    let update = |t: u64| LkvUpdate {
        patch: json!({"t": t}),
        key_frame: false,
        source_time: Timestamp::from_unix_millis(t),
        source: None,
    };
    for (mode, applied) in [(FaultMode::Before, false), (FaultMode::After, true)] {
        let factory = Factory::default();
        let store = FaultyStateStore::new(
            BTreeMapStateStore {
                db: Arc::clone(&factory.db),
            },
            FaultPlan::fail_at(1, mode),
        );
        let err = store
            .merge_last_known(&device, update(1))
            .await
            .expect_err("call 1 fails");
        assert!(
            matches!(err, Error::Backend { .. }) && err.is_retryable(),
            "{err:?}"
        );
        let seen = store.inner().last_known(&device).await.expect("read");
        assert_eq!(seen.is_some(), applied, "{mode:?}");
    }
}

/// The suite catches a backend that forgets, on restart, which source positions it stored (a
/// position kept in memory next to rows kept on disk): redeliveries after a reopen get stored.
#[tokio::test]
#[should_panic(expected = "a redelivered event is skipped after a reopen")]
async fn the_suite_catches_positions_forgotten_on_reopen() {
    struct Forgetful(Factory);

    #[async_trait]
    impl StateStoreFactory for Forgetful {
        async fn open(&self) -> Result<Arc<dyn StateStore>> {
            self.0.open().await
        }

        async fn reopen(
            &self,
            previous: Arc<dyn StateStore>,
        ) -> Option<Result<Arc<dyn StateStore>>> {
            drop(previous);
            if let Ok(mut db) = self.0.db.lock() {
                db.last_event.clear();
            }
            Some(self.0.open().await)
        }
    }

    testkit::run_all(&Forgetful(Factory::default())).await;
}

/// Holds the payloads of its partition in memory and, when `flush` is set, emits them joined by
/// `,` as one record to `batches` on a tick; until then it reports the first offset it holds, so
/// a restart replays them.
#[derive(Debug, Default)]
struct Batcher {
    held: Vec<(u64, String)>,
    flush: bool,
}

fn batcher(flush: bool) -> Arc<dyn ProcessorFactory> {
    Arc::new(FnFactory::new("batcher", move |_| {
        let b = Batcher {
            held: Vec::new(),
            flush,
        };
        Ok(Box::new(b) as Box<dyn StreamProcessor>)
    }))
}

#[async_trait]
impl StreamProcessor for Batcher {
    async fn process(&mut self, batch: &[StoredRecord], _ctx: &mut Context) -> Result<()> {
        for r in batch {
            let payload = String::from_utf8_lossy(&r.record.payload).into_owned();
            self.held.push((r.offset.0, payload));
        }
        Ok(())
    }

    fn retained_offset(&self) -> Option<Offset> {
        self.held.first().map(|&(offset, _)| Offset(offset))
    }

    async fn tick(&mut self, _now: Timestamp, ctx: &mut Context) -> Result<()> {
        if !self.flush || self.held.is_empty() {
            return Ok(());
        }
        let joined: Vec<String> = self.held.drain(..).map(|(_, p)| p).collect();
        ctx.emit("batches", Record::new("batch", joined.join(",")));
        Ok(())
    }
}

async fn batches(topics: &Topics) -> Vec<String> {
    let log = topics.topic("batches").await.expect("topic");
    let batch = log
        .read(PartitionId(0), Offset(0), ReadLimits::default())
        .await
        .expect("read");
    batch
        .iter()
        .map(|r| String::from_utf8_lossy(&r.record.payload).into_owned())
        .collect()
}

#[tokio::test]
async fn a_stateful_out_of_crate_processor_is_replayed_after_a_restart() {
    let topics = Arc::new(Topics::memory(1));
    let host = ProcessorHost::new(Arc::clone(&topics));
    let group = GroupName::new("batcher").expect("group");
    let producer = Producer::new(topics.topic("telemetry").await.expect("topic"));
    for i in 0..5 {
        producer
            .send(Record::new("dev-1", format!("r{i}")))
            .await
            .expect("send");
    }
    // First run: a processor that does not flush yet (a window still open) holds all five.
    let run = host
        .start(
            "telemetry",
            group.clone(),
            batcher(false),
            HostConfig::default(),
        )
        .await
        .expect("start");
    run.wait_caught_up().await.expect("caught up");
    assert_eq!(run.processed(), [Offset(5)]);
    assert_eq!(
        run.committed(),
        [Offset(0)],
        "held records keep the checkpoint"
    );
    run.shutdown().await.expect("shutdown");
    assert!(batches(&topics).await.is_empty());

    // Second run: a new, empty processor gets the held records back, then flushes them.
    let often = HostConfig::default().tick_interval(Duration::from_millis(10));
    let run = host
        .start("telemetry", group, batcher(true), often)
        .await
        .expect("restart");
    tokio::time::timeout(Duration::from_secs(60), async {
        while run.committed() != [Offset(5)] {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await
    .expect("the checkpoint reaches the end once the batch is flushed");
    run.shutdown().await.expect("shutdown");
    assert_eq!(batches(&topics).await, ["r0,r1,r2,r3,r4"]);
}
