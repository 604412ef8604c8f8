//! The JetStream `Log` against raw `async-nats` JetStream publishing, and against `FileLog`.
//!
//! | key | what |
//! |---|---|
//! | `jetstream_append_rps` | records/s appended through `NatsLog`: one appender per partition, batches of `--batch` records of `--payload` bytes |
//! | `jetstream_vs_raw` | `jetstream_append_rps` / the same through raw `async-nats` JetStream publishing (`jetstream::Context::publish`, each ack future awaited): one stream per partition laid out like the log's, the same message count and bytes per message (the log's encoded record plus its header block, sent as payload without headers), one task per stream publishing a batch and awaiting all its acks before the next |
//! | `jetstream_raw_core_rps`, `jetstream_vs_core_publish` | the same workload published as the log publishes (core `publish_with_reply`, acks read from one subscription per stream) without its chain headers, and the log against it: what the chain costs on the server and in the client |
//! | `jetstream_tail_rps` | records/s a `GroupConsumer` reads back from the start of the topic (reads through the log's ordered push consumers) |
//! | `file_vs_jetstream` | `FileLog` (OS-buffered, the same durability class as a JetStream 2.9 ack: written, not fsync'ed) append records/s with the same workload / `jetstream_append_rps` |
//!
//! The log runs between its two peers, five rounds (one with `--quick`), the peers swapping
//! places every other round; each ratio is the median of the rounds' ratios, each between neighbours
//! exposed to the same drift of the shared machine, and the rates are the medians of the rounds.
//! Each round uses streams of a prefix of its own, deleted at the end. Each round's line also
//! gives the bytes the server stored for each side (equal but for 4 bytes a record: the store's
//! length field of a header block) and, with `--nats-server-pid` on the server's machine, the CPU
//! time per record of the server and of this process for each side and for the tail read, the
//! figures a busy machine does not blur as much as throughput.

use std::hash::BuildHasher;
use std::sync::Arc;
use std::time::Instant;

use async_nats::jetstream::context::PublishAckFuture;
use bytes::Bytes;
use futures::TryStreamExt;
use iot_sdk::core::{
    Durability, FileLog, FileLogConfig, GroupConsumer, GroupName, Log, LogFactory, PartitionId,
    Record, StartFrom, TopicName,
};
use iot_sdk::nats::{NatsLogConfig, NatsLogFactory};
use serde_json::Value;

use super::Report;

#[derive(Debug, clap::Args)]
pub(crate) struct Args {
    /// The NATS server (JetStream enabled).
    #[arg(long, default_value = "nats://127.0.0.1:4222")]
    nats_url: String,
    /// Partitions, each with its own appender task.
    #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u32).range(1..=64))]
    partitions: u32,
    /// Records per appended batch.
    #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(u32).range(1..=10_000))]
    batch: u32,
    /// Payload bytes per record.
    #[arg(long, default_value_t = 200, value_parser = clap::value_parser!(u32).range(0..=65_536))]
    payload: u32,
    /// The nats-server's process id, when it runs on this machine: each round then also prints
    /// the server's and this process's CPU time per record (from `/proc`) for both sides.
    #[arg(long)]
    nats_server_pid: Option<u32>,
}

struct Workload {
    partitions: u32,
    batches_per_partition: usize,
    batch: usize,
    payload: Bytes,
}

impl Workload {
    fn records(&self) -> usize {
        self.partitions as usize * self.batches_per_partition * self.batch
    }

    fn batch_for(&self, p: u32) -> Vec<Record> {
        (0..self.batch)
            .map(|_| Record::new(format!("device-{p:04}"), self.payload.clone()))
            .collect()
    }
}

fn prefix() -> String {
    let n = std::collections::hash_map::RandomState::new()
        .hash_one((std::time::SystemTime::now(), std::process::id()));
    format!("bench{:010x}", n & 0xff_ffff_ffff)
}

