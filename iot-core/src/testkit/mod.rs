//! The conformance suite for [`Log`] implementations (feature `testkit`).
//!
//! An integrator with a log of their own runs the whole suite once, through a [`LogFactory`]
//! that opens their log for a topic name:
//!
//! ```
//! # tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(async {
//! use iot_core::testkit::{self, SuiteOptions};
//! use iot_core::MemoryLogFactory;
//!
//! testkit::run_all(&MemoryLogFactory::default(), &SuiteOptions::default()).await;
//! # });
//! ```
//!
//! [`run_all`] opens one log per check, under a topic name drawn fresh for every run
//! ([`fresh_topic_name`]), so the suite can run again and again against the same persistent
//! database or directory: each run sees only empty logs of its own. Each check panics with a
//! message on the first violation of the contract documented on [`Log`].
//!
//! The checks are public too, each taking a **fresh, empty** log with **at least two
//! partitions**, for running one at a time. Differences between implementations are parameters
//! ([`SuiteOptions`]: the limits a log was built with, the granularity of its retention) or
//! stated by the log itself ([`Log::capabilities`]: a check of a property the log denies is
//! skipped), not separate suites.
//!
//! [`FaultyLog`] wraps any log and fails the calls it is told to fail, for testing callers;
//! [`crash`] is the kill -9 harness every store's crash tests use; [`blocking_pool`] holds
//! tokio's blocking pool back for tests of work a dropped caller left running there.

#![allow(clippy::unwrap_used, clippy::missing_panics_doc)]

pub mod blocking_pool;
pub mod crash;
pub mod fault;

use std::collections::hash_map::RandomState;
use std::hash::BuildHasher;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime};

use bytes::Bytes;

pub use fault::{FaultKind, FaultyLog, InjectedFault, Operation};

use crate::consumer::{GroupConsumer, StartFrom};
use crate::error::Error;
use crate::headers;
use crate::limits::{LogLimits, ReadLimits};
use crate::log::{Log, RetentionPolicy};
use crate::names::{GroupName, TopicName};
use crate::offset::{Offset, PartitionId};
use crate::record::{Record, StoredRecord};
use crate::timestamp::Timestamp;
use crate::topics::LogFactory;

const P0: PartitionId = PartitionId(0);
const P1: PartitionId = PartitionId(1);

/// A recognisable record: payload `"{key}:{n}"`, a subject header, device time `n` ms.
pub fn sample_record(key: &str, n: u64) -> Record {
    Record::new(key, format!("{key}:{n}"))
        .with_header(headers::SUBJECT, "temperature")
        .with_header(headers::CONTENT_TYPE, "text/plain")
        .with_device_time(Timestamp::from_unix_millis(n))
}

async fn read_all(log: &dyn Log, p: PartitionId, from: Offset) -> Vec<StoredRecord> {
    let mut out = Vec::new();
    let mut at = from;
    loop {
        let batch = log.read(p, at, ReadLimits::records(10_000)).await.unwrap();
        let Some(last) = batch.last() else { break };
        at = last.offset.next();
        out.extend(batch);
    }
    out
}

/// Every record of partition `p`, from its earliest offset to its end, in order: what a test
/// compares with what it wrote.
pub async fn read_records(log: &dyn Log, p: PartitionId) -> Vec<Record> {
    let earliest = log.earliest_offset(p).await.unwrap();
    read_all(log, p, earliest)
        .await
        .into_iter()
        .map(|r| r.record)
        .collect()
}

