//! FileLog behaviour beyond the shared contract: persistence across reopen, refusal of damage in
//! sealed segments, the writer lock, and configuration checks. Recovery of the active segment and
//! of consumer-group files is in `recovery.rs`.

use std::fs;
use std::path::{Path, PathBuf};

use iot_core::{
    Durability, Error, FileLog, FileLogConfig, GroupName, Log, LogExt, Offset, PartitionId,
    ReadLimits, Record,
    testkit::{
        self,
        blocking_pool::{BlockingThreadHeld, runtime_with_one_blocking_thread},
        sample_record,
    },
};

const P0: PartitionId = PartitionId(0);

fn config() -> FileLogConfig {
    FileLogConfig::default()
        .partitions(2)
        .durability(Durability::Fsync)
        .segment_bytes(4096)
        .index_interval_bytes(256)
}

fn segments(dir: &Path, p: u32) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = fs::read_dir(dir.join(format!("p{p:05}")))
        .expect("list")
        .map(|e| e.expect("entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "log"))
        .collect();
    v.sort();
    v
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn records_offsets_and_commits_survive_reopen() {
    let dir = tempfile::tempdir().expect("tempdir");
    let group = GroupName::new("pump").expect("name");
    let mut expected = Vec::new();
    {
        let log = FileLog::open(dir.path(), config()).await.expect("open");
        for i in 0..100 {
            let batch = vec![sample_record("dev", i), sample_record("dev", i + 1000)];
            expected.extend(batch.clone());
            log.append(P0, batch).await.expect("append");
        }
        log.commit(&group, P0, Offset(77)).await.expect("commit");
        assert!(
            segments(dir.path(), 0).len() > 3,
            "the test should span several segments"
        );
    }
    let log = FileLog::open(dir.path(), config()).await.expect("reopen");
    assert_eq!(testkit::read_records(&log, P0).await, expected);
    assert_eq!(log.next_offset(P0).await.expect("next"), Offset(200));
    assert_eq!(
        log.committed(&group, P0).await.expect("committed"),
        Some(Offset(77))
    );
    assert_eq!(
        log.append_one(P0, sample_record("dev", 5))
            .await
            .expect("append"),
        Offset(200)
    );
    // Reads from every offset agree with a full read (exercises the sparse index).
    for start in [0u64, 1, 37, 99, 150, 199] {
        let got = log
            .read(P0, Offset(start), ReadLimits::records(1))
            .await
            .expect("read");
        assert_eq!(got[0].record, expected[start as usize]);
    }
}

/// Under fsync-before-ack, concurrent appends are staged and written by the group commit's
/// leader: with many appenders at once across segment rolls, and a reader following the log
/// meanwhile, every acknowledged record is readable at its offset, each writer's records keep
/// their order, and the same records come back after a reopen.
#[test]
fn a_write_left_running_by_an_aborted_append_keeps_the_directory_locked() {
    let dir = tempfile::tempdir().expect("tempdir");
    runtime_with_one_blocking_thread().block_on(async {
        let log = std::sync::Arc::new(FileLog::open(dir.path(), config()).await.expect("open"));
        log.append_one(P0, sample_record("dev", 0))
            .await
            .expect("append");
        // The pool's one thread kept busy, so the next file work waits in its queue.
        let held = BlockingThreadHeld::hold();
        let append = tokio::spawn({
            let log = log.clone();
            async move { log.append_one(P0, sample_record("dev", 1)).await }
        });
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        // The appending task is aborted and the log dropped (a shutdown); the write it handed
        // to the pool is still queued.
        append.abort();
        assert!(append.await.expect_err("aborted").is_cancelled());
        drop(log);
        assert!(
            matches!(
                iot_core::storage::DirLock::acquire(dir.path()),
                Err(iot_core::storage::StorageError::Locked { .. })
            ),
            "the directory stays locked while the write is pending"
        );
        held.release().await;
        let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(10);
        let log = loop {
            match FileLog::open(dir.path(), config()).await {
                Ok(log) => break log,
                Err(Error::Locked { .. }) if tokio::time::Instant::now() < deadline => {
                    tokio::time::sleep(std::time::Duration::from_millis(5)).await;
                }
                Err(e) => panic!("reopen: {e}"),
            }
        };
        // The write ended before the reopen: both records are there, whole.
        assert_eq!(
            testkit::read_records(&log, P0).await,
            vec![sample_record("dev", 0), sample_record("dev", 1)]
        );
    });
}

#[test]
fn a_commit_whose_caller_went_away_still_lands_in_the_cache() {
    let dir = tempfile::tempdir().expect("tempdir");
    let group = GroupName::new("pump").expect("name");
    runtime_with_one_blocking_thread().block_on(async {
        let log = std::sync::Arc::new(FileLog::open(dir.path(), config()).await.expect("open"));
        for i in 0..10 {
            log.append_one(P0, sample_record("dev", i))
                .await
                .expect("append");
        }
        // The pool's one thread kept busy, so the next file work waits in its queue.
        let held = BlockingThreadHeld::hold();
        let commit = tokio::spawn({
            let (log, group) = (log.clone(), group.clone());
            async move { log.commit(&group, P0, Offset(5)).await }
        });
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        // The committing task is aborted (a consumer shut down); its write is already queued.
        commit.abort();
        assert!(commit.await.expect_err("aborted").is_cancelled());
        held.release().await;
        // The write lands, and the group answers what its file says, now and after a reopen.
        assert_eq!(
            log.committed(&group, P0).await.expect("committed"),
            Some(Offset(5))
        );
        log.commit(&group, P0, Offset(6))
            .await
            .expect("next commit");
        drop(log);
        let log = FileLog::open(dir.path(), config()).await.expect("reopen");
        assert_eq!(
            log.committed(&group, P0).await.expect("committed"),
            Some(Offset(6))
        );
    });
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_appends_under_fsync_are_read_back_in_order_across_rolls() {
    const WRITERS: u64 = 8;
    const EACH: u64 = 60;
    let dir = tempfile::tempdir().expect("tempdir");
    let log = std::sync::Arc::new(FileLog::open(dir.path(), config()).await.expect("open"));
    let total = WRITERS * EACH;
    // A reader that follows the log while it is written: it only ever sees visible records,
    // which must all be readable.
    let follower = {
        let log = log.clone();
        tokio::spawn(async move {
            let mut seen = Vec::new();
            let mut at = Offset(0);
            while (seen.len() as u64) < total {
                log.wait_for(P0, at).await.expect("wait");
                let batch = log.read(P0, at, ReadLimits::default()).await.expect("read");
                for r in batch {
                    assert_eq!(r.offset, at, "dense offsets");
                    at = r.offset.next();
                    seen.push(r.record);
                }
            }
            seen
        })
    };
    let mut writers = Vec::new();
    for w in 0..WRITERS {
        let log = log.clone();
        writers.push(tokio::spawn(async move {
            let mut offsets = Vec::new();
            for i in 0..EACH {
                let record = sample_record(&format!("dev-{w}"), i);
                offsets.push(log.append_one(P0, record).await.expect("append"));
            }
            offsets
        }));
    }
    let mut acknowledged = Vec::new();
    for (w, writer) in writers.into_iter().enumerate() {
        let offsets = writer.await.expect("writer");
        assert!(
            offsets.windows(2).all(|o| o[0] < o[1]),
            "writer {w} in order"
        );
        acknowledged.extend(offsets.into_iter().enumerate().map(|(i, o)| (o, w, i)));
    }
    let followed = follower.await.expect("follower");
    assert!(
        segments(dir.path(), 0).len() > 3,
        "the test should span several segments"
    );
    let all = testkit::read_records(log.as_ref(), P0).await;
    assert_eq!(all.len() as u64, total);
    assert_eq!(followed, all);
    for (offset, w, i) in acknowledged {
        assert_eq!(
            all[offset.0 as usize],
            sample_record(&format!("dev-{w}"), i as u64)
        );
    }
    drop(log);
    let reopened = FileLog::open(dir.path(), config()).await.expect("reopen");
    assert_eq!(testkit::read_records(&reopened, P0).await, all);
}

#[tokio::test]
async fn a_second_writer_is_refused_until_the_first_closes() {
    let dir = tempfile::tempdir().expect("tempdir");
    let first = FileLog::open(dir.path(), config()).await.expect("open");
    let second = FileLog::open(dir.path(), config()).await;
    assert!(matches!(second, Err(Error::Locked { .. })), "{second:?}");
    drop(first);
    FileLog::open(dir.path(), config())
        .await
        .expect("open after close");
}

#[tokio::test]
async fn partition_count_cannot_change() {
    let dir = tempfile::tempdir().expect("tempdir");
    drop(FileLog::open(dir.path(), config()).await.expect("open"));
    let other = config().partitions(3);
    let err = FileLog::open(dir.path(), other)
        .await
        .expect_err("must refuse");
    assert!(matches!(err, Error::Config { .. }));
    assert!(err.to_string().contains("2 partitions but 3"), "{err}");
}

#[tokio::test]
async fn nonsensical_configuration_is_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    for bad in [
        config().partitions(0),
        config().segment_bytes(0),
        config().durability(Durability::Interval(std::time::Duration::ZERO)),
    ] {
        assert!(matches!(
            FileLog::open(dir.path(), bad).await,
            Err(Error::Config { .. })
        ));
    }
}

#[tokio::test]
#[allow(
    clippy::disallowed_methods,
    reason = "a test setting up damage before the log is opened"
)]
async fn damage_in_a_sealed_segment_is_refused_not_skipped() {
    let dir = tempfile::tempdir().expect("tempdir");
    {
        let log = FileLog::open(dir.path(), config()).await.expect("open");
        for i in 0..150 {
            log.append(P0, vec![sample_record("dev", i)])
                .await
                .expect("append");
        }
    }
    let segs = segments(dir.path(), 0);
    assert!(segs.len() >= 3);
    let mut bytes = fs::read(&segs[0]).expect("read");
    bytes[40] ^= 0x01;
    fs::write(&segs[0], &bytes).expect("write");
    fs::remove_file(segs[0].with_extension("idx")).expect("remove index");
    let err = FileLog::open(dir.path(), config())
        .await
        .expect_err("must refuse");
    assert!(matches!(err, Error::Corrupt { .. }), "{err}");
}

