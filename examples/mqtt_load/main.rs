//! MQTT load generator: N devices (rumqttc clients) publish telemetry at full speed while a
//! back-end consumer receives all of it; prints what was sent and what arrived, msgs/s and
//! end-to-end latency percentiles.
//!
//! ```text
//! cargo run --release --example mqtt_load -- --target gateway [--devices 1000] [--messages 100] \
//!     [--qos 1] [--payload 100]
//! cargo run --release --example mqtt_load -- --target broker --broker 127.0.0.1:1885 [...]
//! cargo run --release --example mqtt_load -- --target remote --broker 127.0.0.1:1884 \
//!     --stats 127.0.0.1:1890 --fleet-key-file DIR/fleet.key [--host localhost] [...]
//! cargo run --release --example mqtt_load -- --mode connections --broker 127.0.0.1:8884 \
//!     --fleet-key-file DIR/fleet.key [--tls-ca DIR/tls/ca.pem --host localhost] \
//!     [--devices 10000] [--hold 20]
//! ```
//!
//! * `gateway`: starts a `Hub` (in-memory log, throttling off) with its MQTT endpoint on an
//!   ephemeral loopback port, provisions the devices with SAS tokens, and consumes the telemetry
//!   log.
//! * `broker`: a plain MQTT broker such as Mosquitto at `--broker`; the consumer subscribes to
//!   `devices/#` at the same QoS.
//! * `remote`: our gateway in another process at `--broker` (`mqtt_gateway --fleet N
//!   --telemetry-stats ADDR`), driven as a broker is: the devices are its fleet, and the consumer
//!   is its telemetry counter at `--stats`, polled until every message arrived (see `remote.rs`).
//!
//! * `--mode connections`: holds `--devices` connections to a running gateway
//!   (`examples/mqtt_gateway --fleet N`): devices `fleet-0` … authenticate with SAS tokens
//!   signed by keys derived from the group key in `--fleet-key-file`. With `--tls-ca` the
//!   connections are TLS to the broker's address, and the certificate must name `--host`
//!   (`--spread N` dials N loopback addresses from the broker's on; see `tls.rs`). Each device
//!   subscribes to its C2D, method, twin-answer and
//!   desired-patch topics, as the Azure SDKs do. Once every device is connected and subscribed it
//!   prints `held: N` and keeps
//!   them open for `--hold` seconds (keep-alive pings included), then counts how many are still
//!   up. Last line: JSON with `mode`, `devices`, `connected`, `still_connected`,
//!   `connect_s`, `connects_per_s`, `refusals`.
//!
//! Each payload starts with the send time (Unix microseconds, 8 bytes big-endian), so latency is
//! from the device's `publish` call to the consumer. The last line is a JSON object with
//! `target`, `devices`, `sent`, `received`, `msgs_per_s`, `p50_ms`, `p99_ms`.
#![allow(clippy::print_stdout, clippy::print_stderr)]

mod connections;
mod fleet;
mod remote;
mod tls;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use iot_core::{Log, Offset, PartitionId, ReadLimits};
use iot_gateway::mqtt::{MqttConfig, MqttServer};
use iot_gateway::{Hub, HubConfig, ThrottleConfig};
use iot_identity::{
    Credentials, IdentityStore, MemoryIdentityStore, NewIdentity, SymmetricKey, sas,
};
use rumqttc::{AsyncClient, Event, Incoming, MqttOptions, QoS};
use tokio::sync::mpsc;

const HOST: &str = "localhost";

/// A device id and, for our gateway, its username and SAS token.
type Login = (String, Option<(String, String)>);

#[derive(Debug, Clone)]
struct Args {
    /// `throughput` (default) or `connections`.
    mode: String,
    target: String,
    broker: Option<SocketAddr>,
    stats: Option<SocketAddr>,
    devices: usize,
    messages: usize,
    qos: QoS,
    payload: usize,
    fleet_key_file: Option<std::path::PathBuf>,
    tls_ca: Option<std::path::PathBuf>,
    host: String,
    hold: Duration,
    spread: u8,
}

