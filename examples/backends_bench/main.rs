//! The SDK's adapters to outside engines, each beside a peer measured in the same run.
//!
//! ```sh
//! cargo run --release --features nats,postgres --example backends_bench              # full run
//! cargo run --release --features nats,postgres --example backends_bench -- --quick   # smoke run (CI)
//! cargo run --release --features nats,postgres --example backends_bench -- --nats-url nats://host:4222
//! ```
//!
//! Prints one line per measurement and, as its last line, one JSON object. Each engine's part is a
//! sibling module that adds its keys to that object (`jetstream.rs`: the `jetstream_*` keys and
//! `file_vs_jetstream`; `postgres.rs`: the `pg_*` keys, PostgreSQL at `IOT_BENCH_POSTGRES_URL`,
//! see their documentation). A module for another engine sits behind its own
//! feature: `#[cfg(feature = "...")] mod ...;`, its `Args` flattened into [`Cli`] and its `run`
//! called from `main` the same way.
#![allow(
    clippy::print_stdout,
    clippy::print_stderr,
    clippy::unwrap_used,
    reason = "a benchmark prints its figures and stops at the first failure"
)]

mod jetstream;
mod postgres;

use serde_json::{Map, Value};

/// The figures of every part, in one JSON object.
type Report = Map<String, Value>;

#[derive(Debug, clap::Parser)]
struct Cli {
    /// A small smoke run, so that the benchmark cannot rot (figures come from full runs).
    #[arg(long)]
    quick: bool,
    /// Skip the PostgreSQL part (for profiling the JetStream part alone).
    #[arg(long)]
    no_postgres: bool,
    #[command(flatten)]
    jetstream: jetstream::Args,
}

fn main() {
    let cli: Cli = clap::Parser::parse();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let mut report = Report::new();
    if let Err(e) = rt.block_on(jetstream::run(&cli.jetstream, cli.quick, &mut report)) {
        eprintln!("backends_bench: {e}");
        std::process::exit(1);
    }
    if !cli.no_postgres {
        report.extend(rt.block_on(postgres::run(cli.quick)));
    }
    println!("{}", Value::Object(report));
}
