//! Field-gateway benchmark (issue 18): forwarding through a field gateway against sending to the
//! hub directly, the edge log's drain rate after an outage, and the device client against the
//! rumqttc-based load generator, all in one run on loopback.
//!
//! ```text
//! cargo run --release --example edge_bench --features edge              # the figures
//! cargo run --example edge_bench --features edge -- --quick             # a small smoke run (CI)
//! ```
//!
//! One "cloud" hub and one "edge" hub, each on a temporary directory (`Hub::open_dir`: a
//! `FileLog` fsynced before each PUBACK, throttling off): both paths pay for the same
//! durability at each hub they pass, as in production, where the cloud hub's log is durable too.
//! The cloud has an MQTT/TLS listener (self-signed CA); the edge an MQTT/TLS listener (its own
//! CA) and a `Forwarder` to the cloud (one device client per leaf over TLS). The leaves use TLS
//! on both paths, so they do the same work in both phases.
//!
//! **Where each part runs.** A field gateway is a machine of its own, beside its leaves and away
//! from the cloud. On a machine with two or more CPUs (and `taskset`), the bench models that:
//! the field gateway (edge hub, edge log, forwarder) runs in a child process of this binary
//! pinned to CPU 0, and this process (the cloud hub and the leaves, which are the same in both
//! phases) is pinned to CPU 1. The direct and the forward phase thus give the same CPU to the
//! same leaves and cloud, and the forward phase adds the field gateway on its own core, as a
//! deployment adds its hardware. The client phase (4.) runs unpinned again: it compares two
//! clients, not placements. `--one-process` runs everything in this process on every CPU
//! instead (the edge then competes with the cloud and the leaves for the same cores); so does a
//! machine with one CPU or without `taskset`. The placement is printed before the figures.
//!
//! 1. **direct**: the leaves (rumqttc, QoS 1, 16 in flight each, as `examples/mqtt_load`) send
//!    `--messages` each to the cloud hub over TLS; the rate is messages over the time until all
//!    are in the cloud's log.
//! 2. **forward**: the same leaves send as many to the edge hub; the rate is messages over the time
//!    until all are in the cloud's log (leaf → edge log → forwarder → cloud). `forward_vs_direct`
//!    is forward's rate over direct's.
//! 3. **drain**: the cloud's TLS listener is stopped; the leaves send `--drain` messages each to
//!    the edge (all PUBACKed there); the listener starts again, and `drain_msgs_per_s` is those
//!    messages over the time from the restart until the last is in the cloud's log (the upstream
//!    clients' reconnect backoff, at most 1 s here, included).
//! 4. **client vs rumqttc**: against a second cloud hub with an in-memory log (the clients are
//!    measured, not the disk), `--clients` rumqttc devices (16 in flight) and `--clients` of our
//!    `DeviceClient`s (16 in flight), all connected beforehand, send `--messages` each over TLS
//!    in three rounds per side, alternating which side goes first; a round's rate is messages
//!    over the time until every PUBACK arrived. `client_vs_rumqttc` is our median round over
//!    rumqttc's.
//!
//! `lost` counts messages PUBACKed by the edge hub (phases 2 and 3) whose message id is missing
//! from the cloud's log after a wait. The last line is a JSON object with exactly the keys
//! `forward_vs_direct`, `drain_msgs_per_s`, `client_vs_rumqttc`, `lost`.
#![allow(clippy::print_stdout, clippy::print_stderr)]

#[path = "mqtt_load/tls.rs"]
mod tls;

use std::collections::HashSet;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use clap::Parser;
use iot_core::{Log, LogExt, Offset, ReadLimits};
use iot_gateway::client::{Backoff, ClientOptions, DeviceClient, Message, OutboxConfig, WhenFull};
use iot_gateway::edge::{Forwarder, ForwarderOptions, IdentityMap};
use iot_gateway::mqtt::{MqttConfig, MqttServer, SelfSigned};
use iot_gateway::{Gateway, Hub, HubConfig, ThrottleConfig};
use iot_identity::{
    Credentials, IdentityStore, MemoryIdentityStore, NewIdentity, SymmetricKey, sas,
};
use rumqttc::{AsyncClient, Event, Incoming, MqttOptions, QoS};

const HOST: &str = "localhost";
/// Messages a rumqttc device and a device client keep unacknowledged (`mqtt_load`'s setting and
/// the client's default).
const IN_FLIGHT: usize = 16;
/// How long the bench waits for something that should have happened, before it reports what
/// is missing instead.
const PATIENCE: Duration = Duration::from_secs(120);
/// Rounds of the client-vs-rumqttc phase (odd, for a median).
const CLIENT_ROUNDS: usize = 3;

type Error = Box<dyn std::error::Error + Send + Sync>;

