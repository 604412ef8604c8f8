//! The suite's checks, one public function per part of the [`StateStore`] contract.
//!
//! Each takes any store (it need not be empty) and panics with a message on a violation. Every
//! device id is drawn fresh, so the checks run against a store that already holds data.

use iot_core::{DeviceId, Timestamp};
use serde_json::json;

use super::fresh_id;
use crate::error::Error;
use crate::state::{Event, LastKnown, LkvUpdate, SourcePosition, StateStore};

/// A fresh device id for this run (`tk-<label>-` and random hex digits).
fn dev(label: &str) -> DeviceId {
    fresh_id(&format!("tk-{label}"))
}

fn ms(v: u64) -> Timestamp {
    Timestamp::from_unix_millis(v)
}

fn at(partition: u32, offset: u64) -> SourcePosition {
    SourcePosition { partition, offset }
}

/// Events come back by time (append order for equal times), bounded by range and limit, per
/// device.
pub async fn history_by_time_range(store: &dyn StateStore) {
    let a = dev("hist-a");
    let b = dev("hist-b");
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
    let devices = store.devices().await.unwrap();
    assert!(
        devices.contains(&a) && devices.contains(&b),
        "devices lists both"
    );
    assert!(
        devices.windows(2).all(|w| w[0] < w[1]),
        "devices are sorted, without duplicates"
    );
}

/// An event at or before the last stored source position of its partition is not stored again.
pub async fn history_skips_redeliveries(store: &dyn StateStore) {
    let a = dev("redeliver");
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

/// Retention removes exactly the events older than the cut-off, of every device, and keeps last
/// known values. Retention is global, so the expected count is what the store holds below the
/// cut-off beforehand (other data included).
pub async fn retention_removes_only_older_events(store: &dyn StateStore) {
    let a = dev("ret-a");
    let b = dev("ret-b");
    for device in [&a, &b] {
        let events = (0..10)
            .map(|i| Event::new(ms(i * 10), i.to_string()))
            .collect();
        store.append_events(device, events).await.unwrap();
    }
    store
        .merge_last_known(
            &a,
            LkvUpdate {
                patch: json!({"k": 1}),
                key_frame: false,
                source_time: ms(0),
                source: None,
            },
        )
        .await
        .unwrap();
    let cut = ms(45);
    let mut older = 0u64;
    for device in store.devices().await.unwrap() {
        let below = store
            .read_events(&device, Timestamp::EPOCH, cut, usize::MAX)
            .await
            .unwrap();
        older += u64::try_from(below.len()).unwrap();
    }
    assert!(older >= 10, "the check's own older events are listed");
    assert_eq!(
        store.enforce_retention(cut).await.unwrap(),
        older,
        "every event before the cut-off, of every device, is removed"
    );
    assert_eq!(store.enforce_retention(cut).await.unwrap(), 0);
    for device in [&a, &b] {
        let left = store
            .read_events(device, ms(0), ms(1000), 100)
            .await
            .unwrap();
        let times: Vec<_> = left.iter().map(|e| e.time).collect();
        assert_eq!(times, (5..10).map(|i| ms(i * 10)).collect::<Vec<_>>());
    }
    assert!(
        store.last_known(&a).await.unwrap().is_some(),
        "retention keeps last known values"
    );
}

/// Deltas merge (RFC 7396), key frames replace, each value keeps its source time.
pub async fn last_known_values_merge_and_key_frames(store: &dyn StateStore) {
    let a = dev("lkv");
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
    let a = dev("lkv-idem");
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
    let a = dev("bad");
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

/// What [`write_for_reopen`] wrote, for [`survives_reopen`] to find after a reopen.
#[derive(Debug)]
pub struct Written {
    device: DeviceId,
    events: Vec<Event>,
    last_known: LastKnown,
}

/// Writes events (with and without source positions) and last known values to a fresh device,
/// for [`survives_reopen`].
pub async fn write_for_reopen(store: &dyn StateStore) -> Written {
    let device = dev("reopen");
    // Times far above the retention check's cut-off, so a rerun's retention keeps them.
    let events = vec![
        Event::new(ms(1_000_010), "p").with_source(at(2, 40)),
        Event::new(ms(1_000_020), "q"),
    ];
    assert_eq!(
        store.append_events(&device, events.clone()).await.unwrap(),
        2
    );
    store
        .merge_last_known(
            &device,
            LkvUpdate {
                patch: json!({"t": 7, "nested": {"on": true}}),
                key_frame: false,
                source_time: ms(1_000_010),
                source: Some(at(2, 40)),
            },
        )
        .await
        .unwrap();
    let last_known = store.last_known(&device).await.unwrap().unwrap();
    Written {
        device,
        events,
        last_known,
    }
}

/// A reopened store holds exactly what was acknowledged before, and still knows the positions it
/// applied (a redelivery after the restart is skipped).
pub async fn survives_reopen(store: &dyn StateStore, written: &Written) {
    let device = &written.device;
    let events = store
        .read_events(device, Timestamp::EPOCH, ms(u64::MAX), 100)
        .await
        .unwrap();
    assert_eq!(events, written.events, "events survive a reopen");
    assert_eq!(
        store.last_known(device).await.unwrap().as_ref(),
        Some(&written.last_known),
        "last known values survive a reopen with their source times and position"
    );
    assert!(store.devices().await.unwrap().contains(device));
    let replay = vec![Event::new(ms(1_000_010), "p").with_source(at(2, 40))];
    assert_eq!(
        store.append_events(device, replay).await.unwrap(),
        0,
        "a redelivered event is skipped after a reopen"
    );
    assert!(
        !store
            .merge_last_known(
                device,
                LkvUpdate {
                    patch: json!({"t": 8}),
                    key_frame: false,
                    source_time: ms(1_000_010),
                    source: Some(at(2, 40)),
                },
            )
            .await
            .unwrap(),
        "a redelivered update is skipped after a reopen"
    );
}
