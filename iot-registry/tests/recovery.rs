//! Recovery of the `FileRegistry` by the storage kit's one rule: a torn or zero-filled tail of the
//! log is cut and the registry opens; damage followed by intact frames is refused with a typed
//! `Corrupt` error naming the file and position (nothing dropped) unless the config asks for
//! `Recovery::Repair`; frames with valid checksums claiming huge lengths or counts are typed
//! errors, not allocations.
#![allow(clippy::unwrap_used)]

use std::io::Write;
use std::path::{Path, PathBuf};

use iot_core::DeviceId;
use iot_core::storage::Recovery;
use iot_core::storage::frame::HEADER_LEN;
use iot_registry::{DeviceDocument, Durability, Error, FileRegistry, FileRegistryConfig, Registry};
use serde_json::json;

fn id(i: usize) -> DeviceId {
    DeviceId::new(format!("d{i}")).unwrap()
}

fn file_in(dir: &Path, prefix: &str) -> PathBuf {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.file_name().unwrap().to_string_lossy().starts_with(prefix))
        .unwrap()
}

/// The start of every frame of `bytes`.
fn frame_starts(bytes: &[u8]) -> Vec<usize> {
    let mut starts = Vec::new();
    let mut at = 0;
    while at < bytes.len() {
        starts.push(at);
        let len = u32::from_le_bytes(bytes[at..at + 4].try_into().unwrap()) as usize;
        at += HEADER_LEN + len;
    }
    starts
}

/// Recomputes the checksums of the frame at `at` after its body (or length) was edited.
fn reseal(bytes: &mut [u8], at: usize) {
    let len = u32::from_le_bytes(bytes[at..at + 4].try_into().unwrap()) as usize;
    if let Some(body) = bytes.get(at + HEADER_LEN..at + HEADER_LEN + len) {
        let crc = crc32c::crc32c(body);
        bytes[at + 4..at + 8].copy_from_slice(&crc.to_le_bytes());
    }
    let hcrc = crc32c::crc32c(&bytes[at..at + 8]);
    bytes[at + 8..at + 12].copy_from_slice(&hcrc.to_le_bytes());
}

/// A registry with devices `0..n` created in its log (no snapshot); returns the log's path and
/// frame starts.
async fn logged(dir: &Path, n: usize) -> (PathBuf, Vec<usize>) {
    let r = FileRegistry::open(dir, FileRegistryConfig::default())
        .await
        .unwrap();
    for i in 0..n {
        let doc = DeviceDocument::with_metadata(json!({"i": i, "list": [i]})).unwrap();
        r.create(&id(i), doc).await.unwrap();
    }
    drop(r);
    let wal = file_in(dir, "wal-");
    let starts = frame_starts(&std::fs::read(&wal).unwrap());
    assert_eq!(starts.len(), n);
    (wal, starts)
}

async fn ids(r: &FileRegistry, n: usize) -> Vec<usize> {
    let mut out = Vec::new();
    for i in 0..n {
        if r.get(&id(i)).await.unwrap().is_some() {
            out.push(i);
        }
    }
    out
}

fn repair() -> FileRegistryConfig {
    FileRegistryConfig::default().recovery(Recovery::Repair)
}

#[tokio::test]
async fn a_torn_last_frame_is_cut_and_writes_continue() {
    let dir = tempfile::tempdir().unwrap();
    let (wal, starts) = logged(dir.path(), 5).await;
    let len = std::fs::metadata(&wal).unwrap().len();
    std::fs::OpenOptions::new()
        .write(true)
        .open(&wal)
        .unwrap()
        .set_len(len - 7)
        .unwrap();
    let r = FileRegistry::open(dir.path(), FileRegistryConfig::default())
        .await
        .unwrap();
    assert_eq!(ids(&r, 5).await, [0, 1, 2, 3]);
    assert_eq!(std::fs::metadata(&wal).unwrap().len(), starts[4] as u64);
    r.create(&id(9), DeviceDocument::default()).await.unwrap();
    drop(r);
    let r = FileRegistry::open(dir.path(), FileRegistryConfig::default())
        .await
        .unwrap();
    assert_eq!(ids(&r, 10).await, [0, 1, 2, 3, 9]);
}

#[tokio::test]
async fn a_partly_written_header_followed_by_zeros_is_a_torn_tail() {
    // A crash can leave the first bytes of a frame's header and, after a power cut, zeros where
    // the rest never reached the disk: no intact frame follows, so it is a torn tail.
    let dir = tempfile::tempdir().unwrap();
    let (wal, starts) = logged(dir.path(), 4).await;
    let mut bytes = std::fs::read(&wal).unwrap();
    let last = starts[3];
    for b in &mut bytes[last + 5..] {
        *b = 0;
    }
    bytes.extend_from_slice(&[0; 512]);
    std::fs::write(&wal, &bytes).unwrap();
    let r = FileRegistry::open(dir.path(), FileRegistryConfig::default())
        .await
        .unwrap();
    assert_eq!(ids(&r, 4).await, [0, 1, 2]);
    assert_eq!(std::fs::metadata(&wal).unwrap().len(), last as u64);
}

