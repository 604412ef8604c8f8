//! Device registry benchmark: a generated fleet (1 M devices by default) in `MemoryRegistry`,
//! `FileRegistry` and PostgreSQL (JSONB with a GIN index), the same data and the same queries in
//! one run.
//!
//! ```text
//! cargo run --release --example registry_bench                      # 1 000 000 devices
//! cargo run --release --example registry_bench -- --devices 100000  # a quicker run
//! cargo run --release --example registry_bench -- --only-file-fsync  # durable registrations only
//! ```
//!
//! PostgreSQL is reached at `host=127.0.0.1 port=5432 dbname=test` as user `postgres` (then
//! `root`), or at the connection string in `REGISTRY_BENCH_PG`. The benchmark uses a fresh,
//! randomly named table and drops it at the end. `--no-pg` skips PostgreSQL (the ratios are then
//! absent). Prints a table, then, as its last line, one JSON object with the figures.
//!
//! Both sides do the same work in each figure. `selective_vs_pg` and `broad_vs_pg` compare
//! results as each store hands them over: our `Page` keeps its records encoded until the caller
//! decodes them, PostgreSQL's rows hold each document as JSON text. `selective_decoded_vs_pg`
//! adds decoding on both sides: our records into `DeviceRecord`s, PostgreSQL's documents parsed
//! into `serde_json` values.
#![allow(
    clippy::print_stdout,
    clippy::print_stderr,
    clippy::unwrap_used,
    clippy::expect_used
)]

use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::SinkExt;
use iot_core::DeviceId;
use iot_registry::{
    DeviceDocument, Durability, FileRegistry, FileRegistryConfig, MemoryRegistry, PageRequest,
    Query, Registry,
};
use serde_json::{Value, json};

const BUILDINGS: u64 = 200;
const FLOORS: u64 = 10;
const MODELS: u64 = 10;
const SELECTIVE_RUNS: usize = 300;
const PAGE: usize = 1000;

/// splitmix64: a tiny deterministic generator, so every store gets the same fleet.
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

fn device_id(i: u64) -> String {
    format!("dev-{i:07}")
}

/// The metadata of device `i`: building, floor, room, model, firmware, geo position, install date.
fn metadata(i: u64) -> Value {
    let mut r = Rng(i.wrapping_mul(7919) ^ 0xDEAD_BEEF);
    let building = format!("B{:03}", r.below(BUILDINGS));
    let floor = r.below(FLOORS);
    json!({
        "room": format!("{building}-{floor}-{:02}", r.below(40)),
        "building": building,
        "floor": floor,
        "model": format!("M{}", r.below(MODELS)),
        "firmware": format!("fw-1.{}.{}", r.below(20), r.below(5)),
        "geo": {"lat": 47.0 + r.unit() * 0.5, "lon": 8.0 + r.unit() * 0.5},
        "installed": format!("202{}-{:02}-{:02}", r.below(5), 1 + r.below(12), 1 + r.below(28)),
    })
}

fn document(i: u64) -> DeviceDocument {
    DeviceDocument::with_metadata(metadata(i)).expect("an object")
}

fn rss_bytes() -> u64 {
    let statm = std::fs::read_to_string("/proc/self/statm").unwrap_or_default();
    let pages: u64 = statm
        .split_whitespace()
        .nth(1)
        .and_then(|p| p.parse().ok())
        .unwrap_or(0);
    pages * 4096
}

fn percentile(samples: &mut [Duration], p: f64) -> f64 {
    samples.sort();
    let idx = ((samples.len() as f64 - 1.0) * p).round() as usize;
    samples[idx].as_secs_f64() * 1e6
}

/// The selective queries (≤ 0.1 % of the fleet each): one building, one floor.
fn selective_params(runs: usize) -> Vec<(String, u64)> {
    let mut r = Rng(42);
    (0..runs)
        .map(|_| (format!("B{:03}", r.below(BUILDINGS)), r.below(FLOORS)))
        .collect()
}