/// MQTT load generator: N devices (rumqttc clients) publish telemetry at full speed while a
/// back-end consumer receives all of it; or, with --mode connections, N devices hold connections
/// to a running mqtt_gateway.
#[derive(Debug, clap::Parser)]
#[command(name = "mqtt_load")]
struct Cli {
    /// What to measure.
    #[arg(long, default_value = "throughput", value_parser = ["throughput", "connections"])]
    mode: String,
    /// Throughput mode: our gateway (started in-process), a plain MQTT broker at --broker, or
    /// our gateway running in another process at --broker (with --stats).
    #[arg(long, default_value = "gateway", value_parser = ["gateway", "broker", "remote"])]
    target: String,
    /// Remote target: the gateway's telemetry counter (mqtt_gateway --telemetry-stats ADDR).
    #[arg(long, value_name = "HOST:PORT")]
    stats: Option<SocketAddr>,
    /// The broker (or, with --mode connections, the running gateway) to connect to.
    #[arg(long, value_name = "HOST:PORT")]
    broker: Option<SocketAddr>,
    /// Devices.
    #[arg(long, default_value_t = 1000)]
    devices: usize,
    /// Messages per device.
    #[arg(long, default_value_t = 100)]
    messages: usize,
    /// QoS of the telemetry.
    #[arg(long, default_value = "1", value_parser = ["0", "1"])]
    qos: String,
    /// Payload bytes (at least 8: the send time).
    #[arg(long, default_value_t = 100)]
    payload: usize,
    /// Connections mode and remote target: the group key the gateway's fleet keys derive from
    /// (DIR/fleet.key).
    #[arg(long, value_name = "FILE")]
    fleet_key_file: Option<std::path::PathBuf>,
    /// Connections mode: connect over TLS, trusting this CA certificate (PEM).
    #[arg(long, value_name = "CA.pem")]
    tls_ca: Option<std::path::PathBuf>,
    /// Connections mode and remote target: the host name in SAS tokens and, with --tls-ca, the
    /// certificate's name.
    #[arg(long, default_value = HOST)]
    host: String,
    /// Connections mode: seconds to hold the connections once all are up.
    #[arg(long, value_name = "SECONDS", default_value_t = 20)]
    hold: u64,
    /// Connections mode: spread the devices over this many loopback addresses (the broker's
    /// address and the ones after it, 127.0.0.1, 127.0.0.2, …), each with its own range of
    /// source ports, for more connections than one address pair allows (about 28 000). The
    /// gateway must listen on all of them (0.0.0.0); TLS still checks the certificate names
    /// --host.
    #[arg(long, value_name = "N", default_value_t = 1, value_parser = clap::value_parser!(u8).range(1..=64))]
    spread: u8,
}

/// The flags, checked; a usage error is clap's (exit status 2).
fn parse() -> Args {
    let cli = <Cli as clap::Parser>::parse();
    let args = Args {
        mode: cli.mode,
        target: cli.target,
        broker: cli.broker,
        stats: cli.stats,
        devices: cli.devices,
        messages: cli.messages,
        qos: if cli.qos == "0" {
            QoS::AtMostOnce
        } else {
            QoS::AtLeastOnce
        },
        payload: cli.payload.max(8),
        fleet_key_file: cli.fleet_key_file,
        tls_ca: cli.tls_ca,
        host: cli.host,
        hold: Duration::from_secs(cli.hold),
        spread: cli.spread,
    };
    let problem = if args.mode == "connections" {
        (args.broker.is_none() || args.fleet_key_file.is_none())
            .then_some("--mode connections needs --broker HOST:PORT and --fleet-key-file")
    } else if args.target == "remote" {
        (args.broker.is_none() || args.stats.is_none() || args.fleet_key_file.is_none()).then_some(
            "--target remote needs --broker HOST:PORT, --stats HOST:PORT and --fleet-key-file",
        )
    } else {
        (args.target == "broker" && args.broker.is_none())
            .then_some("--target broker needs --broker HOST:PORT")
    };
    if let Some(message) = problem {
        <Cli as clap::CommandFactory>::command()
            .error(clap::error::ErrorKind::MissingRequiredArgument, message)
            .exit();
    }
    args
}

fn now_micros() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_micros() as u64)
        .unwrap_or(0)
}

