//! Window semantics: the test vectors of Azure Stream Analytics' documentation, our own vectors
//! for tumbling, hopping and session windows, and proptests of every window kind against a
//! brute-force recomputation from the definitions.
//!
//! Sources of the documented vectors:
//! * "Windowing functions (Azure Stream Analytics)" and "Sliding window" reference pages
//!   (learn.microsoft.com/azure/stream-analytics/stream-analytics-window-functions,
//!   learn.microsoft.com/stream-analytics-query/sliding-window-azure-stream-analytics):
//!   events at 10:15:10, :12, :15, :15, :27 with `SlidingWindow(second, 10)` and
//!   `HAVING COUNT(*) >= 3` give (10:15:15, 4) and (10:15:20, 3); a 5 s sliding window over events
//!   at 34, 38, 42 outputs at 34, 38, 39, 42, 43 and not at 47.
//! * "Understand time handling in Azure Stream Analytics"
//!   (learn.microsoft.com/azure/stream-analytics/stream-analytics-time-handling): late arrival
//!   tolerance 15 s, out-of-order tolerance 8 s, (event, arrival) → timestamp: 10:00/10:40 → 10:25,
//!   10:30/10:41 → 10:30, 10:42/10:42 → 10:42, 10:38/10:43 → 10:38, 10:35/10:45 → 10:37.
#![allow(clippy::unwrap_used)]

use std::time::Duration;

use iot_stream::window::{
    AggKind, LateAction, Micros, OrderingPolicy, Sequencer, WindowEngine, WindowResult, WindowSpec,
};
use proptest::prelude::*;
use serde_json::{Value, json};

const S: Micros = 1_000_000;

fn hms(h: i64, m: i64, s: i64) -> Micros {
    ((h * 60 + m) * 60 + s) * S
}

/// Runs events `(key, t, value)` in order with arrival = event time, then flushes.
fn run(spec: WindowSpec, events: &[(&str, Micros, f64)]) -> Vec<WindowResult> {
    let aggs = vec![
        AggKind::Count,
        AggKind::Sum,
        AggKind::Min,
        AggKind::Max,
        AggKind::Last,
    ];
    let mut engine = WindowEngine::new(spec, aggs, OrderingPolicy::replay()).unwrap();
    let mut out = Vec::new();
    for (k, t, v) in events {
        engine.push(
            *k,
            *t,
            *t,
            vec![json!(true), json!(v), json!(v), json!(v), json!(v)],
            &mut out,
        );
    }
    engine.flush(&mut out);
    out
}

fn ends_and_counts(out: &[WindowResult]) -> Vec<(Micros, u64)> {
    out.iter()
        .map(|r| (r.end, r.values[0].as_u64().unwrap()))
        .collect()
}

#[test]
fn asa_sliding_window_having_count_at_least_3() {
    let events: Vec<_> = [10, 12, 15, 15, 27]
        .iter()
        .map(|s| ("k", hms(10, 15, *s), 1.0))
        .collect();
    let out = run(
        WindowSpec::Sliding {
            size: Duration::from_secs(10),
        },
        &events,
    );
    let having: Vec<_> = ends_and_counts(&out)
        .into_iter()
        .filter(|(_, c)| *c >= 3)
        .collect();
    assert_eq!(having, vec![(hms(10, 15, 15), 4), (hms(10, 15, 20), 3)]);
}

#[test]
fn asa_sliding_window_outputs_when_content_changes() {
    let events: Vec<_> = [34, 38, 42].iter().map(|s| ("k", *s * S, 1.0)).collect();
    let out = run(
        WindowSpec::Sliding {
            size: Duration::from_secs(5),
        },
        &events,
    );
    let ends: Vec<_> = out.iter().map(|r| r.end / S).collect();
    assert_eq!(
        ends,
        vec![34, 38, 39, 42, 43],
        "and not 47, when the window is empty"
    );
}

#[test]
fn asa_time_handling_example() {
    let mut seq = Sequencer::new(OrderingPolicy {
        late_arrival: Some(Duration::from_secs(15)),
        out_of_order: Duration::from_secs(8),
        action: LateAction::Adjust,
    });
    let rows = [
        ((10, 0), (10, 40), (10, 25)),
        ((10, 30), (10, 41), (10, 30)),
        ((10, 42), (10, 42), (10, 42)),
        ((10, 38), (10, 43), (10, 38)),
        ((10, 35), (10, 45), (10, 37)),
    ];
    // The example's times are minutes:seconds past an hour.
    let t = |(m, s): (i64, i64)| hms(0, m, s);
    for (event, arrival, expected) in rows {
        assert_eq!(
            seq.admit(t(event), t(arrival)),
            Some(t(expected)),
            "{event:?}/{arrival:?}"
        );
    }
    // With the drop policy the adjusted events are dropped instead.
    let mut drop = Sequencer::new(OrderingPolicy {
        late_arrival: Some(Duration::from_secs(15)),
        out_of_order: Duration::from_secs(8),
        action: LateAction::Drop,
    });
    let kept: Vec<_> = rows
        .iter()
        .map(|(e, a, _)| drop.admit(t(*e), t(*a)).is_some())
        .collect();
    assert_eq!(kept, vec![false, true, true, true, false]);
}

