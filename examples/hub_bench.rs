//! Telemetry through the gateway `Hub` into a FileLog, beside raw FileLog appends of the same
//! records in the same run; and the C2D round trip (send → deliver → complete).
//!
//! ```sh
//! cargo run --release --example hub_bench              # 1 000 devices × 100 messages of 100 bytes
//! cargo run --release --example hub_bench -- --quick   # a smaller smoke run (CI)
//! cargo run --release --example hub_bench -- --dir /mnt/disk/bench
//! ```
//!
//! Every device has a session and sends its messages one at a time (waiting for each
//! acknowledgement), all devices at once. The peer sends the identical records (key = device id,
//! 100-byte payload) straight to a FileLog of the same configuration, one append per record, from
//! as many concurrent tasks. Both logs fsync before acknowledging (`Durability::Fsync`, group
//! commit). The two are measured alternately, `ROUNDS` times each, and the best of each is kept.
//!
//! Last line, one JSON object:
//!
//! | key | what |
//! |---|---|
//! | `hub_telemetry_per_s` | messages/s through `DeviceSession::send_telemetry` into the FileLog |
//! | `raw_log_per_s` | the same records appended to a FileLog directly |
//! | `hub_vs_log` | `hub_telemetry_per_s / raw_log_per_s` (target ≥ 0.5) |
//! | `c2d_roundtrip_per_s` | send_c2d → next_event → complete cycles/s, one loop per device, file inbox (fsync before ack, group commit) |
//! | `disk_fsync_per_s` | the disk's rate of sequential 100-byte append + fdatasync, in the same directory and run |
//! | `c2d_vs_fsync` | `c2d_roundtrip_per_s / disk_fsync_per_s`: above 1/3 only because round trips share fsyncs (each is three inbox writes) |
#![allow(clippy::print_stdout, clippy::unwrap_used)]

#[path = "support/disk_probe.rs"]
mod disk_probe;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use iot_sdk::core::{FileLogConfig, Producer, Record, Topics};
use iot_sdk::gateway::{
    C2dMessage, DeviceSession, FileInbox, FileInboxConfig, Gateway, Hub, HubConfig, SessionEvent,
    SessionOptions, Subscription, Telemetry, ThrottleConfig,
};
use iot_sdk::identity::{
    Credentials, IdentityStore, MemoryIdentityStore, NewIdentity, Presented, SymmetricKey,
};

const ROUNDS: usize = 2;
const PARTITIONS: u32 = 8;

/// Telemetry through the gateway Hub into a FileLog beside raw FileLog appends, and the C2D
/// round trip. Prints a table and, as its last line, one JSON object.
#[derive(Debug, clap::Parser)]
struct Cli {
    /// A smaller smoke run (CI): 200 devices × 20 messages, 20 × 10 C2D round trips.
    #[arg(long)]
    quick: bool,
    /// Devices sending telemetry (default 1000, or 200 with --quick).
    #[arg(long)]
    devices: Option<usize>,
    /// Messages per device (default 100, or 20 with --quick).
    #[arg(long)]
    messages: Option<usize>,
    /// Devices running C2D round trips concurrently (default 100, or 20 with --quick).
    #[arg(long)]
    c2d_devices: Option<usize>,
    /// C2D round trips per device (default 50, or 10 with --quick).
    #[arg(long)]
    c2d_messages: Option<usize>,
    /// Where the logs and the inbox are written (default: the system's temporary directory).
    #[arg(long)]
    dir: Option<PathBuf>,
}

struct Args {
    devices: usize,
    messages: usize,
    c2d_devices: usize,
    c2d_per_device: usize,
    dir: PathBuf,
}

fn args() -> Args {
    let cli = <Cli as clap::Parser>::parse();
    // --devices and --messages override what --quick chose, whatever their order.
    let (devices, messages, c2d_devices, c2d_per_device) = if cli.quick {
        (200, 20, 20, 10)
    } else {
        (1000, 100, 100, 50)
    };
    Args {
        devices: cli.devices.unwrap_or(devices),
        messages: cli.messages.unwrap_or(messages),
        c2d_devices: cli.c2d_devices.unwrap_or(c2d_devices),
        c2d_per_device: cli.c2d_messages.unwrap_or(c2d_per_device),
        dir: cli.dir.unwrap_or_else(std::env::temp_dir),
    }
}

fn log_config() -> FileLogConfig {
    FileLogConfig::default().partitions(PARTITIONS)
}

async fn raw_log(dir: &Path, ids: &[String], messages: usize, payload: &Bytes) -> f64 {
    let topics = Topics::file(dir, log_config());
    let producer = Producer::new(topics.topic("telemetry").await.unwrap());
    let start = Instant::now();
    let tasks: Vec<_> = ids
        .iter()
        .map(|id| {
            let (producer, id, payload) = (producer.clone(), id.clone(), payload.clone());
            tokio::spawn(async move {
                for _ in 0..messages {
                    producer
                        .send(Record::new(id.as_str(), payload.clone()))
                        .await
                        .unwrap();
                }
            })
        })
        .collect();
    for t in tasks {
        t.await.unwrap();
    }
    (ids.len() * messages) as f64 / start.elapsed().as_secs_f64()
}

