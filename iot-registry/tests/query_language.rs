//! The query language: what parses, what is refused, and where the error points.
#![allow(clippy::unwrap_used)]

use iot_registry::{Query, QueryErrorKind, QueryLimits, Select};

fn ok(q: &str) -> Query {
    match Query::parse(q) {
        Ok(q) => q,
        Err(e) => panic!("{:?} was refused: {e}", &q[..q.len().min(200)]),
    }
}

fn err(q: &str) -> iot_registry::QueryError {
    match Query::parse(q) {
        Ok(_) => panic!("{:?} was accepted", &q[..q.len().min(200)]),
        Err(e) => e,
    }
}

#[test]
fn the_issue_example_parses() {
    let q = ok(
        "SELECT * FROM devices WHERE metadata.building = 'B7' AND metadata.floor >= 3 AND NOT IS_DEFINED(metadata.retired) ORDER BY metadata.room LIMIT 100",
    );
    assert_eq!(q.select(), Select::All);
    assert_eq!(q.limit(), Some(100));
    assert!(q.is_ordered());
}

#[test]
fn every_construct_parses() {
    for q in [
        "SELECT COUNT() FROM devices",
        "select count(*) from devices where tags.owner = 'ops'",
        "SELECT * FROM devices WHERE metadata.model IN ['M1', 'M2', 3, true, null]",
        "SELECT * FROM devices WHERE metadata.model IN ('M1', 'M2')",
        "SELECT * FROM devices WHERE metadata.model NOT IN ['M1']",
        "SELECT * FROM devices WHERE STARTS_WITH(metadata.room, 'B7-') OR metadata.floor < -1.5e2",
        "SELECT * FROM devices WHERE (metadata.a = 1 OR metadata.b != 'x') AND NOT (metadata.c <= false)",
        "SELECT * FROM devices WHERE metadata.geo.lat > 47.1 AND metadata.geo.lon < 8",
        "SELECT * FROM devices WHERE 3 < metadata.floor",
        "SELECT * FROM devices WHERE metadata.x = null AND metadata.y IS NOT NULL",
        "SELECT * FROM devices WHERE deviceId = 'dev-1' OR stateRef <> 'x'",
        "SELECT * FROM devices WHERE metadata.\"odd key\" = 1 AND metadata.`x y` = 2",
        "SELECT * FROM devices WHERE true ORDER BY metadata.floor DESC, metadata.room ASC",
        "SELECT * FROM devices WHERE metadata.order = 1 AND metadata.select = 2 AND metadata.floor = 3 AND metadata.count = 4",
        "SELECT * FROM devices\n WHERE metadata.building = 'B7'\n LIMIT 5",
    ] {
        ok(q);
    }
}

#[test]
fn syntax_errors_say_where_and_what() {
    let e = err("SELECT * FROM devices WHERE metadata.floor >=");
    assert_eq!(e.kind, QueryErrorKind::Syntax);
    assert_eq!((e.line, e.column), (1, 46), "{e}");
    assert!(e.message.contains("xpected"), "{e}");

    let e = err("SELECT * devices");
    assert_eq!(
        (e.kind, e.line, e.column),
        (QueryErrorKind::Syntax, 1, 10),
        "{e}"
    );
    assert!(e.message.contains("expected FROM"), "{e}");

    let e = err("SELECT * FROM sensors");
    assert_eq!((e.line, e.column), (1, 15), "{e}");

    let e = err("SELECT * FROM devices WHERE metadata.a = 1 GARBAGE");
    assert_eq!((e.line, e.column), (1, 44), "{e}");

    let e = err("SELECT * FROM devices\nWHERE metadata.a = 'unterminated");
    assert_eq!(e.kind, QueryErrorKind::Syntax);
    assert_eq!(e.line, 2, "{e}");

    let e = err("SELECT * FROM devices LIMIT x");
    assert_eq!((e.line, e.column), (1, 29), "{e}");
    for q in [
        "",
        "SELECT",
        "SELECT * FROM",
        "SELECT * FROM devices WHERE",
        "SELECT * FROM devices WHERE (metadata.a = 1",
    ] {
        assert_eq!(err(q).kind, QueryErrorKind::Syntax, "{q:?}");
    }
}

#[test]
fn unknown_functions_and_fields_are_named() {
    let e = err("SELECT * FROM devices WHERE ENDS_WITH(metadata.room, 'x')");
    assert_eq!(
        (e.kind, e.line, e.column),
        (QueryErrorKind::UnknownFunction, 1, 29),
        "{e}"
    );
    assert!(e.message.contains("ENDS_WITH"), "{e}");
    let e = err("SELECT MAX(metadata.floor) FROM devices");
    assert_eq!(e.kind, QueryErrorKind::UnknownFunction, "{e}");
    let e = err("SELECT * FROM devices WHERE properties.reported.x = 1");
    assert_eq!(
        (e.kind, e.column),
        (QueryErrorKind::UnknownField, 29),
        "{e}"
    );
    let e = err("SELECT * FROM devices WHERE deviceId.x = 1");
    assert_eq!(e.kind, QueryErrorKind::UnknownField, "{e}");
    let e = err("SELECT * FROM devices WHERE metadata.\"a.b\" = 1");
    assert_eq!(e.kind, QueryErrorKind::Syntax, "{e}");
}

