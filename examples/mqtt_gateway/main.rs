//! A gateway with file-backed stores that devices reach over MQTT, the way they reach Azure IoT
//! Hub.
//!
//! ```text
//! cargo run --example mqtt_gateway -- --data-dir DIR --listen 127.0.0.1:1884 \
//!     [--tls-listen 127.0.0.1:8883 (--tls-cert CERT.pem --tls-key KEY.pem | --self-signed)] \
//!     [--client-certs] [--ws-listen ADDR] [--wss-listen ADDR] --host localhost \
//!     --device DEVICE_ID [--fleet N] [--run-for SECONDS] \
//!     [--log fsync|buffered|memory] [--no-throttle] [--telemetry-stats ADDR]
//! ```
//!
//! It opens (or creates) the identity store and the hub's stores under `DIR`, provisions
//! `DEVICE_ID` with a fresh symmetric key if it is new, and prints its connection string
//! (`connection-string: HostName=…;DeviceId=…;SharedAccessKey=…`, usable by the Azure IoT device
//! SDKs) and the `mosquitto_pub` / `mosquitto_sub` commands to try. Without TLS flags it serves
//! plain TCP only; with `--self-signed` it makes a CA and a certificate for `--host` under
//! `DIR/tls` and prints where the CA is. `--ws-listen` adds MQTT over WebSocket
//! (`ws://ADDR/$iothub/websocket`), `--wss-listen` the same inside TLS (it needs the TLS flags).
//!
//! `--fleet N` also provisions devices `fleet-0` … `fleet-{N-1}` for load tests, each with the key
//! a symmetric-key group enrollment would give it: HMAC-SHA256 of its id under one group key,
//! kept in `DIR/fleet.key` (made on first use, readable by the owner only). The load generator
//! (`examples/mqtt_load --mode connections --fleet-key-file DIR/fleet.key`) derives the same
//! keys. A greeting is queued for the device as a C2D message when its inbox is empty (an earlier
//! start's greeting still waiting is not queued again, so any number of restarts while the device
//! is offline work), and every telemetry record that lands in the log is printed
//! (`telemetry: …`). It runs until Ctrl-C, or for `--run-for` seconds, then shuts down
//! gracefully. `--help` lists the flags; usage errors exit with status 2.
//!
//! For benchmarks run from another process (`scripts/mqtt/bench.sh`): `--log` chooses where
//! telemetry goes — `fsync` (the default: a `FileLog` that fsyncs before the PUBACK, with group
//! commit), `buffered` (a `FileLog` left to the OS page cache: survives a crash of the process,
//! not of the machine) or `memory`; `--no-throttle` lifts IoT Hub's per-device rate limits; and
//! `--telemetry-stats ADDR` counts the telemetry instead of printing it and answers each TCP
//! client of `ADDR` with one JSON line `{"received":N,"p50_ms":…,"p99_ms":…}` (see
//! `telemetry.rs`), which `mqtt_load --target remote` polls.
#![allow(clippy::print_stdout, clippy::print_stderr)]

#[path = "../support/device_key.rs"]
mod device_key;

mod telemetry;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use clap::{CommandFactory, Parser};
use futures::{StreamExt, TryStreamExt};
use iot_core::{DeviceId, FileLogConfig, Topics};
use iot_gateway::mqtt::{MqttConfig, MqttServer, SelfSigned, TlsConfig};
use iot_gateway::{C2dMessage, Durability, Gateway, Hub, HubConfig, InboxStore, ThrottleConfig};
use iot_identity::{
    Credentials, FileIdentityStore, FileIdentityStoreConfig, IdentityStore, NewIdentity,
    SymmetricKey, sas,
};

