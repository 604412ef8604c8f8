//! The rule language: compilation, errors with positions, the issue's rule end to end, the ASA
//! sliding-window vector through SQL, projections, and run-time add / enable / disable.
#![allow(clippy::unwrap_used)]

use std::sync::Arc;

use iot_core::{
    GroupName, Offset, PartitionId, ReadLimits, Record, StoredRecord, Timestamp, Topics,
};
use iot_stream::rules::{RuleProcessor, RuleSet, compile};
use iot_stream::window::{OrderingPolicy, WindowSpec};
use iot_stream::{Context, Error, HostConfig, ProcessorHost, ReferenceData};
use serde_json::{Value, json};

const ISSUE_RULE: &str = "SELECT deviceId, AVG(temperature) AS t INTO alerts FROM telemetry TIMESTAMP BY time GROUP BY deviceId, TumblingWindow(second, 30) HAVING t > 80";

fn stored(offset: u64, key: &str, payload: Value, enqueued_ms: u64) -> StoredRecord {
    StoredRecord::new(
        PartitionId(0),
        Offset(offset),
        Timestamp::from_unix_millis(enqueued_ms),
        Record::new(key, payload.to_string()).with_header("subject", "telemetry"),
    )
}

fn iso(secs: u64) -> String {
    // 2024-01-01T00:00:00Z is 1 704 067 200 s.
    let t = 1_704_067_200 + secs;
    let (h, m, s) = (t % 86_400 / 3600, t % 3600 / 60, t % 60);
    format!("2024-01-01T{h:02}:{m:02}:{s:02}Z")
}

fn run(rules: &RuleSet, input: &[StoredRecord]) -> Vec<(String, Value)> {
    let mut p = RuleProcessor::new(rules.clone(), "telemetry");
    let mut ctx = Context::new(PartitionId(0), ReferenceData::new());
    p.run(input, &mut ctx).unwrap();
    p.flush(&mut ctx).unwrap();
    ctx.take_emitted()
        .into_iter()
        .map(|(topic, r)| (topic, serde_json::from_slice(&r.payload).unwrap()))
        .collect()
}

#[test]
fn the_issue_rule_compiles_and_alerts() {
    let rule = compile(ISSUE_RULE).unwrap();
    assert_eq!(rule.input(), "telemetry");
    assert_eq!(rule.output(), "alerts");
    assert_eq!(
        rule.window(),
        Some(WindowSpec::Tumbling {
            size: std::time::Duration::from_secs(30)
        })
    );

    let rules = RuleSet::new(OrderingPolicy::replay());
    rules.add("hot", ISSUE_RULE).unwrap();
    // dev-1 averages 85 in (0,30], 70 in (30,60]; dev-2 averages 90 in (0,30].
    let input = vec![
        stored(
            0,
            "dev-1",
            json!({"deviceId": "dev-1", "temperature": 80, "time": iso(5)}),
            0,
        ),
        stored(
            1,
            "dev-2",
            json!({"deviceId": "dev-2", "temperature": 90, "time": iso(6)}),
            0,
        ),
        stored(
            2,
            "dev-1",
            json!({"deviceId": "dev-1", "temperature": 90, "time": iso(30)}),
            0,
        ),
        stored(
            3,
            "dev-1",
            json!({"deviceId": "dev-1", "temperature": 70, "time": iso(31)}),
            0,
        ),
    ];
    let out = run(&rules, &input);
    assert_eq!(
        out,
        vec![
            ("alerts".to_owned(), json!({"deviceId": "dev-1", "t": 85.0})),
            ("alerts".to_owned(), json!({"deviceId": "dev-2", "t": 90.0})),
        ]
    );
}

#[test]
fn asa_sliding_vector_through_sql() {
    let rules = RuleSet::new(OrderingPolicy::replay());
    rules
        .add(
            "slide",
            "SELECT System.Timestamp() AS at, COUNT(*) AS n FROM telemetry TIMESTAMP BY time \
             GROUP BY SlidingWindow(second, 10) HAVING COUNT(*) >= 3",
        )
        .unwrap();
    let at = |s: u64| format!("2024-01-01T10:15:{s:02}Z");
    let input: Vec<_> = [10, 12, 15, 15, 27]
        .iter()
        .enumerate()
        .map(|(i, s)| stored(i as u64, "k", json!({"time": at(*s)}), 0))
        .collect();
    let out: Vec<_> = run(&rules, &input).into_iter().map(|(_, v)| v).collect();
    assert_eq!(
        out,
        vec![
            json!({"at": "2024-01-01T10:15:15.000000Z", "n": 4}),
            json!({"at": "2024-01-01T10:15:20.000000Z", "n": 3}),
        ]
    );
}