/// Measures and adds the JetStream keys to `report`; fails (without a panic) if NATS cannot be
/// reached.
pub(crate) async fn run(args: &Args, quick: bool, report: &mut Report) -> Result<(), String> {
    let config = NatsLogConfig::from_url(&args.nats_url).map_err(|e| e.to_string())?;
    NatsLogFactory::connect(config)
        .await
        .map_err(|e| format!("cannot use NATS at --nats-url: {e}"))?;
    let records_per_round: usize = if quick { 4_000 } else { 200_000 };
    let batches = (records_per_round / (args.partitions as usize * args.batch as usize)).max(1);
    let work = Workload {
        partitions: args.partitions,
        batches_per_partition: batches,
        batch: args.batch as usize,
        payload: Bytes::from(vec![b'x'; args.payload as usize]),
    };
    println!(
        "jetstream: {} records per round ({} partitions x {} batches x {} records of {} B)",
        work.records(),
        work.partitions,
        work.batches_per_partition,
        work.batch,
        args.payload
    );
    let rounds = if quick { 1 } else { 5 };
    let (mut log_rps, mut raw_rps, mut core_rps, mut tail_rps) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    let (mut ratios, mut core_ratios) = (Vec::new(), Vec::new());
    let cpu = CpuProbe {
        server: args.nats_server_pid,
    };
    for round in 0..rounds {
        // The log runs between its two peers, and the peers swap places every other round, so
        // that neither always inherits what another phase left behind (deleted streams, the
        // server's garbage, written-back pages).
        let url = &args.nats_url;
        let (raw, (log, tail), core) = if round % 2 == 0 {
            let raw = raw_append(url, &work, &cpu, Peer::Context).await;
            let log = log_append_and_tail(url, &work, &cpu).await;
            (raw, log, raw_append(url, &work, &cpu, Peer::Core).await)
        } else {
            let core = raw_append(url, &work, &cpu, Peer::Core).await;
            let log = log_append_and_tail(url, &work, &cpu).await;
            (raw_append(url, &work, &cpu, Peer::Context).await, log, core)
        };
        println!(
            "round {round}: raw publish {:.0} rec/s{}, NatsLog append {:.0} rec/s{}, core publish {:.0} rec/s{}, tail read {:.0} rec/s{}; stored bytes raw {}, log {}, core {}",
            raw.rps,
            raw.cpu,
            log.rps,
            log.cpu,
            core.rps,
            core.cpu,
            tail.rps,
            tail.cpu,
            raw.stored,
            log.stored,
            core.stored
        );
        ratios.push(log.rps / raw.rps);
        core_ratios.push(log.rps / core.rps);
        raw_rps.push(raw.rps);
        core_rps.push(core.rps);
        log_rps.push(log.rps);
        tail_rps.push(tail.rps);
    }
    let file_dir = tempfile::tempdir().unwrap();
    let file_rps = file_append(file_dir.path(), &work).await;
    let (log, raw, tail) = (median(log_rps), median(raw_rps), median(tail_rps));
    let core = median(core_rps);
    let (vs_raw, vs_core) = (median(ratios), median(core_ratios));
    println!("FileLog (OS-buffered) append {file_rps:.0} rec/s");
    println!(
        "medians: NatsLog {log:.0} rec/s, raw {raw:.0} rec/s, core {core:.0} rec/s, NatsLog/raw per round {vs_raw:.2}, NatsLog/core {vs_core:.2}; tail {tail:.0} rec/s; FileLog = {:.2} x NatsLog",
        file_rps / log
    );
    let round2 = |x: f64| Value::from((x * 100.0).round() / 100.0);
    report.insert("jetstream_append_rps".into(), Value::from(log.round()));
    report.insert("jetstream_vs_raw".into(), round2(vs_raw));
    report.insert("jetstream_raw_core_rps".into(), Value::from(core.round()));
    report.insert("jetstream_vs_core_publish".into(), round2(vs_core));
    report.insert("jetstream_tail_rps".into(), Value::from(tail.round()));
    report.insert("file_vs_jetstream".into(), round2(file_rps / log));
    Ok(())
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

async fn connect(url: &str, prefix: &str) -> NatsLogFactory {
    let config = NatsLogConfig::from_url(url)
        .unwrap()
        .prefix(prefix)
        .request_timeout(std::time::Duration::from_secs(30));
    NatsLogFactory::connect(config).await.unwrap()
}

/// Deletes the streams of `prefix`, returning the bytes the server stored in the partition
/// streams (the metadata stream aside): the same for both sides when the peer is fair.
async fn delete_streams(client: &async_nats::Client, prefix: &str) -> u64 {
    let js = async_nats::jetstream::new(client.clone());
    let names: Vec<String> = js.stream_names().try_collect().await.unwrap();
    let mut stored = 0;
    for name in names.iter().filter(|n| n.starts_with(prefix)) {
        if !name.ends_with("-meta") {
            stored += js.get_stream(name).await.unwrap().cached_info().state.bytes;
        }
        js.delete_stream(name).await.unwrap();
    }
    stored
}

/// Where a phase's CPU time went, per record: the server's (when its pid is known) and this
/// process's.
struct CpuProbe {
    server: Option<u32>,
}

struct CpuMark {
    server: Option<u64>,
    client: Option<u64>,
}

/// A phase's throughput and, when measured, its CPU per record (printed as `, CPU …`).
struct Phase {
    rps: f64,
    cpu: String,
    /// Bytes the server stored.
    stored: u64,
}

impl CpuProbe {
    fn mark(&self) -> CpuMark {
        CpuMark {
            server: self.server.and_then(|pid| cpu_ticks(&pid.to_string())),
            client: cpu_ticks("self"),
        }
    }

    fn per_record(&self, start: &CpuMark, records: usize) -> String {
        let end = self.mark();
        // Clock ticks are 10 ms on Linux (`getconf CLK_TCK` = 100).
        let us = |a: Option<u64>, b: Option<u64>| {
            a.zip(b)
                .map(|(a, b)| b.saturating_sub(a) as f64 * 10_000.0 / records as f64)
        };
        match (us(start.server, end.server), us(start.client, end.client)) {
            (Some(s), Some(c)) => format!(" (CPU/record: server {s:.2} us, client {c:.2} us)"),
            (None, Some(c)) => format!(" (CPU/record: client {c:.2} us)"),
            _ => String::new(),
        }
    }
}

/// User plus system CPU time of a process in clock ticks, from `/proc/PID/stat`.
fn cpu_ticks(pid: &str) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name, which may hold spaces but ends with the last ')'.
    let fields: Vec<&str> = stat.get(stat.rfind(')')? + 2..)?.split(' ').collect();
    Some(fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?)
}

