//! Unit tests of the file registry's snapshots and recovery (the store's own files are private).

use std::fs;

use iot_core::storage::frame;
use serde_json::json;

use super::snapshot::{Loaded, load_snapshot, write_snapshot};
use super::*;
use crate::engine::RegistryConfig;
use crate::record::DeviceDocument;
use iot_core::storage::Recovery;

fn id(s: &str) -> DeviceId {
    DeviceId::new(s).expect("a valid id")
}

fn write_file(path: &Path, frames: &[Vec<u8>]) {
    let mut bytes = Vec::new();
    for body in frames {
        assert!(frame::encode(&mut bytes, body).is_ok());
    }
    assert!(fs::write(path, bytes).is_ok());
}

fn header(magic: &[u8; 8], next_version: u64, count: u64) -> Vec<u8> {
    let mut h = magic.to_vec();
    h.extend_from_slice(&next_version.to_le_bytes());
    h.extend_from_slice(&count.to_le_bytes());
    h
}

fn small_scalar() -> impl proptest::strategy::Strategy<Value = Value> {
    use proptest::prelude::*;
    prop_oneof![
        (0i64..4).prop_map(|i| json!(i)),
        (0u8..4).prop_map(|i| json!(format!("s{i}"))),
        any::<bool>().prop_map(|b| json!(b)),
        Just(Value::Null),
        Just(json!(1.5)),
        Just(json!([1, 2])),
    ]
}

fn small_document() -> impl proptest::strategy::Strategy<Value = DeviceDocument> {
    use proptest::prelude::*;
    (
        proptest::option::of(small_scalar()),
        proptest::option::of(small_scalar()),
        proptest::option::of(small_scalar()),
        proptest::option::of(0u8..3),
    )
        .prop_map(|(a, x, t, state)| {
            let mut metadata = serde_json::Map::new();
            if let Some(a) = a {
                metadata.insert("a".into(), a);
            }
            if let Some(x) = x {
                metadata.insert("o".into(), json!({"x": x}));
            }
            let mut tags = serde_json::Map::new();
            if let Some(t) = t {
                tags.insert("t".into(), t);
            }
            DeviceDocument {
                metadata,
                tags,
                state_ref: state.map(|s| format!("st{s}")),
            }
        })
}

/// The change a step makes of `engine`'s state (`None`: the step is refused).
fn step_change(engine: &Engine, step: &(u8, Option<DeviceDocument>)) -> Option<Change> {
    let id = id(&format!("d{:02}", step.0));
    let now = Timestamp::from_unix_micros(7);
    match &step.1 {
        Some(doc) if engine.get(&id).is_ok_and(|r| r.is_some()) => {
            engine.prepare_replace(&id, doc.clone(), None, now).ok()
        }
        Some(doc) => engine.prepare_create(&id, doc.clone(), now).ok(),
        None => engine.prepare_delete(&id, None).ok(),
    }
}

proptest::proptest! {
    #![proptest_config(proptest::prelude::ProptestConfig { cases: 64, ..Default::default() })]

    /// A registry reopened from a snapshot with saved indexes, plus a log applied in bulk
    /// or write by write, equals the registry that made every write itself: same records,
    /// same indexes (slots named by device id). So does one whose indexes are rebuilt.
    #[test]
    fn saved_indexes_and_bulk_logs_equal_indexes_built_write_by_write(
        steps in proptest::collection::vec(
            (0u8..24, proptest::option::weighted(0.8, small_document())),
            0..120,
        ),
        split in 0usize..120,
        bulk in proptest::prelude::any::<bool>(),
        unindexed in proptest::prelude::any::<bool>(),
    ) {
        let config = RegistryConfig {
            unindexed_paths: if unindexed { vec!["metadata.o.x".into()] } else { Vec::new() },
            ..RegistryConfig::default()
        };
        let engine = || Engine::new(config.clone()).expect("a valid configuration");
        let (mut reference, mut base) = (engine(), engine());
        let mut log = Vec::new();
        for (i, step) in steps.iter().enumerate() {
            let Some(change) = step_change(&reference, step) else { continue };
            let version = reference.next_version();
            if i < split {
                base.apply(change.clone(), version);
            } else {
                log.push((change.clone(), version));
            }
            reference.apply(change, version);
        }
        let dir = tempfile::tempdir().expect("a temporary directory");
        let path = dir.path().join("snapshot");
        proptest::prop_assert!(write_snapshot(&path, &base).is_ok());
        let loaded = load_snapshot(&path, Recovery::Strict).map_err(|e| e.to_string());
        let Ok(Loaded { slots, section, unindexed: saved, next_version, .. }) = loaded else {
            return Err(proptest::test_runner::TestCaseError::fail(format!("{loaded:?}")));
        };
        proptest::prop_assert_eq!(&saved, &config.unindexed_paths);
        proptest::prop_assert!(
            matches!(section, Ok(Some(_))),
            "{:?}",
            section.as_ref().err()
        );
        for section in [section.ok().flatten(), None] {
            let mut reopened = engine();
            let rejected = reopened.load_slots(slots.clone(), section, 0);
            proptest::prop_assert!(matches!(rejected, Ok(None)), "{:?}", rejected);
            reopened.apply_version_floor(next_version);
            proptest::prop_assert_eq!(reopened.canonical(), base.canonical());
            reopened.apply_log_from(log.clone(), if bulk { 0 } else { usize::MAX });
            proptest::prop_assert_eq!(reopened.canonical(), reference.canonical());
            proptest::prop_assert_eq!(reopened.next_version(), reference.next_version());
        }
    }
}

