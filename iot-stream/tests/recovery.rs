//! Recovery of the `FileStateStore` by the storage kit's one rule: a torn or zero-filled tail of
//! the journal is cut and the store opens; damage followed by intact frames is refused with a
//! typed `Corrupt` error naming the file and position (nothing dropped) unless the config asks for
//! `Recovery::Repair`; a frame claiming a huge length is a typed error, not an allocation.
#![allow(clippy::unwrap_used)]

use std::io::Write;
use std::path::{Path, PathBuf};

use iot_core::storage::Recovery;
use iot_core::storage::frame::{self, HEADER_LEN};
use iot_core::{DeviceId, Timestamp};
use iot_stream::{Error, FileStateStore, FileStateStoreConfig, LkvUpdate, StateStore};
use serde_json::{Value, json};

fn update(field: &str, v: u64) -> LkvUpdate {
    LkvUpdate {
        patch: json!({ field: v }),
        key_frame: false,
        source_time: Timestamp::from_unix_millis(v),
        source: None,
    }
}

fn dev() -> DeviceId {
    DeviceId::new("dev").unwrap()
}

fn journal(dir: &Path) -> PathBuf {
    std::fs::read_dir(dir)
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .find(|p| p.to_string_lossy().contains("journal-"))
        .unwrap()
}

/// A store with one merge per field of `fields` in its journal; returns the journal's frame
/// start positions.
async fn store_with(dir: &Path, fields: &[&str]) -> Vec<usize> {
    let s = FileStateStore::open(dir, FileStateStoreConfig::default())
        .await
        .unwrap();
    for (i, f) in fields.iter().enumerate() {
        s.merge_last_known(&dev(), update(f, i as u64 + 1))
            .await
            .unwrap();
    }
    drop(s);
    let bytes = std::fs::read(journal(dir)).unwrap();
    let mut starts = Vec::new();
    let mut at = 0;
    while at < bytes.len() {
        starts.push(at);
        let len = u32::from_le_bytes(bytes[at..at + 4].try_into().unwrap()) as usize;
        at += HEADER_LEN + len;
    }
    assert_eq!(starts.len(), fields.len());
    starts
}

