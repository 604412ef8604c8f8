//! A `Log` written the way an integrator would write one: outside this crate, over a
//! `Mutex<BTreeMap>`, using only the public API — and passing the conformance suite.
//!
//! `docs/integrating.md` walks through this file. `BTreeLog` stands in for a table of a database:
//! one row per record, keyed by (partition, offset), plus a table of group commits. `Database`
//! stands in for the database itself: it keeps every log it opened by topic name, the way a
//! persistent engine would, so running the suite twice against it shows that each run works on
//! topics of its own.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, MutexGuard};

use async_trait::async_trait;
use bytes::Bytes;
use iot_core::testkit::{self, FaultKind, FaultyLog, SuiteOptions};
use iot_core::{
    Appended, Error, GroupName, Headers, Log, LogFactory, LogLimits, Offset, PartitionId,
    ReadLimits, Record, Result, RetentionPolicy, RetentionReport, StoredRecord, Timestamp,
    TopicName,
};
use tokio::sync::watch;

/// One stored row, in columns as a database would keep it (not as a `Record`), so that reads
/// rebuild records through the public constructors the way a real backend must.
#[derive(Debug, Clone)]
struct Row {
    enqueued_micros: u64,
    key: String,
    headers: Vec<(String, String)>,
    device_micros: Option<u64>,
    payload: Bytes,
    /// `Record::size_bytes` of the record, kept for read budgets and retention.
    size: u64,
}

impl Row {
    fn new(enqueued_time: Timestamp, record: Record) -> Self {
        Row {
            enqueued_micros: enqueued_time.as_unix_micros(),
            size: record.size_bytes() as u64,
            headers: record
                .headers
                .iter()
                .map(|(n, v)| (n.to_owned(), v.to_owned()))
                .collect(),
            device_micros: record.device_time.map(Timestamp::as_unix_micros),
            key: record.key,
            payload: record.payload,
        }
    }

    fn enqueued_time(&self) -> Timestamp {
        Timestamp::from_unix_micros(self.enqueued_micros)
    }

    fn record(&self) -> Record {
        let headers: Headers = self.headers.iter().cloned().collect();
        let record = Record::new(self.key.clone(), self.payload.clone()).with_headers(headers);
        match self.device_micros {
            Some(micros) => record.with_device_time(Timestamp::from_unix_micros(micros)),
            None => record,
        }
    }
}

/// Everything the log holds, behind one lock: rows by (partition, offset), the earliest offset
/// still held and the next offset of each partition, and group commits.
#[derive(Debug, Default)]
struct Tables {
    rows: BTreeMap<(u32, u64), Row>,
    earliest: Vec<u64>,
    next: Vec<u64>,
    last_time: Vec<Timestamp>,
    commits: BTreeMap<(GroupName, u32), Offset>,
}

/// A `Log` over a `Mutex<BTreeMap>`.
#[derive(Debug)]
struct BTreeLog {
    limits: LogLimits,
    tables: Mutex<Tables>,
    /// One watch of the next offset per partition: `wait_for` waits on it instead of polling.
    tails: Vec<watch::Sender<u64>>,
}

impl BTreeLog {
    fn new(partitions: u32, limits: LogLimits) -> Result<Self> {
        if partitions == 0 {
            return Err(Error::Config {
                reason: "a log needs at least one partition".into(),
            });
        }
        limits.validate()?;
        let n = partitions as usize;
        Ok(BTreeLog {
            limits,
            tables: Mutex::new(Tables {
                earliest: vec![0; n],
                next: vec![0; n],
                last_time: vec![Timestamp::EPOCH; n],
                ..Tables::default()
            }),
            tails: (0..n).map(|_| watch::channel(0).0).collect(),
        })
    }

