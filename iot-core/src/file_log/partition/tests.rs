//! A write or fsync that fails after the append leading it was cancelled (its blocking task runs
//! on without it) must still fail the partition: these tests put such a failure in
//! `flush_order` by hand, as that task would, and check what the next leader and the next roll
//! do with it.

use super::*;

fn partition(dir: &Path, config: FileLogConfig) -> Arc<FilePartition> {
    let lock = Arc::new(DirLock::acquire(dir).unwrap());
    Arc::new(FilePartition::open(dir.join("p0"), PartitionId(0), Arc::new(config), lock).unwrap())
}

fn batch(n: usize) -> Vec<Record> {
    (0..n)
        .map(|i| Record::new(format!("device-{i}"), vec![7u8; 64]))
        .collect()
}

#[test]
fn a_failed_write_is_recorded_where_the_next_leader_looks() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("segment.log");
    fs::write(&path, b"").unwrap();
    // Opened for reading only: the write fails as a full or broken disk would make it.
    let segment = SegmentFile {
        base: 0,
        log_path: path.clone(),
        idx_path: dir.path().join("segment.idx"),
        file: fs::File::open(&path).unwrap(),
    };
    let mut order = None;
    let (what, _) = write_staged_and_sync(&mut order, &segment, b"frames", 0).unwrap_err();
    assert_eq!(what, "write");
    let recorded = order.expect("the failure is recorded");
    assert!(recorded.starts_with("write of "), "{recorded}");
    assert!(recorded.contains("segment.log"), "{recorded}");
}

#[test]
fn a_good_write_and_fsync_record_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let segment = SegmentFile::open(dir.path(), 0, true).unwrap();
    let mut order = None;
    write_staged_and_sync(&mut order, &segment, b"frames", 0).unwrap();
    assert_eq!(order, None);
    assert_eq!(fs::read(&segment.log_path).unwrap(), b"frames");
}

#[tokio::test]
async fn the_next_leader_fails_the_partition_after_a_lost_leaders_failure() {
    let dir = tempfile::tempdir().unwrap();
    let part = partition(dir.path(), FileLogConfig::default());
    let first = part.append(batch(3)).await.unwrap();
    assert_eq!(*part.durable.borrow(), first.next().0);

    *lock(&part.flush_order) = Some("write of p0/segment: injected".into());
    let e = part.append(batch(2)).await.unwrap_err();
    assert!(e.to_string().contains("injected"), "{e}");
    // Nothing after the failure became durable, and the partition takes no more writes.
    assert_eq!(*part.durable.borrow(), first.next().0);
    assert!(matches!(
        part.append(batch(1)).await,
        Err(Error::Unavailable { .. })
    ));
}

#[tokio::test]
async fn a_roll_fails_the_partition_after_a_lost_leaders_failure() {
    let dir = tempfile::tempdir().unwrap();
    // OS-buffered appends do not sync before a roll, so the roll is the first to look.
    let mut config = FileLogConfig::default().durability(Durability::OsBuffered);
    config.segment_bytes = 1;
    let part = partition(dir.path(), config);
    part.append(batch(3)).await.unwrap();

    *lock(&part.flush_order) = Some("fsync of p0/segment: injected".into());
    let e = part.append(batch(2)).await.unwrap_err();
    assert!(matches!(e, Error::Unavailable { .. }), "{e}");
    assert!(e.to_string().contains("injected"), "{e}");
    assert_eq!(lock(&part.state).segments.len(), 1, "no segment was sealed");
    assert!(matches!(
        part.append(batch(1)).await,
        Err(Error::Unavailable { .. })
    ));
}