/// Appended batches come back whole, in order, with dense offsets, in the right partition, and
/// with every field intact; enqueued times never decrease; reads at the end are empty and past it
/// fail.
pub async fn append_and_read(log: &dyn Log) {
    assert!(log.partition_count() >= 2, "the suite needs two partitions");
    assert_eq!(log.next_offset(P0).await.unwrap(), Offset(0));
    assert_eq!(log.earliest_offset(P0).await.unwrap(), Offset(0));

    let mut expected = Vec::new();
    for batch in 0..5u64 {
        let records: Vec<Record> = (0..=batch)
            .map(|i| sample_record("dev-a", batch * 10 + i))
            .collect();
        let appended = log.append(P0, records.clone()).await.unwrap();
        assert_eq!(appended.partition, P0);
        assert_eq!(
            appended.first,
            Offset(expected.len() as u64),
            "offsets must be dense"
        );
        assert_eq!(appended.count, records.len() as u64);
        expected.extend(records);
    }
    let odd = Record::new("", Bytes::new());
    let appended = log.append(P0, vec![odd.clone()]).await.unwrap();
    assert_eq!(appended.first, Offset(expected.len() as u64));
    expected.push(odd);
    log.append(P1, vec![sample_record("dev-b", 1)])
        .await
        .unwrap();

    let back = read_all(log, P0, Offset(0)).await;
    assert_eq!(back.len(), expected.len());
    let mut last_time = Timestamp::EPOCH;
    for (i, (stored, record)) in back.iter().zip(&expected).enumerate() {
        assert_eq!(stored.offset, Offset(i as u64));
        assert_eq!(stored.partition, P0);
        assert_eq!(&stored.record, record, "record {i} changed on the way");
        assert!(
            stored.enqueued_time >= last_time,
            "enqueued time went backwards"
        );
        last_time = stored.enqueued_time;
    }
    let order: Vec<_> = back[0].record.headers.iter().map(|(n, _)| n).collect();
    assert_eq!(
        order,
        [headers::SUBJECT, headers::CONTENT_TYPE],
        "header order is kept"
    );

    let middle = log
        .read(P0, Offset(7), ReadLimits::records(3))
        .await
        .unwrap();
    assert_eq!(
        middle.iter().map(|r| r.offset.0).collect::<Vec<_>>(),
        [7, 8, 9]
    );

    let next = log.next_offset(P0).await.unwrap();
    assert_eq!(next, Offset(expected.len() as u64));
    assert!(
        log.read(P0, next, ReadLimits::default())
            .await
            .unwrap()
            .is_empty()
    );
    assert!(matches!(
        log.read(P0, next.next(), ReadLimits::default()).await,
        Err(Error::OffsetBeyondEnd { .. })
    ));
    let other = read_all(log, P1, Offset(0)).await;
    assert_eq!(other.len(), 1);
    assert_eq!(other[0].record.key, "dev-b");

    log.sync().await.unwrap();
    assert_eq!(
        read_all(log, P0, Offset(0)).await.len(),
        expected.len(),
        "sync changed what the log holds"
    );
}

/// Reads honour record and byte limits, and always return the first record however large.
pub async fn read_limits(log: &dyn Log) {
    let payload = Bytes::from(vec![7u8; 1000]);
    let records: Vec<Record> = (0..20).map(|_| Record::new("k", payload.clone())).collect();
    let size = records[0].size_bytes();
    log.append(P0, records).await.unwrap();

    let by_count = log
        .read(P0, Offset(0), ReadLimits::records(5))
        .await
        .unwrap();
    assert_eq!(by_count.len(), 5);
    let by_bytes = log
        .read(
            P0,
            Offset(2),
            ReadLimits {
                max_records: 100,
                max_bytes: size * 3 + size / 2,
            },
        )
        .await
        .unwrap();
    assert_eq!(by_bytes.len(), 3, "a byte budget of 3.5 records returns 3");
    assert_eq!(by_bytes[0].offset, Offset(2));
    let tiny = log
        .read(
            P0,
            Offset(4),
            ReadLimits {
                max_records: 100,
                max_bytes: 1,
            },
        )
        .await
        .unwrap();
    assert_eq!(
        tiny.len(),
        1,
        "the first record is returned whatever its size"
    );
    assert_eq!(tiny[0].offset, Offset(4));
}