/// A gateway with file-backed stores that devices reach over MQTT, the way they reach Azure IoT
/// Hub.
///
/// Opens (or creates) the stores under --data-dir, provisions --device with a fresh key if it is
/// new, prints its connection string and mosquitto commands to try, and prints the telemetry
/// that lands in the log. A C2D greeting is queued for the device only when its inbox is empty,
/// so restarts while the device is offline do not pile up greetings. Runs until Ctrl-C or for
/// --run-for seconds.
#[derive(Debug, Parser)]
#[command(name = "mqtt_gateway")]
struct Args {
    /// Directory of the identity store and the hub's stores (created if missing).
    #[arg(long, value_name = "DIR")]
    data_dir: PathBuf,
    /// Plain MQTT over TCP, e.g. 127.0.0.1:1884.
    #[arg(long, value_name = "ADDR")]
    listen: SocketAddr,
    /// MQTT over TLS (needs --tls-cert and --tls-key, or --self-signed).
    #[arg(long, value_name = "ADDR")]
    tls_listen: Option<SocketAddr>,
    /// The server certificate chain (PEM).
    #[arg(long, value_name = "CERT.pem", requires = "tls_key")]
    tls_cert: Option<PathBuf>,
    /// The server private key (PEM).
    #[arg(long, value_name = "KEY.pem", requires = "tls_cert")]
    tls_key: Option<PathBuf>,
    /// Make a CA and a certificate for --host under DIR/tls instead of --tls-cert/--tls-key.
    #[arg(long, conflicts_with_all = ["tls_cert", "tls_key"])]
    self_signed: bool,
    /// Also accept devices that authenticate with X.509 client certificates.
    #[arg(long)]
    client_certs: bool,
    /// MQTT over WebSocket (ws://ADDR/$iothub/websocket).
    #[arg(long, value_name = "ADDR")]
    ws_listen: Option<SocketAddr>,
    /// MQTT over WebSocket inside TLS (needs the TLS flags).
    #[arg(long, value_name = "ADDR")]
    wss_listen: Option<SocketAddr>,
    /// The host name devices connect to (in their connection string and SAS tokens).
    #[arg(long)]
    host: String,
    /// The device to provision (if new) and greet.
    #[arg(long, value_name = "DEVICE_ID")]
    device: DeviceId,
    /// Also provision fleet-0 … fleet-{N-1} with keys derived from DIR/fleet.key.
    #[arg(long, value_name = "N", default_value_t = 0)]
    fleet: usize,
    /// Stop after this many seconds instead of waiting for Ctrl-C.
    #[arg(long, value_name = "SECONDS", value_parser = parse_seconds)]
    run_for: Option<Duration>,
    /// Where telemetry is kept: a file log fsynced before each PUBACK, a file log left to the
    /// OS page cache, or memory.
    #[arg(long, value_enum, default_value_t = LogMode::Fsync)]
    log: LogMode,
    /// Lift IoT Hub's per-device rate limits (for load tests).
    #[arg(long)]
    no_throttle: bool,
    /// Count telemetry instead of printing it, and answer TCP clients of ADDR with the counts.
    #[arg(long, value_name = "ADDR")]
    telemetry_stats: Option<SocketAddr>,
}

/// Where the hub's topics live.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum LogMode {
    /// `FileLog` under DIR/hub/log, fsync before acknowledging (group commit).
    Fsync,
    /// `FileLog` under DIR/hub/log, left to the OS page cache.
    Buffered,
    /// In memory: lost when the gateway stops.
    Memory,
}

fn parse_seconds(text: &str) -> Result<Duration, std::num::ParseIntError> {
    text.parse().map(Duration::from_secs)
}

impl Args {
    /// The combinations of TLS flags that clap's attributes cannot express.
    fn check(&self) -> Result<(), &'static str> {
        let has_files = self.tls_cert.is_some() || self.tls_key.is_some();
        let both_files = self.tls_cert.is_some() && self.tls_key.is_some();
        let tls_listener = self.tls_listen.is_some() || self.wss_listen.is_some();
        if tls_listener && !(self.self_signed || both_files) {
            return Err(
                "--tls-listen and --wss-listen need --tls-cert and --tls-key, or --self-signed",
            );
        }
        if !tls_listener && (has_files || self.self_signed || self.client_certs) {
            return Err("TLS flags need --tls-listen or --wss-listen");
        }
        Ok(())
    }
}

