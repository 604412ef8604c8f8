//! Read throughput of the Event Hubs-compatible endpoint against reading the same log in
//! process (the measurement is `examples/support/eventhubs_read.rs`, which `amqp_bench` runs
//! too).
//!
//! ```sh
//! cargo run --release --features eventhubs --example eventhubs_bench            # 400 000 records
//! cargo run --release --features eventhubs --example eventhubs_bench -- --quick # 40 000 records
//! ```
//!
//! The last line is a JSON object: `eventhubs_read_per_s` (events/s through the endpoint, read by
//! a lean client), `inprocess_read_per_s`, `eventhubs_vs_inprocess` (the median of the rounds'
//! ratios), `eventhubs_fe2o3_read_per_s` and `eventhubs_fe2o3_vs_inprocess` (the same read
//! through fe2o3-amqp's client), `records`, `partitions`.
#![allow(clippy::print_stdout)]

use clap::Parser;

#[path = "support/eventhubs_read.rs"]
mod eventhubs_read;

/// Event Hubs endpoint read throughput vs in-process log reads.
#[derive(Parser, Debug)]
struct Args {
    /// A smaller run for CI (40 000 records).
    #[arg(long)]
    quick: bool,
}

#[tokio::main]
async fn main() {
    let args = Args::parse();
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_writer(std::io::stderr)
        .init();
    let records = if args.quick { 40_000 } else { 400_000 };
    let figures = eventhubs_read::measure(records).await;
    println!(
        "{}",
        serde_json::json!({
            "eventhubs_read_per_s": figures.endpoint.round(),
            "inprocess_read_per_s": figures.in_process.round(),
            "eventhubs_vs_inprocess": (figures.ratio * 1000.0).round() / 1000.0,
            "eventhubs_fe2o3_read_per_s": figures.fe2o3.round(),
            "eventhubs_fe2o3_vs_inprocess": (figures.fe2o3_ratio * 1000.0).round() / 1000.0,
            "records": records,
            "partitions": eventhubs_read::PARTITIONS,
        })
    );
}
