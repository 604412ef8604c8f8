//! The `Log` conformance suite against every implementation this crate ships, every durability
//! mode, the `Arc`/`Box` forwarding impls and the fault-injecting wrapper; and the wrapper's
//! faults themselves.

use std::error::Error as _;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use iot_core::testkit::{self, FaultKind, FaultyLog, InjectedFault, Operation, SuiteOptions};
use iot_core::{
    Durability, Error, FileLog, FileLogConfig, FileLogFactory, GroupName, Log, LogCapabilities,
    LogFactory, LogLimits, MemoryLog, MemoryLogFactory, Offset, PartitionId, ReadLimits, TopicName,
};

/// Small segments so that retention, roll and multi-segment reads are exercised.
const SEGMENT_BYTES: u64 = 8 * 1024;

/// A segment plus one 1 KiB batch: what a segment-granular retention may keep beyond the policy.
const FILE_GRANULARITY: u64 = SEGMENT_BYTES + 2048;

#[tokio::test]
async fn memory_log() {
    let options = SuiteOptions::default().with_partitions(3);
    testkit::run_all(&MemoryLogFactory::default(), &options).await;
}

/// Opens `MemoryLog`s behind `Box<dyn Log>`, to check the forwarding impl.
#[derive(Debug)]
struct BoxedFactory;

#[async_trait]
impl LogFactory for BoxedFactory {
    async fn open_log(
        &self,
        _topic: &TopicName,
        partitions: u32,
    ) -> iot_core::Result<Arc<dyn Log>> {
        let boxed: Box<dyn Log> = Box::new(MemoryLog::new(partitions)?);
        Ok(Arc::new(boxed))
    }
}

#[tokio::test]
async fn boxed_memory_log() {
    testkit::run_all(&BoxedFactory, &SuiteOptions::default()).await;
}

/// Opens `MemoryLog`s wrapped in a `FaultyLog` with no fault planned, or with `fault` planned.
#[derive(Debug)]
struct FaultyFactory {
    fault: Option<(Option<Operation>, u64, FaultKind)>,
}

#[async_trait]
impl LogFactory for FaultyFactory {
    async fn open_log(
        &self,
        _topic: &TopicName,
        partitions: u32,
    ) -> iot_core::Result<Arc<dyn Log>> {
        let log = FaultyLog::new(MemoryLog::new(partitions)?);
        if let Some((operation, nth, kind)) = self.fault {
            log.fail_nth(operation, nth, kind);
        }
        Ok(Arc::new(log))
    }
}

#[tokio::test]
async fn faulty_log_without_faults_is_a_faithful_log() {
    testkit::run_all(&FaultyFactory { fault: None }, &SuiteOptions::default()).await;
}

/// The suite is not blind to failures: a log that fails one append in every check makes it
/// panic (the suite runs in a task so that the panic can be observed).
#[tokio::test]
async fn the_suite_notices_a_failing_log() {
    for kind in [FaultKind::Refuse, FaultKind::LoseReply] {
        let factory = FaultyFactory {
            fault: Some((Some(Operation::Append), 3, kind)),
        };
        let run = tokio::spawn(async move {
            testkit::run_all(&factory, &SuiteOptions::default()).await;
        });
        let outcome = run.await;
        assert!(
            outcome.as_ref().is_err_and(|e| e.is_panic()),
            "the suite passed over a log that fails ({kind:?})"
        );
    }
}

#[tokio::test]
async fn memory_log_with_small_limits() {
    let limits = LogLimits::default()
        .max_record_bytes(4096)
        .max_batch_bytes(16 * 1024)
        .max_batch_records(50);
    let log = MemoryLog::with_limits(2, limits).expect("log");
    testkit::invalid_input(&log, &limits).await;
}

fn file_factory(root: &std::path::Path, durability: Durability) -> FileLogFactory {
    FileLogFactory {
        root: root.to_path_buf(),
        config: FileLogConfig::default()
            .durability(durability)
            .segment_bytes(SEGMENT_BYTES)
            .index_interval_bytes(512)
            .limits(LogLimits::default()),
    }
}

fn file_options() -> SuiteOptions {
    SuiteOptions::default()
        .with_partitions(3)
        .with_retention_granularity(FILE_GRANULARITY)
}

async fn run_file(durability: Durability) {
    let dir = tempfile::tempdir().expect("tempdir");
    testkit::run_all(&file_factory(dir.path(), durability), &file_options()).await;
}

