//! One gateway instance of a cluster, as a process of its own (feature `cluster-node`,
//! docs/cluster.md): a `Hub` over the shared PostgreSQL stores and NATS JetStream log, joined to
//! the other instances over core NATS, serving devices on MQTT (TCP and TLS) and back ends on the
//! service REST API.
//!
//! ```text
//! iot-cluster-node --instance gw0 [--name my-hub] [--nats URL] [--postgres URL] \
//!     [--mqtt ADDR] [--mqtts ADDR --tls-cert CERT.pem --tls-key KEY.pem] [--http ADDR] \
//!     [--service-key BASE64] [--peers N] …
//! ```
//!
//! Every instance of one hub runs with the same `--name` (the identity and registry namespace,
//! the NATS stream prefix and the cluster's subject prefix) and the same `--service-key` (the
//! `iothubowner` policy's key, so a service token is good on every instance), and with an
//! `--instance` id of its own. It prints one line per endpoint (`mqtt: ADDR`, `mqtts: ADDR`,
//! `http: ADDR`), then `ready: …` once it hears `--peers` other instances, and runs until
//! SIGINT/SIGTERM (graceful: its sessions close and the others forget it at once) or `--run-for`.
#![forbid(unsafe_code)]
#![allow(
    clippy::print_stdout,
    clippy::print_stderr,
    reason = "a command-line program: its endpoints and readiness are its output"
)]

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::Parser;
use iot_sdk::cluster::{ClusterConfig, ClusterHub};
use iot_sdk::core::Topics;
use iot_sdk::gateway::http::{
    HttpConfig, HttpServer, HttpState, PolicyStore, Rights, SharedAccessPolicy,
};
use iot_sdk::gateway::mqtt::{MqttConfig, MqttServer, TlsConfig};
use iot_sdk::gateway::{Hub, HubConfig, ThrottleConfig};
use iot_sdk::identity::SymmetricKey;
use iot_sdk::nats::{NatsLogConfig, NatsLogFactory};
use iot_sdk::postgres::{
    PgIdentityConfig, PgIdentityStore, PgInbox, PgInboxConfig, PgPool, PgProvisioning, PgRegistry,
    PgRegistryConfig, PgTwinStore, PgTwinStoreConfig,
};
use iot_sdk::provisioning::Provisioning;

/// One gateway instance of a cluster.
#[derive(Debug, Parser)]
#[command(name = "iot-cluster-node")]
struct Args {
    /// This instance's id, unique in the cluster and stable across its restarts (its C2D locks
    /// are taken in this name and released when it starts again).
    #[arg(long)]
    instance: String,
    /// The hub's name: identity and registry namespace, NATS stream prefix, subject prefix.
    #[arg(long, default_value = "iot-hub")]
    name: String,
    /// The NATS server (JetStream on) for the log and the coordination.
    #[arg(long, default_value = "nats://127.0.0.1:4222")]
    nats: String,
    /// The PostgreSQL database for identities, registry, inboxes and twins.
    #[arg(long, default_value = "postgres://postgres@127.0.0.1:5432/test")]
    postgres: String,
    /// The host name devices and back ends put in their tokens.
    #[arg(long, default_value = "localhost")]
    host: String,
    /// MQTT over plain TCP.
    #[arg(long, value_name = "ADDR")]
    mqtt: Option<SocketAddr>,
    /// MQTT over TLS (needs --tls-cert and --tls-key).
    #[arg(long, value_name = "ADDR", requires_all = ["tls_cert", "tls_key"])]
    mqtts: Option<SocketAddr>,
    /// The server certificate chain (PEM) for --mqtts.
    #[arg(long, value_name = "CERT.pem")]
    tls_cert: Option<PathBuf>,
    /// The server key (PEM) for --mqtts.
    #[arg(long, value_name = "KEY.pem")]
    tls_key: Option<PathBuf>,
    /// The service REST API over plain HTTP.
    #[arg(long, value_name = "ADDR")]
    http: Option<SocketAddr>,
    /// The `iothubowner` policy's key (base64), the same on every instance; a fresh one is
    /// generated (and its connection string printed) when absent.
    #[arg(long, value_name = "BASE64")]
    service_key: Option<String>,
    /// Print `ready` once this many other instances are heard.
    #[arg(long, default_value_t = 0)]
    peers: usize,
    /// Partitions of each topic in the log.
    #[arg(long, default_value_t = 4)]
    partitions: u32,
    /// How long a delivered C2D message stays locked before it is offered again.
    #[arg(long, value_name = "SECONDS", default_value = "60", value_parser = parse_seconds)]
    lock: Duration,
    /// The heartbeat period and the lease after which a silent instance's devices are offline.
    #[arg(long, value_name = "MS", default_value_t = 500)]
    heartbeat_ms: u64,
    /// See --heartbeat-ms.
    #[arg(long, value_name = "MS", default_value_t = 3000)]
    lease_ms: u64,
    /// No throttling (benchmarks).
    #[arg(long)]
    no_throttle: bool,
    /// Stop after this many seconds.
    #[arg(long, value_name = "SECONDS", value_parser = parse_seconds)]
    run_for: Option<Duration>,
}

