//! FileLog recovery: what a crash can leave (a torn or zero-filled tail) is cut off; what a crash
//! cannot leave (damage followed by intact batches, a batch with a valid checksum that no writer
//! produced) is refused with a typed error and repaired only when asked; a damaged consumer-group
//! file affects that group only.

use std::fs::{self, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};

use iot_core::storage::Recovery;
use iot_core::{
    Error, FileLog, FileLogConfig, GroupName, Log, LogExt, Offset, PartitionId, ReadLimits, Record,
    testkit::{self, sample_record},
};

const P0: PartitionId = PartitionId(0);

fn config() -> FileLogConfig {
    FileLogConfig::default()
        .partitions(1)
        .segment_bytes(1 << 20)
        .index_interval_bytes(256)
}

fn repair_config() -> FileLogConfig {
    config().recovery(Recovery::Repair)
}

fn segment_of(dir: &Path) -> PathBuf {
    let mut v: Vec<PathBuf> = fs::read_dir(dir.join("p00000"))
        .expect("list")
        .map(|e| e.expect("entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "log"))
        .collect();
    v.sort();
    v.pop().expect("a segment")
}

fn file_len(path: &Path) -> u64 {
    fs::metadata(path).expect("stat").len()
}

/// Appends ten single-record batches (fsynced) to one segment; returns the segment and the file
/// position where each batch starts, followed by the end of the last one.
async fn ten_batches(dir: &Path) -> (PathBuf, Vec<u64>) {
    let log = FileLog::open(dir, config()).await.expect("open");
    let seg = segment_of(dir);
    let mut starts = Vec::new();
    for i in 0..10 {
        starts.push(file_len(&seg));
        log.append(P0, vec![sample_record("dev", i)])
            .await
            .expect("append");
    }
    starts.push(file_len(&seg));
    (seg, starts)
}

async fn read_all(log: &FileLog) -> Vec<Record> {
    testkit::read_records(log, P0).await
}

fn expected(n: u64) -> Vec<Record> {
    (0..n).map(|i| sample_record("dev", i)).collect()
}

/// A storage-kit frame around `body`: what the FileLog writes per batch.
fn frame(body: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    iot_core::storage::frame::encode(&mut out, body).expect("frame");
    out
}

/// A frame header claiming `len` body bytes, with a valid header checksum.
fn header_claiming(len: u32) -> Vec<u8> {
    let mut header = Vec::new();
    header.extend_from_slice(&len.to_le_bytes());
    header.extend_from_slice(&0u32.to_le_bytes());
    let hcrc = crc32c::crc32c(&header);
    header.extend_from_slice(&hcrc.to_le_bytes());
    header
}

fn append_bytes(path: &Path, bytes: &[u8]) {
    let mut f = OpenOptions::new().append(true).open(path).expect("open");
    f.write_all(bytes).expect("write");
}

#[tokio::test]
async fn a_torn_last_batch_is_cut_and_appending_continues() {
    for cut in [1u64, 5, 11, 12, 13, 20] {
        let dir = tempfile::tempdir().expect("tempdir");
        let (seg, starts) = ten_batches(dir.path()).await;
        OpenOptions::new()
            .write(true)
            .open(&seg)
            .expect("open")
            .set_len(starts[10] - cut)
            .expect("cut");
        let log = FileLog::open(dir.path(), config())
            .await
            .expect("a torn tail is recovered");
        assert_eq!(
            log.next_offset(P0).await.expect("next"),
            Offset(9),
            "cut {cut}"
        );
        assert_eq!(read_all(&log).await, expected(9));
        assert_eq!(
            file_len(&seg),
            starts[9],
            "the torn batch is cut off the file"
        );
        assert_eq!(
            log.append_one(P0, sample_record("dev", 42))
                .await
                .expect("append"),
            Offset(9)
        );
    }
}

#[tokio::test]
async fn a_damaged_last_batch_is_a_torn_tail() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (seg, starts) = ten_batches(dir.path()).await;
    let mut bytes = fs::read(&seg).expect("read");
    let n = bytes.len();
    bytes[n - 3] ^= 0x40;
    fs::write(&seg, &bytes).expect("write");
    let log = FileLog::open(dir.path(), config())
        .await
        .expect("recovered");
    assert_eq!(read_all(&log).await, expected(9));
    assert_eq!(file_len(&seg), starts[9]);
}

#[tokio::test]
async fn a_zero_filled_tail_is_cut() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (seg, starts) = ten_batches(dir.path()).await;
    // What a power cut during file extension can leave.
    append_bytes(&seg, &[0u8; 4096]);
    let log = FileLog::open(dir.path(), config())
        .await
        .expect("recovered");
    assert_eq!(read_all(&log).await, expected(10));
    assert_eq!(file_len(&seg), starts[10]);
}