#[test]
fn type_mismatches_are_refused() {
    for (q, column) in [
        ("SELECT * FROM devices WHERE NOT 'x'", 33),
        (
            "SELECT * FROM devices WHERE STARTS_WITH(metadata.room, 3)",
            56,
        ),
        ("SELECT * FROM devices WHERE STARTS_WITH('x', 'y')", 41),
        ("SELECT * FROM devices WHERE metadata.floor < null", 46),
        ("SELECT * FROM devices WHERE metadata.floor", 29),
        ("SELECT * FROM devices WHERE metadata.floor = metadata", 0),
        ("SELECT * FROM devices WHERE metadata.a IN [metadata.b]", 44),
        ("SELECT * FROM devices WHERE IS_DEFINED('x')", 40),
        ("SELECT * FROM devices WHERE 5", 29),
    ] {
        let e = err(q);
        if column == 0 {
            assert_eq!(e.kind, QueryErrorKind::Unsupported, "{q}: {e}");
        } else {
            assert_eq!(
                (e.kind, e.column),
                (QueryErrorKind::TypeMismatch, column),
                "{q}: {e}"
            );
        }
    }
    for q in [
        "SELECT * FROM devices WHERE 1 = 1",
        "SELECT * FROM devices WHERE metadata.a + 1 = 2",
        "SELECT * FROM devices WHERE metadata.a LIKE 'x%'",
        "SELECT * FROM devices WHERE metadata.a IN (SELECT * FROM devices)",
        "SELECT metadata.a FROM devices",
    ] {
        let e = err(q);
        assert!(
            matches!(
                e.kind,
                QueryErrorKind::Unsupported | QueryErrorKind::TypeMismatch | QueryErrorKind::Syntax
            ),
            "{q}: {e}"
        );
    }
}

/// Runs `f` on a thread with the 2 MiB stack Rust gives test threads by default, so these tests
/// prove no stack overflow even where the harness would give more.
fn on_small_stack<F: FnOnce() + Send + 'static>(f: F) {
    std::thread::Builder::new()
        .stack_size(2 * 1024 * 1024)
        .spawn(f)
        .unwrap()
        .join()
        .unwrap();
}

#[test]
fn ten_thousand_terms_are_refused_as_too_complex() {
    on_small_stack(|| {
        for joiner in [" OR ", " AND "] {
            let terms: Vec<String> = (0..10_000).map(|i| format!("metadata.a = {i}")).collect();
            let q = format!("SELECT * FROM devices WHERE {}", terms.join(joiner));
            assert_eq!(err(&q).kind, QueryErrorKind::TooComplex);
        }
        let list: Vec<String> = (0..10_000).map(|i| i.to_string()).collect();
        let q = format!(
            "SELECT * FROM devices WHERE metadata.a IN [{}]",
            list.join(",")
        );
        assert_eq!(err(&q).kind, QueryErrorKind::TooComplex);
    });
}

#[test]
fn queries_at_the_token_limit_work_on_a_small_stack() {
    on_small_stack(|| {
        // `metadata.a = 1 OR` is 6 tokens; `true AND` the densest chain, 2 tokens per operand.
        let limits = QueryLimits::default();
        let n = (limits.max_tokens - 8) / 6;
        let terms: Vec<String> = (0..n).map(|i| format!("metadata.a = {i}")).collect();
        let q = format!("SELECT * FROM devices WHERE {}", terms.join(" OR "));
        ok(&q);
        let terms: Vec<String> = (0..(limits.max_tokens - 8) / 2)
            .map(|_| "true".to_owned())
            .collect();
        ok(&format!(
            "SELECT * FROM devices WHERE {}",
            terms.join(" AND ")
        ));
        let list: Vec<String> = (0..limits.max_tokens - 20)
            .map(|i| (i / 2).to_string())
            .collect();
        let _ = Query::parse(&format!(
            "SELECT * FROM devices WHERE metadata.a IN [{}]",
            list.join(",")
        ));
    });
}

#[test]
fn deep_nesting_is_refused_as_too_complex() {
    on_small_stack(|| {
        for depth in [100, 1000, 3000] {
            let q = format!(
                "SELECT * FROM devices WHERE {}metadata.a = 1{}",
                "(".repeat(depth),
                ")".repeat(depth)
            );
            assert_eq!(err(&q).kind, QueryErrorKind::TooComplex, "depth {depth}");
            let q = format!(
                "SELECT * FROM devices WHERE {}metadata.a = 1",
                "NOT ".repeat(depth)
            );
            assert_eq!(
                err(&q).kind,
                QueryErrorKind::TooComplex,
                "NOT depth {depth}"
            );
        }
        ok(&format!(
            "SELECT * FROM devices WHERE {}metadata.a = 1{}",
            "(".repeat(20),
            ")".repeat(20)
        ));
    });
}