/// Appends the workload through `NatsLog`, then reads it all back with a consumer group.
async fn log_append_and_tail(url: &str, work: &Workload, cpu: &CpuProbe) -> (Phase, Phase) {
    let prefix = prefix();
    let factory = connect(url, &prefix).await;
    let topic = TopicName::new("bench").unwrap();
    let log = factory.open_log(&topic, work.partitions).await.unwrap();
    let batches: Vec<Vec<Vec<Record>>> = (0..work.partitions)
        .map(|p| {
            (0..work.batches_per_partition)
                .map(|_| work.batch_for(p))
                .collect()
        })
        .collect();
    let mark = cpu.mark();
    let started = Instant::now();
    let tasks: Vec<_> = batches
        .into_iter()
        .enumerate()
        .map(|(p, batches)| {
            let log = log.clone();
            tokio::spawn(async move {
                for batch in batches {
                    log.append(PartitionId(p as u32), batch).await.unwrap();
                }
            })
        })
        .collect();
    for t in tasks {
        t.await.unwrap();
    }
    let mut append = Phase {
        rps: work.records() as f64 / started.elapsed().as_secs_f64(),
        cpu: cpu.per_record(&mark, work.records()),
        stored: 0,
    };

    let mark = cpu.mark();
    let started = Instant::now();
    let group = GroupName::new("bench").unwrap();
    let mut consumer = GroupConsumer::new(log.clone(), group, StartFrom::Earliest)
        .await
        .unwrap();
    let mut seen = 0;
    while seen < work.records() {
        seen += consumer.next_batch().await.unwrap().len();
    }
    let tail = Phase {
        rps: seen as f64 / started.elapsed().as_secs_f64(),
        cpu: cpu.per_record(&mark, seen),
        stored: 0,
    };
    drop(consumer);
    drop(log);
    append.stored = delete_streams(factory.client(), &prefix).await;
    (append, tail)
}

