//! The JetStream log (feature `nats`): the conformance suite against the shared NATS server, and
//! faults against a nats-server of its own.
//!
//! The shared server is `NATS_URL` (which may carry a query, e.g. `?replicas=3` against a cluster)
//! or `nats://127.0.0.1:4222`. When it cannot be reached, the tests
//! print why and pass — unless `CI` is set, where they fail. The fault test starts `nats-server`
//! (`NATS_SERVER`, else `nats-server` from `PATH`) on a spare port with its own store in a
//! temporary directory; the shared server is not touched.
#![cfg(feature = "nats")]
#![allow(
    clippy::print_stderr,
    reason = "tests say why they skip and what they saw"
)]
#![allow(
    clippy::unwrap_used,
    reason = "the helpers are part of the tests: a failed unwrap is a failed test"
)]

mod nats_support;

use std::hash::BuildHasher;
use std::sync::Arc;
use std::time::{Duration, Instant};

use iot_core::testkit::{self, SuiteOptions};
use iot_core::{Error, Log, Offset, PartitionId, ReadLimits, Record, TopicName};
use iot_sdk::nats::{AppendFailed, NatsLog, NatsLogConfig, NatsLogFactory};
use nats_support::{OwnServer, nats_server_binary, spare_port};

const P0: PartitionId = PartitionId(0);

fn shared_url() -> String {
    std::env::var("NATS_URL").unwrap_or_else(|_| "nats://127.0.0.1:4222".into())
}

/// The shared server's URL with `prefix` added to its query (`NATS_URL` may carry one, such as
/// `?replicas=3` for a cluster).
fn with_prefix(prefix: &str) -> String {
    let url = shared_url();
    let joint = if url.contains('?') { '&' } else { '?' };
    format!("{url}{joint}prefix={prefix}")
}

fn in_ci() -> bool {
    std::env::var_os("CI").is_some_and(|v| !v.is_empty())
}

/// Skips (outside CI) or fails (under CI) for a missing service.
fn unavailable(what: &str) {
    assert!(!in_ci(), "{what} under CI");
    eprintln!("skipping: {what}; CI is unset");
}

/// A prefix no other run uses, so runs never see each other's streams and buckets.
fn run_prefix() -> String {
    let n = std::collections::hash_map::RandomState::new()
        .hash_one((std::time::SystemTime::now(), std::process::id()));
    format!("t{:012x}", n & 0xffff_ffff_ffff)
}

/// A factory over the shared server with a prefix of its own; deletes its streams when dropped
/// through [`Shared::clean_up`].
struct Shared {
    factory: NatsLogFactory,
    prefix: String,
}

impl Shared {
    async fn connect() -> Option<Shared> {
        let prefix = run_prefix();
        let config = NatsLogConfig::from_url(&with_prefix(&prefix)).unwrap();
        match NatsLogFactory::connect(config).await {
            Ok(factory) => Some(Shared { factory, prefix }),
            Err(e) => {
                unavailable(&format!("NATS at {} is unreachable ({e})", shared_url()));
                None
            }
        }
    }

    /// Deletes every stream and bucket of the run's prefix, so the shared server does not fill up.
    async fn clean_up(self) {
        delete_prefixed(&self.factory, &self.prefix).await;
    }
}

