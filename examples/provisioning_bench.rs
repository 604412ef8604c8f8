//! Provisioning benchmark: bulk registration through the `Provisioner` (file-backed identity
//! store, registry, intent journal and audit log) beside the raw write rates of the same two
//! stores, measured in the same run on the same disk.
//!
//! ```text
//! cargo run --release --example provisioning_bench               # 100 000 devices
//! cargo run --release --example provisioning_bench -- --quick    # 5 000 devices (CI)
//! cargo run --release --example provisioning_bench -- --devices 20000
//! cargo run --release --example provisioning_bench -- --only-durable
//! ```
//!
//! Every pass does the same per-device work: build the metadata document, generate two random
//! 32-byte keys, create the registry record and create the identity. The stores acknowledge
//! writes once the OS has them (`Durability::OsBuffered`, the bulk-load mode: survives `kill -9`)
//! and are synced once per batch of 1 024 devices.
//!
//! * **raw** — the two stores written directly, without provisioning: per batch the registry
//!   creates and the identity creates run side by side (as the provisioner runs them), then both
//!   stores are synced. Also each store alone (`raw_identity_per_s`, `raw_registry_per_s`).
//! * **ours** — `Provisioning::bulk` in best-effort mode, 10 240 devices per call: per batch,
//!   existence checks, one journal intent (fsynced), the same writes, a sync of both stores and a
//!   journal finish (made durable by the next intent's fsync, or the journal sync that ends the
//!   call); one audit record per device appended to a `FileLog` topic.
//!
//! * **durable** — single `register` calls from 64 concurrent callers (`--writers`), the stores
//!   and the journal all fsyncing before they acknowledge (`Durability::Fsync`), 10 000 devices
//!   (1 000 with `--quick`), beside the disk's own fsync rate in the same directory and run.
//!   Each registration is four durable writes (journal begin, registry create, identity create,
//!   journal finish); group commit lets concurrent callers share them. `--only-durable` runs
//!   just this phase.
//!
//! The last line is JSON with `bulk_register_per_s`, `raw_per_s` and `overhead_ratio` (ours ÷
//! raw; the target is at least 0.5), and `durable_register_per_s`, `disk_fsync_per_s` and
//! `durable_register_vs_fsync` (registrations per fsync the disk does alone; at most 0.25
//! without group commit).
#![allow(clippy::print_stdout, clippy::print_stderr, clippy::unwrap_used)]

#[path = "support/disk_probe.rs"]
mod disk_probe;

use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

use iot_core::{DeviceId, FileLogConfig, TopicName, Topics};
use iot_identity::{
    Credentials, Durability, FileIdentityStore, FileIdentityStoreConfig, IdentityStore, NewIdentity,
};
use iot_provisioning::{
    BulkMode, FileJournal, FileJournalConfig, Provisioner, Provisioning, RegisterRequest,
};
use iot_registry::{DeviceDocument, FileRegistry, FileRegistryConfig, Registry};
use serde_json::{Value, json};

const BATCH: usize = 1024;
/// Devices per `bulk` call (the provisioner splits each into batches of `BATCH`).
const REQUEST: usize = 10 * BATCH;

fn id(i: usize) -> DeviceId {
    DeviceId::new(format!("device-{i:07}")).unwrap()
}

const MODELS: [&str; 4] = ["TH-100", "TH-200", "DOOR-1", "LIGHT-9"];

fn metadata(i: usize) -> Value {
    json!({
        "building": format!("B{}", i % 40),
        "floor": i % 12,
        "model": MODELS[i % 4],
        "firmware": "1.4.2",
    })
}

async fn identity_store(dir: &Path) -> FileIdentityStore {
    FileIdentityStore::open(
        dir,
        FileIdentityStoreConfig::with_durability(Durability::OsBuffered),
    )
    .await
    .unwrap()
}

fn registry(dir: &Path) -> FileRegistry {
    FileRegistry::open_blocking(
        dir,
        FileRegistryConfig::default().durability(iot_registry::Durability::OsBuffered),
    )
    .unwrap()
}

fn doc(i: usize) -> DeviceDocument {
    DeviceDocument::with_metadata(metadata(i)).unwrap()
}