#[test]
fn tumbling_vector() {
    // (0,10] holds 1 and 10 (the end is inclusive), (10,20] holds 11 and 20, (20,30] holds 25.
    let events: Vec<_> = [(1, 1.0), (10, 2.0), (11, 3.0), (20, 4.0), (25, 5.0)]
        .iter()
        .map(|(s, v)| ("k", *s * S, *v))
        .collect();
    let out = run(
        WindowSpec::Tumbling {
            size: Duration::from_secs(10),
        },
        &events,
    );
    assert_eq!(
        ends_and_counts(&out),
        vec![(10 * S, 2), (20 * S, 2), (30 * S, 1)]
    );
    assert_eq!(out[0].values[1], json!(3.0));
    assert_eq!(out[1].values[4], json!(4.0), "last = the latest event");
    assert_eq!(out[2].start, 20 * S);
}

#[test]
fn hopping_vector() {
    // Size 10, hop 5: windows end at multiples of 5 and hold (end-10, end].
    let events: Vec<_> = [3, 7, 12].iter().map(|s| ("k", *s * S, 1.0)).collect();
    let out = run(
        WindowSpec::Hopping {
            size: Duration::from_secs(10),
            hop: Duration::from_secs(5),
        },
        &events,
    );
    assert_eq!(
        ends_and_counts(&out),
        vec![(5 * S, 1), (10 * S, 2), (15 * S, 2), (20 * S, 1)]
    );
}

#[test]
fn session_vector() {
    // Timeout 5, max duration 20 (boundaries at 20, 40, …):
    // {1,3} ends 3+5=8; {9,12} ends 17; {19} ends at the boundary 20 (19+5 > 20);
    // {21} ends 26; {30} ends 35.
    let events: Vec<_> = [1, 3, 9, 12, 19, 21, 30]
        .iter()
        .map(|s| ("k", *s * S, 1.0))
        .collect();
    let out = run(
        WindowSpec::Session {
            timeout: Duration::from_secs(5),
            max_duration: Duration::from_secs(20),
        },
        &events,
    );
    let got: Vec<_> = out
        .iter()
        .map(|r| (r.start / S, r.end / S, r.values[0].as_u64().unwrap()))
        .collect();
    assert_eq!(
        got,
        vec![(1, 8, 2), (9, 17, 2), (19, 20, 1), (21, 26, 1), (30, 35, 1)]
    );
}

#[test]
fn windows_are_emitted_as_the_watermark_passes_and_keys_are_separate() {
    let spec = WindowSpec::Tumbling {
        size: Duration::from_secs(10),
    };
    let mut engine = WindowEngine::new(spec, vec![AggKind::Avg], OrderingPolicy::replay()).unwrap();
    let mut out = Vec::new();
    engine.push("a", 5 * S, 5 * S, vec![json!(1)], &mut out);
    engine.push("b", 6 * S, 6 * S, vec![json!(3)], &mut out);
    assert!(out.is_empty());
    engine.push("a", 10 * S, 10 * S, vec![json!(5)], &mut out);
    assert!(out.is_empty(), "an event at exactly 10 may still come");
    engine.push("a", 11 * S, 11 * S, vec![json!(7)], &mut out);
    let got: Vec<_> = out
        .iter()
        .map(|r| (r.key.as_str(), r.end, r.values[0].clone()))
        .collect();
    assert_eq!(
        got,
        vec![("a", 10 * S, json!(3.0)), ("b", 10 * S, json!(3.0))]
    );
}

#[test]
fn late_arrival_tick_closes_windows_when_input_is_idle() {
    let spec = WindowSpec::Tumbling {
        size: Duration::from_secs(10),
    };
    let mut engine =
        WindowEngine::new(spec, vec![AggKind::Count], OrderingPolicy::default()).unwrap();
    let mut out = Vec::new();
    engine.push("a", 5 * S, 5 * S, vec![json!(1)], &mut out);
    engine.tick(14 * S, &mut out);
    assert!(
        out.is_empty(),
        "watermark 14-5 = 9 does not pass the end 10"
    );
    engine.tick(16 * S, &mut out);
    assert_eq!(out.len(), 1);
}