#[derive(Default, Debug)]
struct Ours {
    register_per_s: f64,
    file_register_per_s: f64,
    file_fsync_register_per_s: f64,
    get_us: f64,
    selective_p50_us: f64,
    selective_p99_us: f64,
    selective_decoded_p50_us: f64,
    selective_rows: f64,
    broad_total_ms: f64,
    broad_rows: u64,
    broad_page_p50_us: f64,
    merge_per_s: f64,
    file_merge_per_s: f64,
    bytes_per_device: f64,
    file_reopen_s: f64,
}

#[derive(Default, Debug)]
struct Pg {
    insert_per_s: f64,
    copy_per_s: f64,
    get_us: f64,
    selective_p50_us: f64,
    selective_p99_us: f64,
    selective_decoded_p50_us: f64,
    broad_total_ms: f64,
    broad_rows: u64,
    broad_page_p50_us: f64,
    merge_per_s: f64,
    bytes_per_device: f64,
    selective_counts: Vec<usize>,
}

/// Device registry benchmark: a generated fleet in MemoryRegistry, FileRegistry and PostgreSQL
/// (JSONB with a GIN index), the same data and the same queries in one run. PostgreSQL is reached
/// at host=127.0.0.1 port=5432 dbname=test, or at the connection string in REGISTRY_BENCH_PG.
#[derive(Debug, clap::Parser)]
struct Cli {
    /// Devices in the generated fleet.
    #[arg(long, default_value_t = 1_000_000)]
    devices: u64,
    /// Skip PostgreSQL (the ratios are then absent).
    #[arg(long)]
    no_pg: bool,
    /// Run only the durable-registration part: `FSYNC_SAMPLE` registrations with fsync before
    /// ack from `FSYNC_WRITERS` concurrent tasks, beside the disk's fsync rate.
    #[arg(long)]
    only_file_fsync: bool,
}

/// Registrations in the fsync sample.
const FSYNC_SAMPLE: u64 = 20_000;
/// Concurrent writers of the fsync sample (group commit shares their fsyncs).
const FSYNC_WRITERS: u64 = 64;

/// Registers `FSYNC_SAMPLE` devices into a fresh `FileRegistry` with `Durability::Fsync` from
/// `FSYNC_WRITERS` concurrent tasks; returns registrations per second.
async fn file_fsync_register() -> f64 {
    let dir = tempfile::tempdir().unwrap();
    let registry = FileRegistry::open(dir.path(), FileRegistryConfig::default())
        .await
        .unwrap();
    let start = Instant::now();
    let tasks: Vec<_> = (0..FSYNC_WRITERS)
        .map(|w| {
            let registry = registry.clone();
            tokio::spawn(async move {
                let mut i = w;
                while i < FSYNC_SAMPLE {
                    registry
                        .create(&DeviceId::new(device_id(i)).unwrap(), document(i))
                        .await
                        .unwrap();
                    i += FSYNC_WRITERS;
                }
            })
        })
        .collect();
    for t in tasks {
        t.await.unwrap();
    }
    let rate = FSYNC_SAMPLE as f64 / start.elapsed().as_secs_f64();
    assert_eq!(registry.len() as u64, FSYNC_SAMPLE);
    rate
}

/// The disk's fsync rate in the temporary directory: one writer appending 100 bytes and calling
/// `fdatasync` for about a second.
#[allow(clippy::disallowed_methods, reason = "a benchmark's own measurement")]
fn disk_fsync_rate() -> f64 {
    use std::io::Write;
    let dir = tempfile::tempdir().unwrap();
    let mut file = std::fs::File::create(dir.path().join("probe")).unwrap();
    let start = Instant::now();
    let mut n = 0u64;
    while start.elapsed().as_secs_f64() < 1.0 {
        file.write_all(&[b'f'; 100]).unwrap();
        file.sync_data().unwrap();
        n += 1;
    }
    n as f64 / start.elapsed().as_secs_f64()
}