#[test]
fn projection_with_where_headers_and_nested_fields() {
    let rules = RuleSet::new(OrderingPolicy::replay());
    rules
        .add(
            "door",
            "SELECT deviceId AS id, state.door AS door, header('subject') AS s, temperature * 2 + 1 AS x \
             INTO doors FROM telemetry WHERE state.door = 'open' AND NOT temperature IS NULL",
        )
        .unwrap();
    rules
        .add("all", "SELECT * INTO copy FROM telemetry")
        .unwrap();
    rules
        .add("other", "SELECT * INTO elsewhere FROM other_topic")
        .unwrap();
    let input = vec![
        stored(
            0,
            "dev-1",
            json!({"state": {"door": "open"}, "temperature": 20}),
            0,
        ),
        stored(
            1,
            "dev-1",
            json!({"state": {"door": "closed"}, "temperature": 20}),
            0,
        ),
        stored(2, "dev-1", json!({"state": {"door": "open"}}), 0),
    ];
    let out = run(&rules, &input);
    let doors: Vec<_> = out
        .iter()
        .filter(|(t, _)| t == "doors")
        .map(|(_, v)| v.clone())
        .collect();
    assert_eq!(
        doors,
        vec![json!({"id": "dev-1", "door": "open", "s": "telemetry", "x": 41.0})]
    );
    assert_eq!(out.iter().filter(|(t, _)| t == "copy").count(), 3);
    assert!(
        out.iter().all(|(t, _)| t != "elsewhere"),
        "rules of other topics do not run"
    );
}

#[test]
fn every_window_kind_parses() {
    for (sql, spec) in [
        (
            "HoppingWindow(minute, 10, 5)",
            WindowSpec::Hopping {
                size: std::time::Duration::from_secs(600),
                hop: std::time::Duration::from_secs(300),
            },
        ),
        (
            "SessionWindow(second, 5, 60)",
            WindowSpec::Session {
                timeout: std::time::Duration::from_secs(5),
                max_duration: std::time::Duration::from_secs(60),
            },
        ),
        (
            "SlidingWindow(ms, 500)",
            WindowSpec::Sliding {
                size: std::time::Duration::from_millis(500),
            },
        ),
    ] {
        let rule = compile(&format!("SELECT deviceId, MAX(v) AS m, MIN(v), SUM(v), LAST(v), COUNT(v) FROM telemetry GROUP BY deviceId, {sql}")).unwrap();
        assert_eq!(rule.window(), Some(spec));
    }
}

fn position(sql: &str) -> (u64, u64, String) {
    match compile(sql) {
        Err(Error::Rule {
            line,
            column,
            reason,
        }) => (line, column, reason),
        other => panic!("{sql}: expected a rule error, got {other:?}"),
    }
}

#[test]
fn unsupported_syntax_is_an_error_with_its_position() {
    let (l, c, r) = position("SELECT a FROM t JOIN u ON t.a = u.b");
    assert_eq!((l, c), (1, 22), "{r}"); // the joined source
    let (l, c, _) = position("SELECT a\nFROM telemetry\nGROUP BY a");
    assert_eq!((l, c), (3, 10), "GROUP BY without a window");
    let (l, c, r) = position(
        "SELECT deviceId, temperature FROM telemetry GROUP BY deviceId, TumblingWindow(second, 5)",
    );
    assert_eq!((l, c), (1, 18), "{r}");
    let (l, c, _) = position("SELECT AVG(x) FROM telemetry");
    assert_eq!((l, c), (1, 8));
    let (l, _, r) = position("SELECT a FROM telemetry TIMESTAMP BY\n  nosuchfn(time) WHERE a > 1");
    assert_eq!(l, 2, "{r}");
    let (l, c, r) = position("SELECT a FRM telemetry");
    assert_eq!(l, 1, "{r}");
    assert!(c > 0);
    let (_, _, r) =
        position("SELECT deviceId FROM telemetry GROUP BY deviceId, TumblingWindow(fortnight, 1)");
    assert!(r.contains("fortnight"));
    assert!(compile("DELETE FROM telemetry").is_err());
    assert!(compile("SELECT DISTINCT a FROM telemetry").is_err());
    assert!(compile("SELECT a FROM telemetry ORDER BY a").is_err());
    assert!(compile("SELECT a FROM telemetry; SELECT b FROM telemetry").is_err());
    assert!(compile("").is_err());
}