#[tokio::main]
async fn main() -> ExitCode {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
    // Usage errors exit with status 2 and clap's message (--help with 0).
    let args = Args::parse();
    if let Err(message) = args.check() {
        Args::command()
            .error(clap::error::ErrorKind::ArgumentConflict, message)
            .exit();
    }
    match run(args).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn run(args: Args) -> Result<(), Box<dyn std::error::Error>> {
    // Listen for Ctrl-C before printing anything, so that a script that stops the gateway as soon
    // as it sees its output gets the graceful shutdown, not the signal's default action.
    let interrupted = interrupt()?;
    let identity = Arc::new(
        FileIdentityStore::open(
            args.data_dir.join("identity"),
            FileIdentityStoreConfig::default(),
        )
        .await?,
    );
    let key = device_key::device_key(identity.as_ref(), &args.device).await?;
    let hub = open_hub(&args, identity.clone()).await?;
    let mut config = MqttConfig::default();
    config.state_dir = Some(args.data_dir.join("mqtt"));
    let server = MqttServer::new(Arc::new(hub.clone()), config)?;
    let tcp = server.listen_tcp(args.listen).await?;

    let device = &args.device;
    let host = &args.host;
    println!(
        "connection-string: HostName={host};DeviceId={device};SharedAccessKey={}",
        key.expose_base64().as_str()
    );
    println!("mqtt: {tcp} (plain TCP)");
    let mut tls_options = String::new();
    let mut tls_bound = None;
    let tls = if args.tls_listen.is_none() && args.wss_listen.is_none() {
        None
    } else if args.self_signed {
        let pair = SelfSigned::generate(host)?;
        let (ca, _, _) = pair.write_to(&args.data_dir.join("tls"))?;
        println!("ca-certificate: {}", ca.display());
        tls_options = format!(" --cafile {}", ca.display());
        Some(pair.tls_config(args.client_certs)?)
    } else {
        let (cert, key) = (args.tls_cert.as_ref(), args.tls_key.as_ref());
        let (Some(cert), Some(key)) = (cert, key) else {
            return Err("--tls-cert and --tls-key are required".into());
        };
        tls_options = " --cafile YOUR-CA.pem".to_string();
        Some(TlsConfig::from_pem_files(cert, key, args.client_certs)?)
    };
    if let (Some(addr), Some(tls)) = (args.tls_listen, &tls) {
        let bound = server.listen_tls(addr, tls.clone()).await?;
        println!("mqtts: {bound} (TLS; connect to host {host})");
        tls_bound = Some(bound);
    }
    if let Some(addr) = args.ws_listen {
        let bound = server.listen_websocket(addr, None).await?;
        println!("mqtt-ws: ws://{bound}/$iothub/websocket (subprotocol mqtt)");
    }
    if let (Some(addr), Some(tls)) = (args.wss_listen, tls) {
        let bound = server.listen_websocket(addr, Some(tls)).await?;
        println!(
            "mqtt-wss: wss://{host}:{}/$iothub/websocket (subprotocol mqtt)",
            bound.port()
        );
    }
    if args.fleet > 0 {
        provision_fleet(identity.as_ref(), &args.data_dir, args.fleet).await?;
    }

    // A SAS token for the mosquitto commands, valid for a day.
    let token = sas::generate(
        &format!("{host}/devices/{device}"),
        &key,
        sas::unix_now() + 86_400,
        None,
    )?;
    let common = format!(
        "-h {} -p {} -V mqttv311 -i '{device}' -u '{host}/{device}/?api-version=2021-04-12' -P '{}'",
        tcp.ip(),
        tcp.port(),
        token.as_str()
    );
    println!("try:");
    println!("  mosquitto_sub {common} -q 1 -v -t 'devices/{device}/messages/devicebound/#'");
    println!(
        "  mosquitto_pub {common} -q 1 -t 'devices/{device}/messages/events/source=mosquitto' -m hello"
    );
    if let Some(addr) = tls_bound {
        let tls_common = common.replace(
            &format!("-h {} -p {}", tcp.ip(), tcp.port()),
            &format!("-h {host} -p {}{tls_options}", addr.port()),
        );
        println!(
            "  mosquitto_pub {tls_common} -q 1 -t 'devices/{device}/messages/events/' -m over-tls"
        );
    }

    // Nothing but this program sends to the device, so a non-empty inbox means an earlier start's
    // greeting is still waiting: queueing another on every start would fill the inbox of a
    // device that stays offline (its depth is bounded) and fail the start.
    if hub.inbox().depth(device).await? == 0 {
        let mut greeting = C2dMessage::new(&b"hello from the gateway"[..]);
        greeting.content_type = Some("text/plain".into());
        hub.send_c2d(device, greeting).await?;
        println!("queued: a C2D greeting for {device}");
    } else {
        println!("queued: a C2D greeting for {device} was already waiting, not queued again");
    }

    let tail = match args.telemetry_stats {
        None => tokio::spawn(telemetry::tail(
            hub.telemetry_log().clone(),
            telemetry::print,
        )),
        Some(addr) => {
            let (bound, task) = telemetry::serve_stats(hub.telemetry_log().clone(), addr).await?;
            println!("telemetry-stats: {bound}");
            task
        }
    };
    let run_for = args.run_for.unwrap_or(Duration::MAX);
    tokio::select! {
        () = tokio::time::sleep(run_for) => {}
        () = interrupted => {}
    }
    tail.abort();
    server.shutdown().await;
    hub.shutdown().await;
    println!("stopped");
    Ok(())
}

/// The hub over the stores under DIR/hub: the inbox and twins as files (fsync before
/// acknowledging), the topics as `--log` says.
async fn open_hub(
    args: &Args,
    identity: Arc<dyn IdentityStore>,
) -> Result<Hub, Box<dyn std::error::Error>> {
    let dir = args.data_dir.join("hub");
    let mut config = HubConfig::default();
    if args.no_throttle {
        config.throttle = ThrottleConfig::unlimited();
    }
    let partitions = config.partitions;
    // The file-backed hub of `Hub::open_dir`, whose topics fsync before acknowledging; the
    // other modes replace its topics (nothing of the log is opened before the build).
    let builder = Hub::builder_in_dir(&dir, identity, args.host.clone(), config).await?;
    let builder = match args.log {
        LogMode::Fsync => builder,
        LogMode::Buffered => builder.topics(Arc::new(Topics::file(
            dir.join("log"),
            FileLogConfig::default()
                .partitions(partitions)
                .durability(Durability::OsBuffered),
        ))),
        LogMode::Memory => builder.topics(Arc::new(Topics::memory(partitions))),
    };
    Ok(builder.build().await?)
}

/// Resolves on SIGINT (Ctrl-C); the handler is installed when this is called, not when the
/// future is first polled.
#[cfg(unix)]
fn interrupt() -> std::io::Result<impl Future<Output = ()>> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut signal = signal(SignalKind::interrupt())?;
    Ok(async move {
        signal.recv().await;
    })
}