#[tokio::main]
async fn main() {
    let cli = <Cli as clap::Parser>::parse();
    if cli.only_file_fsync {
        let fsync = disk_fsync_rate();
        let rate = file_fsync_register().await;
        println!(
            "register, file, fsync before ack, {FSYNC_WRITERS} writers: {rate:.0}/s; disk fsync rate {fsync:.0}/s"
        );
        println!(
            "{}",
            json!({
                "file_fsync_register_per_s": rate.round(),
                "file_fsync_writers": FSYNC_WRITERS,
                "disk_fsync_per_s": fsync.round(),
            })
        );
        return;
    }
    let devices = cli.devices;
    let with_pg = !cli.no_pg;
    eprintln!(
        "registry_bench: {devices} devices, PostgreSQL {}",
        if with_pg { "on" } else { "off" }
    );

    let params = selective_params(SELECTIVE_RUNS);
    let (ours, selective_counts) = bench_ours(devices, &params).await;
    let pg = if with_pg {
        match bench_pg(devices, &params).await {
            Ok(pg) => Some(pg),
            Err(e) => {
                eprintln!("PostgreSQL benchmark failed: {e}");
                std::process::exit(1);
            }
        }
    } else {
        None
    };
    if let Some(pg) = &pg {
        assert_eq!(
            pg.selective_counts, selective_counts,
            "PostgreSQL and the registry disagree"
        );
        assert_eq!(
            pg.broad_rows, ours.broad_rows,
            "broad query row counts differ"
        );
    }

    let peer = |f: fn(&Pg) -> f64| {
        pg.as_ref()
            .map_or("-".to_owned(), |p| format!("{:.1}", f(p)))
    };
    println!();
    println!(
        "| {:<38} | {:>14} | {:>14} |",
        format!("{devices} devices"),
        "registry",
        "PostgreSQL"
    );
    println!("|{:-<40}|{:-<16}|{:-<16}|", "", "", "");
    let row = |name: &str, ours: String, theirs: String| {
        println!("| {name:<38} | {ours:>14} | {theirs:>14} |");
    };
    row(
        "register, memory (devices/s)",
        format!("{:.0}", ours.register_per_s),
        peer(|p| p.insert_per_s),
    );
    row(
        "register, file, OS-buffered (devices/s)",
        format!("{:.0}", ours.file_register_per_s),
        "".into(),
    );
    row(
        "register, file, fsync, 64 writers (/s)",
        format!("{:.0}", ours.file_fsync_register_per_s),
        "".into(),
    );
    row(
        "bulk load, PG COPY (devices/s)",
        "".into(),
        peer(|p| p.copy_per_s),
    );
    row(
        "point get (µs)",
        format!("{:.2}", ours.get_us),
        peer(|p| p.get_us),
    );
    row(
        &format!("selective query p50 (µs, ~{:.0} rows)", ours.selective_rows),
        format!("{:.1}", ours.selective_p50_us),
        peer(|p| p.selective_p50_us),
    );
    row(
        "selective query p99 (µs)",
        format!("{:.1}", ours.selective_p99_us),
        peer(|p| p.selective_p99_us),
    );
    row(
        "selective p50, records decoded (µs)",
        format!("{:.1}", ours.selective_decoded_p50_us),
        peer(|p| p.selective_decoded_p50_us),
    );
    row(
        &format!("broad query, all pages (ms, {} rows)", ours.broad_rows),
        format!("{:.1}", ours.broad_total_ms),
        peer(|p| p.broad_total_ms),
    );
    row(
        "broad query, page p50 (µs, 1000 rows)",
        format!("{:.1}", ours.broad_page_p50_us),
        peer(|p| p.broad_page_p50_us),
    );
    row(
        "merge, memory (merges/s)",
        format!("{:.0}", ours.merge_per_s),
        peer(|p| p.merge_per_s),
    );
    row(
        "merge, file, OS-buffered (merges/s)",
        format!("{:.0}", ours.file_merge_per_s),
        "".into(),
    );
    row(
        "memory per device (bytes)",
        format!("{:.0}", ours.bytes_per_device),
        peer(|p| p.bytes_per_device),
    );
    row(
        "FileRegistry reopen (s)",
        format!("{:.2}", ours.file_reopen_s),
        "".into(),
    );
    println!();

    let mut out = serde_json::Map::new();
    let mut put = |k: &str, v: Value| {
        out.insert(k.to_owned(), v);
    };
    put("devices", json!(devices));
    put("register_per_s", json!(ours.register_per_s.round()));
    put(
        "file_register_per_s",
        json!(ours.file_register_per_s.round()),
    );
    put(
        "file_fsync_register_per_s",
        json!(ours.file_fsync_register_per_s.round()),
    );
    put("point_get_us", json!(round2(ours.get_us)));
    put(
        "selective_query_p50_us",
        json!(round2(ours.selective_p50_us)),
    );
    put(
        "selective_query_p99_us",
        json!(round2(ours.selective_p99_us)),
    );
    put(
        "selective_decoded_p50_us",
        json!(round2(ours.selective_decoded_p50_us)),
    );
    put("selective_query_rows", json!(ours.selective_rows.round()));
    put("broad_query_total_ms", json!(round2(ours.broad_total_ms)));
    put("broad_query_rows", json!(ours.broad_rows));
    put(
        "broad_query_page_p50_us",
        json!(round2(ours.broad_page_p50_us)),
    );
    put("merge_per_s", json!(ours.merge_per_s.round()));
    put("file_merge_per_s", json!(ours.file_merge_per_s.round()));
    put("bytes_per_device", json!(ours.bytes_per_device.round()));
    let reopen_key = if devices == 1_000_000 {
        "file_reopen_1m_s"
    } else {
        "file_reopen_s"
    };
    put(reopen_key, json!(round2(ours.file_reopen_s)));
    if let Some(pg) = &pg {
        put("pg_insert_per_s", json!(pg.insert_per_s.round()));
        put("pg_copy_per_s", json!(pg.copy_per_s.round()));
        put("pg_point_get_us", json!(round2(pg.get_us)));
        put(
            "pg_selective_query_p50_us",
            json!(round2(pg.selective_p50_us)),
        );
        put(
            "pg_selective_query_p99_us",
            json!(round2(pg.selective_p99_us)),
        );
        put(
            "pg_selective_decoded_p50_us",
            json!(round2(pg.selective_decoded_p50_us)),
        );
        put(
            "selective_decoded_vs_pg",
            json!(round2(
                pg.selective_decoded_p50_us / ours.selective_decoded_p50_us
            )),
        );
        put("pg_broad_query_total_ms", json!(round2(pg.broad_total_ms)));
        put("pg_merge_per_s", json!(pg.merge_per_s.round()));
        put("pg_bytes_per_device", json!(pg.bytes_per_device.round()));
        put(
            "selective_vs_pg",
            json!(round2(pg.selective_p50_us / ours.selective_p50_us)),
        );
        put(
            "broad_vs_pg",
            json!(round2(pg.broad_total_ms / ours.broad_total_ms)),
        );
        put("get_vs_pg", json!(round2(pg.get_us / ours.get_us)));
    }
    println!("{}", Value::Object(out));
}