/// Topic names are drawn fresh per run, so the suite runs twice against the same directory
/// (standing in for an integrator's persistent database) without seeing the first run's data.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn suite_runs_twice_against_the_same_persistent_root() {
    let dir = tempfile::tempdir().expect("tempdir");
    let factory = file_factory(dir.path(), Durability::OsBuffered);
    testkit::run_all(&factory, &file_options()).await;
    let first_run = std::fs::read_dir(dir.path()).expect("root").count();
    testkit::run_all(&factory, &file_options()).await;
    let both_runs = std::fs::read_dir(dir.path()).expect("root").count();
    assert_eq!(both_runs, 2 * first_run, "the second run reused topics");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn file_log_fsync_before_ack() {
    run_file(Durability::Fsync).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn file_log_buffered() {
    run_file(Durability::OsBuffered).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn file_log_interval() {
    run_file(Durability::Interval(Duration::from_millis(5))).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn file_log_with_small_limits() {
    let dir = tempfile::tempdir().expect("tempdir");
    let limits = LogLimits::default()
        .max_record_bytes(4096)
        .max_batch_bytes(16 * 1024)
        .max_batch_records(50);
    let config = FileLogConfig::with_partitions(2).limits(limits);
    let log = FileLog::open(dir.path(), config).await.expect("open");
    testkit::invalid_input(&log, &limits).await;
}

fn injected(e: &Error) -> Option<InjectedFault> {
    match e {
        Error::Backend {
            backend: "fault-injection",
            retryable: true,
            ..
        } => e.source()?.downcast_ref::<InjectedFault>().copied(),
        _ => None,
    }
}

const P0: PartitionId = PartitionId(0);

/// A refused call fails with a retryable backend error and leaves the log as it was; the calls
/// around it go through.
#[tokio::test]
async fn refused_append_changes_nothing() {
    let log = FaultyLog::new(MemoryLog::new(2).expect("log"));
    log.fail_nth(Some(Operation::Append), 2, FaultKind::Refuse);
    log.append(P0, vec![testkit::sample_record("k", 0)])
        .await
        .expect("first append");
    assert_eq!(log.next_offset(P0).await.expect("next"), Offset(1));
    let e = log
        .append(P0, vec![testkit::sample_record("k", 1)])
        .await
        .expect_err("the second append is refused");
    let fault = injected(&e).expect("an injected fault");
    assert_eq!(fault.operation, Operation::Append);
    assert_eq!(fault.call, 3, "calls are counted across operations");
    assert!(e.is_retryable());
    assert_eq!(log.next_offset(P0).await.expect("next"), Offset(1));
    let retried = log
        .append(P0, vec![testkit::sample_record("k", 1)])
        .await
        .expect("the retry goes through");
    assert_eq!(retried.first, Offset(1), "offsets stay dense");
    assert_eq!(log.injected(), 1);
}

/// A lost reply fails the call after it took effect: the caller cannot tell, which is what a
/// retrying caller must be ready for.
#[tokio::test]
async fn lost_reply_takes_effect() {
    let log = FaultyLog::new(MemoryLog::new(2).expect("log"));
    let group = GroupName::new("g").expect("group");
    log.append(P0, vec![testkit::sample_record("k", 0)])
        .await
        .expect("append");
    log.fail_nth(None, 1, FaultKind::LoseReply);
    let e = log
        .commit(&group, P0, Offset(1))
        .await
        .expect_err("the reply is lost");
    assert_eq!(
        injected(&e).map(|f| (f.operation, f.kind)),
        Some((Operation::Commit, FaultKind::LoseReply))
    );
    assert_eq!(
        log.committed(&group, P0).await.expect("committed"),
        Some(Offset(1)),
        "the commit happened"
    );
}

/// Every fallible operation can be faulted, `sync` included (a wrapper that forgot to forward
/// `sync` would fall back to the trait's no-op default and never fail here).
#[tokio::test]
async fn every_operation_can_be_faulted() {
    let log = FaultyLog::new(MemoryLog::new(2).expect("log"));
    let group = GroupName::new("g").expect("group");
    log.append(P0, vec![testkit::sample_record("k", 0)])
        .await
        .expect("append");
    let ops = [
        Operation::Append,
        Operation::Read,
        Operation::WaitFor,
        Operation::EarliestOffset,
        Operation::NextOffset,
        Operation::Commit,
        Operation::Committed,
        Operation::EnforceRetention,
        Operation::Sync,
    ];
    for op in ops {
        log.fail_nth(Some(op), 1, FaultKind::Refuse);
    }
    let outcomes = [
        log.append(P0, vec![testkit::sample_record("k", 1)])
            .await
            .map(drop),
        log.read(P0, Offset(0), ReadLimits::default())
            .await
            .map(drop),
        log.wait_for(P0, Offset(0)).await.map(drop),
        log.earliest_offset(P0).await.map(drop),
        log.next_offset(P0).await.map(drop),
        log.commit(&group, P0, Offset(0)).await,
        log.committed(&group, P0).await.map(drop),
        log.enforce_retention(&Default::default(), iot_core::Timestamp::now())
            .await
            .map(drop),
        log.sync().await,
    ];
    for (op, outcome) in ops.into_iter().zip(outcomes) {
        let fault = outcome.as_ref().err().and_then(injected);
        assert_eq!(
            fault.map(|f| f.operation),
            Some(op),
            "{op:?} was not faulted"
        );
    }
    assert_eq!(log.injected(), ops.len() as u64);
}

/// A log that writes a batch record by record, yielding between records — what a broker without
/// atomic multi-message publish does — and states what it claims about atomicity.
#[derive(Debug)]
struct SplittingLog {
    inner: MemoryLog,
    /// One writer at a time, so batches stay contiguous (as the contract requires of every log).
    writer: tokio::sync::Mutex<()>,
    claims_atomic: bool,
}

#[async_trait]
impl Log for SplittingLog {
    fn partition_count(&self) -> u32 {
        self.inner.partition_count()
    }
    fn capabilities(&self) -> LogCapabilities {
        LogCapabilities::FULL.atomic_batches(self.claims_atomic)
    }
    async fn append(
        &self,
        partition: PartitionId,
        records: Vec<iot_core::Record>,
    ) -> iot_core::Result<iot_core::Appended> {
        LogLimits::default().check_batch(&records)?;
        let _writer = self.writer.lock().await;
        let count = records.len() as u64;
        let mut first = None;
        for record in records {
            let a = self.inner.append(partition, vec![record]).await?;
            first.get_or_insert(a);
            tokio::task::yield_now().await;
        }
        let first = first.expect("a checked batch is not empty");
        Ok(iot_core::Appended { count, ..first })
    }
    async fn read(
        &self,
        partition: PartitionId,
        from: Offset,
        limits: ReadLimits,
    ) -> iot_core::Result<Vec<iot_core::StoredRecord>> {
        self.inner.read(partition, from, limits).await
    }
    async fn wait_for(&self, partition: PartitionId, offset: Offset) -> iot_core::Result<Offset> {
        self.inner.wait_for(partition, offset).await
    }
    async fn earliest_offset(&self, partition: PartitionId) -> iot_core::Result<Offset> {
        self.inner.earliest_offset(partition).await
    }
    async fn next_offset(&self, partition: PartitionId) -> iot_core::Result<Offset> {
        self.inner.next_offset(partition).await
    }
    async fn commit(
        &self,
        group: &GroupName,
        partition: PartitionId,
        offset: Offset,
    ) -> iot_core::Result<()> {
        self.inner.commit(group, partition, offset).await
    }
    async fn committed(
        &self,
        group: &GroupName,
        partition: PartitionId,
    ) -> iot_core::Result<Option<Offset>> {
        self.inner.committed(group, partition).await
    }
    async fn enforce_retention(
        &self,
        policy: &iot_core::RetentionPolicy,
        now: iot_core::Timestamp,
    ) -> iot_core::Result<iot_core::RetentionReport> {
        self.inner.enforce_retention(policy, now).await
    }
}

#[derive(Debug)]
struct SplittingFactory {
    claims_atomic: bool,
}

#[async_trait]
impl LogFactory for SplittingFactory {
    async fn open_log(
        &self,
        _topic: &TopicName,
        partitions: u32,
    ) -> iot_core::Result<Arc<dyn Log>> {
        Ok(Arc::new(SplittingLog {
            inner: MemoryLog::new(partitions)?,
            writer: tokio::sync::Mutex::new(()),
            claims_atomic: self.claims_atomic,
        }))
    }
}

/// A log that states it lacks atomic batches passes the suite: the check of that property is
/// skipped, every other check runs.
#[tokio::test]
async fn a_log_without_atomic_batches_passes_when_it_says_so() {
    testkit::run_all(
        &SplittingFactory {
            claims_atomic: false,
        },
        &SuiteOptions::default(),
    )
    .await;
}

/// The same log claiming atomic batches is caught: a reader sees a batch half-written.
#[tokio::test]
async fn the_suite_catches_a_false_claim_of_atomic_batches() {
    let log = SplittingFactory {
        claims_atomic: true,
    }
    .open_log(&testkit::fresh_topic_name("split"), 2)
    .await
    .expect("open");
    let run = tokio::spawn(testkit::atomic_batches(log));
    assert!(
        run.await.is_err_and(|e| e.is_panic()),
        "the atomic_batches check passed over a log that splits batches"
    );
}
