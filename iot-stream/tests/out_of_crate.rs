//! The `StateStore` an integrator would write — outside this crate, over a `Mutex<BTreeMap>`,
//! public API only — must pass the whole conformance suite, twice over the same "database" and
//! across reopens, and behind the fault wrapper.
//!
//! Rows are kept in plain columns (time, sequence, source partition and offset, payload) and
//! events are rebuilt with the public constructors, as a database backend must; the last known
//! values record is stored as its serde JSON document, as a JSON column would hold it.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, MutexGuard};

use async_trait::async_trait;
use iot_core::{DeviceId, Timestamp};
use iot_stream::testkit::{self, FaultMode, FaultPlan, FaultyStateStore, StateStoreFactory};
use iot_stream::{Error, Event, LastKnown, LkvUpdate, Result, SourcePosition, StateStore};
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
