//! A field gateway in front of a running hub: a local hub on `--data-dir` that a handful of
//! simulated leaf devices send to, and an upstream forwarder (`iot_gateway::edge`,
//! docs/field-gateway.md) that carries their telemetry to the cloud hub as the leaves and brings
//! C2D messages and direct methods back down to them.
//!
//! ```text
//! # the "cloud": the mqtt_gateway example with TLS and a fleet of devices
//! cargo run --example mqtt_gateway -- --data-dir /tmp/cloud --listen 127.0.0.1:1884 \
//!     --tls-listen 127.0.0.1:8884 --self-signed --host localhost --device dev-1 --fleet 5
//! # the field gateway: leaves fleet-0 … fleet-4, keys derived from the cloud's fleet key
//! cargo run --example field_gateway --features edge -- --data-dir /tmp/edge \
//!     --upstream 127.0.0.1:8884 --tls-ca /tmp/cloud/tls/ca.pem \
//!     --fleet-key-file /tmp/cloud/fleet.key --leaves 5 [--listen 127.0.0.1:1885] [--run-for 30]
//! ```
//!
//! Each leaf sends a numbered reading every `--interval-ms` to the local hub (in process, as an
//! MQTT session would); the forwarder prints what it forwarded and what waits in the edge log
//! every second (`forwarded: …`). Stop the cloud hub for a while and start it again: the backlog
//! grows, then drains oldest first. Leaves print the C2D messages and method calls that reach
//! them. `--listen` also serves the local hub over plain MQTT for real leaves, with the same
//! fleet keys. Runs until Ctrl-C or for `--run-for` seconds; usage errors exit with status 2.
#![allow(clippy::print_stdout, clippy::print_stderr)]

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use clap::Parser;
use iot_core::DeviceId;
use iot_gateway::client::ClientOptions;
use iot_gateway::edge::{Forwarder, ForwarderOptions, IdentityMap};
use iot_gateway::mqtt::{MqttConfig, MqttServer};
use iot_gateway::{
    DeviceSession, Gateway, Hub, HubConfig, MethodResponse, SessionEvent, SessionOptions,
    Subscription, Telemetry,
};
use iot_identity::{
    Credentials, IdentityStore, MemoryIdentityStore, NewIdentity, Presented, SymmetricKey,
};

/// A field gateway in front of a running hub: simulated leaf devices send to a local hub on
/// --data-dir, and a forwarder carries their telemetry upstream as the leaves (and C2D messages
/// and methods back down). Prints what it forwards every second.
#[derive(Debug, Parser)]
#[command(name = "field_gateway")]
struct Args {
    /// Directory of the local hub's stores (its telemetry log is the store-and-forward buffer).
    #[arg(long, value_name = "DIR")]
    data_dir: PathBuf,
    /// The cloud hub's MQTT/TLS address, e.g. 127.0.0.1:8884.
    #[arg(long, value_name = "ADDR")]
    upstream: SocketAddr,
    /// The cloud hub's host name (TLS name and SAS token scope).
    #[arg(long, value_name = "NAME", default_value = "localhost")]
    upstream_host: String,
    /// The CA certificate (PEM) the cloud hub's certificate chains to, e.g. CLOUD/tls/ca.pem.
    #[arg(long, value_name = "PEM")]
    tls_ca: PathBuf,
    /// The cloud's fleet group key (mqtt_gateway's DIR/fleet.key): leaf fleet-i's key is
    /// derived from it, upstream and locally.
    #[arg(long, value_name = "FILE")]
    fleet_key_file: PathBuf,
    /// Simulated leaves fleet-0 … fleet-{N-1}.
    #[arg(long, value_name = "N", default_value_t = 5)]
    leaves: usize,
    /// Milliseconds between two readings of one leaf.
    #[arg(long, value_name = "MS", default_value_t = 1000)]
    interval_ms: u64,
    /// Also serve the local hub over plain MQTT here, for real leaves.
    #[arg(long, value_name = "ADDR")]
    listen: Option<SocketAddr>,
    /// Stop after this many seconds instead of waiting for Ctrl-C.
    #[arg(long, value_name = "SECONDS", value_parser = parse_seconds)]
    run_for: Option<Duration>,
}

fn parse_seconds(text: &str) -> Result<Duration, std::num::ParseIntError> {
    text.parse().map(Duration::from_secs)
}

