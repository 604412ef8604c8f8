//! Recovery of `FileIdentityStore` by the storage kit's rule, through the public API and the
//! files on disk: a torn last frame and a zero-filled tail are cut off; damage followed by intact
//! frames is refused with a typed `Corrupt` error naming the file and the position, and cut off
//! only when the store is opened with `Recovery::Repair`; a crafted frame with valid checksums
//! but impossible lengths is a typed error, never an abort or a huge allocation.

use std::path::Path;

use iot_core::DeviceId;
use iot_core::storage::frame;
use iot_identity::{
    Credentials, DeviceStatus, Error, FileIdentityStore, FileIdentityStoreConfig, IdentityStore,
    NewIdentity, Recovery,
};

/// The log's magic: frames start after it.
const MAGIC_LEN: usize = 8;

fn id(s: &str) -> DeviceId {
    s.parse().expect("id")
}

fn options(recovery: Recovery) -> FileIdentityStoreConfig {
    FileIdentityStoreConfig::default().recovery(recovery)
}

fn open(dir: &Path, recovery: Recovery) -> Result<FileIdentityStore, Error> {
    FileIdentityStore::open_blocking(dir, options(recovery))
}

/// Writes devices `d0`..`d{n-1}` through the store; returns the log's frame positions (from the
/// log's length after each write).
async fn write_devices(dir: &Path, n: usize) -> Vec<u64> {
    let store = FileIdentityStore::open(dir, options(Recovery::Strict))
        .await
        .expect("open");
    let wal = dir.join("wal");
    let mut starts = Vec::new();
    for i in 0..n {
        starts.push(std::fs::metadata(&wal).expect("stat").len());
        store
            .create(NewIdentity::new(
                id(&format!("d{i}")),
                Credentials::generate_symmetric_keys(),
            ))
            .await
            .expect("create");
    }
    starts
}

fn present(store: &FileIdentityStore, n: usize) -> Vec<bool> {
    (0..n)
        .map(|i| store.get_now(&id(&format!("d{i}"))).is_some())
        .collect()
}

#[tokio::test]
async fn a_torn_last_frame_is_cut_off() {
    let dir = tempfile::tempdir().expect("dir");
    let starts = write_devices(dir.path(), 3).await;
    let wal = dir.path().join("wal");
    let full = std::fs::read(&wal).expect("read");
    let last = usize::try_from(starts[2]).expect("position");
    // Every cut inside the last frame is a torn write.
    for cut in last + 1..full.len() {
        std::fs::write(&wal, &full[..cut]).expect("write");
        let store = FileIdentityStore::open(dir.path(), options(Recovery::Strict))
            .await
            .unwrap_or_else(|e| panic!("cut at {cut}: {e}"));
        assert_eq!(present(&store, 3), [true, true, false], "cut at {cut}");
        drop(store);
        assert_eq!(std::fs::metadata(&wal).expect("stat").len(), starts[2]);
    }
}

#[tokio::test]
async fn a_flipped_byte_in_a_middle_frame_is_refused_and_repaired_only_on_request() {
    let dir = tempfile::tempdir().expect("dir");
    let starts = write_devices(dir.path(), 4).await;
    let wal = dir.path().join("wal");
    let good = std::fs::read(&wal).expect("read");
    let middle = usize::try_from(starts[1]).expect("position");
    // One byte of the frame's body, and one of its length: a length that points past the end of
    // the file must not pass for a torn tail and drop the intact frames after it.
    for flip in [middle + frame::HEADER_LEN + 5, middle + 2] {
        let mut bad = good.clone();
        bad[flip] ^= 0x40;
        std::fs::write(&wal, &bad).expect("write");
        match open(dir.path(), Recovery::Strict) {
            Err(Error::Corrupt { path, position, .. }) => {
                assert_eq!(path, wal, "flip at {flip}");
                assert_eq!(position, starts[1], "flip at {flip}");
            }
            other => panic!("flip at {flip}: expected Corrupt, got {other:?}"),
        }
        // Refusing changed nothing on disk.
        assert_eq!(std::fs::read(&wal).expect("read"), bad, "flip at {flip}");
    }
    // Repair cuts the log at the damage, keeping what came before it, and the store works on.
    let store = open(dir.path(), Recovery::Repair).expect("repair");
    assert_eq!(present(&store, 4), [true, false, false, false]);
    assert_eq!(std::fs::metadata(&wal).expect("stat").len(), starts[1]);
    store
        .set_status(&id("d0"), DeviceStatus::disabled("after repair"), None)
        .await
        .expect("write after repair");
    drop(store);
    let store = open(dir.path(), Recovery::Strict).expect("reopen");
    assert!(
        store
            .get_now(&id("d0"))
            .is_some_and(|r| !r.status.is_enabled())
    );
}

