//! `PgRegistry` against the machine's PostgreSQL (feature `postgres`): the registry conformance
//! suite, and a proptest that its answers equal `MemoryRegistry`'s on generated fleets and
//! queries, in every page size. Each run works in a namespace of its own.
#![cfg(feature = "postgres")]
#![allow(clippy::unwrap_used)]

use std::sync::{Arc, OnceLock};

use iot_core::DeviceId;
use iot_registry::testkit::{self, RegistryFactory};
use iot_registry::{
    DeviceDocument, DeviceRecord, MemoryRegistry, PageRequest, Query, Registry, RegistryConfig,
    RegistryExt,
};
use iot_sdk::postgres::{PgPool, PgRegistry, PgRegistryConfig};
use proptest::prelude::*;
use serde_json::{Map, Value, json};

const URL: &str = "postgres://postgres@127.0.0.1:5432/test";

/// One runtime for every test of this file: the pool's connections are driven by its tasks.
fn runtime() -> &'static tokio::runtime::Runtime {
    static RT: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    RT.get_or_init(|| {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("runtime")
    })
}

/// The shared server, or `None` (with the reason printed) when it is unreachable outside CI.
// The skip reason goes to the test's own output, where `cargo test` shows it.
#[allow(clippy::print_stderr)]
fn shared_pool() -> Option<PgPool> {
    static POOL: OnceLock<Option<PgPool>> = OnceLock::new();
    POOL.get_or_init(|| {
        let url = std::env::var("IOT_TEST_POSTGRES_URL").unwrap_or_else(|_| URL.to_owned());
        let pool = PgPool::from_url(&url).expect("valid URL");
        match runtime().block_on(pool.get()) {
            Ok(_) => Some(pool),
            Err(e) if std::env::var_os("CI").is_none() => {
                eprintln!("skipped: PostgreSQL at {url} is unreachable ({e}); CI runs this test");
                None
            }
            Err(e) => panic!("PostgreSQL at {url} is unreachable under CI: {e}"),
        }
    })
    .clone()
}

fn namespace(label: &str) -> String {
    testkit::fresh_name(label)
}

struct Factory {
    pool: PgPool,
    config: PgRegistryConfig,
}

#[async_trait::async_trait]
impl RegistryFactory for Factory {
    async fn open(&self) -> iot_registry::Result<Arc<dyn Registry>> {
        Ok(Arc::new(
            PgRegistry::open(self.pool.clone(), self.config.clone()).await?,
        ))
    }

    async fn reopen(
        &self,
        previous: Arc<dyn Registry>,
    ) -> Option<iot_registry::Result<Arc<dyn Registry>>> {
        drop(previous);
        // A new pool: nothing of the first registry's connections carries over.
        let pool = PgPool::new(self.pool.config().clone()).expect("pool");
        Some(
            PgRegistry::open(pool, self.config.clone())
                .await
                .map(|r| Arc::new(r) as Arc<dyn Registry>),
        )
    }
}

#[test]
fn the_conformance_suite_passes() {
    let Some(pool) = shared_pool() else {
        return;
    };
    let config = PgRegistryConfig::default()
        .namespace(namespace("conformance"))
        .limits(testkit::suite_limits());
    runtime().block_on(testkit::run_all(&Factory { pool, config }));
}

#[test]
fn the_conformance_suite_passes_in_a_shared_namespace() {
    // The suite scopes every query to its own run, so it also passes beside other data.
    let Some(pool) = shared_pool() else {
        return;
    };
    let config = PgRegistryConfig::default()
        .namespace("shared-conformance")
        .limits(testkit::suite_limits());
    runtime().block_on(testkit::run_all(&Factory { pool, config }));
}