#[tokio::main]
async fn main() -> ExitCode {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
    let args = Args::parse();
    match run(args).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn run(args: Args) -> Result<(), Box<dyn std::error::Error>> {
    let group = std::fs::read_to_string(&args.fleet_key_file)
        .map_err(|e| format!("{}: {e}", args.fleet_key_file.display()))?;
    let group = SymmetricKey::from_base64(group.trim())
        .map_err(|e| format!("{}: {e}", args.fleet_key_file.display()))?;
    let ca = std::fs::read(&args.tls_ca).map_err(|e| format!("{}: {e}", args.tls_ca.display()))?;

    // Local identities: the leaves authenticate to the field gateway with the same derived keys
    // (a real one would have its own; the example keeps one key per leaf for simplicity).
    let local_identities = Arc::new(MemoryIdentityStore::new());
    let mut upstream = IdentityMap::new();
    let mut leaves = Vec::new();
    for i in 0..args.leaves {
        let leaf: DeviceId = format!("fleet-{i}").parse()?;
        let key = group.derive_for_device(leaf.as_str());
        local_identities
            .create(NewIdentity::new(
                leaf.clone(),
                Credentials::SymmetricKeys {
                    primary: key.clone(),
                    secondary: SymmetricKey::generate(),
                },
            ))
            .await?;
        let options = ClientOptions::with_key(&args.upstream_host, leaf.as_str(), key.clone())
            .connect_host(&args.upstream.ip().to_string())
            .port(args.upstream.port())
            .ca_roots_pem(&ca);
        upstream.insert(leaf.clone(), options);
        leaves.push((leaf, key));
    }

    let edge = Hub::open_dir(
        &args.data_dir,
        local_identities,
        "field-gateway.local",
        HubConfig::default(),
    )
    .await?;
    let server = match args.listen {
        Some(addr) => {
            let gateway: Arc<dyn Gateway> = Arc::new(edge.clone());
            let server = MqttServer::new(gateway, MqttConfig::default())?;
            println!("leaves-listen: mqtt://{}", server.listen_tcp(addr).await?);
            Some(server)
        }
        None => None,
    };
    let forwarder =
        Forwarder::start(&edge, Arc::new(upstream), ForwarderOptions::default()).await?;
    println!(
        "forwarding: {} leaves to {} ({}), edge log in {}",
        args.leaves,
        args.upstream,
        args.upstream_host,
        args.data_dir.display()
    );

    let interval = Duration::from_millis(args.interval_ms.max(1));
    // Message ids unique across runs (`{leaf}-{run}-{n}`), so that a back end can drop the
    // duplicates at-least-once forwarding allows by id without dropping a later run's readings.
    let run = iot_core::Timestamp::now().as_unix_millis();
    let mut tasks = Vec::new();
    for (leaf, key) in leaves {
        let key = key.expose_base64();
        let session = edge
            .connect(
                &leaf,
                Presented::SymmetricKey(key.as_str()),
                SessionOptions::default(),
            )
            .await?;
        session.subscribe(Subscription::C2d).await?;
        session.subscribe(Subscription::Methods).await?;
        tasks.push(tokio::spawn(simulate(session, interval, run)));
    }

    let report = async {
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        loop {
            tick.tick().await;
            let stats = forwarder.stats();
            let backlog = forwarder.backlog().await.unwrap_or(0);
            println!(
                "forwarded: {} backlog: {backlog} skipped: {} batches: {}",
                stats.forwarded, stats.skipped, stats.batches
            );
        }
    };
    let run_for = args.run_for.unwrap_or(Duration::MAX);
    tokio::select! {
        () = tokio::time::sleep(run_for) => {}
        () = report => {}
        _ = tokio::signal::ctrl_c() => {}
    }
    for task in tasks {
        task.abort();
    }
    forwarder.shutdown().await;
    if let Some(server) = server {
        server.shutdown().await;
    }
    edge.shutdown().await;
    Ok(())
}

/// One leaf: a numbered reading every `interval`; C2D messages and method calls printed (and
/// completed, answered).
async fn simulate(session: Box<dyn DeviceSession>, interval: Duration, run: u64) {
    let leaf = session.device_id().clone();
    let mut tick = tokio::time::interval(interval);
    let mut n: u64 = 0;
    loop {
        tokio::select! {
            _ = tick.tick() => {
                n += 1;
                let mut reading = Telemetry::new(format!(r#"{{"n":{n},"t":{}}}"#, 20 + n % 7));
                reading.system.message_id = Some(format!("{leaf}-{run}-{n}"));
                reading.system.content_type = Some("application/json".into());
                if let Err(e) = session.send_telemetry(reading).await {
                    eprintln!("{leaf}: telemetry refused: {e}");
                }
            }
            event = session.next_event() => match event {
                Ok(SessionEvent::C2d(delivery)) => {
                    println!("c2d: {leaf} {:?}", String::from_utf8_lossy(&delivery.payload));
                    let _ = session.complete(delivery.lock_token).await;
                }
                Ok(SessionEvent::Method(request)) => {
                    println!("method: {leaf} {}", request.name);
                    let answer = MethodResponse {
                        request_id: request.request_id,
                        status: 200,
                        payload: format!(r#"{{"leaf":"{leaf}","readings":{n}}}"#).into(),
                    };
                    let _ = session.respond_method(answer).await;
                }
                Ok(SessionEvent::Closed(reason)) | Err(iot_gateway::Error::SessionClosed { reason, .. }) => {
                    eprintln!("{leaf}: session closed ({reason:?})");
                    return;
                }
                Ok(_) => {}
                Err(e) => {
                    eprintln!("{leaf}: {e}");
                    return;
                }
            },
        }
    }
}