/// Both stores written directly, batch by batch, registry and identity side by side.
async fn raw_both(dir: &Path, n: usize) -> f64 {
    let identity = identity_store(&dir.join("identity")).await;
    let registry = registry(&dir.join("registry"));
    let started = Instant::now();
    for start in (0..n).step_by(BATCH) {
        let range = start..(start + BATCH).min(n);
        let records = async {
            for i in range.clone() {
                registry.create(&id(i), doc(i)).await.unwrap();
            }
        };
        let identities = async {
            for i in range.clone() {
                let creds = Credentials::generate_symmetric_keys();
                identity
                    .create(NewIdentity::new(id(i), creds))
                    .await
                    .unwrap();
            }
        };
        futures::future::join(records, identities).await;
        let (a, b) = futures::future::join(identity.sync(), registry.sync()).await;
        a.unwrap();
        b.unwrap();
    }
    n as f64 / started.elapsed().as_secs_f64()
}

/// The identity store alone.
async fn raw_identity(dir: &Path, n: usize) -> f64 {
    let identity = identity_store(dir).await;
    let started = Instant::now();
    for start in (0..n).step_by(BATCH) {
        for i in start..(start + BATCH).min(n) {
            let creds = Credentials::generate_symmetric_keys();
            identity
                .create(NewIdentity::new(id(i), creds))
                .await
                .unwrap();
        }
        identity.sync().await.unwrap();
    }
    n as f64 / started.elapsed().as_secs_f64()
}

/// The registry alone.
async fn raw_registry(dir: &Path, n: usize) -> f64 {
    let registry = registry(dir);
    let started = Instant::now();
    for start in (0..n).step_by(BATCH) {
        for i in start..(start + BATCH).min(n) {
            registry.create(&id(i), doc(i)).await.unwrap();
        }
        registry.sync().await.unwrap();
    }
    n as f64 / started.elapsed().as_secs_f64()
}

/// `Provisioning::bulk` over the same kind of stores, with a journal and an audit log.
async fn ours(dir: &Path, n: usize) -> f64 {
    let identity = identity_store(&dir.join("identity")).await;
    let registry = registry(&dir.join("registry"));
    let journal = Arc::new(
        FileJournal::open(dir.join("journal"), FileJournalConfig::default())
            .await
            .unwrap(),
    );
    let topics = Topics::file(dir.join("log"), FileLogConfig::with_partitions(4));
    let audit = topics.topic(TopicName::AUDIT).await.unwrap();
    let p = Provisioner::builder(Arc::new(identity.clone()), Arc::new(registry.clone()))
        .journal(journal)
        .audit_log(audit)
        .sync_stores()
        .bulk_batch(BATCH)
        .open()
        .await
        .unwrap();
    let started = Instant::now();
    let mut ok = 0;
    for start in (0..n).step_by(REQUEST) {
        let requests: Vec<RegisterRequest> = (start..(start + REQUEST).min(n))
            .map(|i| RegisterRequest::new(id(i), metadata(i)))
            .collect();
        let results = p.bulk(requests, BulkMode::BestEffort).await.unwrap();
        ok += results.iter().filter(|r| r.is_ok()).count();
    }
    let rate = n as f64 / started.elapsed().as_secs_f64();
    assert_eq!(ok, n, "every registration succeeded");
    assert_eq!(identity.len(), n);
    assert_eq!(registry.len(), n);
    rate
}

/// Single registrations from `writers` concurrent callers through a Provisioner whose stores and
/// journal all fsync before they acknowledge (`Durability::Fsync`): each registration is a
/// journal begin, a registry create, an identity create and a journal finish, four fsyncs if
/// nothing were shared. Returns registrations/s.
async fn concurrent_durable(dir: &Path, n: usize, writers: usize) -> f64 {
    let identity = FileIdentityStore::open(
        dir.join("identity"),
        FileIdentityStoreConfig::with_durability(Durability::Fsync),
    )
    .await
    .unwrap();
    let registry = FileRegistry::open_blocking(
        dir.join("registry"),
        FileRegistryConfig::default().durability(iot_registry::Durability::Fsync),
    )
    .unwrap();
    let journal = FileJournal::open(dir.join("journal"), FileJournalConfig::default())
        .await
        .unwrap();
    let p = Arc::new(
        Provisioner::builder(Arc::new(identity.clone()), Arc::new(registry.clone()))
            .journal(Arc::new(journal))
            .open()
            .await
            .unwrap(),
    );
    let started = Instant::now();
    let tasks: Vec<_> = (0..writers)
        .map(|w| {
            let p = Arc::clone(&p);
            tokio::spawn(async move {
                for i in (w..n).step_by(writers) {
                    p.register(RegisterRequest::new(id(i), metadata(i)))
                        .await
                        .unwrap();
                }
            })
        })
        .collect();
    for t in tasks {
        t.await.unwrap();
    }
    let rate = n as f64 / started.elapsed().as_secs_f64();
    assert_eq!(identity.len(), n);
    assert_eq!(registry.len(), n);
    rate
}