async fn delete_prefixed(factory: &NatsLogFactory, prefix: &str) {
    use futures::TryStreamExt;
    let js = async_nats::jetstream::new(factory.client().clone());
    let names: Vec<String> = js.stream_names().try_collect().await.unwrap();
    for name in names {
        if name.starts_with(&format!("{prefix}-")) || name.starts_with(&format!("KV_{prefix}-")) {
            js.delete_stream(&name).await.unwrap();
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conformance_suite_against_the_shared_server() {
    let Some(shared) = Shared::connect().await else {
        return;
    };
    let options = SuiteOptions::default().with_limits(shared.factory.limits());
    // Twice against the same server and prefix: each run draws its own topic names.
    testkit::run_all(&shared.factory, &options).await;
    testkit::run_all(&shared.factory, &options.with_partitions(3)).await;
    shared.clean_up().await;
}

#[tokio::test]
async fn the_log_states_what_jetstream_lacks() {
    let Some(shared) = Shared::connect().await else {
        return;
    };
    let log = shared.factory.open(&topic("caps"), 2).await.unwrap();
    let caps = log.capabilities();
    assert!(!caps.atomic_batches && !caps.forced_sync, "{caps:?}");
    drop(log);
    shared.clean_up().await;
}

fn topic(label: &str) -> TopicName {
    testkit::fresh_topic_name(label)
}

#[tokio::test]
async fn a_topic_keeps_its_partition_count() {
    let Some(shared) = Shared::connect().await else {
        return;
    };
    let t = topic("count");
    shared.factory.open(&t, 2).await.unwrap();
    let e = shared.factory.open(&t, 3).await.unwrap_err();
    assert!(matches!(e, Error::Config { .. }), "{e:?}");
    assert_eq!(
        shared.factory.open(&t, 2).await.unwrap().partition_count(),
        2
    );
    shared.clean_up().await;
}

/// Appends chain records by message id, and the server keeps every id of its duplicate window in
/// memory: a stream created with the server's default window (two minutes) gets the log's short
/// one when opened, and appends carry on.
#[tokio::test]
async fn opening_shortens_a_long_duplicate_window() {
    let Some(shared) = Shared::connect().await else {
        return;
    };
    let t = topic("window");
    let log = shared.factory.open(&t, 1).await.unwrap();
    log.append(P0, vec![Record::new("k", "before")])
        .await
        .unwrap();
    let name = log.stream_name(P0).unwrap();
    drop(log);
    let js = async_nats::jetstream::new(shared.factory.client().clone());
    let window = |js: async_nats::jetstream::Context, name: String| async move {
        let stream = js.get_stream(&name).await.unwrap();
        stream.cached_info().config.clone()
    };
    let short = window(js.clone(), name.clone()).await;
    assert!(
        short.duplicate_window <= Duration::from_secs(1),
        "{:?}",
        short.duplicate_window
    );
    js.update_stream(async_nats::jetstream::stream::Config {
        duplicate_window: Duration::from_secs(120),
        ..short.clone()
    })
    .await
    .unwrap();
    let log = shared.factory.open(&t, 1).await.unwrap();
    assert_eq!(
        window(js.clone(), name.clone()).await.duplicate_window,
        short.duplicate_window
    );
    let a = log
        .append(P0, vec![Record::new("k", "a"), Record::new("k", "b")])
        .await
        .unwrap();
    assert_eq!((a.first, a.count), (Offset(1), 2));
    drop(log);
    shared.clean_up().await;
}

/// The payloads stored from `first` on, `count` of them.
async fn payloads(log: &NatsLog, first: Offset, count: usize) -> Vec<bytes::Bytes> {
    let mut got = Vec::with_capacity(count);
    while got.len() < count {
        let at = Offset(first.0 + got.len() as u64);
        let read = log
            .read(P0, at, ReadLimits::records(count - got.len()))
            .await
            .unwrap();
        assert!(!read.is_empty(), "nothing stored at {at}");
        got.extend(read.into_iter().map(|s| s.record.payload));
    }
    got
}

/// A partition keeps at most a few thousand records waiting for their acknowledgement (the
/// writer waits for some before it publishes more): a batch several times that size is stored
/// whole, in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_larger_than_the_ack_window_is_stored_whole() {
    let Some(shared) = Shared::connect().await else {
        return;
    };
    let log = shared.factory.open(&topic("window"), 1).await.unwrap();
    let records: Vec<Record> = (0..12_000)
        .map(|i| Record::new("k", i.to_string()))
        .collect();
    let a = log.append(P0, records.clone()).await.unwrap();
    assert_eq!((a.first, a.count), (Offset(0), 12_000));
    let sent: Vec<_> = records.into_iter().map(|r| r.payload).collect();
    assert_eq!(payloads(&log, a.first, sent.len()).await, sent);
    drop(log);
    shared.clean_up().await;
}

/// A batch's acknowledgements come back on the partition's subscription. Those of an append
/// whose caller stopped waiting arrive after it, while later batches wait for their own: each
/// later append is answered with the offsets its own records were stored at.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acks_of_an_abandoned_append_are_not_taken_for_a_later_one() {
    let Some(shared) = Shared::connect().await else {
        return;
    };
    let log = shared.factory.open(&topic("abandon"), 1).await.unwrap();
    for round in 0..3 {
        let abandoned: Vec<Record> = (0..20_000)
            .map(|i| Record::new("gone", i.to_string()))
            .collect();
        // Long enough to publish part of the batch, too short to see it acknowledged.
        let cut = tokio::time::timeout(Duration::from_millis(3), log.append(P0, abandoned)).await;
        assert!(
            cut.is_err(),
            "round {round}: the batch was stored before the cut"
        );
        let batch: Vec<Record> = (0..50)
            .map(|i| Record::new("next", format!("{round}-{i}")))
            .collect();
        let a = retry(|| log.append(P0, batch.clone())).await.unwrap();
        let sent: Vec<_> = batch.into_iter().map(|r| r.payload).collect();
        assert_eq!(
            payloads(&log, a.first, sent.len()).await,
            sent,
            "round {round}: the answer names the offsets of this append's records"
        );
    }
    drop(log);
    shared.clean_up().await;
}

/// What the append chain rests on (docs/log.md, *Appends*), pinned against the server: a record
/// naming the previous record's message id is refused once any other message was stored after
/// that record, whether the other message has an id of its own or none.
#[tokio::test]
async fn a_foreign_message_breaks_the_chain() {
    use async_nats::jetstream::context::PublishErrorKind;
    use async_nats::jetstream::message::PublishMessage;
    let Some(shared) = Shared::connect().await else {
        return;
    };
    let log = shared.factory.open(&topic("chain"), 1).await.unwrap();
    let js = async_nats::jetstream::new(shared.factory.client().clone());
    let stream = js.get_stream(log.stream_name(P0).unwrap()).await.unwrap();
    // The partition's subjects end in `*`: a writer subject of the log's form.
    let subject = stream.cached_info().config.subjects[0].replace('*', "wffffffffffffffff");
    let publish = |message: PublishMessage| {
        let (js, subject) = (js.clone(), subject.clone());
        async move { js.send_publish(subject, message).await.unwrap().await }
    };
    let ours = |id: &str| {
        PublishMessage::build()
            .payload("ours".into())
            .message_id(id)
    };
    // The chain holds while nothing comes between.
    publish(ours("w.1")).await.unwrap();
    publish(ours("w.2").expected_last_message_id("w.1"))
        .await
        .unwrap();
    let foreign = [
        PublishMessage::build().payload("no id".into()),
        PublishMessage::build()
            .payload("an id".into())
            .message_id("other.1"),
    ];
    for (n, other) in foreign.into_iter().enumerate() {
        let id = format!("w.{}", 3 + n);
        publish(ours(&id)).await.unwrap();
        publish(other).await.unwrap();
        let refused = publish(ours("w.next").expected_last_message_id(&id))
            .await
            .unwrap_err();
        assert_eq!(refused.kind(), PublishErrorKind::WrongLastMessageId);
    }
    drop(log);
    shared.clean_up().await;
}

/// Two connections (as two processes would) append to one partition at once. What the log
/// promises across processes: a batch acknowledged whole is contiguous; a batch cut short by the
/// other writer fails with the exact number of records stored, which are its prefix; no record
/// is stored that was not acknowledged, none acknowledged is missing, and offsets stay dense.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batches_stay_contiguous_with_two_writers() {
    let Some(shared) = Shared::connect().await else {
        return;
    };
    let second =
        NatsLogFactory::connect(NatsLogConfig::from_url(&with_prefix(&shared.prefix)).unwrap())
            .await
            .unwrap();
    let t = topic("two-writers");
    let logs = [
        Arc::new(shared.factory.open(&t, 1).await.unwrap()),
        Arc::new(second.open(&t, 1).await.unwrap()),
    ];
    let writers: Vec<_> = logs
        .iter()
        .enumerate()
        .map(|(w, log)| {
            let log = log.clone();
            tokio::spawn(async move {
                // (first offset, keys stored there, whether the whole batch was acknowledged)
                let mut stored: Vec<(u64, Vec<String>, bool)> = Vec::new();
                for b in 0..30u64 {
                    let key = format!("w{w}-b{b}");
                    let batch = (0..4)
                        .map(|i| testkit::sample_record(&key, i))
                        .collect::<Vec<Record>>();
                    // A lost race that left nothing behind is retryable; the log retries it
                    // itself a few times, and so does this writer.
                    loop {
                        match log.append(P0, batch.clone()).await {
                            Ok(a) => {
                                stored.push((a.first.0, vec![key.clone(); a.count as usize], true));
                                break;
                            }
                            Err(e) if e.is_retryable() => continue,
                            Err(e) => {
                                let cut = append_failed(&e)
                                    .unwrap_or_else(|| panic!("append failed: {e}"));
                                assert!(cut.acked > 0 && cut.acked < cut.total, "{e}");
                                stored.push((
                                    cut.first.0,
                                    vec![key.clone(); cut.acked as usize],
                                    false,
                                ));
                                break;
                            }
                        }
                    }
                }
                stored
            })
        })
        .collect();
    let mut appended = Vec::new();
    for w in writers {
        appended.extend(w.await.unwrap());
    }
    appended.sort_by_key(|a| a.0);
    let mut next = 0;
    for (first, keys, _) in &appended {
        assert_eq!(*first, next, "gap or overlap between batches");
        next += keys.len() as u64;
    }
    let back = testkit::read_records(logs[0].as_ref(), P0).await;
    assert_eq!(
        back.len() as u64,
        next,
        "records stored that were not acknowledged"
    );
    for (first, keys, _) in &appended {
        for (i, key) in keys.iter().enumerate() {
            assert_eq!(
                &back[*first as usize + i].key,
                key,
                "a batch was split or a record is missing"
            );
        }
    }
    let cut = appended.iter().filter(|a| !a.2).count();
    eprintln!(
        "two writers: {} batches, {cut} cut short by the other writer",
        appended.len()
    );
    drop(logs);
    shared.clean_up().await;
}