/// Bad input gets typed errors and leaves the log unchanged. `limits` are the log's limits.
pub async fn invalid_input(log: &dyn Log, limits: &LogLimits) {
    let before = log.next_offset(P0).await.unwrap();
    assert!(matches!(
        log.append(P0, vec![]).await,
        Err(Error::InvalidInput { .. })
    ));

    let big = Record::new("k", vec![0u8; limits.max_record_bytes]);
    assert!(matches!(
        log.append(P0, vec![sample_record("k", 1), big]).await,
        Err(Error::RecordTooLarge { .. })
    ));
    let many: Vec<Record> = (0..=limits.max_batch_records as u64)
        .map(|i| sample_record("k", i))
        .collect();
    assert!(matches!(
        log.append(P0, many).await,
        Err(Error::BatchTooLarge { .. })
    ));
    // Records of half the record limit, enough of them to pass the batch byte limit.
    let half = limits.max_record_bytes / 2;
    let count = limits.max_batch_bytes / half.max(1) + 1;
    if half > 64 && count <= limits.max_batch_records {
        let heavy: Vec<Record> = (0..count)
            .map(|_| Record::new("", vec![1u8; half]))
            .collect();
        assert!(matches!(
            log.append(P0, heavy).await,
            Err(Error::BatchTooLarge { .. })
        ));
    }
    assert_eq!(
        log.next_offset(P0).await.unwrap(),
        before,
        "a refused append wrote something"
    );

    let nowhere = PartitionId(log.partition_count());
    let group = GroupName::new("g").unwrap();
    let unknown = |r: Result<(), Error>| matches!(r, Err(Error::UnknownPartition { .. }));
    assert!(unknown(
        log.append(nowhere, vec![sample_record("k", 1)])
            .await
            .map(drop)
    ));
    assert!(unknown(
        log.read(nowhere, Offset(0), ReadLimits::default())
            .await
            .map(drop)
    ));
    assert!(unknown(log.wait_for(nowhere, Offset(0)).await.map(drop)));
    assert!(unknown(log.earliest_offset(nowhere).await.map(drop)));
    assert!(unknown(log.next_offset(nowhere).await.map(drop)));
    assert!(unknown(log.commit(&group, nowhere, Offset(0)).await));
    assert!(unknown(log.committed(&group, nowhere).await.map(drop)));

    let zero = ReadLimits {
        max_records: 0,
        max_bytes: 10,
    };
    assert!(matches!(
        log.read(P0, Offset(0), zero).await,
        Err(Error::InvalidInput { .. })
    ));
    assert!(matches!(
        log.read(P0, Offset(u64::MAX), ReadLimits::default()).await,
        Err(Error::OffsetBeyondEnd { .. })
    ));
}

/// `wait_for` returns at once when data is there, wakes on an append, and is cancel safe.
pub async fn tailing(log: Arc<dyn Log>) {
    log.append(P0, vec![sample_record("k", 0)]).await.unwrap();
    assert_eq!(log.wait_for(P0, Offset(0)).await.unwrap(), Offset(1));

    // Dropping a pending wait is harmless.
    let pending =
        tokio::time::timeout(Duration::from_millis(20), log.wait_for(P0, Offset(1))).await;
    assert!(
        pending.is_err(),
        "wait_for returned before the record existed"
    );

    let waiter = {
        let log = log.clone();
        tokio::spawn(async move { log.wait_for(P0, Offset(1)).await })
    };
    let other = {
        let log = log.clone();
        tokio::spawn(async move { log.wait_for(P1, Offset(0)).await })
    };
    tokio::time::sleep(Duration::from_millis(20)).await;
    assert!(
        !waiter.is_finished(),
        "wait_for returned before the record existed"
    );
    log.append(P0, vec![sample_record("k", 1), sample_record("k", 2)])
        .await
        .unwrap();
    let next = tokio::time::timeout(Duration::from_secs(10), waiter)
        .await
        .expect("wait_for did not wake on append")
        .unwrap()
        .unwrap();
    if log.capabilities().atomic_batches {
        assert_eq!(next, Offset(3), "wait_for woke inside a batch");
    } else {
        // A batch may become visible record by record: any offset past the one waited for.
        assert!(
            next > Offset(1) && next <= Offset(3),
            "wait_for woke at {next}"
        );
    }
    assert!(
        !other.is_finished(),
        "an append to partition 0 woke a waiter of partition 1"
    );
    other.abort();
}