async fn filled(dir: &Path, n: u64) -> FileRegistry {
    let registry = FileRegistry::open(
        dir,
        FileRegistryConfig {
            durability: Durability::OsBuffered,
            ..FileRegistryConfig::default()
        },
    )
    .await
    .expect("opens");
    for i in 0..n {
        let doc =
            DeviceDocument::with_metadata(json!({"i": i, "even": i % 2 == 0})).expect("an object");
        assert!(registry.create(&id(&format!("d{i:04}")), doc).await.is_ok());
    }
    registry
}

fn even_count(registry: &FileRegistry) -> u64 {
    let q =
        Query::parse("SELECT COUNT() FROM devices WHERE metadata.even = true").expect("a query");
    registry.shared.read().count(&q)
}

/// Damage confined to the index section (a flipped byte, a missing trailer) leaves the
/// records usable: the indexes are rebuilt from them. Damage to a record is refused.
#[tokio::test]
async fn a_damaged_index_section_is_rebuilt_and_a_damaged_record_refused() {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let registry = filled(dir.path(), 300).await;
    assert!(registry.compact().await.is_ok());
    drop(registry);
    let path = dir.path().join(snapshot_name(1));
    let pristine = fs::read(&path).unwrap_or_default();
    let last_record_end = {
        // Frames: header, 300 records, index parts, trailer.
        let mut at = 0usize;
        for _ in 0..301 {
            let len = pristine
                .get(at..at + 4)
                .and_then(|b| b.try_into().ok())
                .map_or(0, u32::from_le_bytes);
            at += 12 + len as usize;
        }
        at
    };
    let damaged = |edit: &dyn Fn(&mut Vec<u8>)| {
        let mut bytes = pristine.clone();
        edit(&mut bytes);
        assert!(fs::write(&path, &bytes).is_ok());
        FileRegistry::open_blocking(dir.path(), FileRegistryConfig::default())
    };
    for edit in [
        &(|b: &mut Vec<u8>| b[last_record_end + 20] ^= 0x40) as &dyn Fn(&mut Vec<u8>),
        &|b: &mut Vec<u8>| b.truncate(b.len() - 3),
        &|b: &mut Vec<u8>| b.truncate(last_record_end),
    ] {
        let reopened = damaged(edit);
        assert!(reopened.is_ok(), "{reopened:?}");
        if let Ok(r) = reopened {
            assert_eq!((r.len(), even_count(&r)), (300, 150));
        }
    }
    let reopened = damaged(&|b: &mut Vec<u8>| b[last_record_end - 5] ^= 0x40);
    assert!(
        matches!(reopened, Err(Error::Corrupt { .. })),
        "{reopened:?}"
    );
    // Repair loads the records before the damaged one, and rewrites the snapshot so that the
    // next strict open succeeds.
    let repaired = FileRegistry::open_blocking(
        dir.path(),
        FileRegistryConfig {
            recovery: Recovery::Repair,
            ..FileRegistryConfig::default()
        },
    );
    assert!(
        repaired.as_ref().is_ok_and(|r| r.len() == 299),
        "{repaired:?}"
    );
    drop(repaired);
    let reopened = FileRegistry::open_blocking(dir.path(), FileRegistryConfig::default());
    assert!(
        reopened
            .as_ref()
            .is_ok_and(|r| (r.len(), even_count(r)) == (299, 150)),
        "{reopened:?}"
    );
}

