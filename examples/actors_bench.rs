//! Issue 20's device-actor benchmark. Prints its figures, each beside a peer measured in the same
//! run, and ends with one JSON line:
//! `{"actor_events_per_s": …, "actors_vs_hand": …, "activations_per_s": …, "idle_bytes_per_actor": …}`.
//!
//! * **Events**: JSON readings of 10 000 devices through per-device actors (`ActorRuntime`, one
//!   shard, changed states written to a `MemoryStateStore` every 100 ms), each reading parsed
//!   and folded into the device's state,
//!   against the same parse-and-fold in a hand-written loop over a `HashMap`. Both read the same
//!   pre-built batches of 1 000 records (no log, so that the ratio is the runtime's own cost);
//!   the better of two rounds each.
//! * **Activations**: 1 000 000 distinct actors, one reading each (each a store lookup that
//!   misses, then a new state), no flush while measuring; the resident memory grown per active,
//!   idle actor is `idle_bytes_per_actor` (from `/proc/self/status`, Linux).
//! * **Passivation/reactivation round trip**: 10 000 actors written to the store and passivated
//!   (one housekeeping call), then brought back from the store by one reading each.
//!
//! `cargo run --release --example actors_bench` (figures in docs/performance.md); `--quick` is a
//! small run for CI.
#![allow(clippy::print_stdout)]

use std::collections::HashMap;
use std::time::{Duration, Instant};

use clap::Parser;
use iot_core::{Offset, PartitionId, Record, StoredRecord, Timestamp};
use iot_stream::actors::{Actor, ActorConfig, ActorContext, ActorRuntime};
use iot_stream::{Context, MemoryStateStore, ProcessorFactory, ReferenceData, StreamProcessor};
use serde::{Deserialize, Serialize};

#[derive(Parser, Debug)]
#[command(
    about = "Events through device actors against a hand-written HashMap loop; activations; idle memory"
)]
struct Args {
    /// A small run (CI: only so that it cannot rot; the figures mean nothing).
    #[arg(long)]
    quick: bool,
}

type Error = Box<dyn std::error::Error + Send + Sync>;

const BATCH: usize = 1000;

/// How often the events run writes changed states: short enough that a run of a fraction of a
/// second writes several times (the default, 1 s, would write nothing within the measurement).
const FLUSH: Duration = Duration::from_millis(100);

/// What every event does to its device's state, in both the actors and the hand loop.
#[derive(Debug, Default, Clone, Serialize, Deserialize)]
struct Stats {
    count: u64,
    sum: f64,
    min: f64,
    max: f64,
    last: f64,
}

#[derive(Deserialize)]
struct Reading {
    temp: f64,
}

impl Stats {
    fn fold(&mut self, payload: &[u8]) -> Result<(), serde_json::Error> {
        let r: Reading = serde_json::from_slice(payload)?;
        if self.count == 0 || r.temp < self.min {
            self.min = r.temp;
        }
        if self.count == 0 || r.temp > self.max {
            self.max = r.temp;
        }
        self.count += 1;
        self.sum += r.temp;
        self.last = r.temp;
        Ok(())
    }
}

#[derive(Debug)]
struct Thermometer;

impl Actor for Thermometer {
    type State = Stats;

    fn on_message(
        &self,
        state: &mut Stats,
        message: &StoredRecord,
        _ctx: &mut ActorContext<'_>,
    ) -> iot_stream::Result<()> {
        state
            .fold(&message.record.payload)
            .map_err(|e| iot_stream::Error::InvalidInput {
                reason: e.to_string(),
            })
    }
}