/// Retention as stream limits: the server expires records by itself, from the front only, and
/// offsets carry on where they were.
#[tokio::test]
async fn stream_limits_expire_a_prefix_and_keep_offsets() {
    let Some(shared) = Shared::connect().await else {
        return;
    };
    let config =
        NatsLogConfig::from_url(&format!("{}&max_age_s=1", with_prefix(&shared.prefix))).unwrap();
    let factory = NatsLogFactory::connect(config).await.unwrap();
    let log = factory.open(&topic("stream-limits"), 1).await.unwrap();
    let batch: Vec<Record> = (0..10).map(|i| testkit::sample_record("old", i)).collect();
    log.append(P0, batch).await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    while log.earliest_offset(P0).await.unwrap() < Offset(10) {
        assert!(
            Instant::now() < deadline,
            "the server did not expire old records"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(log.next_offset(P0).await.unwrap(), Offset(10));
    assert!(matches!(
        log.read(P0, Offset(3), ReadLimits::default()).await,
        Err(Error::OffsetTruncated { .. })
    ));
    let a = log
        .append(P0, vec![testkit::sample_record("new", 1)])
        .await
        .unwrap();
    assert_eq!(a.first, Offset(10), "offsets went on after expiry");
    let back = log
        .read(P0, Offset(10), ReadLimits::default())
        .await
        .unwrap();
    assert_eq!(back.len(), 1);
    assert_eq!(back[0].record.key, "new");
    drop(log);
    shared.clean_up().await;
}

/// No server on the port: a typed, retryable error within the connect timeout, not a hang.
/// Concurrent appends to one partition are committed together (group commit), by two writers
/// (two factories, as two gateway instances) at once: each caller gets offsets of its own and its
/// records are stored there; a caller whose append failed has exactly its acknowledged prefix
/// stored; offsets are dense across both writers; nothing else is in the partition.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_appends_of_two_writers_are_committed_together_and_each_gets_its_offsets() {
    let Some(shared) = Shared::connect().await else {
        return;
    };
    let second =
        NatsLogFactory::connect(NatsLogConfig::from_url(&with_prefix(&shared.prefix)).unwrap())
            .await
            .unwrap();
    let t = topic("group-commit");
    let logs = [
        Arc::new(shared.factory.open(&t, 1).await.unwrap()),
        Arc::new(second.open(&t, 1).await.unwrap()),
    ];
    let callers: Vec<_> = (0..400u64)
        .map(|c| {
            let log = logs[(c % 2) as usize].clone();
            tokio::spawn(async move {
                let key = format!("caller-{c}");
                let records: Vec<Record> = (0..1 + c % 3)
                    .map(|i| testkit::sample_record(&key, i))
                    .collect();
                match log.append(P0, records.clone()).await {
                    Ok(appended) => {
                        assert_eq!(appended.count, records.len() as u64);
                        Some((appended.first.0, records))
                    }
                    Err(e) => {
                        let cut = append_failed(&e).unwrap_or_else(|| panic!("append: {e}"));
                        assert!(cut.acked < cut.total, "{e}");
                        (cut.acked > 0)
                            .then(|| (cut.first.0, records[..cut.acked as usize].to_vec()))
                    }
                }
            })
        })
        .collect();
    let mut stored = Vec::new();
    let mut failed = 0;
    for caller in callers {
        match caller.await.unwrap() {
            Some(answer) => stored.push(answer),
            None => failed += 1,
        }
    }
    stored.sort_by_key(|(first, _)| *first);
    let start = logs[0].earliest_offset(P0).await.unwrap().0;
    let mut next = start;
    for (first, records) in &stored {
        assert_eq!(*first, next, "offsets are dense across callers and writers");
        let got = logs[0]
            .read(
                P0,
                Offset(*first),
                ReadLimits {
                    max_records: records.len(),
                    ..ReadLimits::default()
                },
            )
            .await
            .unwrap();
        let got: Vec<_> = got.iter().map(|s| s.record.payload.clone()).collect();
        let sent: Vec<_> = records.iter().map(|r| r.payload.clone()).collect();
        assert_eq!(got, sent, "each caller's records are at its offsets");
        next += records.len() as u64;
    }
    assert_eq!(
        logs[0].next_offset(P0).await.unwrap().0,
        next,
        "nothing but the acknowledged records is stored"
    );
    eprintln!(
        "group commit, two writers: {} of 400 appends stored, {failed} refused with nothing stored",
        stored.len()
    );
    shared.clean_up().await;
}

/// A flusher cut off mid-batch (here: its runtime shut down under it) does not leave the
/// partition stuck: the next append, from another runtime, is answered (with an error, since the
/// client died with the first runtime) instead of waiting forever for a flusher nobody starts.
#[test]
fn an_append_after_the_flushers_runtime_died_is_answered() {
    let first = tokio::runtime::Runtime::new().unwrap();
    let opened = first.block_on(async {
        let shared = Shared::connect().await?;
        let log = Arc::new(shared.factory.open(&topic("stranded"), 1).await.unwrap());
        for c in 0..200u64 {
            let log = log.clone();
            tokio::spawn(async move {
                let _ = log
                    .append(P0, vec![testkit::sample_record(&format!("s{c}"), 0)])
                    .await;
            });
        }
        // Let the flusher start a batch, then pull the runtime from under it.
        tokio::time::sleep(Duration::from_millis(2)).await;
        Some((shared, log))
    });
    let Some((shared, log)) = opened else {
        return;
    };
    first.shutdown_timeout(Duration::from_millis(50));
    let second = tokio::runtime::Runtime::new().unwrap();
    let answered = second.block_on(async {
        tokio::time::timeout(
            Duration::from_secs(20),
            log.append(P0, vec![testkit::sample_record("after", 0)]),
        )
        .await
    });
    assert!(
        answered.is_ok(),
        "the append after the shutdown waited forever"
    );
    drop(log);
    // The first runtime's connection is gone: clean up with a new one.
    second.block_on(async {
        let cleaner =
            NatsLogFactory::connect(NatsLogConfig::from_url(&with_prefix(&shared.prefix)).unwrap())
                .await
                .unwrap();
        delete_prefixed(&cleaner, &shared.prefix).await;
    });
}

#[tokio::test]
async fn an_unreachable_server_is_a_typed_error() {
    let port = spare_port();
    let config = NatsLogConfig::from_url(&format!(
        "nats://user:hunter2@127.0.0.1:{port}?connect_timeout_ms=500"
    ))
    .unwrap();
    let started = Instant::now();
    let e = tokio::time::timeout(Duration::from_secs(20), NatsLogFactory::connect(config))
        .await
        .expect("connect hung")
        .unwrap_err();
    assert!(
        matches!(
            e,
            Error::Backend {
                backend: "nats",
                ..
            }
        ) && e.is_retryable(),
        "{e:?}"
    );
    assert!(
        !format!("{e} {e:?}").contains("hunter2"),
        "a secret leaked: {e:?}"
    );
    eprintln!(
        "unreachable server reported in {:?}: {e}",
        started.elapsed()
    );
}

// ---- Faults, against a server of our own ------------------------------------------------------

/// Runs `call` until it succeeds or fails with an error that is not retryable, at most 10 times.
async fn retry<T, F, Fut>(mut call: F) -> iot_core::Result<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = iot_core::Result<T>>,
{
    let mut attempts = 0;
    loop {
        attempts += 1;
        match call().await {
            Err(e) if e.is_retryable() && attempts < 10 => {
                eprintln!("retrying after a retryable error: {e}");
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            outcome => return outcome,
        }
    }
}

/// The server is killed (SIGKILL) while records are appended and brought back on the same port
/// and store. Appends during the outage fail with typed errors in bounded time (no panic, no hung
/// task); after the restart the same log — no new connection, no process restart — appends,
/// reads and wakes tailers again; and every record whose append was acknowledged is there.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_server_dies_and_comes_back() {
    let Some(binary) = nats_server_binary() else {
        unavailable("nats-server not found (set NATS_SERVER)");
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let mut server = OwnServer::start(binary, dir.path());
    let config = NatsLogConfig::from_url(&format!(
        "{}?request_timeout_ms=1000&connect_timeout_ms=1000",
        server.url()
    ))
    .unwrap();
    let factory = NatsLogFactory::connect(config).await.unwrap();
    let log: Arc<NatsLog> = Arc::new(factory.open(&topic("faults"), 2).await.unwrap());

    // A tailer waiting on partition 1 across the outage.
    let tailer = {
        let log = log.clone();
        tokio::spawn(async move { log.wait_for(PartitionId(1), Offset(0)).await })
    };

    // A writer appending batches of 5 until told to stop, recording what was acknowledged and
    // how every failure looked.
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let writer = {
        let log = log.clone();
        tokio::spawn(async move {
            let mut acked: Vec<(Offset, Record)> = Vec::new();
            let mut failures: Vec<(Duration, Error)> = Vec::new();
            let mut n = 0u64;
            while !*stop_rx.borrow() {
                let batch: Vec<Record> = (0..5)
                    .map(|i| testkit::sample_record("w", n * 5 + i))
                    .collect();
                n += 1;
                let started = Instant::now();
                let outcome =
                    tokio::time::timeout(Duration::from_secs(30), log.append(P0, batch.clone()))
                        .await
                        .expect("an append hung for 30 s");
                match outcome {
                    Ok(a) => acked.extend(a.offsets().map(Offset).zip(batch)),
                    Err(e) => {
                        failures.push((started.elapsed(), e));
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                }
            }
            (acked, failures)
        })
    };

    tokio::time::sleep(Duration::from_millis(1500)).await;
    server.kill();
    tokio::time::sleep(Duration::from_secs(3)).await;
    server.spawn();
    // Give the client time to reconnect, then let the writer run against the new server.
    tokio::time::sleep(Duration::from_secs(4)).await;
    stop_tx.send(true).unwrap();
    let (acked, failures) = writer.await.expect("the writer panicked");

    assert!(
        !failures.is_empty(),
        "no append failed while the server was down"
    );
    for (took, e) in &failures {
        assert!(
            matches!(
                e,
                Error::Backend {
                    backend: "nats",
                    ..
                }
            ),
            "untyped failure: {e:?}"
        );
        assert!(
            *took < Duration::from_secs(10),
            "a failure took {took:?}: {e}"
        );
    }
    let partial = failures
        .iter()
        .filter(|(_, e)| {
            std::error::Error::source(e)
                .and_then(|s| s.downcast_ref::<AppendFailed>())
                .is_some_and(|f| f.acked > 0)
        })
        .count();
    eprintln!(
        "{} records acknowledged, {} appends failed ({partial} after a partial batch)",
        acked.len(),
        failures.len()
    );

    // The same log works after the restart. (On a loaded machine a call may still meet the 1 s
    // request timeout; that is a retryable error, and retrying is what a caller does.)
    let after = retry(|| log.append(P0, vec![testkit::sample_record("after", 1)]))
        .await
        .expect("append after the restart");
    retry(|| log.append(PartitionId(1), vec![testkit::sample_record("wake", 1)]))
        .await
        .expect("append to partition 1 after the restart");
    let woke = tokio::time::timeout(Duration::from_secs(20), tailer)
        .await
        .expect("the tailer did not wake after the restart")
        .unwrap()
        .unwrap();
    assert_eq!(woke, Offset(1));

    // Every acknowledged record is where its append said.
    let last_acked = acked.last().map_or(0, |(o, _)| o.get());
    assert!(
        after.first.get() > last_acked,
        "the log handed out an acknowledged offset again"
    );
    let mut stored = Vec::new();
    let mut at = Offset(0);
    while at < after.next() {
        let batch = retry(|| log.read(P0, at, ReadLimits::records(1000)))
            .await
            .unwrap();
        at = batch.last().map(|r| r.offset.next()).unwrap();
        stored.extend(batch);
    }
    for (offset, record) in &acked {
        let found = stored.get(offset.get() as usize).map(|r| &r.record);
        assert_eq!(found, Some(record), "acknowledged record at {offset} lost");
    }
    assert!(
        acked.len() > 10,
        "too few appends went through to show anything"
    );
}

/// The NATS log's own account of a failed append, if that is what `e` is.
fn append_failed(e: &Error) -> Option<&AppendFailed> {
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        if let Some(failed) = s.downcast_ref::<AppendFailed>() {
            return Some(failed);
        }
        source = s.source();
    }
    None
}