fn parse_seconds(s: &str) -> Result<Duration, String> {
    s.parse::<u64>()
        .map(Duration::from_secs)
        .map_err(|e| format!("{s:?} is not a number of seconds: {e}"))
}

#[tokio::main]
async fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
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
    if args.mqtt.is_none() && args.mqtts.is_none() && args.http.is_none() {
        return Err("nothing to serve: give --mqtt, --mqtts or --http".into());
    }
    let pool = PgPool::from_url(&args.postgres)?;
    let identity = PgIdentityStore::open(
        pool.clone(),
        PgIdentityConfig::default().namespace(&args.name),
    )
    .await?;
    let inbox = PgInbox::open(
        pool.clone(),
        PgInboxConfig::default().instance(format!("{}-{}", args.name, args.instance)),
    )
    .await?;
    let twins = PgTwinStore::open(pool.clone(), PgTwinStoreConfig::default()).await?;
    let log =
        NatsLogFactory::connect(NatsLogConfig::from_url(&args.nats)?.prefix(&args.name)).await?;

    let mut config = HubConfig::default();
    config.partitions = args.partitions;
    config.inbox.lock_duration = args.lock;
    if args.no_throttle {
        config.throttle = ThrottleConfig::unlimited();
    }
    let builder = Hub::builder(Arc::new(identity.clone()), args.host.clone())
        .config(config)
        .topics(Arc::new(Topics::new(log, args.partitions)))
        .inbox(Arc::new(inbox))
        .twins(Arc::new(twins));
    let cluster = ClusterConfig::new(args.instance.clone())
        .prefix(format!("{}.cluster", args.name))
        .timing(
            Duration::from_millis(args.heartbeat_ms),
            Duration::from_millis(args.lease_ms),
        );
    cluster.validate()?;
    let gateway =
        ClusterHub::start(async_nats::connect(&args.nats).await?, builder, cluster).await?;

    let mqtt = MqttServer::new(Arc::new(gateway.clone()), MqttConfig::default())?;
    if let Some(addr) = args.mqtt {
        println!("mqtt: {}", mqtt.listen_tcp(addr).await?);
    }
    if let (Some(addr), Some(cert), Some(key)) = (args.mqtts, &args.tls_cert, &args.tls_key) {
        let tls = TlsConfig::from_pem_files(cert, key, false)?;
        println!("mqtts: {}", mqtt.listen_tls(addr, tls).await?);
    }

    let http = match args.http {
        Some(addr) => {
            let owner_key = match &args.service_key {
                Some(key) => SymmetricKey::from_base64(key)
                    .map_err(|e| format!("--service-key is not a base64 key: {e}"))?,
                None => SymmetricKey::generate(),
            };
            let mut owner = SharedAccessPolicy::generate("iothubowner", Rights::ALL);
            owner.primary = owner_key;
            let registry = PgRegistry::open(
                pool.clone(),
                PgRegistryConfig::default().namespace(&args.name),
            )
            .await?;
            let provisioning =
                PgProvisioning::open(identity.clone(), registry.clone(), args.host.clone()).await?;
            let http_config = HttpConfig::default();
            let state = HttpState::new(
                Arc::new(gateway.clone()),
                Arc::new(provisioning) as Arc<dyn Provisioning>,
                Arc::new(registry),
                Arc::new(identity.clone()),
                Arc::new(PolicyStore::memory(vec![owner.clone()])),
                args.host.clone(),
                http_config.clone(),
            );
            let server = HttpServer::new(iot_sdk::gateway::http::router(state), http_config);
            let bound = server.listen_tcp(addr).await?;
            println!("http: {bound}");
            if args.service_key.is_none() {
                println!(
                    "service-connection-string: {}",
                    owner.connection_string(&format!("{}:{}", args.host, bound.port()))
                );
            }
            Some(server)
        }
        None => None,
    };

    wait_for_peers(&gateway, args.peers).await?;
    println!(
        "ready: instance={} peers={}",
        gateway.instance(),
        gateway.peers().len()
    );

    let run_for = args.run_for.unwrap_or(Duration::MAX);
    let mut terminate = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        () = tokio::time::sleep(run_for) => {}
        _ = tokio::signal::ctrl_c() => {}
        _ = terminate.recv() => {}
    }
    mqtt.shutdown().await;
    if let Some(http) = http {
        http.shutdown().await;
    }
    gateway.shutdown().await;
    println!("stopped");
    Ok(())
}

/// Waits (up to 30 s) until `peers` other instances are heard.
async fn wait_for_peers(gateway: &ClusterHub, peers: usize) -> Result<(), String> {
    let started = Instant::now();
    while gateway.peers().len() < peers {
        if started.elapsed() > Duration::from_secs(30) {
            return Err(format!(
                "heard {} of {peers} other instances within 30 s: do they share --name and \
                 the NATS server?",
                gateway.peers().len()
            ));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Ok(())
}
