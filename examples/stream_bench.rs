//! Throughput of stream processing on one core, each figure beside a hand-written loop doing the
//! same work on the same records in the same run.
//!
//! ```sh
//! cargo run --release --example stream_bench              # 2 000 000 records, 10 000 devices
//! cargo run --release --example stream_bench -- --quick   # a smaller smoke run
//! ```
//!
//! The input is log records (`StoredRecord`s, as a consumer reads them) with small JSON payloads
//! `{"deviceId":"dev-00042","temperature":21.53,"humidity":40}`, 10 000 devices, enqueued one
//! millisecond apart (event time = enqueued time). Every figure includes parsing the payloads: the
//! rules parse only the fields they use (one borrowed serde_json scan, see docs/stream.md "The hot
//! path"), and so do the hand loops (a borrowed `#[derive(Deserialize)]` struct, the same
//! technique written the usual way); the hand tumbling loop keeps a `HashMap<String, (sum,
//! count)>` per window, as one would by hand; the last-known-values loops parse whole documents
//! (they store them).
//! Each measurement runs three times, alternating engine and hand loop, and reports the medians.
//!
//! | key | what |
//! |---|---|
//! | `filter_per_s` | rule `SELECT * INTO hot FROM telemetry WHERE temperature > 25` |
//! | `filter_vs_hand` | its ratio to a loop parsing each payload and keeping those over 25 |
//! | `tumbling_avg_per_s` | rule `SELECT deviceId, AVG(temperature) AS t … GROUP BY deviceId, TumblingWindow(second, 10)` |
//! | `tumbling_vs_hand` | its ratio to a loop keeping a (sum, count) per device per 10 s window |
//! | `lkv_per_s` | the `LastKnownValues` processor into a `MemoryStateStore` (merge patch, source times, redelivery positions) |
//! | `lkv_vs_hand` | its ratio to a loop merge-patching each payload into a `HashMap` of documents |
#![allow(clippy::print_stdout, clippy::unwrap_used)]

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Instant;

use iot_sdk::core::json::merge_patch;
use iot_sdk::core::{Offset, PartitionId, Record, StoredRecord, Timestamp};
use iot_sdk::stream::processors::LastKnownValues;
use iot_sdk::stream::rules::{RuleProcessor, RuleSet};
use iot_sdk::stream::window::OrderingPolicy;
use iot_sdk::stream::{Context, MemoryStateStore, ReferenceData, StreamProcessor};
use serde::Deserialize;
use serde_json::Value;

const DEVICES: usize = 10_000;
const BATCH: usize = 1000;
const WINDOW_US: i64 = 10_000_000;

fn records(n: usize) -> Vec<StoredRecord> {
    let start = 1_700_000_000_000u64;
    (0..n)
        .map(|i| {
            let device = format!("dev-{:05}", (i * 7919) % DEVICES);
            let temp = 15.0 + ((i * 37) % 200) as f64 / 10.0;
            let payload = format!(
                r#"{{"deviceId":"{device}","temperature":{temp:.2},"humidity":{}}}"#,
                i % 100
            );
            StoredRecord::new(
                PartitionId(0),
                Offset(i as u64),
                Timestamp::from_unix_millis(start + i as u64),
                Record::new(device, payload),
            )
        })
        .collect()
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// Runs `f` three times alternately with `g`; returns (median rate of f, median rate of g).
fn compare(
    n: usize,
    mut f: impl FnMut() -> usize,
    mut g: impl FnMut() -> usize,
) -> (f64, f64, usize, usize) {
    let (mut a, mut b) = (Vec::new(), Vec::new());
    let (mut out_f, mut out_g) = (0, 0);
    for _ in 0..3 {
        let t = Instant::now();
        out_f = f();
        a.push(n as f64 / t.elapsed().as_secs_f64());
        let t = Instant::now();
        out_g = g();
        b.push(n as f64 / t.elapsed().as_secs_f64());
    }
    (median(a), median(b), out_f, out_g)
}

fn run_rule(sql: &str, input: &[StoredRecord]) -> usize {
    let rules = RuleSet::new(OrderingPolicy::default());
    rules.add("bench", sql).unwrap();
    let mut p = RuleProcessor::new(rules, "telemetry");
    let mut emitted = 0;
    for batch in input.chunks(BATCH) {
        let mut ctx = Context::new(PartitionId(0), ReferenceData::new());
        p.run(batch, &mut ctx).unwrap();
        emitted += ctx.take_emitted().len();
    }
    let mut ctx = Context::new(PartitionId(0), ReferenceData::new());
    p.flush(&mut ctx).unwrap();
    emitted + ctx.take_emitted().len()
}

/// What the hand loops parse: only the fields they use, as a typed struct (serde skips the rest).
#[derive(Deserialize)]
struct Reading<'a> {
    #[serde(rename = "deviceId", borrow)]
    device_id: Option<std::borrow::Cow<'a, str>>,
    temperature: Option<f64>,
}

/// What the filter's hand loop parses: the one field it tests.
#[derive(Deserialize)]
struct Temperature {
    temperature: Option<f64>,
}

fn hand_filter(input: &[StoredRecord]) -> usize {
    let mut out: Vec<(String, Record)> = Vec::new();
    let mut n = 0;
    for batch in input.chunks(BATCH) {
        for r in batch {
            let Ok(v) = serde_json::from_slice::<Temperature>(&r.record.payload) else {
                continue;
            };
            if v.temperature.is_some_and(|t| t > 25.0) {
                out.push(("hot".to_owned(), r.record.clone()));
            }
        }
        n += out.len();
        out.clear();
    }
    n
}

