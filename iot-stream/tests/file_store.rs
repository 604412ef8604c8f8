//! `FileStateStore`: persistence, recovery of a torn journal tail, refusal of damage, file modes,
//! locking; and a proptest of both stores against a plain model across reopens.
#![allow(clippy::unwrap_used)]

use std::io::Write;

use iot_core::storage::Durability;
use iot_core::{DeviceId, Timestamp};
use iot_stream::{
    Error, Event, FileStateStore, FileStateStoreConfig, LkvUpdate, MemoryStateStore,
    SourcePosition, StateStore,
};
use proptest::prelude::*;
use serde_json::{Value, json};

fn ms(v: u64) -> Timestamp {
    Timestamp::from_unix_millis(v)
}

fn journal(dir: &std::path::Path) -> std::path::PathBuf {
    std::fs::read_dir(dir)
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .find(|p| p.to_string_lossy().contains("journal-"))
        .unwrap()
}

fn delta(patch: Value, t: u64) -> LkvUpdate {
    LkvUpdate {
        patch,
        key_frame: false,
        source_time: ms(t),
        source: None,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn survives_reopen_and_compaction() {
    let dir = tempfile::tempdir().unwrap();
    let a = DeviceId::new("a").unwrap();
    let cfg = FileStateStoreConfig::default();
    {
        let s = FileStateStore::open(dir.path(), cfg.clone()).await.unwrap();
        s.append_events(&a, vec![Event::new(ms(1), "one")])
            .await
            .unwrap();
        s.merge_last_known(&a, delta(json!({"x": 1}), 1))
            .await
            .unwrap();
        s.compact().await.unwrap();
        s.append_events(&a, vec![Event::new(ms(2), vec![0xff, 0x00])])
            .await
            .unwrap();
        s.merge_last_known(&a, delta(json!({"y": 2}), 2))
            .await
            .unwrap();
    }
    let s = FileStateStore::open(dir.path(), cfg).await.unwrap();
    let events = s.read_events(&a, ms(0), ms(10), 10).await.unwrap();
    assert_eq!(events.len(), 2);
    assert_eq!(events[1].payload.as_ref(), &[0xff, 0x00]);
    let lkv = s.last_known(&a).await.unwrap().unwrap();
    assert_eq!(lkv.values(), json!({"x": 1, "y": 2}));
    assert_eq!(lkv.source_time("/x"), Some(ms(1)));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn torn_tail_is_truncated_and_writes_continue() {
    let dir = tempfile::tempdir().unwrap();
    let a = DeviceId::new("a").unwrap();
    let cfg = FileStateStoreConfig::default();
    {
        let s = FileStateStore::open(dir.path(), cfg.clone()).await.unwrap();
        s.merge_last_known(&a, delta(json!({"x": 1}), 1))
            .await
            .unwrap();
        s.merge_last_known(&a, delta(json!({"y": 2}), 2))
            .await
            .unwrap();
    }
    let path = journal(dir.path());
    let len = std::fs::metadata(&path).unwrap().len();
    for cut in [len - 1, len - 5, len - 20] {
        let copy = tempfile::tempdir().unwrap();
        for entry in std::fs::read_dir(dir.path()).unwrap().flatten() {
            std::fs::copy(entry.path(), copy.path().join(entry.file_name())).unwrap();
        }
        let p = journal(copy.path());
        std::fs::OpenOptions::new()
            .write(true)
            .open(&p)
            .unwrap()
            .set_len(cut)
            .unwrap();
        let s = FileStateStore::open(copy.path(), cfg.clone())
            .await
            .unwrap();
        assert_eq!(
            s.last_known(&a).await.unwrap().unwrap().values(),
            json!({"x": 1})
        );
        s.merge_last_known(&a, delta(json!({"z": 3}), 3))
            .await
            .unwrap();
        drop(s);
        let s = FileStateStore::open(copy.path(), cfg.clone())
            .await
            .unwrap();
        assert_eq!(
            s.last_known(&a).await.unwrap().unwrap().values(),
            json!({"x": 1, "z": 3})
        );
    }
    // Garbage appended after the last frame is a torn tail too.
    let mut f = std::fs::OpenOptions::new()
        .append(true)
        .open(&path)
        .unwrap();
    f.write_all(&[7, 0, 0, 0, 1, 2]).unwrap();
    drop(f);
    let s = FileStateStore::open(dir.path(), cfg).await.unwrap();
    assert_eq!(
        s.last_known(&a).await.unwrap().unwrap().values(),
        json!({"x": 1, "y": 2})
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn damage_in_the_middle_or_the_snapshot_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let a = DeviceId::new("a").unwrap();
    let cfg = FileStateStoreConfig::default();
    {
        let s = FileStateStore::open(dir.path(), cfg.clone()).await.unwrap();
        s.merge_last_known(&a, delta(json!({"x": 1}), 1))
            .await
            .unwrap();
        s.merge_last_known(&a, delta(json!({"y": 2}), 2))
            .await
            .unwrap();
    }
    let path = journal(dir.path());
    let mut bytes = std::fs::read(&path).unwrap();
    bytes[10] ^= 0x55; // inside the first frame's body
    std::fs::write(&path, &bytes).unwrap();
    let err = FileStateStore::open(dir.path(), cfg.clone())
        .await
        .unwrap_err();
    assert!(matches!(err, Error::Corrupt { .. }), "{err}");

    let dir = tempfile::tempdir().unwrap();
    {
        let s = FileStateStore::open(dir.path(), cfg.clone()).await.unwrap();
        s.merge_last_known(&a, delta(json!({"x": 1}), 1))
            .await
            .unwrap();
        s.compact().await.unwrap();
    }
    let snap = dir.path().join("state.snap");
    let mut bytes = std::fs::read(&snap).unwrap();
    let last = bytes.len() - 2;
    bytes[last] ^= 0x55;
    std::fs::write(&snap, &bytes).unwrap();
    let err = FileStateStore::open(dir.path(), cfg).await.unwrap_err();
    assert!(matches!(err, Error::Corrupt { .. }), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn second_opener_is_locked_out_and_files_are_private() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = FileStateStoreConfig::default();
    let s = FileStateStore::open(dir.path(), cfg.clone()).await.unwrap();
    s.merge_last_known(&DeviceId::new("a").unwrap(), delta(json!({"x": 1}), 1))
        .await
        .unwrap();
    s.compact().await.unwrap();
    let err = FileStateStore::open(dir.path(), cfg).await.unwrap_err();
    assert!(matches!(err, Error::Locked { .. }), "{err}");
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        for entry in std::fs::read_dir(dir.path()).unwrap().flatten() {
            let mode = entry.metadata().unwrap().permissions().mode() & 0o777;
            assert_eq!(mode, 0o600, "{:?}", entry.file_name());
        }
    }
}

#[derive(Clone, Debug)]
enum Op {
    Append {
        device: u8,
        time: u64,
        offset: Option<u64>,
    },
    Retention {
        before: u64,
    },
    Lkv {
        device: u8,
        patch: Value,
        key_frame: bool,
        offset: Option<u64>,
    },
    Reopen,
}

fn small_patch() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        (0i64..5).prop_map(Value::from),
        "[ab]".prop_map(Value::from),
    ];
    let inner = prop::collection::btree_map("[xyz]", leaf.clone(), 0..3)
        .prop_map(|m| Value::Object(m.into_iter().collect()));
    let member = prop_oneof![leaf, inner];
    prop::collection::btree_map("[abc]", member, 0..4)
        .prop_map(|m| Value::Object(m.into_iter().collect()))
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => (0u8..3, 0u64..50, prop::option::of(0u64..30))
            .prop_map(|(device, time, offset)| Op::Append { device, time, offset }),
        1 => (0u64..60).prop_map(|before| Op::Retention { before }),
        4 => (0u8..3, small_patch(), prop::bool::weighted(0.2), prop::option::of(0u64..30))
            .prop_map(|(device, patch, key_frame, offset)| Op::Lkv { device, patch, key_frame, offset }),
        1 => Just(Op::Reopen),
    ]
}

/// The model: per device, a list of events (stably sorted by time when read), the last source
/// offset, and the folded merge-patch document.
#[derive(Default)]
struct Model {
    events: [Vec<(u64, u64)>; 3],
    last_event: [Option<u64>; 3],
    doc: [Option<Value>; 3],
    last_lkv: [Option<u64>; 3],
}

async fn check(store: &dyn StateStore, model: &Model) {
    for d in 0..3 {
        let id = DeviceId::new(format!("d{d}")).unwrap();
        let got: Vec<_> = store
            .read_events(&id, ms(0), ms(1000), 1000)
            .await
            .unwrap()
            .into_iter()
            .map(|e| {
                (
                    e.time.as_unix_millis(),
                    String::from_utf8_lossy(&e.payload).parse::<u64>().unwrap(),
                )
            })
            .collect();
        let mut want = model.events[d].clone();
        want.sort_by_key(|(t, _)| *t);
        assert_eq!(got, want, "events of d{d}");
        let lkv = store.last_known(&id).await.unwrap().map(|l| l.values());
        assert_eq!(lkv, model.doc[d].clone(), "lkv of d{d}");
    }
}

fn run_model(ops: Vec<Op>, durable: bool) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async move {
        let dir = tempfile::tempdir().unwrap();
        // A small compaction threshold makes runs go through snapshots as well as journals.
        let cfg = FileStateStoreConfig::default()
            .durability(Durability::OsBuffered)
            .compact_after_bytes(2048);
        let open = || async {
            if durable {
                Box::new(FileStateStore::open(dir.path(), cfg.clone()).await.unwrap())
                    as Box<dyn StateStore>
            } else {
                Box::new(MemoryStateStore::new()) as Box<dyn StateStore>
            }
        };
        let mut store = open().await;
        let mut model = Model::default();
        let mut seq = 0u64;
        for op in ops {
            match op {
                Op::Append {
                    device,
                    time,
                    offset,
                } => {
                    let d = device as usize;
                    seq += 1;
                    let mut e = Event::new(ms(time), seq.to_string());
                    if let Some(o) = offset {
                        e = e.with_source(SourcePosition {
                            partition: 0,
                            offset: o,
                        });
                    }
                    let id = DeviceId::new(format!("d{d}")).unwrap();
                    let stored = store.append_events(&id, vec![e]).await.unwrap();
                    let fresh = offset.is_none_or(|o| model.last_event[d].is_none_or(|l| o > l));
                    assert_eq!(stored, usize::from(fresh));
                    if fresh {
                        model.events[d].push((time, seq));
                        if offset.is_some() {
                            model.last_event[d] = offset;
                        }
                    }
                }
                Op::Retention { before } => {
                    let removed = store.enforce_retention(ms(before)).await.unwrap();
                    let mut want = 0;
                    for events in &mut model.events {
                        let n = events.len();
                        events.retain(|(t, _)| *t >= before);
                        want += (n - events.len()) as u64;
                    }
                    assert_eq!(removed, want);
                }
                Op::Lkv {
                    device,
                    patch,
                    key_frame,
                    offset,
                } => {
                    let d = device as usize;
                    let id = DeviceId::new(format!("d{d}")).unwrap();
                    let update = LkvUpdate {
                        patch: patch.clone(),
                        key_frame,
                        source_time: ms(seq),
                        source: offset.map(|o| SourcePosition {
                            partition: 0,
                            offset: o,
                        }),
                    };
                    let applied = store.merge_last_known(&id, update).await.unwrap();
                    let fresh = offset.is_none_or(|o| model.last_lkv[d].is_none_or(|l| o > l));
                    assert_eq!(applied, fresh);
                    if fresh {
                        let doc = model.doc[d].get_or_insert_with(|| json!({}));
                        if key_frame {
                            *doc = json!({});
                        }
                        merge_patch(doc, &patch);
                        if offset.is_some() {
                            model.last_lkv[d] = offset;
                        }
                    }
                }
                Op::Reopen => {
                    if durable {
                        drop(store);
                        store = open().await;
                    }
                }
            }
            check(&*store, &model).await;
        }
    });
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    #[test]
    fn memory_store_matches_model(ops in prop::collection::vec(op(), 1..40)) {
        run_model(ops, false);
    }

    #[test]
    fn file_store_matches_model_across_reopens(ops in prop::collection::vec(op(), 1..40)) {
        run_model(ops, true);
    }
}

/// RFC 7396 merge patch as `iot_core::json` implements it: the reference the record is checked
/// against.
fn merge_patch(doc: &mut serde_json::Value, patch: &serde_json::Value) {
    iot_core::json::merge_patch(doc, patch, 64).expect("test patches are shallow");
}
