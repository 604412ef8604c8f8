//! Recovery of `FileJournal` by the storage kit's rule: a torn last frame and a zero-filled tail
//! (what a power cut leaves) are cut off; damage followed by intact frames is refused with a
//! typed `CorruptJournal` error naming the file and the position, and cut off only when the
//! journal is opened with `Recovery::Repair`; crafted frames with valid checksums but impossible
//! lengths or contents are typed errors, never an abort.

use std::path::Path;

use iot_core::DeviceId;
use iot_core::storage::frame;
use iot_provisioning::{Error, FileJournal, FileJournalConfig, Intent, Journal, Recovery};

/// The WAL's magic and kind: frames start after them.
const MAGIC_LEN: usize = 12;

fn intent(n: u32) -> Intent {
    Intent::Unregister {
        id: DeviceId::new(format!("device-{n}")).expect("id"),
    }
}

fn config(recovery: Recovery) -> FileJournalConfig {
    FileJournalConfig::default().recovery(recovery)
}

fn size(path: &Path) -> u64 {
    std::fs::metadata(path).expect("stat").len()
}

/// Begins intents 0..n (none finished); returns their sequence numbers and the file position of
/// each one's frame.
async fn begin_intents(dir: &Path, n: u32) -> (Vec<u64>, Vec<u64>) {
    let journal = FileJournal::open(dir, config(Recovery::Strict))
        .await
        .expect("open");
    let mut seqs = Vec::new();
    let mut starts = Vec::new();
    for i in 0..n {
        starts.push(size(&journal.path()));
        seqs.push(journal.begin(&intent(i)).await.expect("begin"));
    }
    (seqs, starts)
}

async fn pending(dir: &Path, recovery: Recovery) -> Result<Vec<(u64, Intent)>, Error> {
    let journal = FileJournal::open(dir, config(recovery)).await?;
    journal.pending().await
}

fn expected(seqs: &[u64], n: usize) -> Vec<(u64, Intent)> {
    (0..n)
        .map(|i| (seqs[i], intent(u32::try_from(i).expect("small"))))
        .collect()
}

#[tokio::test]
async fn a_torn_last_frame_is_cut_off() {
    let dir = tempfile::tempdir().expect("dir");
    let (seqs, starts) = begin_intents(dir.path(), 3).await;
    let path = dir.path().join("wal");
    let full = std::fs::read(&path).expect("read");
    let last = usize::try_from(starts[2]).expect("position");
    for cut in last + 1..full.len() {
        std::fs::write(&path, &full[..cut]).expect("write");
        let found = pending(dir.path(), Recovery::Strict)
            .await
            .unwrap_or_else(|e| panic!("cut at {cut}: {e}"));
        assert_eq!(found, expected(&seqs, 2), "cut at {cut}");
        assert_eq!(size(&path), starts[2], "cut at {cut}");
    }
}

#[tokio::test]
async fn a_flipped_byte_in_a_middle_frame_is_refused_and_repaired_only_on_request() {
    let dir = tempfile::tempdir().expect("dir");
    let (seqs, starts) = begin_intents(dir.path(), 4).await;
    let path = dir.path().join("wal");
    let good = std::fs::read(&path).expect("read");
    let middle = usize::try_from(starts[1]).expect("position");
    // A byte of the body, and a byte of the length: a length pointing past the end of the file
    // must not pass for a torn tail and drop the intact frames after it.
    for flip in [middle + frame::HEADER_LEN + 3, middle + 2] {
        let mut bad = good.clone();
        bad[flip] ^= 0x40;
        std::fs::write(&path, &bad).expect("write");
        match pending(dir.path(), Recovery::Strict).await {
            Err(Error::CorruptJournal {
                path: named,
                position,
                ..
            }) => {
                assert_eq!(named, path, "flip at {flip}");
                assert_eq!(position, starts[1], "flip at {flip}");
            }
            other => panic!("flip at {flip}: expected CorruptJournal, got {other:?}"),
        }
        assert_eq!(
            std::fs::read(&path).expect("read"),
            bad,
            "refusing changed the file"
        );
    }
    let found = pending(dir.path(), Recovery::Repair).await.expect("repair");
    assert_eq!(found, expected(&seqs, 1));
    assert_eq!(size(&path), starts[1]);
    // The repaired journal works on, and its sequence numbers still increase.
    let journal = FileJournal::open(dir.path(), config(Recovery::Strict))
        .await
        .expect("reopen");
    let next = journal.begin(&intent(9)).await.expect("begin");
    assert!(next > seqs[0]);
}

