//! The Event Hubs–compatible endpoint's read throughput against reading the same log in
//! process, shared by `amqp_bench` and `eventhubs_bench` (included with `#[path]`).
//!
//! A FileLog of 4 partitions (the hub's log) is filled with telemetry-shaped records (the hub's
//! stamps as headers, two application properties, a 100-byte payload). Then, alternately three
//! times each (the ratio is the median of the rounds' ratios: each round's two runs follow each
//! other, so they share the machine's load of the moment):
//!
//! * **in process**: one task per partition reads it with `Log::read` in batches of 1 024
//!   records (at most 4 MiB), the endpoint's own batch, from offset 0 to the end: what a back
//!   end in the hub's process pays. (Until 2026-12-07 both read 256 at a time; the peer reads
//!   what the endpoint reads, so that a better batch size is not counted as the endpoint's
//!   gain.)
//! * **Event Hubs endpoint**, read by a lean client (`eventhubs_lean_client.rs`): over loopback
//!   TCP (no TLS; SASL PLAIN with the `service` policy), one receive link per partition from
//!   offset `-1`, pre-settled (`snd-settle-mode settled`; credit topped up to 1000 every 500
//!   events); it takes each event's sequence number (checked: in order, none missing) and body
//!   in place. This is `eventhubs_read_per_s` / `eventhubs_vs_inprocess`: the endpoint's
//!   throughput, not a client's.
//! * **the same through fe2o3-amqp's client** (the same links and credit), decoding each
//!   message into fe2o3-amqp's `Message`: `eventhubs_fe2o3_read_per_s` /
//!   `eventhubs_fe2o3_vs_inprocess`. That client costs several times what the endpoint does
//!   per event (docs/performance.md), so this figure is mostly the client's.
// A benchmark's set-up: a failure there is a bug of the benchmark, reported by the panic.
#![allow(clippy::unwrap_used, clippy::print_stdout)]

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use fe2o3_amqp::link::receiver::CreditMode;
use fe2o3_amqp::sasl_profile::SaslProfile;
use fe2o3_amqp::types::definitions::SenderSettleMode;
use fe2o3_amqp::types::messaging::{Body, Source};
use fe2o3_amqp::types::primitives::{Symbol, Value};
use fe2o3_amqp::{Connection, Receiver, Session};
use iot_sdk::core::{FileLog, FileLogConfig, Log, Offset, PartitionId, ReadLimits, Record};
use iot_sdk::eventhubs::{EventHubsConfig, EventHubsEndpoint};
use iot_sdk::gateway::http::{PolicyStore, Rights, SharedAccessPolicy};
use serde_amqp::described::Described;
use serde_amqp::descriptor::Descriptor;

#[path = "amqp_lean_conn.rs"]
pub(crate) mod amqp_lean_conn;
#[path = "eventhubs_lean_client.rs"]
mod lean_client;

/// Records per `Log::read` of the in-process peer: the endpoint's batch
/// (`src/eventhubs/partition.rs`).
const INPROCESS_BATCH: usize = 1024;

pub(crate) const PARTITIONS: u32 = 4;
const ROUNDS: usize = 3;

fn record(device: &str, n: usize, payload: &Bytes) -> Record {
    Record::new(device, payload.clone())
        .with_header("iothub-connection-device-id", device)
        .with_header(
            "iothub-connection-auth-method",
            r#"{"scope":"device","type":"sas","issuer":"iothub","acceptingIpFilterRule":null}"#,
        )
        .with_header("iothub-connection-auth-generation-id", "638000000000000000")
        .with_header("iothub-message-source", "Telemetry")
        .with_header("n", n.to_string())
        .with_header("sensor", "temperature")
}

async fn fill(log: &FileLog, records: usize) {
    let payload = Bytes::from(vec![b'x'; 100]);
    let per_partition = records / PARTITIONS as usize;
    for p in 0..PARTITIONS {
        let device = format!("bench-device-{p}");
        let mut n = 0;
        while n < per_partition {
            let batch = (n..(n + 1000).min(per_partition))
                .map(|i| record(&device, i, &payload))
                .collect::<Vec<_>>();
            n += batch.len();
            log.append(PartitionId(p), batch).await.unwrap();
        }
    }
    log.sync().await.unwrap();
}

async fn in_process(log: Arc<FileLog>, per_partition: u64) -> f64 {
    let start = Instant::now();
    let tasks: Vec<_> = (0..PARTITIONS)
        .map(|p| {
            let log = log.clone();
            tokio::spawn(async move {
                let mut next = 0u64;
                let mut bytes = 0usize;
                while next < per_partition {
                    let records = log
                        .read(
                            PartitionId(p),
                            Offset(next),
                            ReadLimits {
                                max_records: INPROCESS_BATCH,
                                max_bytes: 4 << 20,
                            },
                        )
                        .await
                        .unwrap();
                    // Touch what a reader uses, as the endpoint does.
                    bytes += records
                        .iter()
                        .map(|r| r.record.payload.len())
                        .sum::<usize>();
                    next = records.last().unwrap().offset.0 + 1;
                }
                bytes
            })
        })
        .collect();
    for t in tasks {
        t.await.unwrap();
    }
    (per_partition * u64::from(PARTITIONS)) as f64 / start.elapsed().as_secs_f64()
}

