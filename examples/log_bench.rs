//! Throughput of the partitioned log, each figure beside a peer or a physical limit measured in
//! the same run.
//!
//! ```sh
//! cargo run --release --example log_bench              # full run (writes about 2 GiB)
//! cargo run --release --example log_bench -- --quick   # a smaller smoke run
//! cargo run --release --example log_bench -- --dir /mnt/disk/bench
//! ```
//!
//! Prints a table and, as its last line, one JSON object:
//!
//! | key | what |
//! |---|---|
//! | `memory_append_100b_rps` | MemoryLog, 100-byte payloads, batches of 1000, one appender |
//! | `file_append_1k_mbps` | FileLog, OS-buffered, 1 KiB payloads in batches of 1000 from two appenders to two partitions (one per core), payload MB/s including a final fsync |
//! | `disk_write_mbps` | the same disk's sequential write bandwidth: 1 MiB writes of the same total, then fdatasync |
//! | `file_vs_disk` | `file_append_1k_mbps / disk_write_mbps` |
//! | `file_group_commit_rps` | FileLog, fsync before ack, 64 concurrent appenders of single 100-byte records |
//! | `fsync_per_s` | the peer of the line above: write + fdatasync cycles per second of one plain writer |
//! | `records_per_fsync` | group commit's sharing: records acknowledged per fsync the log issued |
//! | `group_commit_vs_fsync` | `file_group_commit_rps / fsync_per_s`: the gain over fsyncing every append |
//!
//! Disk and FileLog throughput are measured alternately, three times each, and the medians are
//! reported: a virtual disk's speed drifts, and alternating exposes both to the same drift.
//! | `tail_read_rps` | a consumer group tailing a FileLog while a producer appends 100-byte records |
#![allow(clippy::print_stdout, clippy::unwrap_used)]

#[path = "support/disk_probe.rs"]
mod disk_probe;

use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use iot_sdk::core::{
    Durability, FileLog, FileLogConfig, GroupConsumer, GroupName, Log, MemoryLog, PartitionId,
    ReadLimits, Record, StartFrom,
};

const MIB: f64 = 1024.0 * 1024.0;
/// Concurrent appenders (and partitions) of the FileLog throughput test.
const FILE_APPENDERS: u32 = 2;

struct Sizes {
    memory_batches: usize,
    file_bytes: usize,
    group_commit_secs: f64,
    tail_records: usize,
}

fn batch(key: &str, payload: &Bytes, n: usize) -> Vec<Record> {
    (0..n).map(|_| Record::new(key, payload.clone())).collect()
}

async fn memory_append(sizes: &Sizes) -> f64 {
    let log = MemoryLog::new(1).unwrap();
    let payload = Bytes::from(vec![b'x'; 100]);
    let batches: Vec<Vec<Record>> = (0..sizes.memory_batches)
        .map(|_| batch("device-0042", &payload, 1000))
        .collect();
    let records = sizes.memory_batches * 1000;
    let start = Instant::now();
    for b in batches {
        log.append(PartitionId(0), b).await.unwrap();
    }
    let secs = start.elapsed().as_secs_f64();
    // Freeing the records is not part of appending.
    tokio::task::spawn_blocking(move || drop(log))
        .await
        .unwrap();
    records as f64 / secs
}

/// Sequential 1 MiB writes of `bytes` bytes and a final fdatasync, like `dd conv=fdatasync`.
#[allow(
    clippy::disallowed_methods,
    reason = "the synchronous disk baseline the benchmark compares against"
)]
fn disk_write(dir: &Path, bytes: usize) -> f64 {
    let path = dir.join("disk-write.bin");
    let buf = vec![0xA5u8; 1 << 20];
    let start = Instant::now();
    let mut f = File::create(&path).unwrap();
    for _ in 0..bytes / buf.len() {
        f.write_all(&buf).unwrap();
    }
    f.sync_data().unwrap();
    let secs = start.elapsed().as_secs_f64();
    drop(f);
    std::fs::remove_file(&path).unwrap();
    bytes as f64 / MIB / secs
}