async fn values(dir: &Path, config: FileStateStoreConfig) -> Result<Option<Value>, Error> {
    let s = FileStateStore::open(dir, config).await?;
    Ok(s.last_known(&dev()).await?.map(|l| l.values()))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_torn_last_frame_is_cut_and_writes_continue() {
    let dir = tempfile::tempdir().unwrap();
    let starts = store_with(dir.path(), &["a", "b", "c"]).await;
    let path = journal(dir.path());
    let len = std::fs::metadata(&path).unwrap().len();
    // Cut in the middle of the last frame's body.
    let cut = (starts[2] + HEADER_LEN + 3) as u64;
    assert!(cut < len);
    std::fs::OpenOptions::new()
        .write(true)
        .open(&path)
        .unwrap()
        .set_len(cut)
        .unwrap();
    let s = FileStateStore::open(dir.path(), FileStateStoreConfig::default())
        .await
        .unwrap();
    assert_eq!(
        s.last_known(&dev()).await.unwrap().unwrap().values(),
        json!({"a": 1, "b": 2})
    );
    assert_eq!(std::fs::metadata(&path).unwrap().len(), starts[2] as u64);
    s.merge_last_known(&dev(), update("d", 4)).await.unwrap();
    drop(s);
    assert_eq!(
        values(dir.path(), FileStateStoreConfig::default())
            .await
            .unwrap(),
        Some(json!({"a": 1, "b": 2, "d": 4}))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flipped_byte_in_a_middle_frame_is_refused_and_repaired_only_when_asked() {
    let dir = tempfile::tempdir().unwrap();
    let starts = store_with(dir.path(), &["a", "b", "c", "d"]).await;
    let path = journal(dir.path());
    let mut bytes = std::fs::read(&path).unwrap();
    bytes[starts[1] + HEADER_LEN + 2] ^= 0x20; // inside the second frame's body
    std::fs::write(&path, &bytes).unwrap();

    let err = values(dir.path(), FileStateStoreConfig::default())
        .await
        .unwrap_err();
    match &err {
        Error::Corrupt {
            path: p, position, ..
        } => {
            assert_eq!(p, &path);
            assert_eq!(*position, starts[1] as u64);
        }
        other => panic!("expected Corrupt, got {other}"),
    }
    // Refusing dropped nothing: the file is as it was, and refusing again gives the same answer.
    assert_eq!(std::fs::read(&path).unwrap(), bytes);
    assert!(matches!(
        values(dir.path(), FileStateStoreConfig::default()).await,
        Err(Error::Corrupt { .. })
    ));

    let repair = FileStateStoreConfig::default().recovery(Recovery::Repair);
    assert_eq!(
        values(dir.path(), repair).await.unwrap(),
        Some(json!({"a": 1}))
    );
    // The repair is durable: a strict open now succeeds with what was kept.
    assert_eq!(std::fs::metadata(&path).unwrap().len(), starts[1] as u64);
    assert_eq!(
        values(dir.path(), FileStateStoreConfig::default())
            .await
            .unwrap(),
        Some(json!({"a": 1}))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_zero_filled_tail_is_cut() {
    let dir = tempfile::tempdir().unwrap();
    store_with(dir.path(), &["a", "b"]).await;
    let path = journal(dir.path());
    let len = std::fs::metadata(&path).unwrap().len();
    // A power cut can leave the file longer than what reached the disk, filled with zeros.
    std::fs::OpenOptions::new()
        .append(true)
        .open(&path)
        .unwrap()
        .write_all(&[0; 4096])
        .unwrap();
    let s = FileStateStore::open(dir.path(), FileStateStoreConfig::default())
        .await
        .unwrap();
    assert_eq!(
        s.last_known(&dev()).await.unwrap().unwrap().values(),
        json!({"a": 1, "b": 2})
    );
    assert_eq!(std::fs::metadata(&path).unwrap().len(), len);
    s.merge_last_known(&dev(), update("c", 3)).await.unwrap();
    drop(s);
    assert_eq!(
        values(dir.path(), FileStateStoreConfig::default())
            .await
            .unwrap(),
        Some(json!({"a": 1, "b": 2, "c": 3}))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_checksummed_frame_claiming_a_huge_length_is_a_typed_error() {
    let dir = tempfile::tempdir().unwrap();
    let starts = store_with(dir.path(), &["a", "b", "c"]).await;
    let path = journal(dir.path());
    let mut bytes = std::fs::read(&path).unwrap();
    // The second frame's header rewritten to claim 4 GiB, with a valid header checksum.
    let at = starts[1];
    let mut header = [0u8; 8];
    header[..4].copy_from_slice(&u32::MAX.to_le_bytes());
    header[4..].copy_from_slice(&bytes[at + 4..at + 8]);
    bytes[at..at + 8].copy_from_slice(&header);
    bytes[at + 8..at + 12].copy_from_slice(&crc32c::crc32c(&header).to_le_bytes());
    std::fs::write(&path, &bytes).unwrap();
    match values(dir.path(), FileStateStoreConfig::default()).await {
        Err(Error::Corrupt {
            path: p, position, ..
        }) => {
            assert_eq!(p, path);
            assert_eq!(position, at as u64);
        }
        other => panic!("expected Corrupt, got {other:?}"),
    }

    // An intact frame whose body is not an operation is corrupt too, at its position.
    let dir = tempfile::tempdir().unwrap();
    store_with(dir.path(), &["a"]).await;
    let path = journal(dir.path());
    let len = std::fs::metadata(&path).unwrap().len();
    let mut junk = Vec::new();
    frame::encode(&mut junk, br#"{"Events":{"device":"dev","events":[{"t":"#).unwrap();
    std::fs::OpenOptions::new()
        .append(true)
        .open(&path)
        .unwrap()
        .write_all(&junk)
        .unwrap();
    match values(dir.path(), FileStateStoreConfig::default()).await {
        Err(Error::Corrupt { position, .. }) => assert_eq!(position, len),
        other => panic!("expected Corrupt, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_damaged_snapshot_is_refused_and_a_repair_of_it_lasts() {
    let dir = tempfile::tempdir().unwrap();
    let s = FileStateStore::open(dir.path(), FileStateStoreConfig::default())
        .await
        .unwrap();
    for d in 0..4 {
        let id = DeviceId::new(format!("d{d}")).unwrap();
        s.merge_last_known(&id, update("a", d + 1)).await.unwrap();
    }
    s.compact().await.unwrap();
    drop(s);
    let snap = dir.path().join("state.snap");
    let mut bytes = std::fs::read(&snap).unwrap();
    // Flip a byte in the body of the last device frame: it is the end of the file, but a
    // snapshot is never torn.
    let last = bytes.len() - 3;
    bytes[last] ^= 0x20;
    std::fs::write(&snap, &bytes).unwrap();
    let err = FileStateStore::open(dir.path(), FileStateStoreConfig::default())
        .await
        .unwrap_err();
    assert!(
        matches!(&err, Error::Corrupt { path, .. } if path == &snap),
        "{err}"
    );

    let repair = FileStateStoreConfig::default().recovery(Recovery::Repair);
    let s = FileStateStore::open(dir.path(), repair).await.unwrap();
    assert_eq!(s.devices().await.unwrap().len(), 3);
    drop(s);
    let s = FileStateStore::open(dir.path(), FileStateStoreConfig::default())
        .await
        .unwrap();
    assert_eq!(s.devices().await.unwrap().len(), 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn interval_durability_is_refused_with_the_alternatives() {
    let dir = tempfile::tempdir().unwrap();
    let config = FileStateStoreConfig::default().durability(
        iot_core::storage::Durability::Interval(std::time::Duration::from_secs(1)),
    );
    let err = FileStateStore::open(dir.path(), config).await.unwrap_err();
    assert!(err.to_string().contains("Durability::Fsync"), "{err}");
}
