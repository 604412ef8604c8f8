//! Three gateway instances as one hub (feature `cluster`, docs/cluster.md): each a `Hub` with an
//! MQTT endpoint on a port of its own, all over the same PostgreSQL stores and the same NATS
//! JetStream log, coordinated over core NATS.
//!
//! ```text
//! cargo run --example cluster --features cluster -- \
//!     [--nats nats://127.0.0.1:4222] [--postgres postgres://postgres@127.0.0.1:5432/test] \
//!     [--instances 3] [--listen 127.0.0.1] [--base-port 18881] [--host localhost] \
//!     [--name cluster-example] [--device DEVICE_ID] [--run-for SECONDS]
//! ```
//!
//! It provisions `DEVICE_ID` in the shared PostgreSQL identity store (namespace `--name`) if it is
//! new, starts the instances (`gw0`, `gw1`, … on `--base-port`, `--base-port`+1, …), waits until
//! each hears the others, and prints the device's connection string and, per instance, its
//! address and the `mosquitto_pub` / `mosquitto_sub` commands that reach it. A device may connect
//! to any instance: a C2D greeting queued through the last instance reaches it wherever it is
//! connected, connecting again elsewhere closes the first session, and its telemetry lands in the
//! one shared log, whose records are printed (`telemetry: …`, whichever instance took them).
//! The same `--name` on the next run finds the same device, key and streams. It runs until
//! Ctrl-C, or for `--run-for` seconds. `--help` lists the flags; usage errors exit with status 2.
#![allow(clippy::print_stdout, clippy::print_stderr)]

#[path = "support/device_key.rs"]
mod device_key;

#[path = "mqtt_gateway/telemetry.rs"]
#[allow(
    dead_code,
    reason = "this example uses the tail and its printer, not the stats server"
)]
mod telemetry;

use std::net::{IpAddr, SocketAddr};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::Parser;
use iot_sdk::cluster::{ClusterConfig, ClusterHub};
use iot_sdk::core::{DeviceId, Topics};
use iot_sdk::gateway::mqtt::{MqttConfig, MqttServer};
use iot_sdk::gateway::{C2dMessage, Gateway, Hub};
use iot_sdk::identity::sas;
use iot_sdk::nats::{NatsLogConfig, NatsLogFactory};
use iot_sdk::postgres::{
    PgIdentityConfig, PgIdentityStore, PgInbox, PgInboxConfig, PgPool, PgTwinStore,
    PgTwinStoreConfig,
};

/// Several gateway instances over shared NATS and PostgreSQL, as one hub.
#[derive(Debug, Parser)]
#[command(name = "cluster")]
struct Args {
    /// The NATS server (JetStream on) for the log and the coordination.
    #[arg(long, default_value = "nats://127.0.0.1:4222")]
    nats: String,
    /// The PostgreSQL database for identities, inboxes and twins.
    #[arg(long, default_value = "postgres://postgres@127.0.0.1:5432/test")]
    postgres: String,
    /// How many instances to start.
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u16).range(1..=16))]
    instances: u16,
    /// The address the instances' MQTT endpoints listen on.
    #[arg(long, default_value = "127.0.0.1")]
    listen: IpAddr,
    /// The first instance's MQTT port; the others follow it.
    #[arg(long, default_value_t = 18881)]
    base_port: u16,
    /// The host name devices connect to (in their connection string and SAS tokens).
    #[arg(long, default_value = "localhost")]
    host: String,
    /// The identity namespace, NATS stream prefix and cluster subject prefix: runs with the same
    /// name share devices and telemetry.
    #[arg(long, default_value = "cluster-example")]
    name: String,
    /// The device to provision (if new) and print commands for.
    #[arg(long, default_value = "cluster-device")]
    device: DeviceId,
    /// Stop after this many seconds instead of at Ctrl-C.
    #[arg(long, value_parser = parse_seconds)]
    run_for: Option<Duration>,
}

fn parse_seconds(s: &str) -> Result<Duration, String> {
    s.parse::<u64>()
        .map(Duration::from_secs)
        .map_err(|e| format!("{s:?} is not a number of seconds: {e}"))
}

