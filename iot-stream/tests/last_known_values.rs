//! Last known values: RFC 7396 appendix A on the tree, a proptest against folding merge patch,
//! and the processor's key frames, source times and idempotence under redelivery.
#![allow(clippy::unwrap_used)]

use std::sync::Arc;

use iot_core::{DeviceId, GroupName, Producer, Record, Timestamp, Topics};
use iot_stream::processors::{KEY_FRAME_HEADER, LastKnownValues};
use iot_stream::{HostConfig, LastKnown, LkvUpdate, MemoryStateStore, ProcessorHost, StateStore};
use proptest::prelude::*;
use serde_json::{Value, json};

fn update(patch: Value, key_frame: bool) -> LkvUpdate {
    LkvUpdate {
        patch,
        key_frame,
        source_time: Timestamp::from_unix_millis(1),
        source: None,
    }
}

/// RFC 7396 appendix A, restricted to object documents and object patches (a last-known-values
/// record is always an object). The cases with non-object patches are covered by
/// `iot_core::json::merge_patch`'s own test.
#[test]
fn rfc7396_appendix_a_on_the_record() {
    // The appendix's cases where both the target and the patch are objects.
    let cases = iot_core::json::rfc7396_appendix_a()
        .into_iter()
        .filter(|(o, p, _)| o.is_object() && p.is_object());
    for (original, patch, expected) in cases {
        let mut lkv = LastKnown::new();
        // A key frame holding the original; `null` members of a key frame would be removals, so
        // the one original with a null member is built by a plain value instead.
        if original == json!({"e":null}) {
            let mut doc = original.clone();
            merge_patch(&mut doc, &patch);
            assert_eq!(doc, expected);
            continue;
        }
        lkv.apply(&update(original.clone(), true)).unwrap();
        lkv.apply(&update(patch.clone(), false)).unwrap();
        assert_eq!(lkv.values(), expected, "{original} + {patch}");
    }
}

fn value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        (0i64..4).prop_map(Value::from),
        "[pq]".prop_map(Value::from),
        Just(json!([1, 2])),
    ];
    leaf.prop_recursive(3, 12, 3, |inner| {
        prop::collection::btree_map("[abc]", inner, 0..3)
            .prop_map(|m| Value::Object(m.into_iter().collect()))
    })
}

fn object() -> impl Strategy<Value = Value> {
    prop::collection::btree_map("[abcd]", value(), 0..4)
        .prop_map(|m| Value::Object(m.into_iter().collect()))
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 300, ..ProptestConfig::default() })]

    /// After any sequence of deltas and key frames the record equals folding merge patch over
    /// it (a key frame restarting from `{}`), every leaf's source time is that of the last update
    /// that wrote it, and replaying any suffix of the positioned sequence changes nothing.
    #[test]
    fn record_equals_folded_merge_patch(seq in prop::collection::vec((object(), prop::bool::weighted(0.2)), 1..12), replay_from in 0usize..12) {
        let mut lkv = LastKnown::new();
        let mut model = json!({});
        for (i, (patch, key_frame)) in seq.iter().enumerate() {
            let u = LkvUpdate {
                patch: patch.clone(),
                key_frame: *key_frame,
                source_time: Timestamp::from_unix_millis(i as u64),
                source: Some(iot_stream::SourcePosition { partition: 0, offset: i as u64 }),
            };
            prop_assert!(lkv.apply(&u).unwrap());
            if *key_frame {
                model = json!({});
            }
            merge_patch(&mut model, patch);
            prop_assert_eq!(lkv.values(), model.clone());
        }
        let before = lkv.clone();
        for (i, (patch, key_frame)) in seq.iter().enumerate().skip(replay_from.min(seq.len())) {
            let u = LkvUpdate {
                patch: patch.clone(),
                key_frame: *key_frame,
                source_time: Timestamp::from_unix_millis(1000),
                source: Some(iot_stream::SourcePosition { partition: 0, offset: i as u64 }),
            };
            prop_assert!(!lkv.apply(&u).unwrap());
        }
        prop_assert_eq!(lkv, before);
    }
}

#[tokio::test]
async fn processor_applies_deltas_key_frames_and_device_times() {
    let topics = Arc::new(Topics::memory(2));
    let store = Arc::new(MemoryStateStore::new());
    let host = ProcessorHost::new(topics.clone());
    let producer = Producer::new(topics.topic("telemetry").await.unwrap());
    let t = Timestamp::from_unix_millis;
    producer
        .send(
            Record::new("dev-1", r#"{"temp":20,"fw":"1.0","gps":{"lat":1}}"#)
                .with_device_time(t(10)),
        )
        .await
        .unwrap();
    producer
        .send(Record::new("dev-1", r#"{"temp":21}"#).with_device_time(t(20)))
        .await
        .unwrap();
    producer
        .send(Record::new("dev-2", r#"{"x":1}"#))
        .await
        .unwrap();
    producer
        .send(Record::new("dev-2", r#"{"y":2}"#).with_header(KEY_FRAME_HEADER, "true"))
        .await
        .unwrap();
    producer
        .send(Record::new("dev-2", "not json"))
        .await
        .unwrap();
    let lkv = LastKnownValues::new(store.clone());
    let g = host
        .start(
            "telemetry",
            GroupName::new("lkv").unwrap(),
            Arc::new(lkv.clone()),
            HostConfig::default(),
        )
        .await
        .unwrap();
    g.wait_caught_up().await.unwrap();
    g.shutdown().await.unwrap();
    let d1 = store
        .last_known(&DeviceId::new("dev-1").unwrap())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(d1.values(), json!({"temp":21,"fw":"1.0","gps":{"lat":1}}));
    assert_eq!(d1.source_time("/temp"), Some(t(20)));
    assert_eq!(d1.source_time("/fw"), Some(t(10)));
    let d2 = store
        .last_known(&DeviceId::new("dev-2").unwrap())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        d2.values(),
        json!({"y":2}),
        "the key frame replaced, the bad record was dead-lettered"
    );

    // Redelivery: a new group re-reads everything into the same store; nothing changes.
    let g = host
        .start(
            "telemetry",
            GroupName::new("lkv-again").unwrap(),
            Arc::new(lkv),
            HostConfig::default(),
        )
        .await
        .unwrap();
    g.wait_caught_up().await.unwrap();
    g.shutdown().await.unwrap();
    assert_eq!(
        store
            .last_known(&DeviceId::new("dev-1").unwrap())
            .await
            .unwrap()
            .unwrap(),
        d1
    );
    assert_eq!(
        store
            .last_known(&DeviceId::new("dev-2").unwrap())
            .await
            .unwrap()
            .unwrap(),
        d2
    );
}

/// RFC 7396 merge patch as `iot_core::json` implements it: the reference the record is checked
/// against.
fn merge_patch(doc: &mut serde_json::Value, patch: &serde_json::Value) {
    iot_core::json::merge_patch(doc, patch, 64).expect("test patches are shallow");
}