async fn hub_telemetry(
    dir: &Path,
    identity: Arc<dyn IdentityStore>,
    keys: &[(String, String)],
    messages: usize,
    payload: &Bytes,
) -> f64 {
    let mut config = HubConfig::default();
    config.partitions = PARTITIONS;
    config.throttle = ThrottleConfig::unlimited();
    let hub = Hub::builder(identity, "bench.local")
        .topics(Arc::new(Topics::file(dir, log_config())))
        .config(config)
        .build()
        .await
        .unwrap();
    let mut sessions = Vec::with_capacity(keys.len());
    for (id, key) in keys {
        let s = hub
            .connect(
                &id.parse().unwrap(),
                Presented::SymmetricKey(key),
                SessionOptions::default(),
            )
            .await
            .unwrap();
        sessions.push(Arc::<dyn DeviceSession>::from(s));
    }
    let start = Instant::now();
    let tasks: Vec<_> = sessions
        .iter()
        .map(|s| {
            let (s, payload) = (s.clone(), payload.clone());
            tokio::spawn(async move {
                for _ in 0..messages {
                    s.send_telemetry(Telemetry::new(payload.clone()))
                        .await
                        .unwrap();
                }
            })
        })
        .collect();
    for t in tasks {
        t.await.unwrap();
    }
    let rate = (keys.len() * messages) as f64 / start.elapsed().as_secs_f64();
    for s in sessions {
        s.close().await;
    }
    hub.shutdown().await;
    rate
}

async fn c2d_roundtrip(
    dir: &Path,
    identity: Arc<dyn IdentityStore>,
    keys: &[(String, String)],
    per_device: usize,
) -> f64 {
    let mut config = HubConfig::default();
    config.throttle = ThrottleConfig::unlimited();
    let inbox = FileInbox::open(dir.join("inbox"), FileInboxConfig::default())
        .await
        .unwrap();
    let hub = Hub::builder(identity, "bench.local")
        .topics(Arc::new(Topics::file(dir.join("log"), log_config())))
        .inbox(Arc::new(inbox))
        .config(config)
        .build()
        .await
        .unwrap();
    let mut sessions = Vec::new();
    for (id, key) in keys {
        let s = hub
            .connect(
                &id.parse().unwrap(),
                Presented::SymmetricKey(key),
                SessionOptions::default(),
            )
            .await
            .unwrap();
        s.subscribe(Subscription::C2d).await.unwrap();
        sessions.push(Arc::<dyn DeviceSession>::from(s));
    }
    let start = Instant::now();
    let tasks: Vec<_> = sessions
        .iter()
        .map(|s| {
            let (s, hub) = (s.clone(), hub.clone());
            tokio::spawn(async move {
                let device = s.device_id().clone();
                for _ in 0..per_device {
                    hub.send_c2d(&device, C2dMessage::new(vec![b'c'; 100]))
                        .await
                        .unwrap();
                    match s.next_event().await.unwrap() {
                        SessionEvent::C2d(d) => s.complete(d.lock_token).await.unwrap(),
                        other => panic!("unexpected {other:?}"),
                    }
                }
            })
        })
        .collect();
    for t in tasks {
        t.await.unwrap();
    }
    let rate = (keys.len() * per_device) as f64 / start.elapsed().as_secs_f64();
    hub.shutdown().await;
    rate
}

fn main() {
    let args = args();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async move {
        let root = tempfile::Builder::new()
            .prefix("hub-bench")
            .tempdir_in(&args.dir)
            .unwrap();
        let identity: Arc<dyn IdentityStore> = Arc::new(MemoryIdentityStore::new());
        let mut keys = Vec::with_capacity(args.devices);
        for i in 0..args.devices {
            let id = format!("bench-device-{i:05}");
            let key = SymmetricKey::generate();
            identity
                .create(NewIdentity::new(
                    id.parse().unwrap(),
                    Credentials::SymmetricKeys {
                        primary: key.clone(),
                        secondary: SymmetricKey::generate(),
                    },
                ))
                .await
                .unwrap();
            keys.push((id, key.expose_base64().to_string()));
        }
        let ids: Vec<String> = keys.iter().map(|(id, _)| id.clone()).collect();
        let payload = Bytes::from(vec![b'x'; 100]);
        println!(
            "{} devices × {} messages of {} bytes, FileLog with fsync before ack (group commit), {} partitions",
            args.devices,
            args.messages,
            payload.len(),
            PARTITIONS
        );
        let (mut raw, mut hub) = (0f64, 0f64);
        for round in 0..ROUNDS {
            let r = raw_log(&root.path().join(format!("raw-{round}")), &ids, args.messages, &payload).await;
            let h = hub_telemetry(
                &root.path().join(format!("hub-{round}")),
                identity.clone(),
                &keys,
                args.messages,
                &payload,
            )
            .await;
            println!("round {round}: raw FileLog {r:>10.0} msg/s   Hub {h:>10.0} msg/s");
            raw = raw.max(r);
            hub = hub.max(h);
        }
        let fsync = disk_probe::fsync_rate(root.path(), 1.0);
        let c2d = c2d_roundtrip(
            &root.path().join("c2d"),
            identity.clone(),
            &keys[..args.c2d_devices.min(keys.len())],
            args.c2d_per_device,
        )
        .await;
        println!(
            "C2D round trip ({} devices × {} messages, file inbox with fsync): {c2d:.0}/s; disk fsync rate {fsync:.0}/s",
            args.c2d_devices, args.c2d_per_device
        );
        println!(
            "{{\"hub_telemetry_per_s\":{hub:.0},\"raw_log_per_s\":{raw:.0},\"hub_vs_log\":{:.3},\"c2d_roundtrip_per_s\":{c2d:.0},\"disk_fsync_per_s\":{fsync:.0},\"c2d_vs_fsync\":{:.2}}}",
            hub / raw,
            c2d / fsync
        );
    });
}