/// A registry with more free slots than records (after mass deletes) is saved renumbered,
/// without its indexes, and reopens with them rebuilt.
#[tokio::test]
async fn a_sparse_registry_is_saved_densely() {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let registry = filled(dir.path(), 3000).await;
    for i in (0..3000).filter(|i| i % 10 != 0) {
        assert!(
            registry
                .delete(&id(&format!("d{i:04}")), None)
                .await
                .is_ok()
        );
    }
    assert!(registry.compact().await.is_ok());
    drop(registry);
    let loaded = load_snapshot(&dir.path().join(snapshot_name(1)), Recovery::Strict)
        .map_err(|e| e.to_string());
    assert!(
        matches!(&loaded, Ok(Loaded { slots, section: Ok(None), .. }) if slots.len() == 300),
        "{:?}",
        loaded.as_ref().map(|l| format!(
            "{} slots, section {:?}",
            l.slots.len(),
            l.section.as_ref().map(Option::is_some)
        ))
    );
    let reopened = FileRegistry::open(dir.path(), FileRegistryConfig::default()).await;
    assert!(
        reopened
            .as_ref()
            .is_ok_and(|r| (r.len(), even_count(r)) == (300, 300))
    );
}

/// A compaction that crashed while writing its snapshot leaves a `.tmp` file: open deletes
/// it and recovers from the previous generation; a changed list of unindexed paths makes
/// open rebuild the saved indexes rather than trust them.
#[tokio::test]
async fn a_snapshot_cut_short_by_a_crash_is_ignored() {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let registry = filled(dir.path(), 200).await;
    assert!(registry.compact().await.is_ok());
    let more = DeviceDocument::with_metadata(json!({"even": true})).expect("an object");
    assert!(registry.create(&id("late"), more).await.is_ok());
    drop(registry);
    let snapshot = fs::read(dir.path().join(snapshot_name(1))).unwrap_or_default();
    let tmp = sfs::temp_path(&dir.path().join(snapshot_name(2)));
    assert!(fs::write(&tmp, &snapshot[..snapshot.len() / 2]).is_ok());
    let reopened = FileRegistry::open(dir.path(), FileRegistryConfig::default()).await;
    assert!(
        reopened
            .as_ref()
            .is_ok_and(|r| (r.len(), even_count(r)) == (201, 101))
    );
    assert!(!tmp.exists());
    drop(reopened);
    let config = FileRegistryConfig {
        registry: RegistryConfig {
            unindexed_paths: vec!["metadata.even".into()],
            ..RegistryConfig::default()
        },
        ..FileRegistryConfig::default()
    };
    let reopened = FileRegistry::open(dir.path(), config).await;
    assert!(
        reopened
            .as_ref()
            .is_ok_and(|r| (r.len(), even_count(r)) == (201, 101))
    );
    let paths = reopened
        .map(|r| r.shared.read().indexed_paths())
        .unwrap_or(0);
    // deviceId, metadata, tags, metadata.i (metadata.even is not indexed).
    assert_eq!(paths, 4);
}

/// A snapshot of a format this version does not know is refused with a typed error and
/// left alone.
#[test]
fn snapshots_of_an_unknown_format_are_refused() {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let path = dir.path().join(snapshot_name(1));
    write_file(&path, &[header(b"IOTREG09", 5, 0)]);
    let before = fs::read(&path).unwrap_or_default();
    let result = FileRegistry::open_blocking(dir.path(), FileRegistryConfig::default());
    assert!(
        matches!(&result, Err(Error::UnsupportedFormat { found, .. }) if found == "IOTREG09"),
        "{result:?}"
    );
    assert_eq!(fs::read(&path).unwrap_or_default(), before);
    write_file(&path, &[header(b"NOTREG01", 5, 0)]);
    assert!(matches!(
        FileRegistry::open_blocking(dir.path(), FileRegistryConfig::default()),
        Err(Error::Corrupt { .. })
    ));
}