#[test]
fn invalid_specs_are_refused() {
    for spec in [
        WindowSpec::Tumbling {
            size: Duration::ZERO,
        },
        WindowSpec::Hopping {
            size: Duration::from_secs(1),
            hop: Duration::from_secs(2),
        },
        WindowSpec::Session {
            timeout: Duration::from_secs(1),
            max_duration: Duration::ZERO,
        },
    ] {
        assert!(WindowEngine::new(spec, vec![], OrderingPolicy::replay()).is_err());
    }
}

// ---------------------------------------------------------------------------------------------
// Brute force from the definitions.

/// (key, end, count, sum, min, max, last)
type Row = (String, Micros, u64, i64, i64, i64, i64);

/// Aggregates over the events `(t, index, value)` in a window (index orders equal times).
fn row(key: &str, end: Micros, events: &[(Micros, usize, i64)]) -> Row {
    let values: Vec<i64> = events.iter().map(|e| e.2).collect();
    let last = events
        .iter()
        .max_by_key(|e| (e.0, e.1))
        .map(|e| e.2)
        .unwrap();
    (
        key.to_owned(),
        end,
        events.len() as u64,
        values.iter().sum(),
        *values.iter().min().unwrap(),
        *values.iter().max().unwrap(),
        last,
    )
}

fn brute(spec: WindowSpec, events: &[(u8, Micros, i64)]) -> Vec<Row> {
    let mut rows = Vec::new();
    for key in 0..3u8 {
        let mine: Vec<(Micros, usize, i64)> = events
            .iter()
            .enumerate()
            .filter(|(_, e)| e.0 == key)
            .map(|(i, e)| (e.1, i, e.2))
            .collect();
        if mine.is_empty() {
            continue;
        }
        let k = key.to_string();
        let inside = |lo: Micros, hi: Micros| -> Vec<(Micros, usize, i64)> {
            mine.iter()
                .copied()
                .filter(|e| lo < e.0 && e.0 <= hi)
                .collect()
        };
        match spec {
            WindowSpec::Tumbling { size } | WindowSpec::Hopping { size, .. } => {
                let size = size.as_micros() as Micros;
                let hop = match spec {
                    WindowSpec::Hopping { hop, .. } => hop.as_micros() as Micros,
                    _ => size,
                };
                let max_t = mine.iter().map(|e| e.0).max().unwrap();
                let mut end = 0;
                while end - size < max_t + size {
                    let w = inside(end - size, end);
                    if !w.is_empty() {
                        rows.push(row(&k, end, &w));
                    }
                    end += hop;
                }
            }
            WindowSpec::Sliding { size } => {
                let size = size.as_micros() as Micros;
                let mut points: Vec<Micros> = mine.iter().flat_map(|e| [e.0, e.0 + size]).collect();
                points.sort();
                points.dedup();
                for p in points {
                    let w = inside(p - size, p);
                    if !w.is_empty() {
                        rows.push(row(&k, p, &w));
                    }
                }
            }
            WindowSpec::Session {
                timeout,
                max_duration,
            } => {
                let (timeout, max) = (
                    timeout.as_micros() as Micros,
                    max_duration.as_micros() as Micros,
                );
                let mut sorted = mine.clone();
                sorted.sort_by_key(|e| (e.0, e.1));
                let mut i = 0;
                while i < sorted.len() {
                    let first = sorted[i].0;
                    let boundary = (first / max + 1) * max;
                    let mut last = first;
                    let mut j = i + 1;
                    while j < sorted.len() && sorted[j].0 <= (last + timeout).min(boundary) {
                        last = sorted[j].0;
                        j += 1;
                    }
                    rows.push(row(&k, (last + timeout).min(boundary), &sorted[i..j]));
                    i = j;
                }
            }
        }
    }
    rows.sort();
    rows
}

fn engine_rows(spec: WindowSpec, events: &[(u8, Micros, i64)], shuffled_arrival: bool) -> Vec<Row> {
    let aggs = vec![
        AggKind::Count,
        AggKind::Sum,
        AggKind::Min,
        AggKind::Max,
        AggKind::Last,
    ];
    let policy = if shuffled_arrival {
        // Unbounded tolerance: arrival times say nothing, every event is reordered.
        OrderingPolicy {
            late_arrival: None,
            out_of_order: Duration::from_secs(1_000_000),
            action: LateAction::Adjust,
        }
    } else {
        OrderingPolicy::replay()
    };
    let mut engine = WindowEngine::new(spec, aggs, policy).unwrap();
    let mut out = Vec::new();
    for (k, t, v) in events {
        let arrival = if shuffled_arrival { 0 } else { *t };
        let admitted = engine.push(
            k.to_string(),
            *t,
            arrival,
            vec![json!(true), json!(v), json!(v), json!(v), json!(v)],
            &mut out,
        );
        assert_eq!(
            admitted,
            Some(*t),
            "nothing is adjusted under these policies"
        );
    }
    engine.flush(&mut out);
    let as_i = |v: &Value| v.as_f64().unwrap() as i64;
    let mut rows: Vec<Row> = out
        .iter()
        .map(|r| {
            (
                r.key.clone(),
                r.end,
                r.values[0].as_u64().unwrap(),
                as_i(&r.values[1]),
                as_i(&r.values[2]),
                as_i(&r.values[3]),
                as_i(&r.values[4]),
            )
        })
        .collect();
    rows.sort();
    rows
}