/// Issue 23 finding 4: one flipped byte in the active segment, before intact batches, used to be
/// taken for a torn tail and silently cut every later (fsynced) batch.
#[tokio::test]
async fn a_flipped_byte_before_intact_batches_is_refused_and_repaired_only_on_request() {
    // Bytes within batch 5: frame header (length, checksum, header checksum) and body.
    for within in [0u64, 2, 5, 9, 14, 30] {
        let dir = tempfile::tempdir().expect("tempdir");
        let (seg, starts) = ten_batches(dir.path()).await;
        let mut bytes = fs::read(&seg).expect("read");
        bytes[(starts[5] + within) as usize] ^= 0x04;
        fs::write(&seg, &bytes).expect("write");

        for _ in 0..2 {
            match FileLog::open(dir.path(), config()).await {
                Err(Error::Corrupt { path, position, .. }) => {
                    assert_eq!(path, seg, "byte {within}");
                    assert_eq!(position, starts[5], "byte {within}");
                }
                Err(e) => panic!("byte {within}: unexpected error {e}"),
                Ok(log) => panic!(
                    "byte {within}: opened with {:?} records instead of refusing",
                    log.next_offset(P0).await
                ),
            }
            // Nothing was cut: refusing leaves the file as it was.
            assert_eq!(fs::read(&seg).expect("read"), bytes, "byte {within}");
        }

        let log = FileLog::open(dir.path(), repair_config())
            .await
            .expect("repair on request");
        assert_eq!(read_all(&log).await, expected(5), "byte {within}");
        drop(log);
        assert_eq!(file_len(&seg), starts[5]);
        let log = FileLog::open(dir.path(), config())
            .await
            .expect("a repaired log opens strictly");
        assert_eq!(
            log.append_one(P0, sample_record("dev", 5))
                .await
                .expect("append"),
            Offset(5)
        );
    }
}

/// Issue 23 finding 5: a batch with a valid checksum claiming `u32::MAX` records made the reader
/// allocate by that count, and the process died.
#[tokio::test]
async fn a_crafted_batch_claiming_u32_max_records_is_a_typed_error_not_an_abort() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (seg, starts) = ten_batches(dir.path()).await;
    let mut body = vec![1u8]; // batch format version
    body.extend_from_slice(&10u64.to_le_bytes()); // base offset: continues the log
    body.extend_from_slice(&u32::MAX.to_le_bytes()); // record count
    body.extend_from_slice(&0u64.to_le_bytes()); // enqueued time
    // One empty record: key, header count, no device time, payload.
    body.extend_from_slice(&[0u8; 4 + 4 + 1 + 8 + 4]);
    append_bytes(&seg, &frame(&body));
    match FileLog::open(dir.path(), config()).await {
        Err(Error::Corrupt { path, position, .. }) => {
            assert_eq!(path, seg);
            assert_eq!(position, starts[10]);
        }
        Err(e) => panic!("unexpected error {e}"),
        Ok(log) => {
            let read = log.read(P0, Offset(10), ReadLimits::default()).await;
            panic!("the crafted batch was accepted; reading it gave {read:?}");
        }
    }
    let log = FileLog::open(dir.path(), repair_config())
        .await
        .expect("repair");
    assert_eq!(read_all(&log).await, expected(10));
}

#[tokio::test]
async fn a_frame_header_claiming_a_huge_length_is_a_typed_error() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (seg, starts) = ten_batches(dir.path()).await;
    append_bytes(&seg, &header_claiming(u32::MAX));
    append_bytes(&seg, &[7u8; 64]);
    match FileLog::open(dir.path(), config()).await {
        Err(Error::Corrupt { path, position, .. }) => {
            assert_eq!(path, seg);
            assert_eq!(position, starts[10]);
        }
        other => panic!("expected Corrupt, got {:?}", other.map(|_| ())),
    }
}

fn group(name: &str) -> GroupName {
    GroupName::new(name).expect("group name")
}

