//! The checks of the conformance suite, one part of the contract each. Each takes a registry
//! that may hold data already and panics with a message on a violation. Every id is drawn fresh
//! (a random suffix) and every query is scoped to the records of its own run, so the checks run in
//! any order, repeatedly, and twice against the same database.

use std::collections::HashSet;

use iot_core::DeviceId;
use serde_json::{Value, json};

use crate::error::Error;
use crate::limits::DocumentLimits;
use crate::paging::PageRequest;
use crate::query::Query;
use crate::record::{DeviceDocument, DeviceRecord, ETag};
use crate::registry::{Registry, RegistryExt};

use super::{fresh_id, fresh_name};

fn id(s: &str) -> DeviceId {
    DeviceId::new(s).expect("valid test id")
}

fn doc(metadata: Value) -> DeviceDocument {
    DeviceDocument::with_metadata(metadata).expect("metadata is an object")
}

/// Create, get, replace, merge, delete; `AlreadyExists`, `NotFound`; etags change on every write,
/// are never reused, and a stale `if_match` fails with `PreconditionFailed` and changes nothing.
pub async fn records_and_etags(r: &dyn Registry) {
    let a = fresh_id("tk-rec");
    let mut seen = HashSet::new();
    assert!(r.get(&a).await.expect("get").is_none());
    let created = r
        .create(&a, doc(json!({"building": "B7", "floor": 3})))
        .await
        .expect("create");
    assert_eq!(created.device_id, a);
    assert_eq!(
        created.metadata,
        doc(json!({"building": "B7", "floor": 3})).metadata
    );
    assert_eq!(created.created, created.updated);
    assert!(seen.insert(created.etag.clone()));
    assert_eq!(r.get(&a).await.expect("get"), Some(created.clone()));

    match r.create(&a, DeviceDocument::default()).await {
        Err(Error::AlreadyExists { id }) => assert_eq!(id, a),
        other => panic!("second create: {other:?}"),
    }

    let mut replacement = doc(json!({"building": "B8"}));
    replacement.tags.insert("owner".into(), json!("ops"));
    replacement.state_ref = Some("state/dev-a".into());
    let replaced = r
        .replace(&a, replacement.clone(), Some(&created.etag))
        .await
        .expect("replace with the current etag");
    assert_eq!(replaced.document(), replacement);
    assert_eq!(replaced.created, created.created);
    assert!(replaced.updated >= created.updated);
    assert!(seen.insert(replaced.etag.clone()), "etag reused");

    // Stale etags: every write refuses and changes nothing.
    let stale = created.etag.clone();
    let refused = [
        r.replace(&a, DeviceDocument::default(), Some(&stale))
            .await
            .err(),
        r.merge(&a, &json!({"metadata": {"x": 1}}), Some(&stale))
            .await
            .err(),
        r.delete(&a, Some(&stale)).await.err(),
        r.merge(
            &a,
            &json!({"metadata": {"x": 1}}),
            Some(&ETag::new("bogus")),
        )
        .await
        .err(),
    ];
    for e in refused {
        match e {
            Some(Error::PreconditionFailed {
                id,
                expected,
                actual,
            }) => {
                assert_eq!(id, a);
                assert_ne!(expected, actual);
                assert_eq!(actual, replaced.etag);
            }
            other => panic!("stale etag accepted or wrong error: {other:?}"),
        }
    }
    assert_eq!(r.get(&a).await.expect("get"), Some(replaced.clone()));

    let merged = r
        .merge(
            &a,
            &json!({"metadata": {"floor": 4}, "tags": {"owner": null}}),
            None,
        )
        .await
        .expect("merge");
    assert_eq!(
        Value::Object(merged.metadata.clone()),
        json!({"building": "B8", "floor": 4})
    );
    assert!(merged.tags.is_empty());
    assert_eq!(merged.state_ref.as_deref(), Some("state/dev-a"));
    assert!(seen.insert(merged.etag.clone()));
    let cleared = r
        .merge(&a, &json!({"stateRef": null}), Some(&merged.etag))
        .await
        .expect("merge with etag");
    assert_eq!(cleared.state_ref, None);
    assert!(seen.insert(cleared.etag.clone()));

    r.delete(&a, Some(&cleared.etag)).await.expect("delete");
    assert!(r.get(&a).await.expect("get").is_none());
    for e in [
        r.delete(&a, None).await.err(),
        r.merge(&a, &json!({}), None).await.err(),
        r.replace(&a, DeviceDocument::default(), None).await.err(),
    ] {
        assert!(matches!(e, Some(Error::NotFound { .. })), "{e:?}");
    }
    let again = r
        .create(&a, DeviceDocument::default())
        .await
        .expect("re-create");
    assert!(
        seen.insert(again.etag.clone()),
        "a re-created record got an old etag"
    );
}