fn round2(x: f64) -> f64 {
    (x * 100.0).round() / 100.0
}

async fn bench_ours(devices: u64, params: &[(String, u64)]) -> (Ours, Vec<usize>) {
    let mut ours = Ours::default();

    // Register into memory; the RSS growth is the registry's (documents are generated one at a
    // time and moved in).
    let before = rss_bytes();
    let registry = MemoryRegistry::new();
    let start = Instant::now();
    for i in 0..devices {
        registry
            .create(&DeviceId::new(device_id(i)).unwrap(), document(i))
            .await
            .unwrap();
    }
    ours.register_per_s = devices as f64 / start.elapsed().as_secs_f64();
    ours.bytes_per_device = rss_bytes().saturating_sub(before) as f64 / devices as f64;
    eprintln!("memory: loaded in {:.1} s", start.elapsed().as_secs_f64());

    // Point gets.
    let mut r = Rng(7);
    let ids: Vec<DeviceId> = (0..100_000)
        .map(|_| DeviceId::new(device_id(r.below(devices))).unwrap())
        .collect();
    let start = Instant::now();
    for id in &ids {
        assert!(registry.get(id).await.unwrap().is_some());
    }
    ours.get_us = start.elapsed().as_secs_f64() * 1e6 / ids.len() as f64;

    // Selective queries: parse + plan + fetch, one page, its records still encoded (as
    // PostgreSQL's rows are, below).
    let text = |building: &str, floor: u64| {
        format!(
            "SELECT * FROM devices WHERE metadata.building = '{building}' AND metadata.floor = {floor}"
        )
    };
    let mut samples = Vec::with_capacity(params.len());
    let mut counts = Vec::with_capacity(params.len());
    for (building, floor) in params {
        let text = text(building, *floor);
        let start = Instant::now();
        let q = Query::parse(&text).unwrap();
        let page = registry.query(&q, &PageRequest::first(PAGE)).await.unwrap();
        samples.push(start.elapsed());
        assert!(page.continuation.is_none());
        counts.push(page.len());
    }
    ours.selective_rows = counts.iter().sum::<usize>() as f64 / counts.len() as f64;
    ours.selective_p99_us = percentile(&mut samples, 0.99);
    ours.selective_p50_us = percentile(&mut samples, 0.50);
    // The same, every record decoded into a `DeviceRecord` (PostgreSQL's side parses its rows).
    samples.clear();
    for (building, floor) in params {
        let text = text(building, *floor);
        let start = Instant::now();
        let q = Query::parse(&text).unwrap();
        let page = registry.query(&q, &PageRequest::first(PAGE)).await.unwrap();
        let records = page.into_records().unwrap();
        samples.push(start.elapsed());
        std::hint::black_box(&records);
    }
    ours.selective_decoded_p50_us = percentile(&mut samples, 0.50);

    // Broad query: one model (10 %), every page.
    let q = Query::parse("SELECT * FROM devices WHERE metadata.model = 'M3'").unwrap();
    let mut pages = Vec::new();
    let start = Instant::now();
    let mut request = PageRequest::first(PAGE);
    loop {
        let t = Instant::now();
        let page = registry.query(&q, &request).await.unwrap();
        pages.push(t.elapsed());
        ours.broad_rows += page.len() as u64;
        match page.continuation {
            Some(c) => request = PageRequest::next(PAGE, c),
            None => break,
        }
    }
    ours.broad_total_ms = start.elapsed().as_secs_f64() * 1e3;
    ours.broad_page_p50_us = percentile(&mut pages, 0.5);

    // Merges: firmware updates.
    let merges = (devices / 10).max(1);
    let start = Instant::now();
    for i in 0..merges {
        let id = DeviceId::new(device_id((i * 7) % devices)).unwrap();
        registry
            .merge(
                &id,
                &json!({"metadata": {"firmware": format!("fw-2.{}", i % 7)}}),
                None,
            )
            .await
            .unwrap();
    }
    ours.merge_per_s = merges as f64 / start.elapsed().as_secs_f64();
    drop(registry);

    // FileRegistry: load OS-buffered, a sample with fsync, merges, then reopen.
    let dir = tempfile::tempdir().unwrap();
    let config = FileRegistryConfig::default().durability(Durability::OsBuffered);
    let file = FileRegistry::open(dir.path(), config.clone())
        .await
        .unwrap();
    let start = Instant::now();
    for i in 0..devices {
        file.create(&DeviceId::new(device_id(i)).unwrap(), document(i))
            .await
            .unwrap();
    }
    ours.file_register_per_s = devices as f64 / start.elapsed().as_secs_f64();
    eprintln!("file: loaded in {:.1} s", start.elapsed().as_secs_f64());
    let start = Instant::now();
    for i in 0..merges.min(100_000) {
        let id = DeviceId::new(device_id((i * 7) % devices)).unwrap();
        file.merge(
            &id,
            &json!({"metadata": {"firmware": format!("fw-2.{}", i % 7)}}),
            None,
        )
        .await
        .unwrap();
    }
    ours.file_merge_per_s = merges.min(100_000) as f64 / start.elapsed().as_secs_f64();
    drop(file);
    ours.file_fsync_register_per_s = file_fsync_register().await;

    // Reopen three times and keep the median: the machine is shared, and the first open may
    // also pay for reading files evicted from the page cache.
    let mut reopens = Vec::new();
    for _ in 0..2 {
        let start = Instant::now();
        let r = FileRegistry::open(dir.path(), config.clone())
            .await
            .unwrap();
        reopens.push(start.elapsed());
        drop(r);
    }
    let start = Instant::now();
    let reopened = FileRegistry::open(dir.path(), config).await.unwrap();
    reopens.push(start.elapsed());
    eprintln!("file: reopen times {reopens:?}");
    reopens.sort();
    ours.file_reopen_s = reopens[1].as_secs_f64();
    assert_eq!(reopened.len() as u64, devices);
    // The reopened registry answers like the first (indexes rebuilt).
    let (building, floor) = &params[0];
    let q = Query::parse(&format!(
        "SELECT COUNT() FROM devices WHERE metadata.building = '{building}' AND metadata.floor = {floor}"
    ))
    .unwrap();
    assert_eq!(reopened.count(&q).await.unwrap() as usize, counts[0]);
    eprintln!(
        "file: reopened in {:.2} s (median of 3)",
        ours.file_reopen_s
    );
    (ours, counts)
}