/// Field-gateway benchmark: forward vs direct, the drain rate after an outage, and the device
/// client vs rumqttc. Last line: JSON with forward_vs_direct, drain_msgs_per_s,
/// client_vs_rumqttc, lost.
#[derive(Debug, Parser)]
#[command(name = "edge_bench")]
struct Cli {
    /// A small run (20 leaves, 50 messages each, 50 each for the drain, 20 client devices).
    #[arg(long)]
    quick: bool,
    /// Leaf devices behind the field gateway (default 100).
    #[arg(long, value_name = "N")]
    leaves: Option<usize>,
    /// Messages per leaf in the direct and forward phases, and per device in the client phase
    /// (default 1000: phases of seconds, not one, so that the forwarder's fixed lag behind the
    /// last PUBACK, a few tenths of a second, does not decide the forward rate).
    #[arg(long, value_name = "N")]
    messages: Option<usize>,
    /// Messages per leaf sent while the cloud is unreachable (default 200).
    #[arg(long, value_name = "N")]
    drain: Option<usize>,
    /// Devices in the client-vs-rumqttc phase (default 100).
    #[arg(long, value_name = "N")]
    clients: Option<usize>,
    /// Payload bytes.
    #[arg(long, value_name = "BYTES", default_value_t = 100)]
    payload: usize,
    /// Run the field gateway in this process, on the same cores as the cloud and the leaves.
    #[arg(long)]
    one_process: bool,
    /// Internal: run as the field-gateway process, with its files in DIR (see `EdgeChild`).
    #[arg(long, value_name = "DIR", hide = true)]
    edge_process: Option<std::path::PathBuf>,
    /// Internal: the cloud's TLS port, for `--edge-process`.
    #[arg(long, value_name = "PORT", hide = true)]
    cloud_port: Option<u16>,
}

/// One device: its id, key, and MQTT login for a hub signing for `HOST`.
#[derive(Clone)]
struct Device {
    id: String,
    key: SymmetricKey,
}

impl Device {
    fn login(&self) -> Result<(String, String), Error> {
        let token = sas::generate(
            &format!("{HOST}/devices/{}", self.id),
            &self.key,
            sas::unix_now() + 3600,
            None,
        )?;
        Ok((
            format!("{HOST}/{}/?api-version=2021-04-12", self.id),
            token.as_str().to_owned(),
        ))
    }
}

fn unlimited() -> HubConfig {
    let mut config = HubConfig::default();
    config.throttle = ThrottleConfig::unlimited();
    config
}

async fn provision(store: &MemoryIdentityStore, devices: &[Device]) -> Result<(), Error> {
    for d in devices {
        store
            .create(NewIdentity::new(
                d.id.parse()?,
                Credentials::SymmetricKeys {
                    primary: d.key.clone(),
                    secondary: SymmetricKey::generate(),
                },
            ))
            .await?;
    }
    Ok(())
}

/// Records in all partitions of `log`.
async fn count(log: &Arc<dyn Log>) -> Result<u64, Error> {
    let mut n = 0;
    for p in log.partitions() {
        n += log.next_offset(p).await?.get();
    }
    Ok(n)
}

