//! proptest: for random fleets (with updates and deletes) and random queries, the indexed answer
//! equals a brute-force scan, in the same order, in every page size; and a registry without
//! indexes agrees too.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use iot_core::DeviceId;
use iot_registry::{
    DeviceDocument, DeviceRecord, MemoryRegistry, PageRequest, Query, Registry, RegistryConfig,
};
use proptest::prelude::*;
use serde_json::{Map, Value, json};

fn scalar() -> impl Strategy<Value = Value> {
    prop_oneof![
        (0i64..6).prop_map(|i| json!(i)),
        (0i64..6).prop_map(|i| json!(i as f64 + 0.5)),
        (0u8..5).prop_map(|i| json!(format!("s{i}"))),
        (0u8..3).prop_map(|i| json!(format!("s{i}x"))),
        any::<bool>().prop_map(|b| json!(b)),
        Just(Value::Null),
        Just(json!(-0.0)),
    ]
}

/// Positions for the geo conditions: values on and near box edges, both poles and the
/// antimeridian, and members that are not positions (out of range, strings).
fn position() -> impl Strategy<Value = Value> {
    let lat = prop::sample::select(vec![
        json!(10),
        json!(10),
        json!(10.001),
        json!(10.001),
        json!(-90),
        json!(0),
        json!(45),
        json!(89.9),
        json!(90),
        json!(95),
        json!("10"),
    ]);
    let lon = prop::sample::select(vec![
        json!(10),
        json!(10),
        json!(10.001),
        json!(10.001),
        json!(-180),
        json!(-179.9),
        json!(0),
        json!(179.9),
        json!(180),
        json!(200),
    ]);
    (lat, lon, any::<bool>()).prop_map(|(lat, lon, extra)| {
        if extra {
            json!({"lat": lat, "lon": lon, "x": 1})
        } else {
            json!({"lat": lat, "lon": lon})
        }
    })
}

fn value() -> impl Strategy<Value = Value> {
    prop_oneof![
        4 => scalar(),
        2 => position(),
        1 => prop::collection::vec(scalar(), 0..3).prop_map(Value::Array),
        2 => prop::collection::btree_map(prop::sample::select(vec!["x", "y"]), scalar(), 0..3)
            .prop_map(|m| Value::Object(m.into_iter().map(|(k, v)| (k.to_owned(), v)).collect())),
    ]
}

fn document() -> impl Strategy<Value = DeviceDocument> {
    (
        prop::collection::btree_map(prop::sample::select(vec!["a", "b", "g"]), value(), 0..4),
        prop::option::of(scalar()),
        prop::option::of(0u8..3),
    )
        .prop_map(|(m, tag, state)| {
            let metadata: Map<String, Value> =
                m.into_iter().map(|(k, v)| (k.to_owned(), v)).collect();
            let mut tags = Map::new();
            if let Some(t) = tag {
                tags.insert("t".into(), t);
            }
            DeviceDocument {
                metadata,
                tags,
                state_ref: state.map(|s| format!("st{s}")),
            }
        })
}

#[derive(Clone, Debug)]
enum Op {
    Put(u8, DeviceDocument),
    Merge(u8, Value),
    Delete(u8),
}

fn ops() -> impl Strategy<Value = Vec<Op>> {
    prop::collection::vec(
        prop_oneof![
            6 => (0u8..40, document()).prop_map(|(i, d)| Op::Put(i, d)),
            2 => (0u8..40, prop::sample::select(vec!["a", "b", "g"]), prop_oneof![value(), Just(Value::Null)])
                .prop_map(|(i, k, v)| Op::Merge(i, json!({"metadata": {k: v}}))),
            1 => (0u8..40).prop_map(Op::Delete),
        ],
        0..80,
    )
}

fn literal() -> impl Strategy<Value = String> {
    prop_oneof![
        (0i64..6).prop_map(|i| i.to_string()),
        (0i64..6).prop_map(|i| format!("{}.5", i)),
        (-2i64..0).prop_map(|i| i.to_string()),
        (0u8..5).prop_map(|i| format!("'s{i}'")),
        Just("'s1x'".to_owned()),
        Just("true".to_owned()),
        Just("false".to_owned()),
        Just("0.0".to_owned()),
    ]
}

fn path() -> impl Strategy<Value = String> {
    // Weighted towards the paths that hold values, so that most comparisons can match.
    prop::sample::select(vec![
        "metadata.a",
        "metadata.a",
        "metadata.a",
        "metadata.b",
        "metadata.b",
        "metadata.g",
        "metadata.g.x",
        "metadata.g.x",
        "metadata.g.y",
        "metadata.missing",
        "tags.t",
        "tags.t",
        "deviceId",
        "stateRef",
        "metadata",
    ])
    .prop_map(str::to_owned)
}

/// Paths a geo condition may name (an object in metadata or tags).
fn geo_path() -> impl Strategy<Value = String> {
    prop::sample::select(vec![
        "metadata.a",
        "metadata.a",
        "metadata.b",
        "metadata.g",
        "metadata.missing",
        "tags.t",
        "metadata",
    ])
    .prop_map(str::to_owned)
}