async fn through_endpoint(addr: SocketAddr, key: &str, per_partition: u64) -> f64 {
    let stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    stream.set_nodelay(true).unwrap();
    let mut connection = Connection::builder()
        .container_id("bench")
        .sasl_profile(SaslProfile::Plain {
            username: "service".into(),
            password: key.into(),
        })
        .open_with_stream(stream)
        .await
        .unwrap();
    let mut session = Session::begin(&mut connection).await.unwrap();
    let start = Instant::now();
    let mut tasks = Vec::new();
    for p in 0..PARTITIONS {
        let source = Source::builder()
            .address(format!("bench/ConsumerGroups/$Default/Partitions/{p}"))
            .add_to_filter(
                Symbol::from("apache.org:selector-filter:string"),
                Described {
                    descriptor: Descriptor::Name(Symbol::from("apache.org:selector-filter:string")),
                    value: Value::String("amqp.annotation.x-opt-offset > '-1'".into()),
                },
            )
            .build();
        let mut receiver = Receiver::builder()
            .name(format!("bench-{p}"))
            .source(source)
            .target("bench")
            .sender_settle_mode(SenderSettleMode::Settled)
            // Manual credit, topped up every 500 events: the client's automatic mode counts
            // settlements, and pre-settled deliveries have none.
            .credit_mode(CreditMode::Manual)
            .attach(&mut session)
            .await
            .unwrap();
        receiver.set_credit(1000).await.unwrap();
        tasks.push(tokio::spawn(async move {
            let mut bytes = 0usize;
            for i in 0..per_partition {
                if i % 500 == 499 {
                    receiver.set_credit(1000).await.unwrap();
                }
                let delivery = receiver.recv::<Body<Value>>().await.unwrap();
                if let Body::Data(batch) = delivery.body() {
                    bytes += batch.iter().map(|d| d.0.len()).sum::<usize>();
                }
            }
            let _ = receiver.close().await;
            bytes
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let rate = (per_partition * u64::from(PARTITIONS)) as f64 / start.elapsed().as_secs_f64();
    let _ = session.end().await;
    let _ = connection.close().await;
    rate
}

async fn through_lean_client(addr: SocketAddr, key: &str, per_partition: u64) -> f64 {
    let start = Instant::now();
    lean_client::read(addr, "bench", "service", key, PARTITIONS, per_partition).await;
    (per_partition * u64::from(PARTITIONS)) as f64 / start.elapsed().as_secs_f64()
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

/// Medians of the rounds: endpoint events/s (the lean client, and fe2o3-amqp's client),
/// in-process records/s, and the medians of the rounds' ratios.
pub(crate) struct Figures {
    pub(crate) endpoint: f64,
    pub(crate) in_process: f64,
    pub(crate) ratio: f64,
    pub(crate) fe2o3: f64,
    pub(crate) fe2o3_ratio: f64,
}

/// Fills a FileLog with `records` records and reads them both ways, printing each round.
pub(crate) async fn measure(records: usize) -> Figures {
    let per_partition = (records / PARTITIONS as usize) as u64;
    let dir = tempfile::tempdir().unwrap();
    let log = Arc::new(
        FileLog::open(dir.path(), FileLogConfig::default().partitions(PARTITIONS))
            .await
            .unwrap(),
    );
    fill(&log, records).await;
    let service = SharedAccessPolicy::generate("service", Rights::SERVICE_CONNECT);
    let key = service.primary.expose_base64().to_string();
    let endpoint = EventHubsEndpoint::new(
        log.clone() as Arc<dyn Log>,
        Arc::new(PolicyStore::memory(vec![service])),
        EventHubsConfig::new("bench.local", "bench"),
    );
    let addr = endpoint
        .listen_tcp("127.0.0.1:0".parse().unwrap())
        .await
        .unwrap();
    println!(
        "event hubs: {records} records (100-byte payloads, 6 headers) in a FileLog of {PARTITIONS} partitions"
    );
    let (mut local, mut remote, mut ratios) = (Vec::new(), Vec::new(), Vec::new());
    let (mut fe2o3, mut fe2o3_ratios) = (Vec::new(), Vec::new());
    for round in 0..ROUNDS {
        let l = in_process(log.clone(), per_partition).await;
        let r = through_lean_client(addr, &key, per_partition).await;
        let f = through_endpoint(addr, &key, per_partition).await;
        println!(
            "event hubs round {round}: in process {l:>10.0} records/s   endpoint {r:>10.0} events/s   (fe2o3-amqp client {f:>10.0} events/s)"
        );
        local.push(l);
        remote.push(r);
        ratios.push(r / l);
        fe2o3.push(f);
        fe2o3_ratios.push(f / l);
    }
    endpoint.stop();
    Figures {
        endpoint: median(remote),
        in_process: median(local),
        ratio: median(ratios),
        fe2o3: median(fe2o3),
        fe2o3_ratio: median(fe2o3_ratios),
    }
}