/// Concurrent appenders get disjoint, dense offset ranges, each batch contiguous.
pub async fn concurrent_appends(log: Arc<dyn Log>) {
    let tasks: Vec<_> = (0..8u64)
        .map(|t| {
            let log = log.clone();
            tokio::spawn(async move {
                let mut got = Vec::new();
                for i in 0..25u64 {
                    let batch = (0..3)
                        .map(|j| sample_record(&format!("t{t}"), i * 3 + j))
                        .collect();
                    got.push(log.append(P0, batch).await.unwrap());
                }
                got
            })
        })
        .collect();
    let mut ranges = Vec::new();
    for t in tasks {
        ranges.extend(t.await.unwrap());
    }
    ranges.sort_by_key(|a| a.first);
    let mut expected = 0;
    for a in &ranges {
        assert_eq!(
            a.first,
            Offset(expected),
            "offset ranges overlap or leave gaps"
        );
        expected += a.count;
    }
    let back = read_all(log.as_ref(), P0, Offset(0)).await;
    assert_eq!(back.len() as u64, expected);
    for a in &ranges {
        let keys: Vec<_> = a
            .offsets()
            .map(|o| back[o as usize].record.key.clone())
            .collect();
        assert!(
            keys.windows(2).all(|w| w[0] == w[1]),
            "a batch was interleaved with another"
        );
    }
}

/// Batches are atomic to readers: while batches of five records are appended, every reader sees
/// the partition end on a batch boundary — through `next_offset`, `wait_for` and `read`.
///
/// Only for logs whose [`capabilities`](Log::capabilities) state `atomic_batches`; [`run_all`]
/// skips it otherwise (the rest of the suite still checks that batches stay contiguous).
pub async fn atomic_batches(log: Arc<dyn Log>) {
    const BATCH: u64 = 5;
    const BATCHES: u64 = 60;
    let writer = {
        let log = log.clone();
        tokio::spawn(async move {
            for b in 0..BATCHES {
                let batch = (0..BATCH)
                    .map(|i| sample_record("atomic", b * BATCH + i))
                    .collect();
                log.append(P0, batch).await.unwrap();
                tokio::task::yield_now().await;
            }
        })
    };
    let mut seen = 0;
    while seen < BATCHES * BATCH {
        let next = log.next_offset(P0).await.unwrap().get();
        assert_eq!(next % BATCH, 0, "next_offset {next} is inside a batch");
        let woke = log.wait_for(P0, Offset(seen)).await.unwrap().get();
        assert_eq!(woke % BATCH, 0, "wait_for woke at {woke}, inside a batch");
        let read = log
            .read(P0, Offset(seen), ReadLimits::records(10_000))
            .await
            .unwrap();
        let end = seen + read.len() as u64;
        assert_eq!(end % BATCH, 0, "a read ended at {end}, inside a batch");
        seen = end;
    }
    writer.await.unwrap();
}