#[test]
fn rules_are_managed_at_run_time() {
    let rules = RuleSet::new(OrderingPolicy::replay());
    rules
        .add("copy", "SELECT * INTO copies FROM telemetry")
        .unwrap();
    assert!(matches!(
        rules.add("copy", "SELECT * FROM telemetry"),
        Err(Error::AlreadyExists { .. })
    ));
    assert!(matches!(rules.enable("nope"), Err(Error::NotFound { .. })));
    let mut p = RuleProcessor::new(rules.clone(), "telemetry");
    let mut ctx = Context::new(PartitionId(0), ReferenceData::new());
    p.run(&[stored(0, "d", json!({}), 0)], &mut ctx).unwrap();
    assert_eq!(ctx.take_emitted().len(), 1);
    rules.disable("copy").unwrap();
    p.run(&[stored(1, "d", json!({}), 0)], &mut ctx).unwrap();
    assert_eq!(ctx.take_emitted().len(), 0, "disabled rules do not run");
    rules.enable("copy").unwrap();
    rules
        .add("second", "SELECT deviceId INTO ids FROM telemetry")
        .unwrap();
    p.run(&[stored(2, "d", json!({}), 0)], &mut ctx).unwrap();
    let topics: Vec<_> = ctx.take_emitted().into_iter().map(|(t, _)| t).collect();
    assert_eq!(topics, vec!["copies", "ids"]);
    rules.remove("copy").unwrap();
    assert_eq!(rules.list().len(), 1);
}

#[tokio::test]
async fn rules_run_in_the_host() {
    let topics = Arc::new(Topics::memory(2));
    let host = ProcessorHost::new(topics.clone());
    let rules = RuleSet::new(OrderingPolicy::replay());
    rules.add("hot", ISSUE_RULE).unwrap();
    let group = host
        .start(
            "telemetry",
            GroupName::new("rules").unwrap(),
            Arc::new(rules.processor("telemetry")),
            HostConfig::default(),
        )
        .await
        .unwrap();
    let producer = iot_core::Producer::new(topics.topic("telemetry").await.unwrap());
    for (i, temp) in [85, 95, 60].iter().enumerate() {
        let body =
            json!({"deviceId": "dev-9", "temperature": temp, "time": iso(10 + 30 * i as u64)});
        producer
            .send(Record::new("dev-9", body.to_string()))
            .await
            .unwrap();
    }
    group.wait_caught_up().await.unwrap();
    group.shutdown().await.unwrap();
    let alerts = topics.topic("alerts").await.unwrap();
    let mut got = Vec::new();
    for p in 0..2 {
        for r in alerts
            .read(PartitionId(p), Offset(0), ReadLimits::default())
            .await
            .unwrap()
        {
            got.push(serde_json::from_slice::<Value>(&r.record.payload).unwrap());
        }
    }
    // Windows (0,30] = 85 and (30,60] = 95 are closed by later events; (60,90] is still open.
    assert_eq!(
        got,
        vec![
            json!({"deviceId": "dev-9", "t": 85.0}),
            json!({"deviceId": "dev-9", "t": 95.0})
        ]
    );
}

mod no_panics {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #![proptest_config(ProptestConfig { cases: 300, ..ProptestConfig::default() })]

        /// Any text compiles or is refused; nothing panics.
        #[test]
        fn any_text(sql in "(SELECT|FROM|WHERE|GROUP BY|HAVING|TIMESTAMP BY|INTO|AVG|\\(|\\)|,|\\*|[a-z]{1,3}|'x'|[0-9]{1,3}|>|=| |\n){0,30}") {
            let _ = compile(&sql);
        }

        /// Any payload and enqueued time run through aggregating and projecting rules.
        #[test]
        fn any_payload(payloads in prop::collection::vec((prop::collection::vec(any::<u8>(), 0..40), any::<u64>()), 1..20),
                       json_like in prop::collection::vec(("[a-z]{0,3}", prop_oneof![Just(json!(null)), any::<f64>().prop_map(|f| json!(f)), "[0-9T:Z-]{0,25}".prop_map(|s| json!(s))]), 0..5)) {
            let rules = RuleSet::new(OrderingPolicy::default());
            rules.add("a", ISSUE_RULE).unwrap();
            rules.add("b", "SELECT deviceId, a.b * 2 AS x, System.Timestamp() AS t INTO o FROM telemetry TIMESTAMP BY t WHERE x > 1 OR NOT y IS NULL").unwrap();
            rules.add("c", "SELECT COUNT(*) AS n, LAST(v) FROM telemetry TIMESTAMP BY time GROUP BY SessionWindow(ms, 5, 50)").unwrap();
            let mut input = Vec::new();
            for (i, (bytes, t)) in payloads.iter().enumerate() {
                let mut r = stored(i as u64, "k", json!({}), t / 1000);
                r.record.payload = bytes.clone().into();
                input.push(r);
            }
            let obj: serde_json::Map<String, Value> = json_like.into_iter().collect();
            input.push(stored(99, "k", Value::Object(obj), 0));
            let _ = run(&rules, &input);
        }
    }
}