async fn connect() -> Result<tokio_postgres::Client, String> {
    let candidates = match std::env::var("REGISTRY_BENCH_PG") {
        Ok(s) => vec![s],
        Err(_) => ["postgres", "root"]
            .map(|u| format!("host=127.0.0.1 port=5432 user={u} dbname=test"))
            .to_vec(),
    };
    let mut last = String::new();
    for conn in candidates {
        match tokio_postgres::connect(&conn, tokio_postgres::NoTls).await {
            Ok((client, connection)) => {
                tokio::spawn(async move {
                    if let Err(e) = connection.await {
                        eprintln!("PostgreSQL connection error: {e}");
                    }
                });
                return Ok(client);
            }
            Err(e) => last = format!("{conn}: {e}"),
        }
    }
    Err(last)
}

async fn bench_pg(devices: u64, params: &[(String, u64)]) -> Result<Pg, String> {
    let client = connect().await?;
    let table = format!(
        "registry_bench_{:016x}",
        Rng(std::process::id() as u64 ^ Instant::now().elapsed().as_nanos() as u64 ^ rss_bytes())
            .next()
            ^ std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_nanos() as u64)
    );
    let result = bench_pg_table(&client, &table, devices, params).await;
    // Always drop the table, whatever happened.
    let dropped = client
        .batch_execute(&format!("DROP TABLE IF EXISTS {table}"))
        .await;
    if let Err(e) = dropped {
        eprintln!("could not drop {table}: {e}");
    }
    result.map_err(|e| e.to_string())
}