/// Groups commit independently, commits are read back, commits past the end fail, and a
/// `GroupConsumer` resumes where its group committed.
pub async fn consumer_groups(log: Arc<dyn Log>) {
    let a = GroupName::new("group-a").unwrap();
    let b = GroupName::new("group-b").unwrap();
    assert_eq!(log.committed(&a, P0).await.unwrap(), None);
    let records: Vec<Record> = (0..10).map(|i| sample_record("dev", i)).collect();
    log.append(P0, records).await.unwrap();
    log.append(P1, vec![sample_record("dev", 99)])
        .await
        .unwrap();

    log.commit(&a, P0, Offset(4)).await.unwrap();
    log.commit(&b, P0, Offset(10)).await.unwrap();
    assert_eq!(log.committed(&a, P0).await.unwrap(), Some(Offset(4)));
    assert_eq!(log.committed(&b, P0).await.unwrap(), Some(Offset(10)));
    assert_eq!(log.committed(&a, P1).await.unwrap(), None);
    log.commit(&a, P0, Offset(2)).await.unwrap();
    assert_eq!(
        log.committed(&a, P0).await.unwrap(),
        Some(Offset(2)),
        "a group may rewind"
    );
    assert!(matches!(
        log.commit(&a, P0, Offset(11)).await,
        Err(Error::OffsetBeyondEnd { .. })
    ));

    let c = GroupName::new("group-c").unwrap();
    let mut consumer = GroupConsumer::new(log.clone(), c.clone(), StartFrom::Earliest)
        .await
        .unwrap();
    let mut seen = Vec::new();
    while seen.len() < 11 {
        seen.extend(consumer.next_batch().await.unwrap());
    }
    assert_eq!(seen.len(), 11, "every record once");
    consumer.commit().await.unwrap();
    assert_eq!(log.committed(&c, P0).await.unwrap(), Some(Offset(10)));
    assert_eq!(log.committed(&c, P1).await.unwrap(), Some(Offset(1)));

    let mut resumed = GroupConsumer::new(log.clone(), c, StartFrom::Earliest)
        .await
        .unwrap();
    assert!(
        resumed.try_next_batch().await.unwrap().is_empty(),
        "committed records came back"
    );
    let tail = tokio::spawn(async move { resumed.next_batch().await });
    log.append(P1, vec![sample_record("late", 1)])
        .await
        .unwrap();
    let got = tokio::time::timeout(Duration::from_secs(10), tail)
        .await
        .expect("consumer did not wake")
        .unwrap()
        .unwrap();
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].record.key, "late");

    let latest = GroupConsumer::new(
        log.clone(),
        GroupName::new("fresh").unwrap(),
        StartFrom::Latest,
    )
    .await
    .unwrap();
    assert_eq!(latest.position(P0), Offset(10));
}

/// Retention removes a prefix and keeps what the policy keeps. `granularity_bytes` is how many
/// bytes beyond the policy the implementation may keep (0 for exact, a segment and a batch for
/// segment-based logs).
pub async fn retention(log: &dyn Log, granularity_bytes: u64) {
    // Equal-sized records whose payload is their number, zero-padded to 1000 bytes.
    let numbered = |i: u64| Record::new("k", format!("{i:0>1000}"));
    let record_size = numbered(0).size_bytes() as u64;
    for i in 0..200u64 {
        log.append(P0, vec![numbered(i)]).await.unwrap();
    }
    let max_bytes = 50 * record_size;
    let policy = RetentionPolicy {
        max_age: None,
        max_bytes: Some(max_bytes),
    };
    let report = log
        .enforce_retention(&policy, Timestamp::now())
        .await
        .unwrap();
    let earliest = log.earliest_offset(P0).await.unwrap();
    let next = log.next_offset(P0).await.unwrap();
    assert_eq!(
        next,
        Offset(200),
        "retention must not change the next offset"
    );
    assert!(earliest.0 > 0, "nothing was removed");
    assert_eq!(report.records_removed, earliest.0);
    let kept = next.0 - earliest.0;
    assert!(
        kept * record_size <= max_bytes + granularity_bytes,
        "kept {kept} records, more than the policy allows"
    );
    assert!(
        kept >= 50 - granularity_bytes.div_ceil(record_size).min(50),
        "removed records the policy keeps"
    );
    let back = read_all(log, P0, earliest).await;
    assert_eq!(back.len() as u64, kept);
    assert_eq!(
        back[0].record,
        numbered(earliest.0),
        "the kept records are not the newest"
    );
    assert!(matches!(
        log.read(P0, Offset(earliest.0 - 1), ReadLimits::default())
            .await,
        Err(Error::OffsetTruncated { .. })
    ));

    let age = RetentionPolicy {
        max_age: Some(Duration::from_secs(3600)),
        max_bytes: None,
    };
    let report = log.enforce_retention(&age, Timestamp::now()).await.unwrap();
    assert_eq!(report.records_removed, 0, "nothing is an hour old");
    let later = Timestamp::now().saturating_add(Duration::from_secs(7200));
    log.enforce_retention(&age, later).await.unwrap();
    let earliest = log.earliest_offset(P0).await.unwrap();
    assert!(
        (200 - earliest.0) * record_size <= granularity_bytes,
        "old records survived age retention"
    );
    assert_eq!(log.next_offset(P0).await.unwrap(), Offset(200));
    let appended = log.append(P0, vec![sample_record("k", 1)]).await.unwrap();
    assert_eq!(
        appended.first,
        Offset(200),
        "offsets are not reused after retention"
    );
}

