//! Conformance suite for [`StateStore`] implementations (feature `testkit`).
//!
//! Each function takes any store, starting empty, and panics with a message if the store breaks
//! the contract documented on [`StateStore`]. An integrator runs them against a custom store:
//!
//! ```
//! # tokio::runtime::Builder::new_current_thread().build().unwrap().block_on(async {
//! iot_stream::testkit::run_all(&|| Box::pin(async {
//!     Box::new(iot_stream::MemoryStateStore::new()) as Box<dyn iot_stream::StateStore>
//! })).await;
//! # });
//! ```
#![allow(clippy::unwrap_used, clippy::missing_panics_doc)]

use std::future::Future;
use std::pin::Pin;

use iot_core::{DeviceId, Timestamp};
use serde_json::json;

use crate::error::Error;
use crate::state::{Event, LkvUpdate, SourcePosition, StateStore};

fn dev(name: &str) -> DeviceId {
    DeviceId::new(name).unwrap()
}

fn ms(v: u64) -> Timestamp {
    Timestamp::from_unix_millis(v)
}

fn at(partition: u32, offset: u64) -> SourcePosition {
    SourcePosition { partition, offset }
}

/// Makes a fresh, empty store.
pub type MakeStore<'a> =
    dyn Fn() -> Pin<Box<dyn Future<Output = Box<dyn StateStore>> + Send>> + Sync + 'a;

/// Runs every check of the suite, each on a fresh store from `make`.
pub async fn run_all(make: &MakeStore<'_>) {
    history_by_time_range(&*make().await).await;
    history_skips_redeliveries(&*make().await).await;
    retention_removes_only_older_events(&*make().await).await;
    last_known_values_merge_and_key_frames(&*make().await).await;
    last_known_values_are_idempotent(&*make().await).await;
    bad_updates_change_nothing(&*make().await).await;
}

/// Events come back by time (append order for equal times), bounded by range and limit, per
/// device.
pub async fn history_by_time_range(store: &dyn StateStore) {
    let a = dev("a");
    let b = dev("b");
    let n = store
        .append_events(
            &a,
            vec![
                Event::new(ms(30), "3"),
                Event::new(ms(10), "1"),
                Event::new(ms(20), "2a"),
                Event::new(ms(20), "2b"),
            ],
        )
        .await
        .unwrap();
    assert_eq!(n, 4, "all four events are new");
    store
        .append_events(&b, vec![Event::new(ms(15), "b")])
        .await
        .unwrap();
    let all = store.read_events(&a, ms(0), ms(100), 100).await.unwrap();
    let payloads: Vec<_> = all.iter().map(|e| e.payload.clone()).collect();
    assert_eq!(
        payloads,
        ["1", "2a", "2b", "3"],
        "ordered by time, ties in append order"
    );
    let mid = store.read_events(&a, ms(20), ms(30), 100).await.unwrap();
    assert_eq!(mid.len(), 2, "from is inclusive, to exclusive");
    let limited = store.read_events(&a, ms(0), ms(100), 2).await.unwrap();
    assert_eq!(limited.len(), 2, "limit honoured");
    assert_eq!(limited[0].payload, "1");
    assert!(
        store
            .read_events(&dev("nobody"), ms(0), ms(100), 10)
            .await
            .unwrap()
            .is_empty()
    );
    assert_eq!(store.devices().await.unwrap(), vec![a, b]);
}

/// An event at or before the last stored source position of its partition is not stored again.
pub async fn history_skips_redeliveries(store: &dyn StateStore) {
    let a = dev("a");
    let first = vec![
        Event::new(ms(1), "x").with_source(at(0, 5)),
        Event::new(ms(2), "y").with_source(at(0, 6)),
    ];
    assert_eq!(store.append_events(&a, first.clone()).await.unwrap(), 2);
    assert_eq!(
        store.append_events(&a, first).await.unwrap(),
        0,
        "replay skipped"
    );
    let mixed = vec![
        Event::new(ms(2), "y").with_source(at(0, 6)),
        Event::new(ms(3), "z").with_source(at(0, 7)),
    ];
    assert_eq!(store.append_events(&a, mixed).await.unwrap(), 1);
    assert_eq!(
        store
            .append_events(&a, vec![Event::new(ms(4), "w")])
            .await
            .unwrap(),
        1,
        "events without a source are always stored"
    );
    let all = store.read_events(&a, ms(0), ms(10), 100).await.unwrap();
    let payloads: Vec<_> = all.iter().map(|e| e.payload.clone()).collect();
    assert_eq!(payloads, ["x", "y", "z", "w"]);
}