async fn bench_pg_table(
    client: &tokio_postgres::Client,
    table: &str,
    devices: u64,
    params: &[(String, u64)],
) -> Result<Pg, tokio_postgres::Error> {
    let mut pg = Pg::default();
    client
        .batch_execute(&format!(
            "CREATE TABLE {table} (id text PRIMARY KEY, doc jsonb NOT NULL)"
        ))
        .await?;
    // Single-row inserts, as the registry's creates are, for a sample; the rest by COPY.
    let sample = devices.min(20_000).min(devices / 5);
    let insert = client
        .prepare(&format!(
            "INSERT INTO {table} (id, doc) VALUES ($1, $2::text::jsonb)"
        ))
        .await?;
    let start = Instant::now();
    for i in 0..sample {
        client
            .execute(&insert, &[&device_id(i), &metadata(i).to_string()])
            .await?;
    }
    pg.insert_per_s = sample as f64 / start.elapsed().as_secs_f64();
    let start = Instant::now();
    let sink = client
        .copy_in(&format!("COPY {table} (id, doc) FROM STDIN"))
        .await?;
    futures::pin_mut!(sink);
    let mut buf = String::with_capacity(8 << 20);
    for i in sample..devices {
        buf.push_str(&device_id(i));
        buf.push('\t');
        buf.push_str(&metadata(i).to_string().replace('\\', "\\\\"));
        buf.push('\n');
        if buf.len() > (4 << 20) {
            sink.send(Bytes::from(std::mem::take(&mut buf))).await?;
        }
    }
    if !buf.is_empty() {
        sink.send(Bytes::from(buf)).await?;
    }
    sink.finish().await?;
    client
        .batch_execute(&format!(
            "CREATE INDEX ON {table} USING GIN (doc jsonb_path_ops); ANALYZE {table}"
        ))
        .await?;
    let loaded = start.elapsed().as_secs_f64();
    pg.copy_per_s = (devices - sample) as f64 / loaded.max(1e-9);
    eprintln!("PostgreSQL: COPY + GIN index in {loaded:.1} s");

    let size: i64 = client
        .query_one(&format!("SELECT pg_total_relation_size('{table}')"), &[])
        .await?
        .get(0);
    pg.bytes_per_device = size as f64 / devices as f64;

    // Point gets.
    let get = client
        .prepare(&format!("SELECT doc::text FROM {table} WHERE id = $1"))
        .await?;
    let mut r = Rng(7);
    let n = 5000;
    let start = Instant::now();
    for _ in 0..n {
        let row = client
            .query_one(&get, &[&device_id(r.below(devices))])
            .await?;
        let doc: String = row.get(0);
        let _: Value = serde_json::from_str(&doc).unwrap();
    }
    pg.get_us = start.elapsed().as_secs_f64() * 1e6 / n as f64;

    // Selective queries: containment on the GIN index; the rows as received (each document
    // as JSON text), as our page keeps its records encoded.
    let select = client
        .prepare(&format!(
            "SELECT id, doc::text FROM {table} WHERE doc @> $1::text::jsonb ORDER BY id"
        ))
        .await?;
    let mut samples = Vec::with_capacity(params.len());
    for (building, floor) in params {
        let filter = json!({"building": building, "floor": floor}).to_string();
        let start = Instant::now();
        let rows = client.query(&select, &[&filter]).await?;
        samples.push(start.elapsed());
        pg.selective_counts.push(rows.len());
    }
    pg.selective_p99_us = percentile(&mut samples, 0.99);
    pg.selective_p50_us = percentile(&mut samples, 0.50);
    // The same, every row's document parsed into JSON values (our side decodes its page).
    samples.clear();
    for (building, floor) in params {
        let filter = json!({"building": building, "floor": floor}).to_string();
        let start = Instant::now();
        let rows = client.query(&select, &[&filter]).await?;
        let docs: Vec<Value> = rows
            .iter()
            .map(|r| serde_json::from_str(r.get::<_, &str>(1)).unwrap())
            .collect();
        samples.push(start.elapsed());
        std::hint::black_box(&docs);
    }
    pg.selective_decoded_p50_us = percentile(&mut samples, 0.50);

    // Broad query with keyset paging, 1 000 rows a page.
    let page = client
        .prepare(&format!(
            "SELECT id, doc::text FROM {table} WHERE doc @> $1::text::jsonb AND id > $2 ORDER BY id LIMIT {PAGE}"
        ))
        .await?;
    let filter = json!({"model": "M3"}).to_string();
    let mut after = String::new();
    let mut pages = Vec::new();
    let start = Instant::now();
    loop {
        let t = Instant::now();
        // As received, like our pages (see the selective queries).
        let rows = client.query(&page, &[&filter, &after]).await?;
        pages.push(t.elapsed());
        pg.broad_rows += rows.len() as u64;
        match rows.last() {
            Some(last) if rows.len() == PAGE => after = last.get::<_, String>(0),
            _ => break,
        }
    }
    pg.broad_total_ms = start.elapsed().as_secs_f64() * 1e3;
    pg.broad_page_p50_us = percentile(&mut pages, 0.5);

    // Merges: `||` merges top-level keys, which is what this patch needs.
    let update = client
        .prepare(&format!(
            "UPDATE {table} SET doc = doc || $1::text::jsonb WHERE id = $2"
        ))
        .await?;
    let merges = (devices / 10).clamp(1, 20_000);
    let start = Instant::now();
    for i in 0..merges {
        let patch = json!({"firmware": format!("fw-2.{}", i % 7)}).to_string();
        client
            .execute(&update, &[&patch, &device_id((i * 7) % devices)])
            .await?;
    }
    pg.merge_per_s = merges as f64 / start.elapsed().as_secs_f64();
    Ok(pg)
}