/// Provisioning benchmark: bulk registration through the Provisioner beside the raw write rates
/// of the same two stores, in the same run on the same disk.
#[derive(Debug, clap::Parser)]
struct Cli {
    /// A smaller run (CI): 5 000 devices.
    #[arg(long)]
    quick: bool,
    /// Devices to register (default 100 000, or 5 000 with --quick).
    #[arg(long)]
    devices: Option<usize>,
    /// Only the durable phase: single registrations from concurrent callers, every store and
    /// the journal fsyncing before it acknowledges, beside the disk's fsync rate.
    #[arg(long)]
    only_durable: bool,
    /// Concurrent callers in the durable phase.
    #[arg(long, default_value_t = 64)]
    writers: usize,
}

/// Devices registered in the durable phase (fewer with --quick).
fn durable_devices(quick: bool) -> usize {
    if quick { 1_000 } else { 10_000 }
}

#[tokio::main]
async fn main() {
    let cli = <Cli as clap::Parser>::parse();
    let n = cli
        .devices
        .unwrap_or(if cli.quick { 5_000 } else { 100_000 });
    let root = tempfile::tempdir().unwrap();
    eprintln!(
        "provisioning_bench: {n} devices, batches of {BATCH}, in {}",
        root.path().display()
    );

    let durable_n = durable_devices(cli.quick);
    let fsync = disk_probe::fsync_rate(root.path(), 1.0);
    let durable = concurrent_durable(&root.path().join("durable"), durable_n, cli.writers).await;
    let durable_json = json!({
        "durable_devices": durable_n,
        "durable_writers": cli.writers,
        "durable_register_per_s": durable.round(),
        "disk_fsync_per_s": fsync.round(),
        "durable_register_vs_fsync": (durable / fsync * 100.0).round() / 100.0,
    });
    eprintln!(
        "durable single registrations, {} callers: {durable:.0}/s; disk fsync rate {fsync:.0}/s",
        cli.writers
    );
    if cli.only_durable {
        println!("{durable_json}");
        return;
    }

    // Raw and ours alternate twice; each keeps its better run (the machine may be shared).
    let mut raw = 0f64;
    let mut bulk = 0f64;
    for round in 0..2 {
        raw = raw.max(raw_both(&root.path().join(format!("raw-{round}")), n).await);
        bulk = bulk.max(ours(&root.path().join(format!("ours-{round}")), n).await);
    }
    let raw_id = raw_identity(&root.path().join("raw-identity"), n).await;
    let raw_reg = raw_registry(&root.path().join("raw-registry"), n).await;
    let ratio = bulk / raw;

    println!("{:<58} {:>12}", "measurement", "devices/s");
    println!(
        "{:<58} {:>12.0}",
        "raw identity store alone (create + keys, sync per batch)", raw_id
    );
    println!(
        "{:<58} {:>12.0}",
        "raw registry alone (create, sync per batch)", raw_reg
    );
    println!(
        "{:<58} {:>12.0}",
        "raw both stores (side by side, sync per batch)", raw
    );
    println!(
        "{:<58} {:>12.0}",
        "Provisioning::bulk (journal + sync + audit)", bulk
    );
    println!("{:<58} {:>12.2}", "overhead ratio (ours / raw both)", ratio);
    let mut out = json!({
        "devices": n,
        "batch": BATCH,
        "bulk_register_per_s": bulk.round(),
        "raw_per_s": raw.round(),
        "overhead_ratio": (ratio * 100.0).round() / 100.0,
        "raw_identity_per_s": raw_id.round(),
        "raw_registry_per_s": raw_reg.round(),
        "raw_includes": "per device: metadata document, two generated 32-byte keys, registry create, identity create (side by side per batch); both stores OS-buffered and synced per batch",
        "ours_adds": "existence checks, one fsynced journal intent per batch (finishes made durable by the next intent or the sync ending each request), audit record per device on a FileLog topic",
    });
    if let (Some(out), Some(durable)) = (out.as_object_mut(), durable_json.as_object()) {
        out.extend(durable.clone());
    }
    println!("{out}");
}