/// What the suite needs to know about the logs a factory opens.
///
/// `#[non_exhaustive]`: start from [`SuiteOptions::default`] and use the `with_` methods, so that
/// options added later do not break your test.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct SuiteOptions {
    /// Partitions of every log the suite opens; at least 2. Default 2.
    pub partitions: u32,
    /// The limits the factory's logs enforce. Default [`LogLimits::default`].
    pub limits: LogLimits,
    /// How many bytes beyond a retention policy the log may keep: 0 for a log that removes
    /// single records, about a segment plus a batch for a segment-based log. Default 0.
    pub retention_granularity_bytes: u64,
}

impl Default for SuiteOptions {
    fn default() -> Self {
        SuiteOptions {
            partitions: 2,
            limits: LogLimits::default(),
            retention_granularity_bytes: 0,
        }
    }
}

impl SuiteOptions {
    /// Opens logs with `partitions` partitions (at least 2).
    pub fn with_partitions(mut self, partitions: u32) -> Self {
        self.partitions = partitions;
        self
    }

    /// The factory's logs enforce `limits`.
    pub fn with_limits(mut self, limits: LogLimits) -> Self {
        self.limits = limits;
        self
    }

    /// Retention may keep up to `bytes` beyond the policy.
    pub fn with_retention_granularity(mut self, bytes: u64) -> Self {
        self.retention_granularity_bytes = bytes;
        self
    }
}

/// A topic name no earlier run has used: `conformance-<run>-<label>`, where `<run>` mixes the
/// clock, the process id, a counter and std's random hasher keys. Use it to open a log of your
/// persistent engine for one check.
///
/// `label` should be short and use only the characters of a [`TopicName`].
pub fn fresh_topic_name(label: &str) -> TopicName {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let run = RandomState::new().hash_one((SystemTime::now(), std::process::id(), n));
    TopicName::new(format!("conformance-{run:016x}-{label}"))
        .unwrap_or_else(|e| panic!("the label {label:?} makes a bad topic name: {e}"))
}

/// Opens a fresh log for the check `label` and checks it is what the suite needs.
async fn open_fresh(factory: &dyn LogFactory, options: &SuiteOptions, label: &str) -> Arc<dyn Log> {
    let topic = fresh_topic_name(label);
    tracing::info!(%topic, "conformance check");
    let log = factory
        .open_log(&topic, options.partitions)
        .await
        .unwrap_or_else(|e| panic!("the factory could not open {topic}: {e}"));
    assert_eq!(
        log.partition_count(),
        options.partitions,
        "the factory opened {topic} with the wrong partition count"
    );
    for p in 0..options.partitions {
        let p = PartitionId(p);
        assert_eq!(
            log.next_offset(p).await.unwrap(),
            Offset(0),
            "{topic} is a fresh topic name, yet its partition {p} is not empty"
        );
    }
    log
}

/// Runs every check of the suite, each on a fresh log `factory` opens under a fresh topic name
/// (so running it twice against the same persistent engine works).
///
/// Checks of properties a log may lack ([`LogCapabilities`](crate::LogCapabilities)) run only if
/// the log states the property: [`atomic_batches`].
pub async fn run_all(factory: &dyn LogFactory, options: &SuiteOptions) {
    assert!(options.partitions >= 2, "the suite needs two partitions");
    let open = |label| open_fresh(factory, options, label);
    append_and_read(open("append-and-read").await.as_ref()).await;
    read_limits(open("read-limits").await.as_ref()).await;
    invalid_input(open("invalid-input").await.as_ref(), &options.limits).await;
    tailing(open("tailing").await).await;
    concurrent_appends(open("concurrent-appends").await).await;
    let log = open("atomic-batches").await;
    if log.capabilities().atomic_batches {
        atomic_batches(log).await;
    } else {
        tracing::info!("skipping the atomic_batches check: the log states it lacks them");
    }
    consumer_groups(open("consumer-groups").await).await;
    retention(
        open("retention").await.as_ref(),
        options.retention_granularity_bytes,
    )
    .await;
}