/// How a peer publishes: as async-nats's JetStream API does, or as the log does.
#[derive(Clone, Copy)]
enum Peer {
    /// `jetstream::Context::publish`: each message a request of its own (an inbox, a oneshot,
    /// a timer), its ack future awaited.
    Context,
    /// Core `Client::publish_with_reply` under one inbox per stream, the acks read from one
    /// subscription: how `NatsLog` publishes (`src/nats/acks.rs`), without its chain headers.
    Core,
}

/// The same messages through `async-nats` directly: one stream per partition, publishes of a batch
/// pipelined, all its acks awaited before the next batch — the log's ack mode and concurrency.
async fn raw_append(url: &str, work: &Workload, cpu: &CpuProbe, peer: Peer) -> Phase {
    let prefix = prefix();
    let client = async_nats::connect(url.split('?').next().unwrap())
        .await
        .unwrap();
    let js = async_nats::jetstream::new(client.clone());
    let record = &work.batch_for(0)[0];
    let payload = Bytes::from(vec![b'r'; log_message_len(record, 1, 3, usize::MAX - 1)]);
    let lens: Vec<Vec<usize>> = (0..work.batches_per_partition)
        .map(|b| {
            (0..work.batch)
                .map(|i| log_message_len(record, i, work.batch, b * work.batch + i))
                .collect()
        })
        .collect();
    let lens = Arc::new(lens);
    let mut subjects = Vec::new();
    for p in 0..work.partitions {
        // The log's layout: a stream holding `BASE.*`, a publisher on `BASE.WRITER`, names of
        // the same lengths as the log's (`log.bench` / `raw.bench`, a 17-character writer), so
        // that the server matches, stores and acknowledges as many bytes as for the log.
        let base = format!("{prefix}.raw.bench.{p}");
        js.get_or_create_stream(async_nats::jetstream::stream::Config {
            name: format!("{prefix}-rawbe_p{p}"),
            subjects: vec![format!("{base}.*")],
            deny_delete: true,
            allow_direct: true,
            ..Default::default()
        })
        .await
        .unwrap();
        subjects.push(async_nats::Subject::from(format!("{base}.w{:016x}", 0)));
    }
    let mark = cpu.mark();
    let started = Instant::now();
    let tasks: Vec<_> = subjects
        .into_iter()
        .map(|subject| {
            let (js, client) = (js.clone(), client.clone());
            let payload = payload.clone();
            let lens = lens.clone();
            tokio::spawn(async move {
                match peer {
                    Peer::Context => context_publish(&js, &subject, &payload, &lens).await,
                    Peer::Core => core_publish(&client, &subject, &payload, &lens).await,
                }
            })
        })
        .collect();
    for t in tasks {
        t.await.unwrap();
    }
    let mut phase = Phase {
        rps: work.records() as f64 / started.elapsed().as_secs_f64(),
        cpu: cpu.per_record(&mark, work.records()),
        stored: 0,
    };
    phase.stored = delete_streams(&client, &prefix).await;
    phase
}