/// Two appenders, one per partition (one per core of the reference machine), OS-buffered.
async fn file_append(dir: &Path, bytes: usize) -> f64 {
    let path = dir.join("file-append");
    let config = FileLogConfig::default()
        .partitions(FILE_APPENDERS)
        .durability(Durability::OsBuffered);
    let log = Arc::new(FileLog::open(&path, config).await.unwrap());
    let payload = Bytes::from(vec![b'y'; 1024]);
    let batches = bytes / (1024 * 1000);
    let per_appender = batches / FILE_APPENDERS as usize;
    let prepared: Vec<Vec<Vec<Record>>> = (0..FILE_APPENDERS)
        .map(|_| {
            (0..per_appender)
                .map(|_| batch("device-0042", &payload, 1000))
                .collect()
        })
        .collect();
    let start = Instant::now();
    let tasks: Vec<_> = prepared
        .into_iter()
        .enumerate()
        .map(|(p, batches)| {
            let log = log.clone();
            tokio::spawn(async move {
                for b in batches {
                    log.append(PartitionId(p as u32), b).await.unwrap();
                }
            })
        })
        .collect();
    for t in tasks {
        t.await.unwrap();
    }
    log.sync().await.unwrap();
    let secs = start.elapsed().as_secs_f64();
    drop(log);
    std::fs::remove_dir_all(&path).unwrap();
    (per_appender * FILE_APPENDERS as usize * 1000 * 1024) as f64 / MIB / secs
}

