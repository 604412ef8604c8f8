//! The selective query of `registry_bench` alone (parse, plan, one page of ~500 records from a
//! `MemoryRegistry`), without PostgreSQL, the file registry or the rest of the workspace: for
//! timing the query path and for profiling it under callgrind.
//!
//! ```text
//! cargo run --release -p iot-registry --example registry_query                       # 1 000 000 devices
//! cargo run --release -p iot-registry --example registry_query -- --devices 200000 --buildings 40
//! valgrind --tool=callgrind --collect-atstart=no --toggle-collect='registry_query::one_query' \
//!     target/release/examples/registry_query --devices 200000 --buildings 40 --rounds 1
//! ```
//!
//! The fleet is `registry_bench`'s (same generator); `--buildings` below its 200 keeps a smaller
//! fleet's (building, floor) queries at about as many rows as the full benchmark's (501 on
//! average). Prints the p50 per round and a last-line JSON object.
#![allow(
    clippy::print_stdout,
    clippy::print_stderr,
    clippy::unwrap_used,
    clippy::expect_used
)]

use std::time::{Duration, Instant};

use iot_core::DeviceId;
use iot_registry::{
    DeviceDocument, DeviceRecord, MemoryRegistry, Page, PageRequest, Query, Registry,
};
use serde_json::{Value, json};

/// splitmix64, the generator of `registry_bench`, so the fleet is the same.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
    fn unit(&mut self) -> f64 {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64
    }
}

fn metadata(i: u64, buildings: u64) -> Value {
    let mut r = Rng(i.wrapping_mul(7919) ^ 0xDEAD_BEEF);
    let building = format!("B{:03}", r.below(buildings));
    let floor = r.below(10);
    json!({
        "room": format!("{building}-{floor}-{:02}", r.below(40)),
        "building": building,
        "floor": floor,
        "model": format!("M{}", r.below(10)),
        "firmware": format!("fw-1.{}.{}", r.below(20), r.below(5)),
        "geo": {"lat": 47.0 + r.unit() * 0.5, "lon": 8.0 + r.unit() * 0.5},
        "installed": format!("202{}-{:02}-{:02}", r.below(5), 1 + r.below(12), 1 + r.below(28)),
    })
}

#[derive(Debug, clap::Parser)]
struct Cli {
    /// Devices in the generated fleet.
    #[arg(long, default_value_t = 1_000_000)]
    devices: u64,
    /// Distinct buildings (`registry_bench` has 200).
    #[arg(long, default_value_t = 200)]
    buildings: u64,
    /// Rounds of the 300 queries.
    #[arg(long, default_value_t = 3)]
    rounds: usize,
    /// Also decode each page into `DeviceRecord`s inside the timed part (a page keeps its
    /// records encoded until asked; `registry_bench`'s `selective_decoded_p50_us`).
    #[arg(long)]
    decode: bool,
}

/// The benchmark's 300 queries, timed one by one as `registry_bench` times them (parse, plan,
/// fetch, one page of at most 1 000); returns the samples and the rows returned.
fn run_queries(
    registry: &MemoryRegistry,
    params: &[(String, u64)],
    decode: bool,
) -> (Vec<Duration>, usize) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    let mut samples = Vec::with_capacity(params.len());
    let mut rows = 0;
    for (building, floor) in params {
        let text = format!(
            "SELECT * FROM devices WHERE metadata.building = '{building}' AND metadata.floor = {floor}"
        );
        let start = Instant::now();
        let page = one_query(registry, &rt, &text, decode);
        samples.push(start.elapsed());
        assert!(page.0.continuation.is_none());
        rows += page.0.len();
    }
    (samples, rows)
}

/// The timed part of one query (the page, and its decoded records with `decode`, are dropped
/// by the caller, after the clock stops, as `registry_bench` drops them): the function
/// callgrind's `--toggle-collect` names.
#[inline(never)]
fn one_query(
    registry: &MemoryRegistry,
    rt: &tokio::runtime::Runtime,
    text: &str,
    decode: bool,
) -> (Page, Vec<DeviceRecord>) {
    let q = Query::parse(text).unwrap();
    let page = rt
        .block_on(registry.query(&q, &PageRequest::first(1000)))
        .unwrap();
    let records = if decode {
        page.records().unwrap()
    } else {
        Vec::new()
    };
    (page, records)
}

fn main() {
    let cli = <Cli as clap::Parser>::parse();
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    let registry = MemoryRegistry::new();
    let start = Instant::now();
    rt.block_on(async {
        for i in 0..cli.devices {
            let doc = DeviceDocument::with_metadata(metadata(i, cli.buildings)).unwrap();
            registry
                .create(&DeviceId::new(format!("dev-{i:07}")).unwrap(), doc)
                .await
                .unwrap();
        }
    });
    eprintln!(
        "loaded {} devices in {:.1} s",
        cli.devices,
        start.elapsed().as_secs_f64()
    );
    let mut r = Rng(42);
    let params: Vec<(String, u64)> = (0..300)
        .map(|_| (format!("B{:03}", r.below(cli.buildings)), r.below(10)))
        .collect();
    let mut p50s = Vec::new();
    let mut rows = 0;
    for round in 0..cli.rounds {
        let (mut samples, n) = run_queries(&registry, &params, cli.decode);
        samples.sort();
        let p50 = samples[samples.len() / 2].as_secs_f64() * 1e6;
        rows = n;
        eprintln!(
            "round {round}: p50 {p50:.1} µs, {:.1} rows a query",
            n as f64 / 300.0
        );
        p50s.push(p50);
    }
    println!(
        "{}",
        json!({"devices": cli.devices, "buildings": cli.buildings, "decode": cli.decode,
               "rows_per_query": rows as f64 / 300.0, "p50_us": p50s})
    );
}