async fn context_publish(
    js: &async_nats::jetstream::Context,
    subject: &async_nats::Subject,
    payload: &Bytes,
    batches: &[Vec<usize>],
) {
    for batch in batches {
        let mut acks: Vec<PublishAckFuture> = Vec::with_capacity(batch.len());
        for &len in batch {
            let payload = payload.slice(..len);
            acks.push(js.publish(subject.clone(), payload).await.unwrap());
        }
        for ack in futures::future::join_all(acks.into_iter().map(|a| a.into_future())).await {
            ack.unwrap();
        }
    }
}

async fn core_publish(
    client: &async_nats::Client,
    subject: &async_nats::Subject,
    payload: &Bytes,
    batches: &[Vec<usize>],
) {
    use futures::StreamExt;
    #[derive(serde::Deserialize)]
    struct Ack {
        seq: u64,
    }
    let inbox = client.new_inbox();
    let mut acks = client.subscribe(format!("{inbox}.*")).await.unwrap();
    let mut last = 0;
    for (b, batch) in batches.iter().enumerate() {
        // A reply subject per batch, as the log's; acks come back in the order published.
        let reply = async_nats::Subject::from(format!("{inbox}.{b}"));
        for &len in batch {
            let payload = payload.slice(..len);
            client
                .publish_with_reply(subject.clone(), reply.clone(), payload)
                .await
                .unwrap();
        }
        for _ in batch {
            let message = acks.next().await.unwrap();
            let ack: Ack = serde_json::from_slice(&message.payload).unwrap();
            assert_eq!(ack.seq, last + 1, "acknowledged out of order");
            last = ack.seq;
        }
    }
}

/// The bytes of the log's message for record `i` of a batch of `batch` records, appended after
/// stream sequence `before`, beyond its subject: the encoded record (`Record::size_bytes` plus 13,
/// see `iot_sdk::nats`'s codec) and the NATS header block: `NATS/1.0`,
/// `Nats-Expected-Last-Sequence`, on every record but the first `Nats-Expected-Last-Msg-Id`
/// naming the record before, and on every record but the last a `Nats-Msg-Id` (the writer's
/// 17-character name, a dot and the record's sequence; sequences in decimal). The raw peer
/// publishes payloads of exactly this length without headers, so both sides move and store the
/// same bytes and the ratio measures only the work the log does with them (encoding, header
/// checks on the server).
fn log_message_len(record: &Record, i: usize, batch: usize, before: usize) -> usize {
    const WRITER: usize = 17;
    let encoded = record.size_bytes() + 13;
    let digits = |n: usize| n.to_string().len();
    let mut headers =
        "NATS/1.0\r\n".len() + "Nats-Expected-Last-Sequence: \r\n".len() + digits(before);
    if i > 0 {
        headers += "Nats-Expected-Last-Msg-Id: .\r\n".len() + WRITER + digits(before);
    }
    if i + 1 < batch {
        headers += "Nats-Msg-Id: .\r\n".len() + WRITER + digits(before + 1);
    }
    encoded + headers + "\r\n".len()
}

/// The same workload appended to a `FileLog` (OS-buffered) in a temporary directory.
async fn file_append(dir: &std::path::Path, work: &Workload) -> f64 {
    let config = FileLogConfig::with_partitions(work.partitions).durability(Durability::OsBuffered);
    let log: Arc<dyn Log> = Arc::new(FileLog::open(dir.join("bench"), config).await.unwrap());
    let started = Instant::now();
    let tasks: Vec<_> = (0..work.partitions)
        .map(|p| {
            let log = log.clone();
            let batches: Vec<Vec<Record>> = (0..work.batches_per_partition)
                .map(|_| work.batch_for(p))
                .collect();
            tokio::spawn(async move {
                for batch in batches {
                    log.append(PartitionId(p), batch).await.unwrap();
                }
            })
        })
        .collect();
    for t in tasks {
        t.await.unwrap();
    }
    work.records() as f64 / started.elapsed().as_secs_f64()
}