    fn tables(&self) -> MutexGuard<'_, Tables> {
        // No critical section below can leave the tables half-updated, so a poisoned lock still
        // guards consistent data.
        self.tables
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The partition's index, or the typed error the contract asks for.
    fn index(&self, partition: PartitionId) -> Result<usize> {
        if partition.index() < self.tails.len() {
            Ok(partition.index())
        } else {
            Err(Error::UnknownPartition {
                partition,
                partitions: self.partition_count(),
            })
        }
    }
}

#[async_trait]
impl Log for BTreeLog {
    fn partition_count(&self) -> u32 {
        self.tails.len() as u32
    }

    async fn append(&self, partition: PartitionId, records: Vec<Record>) -> Result<Appended> {
        self.limits.check_batch(&records)?;
        let p = self.index(partition)?;
        let mut t = self.tables();
        let first = t.next[p];
        // Enqueued time never decreases within a partition, even if the clock steps back.
        let enqueued_time = Timestamp::now().max(t.last_time[p]);
        let count = records.len() as u64;
        for (offset, record) in (first..).zip(records) {
            t.rows
                .insert((partition.get(), offset), Row::new(enqueued_time, record));
        }
        t.next[p] = first + count;
        t.last_time[p] = enqueued_time;
        // Published under the lock, so a woken reader finds the whole batch.
        self.tails[p].send_replace(first + count);
        Ok(Appended {
            partition,
            first: Offset(first),
            count,
            enqueued_time,
        })
    }

    async fn read(
        &self,
        partition: PartitionId,
        from: Offset,
        limits: ReadLimits,
    ) -> Result<Vec<StoredRecord>> {
        limits.validate()?;
        let p = self.index(partition)?;
        let t = self.tables();
        if from.get() < t.earliest[p] {
            return Err(Error::OffsetTruncated {
                partition,
                offset: from,
                earliest: Offset(t.earliest[p]),
            });
        }
        if from.get() > t.next[p] {
            return Err(Error::OffsetBeyondEnd {
                partition,
                offset: from,
                next: Offset(t.next[p]),
            });
        }
        let mut out = Vec::new();
        let mut bytes = 0;
        let rows = t
            .rows
            .range((partition.get(), from.get())..(partition.get(), t.next[p]));
        for (&(_, offset), row) in rows.take(limits.max_records) {
            let size = row.size as usize;
            // The first record is returned whatever its size, so a reader never gets stuck.
            if !out.is_empty() && bytes + size > limits.max_bytes {
                break;
            }
            bytes += size;
            out.push(StoredRecord::new(
                partition,
                Offset(offset),
                row.enqueued_time(),
                row.record(),
            ));
        }
        Ok(out)
    }

    async fn wait_for(&self, partition: PartitionId, offset: Offset) -> Result<Offset> {
        let mut tail = self.tails[self.index(partition)?].subscribe();
        let next = tail
            .wait_for(|next| *next > offset.get())
            .await
            .map_err(|_| Error::Closed)?;
        Ok(Offset(*next))
    }

    async fn earliest_offset(&self, partition: PartitionId) -> Result<Offset> {
        let p = self.index(partition)?;
        Ok(Offset(self.tables().earliest[p]))
    }

    async fn next_offset(&self, partition: PartitionId) -> Result<Offset> {
        let p = self.index(partition)?;
        Ok(Offset(self.tables().next[p]))
    }

    async fn commit(
        &self,
        group: &GroupName,
        partition: PartitionId,
        offset: Offset,
    ) -> Result<()> {
        let p = self.index(partition)?;
        let mut t = self.tables();
        if offset.get() > t.next[p] {
            return Err(Error::OffsetBeyondEnd {
                partition,
                offset,
                next: Offset(t.next[p]),
            });
        }
        t.commits.insert((group.clone(), partition.get()), offset);
        Ok(())
    }

    async fn committed(&self, group: &GroupName, partition: PartitionId) -> Result<Option<Offset>> {
        self.index(partition)?;
        Ok(self
            .tables()
            .commits
            .get(&(group.clone(), partition.get()))
            .copied())
    }