/// Concurrent writers with `if_match` on the same record: in each round many merges carrying
/// the same etag are started at once and polled together (a durable registry runs them on
/// several threads, racing for the record); exactly one wins, every other fails with
/// `PreconditionFailed` naming the stale etag and the winner's, and the record is the winner's.
pub async fn concurrent_if_match(r: &dyn Registry) {
    const WRITERS: u64 = 16;
    let a = fresh_id("tk-contended");
    let mut current = r.create(&a, doc(json!({"n": 0}))).await.expect("create");
    for round in 1..=8u64 {
        let attempts = (0..WRITERS).map(|w| {
            let etag = current.etag.clone();
            let a = a.clone();
            Box::pin(async move {
                r.merge(&a, &json!({"metadata": {"n": round, "w": w}}), Some(&etag))
                    .await
            })
        });
        let results = JoinAll::new(attempts).await;
        let winners: Vec<&DeviceRecord> = results.iter().filter_map(|r| r.as_ref().ok()).collect();
        assert_eq!(winners.len(), 1, "round {round}: {results:?}");
        let winner = winners[0].clone();
        for loser in results.iter().filter_map(|r| r.as_ref().err()) {
            match loser {
                Error::PreconditionFailed {
                    expected, actual, ..
                } => {
                    assert_eq!(expected, &current.etag, "round {round}");
                    assert_eq!(actual, &winner.etag, "round {round}");
                }
                other => panic!("round {round}: expected PreconditionFailed, got {other:?}"),
            }
        }
        let stored = r.get(&a).await.expect("get").expect("present");
        assert_eq!(
            stored, winner,
            "round {round}: the stored record is the winner's"
        );
        current = winner;
    }
}

/// Polls every future on each wake-up until all are done, so that they run at the same time
/// (without requiring `'static` futures, which spawning would).
struct JoinAll<F: std::future::Future> {
    pending: Vec<Option<std::pin::Pin<Box<F>>>>,
    done: Vec<Option<F::Output>>,
}

impl<F: std::future::Future> JoinAll<F> {
    fn new(futures: impl Iterator<Item = std::pin::Pin<Box<F>>>) -> Self {
        let pending: Vec<_> = futures.map(Some).collect();
        let done = pending.iter().map(|_| None).collect();
        JoinAll { pending, done }
    }
}