#[tokio::test]
async fn a_zero_filled_tail_is_cut_off() {
    let dir = tempfile::tempdir().expect("dir");
    let (seqs, starts) = begin_intents(dir.path(), 3).await;
    let path = dir.path().join("wal");
    let full = std::fs::read(&path).expect("read");
    let last = usize::try_from(starts[2]).expect("position");
    let mut zeros = full.clone();
    zeros.extend_from_slice(&[0; 4096]);
    // The power-cut case that used to be refused as corrupt: the last frame's header reached
    // the disk, its body did not, and the file was extended with zeros.
    let mut zero_body = full.clone();
    zero_body[last + frame::HEADER_LEN..].fill(0);
    zero_body.extend_from_slice(&[0; 4096]);
    for (case, data, kept) in [
        ("zeros after the last frame", zeros, 3),
        ("a zeroed last frame and zeros after it", zero_body, 2),
    ] {
        std::fs::write(&path, &data).expect("write");
        let found = pending(dir.path(), Recovery::Strict)
            .await
            .unwrap_or_else(|e| panic!("{case}: {e}"));
        assert_eq!(found, expected(&seqs, kept), "{case}");
        let end = if kept == 3 {
            full.len() as u64
        } else {
            starts[2]
        };
        assert_eq!(size(&path), end, "{case}");
    }
}

#[tokio::test]
async fn crafted_frames_with_valid_checksums_are_typed_errors() {
    let dir = tempfile::tempdir().expect("dir");
    let (seqs, _) = begin_intents(dir.path(), 2).await;
    let path = dir.path().join("wal");
    let good = std::fs::read(&path).expect("read");

    // A header claiming 4 GiB, with a correct header checksum: over the 64 MiB limit, refused.
    let mut huge = good.clone();
    let mut header = Vec::new();
    header.extend_from_slice(&u32::MAX.to_le_bytes());
    header.extend_from_slice(&0u32.to_le_bytes());
    let hcrc = crc32c(&header);
    header.extend_from_slice(&hcrc.to_le_bytes());
    huge.extend_from_slice(&header);
    std::fs::write(&path, &huge).expect("write");
    match pending(dir.path(), Recovery::Strict).await {
        Err(Error::CorruptJournal { position, .. }) => assert_eq!(position, good.len() as u64),
        other => panic!("expected CorruptJournal, got {other:?}"),
    }
    // Repair cuts the over-long frame off.
    assert_eq!(
        pending(dir.path(), Recovery::Repair).await.expect("repair"),
        expected(&seqs, 2)
    );
    assert_eq!(size(&path), good.len() as u64);

    // Intact frames whose bodies are not journal entries: refused even under Repair.
    let numbered = |json: &[u8]| [&3u64.to_le_bytes()[..], json].concat();
    for body in [
        b"not json".to_vec(),
        numbered(b"not json"),
        numbered(br#"{"kind":"begin","seq":"huge","intent":[1,2,3]}"#),
    ] {
        let mut data = good.clone();
        frame::encode(&mut data, &body).expect("frame");
        std::fs::write(&path, &data).expect("write");
        for recovery in [Recovery::Strict, Recovery::Repair] {
            assert!(
                matches!(
                    pending(dir.path(), recovery).await,
                    Err(Error::CorruptJournal { position, .. }) if position == good.len() as u64
                ),
                "{recovery:?}"
            );
        }
    }

    // An intact entry at the very top of the sequence space: opens, and the next begin is a
    // typed error instead of an overflow.
    // (A WAL frame's body is the kit's operation number, 3 after the two begins, then the JSON.)
    let mut data = good.clone();
    let mut body = 3u64.to_le_bytes().to_vec();
    body.extend_from_slice(
        format!(
            r#"{{"kind":"begin","seq":{},"intent":{{"op":"unregister","id":"device-top"}}}}"#,
            u64::MAX
        )
        .as_bytes(),
    );
    frame::encode(&mut data, &body).expect("frame");
    std::fs::write(&path, &data).expect("write");
    let journal = FileJournal::open(dir.path(), config(Recovery::Strict))
        .await
        .expect("open");
    assert_eq!(journal.pending().await.expect("pending").len(), 3);
    assert!(matches!(
        journal.begin(&intent(7)).await,
        Err(Error::InvalidInput { .. })
    ));
    assert_eq!(&good[..MAGIC_LEN], b"IOTPJNL3WAL_");
}

/// CRC32C, as the kit's frames use it (written out so the test crafts its input independently
/// of the code under test).
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