/// Latency of one payload, from the timestamp it carries.
fn latency_of(payload: &[u8]) -> Option<u64> {
    let stamp = u64::from_be_bytes(payload.get(..8)?.try_into().ok()?);
    Some(now_micros().saturating_sub(stamp))
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args = parse();
    if args.mode == "connections" {
        return connections::hold_connections(&args).await;
    }
    let expected = (args.devices * args.messages) as u64;
    let (latency_tx, mut latency_rx) = mpsc::unbounded_channel::<u64>();

    // The consumer, and per device how to connect.
    let mut gateway = None;
    let (addr, credentials): (SocketAddr, Vec<Login>) = if args.target == "gateway" {
        let identity = Arc::new(MemoryIdentityStore::new());
        let mut devices = Vec::with_capacity(args.devices);
        for i in 0..args.devices {
            let id = format!("load-{i}");
            let key = SymmetricKey::generate();
            identity
                .create(NewIdentity::new(
                    id.parse()?,
                    Credentials::SymmetricKeys {
                        primary: key.clone(),
                        secondary: SymmetricKey::generate(),
                    },
                ))
                .await?;
            let token = sas::generate(
                &format!("{HOST}/devices/{id}"),
                &key,
                sas::unix_now() + 3600,
                None,
            )?;
            let username = format!("{HOST}/{id}/?api-version=2021-04-12");
            devices.push((id, Some((username, token.as_str().to_string()))));
        }
        let mut config = HubConfig::default();
        config.throttle = ThrottleConfig::unlimited();
        let hub = Hub::builder(identity, HOST).config(config).build().await?;
        let server = MqttServer::new(Arc::new(hub.clone()), MqttConfig::default())?;
        let addr = server.listen_tcp("127.0.0.1:0".parse()?).await?;
        let log = hub.telemetry_log().clone();
        for p in 0..log.partition_count() {
            tokio::spawn(consume_log(log.clone(), PartitionId(p), latency_tx.clone()));
        }
        gateway = Some((hub, server));
        (addr, devices)
    } else if args.target == "remote" {
        (args.broker.ok_or("no broker")?, fleet::fleet_logins(&args)?)
    } else {
        let addr = args.broker.ok_or("no broker")?;
        let mut options = MqttOptions::new("load-consumer", addr.ip().to_string(), addr.port());
        options.set_keep_alive(Duration::from_secs(60));
        options.set_max_packet_size(1 << 20, 1 << 20);
        options.set_inflight(1000);
        let (client, mut eventloop) = AsyncClient::new(options, 10_000);
        client.subscribe("devices/#", args.qos).await?;
        let (ready_tx, ready_rx) = tokio::sync::oneshot::channel();
        let mut ready_tx = Some(ready_tx);
        let tx = latency_tx.clone();
        tokio::spawn(async move {
            let _client = client;
            loop {
                match eventloop.poll().await {
                    Ok(Event::Incoming(Incoming::SubAck(_))) => {
                        if let Some(ready) = ready_tx.take() {
                            let _ = ready.send(());
                        }
                    }
                    Ok(Event::Incoming(Incoming::Publish(p))) => {
                        if let Some(l) = latency_of(&p.payload) {
                            let _ = tx.send(l);
                        }
                    }
                    Ok(_) => {}
                    Err(e) => {
                        eprintln!("consumer: {e}");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                }
            }
        });
        ready_rx.await?;
        let devices = (0..args.devices)
            .map(|i| (format!("load-{i}"), None))
            .collect();
        (addr, devices)
    };
    drop(latency_tx);

    // Connect every device first, then let them all publish at once.
    let sent = Arc::new(AtomicU64::new(0));
    // Set once every device has its acknowledgements and we start disconnecting them. A server
    // closes the socket as soon as it reads DISCONNECT (MQTT 3.1.1, 3.14.4), and rumqttc may
    // read that end of stream before it reports its own DISCONNECT as sent, calling it "closed
    // by peer abruptly". Such ends are counted apart from errors during the run.
    let closing = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let errors_during_run = Arc::new(AtomicU64::new(0));
    let ends_at_disconnect = Arc::new(AtomicU64::new(0));
    let start = Arc::new(tokio::sync::Barrier::new(args.devices + 1));
    let mut publishers = Vec::with_capacity(args.devices);
    for (id, login) in credentials {
        let mut options = MqttOptions::new(id.clone(), addr.ip().to_string(), addr.port());
        options.set_keep_alive(Duration::from_secs(60));
        options.set_inflight(16);
        if let Some((username, password)) = login {
            options.set_credentials(username, password);
        }
        let (client, mut eventloop) = AsyncClient::new(options, 64);
        let acked = Arc::new(tokio::sync::Notify::new());
        let done_count = Arc::new(AtomicU64::new(0));
        let (connected_tx, connected_rx) = tokio::sync::oneshot::channel();
        let mut connected_tx = Some(connected_tx);
        {
            let acked = acked.clone();
            let done_count = done_count.clone();
            let (closing, errors_during_run, ends_at_disconnect) = (
                closing.clone(),
                errors_during_run.clone(),
                ends_at_disconnect.clone(),
            );
            tokio::spawn(async move {
                loop {
                    match eventloop.poll().await {
                        Ok(Event::Incoming(Incoming::ConnAck(_))) => {
                            if let Some(tx) = connected_tx.take() {
                                let _ = tx.send(());
                            }
                        }
                        Ok(Event::Incoming(Incoming::PubAck(_))) => {
                            done_count.fetch_add(1, Ordering::Relaxed);
                            acked.notify_one();
                        }
                        Ok(Event::Outgoing(rumqttc::Outgoing::Disconnect)) => return,
                        Ok(_) => {}
                        Err(_) if closing.load(Ordering::Relaxed) => {
                            ends_at_disconnect.fetch_add(1, Ordering::Relaxed);
                            return;
                        }
                        Err(e) => {
                            eprintln!("device: {e}");
                            errors_during_run.fetch_add(1, Ordering::Relaxed);
                            return;
                        }
                    }
                }
            });
        }
        connected_rx.await?;
        let sent = sent.clone();
        let start = start.clone();
        let (qos, messages, size) = (args.qos, args.messages, args.payload);
        let topic = format!("devices/{id}/messages/events/");
        publishers.push(tokio::spawn(async move {
            start.wait().await;
            for _ in 0..messages {
                let mut payload = vec![b'x'; size];
                payload[..8].copy_from_slice(&now_micros().to_be_bytes());
                if client
                    .publish(topic.as_str(), qos, false, payload)
                    .await
                    .is_err()
                {
                    break;
                }
                sent.fetch_add(1, Ordering::Relaxed);
            }
            if qos == QoS::AtLeastOnce {
                while done_count.load(Ordering::Relaxed) < messages as u64 {
                    acked.notified().await;
                }
            }
            client
        }));
    }
    // What the remote gateway had counted before (its own start-up, an earlier run).
    let base = match args.stats {
        Some(stats) if args.target == "remote" => remote::counts(stats).await?.received,
        _ => 0,
    };
    start.wait().await;
    let began = Instant::now();

    let mut latencies = Vec::with_capacity(expected as usize);
    let deadline = Duration::from_secs(120);
    let mut remote_counts = None;
    let elapsed = match args.stats {
        Some(stats) if args.target == "remote" => {
            let (counts, at) = remote::wait_for(stats, base, expected, began, deadline).await?;
            remote_counts = Some(counts);
            at
        }
        _ => {
            while (latencies.len() as u64) < expected {
                match tokio::time::timeout(Duration::from_secs(10), latency_rx.recv()).await {
                    Ok(Some(l)) => latencies.push(l),
                    _ => break,
                }
                if began.elapsed() > deadline {
                    break;
                }
            }
            began.elapsed()
        }
    };
    closing.store(true, Ordering::Relaxed);
    for publisher in publishers {
        if let Ok(client) = publisher.await {
            let _ = client.disconnect().await;
        }
    }
    if let Some((hub, server)) = gateway {
        server.shutdown().await;
        hub.shutdown().await;
    }

    latencies.sort_unstable();
    let pct = |p: f64| -> f64 {
        if latencies.is_empty() {
            return f64::NAN;
        }
        let i = ((latencies.len() as f64 - 1.0) * p).round() as usize;
        latencies[i] as f64 / 1000.0
    };
    let (received, p50, p99) = match remote_counts {
        Some(c) => (c.received.saturating_sub(base), c.p50_ms, c.p99_ms),
        None => (latencies.len() as u64, pct(0.50), pct(0.99)),
    };
    let rate = received as f64 / elapsed.as_secs_f64();
    println!(
        "{}: {} devices, QoS {}, sent {} received {} of {} in {:.2}s: {:.0} msgs/s, p50 {:.2} ms, p99 {:.2} ms",
        args.target,
        args.devices,
        args.qos as u8,
        sent.load(Ordering::Relaxed),
        received,
        expected,
        elapsed.as_secs_f64(),
        rate,
        p50,
        p99
    );
    // Give the device tasks a moment to see the end of their streams before counting.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let (errors, ends) = (
        errors_during_run.load(Ordering::Relaxed),
        ends_at_disconnect.load(Ordering::Relaxed),
    );
    if ends > 0 {
        eprintln!(
            "{ends} device connections ended by the server right after our DISCONNECT (not an error)"
        );
    }
    println!(
        "{{\"target\":\"{}\",\"devices\":{},\"qos\":{},\"sent\":{},\"received\":{},\"expected\":{},\"msgs_per_s\":{:.0},\"p50_ms\":{:.3},\"p99_ms\":{:.3},\"device_errors\":{},\"ended_at_disconnect\":{}}}",
        args.target,
        args.devices,
        args.qos as u8,
        sent.load(Ordering::Relaxed),
        received,
        expected,
        rate,
        p50,
        p99,
        errors,
        ends
    );
    Ok(())
}

/// Tails one partition of the telemetry log, reporting each record's latency.
async fn consume_log(log: Arc<dyn Log>, partition: PartitionId, tx: mpsc::UnboundedSender<u64>) {
    let mut next = Offset(0);
    loop {
        if log.wait_for(partition, next).await.is_err() {
            return;
        }
        let Ok(records) = log.read(partition, next, ReadLimits::default()).await else {
            return;
        };
        for stored in records {
            if let Some(l) = latency_of(&stored.record.payload)
                && tx.send(l).is_err()
            {
                return;
            }
            next = Offset(stored.offset.0 + 1);
        }
    }
}