#[test]
fn numbers_beyond_f64_precision_compare_as_the_language_does() {
    let Some(pool) = shared_pool() else {
        return;
    };
    runtime().block_on(async {
        let config = PgRegistryConfig::default().namespace(namespace("numbers"));
        let pg = PgRegistry::open(pool, config).await.expect("open");
        let memory = MemoryRegistry::new();
        let docs = [
            ("big", json!({"n": 9_007_199_254_740_993u64})),
            ("edge", json!({"n": 9_007_199_254_740_992u64})),
            ("max", json!({"n": u64::MAX})),
            ("half", json!({"n": 0.5})),
            ("negzero", json!({"n": -0.0})),
            ("zero", json!({"n": 0})),
            ("text", json!({"n": "9007199254740992"})),
        ];
        for (id, m) in docs {
            let id = DeviceId::new(id).expect("id");
            let doc = DeviceDocument::with_metadata(m).expect("object");
            pg.create(&id, doc.clone()).await.expect("create");
            memory.create(&id, doc).await.expect("create");
        }
        for text in [
            "SELECT * FROM devices WHERE metadata.n = 9007199254740992",
            "SELECT * FROM devices WHERE metadata.n = 18446744073709551615",
            "SELECT * FROM devices WHERE metadata.n IN [9007199254740992, 0.5]",
            "SELECT * FROM devices WHERE metadata.n >= 9007199254740992",
            "SELECT * FROM devices WHERE metadata.n = 0",
            "SELECT * FROM devices WHERE metadata.n = -0.0",
            "SELECT * FROM devices WHERE metadata.n != 0 ORDER BY metadata.n DESC",
            "SELECT * FROM devices ORDER BY metadata.n",
        ] {
            let q = Query::parse(text).expect("parses");
            assert_eq!(
                ids(&pg.query_all(&q).await.expect("pg")),
                ids(&memory.query_all(&q).await.expect("memory")),
                "{text}"
            );
            assert_eq!(
                pg.count(&q).await.expect("pg"),
                memory.count(&q).await.expect("memory"),
                "{text}"
            );
        }
    });
}

#[test]
fn a_string_holding_nul_is_refused_in_documents_and_evaluated_in_rust_in_queries() {
    let Some(pool) = shared_pool() else {
        return;
    };
    runtime().block_on(async {
        let config = PgRegistryConfig::default().namespace(namespace("nul"));
        let pg = PgRegistry::open(pool, config).await.expect("open");
        let id = DeviceId::new("nul-1").expect("id");
        let bad = DeviceDocument::with_metadata(json!({"s": "a\u{0}b"})).expect("object");
        assert!(matches!(
            pg.create(&id, bad).await,
            Err(iot_registry::Error::InvalidDocument { .. })
        ));
        assert!(pg.get(&id).await.expect("get").is_none());
        for s in ["a", "b", "c"] {
            let doc = DeviceDocument::with_metadata(json!({ "s": s })).expect("object");
            pg.create(&DeviceId::new(format!("nul-{s}")).expect("id"), doc)
                .await
                .expect("create");
        }
        let q = Query::parse(
            "SELECT * FROM devices WHERE metadata.s < 'b\u{0}' ORDER BY metadata.s DESC",
        )
        .expect("parses");
        assert_eq!(
            ids(&pg.query_all(&q).await.expect("query")),
            ["nul-b", "nul-a"]
        );
        assert_eq!(pg.count(&q).await.expect("count"), 2);
        let first = pg.query(&q, &PageRequest::first(1)).await.expect("page");
        assert_eq!(ids(&first.records().expect("records")), ["nul-b"]);
        let token = first.continuation.expect("more");
        let second = pg
            .query(&q, &PageRequest::next(1, token))
            .await
            .expect("page");
        assert_eq!(ids(&second.into_records().expect("records")), ["nul-a"]);
    });
}

fn ids(records: &[DeviceRecord]) -> Vec<String> {
    records.iter().map(|r| r.device_id.to_string()).collect()
}

// ---- generated fleets and queries, in the manner of iot-registry's index_vs_scan test ----