/// Retention removes exactly the events older than the cut-off, of every device.
pub async fn retention_removes_only_older_events(store: &dyn StateStore) {
    for name in ["a", "b"] {
        let events = (0..10)
            .map(|i| Event::new(ms(i * 10), i.to_string()))
            .collect();
        store.append_events(&dev(name), events).await.unwrap();
    }
    store
        .merge_last_known(
            &dev("a"),
            LkvUpdate {
                patch: json!({"k": 1}),
                key_frame: false,
                source_time: ms(0),
                source: None,
            },
        )
        .await
        .unwrap();
    assert_eq!(store.enforce_retention(ms(45)).await.unwrap(), 10);
    assert_eq!(store.enforce_retention(ms(45)).await.unwrap(), 0);
    for name in ["a", "b"] {
        let left = store
            .read_events(&dev(name), ms(0), ms(1000), 100)
            .await
            .unwrap();
        let times: Vec<_> = left.iter().map(|e| e.time).collect();
        assert_eq!(times, (5..10).map(|i| ms(i * 10)).collect::<Vec<_>>());
    }
    assert!(
        store.last_known(&dev("a")).await.unwrap().is_some(),
        "retention keeps last known values"
    );
}

/// Deltas merge (RFC 7396), key frames replace, each value keeps its source time.
pub async fn last_known_values_merge_and_key_frames(store: &dyn StateStore) {
    let a = dev("a");
    assert!(store.last_known(&a).await.unwrap().is_none());
    let update = |patch, key_frame, t| LkvUpdate {
        patch,
        key_frame,
        source_time: ms(t),
        source: None,
    };
    store
        .merge_last_known(
            &a,
            update(
                json!({"t": 20, "door": "open", "gps": {"lat": 1, "lon": 2}}),
                false,
                1,
            ),
        )
        .await
        .unwrap();
    store
        .merge_last_known(
            &a,
            update(json!({"t": 21, "door": null, "gps": {"lat": 3}}), false, 2),
        )
        .await
        .unwrap();
    let lkv = store.last_known(&a).await.unwrap().unwrap();
    assert_eq!(lkv.values(), json!({"t": 21, "gps": {"lat": 3, "lon": 2}}));
    assert_eq!(lkv.source_time("/t"), Some(ms(2)));
    assert_eq!(lkv.source_time("/gps/lat"), Some(ms(2)));
    assert_eq!(
        lkv.source_time("/gps/lon"),
        Some(ms(1)),
        "untouched values keep their time"
    );
    assert_eq!(lkv.source_time("/door"), None);
    store
        .merge_last_known(&a, update(json!({"mode": "eco", "x": null}), true, 3))
        .await
        .unwrap();
    let lkv = store.last_known(&a).await.unwrap().unwrap();
    assert_eq!(lkv.values(), json!({"mode": "eco"}), "a key frame replaces");
    assert_eq!(lkv.source_time("/mode"), Some(ms(3)));
}

/// Applying the same positioned update twice, or an older one, changes nothing.
pub async fn last_known_values_are_idempotent(store: &dyn StateStore) {
    let a = dev("a");
    let update = |patch, offset| LkvUpdate {
        patch,
        key_frame: false,
        source_time: ms(offset),
        source: Some(at(1, offset)),
    };
    assert!(
        store
            .merge_last_known(&a, update(json!({"n": {"x": 1}}), 1))
            .await
            .unwrap()
    );
    assert!(
        store
            .merge_last_known(&a, update(json!({"n": 5}), 2))
            .await
            .unwrap()
    );
    assert!(
        !store
            .merge_last_known(&a, update(json!({"n": {"x": 1}}), 1))
            .await
            .unwrap()
    );
    assert!(
        !store
            .merge_last_known(&a, update(json!({"n": 5}), 2))
            .await
            .unwrap()
    );
    let lkv = store.last_known(&a).await.unwrap().unwrap();
    assert_eq!(lkv.values(), json!({"n": 5}));
    assert_eq!(lkv.position(), Some(at(1, 2)));
}

/// A patch that is not an object is refused and changes nothing.
pub async fn bad_updates_change_nothing(store: &dyn StateStore) {
    let a = dev("a");
    for patch in [json!(1), json!("x"), json!([1]), json!(null)] {
        let r = store
            .merge_last_known(
                &a,
                LkvUpdate {
                    patch,
                    key_frame: false,
                    source_time: ms(1),
                    source: None,
                },
            )
            .await;
        assert!(matches!(r, Err(Error::InvalidInput { .. })), "{r:?}");
    }
    assert!(store.last_known(&a).await.unwrap().is_none());
}