#[tokio::test]
async fn reads_never_return_a_record_that_fails_its_checksum() {
    let dir = tempfile::tempdir().expect("tempdir");
    let log = FileLog::open(dir.path(), config()).await.expect("open");
    for i in 0..150 {
        log.append(P0, vec![sample_record("dev", i)])
            .await
            .expect("append");
    }
    // Damage a sealed segment under the running log.
    let segs = segments(dir.path(), 0);
    let mut bytes = fs::read(&segs[1]).expect("read");
    let at = bytes.len() / 2;
    bytes[at] ^= 0x10;
    fs::write(&segs[1], &bytes).expect("write");
    let mut errors = 0;
    let mut at = Offset(0);
    while at < Offset(150) {
        match log.read(P0, at, ReadLimits::records(1)).await {
            Ok(records) => {
                assert_eq!(records[0].record, sample_record("dev", at.0));
                at = at.next();
            }
            Err(Error::Corrupt { .. }) => {
                errors += 1;
                at = at.next();
            }
            Err(e) => panic!("unexpected error {e}"),
        }
    }
    assert!(errors >= 1, "the damaged batch was returned");
}

#[tokio::test]
async fn a_lost_index_is_rebuilt() {
    let dir = tempfile::tempdir().expect("tempdir");
    {
        let log = FileLog::open(dir.path(), config()).await.expect("open");
        for i in 0..150 {
            log.append(P0, vec![sample_record("dev", i)])
                .await
                .expect("append");
        }
    }
    for seg in segments(dir.path(), 0) {
        fs::write(seg.with_extension("idx"), b"garbage").expect("write");
    }
    let log = FileLog::open(dir.path(), config()).await.expect("reopen");
    let all = testkit::read_records(&log, P0).await;
    assert_eq!(all.len(), 150);
    let one = log
        .read(P0, Offset(41), ReadLimits::records(1))
        .await
        .expect("read");
    assert_eq!(one[0].record, sample_record("dev", 41));
}

