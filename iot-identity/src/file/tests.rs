//! Recovery tests that need to look inside the files.

use std::fs::{self, OpenOptions};
use std::io::Write;

use super::*;
use crate::identity::NewIdentity;

fn id(s: &str) -> DeviceId {
    DeviceId::new(s).unwrap()
}

fn open(dir: &Path) -> Result<FileIdentityStore> {
    FileIdentityStore::open_blocking(dir, FileIdentityStoreConfig::default())
}

fn create(store: &FileIdentityStore, name: &str) {
    let new = NewIdentity::new(id(name), Credentials::generate_symmetric_keys());
    store.inner.write_blocking(WriteOp::Create(new)).unwrap();
}

#[test]
fn torn_tail_is_truncated_and_earlier_writes_kept() {
    let dir = tempfile::tempdir().unwrap();
    {
        let store = open(dir.path()).unwrap();
        create(&store, "a");
        create(&store, "b");
    }
    let wal = dir.path().join(WAL_FILE);
    let full = fs::read(&wal).unwrap();
    // Every cut inside the last frame is a torn write: "a" survives, "b" is gone, nothing fails.
    let one_frame = (full.len() - MAGIC_LEN) / 2;
    for cut in (full.len() - one_frame + 1)..full.len() {
        fs::write(&wal, &full[..cut]).unwrap();
        let store = open(dir.path()).unwrap_or_else(|e| panic!("cut at {cut}: {e}"));
        assert!(store.get_now(&id("a")).is_some());
        assert!(store.get_now(&id("b")).is_none());
        drop(store);
        assert_eq!(
            fs::metadata(&wal).map(|m| m.len()).ok(),
            Some((full.len() - one_frame) as u64)
        );
    }
    // Zeros after the last good frame (a file extended but never written) are also a torn tail.
    let mut zeros = full[..full.len() - one_frame].to_vec();
    zeros.extend_from_slice(&[0u8; 300]);
    fs::write(&wal, &zeros).unwrap();
    let store = open(dir.path()).unwrap();
    assert!(store.get_now(&id("a")).is_some());
}

const MAGIC_LEN: usize = 8;

#[test]
fn damage_in_the_middle_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    {
        let store = open(dir.path()).unwrap();
        create(&store, "a");
        create(&store, "b");
    }
    let wal = dir.path().join(WAL_FILE);
    let mut data = fs::read(&wal).unwrap();
    data[MAGIC_LEN + 20] ^= 0x55; // inside the first frame's payload
    fs::write(&wal, &data).unwrap();
    assert!(matches!(open(dir.path()), Err(Error::Corrupt { .. })));
    fs::write(&wal, b"garbage!").unwrap();
    assert!(matches!(open(dir.path()), Err(Error::Corrupt { .. })));
}

#[test]
fn damaged_snapshot_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    {
        let store = open(dir.path()).unwrap();
        create(&store, "a");
        store.inner.compact().unwrap();
    }
    let snap = dir.path().join(SNAPSHOT_FILE);
    let good = fs::read(&snap).unwrap();
    for cut in [0, 5, 20, good.len() - 1] {
        fs::write(&snap, &good[..cut]).unwrap();
        assert!(
            matches!(open(dir.path()), Err(Error::Corrupt { .. })),
            "cut {cut}"
        );
    }
    let mut flipped = good.clone();
    let last = flipped.len() - 3;
    flipped[last] ^= 1;
    fs::write(&snap, &flipped).unwrap();
    assert!(matches!(open(dir.path()), Err(Error::Corrupt { .. })));
    let mut longer = good.clone();
    longer.push(0);
    fs::write(&snap, &longer).unwrap();
    assert!(matches!(open(dir.path()), Err(Error::Corrupt { .. })));
    fs::write(&snap, &good).unwrap();
    assert!(open(dir.path()).is_ok_and(|s| s.get_now(&id("a")).is_some()));
}