fn scalar() -> impl Strategy<Value = Value> {
    prop_oneof![
        (0i64..6).prop_map(|i| json!(i)),
        (0i64..6).prop_map(|i| json!(i as f64 + 0.5)),
        (0u8..5).prop_map(|i| json!(format!("s{i}"))),
        (0u8..3).prop_map(|i| json!(format!("s{i}x"))),
        Just(json!("S1")),
        Just(json!("é")),
        Just(json!("it's")),
        Just(json!("back\\slash")),
        any::<bool>().prop_map(|b| json!(b)),
        Just(Value::Null),
        Just(json!(-0.0)),
        Just(json!(1.0)),
    ]
}

fn value() -> impl Strategy<Value = Value> {
    prop_oneof![
        4 => scalar(),
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
        0..60,
    )
}

fn literal() -> impl Strategy<Value = String> {
    prop_oneof![
        (0i64..6).prop_map(|i| i.to_string()),
        (0i64..6).prop_map(|i| format!("{i}.5")),
        (-2i64..0).prop_map(|i| i.to_string()),
        (0u8..5).prop_map(|i| format!("'s{i}'")),
        Just("'s1x'".to_owned()),
        Just("'S1'".to_owned()),
        Just("'é'".to_owned()),
        Just("'it''s'".to_owned()),
        Just("'dev-1'".to_owned()),
        Just("'st1'".to_owned()),
        Just("true".to_owned()),
        Just("false".to_owned()),
        Just("0.0".to_owned()),
        Just("1.0".to_owned()),
    ]
}

fn path() -> impl Strategy<Value = String> {
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
        "tags",
        "deviceId",
        "stateRef",
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
        1 => (path(), prop::sample::select(vec!["s", "s1", "", "dev-1", "st", "é"]))
            .prop_map(|(p, s)| format!("STARTS_WITH({p}, '{s}')")),
        1 => path().prop_map(|p| format!("IS_DEFINED({p})")),
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
        assert!(p.len() <= page_size);
        let continuation = p.continuation.take();
        out.extend(p.into_records().unwrap());
        match continuation {
            Some(t) => page = PageRequest::next(page_size, t),
            None => return out,
        }
    }
}

fn cases() -> u32 {
    std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|c| c.parse().ok())
        .unwrap_or(48)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: cases(), ..ProptestConfig::default() })]

    #[test]
    fn answers_equal_the_memory_registry(
        ops in ops(),
        queries in prop::collection::vec(query(), 1..4),
        leaves in prop::collection::vec(leaf(), 3..8),
        page_size in 1usize..12,
    ) {
        let Some(pool) = shared_pool() else {
            return Ok(());
        };
        runtime().block_on(async {
            let config = PgRegistryConfig::default().namespace(namespace("prop"));
            let pg = PgRegistry::open(pool, config).await.unwrap();
            let memory = MemoryRegistry::with_config(RegistryConfig::default()).unwrap();
            apply(&pg, &ops).await;
            apply(&memory, &ops).await;
            let all = Query::parse("SELECT * FROM devices").unwrap();
            let documents = |v: Vec<DeviceRecord>| {
                v.into_iter().map(|r| (r.device_id.to_string(), r.into_document())).collect::<Vec<_>>()
            };
            prop_assert_eq!(
                documents(paged(&pg, &all, 1000).await),
                documents(paged(&memory, &all, 1000).await)
            );
            let leaves = leaves.iter().map(|l| format!("SELECT * FROM devices WHERE {l}"));
            for text in queries.iter().cloned().chain(leaves) {
                let text = &text;
                let q = Query::parse(text).map_err(|e| format!("{text}: {e}")).unwrap();
                let expected = ids(&paged(&memory, &q, page_size).await);
                prop_assert_eq!(ids(&paged(&pg, &q, page_size).await), expected.clone(), "paged: {}", text);
                prop_assert_eq!(ids(&pg.query_all(&q).await.unwrap()), expected.clone(), "whole: {}", text);
                prop_assert_eq!(pg.count(&q).await.unwrap(), memory.count(&q).await.unwrap(), "count: {}", text);
            }
            Ok(())
        })?;
    }
}