/// Batches of readings: record `i` for device `key(i)`, at offsets from `first`.
fn batches(events: usize, first: u64, key: impl Fn(usize) -> String) -> Vec<Vec<StoredRecord>> {
    let t = Timestamp::from_unix_millis(1_700_000_000_000);
    (0..events)
        .map(|i| {
            let payload = format!(r#"{{"temp": {}.{}, "hum": 40}}"#, 15 + i % 20, i % 10);
            StoredRecord::new(
                PartitionId(0),
                Offset(first + i as u64),
                t,
                Record::new(key(i), payload),
            )
        })
        .collect::<Vec<_>>()
        .chunks(BATCH)
        .map(<[StoredRecord]>::to_vec)
        .collect()
}

fn shard(
    config: ActorConfig,
) -> Result<
    (
        Box<dyn StreamProcessor>,
        std::sync::Arc<iot_stream::actors::ActorStats>,
    ),
    Error,
> {
    let store = std::sync::Arc::new(MemoryStateStore::new());
    let runtime = ActorRuntime::new(Thermometer, store, config)?;
    let stats = runtime.stats();
    Ok((runtime.create(PartitionId(0))?, stats))
}

async fn feed(
    shard: &mut dyn StreamProcessor,
    batches: &[Vec<StoredRecord>],
) -> Result<Duration, Error> {
    let started = Instant::now();
    for batch in batches {
        let mut ctx = Context::new(PartitionId(0), ReferenceData::new());
        shard.process(batch, &mut ctx).await?;
    }
    Ok(started.elapsed())
}

fn hand(batches: &[Vec<StoredRecord>]) -> Result<(Duration, HashMap<String, Stats>), Error> {
    let started = Instant::now();
    let mut states: HashMap<String, Stats> = HashMap::new();
    for batch in batches {
        for r in batch {
            let state = match states.get_mut(r.record.key.as_str()) {
                Some(s) => s,
                None => states.entry(r.record.key.clone()).or_default(),
            };
            state.fold(&r.record.payload)?;
        }
    }
    Ok((started.elapsed(), states))
}

/// Resident memory of this process in bytes (Linux), or `None`.
fn rss() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

fn per_s(n: usize, d: Duration) -> f64 {
    n as f64 / d.as_secs_f64().max(1e-9)
}

fn main() -> Result<(), Error> {
    let args = Args::parse();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    runtime.block_on(run(args))
}

async fn run(args: Args) -> Result<(), Error> {
    let (devices, events, actors, round_trip) = if args.quick {
        (1_000, 20_000, 20_000, 1_000)
    } else {
        (10_000, 2_000_000, 1_000_000, 10_000)
    };

    // ---- events through actors vs a hand-written HashMap loop ----
    let input = batches(events, 0, |i| format!("dev-{}", i % devices));
    let mut best_actor = Duration::MAX;
    let mut best_hand = Duration::MAX;
    let mut written = 0;
    for _ in 0..2 {
        let (mut s, stats) = shard(ActorConfig::default().flush_interval(FLUSH))?;
        best_actor = best_actor.min(feed(&mut *s, &input).await?);
        written = stats.snapshot().states_written;
        let (d, states) = hand(&input)?;
        best_hand = best_hand.min(d);
        assert_eq!(states.len(), devices);
    }
    drop(input);
    let actor_eps = per_s(events, best_actor);
    let hand_eps = per_s(events, best_hand);
    println!(
        "events: {events} JSON readings of {devices} devices: actors {actor_eps:.0}/s ({written} state writes, every {FLUSH:?}), hand-written HashMap loop {hand_eps:.0}/s, ratio {:.2}",
        actor_eps / hand_eps
    );

    // ---- activations and idle memory ----
    let (mut s, stats) = shard(
        ActorConfig::default()
            .flush_interval(Duration::from_secs(3600))
            .max_dirty(usize::MAX),
    )?;
    let before = rss();
    let mut elapsed = Duration::ZERO;
    let mut done = 0;
    while done < actors {
        // Built and dropped a slice at a time, so the input is not counted as actor memory.
        let n = (actors - done).min(100 * BATCH);
        let slice = batches(n, done as u64, |i| format!("dev-{}", done + i));
        elapsed += feed(&mut *s, &slice).await?;
        done += n;
    }
    let after = rss();
    let active = stats.snapshot().active();
    assert_eq!(active, actors as u64);
    let activations = per_s(actors, elapsed);
    let idle_bytes = match (before, after) {
        (Some(b), Some(a)) => a.saturating_sub(b) as f64 / actors as f64,
        _ => f64::NAN,
    };
    println!(
        "activations: {actors} actors in {:.2} s, {activations:.0}/s; resident memory {:.1} MiB → {:.1} MiB, {idle_bytes:.0} B per idle actor (goal ≤ 1024)",
        elapsed.as_secs_f64(),
        before.unwrap_or(0) as f64 / 1048576.0,
        after.unwrap_or(0) as f64 / 1048576.0,
    );
    drop(s);

    // ---- passivation / reactivation round trip ----
    // Written when all of them are changed (at the call after the last reading), then
    // passivated at once.
    let (mut s, stats) = shard(
        ActorConfig::default()
            .flush_interval(Duration::from_secs(3600))
            .max_dirty(round_trip)
            .idle_timeout(Duration::ZERO),
    )?;
    let first = batches(round_trip, 0, |i| format!("dev-{i}"));
    feed(&mut *s, &first).await?;
    // The next call writes the changed states and passivates the idle actors...
    let started = Instant::now();
    s.tick(
        Timestamp::now(),
        &mut Context::new(PartitionId(0), ReferenceData::new()),
    )
    .await?;
    let passivation = started.elapsed();
    let passivated = stats.snapshot().passivations;
    assert_eq!(passivated, round_trip as u64);
    // ...and one reading each brings them back from the store.
    let again = batches(round_trip, round_trip as u64, |i| format!("dev-{i}"));
    let reactivation = feed(&mut *s, &again).await?;
    assert_eq!(stats.snapshot().activations, 2 * round_trip as u64);
    let us = |d: Duration| d.as_secs_f64() * 1e6 / round_trip as f64;
    println!(
        "passivation/reactivation round trip: {round_trip} actors written and passivated in {:.2} µs each, reactivated from the store by one reading in {:.2} µs each: {:.2} µs per round trip",
        us(passivation),
        us(reactivation),
        us(passivation + reactivation)
    );

    println!(
        "{}",
        serde_json::json!({
            "actor_events_per_s": actor_eps.round(),
            "actors_vs_hand": (actor_eps / hand_eps * 100.0).round() / 100.0,
            "activations_per_s": activations.round(),
            "idle_bytes_per_actor": idle_bytes.round(),
        })
    );
    Ok(())
}
