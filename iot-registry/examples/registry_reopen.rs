//! Reopen-only timing of a large `FileRegistry`, without the PostgreSQL half of
//! `registry_bench` (and without building the rest of the workspace).
//!
//! ```text
//! cargo run --release -p iot-registry --example registry_reopen -- --dir /tmp/reg-1m --devices 1000000 --times 3
//! ```
//!
//! The first run fills `--dir` the way `registry_bench` fills its FileRegistry (OS-buffered
//! creates of the same generated fleet, then `devices / 10` merges, at most 100 000); later runs
//! find it filled and only reopen it `--times` times. `--compact` writes a snapshot after the
//! creates, so that the log holds only the merges (small fleets otherwise stay in the log alone). Prints each reopen time and a last-line JSON object.
#![allow(
    clippy::print_stdout,
    clippy::print_stderr,
    clippy::unwrap_used,
    clippy::expect_used
)]

use std::path::PathBuf;
use std::time::Instant;

use iot_core::DeviceId;
use iot_registry::{DeviceDocument, Durability, FileRegistry, FileRegistryConfig, Query, Registry};
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

fn device_id(i: u64) -> String {
    format!("dev-{i:07}")
}

fn metadata(i: u64) -> Value {
    let mut r = Rng(i.wrapping_mul(7919) ^ 0xDEAD_BEEF);
    let building = format!("B{:03}", r.below(200));
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

/// User + system CPU time of this process so far (all threads), from `/proc/self/stat`.
fn cpu_seconds() -> f64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    // Fields after the command name (which is in parentheses): utime and stime are 14 and 15.
    let rest = stat.rsplit(')').next().unwrap_or("");
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks: f64 = [11, 12]
        .iter()
        .filter_map(|i| fields.get(*i).and_then(|f| f.parse::<f64>().ok()))
        .sum();
    // Clock ticks are 100 per second on Linux.
    ticks / 100.0
}

/// Reopen-only timing of a large FileRegistry. The first run fills --dir; later runs find it
/// filled and only reopen it --times times.
#[derive(Debug, clap::Parser)]
struct Cli {
    /// Devices in the generated fleet.
    #[arg(long, default_value_t = 1_000_000)]
    devices: u64,
    /// How many times to reopen.
    #[arg(long, default_value_t = 3)]
    times: usize,
    /// The registry's directory (default: registry-reopen-DEVICES in the temporary directory).
    #[arg(long)]
    dir: Option<PathBuf>,
    /// Write a snapshot after the creates, so that the log holds only the merges.
    #[arg(long)]
    compact: bool,
}

#[tokio::main]
async fn main() {
    // `RUST_LOG=iot_registry=info` shows the phases of each open.
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_writer(std::io::stderr)
        .init();
    let cli = <Cli as clap::Parser>::parse();
    let (devices, times) = (cli.devices, cli.times);
    let dir: PathBuf = cli
        .dir
        .unwrap_or_else(|| std::env::temp_dir().join(format!("registry-reopen-{devices}")));
    let config = FileRegistryConfig::default().durability(Durability::OsBuffered);
    let filled = dir.join("LOCK").exists();
    if !filled {
        let start = Instant::now();
        let file = FileRegistry::open(&dir, config.clone()).await.unwrap();
        for i in 0..devices {
            let doc = DeviceDocument::with_metadata(metadata(i)).unwrap();
            file.create(&DeviceId::new(device_id(i)).unwrap(), doc)
                .await
                .unwrap();
        }
        if cli.compact {
            file.compact().await.unwrap();
        }
        for i in 0..(devices / 10).clamp(1, 100_000) {
            let id = DeviceId::new(device_id((i * 7) % devices)).unwrap();
            let patch = json!({"metadata": {"firmware": format!("fw-2.{}", i % 7)}});
            file.merge(&id, &patch, None).await.unwrap();
        }
        file.sync().await.unwrap();
        eprintln!(
            "filled {} in {:.1} s",
            dir.display(),
            start.elapsed().as_secs_f64()
        );
    }
    let mut secs = Vec::new();
    let mut cpu = Vec::new();
    for _ in 0..times {
        let cpu_before = cpu_seconds();
        let start = Instant::now();
        let r = FileRegistry::open(&dir, config.clone()).await.unwrap();
        let s = start.elapsed().as_secs_f64();
        let c = cpu_seconds() - cpu_before;
        eprintln!(
            "reopen: {s:.3} s wall, {c:.3} s CPU (all threads) ({} devices)",
            r.len()
        );
        cpu.push(c);
        assert_eq!(r.len() as u64, devices);
        let q =
            Query::parse("SELECT COUNT() FROM devices WHERE metadata.building = 'B007'").unwrap();
        assert!(r.count(&q).await.unwrap() > 0);
        secs.push(s);
    }
    let mut sorted = secs.clone();
    sorted.sort_by(f64::total_cmp);
    let median = sorted.get(sorted.len() / 2).copied().unwrap_or(0.0);
    println!(
        "{}",
        json!({"devices": devices, "reopen_s": secs, "median_s": median, "reopen_cpu_s": cpu})
    );
}