#[test]
fn compaction_keeps_everything_and_crash_between_steps_is_harmless() {
    let dir = tempfile::tempdir().unwrap();
    let options = FileIdentityStoreConfig::default().compact_after_wal_bytes(2_000);
    let old_wal;
    {
        let store = FileIdentityStore::open_blocking(dir.path(), options).unwrap();
        for i in 0..100 {
            create(&store, &format!("d{i}"));
        }
        old_wal = fs::read(dir.path().join(WAL_FILE)).unwrap();
        // Compact, then put back the old log: as if the crash came after the snapshot's rename
        // but before the log was replaced.
        store.inner.compact().unwrap();
    }
    assert!(fs::metadata(dir.path().join(SNAPSHOT_FILE)).is_ok());
    fs::write(dir.path().join(WAL_FILE), &old_wal).unwrap();
    // A leftover temp file from an interrupted compaction is removed.
    let leftover = iot_core::storage::fs::temp_path(&dir.path().join(SNAPSHOT_FILE));
    fs::write(&leftover, b"half").unwrap();
    let store = FileIdentityStore::open_blocking(dir.path(), options).unwrap();
    assert_eq!(store.len(), 100);
    assert!(fs::metadata(&leftover).is_err());
    create(&store, "after");
    let etag = store.get_now(&id("after")).map(|r| r.etag);
    drop(store);
    let store = open(dir.path()).unwrap();
    assert_eq!(store.len(), 101);
    assert_eq!(store.get_now(&id("after")).map(|r| r.etag), etag);
}

#[test]
fn second_opener_is_locked_out() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path()).unwrap();
    assert!(matches!(open(dir.path()), Err(Error::Locked { .. })));
    drop(store);
    assert!(open(dir.path()).is_ok());
}

#[cfg(unix)]
#[test]
fn files_are_private() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("store");
    let store = open(&root).unwrap();
    create(&store, "a");
    store.inner.compact().unwrap();
    let mode = |p: &Path| fs::metadata(p).map(|m| m.permissions().mode() & 0o777).ok();
    assert_eq!(mode(&root), Some(0o700));
    for f in [
        iot_core::storage::dir_lock::LOCK_FILE,
        SNAPSHOT_FILE,
        WAL_FILE,
    ] {
        assert_eq!(mode(&root.join(f)), Some(0o600), "{f}");
    }
}

#[test]
fn wal_length_is_tracked_and_garbage_at_the_end_is_cut_but_refused_before_a_frame() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path()).unwrap();
    create(&store, "a");
    let len = store.inner.group.file_len();
    let on_disk = fs::metadata(dir.path().join(WAL_FILE))
        .map(|m| m.len())
        .ok();
    assert_eq!(Some(len), on_disk);
    // Garbage after the last frame with no intact frame after it is a torn tail: cut off.
    drop(store);
    let mut f = OpenOptions::new()
        .append(true)
        .open(dir.path().join(WAL_FILE))
        .unwrap();
    f.write_all(&[
        9, 0, 0, 0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15,
    ])
    .unwrap();
    drop(f);
    let store = open(dir.path()).unwrap();
    assert!(store.get_now(&id("a")).is_some());
    assert_eq!(store.inner.group.file_len(), len);
    // Followed by an intact frame (a later write), the same garbage is corruption.
    create(&store, "b");
    drop(store);
    let mut data = fs::read(dir.path().join(WAL_FILE)).unwrap();
    let at = usize::try_from(len).unwrap();
    data.splice(at..at, [9u8, 0, 0, 0, 1, 2, 3, 4, 5, 6, 7, 8, 9]);
    fs::write(dir.path().join(WAL_FILE), &data).unwrap();
    assert!(matches!(
        open(dir.path()),
        Err(Error::Corrupt { position, .. }) if position == len
    ));
}

#[test]
fn interval_durability_is_refused_with_the_alternatives() {
    let dir = tempfile::tempdir().unwrap();
    let options = FileIdentityStoreConfig::with_durability(Durability::Interval(
        std::time::Duration::from_secs(1),
    ));
    match FileIdentityStore::open_blocking(dir.path(), options) {
        Err(Error::Config { reason }) => {
            assert!(reason.contains("Durability::Fsync") && reason.contains("OsBuffered"));
        }
        other => panic!("expected a Config error, got {other:?}"),
    }
}