fn spec() -> impl Strategy<Value = WindowSpec> {
    let d = |lo: u64, hi: u64| (lo..hi).prop_map(Duration::from_secs);
    prop_oneof![
        d(1, 20).prop_map(|size| WindowSpec::Tumbling { size }),
        (d(1, 6), 1u32..4).prop_map(|(hop, k)| WindowSpec::Hopping { size: hop * k, hop }),
        d(1, 20).prop_map(|size| WindowSpec::Sliding { size }),
        (d(1, 10), d(1, 30)).prop_map(|(timeout, max_duration)| WindowSpec::Session {
            timeout,
            max_duration
        }),
    ]
}

fn events() -> impl Strategy<Value = Vec<(u8, Micros, i64)>> {
    prop::collection::vec((0u8..3, 0i64..120, -50i64..50), 1..60)
        .prop_map(|v| v.into_iter().map(|(k, t, x)| (k, t * S, x)).collect())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 200, ..ProptestConfig::default() })]

    /// In-order input (sorted by time), emitted incrementally as the watermark moves.
    #[test]
    fn in_order_stream_equals_brute_force(spec in spec(), mut events in events()) {
        events.sort_by_key(|e| e.1);
        prop_assert_eq!(engine_rows(spec, &events, false), brute(spec, &events));
    }

    /// Out-of-order input within the tolerance is reordered by the buffer.
    #[test]
    fn out_of_order_stream_equals_brute_force(spec in spec(), events in events()) {
        prop_assert_eq!(engine_rows(spec, &events, true), brute(spec, &events));
    }
}

#[test]
fn extreme_times_do_not_panic() {
    let specs = [
        WindowSpec::Tumbling {
            size: Duration::from_secs(7),
        },
        WindowSpec::Hopping {
            size: Duration::from_secs(9),
            hop: Duration::from_secs(3),
        },
        WindowSpec::Sliding {
            size: Duration::from_secs(5),
        },
        WindowSpec::Session {
            timeout: Duration::from_secs(5),
            max_duration: Duration::from_secs(11),
        },
    ];
    for spec in specs {
        for policy in [OrderingPolicy::default(), OrderingPolicy::replay()] {
            let mut engine =
                WindowEngine::new(spec, vec![AggKind::Avg, AggKind::Last], policy).unwrap();
            let mut out = Vec::new();
            for (t, a) in [
                (Micros::MAX, 0),
                (0, Micros::MAX),
                (Micros::MIN, Micros::MIN),
                (-5, 3),
                (Micros::MAX - 1, Micros::MAX),
            ] {
                engine.push("k", t, a, vec![json!(1), json!("x")], &mut out);
                engine.tick(a, &mut out);
            }
            engine.flush(&mut out);
            assert!(!out.is_empty());
        }
    }
}

/// A window the clock closed is emitted once, and holds the retained offset at its oldest event
/// until the events' own watermark passes its end (so a replay rebuilds it whole).
#[test]
fn a_window_closed_by_the_clock_stays_retained_until_events_pass_it() {
    use iot_stream::window::Input;
    let policy = OrderingPolicy {
        late_arrival: Some(std::time::Duration::from_secs(1)),
        out_of_order: std::time::Duration::ZERO,
        action: LateAction::Adjust,
    };
    let spec = WindowSpec::Tumbling {
        size: std::time::Duration::from_secs(10),
    };
    let mut engine = WindowEngine::new(spec, vec![AggKind::Count], policy).unwrap();
    let mut out = Vec::new();
    let one = [Input::Number(1.0)];
    engine.push_at(0, "a", 5 * S, 5 * S, &one, &mut out);
    engine.push_at(1, "a", 6 * S, 6 * S, &one, &mut out);
    assert!(out.is_empty());
    engine.tick(12 * S, &mut out);
    assert_eq!(
        ends_and_counts(&out),
        vec![(10 * S, 2)],
        "closed by the clock"
    );
    engine.tick(13 * S, &mut out);
    assert_eq!(out.len(), 1, "emitted once");
    assert_eq!(engine.retained_offset(), Some(0), "still held for a replay");
    engine.push_at(2, "a", 20 * S, 20 * S, &one, &mut out);
    assert_eq!(out.len(), 1);
    assert_eq!(
        engine.retained_offset(),
        Some(2),
        "released once the events' watermark passed the window"
    );
}