fn hand_tumbling(input: &[StoredRecord]) -> usize {
    let mut windows: BTreeMap<i64, HashMap<String, (f64, u64)>> = BTreeMap::new();
    let mut out: Vec<(String, Record)> = Vec::new();
    let mut n = 0;
    let emit = |end: i64, keys: HashMap<String, (f64, u64)>, out: &mut Vec<(String, Record)>| {
        let mut keys: Vec<_> = keys.into_iter().collect();
        keys.sort_unstable_by(|a, b| a.0.cmp(&b.0));
        for (device, (sum, count)) in keys {
            let body = serde_json::json!({"deviceId": device, "t": sum / count as f64});
            out.push((
                "out".to_owned(),
                Record::new(device, body.to_string())
                    .with_device_time(Timestamp::from_unix_micros(end as u64)),
            ));
        }
    };
    for batch in input.chunks(BATCH) {
        for r in batch {
            let Ok(v) = serde_json::from_slice::<Reading>(&r.record.payload) else {
                continue;
            };
            let t = r.enqueued_time.as_unix_micros() as i64;
            let end = (t + WINDOW_US - 1).div_euclid(WINDOW_US) * WINDOW_US;
            while let Some(entry) = windows.first_entry() {
                if *entry.key() >= t {
                    break;
                }
                let (e, keys) = entry.remove_entry();
                emit(e, keys, &mut out);
            }
            let device = v.device_id.as_deref().unwrap_or(&r.record.key);
            let Some(temp) = v.temperature else {
                continue;
            };
            let keys = windows.entry(end).or_default();
            match keys.get_mut(device) {
                Some(acc) => {
                    acc.0 += temp;
                    acc.1 += 1;
                }
                None => {
                    keys.insert(device.to_owned(), (temp, 1));
                }
            }
        }
        n += out.len();
        out.clear();
    }
    while let Some((e, keys)) = windows.pop_first() {
        emit(e, keys, &mut out);
    }
    n + out.len()
}

fn lkv(input: &[StoredRecord], rt: &tokio::runtime::Runtime) -> usize {
    let store = Arc::new(MemoryStateStore::new());
    let mut p = LastKnownValues::new(store.clone());
    rt.block_on(async {
        for batch in input.chunks(BATCH) {
            let mut ctx = Context::new(PartitionId(0), ReferenceData::new());
            p.process(batch, &mut ctx).await.unwrap();
        }
    });
    DEVICES
}

fn hand_lkv(input: &[StoredRecord]) -> usize {
    let mut docs: HashMap<String, Value> = HashMap::new();
    for r in input {
        let Ok(patch) = serde_json::from_slice::<Value>(&r.record.payload) else {
            continue;
        };
        let doc = match docs.get_mut(r.record.key.as_str()) {
            Some(d) => d,
            None => docs
                .entry(r.record.key.clone())
                .or_insert_with(|| Value::Object(Default::default())),
        };
        // The hand loop's documents are the bench's own flat payloads: never too deep.
        let _ = merge_patch(doc, &patch, 64);
    }
    docs.len()
}

/// Throughput of stream processing on one core, each figure beside a hand-written loop.
#[derive(Debug, clap::Parser)]
struct Cli {
    /// A smaller smoke run: 200 000 records instead of 2 000 000.
    #[arg(long)]
    quick: bool,
}

fn main() {
    let quick = <Cli as clap::Parser>::parse().quick;
    let n = if quick { 200_000 } else { 2_000_000 };
    let input = records(n);
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();

    let filter_sql = "SELECT * INTO hot FROM telemetry WHERE temperature > 25";
    let (filter, filter_hand, a, b) =
        compare(n, || run_rule(filter_sql, &input), || hand_filter(&input));
    assert_eq!(a, b, "filter outputs differ");

    let tumbling_sql = "SELECT deviceId, AVG(temperature) AS t INTO out FROM telemetry GROUP BY deviceId, TumblingWindow(second, 10)";
    let (tumbling, tumbling_hand, a, b) = compare(
        n,
        || run_rule(tumbling_sql, &input),
        || hand_tumbling(&input),
    );
    assert_eq!(a, b, "tumbling outputs differ");

    let (lkv_rate, lkv_hand, a, b) = compare(n, || lkv(&input, &rt), || hand_lkv(&input));
    assert_eq!(a, b, "device counts differ");

    println!(
        "stream_bench: {n} records, {DEVICES} devices, one core, parsing included (medians of 3)"
    );
    println!("| workload | engine (events/s) | hand loop (events/s) | ratio |");
    println!("|---|---:|---:|---:|");
    for (name, x, y) in [
        ("filter (WHERE temperature > 25)", filter, filter_hand),
        ("tumbling AVG per device, 10 s", tumbling, tumbling_hand),
        ("last known values", lkv_rate, lkv_hand),
    ] {
        println!("| {name} | {x:.0} | {y:.0} | {:.2} |", x / y);
    }
    let json = serde_json::json!({
        "records": n,
        "devices": DEVICES,
        "filter_per_s": filter.round(),
        "filter_hand_per_s": filter_hand.round(),
        "filter_vs_hand": (filter / filter_hand * 100.0).round() / 100.0,
        "tumbling_avg_per_s": tumbling.round(),
        "tumbling_hand_per_s": tumbling_hand.round(),
        "tumbling_vs_hand": (tumbling / tumbling_hand * 100.0).round() / 100.0,
        "lkv_per_s": lkv_rate.round(),
        "lkv_hand_per_s": lkv_hand.round(),
        "lkv_vs_hand": (lkv_rate / lkv_hand * 100.0).round() / 100.0,
    });
    println!("{json}");
}