    async fn enforce_retention(
        &self,
        policy: &RetentionPolicy,
        now: Timestamp,
    ) -> Result<RetentionReport> {
        let cutoff = policy.max_age.map(|age| now.saturating_sub(age));
        let mut report = RetentionReport::default();
        let mut t = self.tables();
        for p in 0..self.tails.len() {
            let rows = (p as u32, 0)..=(p as u32, u64::MAX);
            let mut held: u64 = t.rows.range(rows.clone()).map(|(_, row)| row.size).sum();
            // The oldest rows, for as long as the policy says to remove them: a prefix, never a
            // record the policy keeps.
            let mut doomed = Vec::new();
            for (&key, row) in t.rows.range(rows) {
                let too_old = cutoff.is_some_and(|c| row.enqueued_time() < c);
                let too_big = policy.max_bytes.is_some_and(|max| held > max);
                if !(too_old || too_big) {
                    break;
                }
                held -= row.size;
                doomed.push((key, row.size));
            }
            for ((partition, offset), size) in doomed {
                t.rows.remove(&(partition, offset));
                t.earliest[p] = offset + 1;
                report.records_removed += 1;
                report.bytes_removed += size;
            }
        }
        Ok(report)
    }

    // `sync` is not written: every acknowledged append is already as durable as this log gets,
    // so the trait's provided no-op is right.
}

/// The "database": opens a log per topic name and keeps it, as a persistent engine would.
#[derive(Debug, Default)]
struct Database {
    logs: Mutex<BTreeMap<TopicName, Arc<BTreeLog>>>,
}

#[async_trait]
impl LogFactory for Database {
    async fn open_log(&self, topic: &TopicName, partitions: u32) -> Result<Arc<dyn Log>> {
        let mut logs = self
            .logs
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(log) = logs.get(topic) {
            return Ok(log.clone());
        }
        let log = Arc::new(BTreeLog::new(partitions, LogLimits::default())?);
        logs.insert(topic.clone(), log.clone());
        Ok(log)
    }
}

#[tokio::test]
async fn btree_log_passes_the_suite() {
    testkit::run_all(&Database::default(), &SuiteOptions::default()).await;
}

/// The database keeps every topic, so a second run would fail on the first run's data if the
/// suite reused its topic names.
#[tokio::test]
async fn the_suite_runs_twice_against_one_database() {
    let db = Database::default();
    let options = SuiteOptions::default().with_partitions(3);
    testkit::run_all(&db, &options).await;
    testkit::run_all(&db, &options).await;
    let topics = db
        .logs
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .len();
    assert_eq!(
        topics, 16,
        "two runs of eight checks, each on its own topic"
    );
}

/// The suite also runs over the fault-injecting wrapper around an out-of-crate log.
#[derive(Debug, Default)]
struct FaultyDatabase(Database);

#[async_trait]
impl LogFactory for FaultyDatabase {
    async fn open_log(&self, topic: &TopicName, partitions: u32) -> Result<Arc<dyn Log>> {
        let log = self.0.open_log(topic, partitions).await?;
        Ok(Arc::new(FaultyLog::new(log)))
    }
}

#[tokio::test]
async fn btree_log_behind_the_fault_wrapper_passes_the_suite() {
    testkit::run_all(&FaultyDatabase::default(), &SuiteOptions::default()).await;
}

/// A fault in the backend reaches the caller as a typed, retryable error, and the log is
/// unchanged.
#[tokio::test]
async fn a_refused_append_reaches_the_caller_typed() {
    let log = FaultyLog::new(BTreeLog::new(2, LogLimits::default()).expect("log"));
    log.fail_nth(None, 1, FaultKind::Refuse);
    let p = PartitionId(1);
    let e = log
        .append(p, vec![testkit::sample_record("k", 1)])
        .await
        .expect_err("refused");
    assert!(
        matches!(e, Error::Backend { .. }) && e.is_retryable(),
        "{e:?}"
    );
    assert_eq!(log.next_offset(p).await.expect("next"), Offset(0));
}