/// Waits until `log` holds `target` records; returns when (or `None` after `PATIENCE`).
async fn until_count(log: &Arc<dyn Log>, target: u64) -> Result<Option<Instant>, Error> {
    let deadline = Instant::now() + PATIENCE;
    loop {
        if count(log).await? >= target {
            return Ok(Some(Instant::now()));
        }
        if Instant::now() > deadline {
            return Ok(None);
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

/// Every message id in `log`.
async fn message_ids(log: &Arc<dyn Log>) -> Result<HashSet<String>, Error> {
    let mut ids = HashSet::new();
    for p in log.partitions() {
        let mut from = Offset(0);
        loop {
            let records = log.read(p, from, ReadLimits::default()).await?;
            let Some(last) = records.last() else { break };
            from = last.offset.next();
            for r in records {
                if let Some(id) = r.record.headers.get("message-id") {
                    ids.insert(id.to_owned());
                }
            }
        }
    }
    Ok(ids)
}

/// The cloud: an in-memory hub with a TLS listener that can be stopped and started on the same
/// port, and a plain one.
struct Cloud {
    hub: Hub,
    pair: SelfSigned,
    tls: Option<MqttServer>,
    tls_addr: SocketAddr,
}

impl Cloud {
    async fn listen(&mut self) -> Result<(), Error> {
        let server = MqttServer::new(Arc::new(self.hub.clone()), MqttConfig::default())?;
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            match server
                .listen_tls(self.tls_addr, self.pair.tls_config(false)?)
                .await
            {
                Ok(bound) => {
                    self.tls_addr = bound;
                    break;
                }
                Err(e) if Instant::now() > deadline => return Err(e.into()),
                Err(_) => tokio::time::sleep(Duration::from_millis(20)).await,
            }
        }
        self.tls = Some(server);
        Ok(())
    }

    async fn stop(&mut self) {
        if let Some(server) = self.tls.take() {
            server.shutdown().await;
        }
    }
}

/// Connected rumqttc devices, each with its event loop in a task counting PUBACKs.
struct Fleet {
    devices: Vec<(
        String,
        AsyncClient,
        Arc<AtomicU64>,
        Arc<tokio::sync::Notify>,
    )>,
}

impl Fleet {
    /// Connects `devices` to `addr` (TLS with `tls`, else plain MQTT).
    async fn connect(
        devices: &[Device],
        addr: SocketAddr,
        tls: Option<Arc<rustls::ClientConfig>>,
    ) -> Result<Fleet, Error> {
        let mut out = Vec::with_capacity(devices.len());
        for d in devices {
            let mut options = MqttOptions::new(d.id.clone(), addr.ip().to_string(), addr.port());
            options.set_keep_alive(Duration::from_secs(60));
            options.set_inflight(IN_FLIGHT as u16);
            let (username, password) = d.login()?;
            options.set_credentials(username, password);
            if let Some(config) = &tls {
                options.set_transport(rumqttc::Transport::tls_with_config(
                    rumqttc::TlsConfiguration::Rustls(config.clone()),
                ));
            }
            let (client, mut eventloop) = AsyncClient::new(options, 64);
            let acked = Arc::new(AtomicU64::new(0));
            let notify = Arc::new(tokio::sync::Notify::new());
            let (connected_tx, connected_rx) = tokio::sync::oneshot::channel();
            let mut connected_tx = Some(connected_tx);
            let (acked_in_loop, notify_in_loop) = (acked.clone(), notify.clone());
            tokio::spawn(async move {
                loop {
                    match eventloop.poll().await {
                        Ok(Event::Incoming(Incoming::ConnAck(_))) => {
                            if let Some(tx) = connected_tx.take() {
                                let _ = tx.send(());
                            }
                        }
                        Ok(Event::Incoming(Incoming::PubAck(_))) => {
                            acked_in_loop.fetch_add(1, Ordering::Relaxed);
                            notify_in_loop.notify_one();
                        }
                        Ok(Event::Outgoing(rumqttc::Outgoing::Disconnect)) => return,
                        Ok(_) => {}
                        Err(_) => {
                            // Wake the sender, which then sees the count stuck and gives up.
                            notify_in_loop.notify_one();
                            return;
                        }
                    }
                }
            });
            tokio::time::timeout(Duration::from_secs(30), connected_rx)
                .await
                .map_err(|_| format!("{}: no CONNACK", d.id))?
                .map_err(|_| format!("{}: connection failed", d.id))?;
            out.push((d.id.clone(), client, acked, notify));
        }
        Ok(Fleet { devices: out })
    }

    /// Every device sends `messages` (message ids `{device}-{tag}-{n}`) at once; returns when
    /// all are PUBACKed, with the number PUBACKed (fewer if a connection failed).
    async fn send(&self, messages: usize, payload: usize, tag: &str) -> u64 {
        let mut tasks = Vec::with_capacity(self.devices.len());
        for (id, client, acked, notify) in &self.devices {
            let (id, client, acked, notify) =
                (id.clone(), client.clone(), acked.clone(), notify.clone());
            let tag = tag.to_owned();
            tasks.push(tokio::spawn(async move {
                let base = acked.load(Ordering::Relaxed);
                let mut sent = 0u64;
                for n in 0..messages {
                    let topic = format!("devices/{id}/messages/events/$.mid={id}-{tag}-{n}");
                    if client
                        .publish(topic, QoS::AtLeastOnce, false, vec![b'x'; payload])
                        .await
                        .is_err()
                    {
                        break;
                    }
                    sent += 1;
                }
                loop {
                    let done = acked.load(Ordering::Relaxed) - base;
                    if done >= sent {
                        return done;
                    }
                    // A lost connection stops the PUBACKs: give up after a quiet second.
                    if tokio::time::timeout(Duration::from_secs(10), notify.notified())
                        .await
                        .is_err()
                    {
                        return done;
                    }
                }
            }));
        }
        let mut total = 0;
        for t in tasks {
            total += t.await.unwrap_or(0);
        }
        total
    }

    async fn disconnect(self) {
        for (_, client, _, _) in self.devices {
            let _ = client.disconnect().await;
        }
    }
}

/// Our device clients for `devices`, connected to the cloud's TLS listener.
async fn device_clients(
    devices: &[Device],
    cloud: &Cloud,
    messages: usize,
) -> Result<Vec<(String, DeviceClient)>, Error> {
    let mut out = Vec::with_capacity(devices.len());
    for d in devices {
        let client = DeviceClient::connect(
            ClientOptions::with_key(HOST, &d.id, d.key.clone())
                .port(cloud.tls_addr.port())
                .connect_host("127.0.0.1")
                .ca_roots_pem(cloud.pair.ca_pem.as_bytes())
                .max_in_flight(IN_FLIGHT)
                .outbox(OutboxConfig::Memory {
                    capacity: messages.max(1),
                    when_full: WhenFull::Wait,
                }),
        )
        .await?;
        tokio::time::timeout(Duration::from_secs(30), client.connected())
            .await
            .map_err(|_| format!("{}: the device client did not connect", d.id))??;
        out.push((d.id.clone(), client));
    }
    Ok(out)
}

/// Every client enqueues `messages` at once and waits for all acknowledgements; returns how
/// many were acknowledged.
async fn client_send(
    clients: &[(String, DeviceClient)],
    messages: usize,
    payload: usize,
    tag: &str,
) -> u64 {
    let sends = clients.iter().map(|(id, client)| async move {
        let mut deliveries = Vec::with_capacity(messages);
        for n in 0..messages {
            let message = Message::new(vec![b'x'; payload]).message_id(format!("{id}-{tag}-{n}"));
            match client.enqueue_telemetry(message).await {
                Ok(d) => deliveries.push(d),
                Err(_) => break,
            }
        }
        let mut acked = 0u64;
        for d in deliveries {
            if d.acknowledged().await.is_ok() {
                acked += 1;
            }
        }
        acked
    });
    futures::future::join_all(sends).await.into_iter().sum()
}

/// CPU time (user + system) a process has used so far, from `/proc/PID/stat` (Linux; `None`
/// elsewhere): this process, or the field-gateway child too. It tells whether a phase was bound
/// by the machine rather than by waiting.
fn cpu_seconds_of(pid: &str) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The fields after the command (which is in parentheses and may hold spaces).
    let rest = &stat[stat.rfind(')')? + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // utime and stime are the 14th and 15th fields of the line, 12th and 13th after the command.
    let ticks: f64 = fields.get(11)?.parse::<f64>().ok()? + fields.get(12)?.parse::<f64>().ok()?;
    // Clock ticks are 100 a second on every Linux configuration that matters here.
    Some(ticks / 100.0)
}

/// CPU seconds used so far by this process and, when it runs apart, the field gateway.
#[derive(Clone, Copy)]
struct CpuMark {
    here: Option<f64>,
    edge: Option<f64>,
}

impl CpuMark {
    fn now(edge_pid: Option<u32>) -> CpuMark {
        CpuMark {
            here: cpu_seconds_of("self"),
            edge: edge_pid.and_then(|pid| cpu_seconds_of(&pid.to_string())),
        }
    }

    fn since(self, edge_pid: Option<u32>) -> String {
        let now = CpuMark::now(edge_pid);
        let here = match (self.here, now.here) {
            (Some(a), Some(b)) => format!("{:.2} s CPU", b - a),
            _ => "CPU unknown".into(),
        };
        match (self.edge, now.edge) {
            (Some(a), Some(b)) => format!("{here} here, {:.2} s in the field gateway", b - a),
            _ => here,
        }
    }
}

fn median(rates: &mut [f64]) -> f64 {
    rates.sort_by(f64::total_cmp);
    rates.get(rates.len() / 2).copied().unwrap_or(0.0)
}

fn rounded(rates: &[f64]) -> String {
    let each: Vec<String> = rates.iter().map(|r| format!("{r:.0}")).collect();
    each.join(" / ")
}

fn rate(messages: u64, elapsed: Duration) -> f64 {
    messages as f64 / elapsed.as_secs_f64().max(1e-9)
}

/// The leaves: ids `leaf-NNNN`, keys derived from one group key (as DPS derives them), so that
/// the field-gateway process can rebuild the same identities from the group key alone.
fn leaf_devices(group: &SymmetricKey, leaves: usize) -> Vec<Device> {
    (0..leaves)
        .map(|i| {
            let id = format!("leaf-{i:04}");
            let key = group.derive_for_device(&id);
            Device { id, key }
        })
        .collect()
}

/// The CPUs this process may run on, from `Cpus_allowed_list` in `/proc/self/status` (Linux;
/// empty elsewhere or when it cannot be read).
fn allowed_cpus() -> Vec<u32> {
    let Ok(status) = std::fs::read_to_string("/proc/self/status") else {
        return Vec::new();
    };
    let Some(list) = status
        .lines()
        .find_map(|l| l.strip_prefix("Cpus_allowed_list:"))
    else {
        return Vec::new();
    };
    let mut cpus = Vec::new();
    for part in list.trim().split(',') {
        let range = match part.split_once('-') {
            Some((a, b)) => a.parse::<u32>().ok().zip(b.parse::<u32>().ok()),
            None => part.parse::<u32>().ok().map(|a| (a, a)),
        };
        match range {
            Some((a, b)) => cpus.extend(a..=b),
            None => return Vec::new(),
        }
    }
    cpus
}

/// Where the field gateway runs.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Placement {
    /// In a child process pinned to `edge_cpu`; this process (the cloud and the leaves) pinned
    /// to `cloud_cpu`.
    Apart { edge_cpu: u32, cloud_cpu: u32 },
    /// In this process, on the same cores as everything else.
    OneProcess,
}

impl Placement {
    /// `Apart` on the first two CPUs this process may use, unless asked otherwise or impossible
    /// here (with the reason printed). Pins this process: call it before any thread exists, so
    /// that every thread made later inherits the pinning.
    fn choose(one_process: bool, allowed: &[u32]) -> Placement {
        if one_process {
            return Placement::OneProcess;
        }
        let (edge_cpu, cloud_cpu) = match allowed[..] {
            [a, b, ..] => (a, b),
            _ => {
                println!(
                    "edge_bench: fewer than two CPUs known to be available, so everything runs in one process"
                );
                return Placement::OneProcess;
            }
        };
        let pinned = std::process::Command::new("taskset")
            .args(["-p", "-c", &cloud_cpu.to_string()])
            .arg(std::process::id().to_string())
            .stdout(std::process::Stdio::null())
            .status();
        match pinned {
            Ok(status) if status.success() => Placement::Apart {
                edge_cpu,
                cloud_cpu,
            },
            Ok(status) => {
                println!(
                    "edge_bench: taskset failed ({status}), so everything runs in one process"
                );
                Placement::OneProcess
            }
            Err(e) => {
                println!("edge_bench: no taskset ({e}), so everything runs in one process");
                Placement::OneProcess
            }
        }
    }
}

/// Lets every thread of this process run on `cpus` again (`taskset -a`: all threads, since the
/// runtime's threads were made pinned).
fn unpin(cpus: &[u32]) -> Result<(), Error> {
    let list: Vec<String> = cpus.iter().map(u32::to_string).collect();
    let status = std::process::Command::new("taskset")
        .args(["-a", "-p", "-c", &list.join(",")])
        .arg(std::process::id().to_string())
        .stdout(std::process::Stdio::null())
        .status()?;
    if !status.success() {
        return Err(format!("taskset could not unpin this process ({status})").into());
    }
    Ok(())
}

/// Forwarder counters, as printed at the end.
struct ForwardStats {
    forwarded: u64,
    batches: u64,
    skipped: u64,
}

/// The field gateway as this process drives it: in this process, or a child pinned to its own
/// CPU that answers one-line commands on its standard input (`backlog`, `stop`).
enum FieldGateway {
    InProcess {
        edge: Hub,
        server: MqttServer,
        forwarder: Forwarder,
    },
    Child {
        child: Box<tokio::process::Child>,
        stdin: tokio::process::ChildStdin,
        lines: tokio::io::Lines<tokio::io::BufReader<tokio::process::ChildStdout>>,
    },
}

/// Files the field-gateway process reads from its directory: the cloud's CA and the leaves'
/// group key (a secret: a file only its owner reads, never the command line); and the one it
/// writes there, its own CA for the leaves.
const CA_FILE: &str = "cloud-ca.pem";
const GROUP_KEY_FILE: &str = "group.key";
const EDGE_CA_FILE: &str = "edge-ca.pem";

/// The edge hub (its leaves' identities, a durable log, an MQTT/TLS listener) and the forwarder
/// to the cloud's TLS port, one upstream identity per leaf.
async fn start_edge(
    dir: &std::path::Path,
    leaves: &[Device],
    cloud_port: u16,
    ca_pem: &str,
) -> Result<(Hub, MqttServer, SocketAddr, Forwarder), Error> {
    let edge_identity = Arc::new(MemoryIdentityStore::new());
    provision(&edge_identity, leaves).await?;
    let edge = Hub::open_dir(dir.join("edge"), edge_identity, HOST, unlimited()).await?;
    let server = MqttServer::new(
        Arc::new(edge.clone()) as Arc<dyn Gateway>,
        MqttConfig::default(),
    )?;
    // The leaves connect over TLS, as IoT Edge's leaf devices do: the edge's own certificate,
    // its CA in `dir` for them.
    let pair = SelfSigned::generate(HOST)?;
    std::fs::write(dir.join(EDGE_CA_FILE), &pair.ca_pem)?;
    let addr = server
        .listen_tls("127.0.0.1:0".parse()?, pair.tls_config(false)?)
        .await?;
    let mut upstream = IdentityMap::new();
    for d in leaves {
        upstream.insert(
            d.id.parse()?,
            ClientOptions::with_key(HOST, &d.id, d.key.clone())
                .port(cloud_port)
                .connect_host("127.0.0.1")
                .ca_roots_pem(ca_pem.as_bytes())
                .backoff(Backoff {
                    initial: Duration::from_millis(100),
                    max: Duration::from_secs(1),
                }),
        );
    }
    let forwarder =
        Forwarder::start(&edge, Arc::new(upstream), ForwarderOptions::default()).await?;
    Ok((edge, server, addr, forwarder))
}

impl FieldGateway {
    /// Starts the field gateway for `leaves` against the cloud's TLS port; returns it and the
    /// edge's MQTT address.
    async fn start(
        placement: Placement,
        dir: &std::path::Path,
        group: &SymmetricKey,
        leaves: &[Device],
        cloud: &Cloud,
    ) -> Result<(FieldGateway, SocketAddr), Error> {
        let port = cloud.tls_addr.port();
        let Placement::Apart { edge_cpu, .. } = placement else {
            let (edge, server, addr, forwarder) =
                start_edge(dir, leaves, port, &cloud.pair.ca_pem).await?;
            return Ok((
                FieldGateway::InProcess {
                    edge,
                    server,
                    forwarder,
                },
                addr,
            ));
        };
        use tokio::io::AsyncBufReadExt;
        std::fs::write(dir.join(CA_FILE), &cloud.pair.ca_pem)?;
        write_secret(&dir.join(GROUP_KEY_FILE), &group.expose_base64())?;
        let mut child = tokio::process::Command::new("taskset")
            .args(["-c", &edge_cpu.to_string()])
            .arg(std::env::current_exe()?)
            .arg("--edge-process")
            .arg(dir)
            .args(["--cloud-port", &port.to_string()])
            .args(["--leaves", &leaves.len().to_string()])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .kill_on_drop(true)
            .spawn()?;
        let stdin = child.stdin.take().ok_or("field gateway: no stdin")?;
        let stdout = child.stdout.take().ok_or("field gateway: no stdout")?;
        let mut lines = tokio::io::BufReader::new(stdout).lines();
        let line = tokio::time::timeout(PATIENCE, lines.next_line())
            .await
            .map_err(|_| "field gateway: did not start in time")??
            .ok_or("field gateway: exited before listening")?;
        let addr = line
            .strip_prefix("listening ")
            .ok_or_else(|| format!("field gateway: unexpected first line {line:?}"))?
            .parse()?;
        Ok((
            FieldGateway::Child {
                child: Box::new(child),
                stdin,
                lines,
            },
            addr,
        ))
    }

    /// The field gateway's process id, when it runs apart (for its CPU time).
    fn pid(&self) -> Option<u32> {
        match self {
            FieldGateway::InProcess { .. } => None,
            FieldGateway::Child { child, .. } => child.id(),
        }
    }

    /// Sends `command` to the child and returns its one-line answer.
    async fn ask(
        stdin: &mut tokio::process::ChildStdin,
        lines: &mut tokio::io::Lines<tokio::io::BufReader<tokio::process::ChildStdout>>,
        command: &str,
    ) -> Result<String, Error> {
        use tokio::io::AsyncWriteExt;
        stdin.write_all(format!("{command}\n").as_bytes()).await?;
        stdin.flush().await?;
        let answer = tokio::time::timeout(PATIENCE, lines.next_line())
            .await
            .map_err(|_| format!("field gateway: no answer to {command}"))??
            .ok_or_else(|| format!("field gateway: exited on {command}"))?;
        Ok(answer)
    }

    /// Records in the edge log the forwarder has not had acknowledged upstream.
    async fn backlog(&mut self) -> Result<u64, Error> {
        match self {
            FieldGateway::InProcess { forwarder, .. } => Ok(forwarder.backlog().await?),
            FieldGateway::Child { stdin, lines, .. } => {
                let answer = Self::ask(stdin, lines, "backlog").await?;
                Ok(answer
                    .strip_prefix("backlog ")
                    .ok_or_else(|| format!("field gateway: unexpected answer {answer:?}"))?
                    .parse()?)
            }
        }
    }

    /// Stops the forwarder and the edge hub; returns the forwarder's counters.
    async fn stop(self) -> Result<ForwardStats, Error> {
        match self {
            FieldGateway::InProcess {
                edge,
                server,
                forwarder,
            } => {
                let stats = forwarder.stats();
                forwarder.shutdown().await;
                server.shutdown().await;
                edge.shutdown().await;
                Ok(ForwardStats {
                    forwarded: stats.forwarded,
                    batches: stats.batches,
                    skipped: stats.skipped,
                })
            }
            FieldGateway::Child {
                mut child,
                mut stdin,
                mut lines,
            } => {
                let answer = Self::ask(&mut stdin, &mut lines, "stop").await?;
                let numbers: Vec<u64> = answer
                    .strip_prefix("stats ")
                    .ok_or_else(|| format!("field gateway: unexpected answer {answer:?}"))?
                    .split(' ')
                    .map(str::parse)
                    .collect::<Result<_, _>>()?;
                let status = tokio::time::timeout(PATIENCE, child.wait())
                    .await
                    .map_err(|_| "field gateway: did not exit")??;
                if !status.success() {
                    return Err(format!("field gateway exited with {status}").into());
                }
                match numbers[..] {
                    [forwarded, batches, skipped] => Ok(ForwardStats {
                        forwarded,
                        batches,
                        skipped,
                    }),
                    _ => Err(format!("field gateway: unexpected answer {answer:?}").into()),
                }
            }
        }
    }
}

/// Writes a secret to a file only its owner may read.
fn write_secret(path: &std::path::Path, secret: &str) -> Result<(), Error> {
    use std::io::Write;
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    options.open(path)?.write_all(secret.as_bytes())?;
    Ok(())
}

/// The field-gateway process (`--edge-process DIR`): starts the edge and the forwarder, prints
/// `listening ADDR`, then answers `backlog` with `backlog N`, and `stop` (or the end of its
/// input) with `stats FORWARDED BATCHES SKIPPED` before it exits.
async fn edge_process(dir: &std::path::Path, cloud_port: u16, leaves: usize) -> Result<(), Error> {
    use tokio::io::AsyncBufReadExt;
    let ca_pem = std::fs::read_to_string(dir.join(CA_FILE))?;
    let group =
        SymmetricKey::from_base64(std::fs::read_to_string(dir.join(GROUP_KEY_FILE))?.trim())?;
    let leaves = leaf_devices(&group, leaves);
    let (edge, server, addr, forwarder) = start_edge(dir, &leaves, cloud_port, &ca_pem).await?;
    println!("listening {addr}");
    let mut input = tokio::io::BufReader::new(tokio::io::stdin()).lines();
    while let Some(command) = input.next_line().await? {
        match command.trim() {
            "backlog" => println!("backlog {}", forwarder.backlog().await?),
            "stop" => break,
            other => return Err(format!("field gateway: unknown command {other:?}").into()),
        }
    }
    let stats = forwarder.stats();
    forwarder.shutdown().await;
    server.shutdown().await;
    edge.shutdown().await;
    println!(
        "stats {} {} {}",
        stats.forwarded, stats.batches, stats.skipped
    );
    Ok(())
}

fn main() -> Result<(), Error> {
    let cli = Cli::parse();
    if let Some(dir) = cli.edge_process.clone() {
        let port = cli.cloud_port.ok_or("--edge-process needs --cloud-port")?;
        let leaves = cli.leaves.ok_or("--edge-process needs --leaves")?;
        return tokio::runtime::Runtime::new()?.block_on(edge_process(&dir, port, leaves));
    }
    // Before the runtime: pinning applies to the threads made after it.
    let allowed = allowed_cpus();
    let placement = Placement::choose(cli.one_process, &allowed);
    // As many workers as CPUs it started with (not the one it is pinned to), so that the last
    // phase, unpinned, runs as it would in a process never pinned.
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(allowed.len().max(1))
        .enable_all()
        .build()?
        .block_on(bench(cli, placement, allowed))
}

async fn bench(cli: Cli, placement: Placement, allowed: Vec<u32>) -> Result<(), Error> {
    let (leaves, messages, drain, clients) = if cli.quick {
        (20, 50, 50, 20)
    } else {
        (100, 1000, 200, 100)
    };
    let leaves = cli.leaves.unwrap_or(leaves).max(1);
    let messages = cli.messages.unwrap_or(messages).max(1);
    let drain = cli.drain.unwrap_or(drain).max(1);
    let clients = cli.clients.unwrap_or(clients).max(1);
    let payload = cli.payload;

    let group = SymmetricKey::generate();
    let leaf_devices = leaf_devices(&group, leaves);
    // Two sets, so that the rumqttc devices and the device clients can stay connected side by
    // side while their rounds alternate.
    let load_devices: Vec<Device> = (0..clients)
        .map(|i| Device {
            id: format!("load-{i:04}"),
            key: SymmetricKey::generate(),
        })
        .collect();
    let client_devices: Vec<Device> = (0..clients)
        .map(|i| Device {
            id: format!("client-{i:04}"),
            key: SymmetricKey::generate(),
        })
        .collect();

    // The cloud: durable like the edge (a `FileLog` fsynced before each PUBACK), so that both
    // paths pay for the same durability per hop.
    let dir = tempfile::tempdir()?;
    let cloud_identity = Arc::new(MemoryIdentityStore::new());
    provision(&cloud_identity, &leaf_devices).await?;
    let hub = Hub::open_dir(dir.path().join("cloud"), cloud_identity, HOST, unlimited()).await?;
    let mut cloud = Cloud {
        hub,
        pair: SelfSigned::generate(HOST)?,
        tls: None,
        tls_addr: "127.0.0.1:0".parse()?,
    };
    cloud.listen().await?;
    let cloud_log = cloud.hub.telemetry_log().clone();
    let ca_file = dir.path().join("ca.pem");
    std::fs::write(&ca_file, &cloud.pair.ca_pem)?;
    let rumqttc_tls = tls::client_tls(&ca_file, HOST).map_err(|e| e.to_string())?;
    println!(
        "edge_bench: {leaves} leaves, {messages} messages each ({payload} bytes), {drain} each during the outage, {clients} client devices"
    );
    println!(
        "placement: {}",
        match placement {
            Placement::Apart {
                edge_cpu,
                cloud_cpu,
            } => format!(
                "field gateway in its own process on CPU {edge_cpu}; cloud and leaves here on CPU {cloud_cpu}"
            ),
            Placement::OneProcess => "everything in one process, on every CPU".to_owned(),
        }
    );

    // 1. Direct: the leaves to the cloud over TLS.
    let per_phase = (leaves * messages) as u64;
    let before = count(&cloud_log).await?;
    let fleet = Fleet::connect(&leaf_devices, cloud.tls_addr, Some(rumqttc_tls.clone())).await?;
    let began = Instant::now();
    let cpu = CpuMark::now(None);
    let acked = fleet.send(messages, payload, "direct").await;
    let direct_end = until_count(&cloud_log, before + acked).await?;
    let direct_cpu = cpu.since(None);
    fleet.disconnect().await;
    if acked < per_phase {
        return Err(format!("direct: only {acked} of {per_phase} acknowledged").into());
    }
    let direct_elapsed = direct_end.ok_or("direct: not every message reached the log")? - began;
    let direct_rate = rate(acked, direct_elapsed);
    println!(
        "direct:  {acked}/{per_phase} acknowledged, in the cloud's log in {:.2} s: {direct_rate:.0} msgs/s ({direct_cpu})",
        direct_elapsed.as_secs_f64()
    );
    // The field gateway starts now, its forwarder connecting every leaf upstream as itself:
    // after the direct phase, whose connections use the same device ids (a second connection
    // of a device ends the first).
    let edge_dir = dir.path().join("field-gateway");
    std::fs::create_dir(&edge_dir)?;
    let (mut field_gateway, edge_addr) =
        FieldGateway::start(placement, &edge_dir, &group, &leaf_devices, &cloud).await?;
    let edge_pid = field_gateway.pid();
    let leaf_ids: Vec<iot_core::DeviceId> = leaf_devices
        .iter()
        .map(|d| d.id.parse())
        .collect::<Result<_, _>>()?;
    let deadline = Instant::now() + Duration::from_secs(60);
    for id in &leaf_ids {
        while !cloud.hub.is_connected(id).await? {
            if Instant::now() > deadline {
                return Err(
                    format!("{id}: the forwarder's upstream client did not connect").into(),
                );
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    // 2. Forward: the leaves to the edge; the forwarder to the cloud.
    let before = count(&cloud_log).await?;
    let edge_tls =
        tls::client_tls(&edge_dir.join(EDGE_CA_FILE), HOST).map_err(|e| e.to_string())?;
    let fleet = Fleet::connect(&leaf_devices, edge_addr, Some(edge_tls)).await?;
    let began = Instant::now();
    let cpu = CpuMark::now(edge_pid);
    let forward_acked = fleet.send(messages, payload, "forward").await;
    let edge_acked_at = began.elapsed();
    let forward_end = until_count(&cloud_log, before + forward_acked).await?;
    let forward_cpu = cpu.since(edge_pid);
    let forward_elapsed = forward_end.map(|t| t - began).unwrap_or(PATIENCE);
    let forward_rate = rate(forward_acked, forward_elapsed);
    println!(
        "forward: {forward_acked}/{per_phase} PUBACKed by the edge in {:.2} s, in the cloud's log in {:.2} s: {forward_rate:.0} msgs/s ({forward_cpu})",
        edge_acked_at.as_secs_f64(),
        forward_elapsed.as_secs_f64()
    );

    // 3. Drain: the cloud unreachable while the leaves send, then back.
    cloud.stop().await;
    let before = count(&cloud_log).await?;
    let drain_acked = fleet.send(drain, payload, "drain").await;
    fleet.disconnect().await;
    let backlog = field_gateway.backlog().await?;
    println!(
        "drain:   {drain_acked} PUBACKed by the edge while the cloud was down; backlog {backlog}"
    );
    cloud.listen().await?;
    let back = Instant::now();
    let drain_end = until_count(&cloud_log, before + drain_acked).await?;
    let drain_elapsed = drain_end.map(|t| t - back).unwrap_or(PATIENCE);
    let drain_rate = rate(drain_acked, drain_elapsed);
    println!(
        "drain:   in the cloud's log {:.2} s after it came back: {drain_rate:.0} msgs/s",
        drain_elapsed.as_secs_f64()
    );

    // Lost: PUBACKed by the edge, missing upstream (by message id).
    let ids = message_ids(&cloud_log).await?;
    let mut lost = 0u64;
    for d in &leaf_devices {
        // Each leaf's messages are PUBACKed in order; a fleet whose connection failed PUBACKed
        // fewer in total, and those were not counted as acknowledged.
        for (tag, n) in [("forward", messages), ("drain", drain)] {
            lost += (0..n)
                .filter(|i| !ids.contains(&format!("{}-{tag}-{i}", d.id)))
                .count() as u64;
        }
    }
    // Messages a failed connection never got PUBACKed are not losses.
    let unacked = (per_phase - forward_acked) + ((leaves * drain) as u64 - drain_acked);
    let lost = lost.saturating_sub(unacked);
    println!("lost:    {lost} PUBACKed by the edge but missing in the cloud");
    let stats = field_gateway.stop().await?;
    println!(
        "forwarder: {} forwarded, {} batches, {} skipped",
        stats.forwarded, stats.batches, stats.skipped
    );

    cloud.stop().await;
    cloud.hub.shutdown().await;
    if let Placement::Apart { .. } = placement {
        // The last phase compares two clients, not placements: every thread of this process
        // back on every CPU it started with, as with `--one-process`.
        unpin(&allowed)?;
    }

    // 4. Our device client against rumqttc, both over TLS to a hub with an in-memory log: the
    //    clients are measured, not the hub's disk (an fsync per PUBACK would hide the
    //    difference between them). Same certificate, so the same rumqttc TLS configuration.
    let peer_identity = Arc::new(MemoryIdentityStore::new());
    provision(&peer_identity, &load_devices).await?;
    provision(&peer_identity, &client_devices).await?;
    let mut cloud = Cloud {
        hub: Hub::builder(peer_identity, HOST)
            .config(unlimited())
            .build()
            .await?,
        pair: cloud.pair,
        tls: None,
        tls_addr: "127.0.0.1:0".parse()?,
    };
    cloud.listen().await?;
    let load_total = (clients * messages) as u64;
    let fleet = Fleet::connect(&load_devices, cloud.tls_addr, Some(rumqttc_tls)).await?;
    let device_clients = device_clients(&client_devices, &cloud, messages).await?;
    // Rounds alternate which side goes first, and each side's figure is its median round, so
    // that a burst of load from outside the run does not decide the ratio.
    let mut rumqttc_rates = Vec::with_capacity(CLIENT_ROUNDS);
    let mut client_rates = Vec::with_capacity(CLIENT_ROUNDS);
    for round in 0..CLIENT_ROUNDS {
        for ours in [round % 2 == 1, round % 2 == 0] {
            let began = Instant::now();
            let (acked, rates) = if ours {
                let tag = format!("client{round}");
                let acked = client_send(&device_clients, messages, payload, &tag).await;
                (acked, &mut client_rates)
            } else {
                let acked = fleet
                    .send(messages, payload, &format!("rumqttc{round}"))
                    .await;
                (acked, &mut rumqttc_rates)
            };
            if acked < load_total {
                return Err(format!(
                    "round {round}: {} acknowledged only {acked} of {load_total}",
                    if ours { "the device client" } else { "rumqttc" }
                )
                .into());
            }
            rates.push(rate(acked, began.elapsed()));
        }
    }
    fleet.disconnect().await;
    for (_, client) in device_clients {
        client.close().await;
    }
    // Every PUBACK counted above stands for a record in the hub's log: nothing was counted
    // that the hub did not take (more records would be resends after a reconnect).
    let stored = count(cloud.hub.telemetry_log()).await?;
    let expected = 2 * CLIENT_ROUNDS as u64 * load_total;
    if stored < expected {
        return Err(
            format!("client phase: {stored} records in the hub's log, {expected} sent").into(),
        );
    }
    let rumqttc_rate = median(&mut rumqttc_rates);
    let client_rate = median(&mut client_rates);
    println!(
        "rumqttc: {load_total} PUBACKed per round, {} msgs/s, median {rumqttc_rate:.0}; device client: {} msgs/s, median {client_rate:.0}",
        rounded(&rumqttc_rates),
        rounded(&client_rates)
    );
    cloud.stop().await;
    cloud.hub.shutdown().await;

    let forward_vs_direct = forward_rate / direct_rate;
    let client_vs_rumqttc = client_rate / rumqttc_rate;
    println!(
        "forward_vs_direct {forward_vs_direct:.2} (target >= 0.7), client_vs_rumqttc {client_vs_rumqttc:.2} (target >= 0.8)"
    );
    println!(
        "{}",
        serde_json::json!({
            "forward_vs_direct": (forward_vs_direct * 1000.0).round() / 1000.0,
            "drain_msgs_per_s": drain_rate.round(),
            "client_vs_rumqttc": (client_vs_rumqttc * 1000.0).round() / 1000.0,
            "lost": lost,
        })
    );
    Ok(())
}