#[tokio::test]
async fn a_zero_filled_tail_is_cut_off() {
    let dir = tempfile::tempdir().expect("dir");
    let starts = write_devices(dir.path(), 3).await;
    let wal = dir.path().join("wal");
    let full = std::fs::read(&wal).expect("read");
    // A power cut can leave the file longer than what reached the disk: zeros after the last
    // frame, or a last frame whose header made it but whose body did not.
    let mut zeros = full.clone();
    zeros.extend_from_slice(&[0; 4096]);
    let last = usize::try_from(starts[2]).expect("position");
    let mut zero_body = full.clone();
    zero_body[last + frame::HEADER_LEN..].fill(0);
    zero_body.extend_from_slice(&[0; 4096]);
    for (case, data, kept) in [
        ("zeros after the last frame", zeros, full.len()),
        ("a zeroed last frame and zeros after it", zero_body, last),
    ] {
        std::fs::write(&wal, &data).expect("write");
        let store = open(dir.path(), Recovery::Strict).unwrap_or_else(|e| panic!("{case}: {e}"));
        let expected = [true, true, kept == full.len()];
        assert_eq!(present(&store, 3), expected, "{case}");
        drop(store);
        assert_eq!(
            std::fs::metadata(&wal).expect("stat").len(),
            kept as u64,
            "{case}"
        );
    }
}

#[tokio::test]
async fn crafted_frames_with_valid_checksums_and_huge_lengths_are_typed_errors() {
    let dir = tempfile::tempdir().expect("dir");
    let starts = write_devices(dir.path(), 2).await;
    let wal = dir.path().join("wal");
    let good = std::fs::read(&wal).expect("read");
    let second = usize::try_from(starts[1]).expect("position");
    let first_body = good[MAGIC_LEN + frame::HEADER_LEN..second].to_vec();

    // A frame header that claims 4 GiB, with a correct header checksum.
    let mut huge_header = good.clone();
    let mut header = Vec::new();
    header.extend_from_slice(&u32::MAX.to_le_bytes());
    header.extend_from_slice(&0u32.to_le_bytes());
    let hcrc = crc32c(&header);
    header.extend_from_slice(&hcrc.to_le_bytes());
    huge_header.extend_from_slice(&header);

    // Intact frames whose bodies claim lengths far past their end: a 255-byte id, a 255-byte
    // key, a 65535-byte disable reason. Each is a Put truncated right after the length field.
    let id_len_at = 1 + 8;
    let mut huge_id = first_body[..=id_len_at].to_vec();
    huge_id[id_len_at] = 0xff;
    let status_at = id_len_at + 1 + 2 + 8 + 3 * 8;
    let mut huge_reason = first_body[..status_at].to_vec();
    huge_reason.extend_from_slice(&[1, 0xff, 0xff]);
    let mut huge_key = first_body[..status_at].to_vec();
    huge_key.extend_from_slice(&[0, 1, 0xff]);
    let mut crafted = Vec::new();
    for body in [huge_id, huge_reason, huge_key] {
        let mut data = good.clone();
        frame::encode(&mut data, &body).expect("frame");
        crafted.push(data);
    }

    for (case, data) in std::iter::once(huge_header.clone())
        .chain(crafted)
        .enumerate()
    {
        std::fs::write(&wal, &data).expect("write");
        match open(dir.path(), Recovery::Strict) {
            Err(Error::Corrupt { path, position, .. }) => {
                assert_eq!(path, wal, "case {case}");
                assert_eq!(position, good.len() as u64, "case {case}");
            }
            other => panic!("case {case}: expected Corrupt, got {other:?}"),
        }
        // A frame whose checksums hold but whose body does not decode was written by no crash
        // and no repair can make sense of it: refused even under Repair.
        if case > 0 {
            assert!(
                matches!(
                    open(dir.path(), Recovery::Repair),
                    Err(Error::Corrupt { .. })
                ),
                "case {case} under Repair"
            );
        }
    }
    // The over-long header is frame damage: Repair cuts it off.
    std::fs::write(&wal, &huge_header).expect("write");
    let store = open(dir.path(), Recovery::Repair).expect("repair");
    assert_eq!(present(&store, 2), [true, true]);
    drop(store);
    assert_eq!(
        std::fs::metadata(&wal).expect("stat").len(),
        good.len() as u64
    );
}

#[tokio::test]
async fn a_snapshot_claiming_a_huge_count_is_refused_without_allocating_by_it() {
    let dir = tempfile::tempdir().expect("dir");
    write_devices(dir.path(), 2).await;
    FileIdentityStore::open(dir.path(), options(Recovery::Strict))
        .await
        .expect("open")
        .compact()
        .await
        .expect("compact");
    let snapshot = dir.path().join("snapshot");
    let good = std::fs::read(&snapshot).expect("read");
    // Rewrite the header frame (after the 8-byte magic) to claim u64::MAX records.
    let header_end = MAGIC_LEN + frame::HEADER_LEN + 16;
    let last_seq = good[MAGIC_LEN + frame::HEADER_LEN..][..8].to_vec();
    let mut body = last_seq;
    body.extend_from_slice(&u64::MAX.to_le_bytes());
    let mut data = good[..MAGIC_LEN].to_vec();
    frame::encode(&mut data, &body).expect("frame");
    data.extend_from_slice(&good[header_end..]);
    std::fs::write(&snapshot, &data).expect("write");
    match open(dir.path(), Recovery::Repair) {
        Err(Error::Corrupt { path, .. }) => assert_eq!(path, snapshot),
        other => panic!("expected Corrupt, got {other:?}"),
    }
}

/// CRC32C, as the kit's frames use it (written out here so the test does not trust the code
/// under test to craft its input).
fn crc32c(data: &[u8]) -> u32 {
    let mut crc = !0u32;
    for &b in data {
        crc ^= u32::from(b);
        for _ in 0..8 {
            crc = if crc & 1 == 1 {
                (crc >> 1) ^ 0x82F6_3B78
            } else {
                crc >> 1
            };
        }
    }
    !crc
}