#[tokio::test]
async fn a_flipped_byte_in_a_middle_frame_is_refused_and_repaired_only_when_asked() {
    let dir = tempfile::tempdir().unwrap();
    let (wal, starts) = logged(dir.path(), 6).await;
    let mut bytes = std::fs::read(&wal).unwrap();
    bytes[starts[2] + HEADER_LEN + 3] ^= 0x01;
    std::fs::write(&wal, &bytes).unwrap();

    match FileRegistry::open(dir.path(), FileRegistryConfig::default()).await {
        Err(Error::Corrupt { path, position, .. }) => {
            assert_eq!(path, wal);
            assert_eq!(position, starts[2] as u64);
        }
        other => panic!("expected Corrupt, got {other:?}"),
    }
    // Refusing dropped nothing.
    assert_eq!(std::fs::read(&wal).unwrap(), bytes);

    let r = FileRegistry::open(dir.path(), repair()).await.unwrap();
    assert_eq!(ids(&r, 6).await, [0, 1]);
    drop(r);
    // The repair cut the log durably: a strict open now succeeds with what was kept.
    assert_eq!(std::fs::metadata(&wal).unwrap().len(), starts[2] as u64);
    let r = FileRegistry::open(dir.path(), FileRegistryConfig::default())
        .await
        .unwrap();
    assert_eq!(ids(&r, 6).await, [0, 1]);
}

#[tokio::test]
async fn a_zero_filled_tail_is_cut() {
    let dir = tempfile::tempdir().unwrap();
    let (wal, _) = logged(dir.path(), 3).await;
    let len = std::fs::metadata(&wal).unwrap().len();
    std::fs::OpenOptions::new()
        .append(true)
        .open(&wal)
        .unwrap()
        .write_all(&[0; 4096])
        .unwrap();
    let r = FileRegistry::open(dir.path(), FileRegistryConfig::default())
        .await
        .unwrap();
    assert_eq!(ids(&r, 3).await, [0, 1, 2]);
    assert_eq!(std::fs::metadata(&wal).unwrap().len(), len);
}

#[tokio::test]
async fn checksummed_frames_claiming_huge_lengths_or_counts_are_typed_errors() {
    // A log frame header claiming 4 GiB, with a valid header checksum.
    let dir = tempfile::tempdir().unwrap();
    let (wal, starts) = logged(dir.path(), 3).await;
    let mut bytes = std::fs::read(&wal).unwrap();
    bytes[starts[1]..starts[1] + 4].copy_from_slice(&u32::MAX.to_le_bytes());
    reseal(&mut bytes, starts[1]);
    std::fs::write(&wal, &bytes).unwrap();
    match FileRegistry::open(dir.path(), FileRegistryConfig::default()).await {
        Err(Error::Corrupt { path, position, .. }) => {
            assert_eq!((path, position), (wal, starts[1] as u64));
        }
        other => panic!("expected Corrupt, got {other:?}"),
    }

    // A record whose array claims 4 billion items, in a frame with valid checksums.
    let dir = tempfile::tempdir().unwrap();
    let (wal, starts) = logged(dir.path(), 3).await;
    let mut bytes = std::fs::read(&wal).unwrap();
    // "list": [1] is ARRAY(7) count:u32=1 U64(4) 1:u64.
    let array = [7u8, 1, 0, 0, 0, 4, 1, 0, 0, 0, 0, 0, 0, 0];
    let at = bytes.windows(array.len()).position(|w| w == array).unwrap();
    assert!(at > starts[1] && at < starts[2]);
    bytes[at + 1..at + 5].copy_from_slice(&u32::MAX.to_le_bytes());
    reseal(&mut bytes, starts[1]);
    std::fs::write(&wal, &bytes).unwrap();
    match FileRegistry::open(dir.path(), FileRegistryConfig::default()).await {
        Err(Error::Corrupt {
            position, reason, ..
        }) => {
            assert_eq!(position, starts[1] as u64);
            assert!(reason.contains("bad record"), "{reason}");
        }
        other => panic!("expected Corrupt, got {other:?}"),
    }

    // A snapshot header claiming u64::MAX records.
    let dir = tempfile::tempdir().unwrap();
    logged(dir.path(), 3).await;
    let r = FileRegistry::open(dir.path(), FileRegistryConfig::default())
        .await
        .unwrap();
    r.compact().await.unwrap();
    drop(r);
    let snapshot = file_in(dir.path(), "snapshot-");
    let mut bytes = std::fs::read(&snapshot).unwrap();
    // header body = magic:8 next_version:u64 count:u64 ...
    let count = HEADER_LEN + 16;
    bytes[count..count + 8].copy_from_slice(&u64::MAX.to_le_bytes());
    reseal(&mut bytes, 0);
    std::fs::write(&snapshot, &bytes).unwrap();
    assert!(matches!(
        FileRegistry::open(dir.path(), FileRegistryConfig::default()).await,
        Err(Error::Corrupt { path, .. }) if path == snapshot
    ));
}

#[tokio::test]
async fn interval_durability_is_refused_with_the_alternatives() {
    let dir = tempfile::tempdir().unwrap();
    let config = FileRegistryConfig::default()
        .durability(Durability::Interval(std::time::Duration::from_secs(1)));
    match FileRegistry::open(dir.path(), config).await {
        Err(Error::Config { reason }) => assert!(reason.contains("Durability::Fsync"), "{reason}"),
        other => panic!("expected Config, got {other:?}"),
    }
}