#[tokio::test]
async fn oversized_input_and_bad_offsets_are_typed_errors() {
    let dir = tempfile::tempdir().expect("tempdir");
    let log = FileLog::open(dir.path(), config()).await.expect("open");
    let huge = Record::new("k", vec![0u8; 2 << 20]);
    assert!(matches!(
        log.append(P0, vec![huge]).await,
        Err(Error::RecordTooLarge { .. })
    ));
    for i in 0..150 {
        log.append(P0, vec![sample_record("dev", i)])
            .await
            .expect("append");
    }
    let policy = iot_core::RetentionPolicy {
        max_age: None,
        max_bytes: Some(1),
    };
    log.enforce_retention(&policy, iot_core::Timestamp::now())
        .await
        .expect("retention");
    let earliest = log.earliest_offset(P0).await.expect("earliest");
    assert!(earliest > Offset(0));
    assert!(matches!(
        log.read(P0, Offset(0), ReadLimits::default()).await,
        Err(Error::OffsetTruncated { .. })
    ));
    assert!(matches!(
        log.read(P0, Offset(151), ReadLimits::default()).await,
        Err(Error::OffsetBeyondEnd { .. })
    ));
}

#[tokio::test]
async fn files_are_private() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().expect("tempdir");
    let log = FileLog::open(dir.path(), config()).await.expect("open");
    log.append(P0, vec![sample_record("dev", 1)])
        .await
        .expect("append");
    for seg in segments(dir.path(), 0) {
        let mode = fs::metadata(&seg).expect("stat").permissions().mode() & 0o777;
        assert_eq!(mode, 0o600, "{}", seg.display());
    }
}