impl<F: std::future::Future> std::future::Future for JoinAll<F>
where
    F::Output: Unpin,
{
    type Output = Vec<F::Output>;

    fn poll(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Self::Output> {
        let this = self.get_mut();
        for (slot, out) in this.pending.iter_mut().zip(this.done.iter_mut()) {
            if let Some(future) = slot
                && let std::task::Poll::Ready(value) = future.as_mut().poll(cx)
            {
                *out = Some(value);
                *slot = None;
            }
        }
        if this.pending.iter().all(Option::is_none) {
            std::task::Poll::Ready(this.done.iter_mut().filter_map(Option::take).collect())
        } else {
            std::task::Poll::Pending
        }
    }
}

/// Every example of RFC 7396 appendix A whose target and patch are objects, applied to metadata
/// through [`Registry::merge`]; patches that are not objects are refused.
pub async fn merge_patch_rfc7396(r: &dyn Registry) {
    // The appendix's cases where both the target and the patch are objects.
    let cases = crate::merge::rfc7396_appendix_a()
        .into_iter()
        .filter(|(o, p, _)| o.is_object() && p.is_object());
    let run = fresh_name("tk-rfc");
    for (i, (original, patch, expected)) in cases.into_iter().enumerate() {
        let d = id(&format!("{run}-{i}"));
        r.create(&d, doc(original.clone())).await.expect("create");
        let merged = r
            .merge(&d, &json!({ "metadata": patch }), None)
            .await
            .expect("merge");
        assert_eq!(
            Value::Object(merged.metadata),
            expected,
            "{original} + {patch}"
        );
    }
    // A null metadata patch removes all metadata.
    let d = id(&format!("{run}-0"));
    let merged = r
        .merge(&d, &json!({"metadata": null}), None)
        .await
        .expect("merge");
    assert!(merged.metadata.is_empty());
    // Patches that would make metadata a non-object, or are not objects, or touch other fields.
    let before = r.get(&d).await.expect("get");
    for bad in [
        json!({"metadata": "x"}),
        json!({"metadata": [1]}),
        json!(["c"]),
        json!("bar"),
        json!(null),
        json!({"deviceId": "other"}),
        json!({"etag": "x"}),
        json!({"stateRef": 5}),
        json!({"metadata": {"a.b": 1}}),
    ] {
        match r.merge(&d, &bad, None).await {
            Err(Error::InvalidDocument { .. }) => {}
            other => panic!("patch {bad} gave {other:?}"),
        }
    }
    assert_eq!(r.get(&d).await.expect("get"), before);
}

/// Documents over the limits are refused with typed errors and change nothing: 1 MB documents,
/// depth-1 000 documents and patches, bad keys. `limits` must be the registry's configured
/// limits, with `max_document_bytes` below 1 MB.
pub async fn document_limits(r: &dyn Registry, limits: DocumentLimits) {
    let d = fresh_id("tk-limits");
    let big = doc(json!({"blob": "x".repeat(1_000_000)}));
    assert!(limits.max_document_bytes < 1_000_000);
    match r.create(&d, big.clone()).await {
        Err(Error::DocumentTooLarge { limit, .. }) => assert_eq!(limit, limits.max_document_bytes),
        other => panic!("1 MB document: {other:?}"),
    }
    assert!(r.get(&d).await.expect("get").is_none());

    let deep = nested(1000);
    let deep_doc = doc(json!({ "deep": deep }));
    assert!(matches!(
        r.create(&d, deep_doc.clone()).await,
        Err(Error::DocumentTooDeep { .. })
    ));
    let created = r
        .create(&d, doc(json!({"ok": true})))
        .await
        .expect("create");
    assert!(matches!(
        r.replace(&d, big, None).await,
        Err(Error::DocumentTooLarge { .. })
    ));
    assert!(matches!(
        r.replace(&d, deep_doc, None).await,
        Err(Error::DocumentTooDeep { .. })
    ));
    assert!(matches!(
        r.merge(&d, &json!({"metadata": {"deep": nested(1000)}}), None)
            .await,
        Err(Error::DocumentTooDeep { .. })
    ));
    assert!(matches!(
        r.merge(
            &d,
            &json!({"metadata": {"blob": "x".repeat(1_000_000)}}),
            None
        )
        .await,
        Err(Error::DocumentTooLarge { .. })
    ));
    // Exactly at the depth limit is fine; one more is not.
    let mut at_limit = json!(1);
    for _ in 0..limits.max_depth {
        at_limit = json!({ "k": at_limit });
    }
    let ok = r.replace(&d, doc(at_limit.clone()), None).await;
    assert!(ok.is_ok(), "document at the depth limit: {ok:?}");
    let over = json!({ "k": at_limit });
    assert!(matches!(
        r.replace(&d, doc(over), None).await,
        Err(Error::DocumentTooDeep { .. })
    ));
    for bad in [
        json!({"a.b": 1}),
        json!({"": 1}),
        json!({"x": {"y\u{0}": 1}}),
    ] {
        assert!(matches!(
            r.replace(&d, doc(bad), None).await,
            Err(Error::InvalidDocument { .. })
        ));
    }
    let current = r.get(&d).await.expect("get").expect("present");
    assert_ne!(current.etag, created.etag);
    drop_deep(deep);
}

/// A value nested `depth` levels, built (and later dropped) without deep recursion in the
/// registry; arrays keep the test's own drop shallow in stack use.
fn nested(depth: usize) -> Value {
    let mut v = json!(1);
    for _ in 0..depth {
        v = Value::Array(vec![v]);
    }
    v
}

/// Takes a deep value apart iteratively, so that the test itself cannot overflow the stack.
fn drop_deep(mut v: Value) {
    while let Value::Array(mut items) = v {
        v = items.pop().unwrap_or(Value::Null);
    }
}

/// A varied fleet for the query checks: 240 devices over 4 buildings, with missing fields, nulls,
/// mixed types and nested objects. Every device is tagged `tags.run = run` and its id ends in
/// `-{run}`, so that fleets of several runs can share a registry ([`scoped_query`] selects one).
pub fn sample_fleet(run: &str) -> Vec<(DeviceId, DeviceDocument)> {
    (0..240u32)
        .map(|i| {
            let mut m = serde_json::Map::new();
            m.insert("building".into(), json!(format!("B{}", i % 4)));
            if i % 7 != 0 {
                m.insert("floor".into(), json!(i % 9));
            }
            if i % 11 == 0 {
                m.insert("floor".into(), json!(format!("{}", i % 9)));
            }
            m.insert("room".into(), json!(format!("R{:03}", (i * 37) % 101)));
            m.insert("model".into(), json!(["M1", "M2", "M3"][(i % 3) as usize]));
            m.insert(
                "geo".into(),
                json!({"lat": 47.0 + f64::from(i) / 1000.0, "lon": 8.5}),
            );
            // A 16 × 15 grid 0.01° apart (about 1.1 km × 0.76 km), a few devices either side of
            // the antimeridian, and some positions that are not positions.
            let position = match i {
                _ if i % 23 == 0 => {
                    json!({"lat": -17.7, "lon": if i % 2 == 0 { 179.99 } else { -179.99 }})
                }
                _ if i % 19 == 0 => json!({"lat": "47.01", "lon": 8.5}),
                _ if i % 29 == 0 => json!({"lat": 95, "lon": 8.5}),
                _ => json!({
                    "lat": 47.0 + f64::from(i % 16) / 100.0,
                    "lon": 8.5 + f64::from(i / 16) / 100.0,
                }),
            };
            m.insert("position".into(), position);
            if i % 5 == 0 {
                m.insert("retired".into(), json!(i % 10 == 0));
            }
            if i % 13 == 0 {
                m.insert("note".into(), Value::Null);
            }
            if i % 17 == 0 {
                m.insert("list".into(), json!([1, 2]));
            }
            let mut d = DeviceDocument {
                metadata: m,
                ..DeviceDocument::default()
            };
            if i % 3 == 0 {
                d.tags.insert(
                    "owner".into(),
                    json!(if i % 2 == 0 { "ops" } else { "lab" }),
                );
            }
            if i % 4 == 1 {
                d.state_ref = Some(format!("state/{i}"));
            }
            d.tags.insert("run".into(), json!(run));
            (id(&format!("dev-{:04}-{run}", (i * 7919) % 10007)), d)
        })
        .collect()
}

/// Queries that exercise every operator, function and clause.
pub const SAMPLE_QUERIES: &[&str] = &[
    "SELECT * FROM devices",
    "SELECT * FROM devices WHERE metadata.building = 'B1'",
    "SELECT * FROM devices WHERE metadata.building = 'B1' AND metadata.floor >= 3",
    "SELECT * FROM devices WHERE metadata.building = 'B1' AND metadata.floor >= 3 AND NOT IS_DEFINED(metadata.retired) ORDER BY metadata.room LIMIT 100",
    "SELECT * FROM devices WHERE metadata.floor != 4",
    "SELECT * FROM devices WHERE metadata.floor < 2 OR metadata.floor > 7",
    "SELECT * FROM devices WHERE metadata.floor <= '5'",
    "SELECT * FROM devices WHERE metadata.model IN ['M1', 'M3'] AND metadata.geo.lat > 47.1",
    "SELECT * FROM devices WHERE metadata.model NOT IN ['M1']",
    "SELECT * FROM devices WHERE STARTS_WITH(metadata.room, 'R0')",
    "SELECT * FROM devices WHERE STARTS_WITH(deviceId, 'dev-1') ORDER BY deviceId DESC",
    "SELECT * FROM devices WHERE IS_DEFINED(metadata.note) OR metadata.note = null",
    "SELECT * FROM devices WHERE metadata.retired = false OR tags.owner = 'ops'",
    "SELECT * FROM devices WHERE NOT (metadata.building = 'B2' OR metadata.floor = 1)",
    "SELECT * FROM devices WHERE metadata.list != 3 AND metadata.geo != 1",
    "SELECT * FROM devices WHERE IS_DEFINED(stateRef) ORDER BY metadata.floor DESC, metadata.room",
    "SELECT * FROM devices WHERE metadata.geo.lon = 8.5 AND metadata.geo.lat <= 47.05 ORDER BY metadata.geo.lat",
    "SELECT * FROM devices ORDER BY metadata.retired, metadata.floor LIMIT 37",
    "SELECT * FROM devices WHERE true AND NOT false",
    "SELECT * FROM devices WHERE metadata.floor IS NOT NULL AND metadata.missing IS NULL",
    "SELECT * FROM devices WHERE WITHIN_BOX(metadata.position, 47.02, 8.52, 47.085, 8.6)",
    "SELECT * FROM devices WHERE WITHIN_DISTANCE(metadata.position, 47.055, 8.555, 3000) ORDER BY metadata.room",
    "SELECT * FROM devices WHERE metadata.building = 'B1' AND WITHIN_DISTANCE(metadata.geo, 47.1, 8.5, 5000)",
    "SELECT * FROM devices WHERE NOT WITHIN_BOX(metadata.position, 47.0, 8.5, 47.05, 8.55)",
    "SELECT * FROM devices WHERE WITHIN_BOX(metadata.position, -20, 179, -15, -179) OR WITHIN_DISTANCE(metadata.position, 47, 8.5, 0)",
    "SELECT * FROM devices WHERE WITHIN_DISTANCE(metadata.position, -17.7, 180, 5000)",
];

/// `text` (a `SELECT` of the shape of [`SAMPLE_QUERIES`]) restricted to the records tagged
/// `tags.run = run`: `… WHERE tags.run = 'run' AND (condition) ORDER BY … LIMIT …`.
pub fn scoped_query(text: &str, run: &str) -> String {
    let tail_at = [" ORDER BY ", " LIMIT "]
        .iter()
        .filter_map(|clause| text.find(clause))
        .min()
        .unwrap_or(text.len());
    let (head, tail) = text.split_at(tail_at);
    let scope = format!("tags.run = '{run}'");
    match head.split_once(" WHERE ") {
        Some((select, condition)) => format!("{select} WHERE {scope} AND ({condition}){tail}"),
        None => format!("{head} WHERE {scope}{tail}"),
    }
}

/// Query answers equal a brute-force evaluation of [`Query::matches`] and [`Query::cmp_records`]
/// over the records written, for every page size; `count` agrees; paging never repeats or skips.
pub async fn queries_match_brute_force(r: &dyn Registry) {
    let run = fresh_name("tk-q");
    let mut model: Vec<DeviceRecord> = Vec::new();
    for (d, document) in sample_fleet(&run) {
        model.push(r.create(&d, document).await.expect("create"));
    }
    // Some updates and deletes, so the indexes see removals too.
    for (i, rec) in model.clone().iter().enumerate() {
        if i % 9 == 0 {
            let merged = r
                .merge(
                    &rec.device_id,
                    &json!({"metadata": {"floor": null, "building": "B9"}}),
                    None,
                )
                .await
                .expect("merge");
            model[i] = merged;
        }
    }
    let removed: Vec<DeviceId> = model
        .iter()
        .step_by(10)
        .map(|r| r.device_id.clone())
        .collect();
    for d in &removed {
        r.delete(d, None).await.expect("delete");
    }
    model.retain(|rec| !removed.contains(&rec.device_id));

    for text in SAMPLE_QUERIES {
        let text = &scoped_query(text, &run);
        let q = Query::parse(text).expect("sample query parses");
        let mut expected: Vec<DeviceRecord> =
            model.iter().filter(|rec| q.matches(rec)).cloned().collect();
        expected.sort_by(|a, b| q.cmp_records(a, b));
        if let Some(limit) = q.limit() {
            expected.truncate(limit as usize);
        }
        let got = r.query_all(&q).await.expect("query");
        assert_eq!(ids(&got), ids(&expected), "{text}");
        assert_eq!(got, expected, "{text}: records differ");
        assert_eq!(
            r.count(&q).await.expect("count"),
            expected.len() as u64,
            "{text}"
        );
        for page_size in [1, 7, 50] {
            let mut paged = Vec::new();
            let mut page = PageRequest::first(page_size);
            loop {
                let mut result = r.query(&q, &page).await.expect("page");
                assert!(result.len() <= page_size);
                assert!(!result.is_empty() || result.continuation.is_none());
                // The page's accessors agree with its decoded records.
                let records = result.records().expect("records");
                assert_eq!(records.len(), result.len(), "{text}");
                assert_eq!(
                    result.device_ids().map(|i| i.as_str()).collect::<Vec<_>>(),
                    ids(&records),
                    "{text}"
                );
                let continuation = result.continuation.take();
                assert_eq!(result.into_records().expect("records"), records);
                paged.extend(records);
                match continuation {
                    Some(t) => page = PageRequest::next(page_size, t),
                    None => break,
                }
            }
            assert_eq!(
                ids(&paged),
                ids(&expected),
                "{text} in pages of {page_size}"
            );
        }
    }
}

fn ids(records: &[DeviceRecord]) -> Vec<&str> {
    records.iter().map(|r| r.device_id.as_str()).collect()
}

/// Bad query calls get typed errors: a `COUNT()` query passed to `query`, page sizes of zero or
/// over the maximum, malformed tokens, tokens of another query.
pub async fn query_misuse(r: &dyn Registry) {
    let run = fresh_name("tk-m");
    for i in 0..5 {
        let mut d = doc(json!({"i": i}));
        d.tags.insert("run".into(), json!(run));
        r.create(&id(&format!("{run}-{i}")), d)
            .await
            .expect("create");
    }
    let parse = |text: &str| Query::parse(&scoped_query(text, &run)).expect("parse");
    let count = parse("SELECT COUNT() FROM devices WHERE metadata.i > 1");
    assert_eq!(r.count(&count).await.expect("count"), 3);
    assert!(matches!(
        r.query(&count, &PageRequest::default()).await,
        Err(Error::InvalidInput { .. })
    ));
    let all = parse("SELECT * FROM devices");
    for size in [0, usize::MAX] {
        assert!(matches!(
            r.query(&all, &PageRequest::first(size)).await,
            Err(Error::InvalidInput { .. })
        ));
    }
    for token in ["", "%%%", "bm90IGpzb24", &"A".repeat(100_000)] {
        assert!(
            matches!(
                r.query(&all, &PageRequest::next(2, token.to_owned())).await,
                Err(Error::InvalidContinuation { .. })
            ),
            "token {:?}",
            &token[..token.len().min(20)]
        );
    }
    let first = r.query(&all, &PageRequest::first(2)).await.expect("page");
    let token = first.continuation.expect("more pages");
    let other = parse("SELECT * FROM devices WHERE metadata.i >= 0");
    assert!(matches!(
        r.query(&other, &PageRequest::next(2, token.clone())).await,
        Err(Error::InvalidContinuation { .. })
    ));
    let second = r
        .query(&all, &PageRequest::next(2, token))
        .await
        .expect("page");
    assert_eq!(
        ids(&second.into_records().expect("records")),
        vec![format!("{run}-2"), format!("{run}-3")]
    );
}

/// What [`write_for_reopen`] left, for [`check_after_reopen`].
#[derive(Debug)]
pub struct Written {
    /// Records that must be there after the reopen, as last written.
    pub present: Vec<DeviceRecord>,
    /// A device deleted before the reopen.
    pub deleted: DeviceId,
    /// Every etag handed out, none of which may come back.
    pub etags: HashSet<ETag>,
}

/// Writes records (a create, a replace, a merge, a delete), then [`Registry::sync`]s, for
/// [`check_after_reopen`] on the same storage opened again.
pub async fn write_for_reopen(r: &dyn Registry) -> Written {
    let mut etags = HashSet::new();
    let kept = r
        .create(&fresh_id("tk-reopen"), doc(json!({"kept": true})))
        .await
        .expect("create");
    etags.insert(kept.etag.clone());
    let changed = r
        .create(&fresh_id("tk-reopen"), doc(json!({"v": 1})))
        .await
        .expect("create");
    etags.insert(changed.etag.clone());
    let replaced = r
        .replace(
            &changed.device_id,
            doc(json!({"v": 2})),
            Some(&changed.etag),
        )
        .await
        .expect("replace");
    etags.insert(replaced.etag.clone());
    let merged = r
        .merge(&replaced.device_id, &json!({"tags": {"t": "x"}}), None)
        .await
        .expect("merge");
    etags.insert(merged.etag.clone());
    let gone = r
        .create(&fresh_id("tk-reopen"), DeviceDocument::default())
        .await
        .expect("create");
    etags.insert(gone.etag.clone());
    r.delete(&gone.device_id, None).await.expect("delete");
    r.sync().await.expect("sync");
    Written {
        present: vec![kept, merged],
        deleted: gone.device_id,
        etags,
    }
}

/// After a reopen: the records [`write_for_reopen`] left read back as written, the deleted one
/// is gone, queries find them, and new writes get etags never handed out before.
pub async fn check_after_reopen(r: &dyn Registry, written: &Written) {
    for record in &written.present {
        assert_eq!(
            r.get(&record.device_id).await.expect("get after reopen"),
            Some(record.clone()),
            "a record changed across the reopen"
        );
    }
    assert!(
        r.get(&written.deleted)
            .await
            .expect("get after reopen")
            .is_none(),
        "a deleted record came back"
    );
    let again = r
        .create(&written.deleted, DeviceDocument::default())
        .await
        .expect("re-create after reopen");
    let merged = r
        .merge(
            &written.present[0].device_id,
            &json!({"tags": {"n": 1}}),
            None,
        )
        .await
        .expect("merge after reopen");
    for etag in [&again.etag, &merged.etag] {
        assert!(
            !written.etags.contains(etag),
            "an etag was handed out again after the reopen"
        );
    }
}