fn leaf() -> impl Strategy<Value = String> {
    prop_oneof![
        4 => (path(), prop::sample::select(vec!["=", "!=", "<", "<=", ">", ">="]), literal())
            .prop_map(|(p, op, l)| format!("{p} {op} {l}")),
        1 => (literal(), prop::sample::select(vec!["<", ">="]), path())
            .prop_map(|(l, op, p)| format!("{l} {op} {p}")),
        1 => (path(), prop::sample::select(vec!["=", "!="])).prop_map(|(p, op)| format!("{p} {op} null")),
        2 => (path(), prop::collection::vec(literal(), 1..4), any::<bool>())
            .prop_map(|(p, ls, neg)| format!("{p} {}IN [{}]", if neg { "NOT " } else { "" }, ls.join(", "))),
        1 => (path(), prop::sample::select(vec!["s", "s1", "", "dev-1", "st"]))
            .prop_map(|(p, s)| format!("STARTS_WITH({p}, '{s}')")),
        1 => path().prop_map(|p| format!("IS_DEFINED({p})")),
        1 => (
            geo_path(),
            prop::sample::select(vec![
                "-90, -180, 90, 180", "0, 0, 10, 10", "10, 10, 10, 10", "-50, 170, 50, -170",
                "45, 179.9, 90, -179.9", "10.0005, 0, 89.9, 10.0005",
            ]),
        )
            .prop_map(|(p, b)| format!("WITHIN_BOX({p}, {b})")),
        2 => (
            geo_path(),
            prop::sample::select(vec!["10, 10", "10, 10", "10, 10", "0, 0", "90, 0", "45, 179.9", "10.001, -180"]),
            prop::sample::select(vec!["0", "150", "150", "1000", "200000", "5000000", "30000000"]),
        )
            .prop_map(|(p, c, r)| format!("WITHIN_DISTANCE({p}, {c}, {r})")),
        1 => prop::sample::select(vec!["true", "false"]).prop_map(str::to_owned),
    ]
}

fn condition() -> impl Strategy<Value = String> {
    leaf().prop_recursive(3, 12, 3, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 2..4)
                .prop_map(|cs| format!("({})", cs.join(" AND "))),
            prop::collection::vec(inner.clone(), 2..4)
                .prop_map(|cs| format!("({})", cs.join(" OR "))),
            inner.prop_map(|c| format!("NOT ({c})")),
        ]
    })
}

fn query() -> impl Strategy<Value = String> {
    (
        prop::option::of(condition()),
        prop::collection::vec((path(), any::<bool>()), 0..3),
        prop::option::of(0u64..30),
    )
        .prop_map(|(cond, order, limit)| {
            let mut q = "SELECT * FROM devices".to_owned();
            if let Some(c) = cond {
                q.push_str(&format!(" WHERE {c}"));
            }
            if !order.is_empty() {
                let keys: Vec<String> = order
                    .iter()
                    .map(|(p, desc)| format!("{p}{}", if *desc { " DESC" } else { "" }))
                    .collect();
                q.push_str(&format!(" ORDER BY {}", keys.join(", ")));
            }
            if let Some(l) = limit {
                q.push_str(&format!(" LIMIT {l}"));
            }
            q
        })
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap()
}

async fn apply(r: &dyn Registry, ops: &[Op]) {
    for op in ops {
        match op {
            Op::Put(i, d) => {
                let id = DeviceId::new(format!("dev-{i}")).unwrap();
                if r.get(&id).await.unwrap().is_some() {
                    r.replace(&id, d.clone(), None).await.unwrap();
                } else {
                    r.create(&id, d.clone()).await.unwrap();
                }
            }
            Op::Merge(i, patch) => {
                let id = DeviceId::new(format!("dev-{i}")).unwrap();
                let _ = r.merge(&id, patch, None).await;
            }
            Op::Delete(i) => {
                let _ = r
                    .delete(&DeviceId::new(format!("dev-{i}")).unwrap(), None)
                    .await;
            }
        }
    }
}

async fn paged(r: &dyn Registry, q: &Query, page_size: usize) -> Vec<DeviceRecord> {
    let mut out = Vec::new();
    let mut page = PageRequest::first(page_size);
    loop {
        let mut p = r.query(q, &page).await.unwrap();
        let continuation = p.continuation.take();
        out.extend(p.into_records().unwrap());
        match continuation {
            Some(t) => page = PageRequest::next(page_size, t),
            None => return out,
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 200, ..ProptestConfig::default() })]

    #[test]
    fn indexed_answers_equal_a_brute_force_scan(
        ops in ops(),
        queries in prop::collection::vec(query(), 1..4),
        leaves in prop::collection::vec(leaf(), 3..8),
        page_size in 1usize..12,
    ) {
        runtime().block_on(async {
            let indexed = MemoryRegistry::new();
            let unindexed = MemoryRegistry::with_config(RegistryConfig::default().unindexed_paths(vec!["metadata.g".into(), "tags".into(), "deviceId".into()])).unwrap();
            apply(&indexed, &ops).await;
            apply(&unindexed, &ops).await;
            let all = Query::parse("SELECT * FROM devices").unwrap();
            let records = paged(&indexed, &all, 1000).await;
            let leaves = leaves.iter().map(|l| format!("SELECT * FROM devices WHERE {l}"));
            for text in queries.iter().cloned().chain(leaves) {
                let text = &text;
                let q = Query::parse(text).map_err(|e| format!("{text}: {e}")).unwrap();
                let mut expected: Vec<DeviceRecord> = records.iter().filter(|r| q.matches(r)).cloned().collect();
                expected.sort_by(|a, b| q.cmp_records(a, b));
                if let Some(l) = q.limit() {
                    expected.truncate(l as usize);
                }
                let ids = |v: &[DeviceRecord]| v.iter().map(|r| r.device_id.to_string()).collect::<Vec<_>>();
                let got = paged(&indexed, &q, page_size).await;
                prop_assert_eq!(ids(&got), ids(&expected), "indexed: {}", text);
                let got = paged(&unindexed, &q, page_size).await;
                prop_assert_eq!(ids(&got), ids(&expected), "partly unindexed: {}", text);
                prop_assert_eq!(indexed.count(&q).await.unwrap(), expected.len() as u64, "count: {}", text);
            }
            Ok(())
        })?;
    }
}