/// Issue 23 finding 6: garbage in one group's file made the whole log refuse to open.
#[tokio::test]
async fn a_damaged_group_file_affects_that_group_only() {
    let dir = tempfile::tempdir().expect("tempdir");
    {
        let log = FileLog::open(dir.path(), config()).await.expect("open");
        for i in 0..10 {
            log.append(P0, vec![sample_record("dev", i)])
                .await
                .expect("append");
        }
        for (name, at) in [("good", 7), ("garbled", 3), ("wrong-shape", 4)] {
            log.commit(&group(name), P0, Offset(at))
                .await
                .expect("commit");
        }
    }
    let garbled = dir.path().join("groups/garbled.json");
    fs::write(&garbled, b"{\"group\":\"garbled\",\"offs\x00\x17").expect("damage");
    // Parses, but for another partition count.
    fs::write(
        dir.path().join("groups/wrong-shape.json"),
        br#"{"group":"wrong-shape","offsets":[4,5,6]}"#,
    )
    .expect("damage");

    let log = FileLog::open(dir.path(), config())
        .await
        .expect("one damaged group must not keep the log closed");
    assert_eq!(
        log.committed(&group("good"), P0).await.expect("committed"),
        Some(Offset(7))
    );
    for name in ["garbled", "wrong-shape"] {
        match log.committed(&group(name), P0).await {
            Err(Error::Corrupt { path, .. }) => {
                assert_eq!(path, dir.path().join(format!("groups/{name}.json")));
            }
            other => panic!("{name}: expected Corrupt, got {other:?}"),
        }
        assert!(
            matches!(
                log.commit(&group(name), P0, Offset(9)).await,
                Err(Error::Corrupt { .. })
            ),
            "{name}: a commit must not silently replace a damaged group's offsets"
        );
    }
    assert_eq!(read_all(&log).await, expected(10));
    log.commit(&group("new"), P0, Offset(2))
        .await
        .expect("other groups commit");
}

/// Issue 23 finding 6: a valid group file holding an offset past the end of the partition (as an
/// OS-buffered log can leave after a machine crash: the commit was fsynced, the data was not)
/// made the group fail every poll with `OffsetBeyondEnd`. It is clamped to the end on open.
#[tokio::test]
async fn a_group_offset_past_the_end_is_clamped_on_open_and_stays_clamped() {
    let dir = tempfile::tempdir().expect("tempdir");
    {
        let log = FileLog::open(dir.path(), config()).await.expect("open");
        for i in 0..10 {
            log.append(P0, vec![sample_record("dev", i)])
                .await
                .expect("append");
        }
        log.commit(&group("g"), P0, Offset(10))
            .await
            .expect("commit");
    }
    fs::write(
        dir.path().join("groups/g.json"),
        br#"{"group":"g","offsets":[1000]}"#,
    )
    .expect("write");
    {
        let log = FileLog::open(dir.path(), config()).await.expect("open");
        let committed = log.committed(&group("g"), P0).await.expect("committed");
        assert_eq!(committed, Some(Offset(10)));
        let polled = log
            .read(P0, committed.expect("some"), ReadLimits::default())
            .await
            .expect("the group can poll");
        assert!(polled.is_empty());
        for i in 10..15 {
            log.append(P0, vec![sample_record("dev", i)])
                .await
                .expect("append");
        }
    }
    // The clamp was written back: the stale 1000 cannot come back and skip the new records.
    let log = FileLog::open(dir.path(), config()).await.expect("reopen");
    assert_eq!(
        log.committed(&group("g"), P0).await.expect("committed"),
        Some(Offset(10))
    );
}

/// Batches larger than the chunk a reader fetches at once (256 KiB): the cursor reads on until
/// the kit can decide, both when recovering and when reading, and a torn big batch is still a
/// torn tail.
#[tokio::test]
async fn batches_larger_than_a_read_chunk_recover_and_read_back() {
    let dir = tempfile::tempdir().expect("tempdir");
    let big = |i: u64| -> Vec<Record> {
        (0..3)
            .map(|j| Record::new("dev", vec![(i * 3 + j) as u8; 200 * 1024]))
            .collect()
    };
    let mut written = Vec::new();
    let seg = {
        let log = FileLog::open(dir.path(), config()).await.expect("open");
        for i in 0..4 {
            log.append(P0, big(i)).await.expect("append big");
            written.extend(big(i));
            log.append(P0, vec![sample_record("dev", i)])
                .await
                .expect("append small");
            written.push(sample_record("dev", i));
        }
        log.append(P0, big(9)).await.expect("append big");
        segment_of(dir.path())
    };
    // Cut the last big batch short: a torn tail, however many chunks it spans.
    OpenOptions::new()
        .write(true)
        .open(&seg)
        .expect("open")
        .set_len(file_len(&seg) - 1000)
        .expect("cut");
    let log = FileLog::open(dir.path(), config())
        .await
        .expect("recovered");
    assert_eq!(read_all(&log).await, written);
    for at in [0u64, 3, 4, 7, 15] {
        let got = log
            .read(P0, Offset(at), ReadLimits::records(1))
            .await
            .expect("read");
        assert_eq!(got[0].record, written[at as usize], "offset {at}");
    }
}