#[test]
fn huge_text_is_refused_before_lexing() {
    let q = format!(
        "SELECT * FROM devices WHERE metadata.a = '{}'",
        "x".repeat(100_000)
    );
    assert_eq!(err(&q).kind, QueryErrorKind::TooComplex);
}

#[test]
fn geo_conditions_parse_and_bad_areas_are_refused_where_they_are() {
    use iot_registry::query::{Condition, GeoArea};
    let q =
        ok("SELECT * FROM devices WHERE WITHIN_DISTANCE(metadata.location, 47.62, -122.35, 5000)");
    let Condition::Within {
        field, lat, area, ..
    } = q.condition()
    else {
        panic!("{:?}", q.condition())
    };
    assert_eq!(field.as_str(), "metadata.location");
    assert_eq!(lat.as_str(), "metadata.location.lat");
    assert_eq!(area, GeoArea::circle(47.62, -122.35, 5000.0).unwrap());
    ok("select * from devices where within_box(tags.site, -21, 176, -12, -178) and metadata.x = 1");

    let e = err("SELECT * FROM devices WHERE WITHIN_BOX(metadata.p, 10, 0, 5, 1)");
    assert_eq!((e.kind, e.column), (QueryErrorKind::TypeMismatch, 52));
    assert!(e.message.contains("south edge 10"), "{e}");
    let e = err("SELECT * FROM devices WHERE WITHIN_DISTANCE(metadata.p, 0, 0, -5)");
    assert!(e.message.contains("not negative"), "{e}");
    let e = err("SELECT * FROM devices WHERE WITHIN_DISTANCE(metadata.p, 91, 0, 5)");
    assert!(e.message.contains("latitude from -90 to 90"), "{e}");
    let e = err("SELECT * FROM devices WHERE WITHIN_DISTANCE(deviceId, 0, 0, 5)");
    assert_eq!((e.kind, e.column), (QueryErrorKind::TypeMismatch, 45));
    let e = err("SELECT * FROM devices WHERE WITHIN_DISTANCE(metadata.p, '0', 0, 5)");
    assert!(e.message.contains("expects a number for lat"), "{e}");
    let e = err("SELECT * FROM devices WHERE WITHIN_BOX(metadata.p, 0, 0, 5)");
    assert_eq!(e.kind, QueryErrorKind::Syntax);
    assert!(e.message.contains("five arguments"), "{e}");
}

#[tokio::test]
async fn geo_conditions_find_the_devices_near_a_point_or_in_a_box() {
    use iot_core::DeviceId;
    use iot_registry::{DeviceDocument, MemoryRegistry, PageRequest, Registry};
    use serde_json::json;
    let r = MemoryRegistry::new();
    let places = [
        ("space-needle", json!({"lat": 47.6205, "lon": -122.3493})),
        ("pike-place", json!({"lat": 47.6097, "lon": -122.3422})),
        ("sea-tac", json!({"lat": 47.4502, "lon": -122.3088})),
        ("suva", json!({"lat": -18.1416, "lon": 178.4419})),
        ("taveuni", json!({"lat": -16.8, "lon": -179.97})),
        ("not-a-position", json!({"lat": "47.62", "lon": -122.35})),
    ];
    for (id, location) in places {
        let doc = DeviceDocument {
            metadata: json!({ "location": location })
                .as_object()
                .cloned()
                .unwrap(),
            ..DeviceDocument::default()
        };
        r.create(&DeviceId::new(id).unwrap(), doc).await.unwrap();
    }
    let ids = |q: &str| {
        let q = ok(q);
        let r = &r;
        async move {
            let page = r.query(&q, &PageRequest::first(100)).await.unwrap();
            page.device_ids()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
        }
    };
    assert_eq!(
        ids("SELECT * FROM devices WHERE WITHIN_DISTANCE(metadata.location, 47.6205, -122.3493, 5000)").await,
        ["pike-place", "space-needle"]
    );
    assert_eq!(
        ids("SELECT * FROM devices WHERE WITHIN_DISTANCE(metadata.location, 47.6205, -122.3493, 20000)").await,
        ["pike-place", "sea-tac", "space-needle"]
    );
    // Fiji, across the antimeridian.
    assert_eq!(
        ids("SELECT * FROM devices WHERE WITHIN_BOX(metadata.location, -21, 176, -12, -178)").await,
        ["suva", "taveuni"]
    );
    assert_eq!(
        ids("SELECT * FROM devices WHERE WITHIN_DISTANCE(metadata.location, -17, 180, 50000)")
            .await,
        ["taveuni"]
    );
}