async fn group_commit(dir: &Path, secs: f64) -> (f64, f64) {
    let path = dir.join("group-commit");
    let config = FileLogConfig::default()
        .partitions(1)
        .durability(Durability::Fsync);
    let log = Arc::new(FileLog::open(&path, config).await.unwrap());
    let done = Arc::new(AtomicBool::new(false));
    let count = Arc::new(AtomicU64::new(0));
    let payload = Bytes::from(vec![b'z'; 100]);
    let start = Instant::now();
    let tasks: Vec<_> = (0..64)
        .map(|i| {
            let (log, done, count, payload) =
                (log.clone(), done.clone(), count.clone(), payload.clone());
            tokio::spawn(async move {
                let key = format!("device-{i}");
                while !done.load(Ordering::Relaxed) {
                    log.append(
                        PartitionId(0),
                        vec![Record::new(key.clone(), payload.clone())],
                    )
                    .await
                    .unwrap();
                    count.fetch_add(1, Ordering::Relaxed);
                }
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_secs_f64(secs)).await;
    done.store(true, Ordering::Relaxed);
    for t in tasks {
        t.await.unwrap();
    }
    let records = count.load(Ordering::Relaxed);
    let rate = records as f64 / start.elapsed().as_secs_f64();
    let per_fsync = records as f64 / log.fsync_count().max(1) as f64;
    drop(log);
    std::fs::remove_dir_all(&path).unwrap();
    (rate, per_fsync)
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

async fn tail_read(dir: &Path, records: usize) -> f64 {
    let path = dir.join("tail");
    let config = FileLogConfig::default()
        .partitions(4)
        .durability(Durability::OsBuffered);
    let log: Arc<dyn Log> = Arc::new(FileLog::open(&path, config).await.unwrap());
    let group = GroupName::new("bench").unwrap();
    let mut consumer = GroupConsumer::new(log.clone(), group, StartFrom::Earliest)
        .await
        .unwrap()
        .with_read_limits(ReadLimits::records(5000));
    let payload = Bytes::from(vec![b't'; 100]);
    let batches = records / 1000;
    let prepared: Vec<(u32, Vec<Record>)> = (0..batches)
        .map(|i| ((i % 4) as u32, batch("device-7", &payload, 1000)))
        .collect();
    let start = Instant::now();
    let producer = {
        let log = log.clone();
        tokio::spawn(async move {
            for (p, b) in prepared {
                log.append(PartitionId(p), b).await.unwrap();
            }
        })
    };
    let mut seen = 0;
    while seen < batches * 1000 {
        seen += consumer.next_batch().await.unwrap().len();
    }
    let secs = start.elapsed().as_secs_f64();
    producer.await.unwrap();
    drop((consumer, log));
    std::fs::remove_dir_all(&path).unwrap();
    seen as f64 / secs
}

/// Throughput of the partitioned log, each figure beside a peer or a physical limit measured in
/// the same run.
#[derive(Debug, clap::Parser)]
struct Cli {
    /// A smaller smoke run (64 MiB of file appends instead of 1 GiB).
    #[arg(long)]
    quick: bool,
    /// Where the scratch directory is made (default: the system's temporary directory).
    #[arg(long)]
    dir: Option<PathBuf>,
}

fn main() {
    let Cli { quick, dir } = clap::Parser::parse();
    let sizes = if quick {
        Sizes {
            memory_batches: 300,
            file_bytes: 64 << 20,
            group_commit_secs: 1.0,
            tail_records: 200_000,
        }
    } else {
        Sizes {
            memory_batches: 3000,
            file_bytes: 1 << 30,
            group_commit_secs: 3.0,
            tail_records: 2_000_000,
        }
    };
    let scratch = match &dir {
        Some(d) => {
            std::fs::create_dir_all(d).unwrap();
            tempfile::tempdir_in(d).unwrap()
        }
        None => tempfile::tempdir().unwrap(),
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();

    let memory_rps = rt.block_on(memory_append(&sizes));
    let (mut disk, mut file) = (Vec::new(), Vec::new());
    for _ in 0..3 {
        disk.push(disk_write(scratch.path(), sizes.file_bytes));
        file.push(rt.block_on(file_append(scratch.path(), sizes.file_bytes)));
    }
    let (disk_mbps, file_mbps) = (median(disk), median(file));
    let fsync_per_s = disk_probe::fsync_rate(scratch.path(), sizes.group_commit_secs);
    let (group_rps, per_fsync) = rt.block_on(group_commit(scratch.path(), sizes.group_commit_secs));
    let tail_rps = rt.block_on(tail_read(scratch.path(), sizes.tail_records));

    let file_vs_disk = file_mbps / disk_mbps;
    let gain = group_rps / fsync_per_s;
    println!("scratch directory: {}", scratch.path().display());
    println!("{:<34} {:>16} {:>28}", "measurement", "value", "beside");
    println!(
        "{:<34} {:>16} {:>28}",
        "MemoryLog append, 100 B x1000",
        format!("{memory_rps:.0} rec/s"),
        "-"
    );
    println!(
        "{:<34} {:>16} {:>28}",
        "disk sequential write + fdatasync",
        format!("{disk_mbps:.1} MB/s"),
        "physical limit"
    );
    println!(
        "{:<34} {:>16} {:>28}",
        "FileLog append 1 KiB, buffered",
        format!("{file_mbps:.1} MB/s"),
        format!("{file_vs_disk:.2} x disk")
    );
    println!(
        "{:<34} {:>16} {:>28}",
        "plain write+fdatasync, 1 writer",
        format!("{fsync_per_s:.0} /s"),
        "physical limit"
    );
    println!(
        "{:<34} {:>16} {:>28}",
        "FileLog fsync-before-ack, 64 tasks",
        format!("{group_rps:.0} rec/s"),
        format!("{gain:.1} x fsync/append, {per_fsync:.1}/fsync")
    );
    println!(
        "{:<34} {:>16} {:>28}",
        "consumer group tailing FileLog",
        format!("{tail_rps:.0} rec/s"),
        "-"
    );
    let json = serde_json::json!({
        "memory_append_100b_rps": memory_rps.round(),
        "file_append_1k_mbps": (file_mbps * 10.0).round() / 10.0,
        "disk_write_mbps": (disk_mbps * 10.0).round() / 10.0,
        "file_vs_disk": (file_vs_disk * 1000.0).round() / 1000.0,
        "file_group_commit_rps": group_rps.round(),
        "fsync_per_s": fsync_per_s.round(),
        "records_per_fsync": (per_fsync * 10.0).round() / 10.0,
        "group_commit_vs_fsync": (gain * 10.0).round() / 10.0,
        "tail_read_rps": tail_rps.round(),
        "quick": quick,
    });
    println!("{json}");
}