/// Resolves on Ctrl-C (installed on first poll; no early-signal guarantee off Unix).
#[cfg(not(unix))]
fn interrupt() -> std::io::Result<impl Future<Output = ()>> {
    Ok(async {
        let _ = tokio::signal::ctrl_c().await;
    })
}

/// Fleet identities written at once.
const FLEET_WRITES_AT_ONCE: usize = 64;

/// Provisions `fleet-0` … `fleet-{count-1}` (those not there yet) with keys derived from the
/// group key in `DIR/fleet.key`, made on first use.
async fn provision_fleet(
    identity: &FileIdentityStore,
    data_dir: &Path,
    count: usize,
) -> Result<(), Box<dyn std::error::Error>> {
    let path = data_dir.join("fleet.key");
    let group = match std::fs::read_to_string(&path) {
        Ok(text) => SymmetricKey::from_base64(text.trim())
            .map_err(|e| format!("{}: {e}", path.display()))?,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            // Devices made from a lost group key would keep keys nobody can derive any more.
            if identity.get(&"fleet-0".parse()?).await?.is_some() {
                return Err(format!(
                    "{} is missing but fleet devices exist: restore it or use a new --data-dir",
                    path.display()
                )
                .into());
            }
            let key = SymmetricKey::generate();
            write_owner_only(&path, key.expose_base64().as_bytes())?;
            key
        }
        Err(e) => return Err(format!("{}: {e}", path.display()).into()),
    };
    let started = std::time::Instant::now();
    // Concurrently, so that the identity store's group commit shares fsyncs among them: a
    // fleet of 100 000 one at a time would take minutes.
    let created: Vec<bool> = futures::stream::iter(0..count)
        .map(|i| {
            let group = &group;
            async move {
                let device: DeviceId = format!("fleet-{i}").parse()?;
                if identity.get(&device).await?.is_some() {
                    return Ok::<_, Box<dyn std::error::Error>>(false);
                }
                let primary = group.derive_for_device(device.as_str());
                identity
                    .create(NewIdentity::new(
                        device,
                        Credentials::SymmetricKeys {
                            primary,
                            secondary: SymmetricKey::generate(),
                        },
                    ))
                    .await?;
                Ok(true)
            }
        })
        .buffer_unordered(FLEET_WRITES_AT_ONCE)
        .try_collect()
        .await?;
    let created = created.into_iter().filter(|&new| new).count();
    println!(
        "fleet: fleet-0..fleet-{} ({created} provisioned now in {:.1} s), keys derived from {}",
        count - 1,
        started.elapsed().as_secs_f64(),
        path.display()
    );
    Ok(())
}

/// Writes a secret file that only its owner can read.
#[allow(
    clippy::disallowed_methods,
    reason = "writes the generated certificate once at start-up, before serving"
)]
fn write_owner_only(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    let mut file = options.open(path)?;
    file.write_all(bytes)?;
    file.sync_all()
}