#[tokio::main]
async fn main() -> ExitCode {
    let args = Args::parse();
    match run(args).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

struct Instance {
    gateway: ClusterHub,
    server: MqttServer,
    address: SocketAddr,
}

async fn run(args: Args) -> Result<(), Box<dyn std::error::Error>> {
    let interrupted = tokio::signal::ctrl_c();
    let pool = PgPool::from_url(&args.postgres)?;
    let identity_config = PgIdentityConfig::default().namespace(&args.name);
    let key = {
        let identity = PgIdentityStore::open(pool.clone(), identity_config.clone()).await?;
        device_key::device_key(&identity, &args.device).await?
    };

    let mut instances = Vec::new();
    for i in 0..args.instances {
        let name = format!("gw{i}");
        // Each instance has its own connections and store handles, as a process of its own would.
        let identity =
            Arc::new(PgIdentityStore::open(pool.clone(), identity_config.clone()).await?);
        let inbox = PgInbox::open(
            pool.clone(),
            PgInboxConfig::default().instance(format!("{}-{name}", args.name)),
        )
        .await?;
        let twins = PgTwinStore::open(pool.clone(), PgTwinStoreConfig::default()).await?;
        let log = NatsLogConfig::from_url(&args.nats)?.prefix(args.name.clone());
        let builder = Hub::builder(identity, args.host.clone())
            .topics(Arc::new(Topics::new(
                NatsLogFactory::connect(log).await?,
                4,
            )))
            .inbox(Arc::new(inbox))
            .twins(Arc::new(twins));
        let cluster = ClusterConfig::new(name).prefix(format!("{}.cluster", args.name));
        let gateway =
            ClusterHub::start(async_nats::connect(&args.nats).await?, builder, cluster).await?;
        let server = MqttServer::new(Arc::new(gateway.clone()), MqttConfig::default())?;
        let port = args
            .base_port
            .checked_add(i)
            .ok_or("--base-port leaves no room for every instance")?;
        let address = server
            .listen_tcp(SocketAddr::new(args.listen, port))
            .await?;
        instances.push(Instance {
            gateway,
            server,
            address,
        });
    }
    wait_for_peers(&instances).await?;

    let device = &args.device;
    let host = &args.host;
    println!(
        "connection-string: HostName={host};DeviceId={device};SharedAccessKey={}",
        key.expose_base64().as_str()
    );
    let token = sas::generate(
        &format!("{host}/devices/{device}"),
        &key,
        sas::unix_now() + 86_400,
        None,
    )?;
    for instance in &instances {
        let a = instance.address;
        let common = format!(
            "-h {} -p {} -V mqttv311 -i '{device}' -u '{host}/{device}/?api-version=2021-04-12' -P '{}'",
            a.ip(),
            a.port(),
            token.as_str()
        );
        println!(
            "instance {}: mqtt {a} (plain TCP)",
            instance.gateway.instance()
        );
        println!("  mosquitto_sub {common} -q 1 -v -t 'devices/{device}/messages/devicebound/#'");
        println!(
            "  mosquitto_pub {common} -q 1 -t 'devices/{device}/messages/events/via={}' -m hello",
            instance.gateway.instance()
        );
    }

    // Through the last instance, whichever instance the device will connect to. Nothing else
    // sends to the device, so a non-empty inbox holds an earlier run's greeting.
    let last = instances.last().ok_or("no instance")?;
    if last.gateway.pending_c2d(device).await? == 0 {
        let mut greeting =
            C2dMessage::new(format!("hello through {}", last.gateway.instance()).into_bytes());
        greeting.content_type = Some("text/plain".into());
        last.gateway.send_c2d(device, greeting).await?;
        println!(
            "queued: a C2D greeting for {device} through {}",
            last.gateway.instance()
        );
    } else {
        println!("queued: a C2D greeting for {device} was already waiting, not queued again");
    }

    let first = instances.first().ok_or("no instance")?;
    // The log is shared: one tail sees what every instance took.
    let tail = tokio::spawn(telemetry::tail(
        Arc::clone(first.gateway.hub().telemetry_log()),
        telemetry::print,
    ));
    let run_for = args.run_for.unwrap_or(Duration::MAX);
    tokio::select! {
        () = tokio::time::sleep(run_for) => {}
        _ = interrupted => {}
    }
    tail.abort();
    for instance in &instances {
        instance.server.shutdown().await;
        instance.gateway.shutdown().await;
    }
    println!("stopped");
    Ok(())
}

/// Waits (up to ten seconds) until every instance hears all the others.
async fn wait_for_peers(instances: &[Instance]) -> Result<(), Box<dyn std::error::Error>> {
    let others = instances.len() - 1;
    let started = Instant::now();
    while instances.iter().any(|i| i.gateway.peers().len() < others) {
        if started.elapsed() > Duration::from_secs(10) {
            return Err(
                "the instances did not hear each other within 10 s: is NATS reachable \
                        from every instance?"
                    .into(),
            );
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    println!(
        "cluster: {} instances hear each other after {} ms",
        instances.len(),
        started.elapsed().as_millis()
    );
    Ok(())
}
