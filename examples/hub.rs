//! One runnable hub: devices over MQTT (TCP, TLS, WebSocket) and back ends over IoT Hub's
//! service REST API (HTTPS), over file-backed stores. As on IoT Hub's port 443, the HTTPS
//! listener also serves MQTT over WebSocket and, with feature `amqp`, AMQP over WebSocket at
//! `/$iothub/websocket` (by subprotocol: `mqtt`, `AMQPWSB10`).
//!
//! ```text
//! cargo run --example hub --features http -- --data-dir DIR --host localhost --device DEVICE_ID --self-signed
//!     [--listen 127.0.0.1:1884] [--tls-listen 127.0.0.1:8884] [--https-listen 127.0.0.1:8443]
//!     [--http-listen ADDR] [--ws-listen ADDR] [--tls-cert CERT.pem --tls-key KEY.pem]
//!     [--metrics-listen ADDR] [--run-for SECONDS]
//!     [--ui] [--admin-user NAME] [--admin-password-file FILE]
//!     [--eventhubs-listen 127.0.0.1:5671]   # with --features eventhubs
//!     [--amqp-listen ADDR]                  # with --features amqp (needs the TLS flags)
//! ```
//!
//! It opens (or creates) under `DIR` the identity store, the registry, the provisioning journal,
//! the hub's stores, the MQTT endpoint's sessions, the shared access policies (IoT Hub's five
//! defaults, with keys made on first start and kept) and the CA certificates of X.509 CA
//! authentication (`DIR/cas`, managed with the `/certificates` routes; the MQTT and HTTPS
//! listeners offer client certificates) and the jobs and automatic device configurations of
//! `/jobs/v2` and `/configurations` (`DIR/fleet`, docs/fleet.md). `--device` is registered through the
//! provisioner if new. It prints:
//!
//! * `connection-string: HostName=…;DeviceId=…;SharedAccessKey=…` for the Azure IoT device SDKs,
//! * `service-connection-string: HostName=…;SharedAccessKeyName=iothubowner;SharedAccessKey=…`
//!   for the service SDKs (`HostName` carries the HTTPS port unless it is 443),
//! * where each listener is (`mqtt:`, `mqtts:`, `https:`, `mqtt-wss:`, `amqp-wss:`, …) and,
//!   with `--self-signed`, the CA certificate clients must trust (`ca-certificate:`),
//!
//! and, with `--eventhubs-listen` (feature `eventhubs`, docs/eventhubs.md), `eventhubs: amqps://…`
//! and `eventhubs-connection-string: Endpoint=sb://…/;SharedAccessKeyName=service;…;EntityPath=…`
//! for Event Hubs clients reading the telemetry,
//! and `metrics: http://ADDR/metrics` with `--metrics-listen` (the hub's metrics in the
//! Prometheus text format, docs/metrics.md), then every telemetry record that lands in the log
//! (`telemetry: …`). Default ports stay off
//! IoT Hub's 1883/8883/443 so a hub runs beside a local broker; pass `--tls-listen
//! 127.0.0.1:8883` or `--https-listen 127.0.0.1:443` to use them. Runs until Ctrl-C or for
//! `--run-for` seconds, then shuts down gracefully (`stopped`). `--help` lists the flags; usage
//! errors exit with status 2.
//!
//! The solution layer (docs/dashboard.md): the access matrix of users over `DIR/access` is
//! wired into the service API (`/auth/login`, bearer sessions, `/access/users`), the rule
//! `overheat` writes alerts to the `alerts` topic, and `--ui` serves the dashboard at
//! `/ui/` on the HTTP(S) listeners. The first admin is created from `--admin-password-file` or
//! the `IOT_ADMIN_PASSWORD` environment variable (never a flag's value), if not there yet.
//! Users' alert subscriptions (`/access/me/subscriptions`) live in `DIR/access/subscriptions`;
//! built with `--features http,alert-push`, the hub pushes each alert to the subscriptions of
//! the users who may read its device, as signed webhooks (`alert-push: on`; docs/access.md),
//! to public addresses only unless `--alert-webhooks-anywhere` lets subscriptions point at
//! loopback and private networks (a demo or test on one machine).
#![allow(clippy::print_stdout, clippy::print_stderr)]

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use clap::{CommandFactory, Parser};
use iot_core::{DeviceId, GroupName, Log, Offset, ReadLimits};
use iot_gateway::http::{HttpConfig, HttpServer, HttpState, PolicyStore, WebSocketUpgrades};
use iot_gateway::mqtt::{MqttConfig, MqttServer, SelfSigned, TlsConfig};
use iot_gateway::{Hub, HubConfig};
use iot_identity::ca::{CertificateAuthorities, FileCaStore};
use iot_identity::{Credentials, FileIdentityStore, FileIdentityStoreConfig, IdentityStore};
use iot_provisioning::{
    FileJournal, FileJournalConfig, Provisioner, Provisioning, RegisterRequest,
};
use iot_registry::{FileRegistry, FileRegistryConfig};
use iot_sdk::events::LifecycleEvents;
use iot_sdk::metrics::HubMetrics;
use iot_sdk::routing::HubTwins;
use iot_stream::{HostConfig, ProcessorHost};
use serde_json::json;

#[path = "support/hub_dashboard.rs"]
mod dashboard;

/// One runnable hub: MQTT for devices and IoT Hub's service REST API over HTTPS, over
/// file-backed stores.
///
/// Prints the device's connection string, the iothubowner service connection string and the
/// listeners, then the telemetry that lands in the log. Runs until Ctrl-C or for --run-for
/// seconds.
#[derive(Debug, Parser)]
#[command(name = "hub")]
struct Args {
    /// Directory of every store (created if missing).
    #[arg(long, value_name = "DIR")]
    data_dir: PathBuf,
    /// Plain MQTT over TCP.
    #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:1884")]
    listen: SocketAddr,
    /// MQTT over TLS (needs --tls-cert and --tls-key, or --self-signed).
    #[arg(long, value_name = "ADDR")]
    tls_listen: Option<SocketAddr>,
    /// The service REST API over HTTPS (needs the TLS flags).
    #[arg(long, value_name = "ADDR")]
    https_listen: Option<SocketAddr>,
    /// The service REST API over plain HTTP (development only: tokens cross in the clear).
    #[arg(long, value_name = "ADDR")]
    http_listen: Option<SocketAddr>,
    /// MQTT over WebSocket (ws://ADDR/$iothub/websocket).
    #[arg(long, value_name = "ADDR")]
    ws_listen: Option<SocketAddr>,
    /// IoT Hub's AMQP 1.0 endpoint over TLS (IoT Hub's 5671; needs the TLS flags; feature
    /// `amqp`, docs/amqp.md).
    #[cfg(feature = "amqp")]
    #[arg(long, value_name = "ADDR")]
    amqp_listen: Option<SocketAddr>,
    /// The server certificate chain (PEM).
    #[arg(long, value_name = "CERT.pem", requires = "tls_key")]
    tls_cert: Option<PathBuf>,
    /// The server private key (PEM).
    #[arg(long, value_name = "KEY.pem", requires = "tls_cert")]
    tls_key: Option<PathBuf>,
    /// Make a CA and a certificate for --host under DIR/tls instead of --tls-cert/--tls-key.
    #[arg(long, conflicts_with_all = ["tls_cert", "tls_key"])]
    self_signed: bool,
    /// The host name clients connect to (in connection strings and SAS tokens).
    #[arg(long, default_value = "localhost")]
    host: String,
    /// A device to register (if new) and print the connection string of.
    #[arg(long, value_name = "DEVICE_ID")]
    device: Option<DeviceId>,
    /// Serve the hub's metrics in the Prometheus text format at http://ADDR/metrics.
    #[arg(long, value_name = "ADDR")]
    metrics_listen: Option<SocketAddr>,
    /// The Event Hubs-compatible endpoint over the telemetry log (feature `eventhubs`): AMQP
    /// over TLS with the TLS flags, else plain AMQP (development only).
    #[cfg(feature = "eventhubs")]
    #[arg(long, value_name = "ADDR")]
    eventhubs_listen: Option<SocketAddr>,
    /// Stop after this many seconds instead of waiting for Ctrl-C.
    #[arg(long, value_name = "SECONDS", value_parser = parse_seconds)]
    run_for: Option<Duration>,
    /// Serve the dashboard at /ui/ on the HTTP(S) listeners (docs/dashboard.md).
    #[arg(long)]
    ui: bool,
    /// The first admin's user name (created if missing, when a password is given).
    #[arg(long, value_name = "NAME", default_value = "admin")]
    admin_user: String,
    /// A file holding the first admin's password (or set IOT_ADMIN_PASSWORD).
    #[arg(long, value_name = "FILE")]
    admin_password_file: Option<PathBuf>,
    /// Let users' alert subscriptions post to loopback and private addresses too (by default
    /// only public ones: a user must not make the hub call services on its own network).
    #[arg(long)]
    #[cfg_attr(
        not(feature = "alert-push"),
        allow(dead_code, reason = "read only by the alert push")
    )]
    alert_webhooks_anywhere: bool,
}

impl Args {
    #[cfg(feature = "amqp")]
    fn amqp_listen(&self) -> Option<SocketAddr> {
        self.amqp_listen
    }

    #[cfg(not(feature = "amqp"))]
    fn amqp_listen(&self) -> Option<SocketAddr> {
        None
    }
}

fn parse_seconds(text: &str) -> Result<Duration, std::num::ParseIntError> {
    text.parse().map(Duration::from_secs)
}

impl Args {
    fn check(&self) -> Result<(), &'static str> {
        let files = self.tls_cert.is_some() && self.tls_key.is_some();
        let needs_tls = self.tls_listen.is_some()
            || self.https_listen.is_some()
            || self.amqp_listen().is_some();
        if needs_tls && !(self.self_signed || files) {
            return Err(
                "--tls-listen and --https-listen need --tls-cert and --tls-key, or --self-signed",
            );
        }
        #[cfg(feature = "eventhubs")]
        let eventhubs = self.eventhubs_listen.is_some();
        #[cfg(not(feature = "eventhubs"))]
        let eventhubs = false;
        if !needs_tls && !eventhubs && (files || self.self_signed) {
            return Err(
                "TLS flags need --tls-listen, --https-listen, --amqp-listen or --eventhubs-listen",
            );
        }
        if self.ui && self.https_listen.is_none() && self.http_listen.is_none() {
            return Err("--ui needs --https-listen or --http-listen");
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
    // Listen for Ctrl-C before printing anything, so a script that stops the hub as soon as it
    // sees its output gets the graceful shutdown.
    let interrupted = interrupt()?;
    let dir = &args.data_dir;
    let identity = Arc::new(
        FileIdentityStore::open(dir.join("identity"), FileIdentityStoreConfig::default()).await?,
    );
    let registry =
        Arc::new(FileRegistry::open(dir.join("registry"), FileRegistryConfig::default()).await?);
    let journal =
        Arc::new(FileJournal::open(dir.join("provisioning"), FileJournalConfig::default()).await?);
    let policies = Arc::new(PolicyStore::open(dir.join("policies")).await?);
    // CA certificates for X.509 CA authentication, managed through `/certificates`.
    let cas = CertificateAuthorities::new(FileCaStore::open(dir.join("cas")).await?);
    // Policies with DeviceConnect (`device`, `iothubowner`) sign device tokens on MQTT too.
    let hub = Hub::builder_in_dir(
        dir.join("hub"),
        identity.clone(),
        args.host.clone(),
        HubConfig::default(),
    )
    .await?
    .device_connect_policies(policies.clone())
    .certificate_authorities(cas.clone())
    .build()
    .await?;
    // Every provisioning operation on the hub's `audit` topic, and IoT Hub's lifecycle events
    // (`device-lifecycle-events`) made from it by a processor (docs/routing.md).
    let provisioner = Arc::new(
        Provisioner::builder(identity.clone(), registry.clone())
            .journal(journal)
            .host(args.host.clone())
            .audit_log(hub.topics().topic("audit").await?)
            .open()
            .await?,
    );
    let lifecycle = LifecycleEvents::new(iot_gateway::events::hub_name(&args.host)).with_twins(
        Arc::new(HubTwins::new(registry.clone(), hub.twins().clone())),
    );
    let lifecycle = ProcessorHost::new(hub.topics().clone())
        .start(
            "audit",
            GroupName::new("lifecycle-events")?,
            Arc::new(lifecycle),
            HostConfig::default(),
        )
        .await?;

    let host = &args.host;
    if let Some(device) = &args.device {
        let key = device_key(provisioner.as_ref(), identity.as_ref(), device).await?;
        println!("connection-string: HostName={host};DeviceId={device};SharedAccessKey={key}");
    }

    // Both TLS listeners offer (never require) client certificates: X.509 devices (thumbprint
    // or CA-signed) authenticate with them over MQTT and on the HTTPS device API; back ends and
    // SAS devices connect without one.
    // The PEM text too: the Event Hubs endpoint builds its own rustls configuration from it.
    let mut pem: Option<(Vec<u8>, Vec<u8>)> = None;
    let tls = if args.self_signed {
        let pair = SelfSigned::generate(host)?;
        let (ca, _, _) = pair.write_to(&dir.join("tls"))?;
        println!("ca-certificate: {}", ca.display());
        pem = Some((pair.cert_pem.clone().into(), pair.key_pem.clone().into()));
        Some(pair.tls_config(true)?)
    } else if let (Some(cert), Some(key)) = (&args.tls_cert, &args.tls_key) {
        pem = Some((std::fs::read(cert)?, std::fs::read(key)?));
        Some(TlsConfig::from_pem_files(cert, key, true)?)
    } else {
        None
    };
    #[cfg(not(feature = "eventhubs"))]
    let _ = &pem;

    let mut mqtt_config = MqttConfig::default();
    mqtt_config.state_dir = Some(dir.join("mqtt"));
    let mqtt = MqttServer::new(Arc::new(hub.clone()), mqtt_config)?;
    println!("mqtt: {} (plain TCP)", mqtt.listen_tcp(args.listen).await?);
    if let (Some(addr), Some(tls)) = (args.tls_listen, tls.clone()) {
        let bound = mqtt.listen_tls(addr, tls).await?;
        println!("mqtts: {host}:{} (TLS)", bound.port());
    }
    if let Some(addr) = args.ws_listen {
        let bound = mqtt.listen_websocket(addr, None).await?;
        println!("mqtt-ws: ws://{bound}/$iothub/websocket");
    }

    // The access matrix (users, sessions, grants) and the alert rule the dashboard follows.
    let admin_password = dashboard::admin_password(args.admin_password_file.as_deref())
        .map_err(|e| e.to_string())?;
    let access = dashboard::open_access(dir, registry.clone(), hub.topics()).await?;
    dashboard::ensure_admin(&access, &args.admin_user, admin_password.as_deref()).await?;
    drop(admin_password);
    let rules = dashboard::start_rules(hub.topics().clone()).await?;
    // Users' alert subscriptions, and (feature `alert-push`) the group that pushes the alerts
    // topic to them as signed webhooks.
    let subscriptions = dashboard::open_subscriptions(dir).await?;
    #[cfg(feature = "alert-push")]
    let alert_push = {
        let group = dashboard::start_alert_push(
            hub.topics().clone(),
            access.clone(),
            subscriptions.clone(),
            args.alert_webhooks_anywhere,
        )
        .await?;
        println!("alert-push: on");
        group
    };
    #[cfg(not(feature = "alert-push"))]
    println!("alert-push: off (build with --features alert-push)");

    let http_config = HttpConfig::default();
    let state = HttpState::new(
        Arc::new(hub.clone()),
        provisioner.clone() as Arc<dyn Provisioning>,
        registry.clone(),
        identity.clone(),
        policies.clone(),
        host.clone(),
        http_config.clone(),
    )
    .with_certificate_authorities(cas)
    // Module identities (`/devices/{id}/modules/{mid}`) in the hub's own store (DIR/hub/modules).
    .with_modules(hub.modules().clone())
    .with_access(access)
    .with_subscriptions(subscriptions)
    .with_telemetry_stream(hub.telemetry_log().clone())
    .with_alerts_stream(hub.topics().topic(dashboard::ALERTS_TOPIC).await?);
    // Jobs and automatic device configurations (`/jobs/v2`, `/configurations`) over files
    // under DIR/fleet; a job that was running resumes here (docs/fleet.md).
    let fleet = open_fleet(&state, dir).await?;
    let state = state.with_fleet(fleet.clone());
    // With feature `amqp` the AMQP endpoint always exists: it listens on --amqp-listen (TLS), and
    // the HTTP(S) listeners hand it WebSocket upgrades asking for `AMQPWSB10`.
    #[cfg(feature = "amqp")]
    let amqp = {
        let server = iot_gateway::amqp::AmqpServer::new(
            Arc::new(hub.clone()),
            iot_gateway::amqp::AmqpConfig::default(),
        )?
        .with_service_auth(state.clone());
        if let (Some(addr), Some(tls)) = (args.amqp_listen, tls.clone()) {
            let bound = server.listen_tls(addr, tls).await?;
            println!("amqps: {host}:{} (AMQP over TLS)", bound.port());
        }
        server
    };
    let streams = state.clone();
    let router = if args.ui {
        iot_gateway::http::router_with_ui(state)
    } else {
        iot_gateway::http::router(state)
    };
    // `/$iothub/websocket` on the HTTP(S) listeners, as on IoT Hub's 443: MQTT and AMQP over
    // WebSocket, by subprotocol.
    let upgrades = WebSocketUpgrades::new().mqtt(mqtt.clone());
    #[cfg(feature = "amqp")]
    let upgrades = upgrades.amqp(amqp.clone());
    let http = HttpServer::new(upgrades.add_to(router), http_config);
    let owner = policies
        .get("iothubowner")
        .ok_or("the iothubowner policy was removed from DIR/policies")?;
    if let (Some(addr), Some(tls)) = (args.https_listen, tls) {
        let bound = http.listen_tls(addr, tls).await?;
        println!("https: https://{host}:{}", bound.port());
        println!("mqtt-wss: wss://{host}:{}/$iothub/websocket", bound.port());
        #[cfg(feature = "amqp")]
        println!("amqp-wss: wss://{host}:{}/$iothub/websocket", bound.port());
        if args.ui {
            println!("ui: https://{host}:{}/ui/", bound.port());
        }
        let authority = if bound.port() == 443 {
            host.clone()
        } else {
            format!("{host}:{}", bound.port())
        };
        println!(
            "service-connection-string: {}",
            owner.connection_string(&authority)
        );
    }
    if let Some(addr) = args.http_listen {
        let bound = http.listen_tcp(addr).await?;
        println!("http: http://{bound} (plain HTTP)");
        if args.ui {
            println!("ui: http://{bound}/ui/");
        }
        if args.https_listen.is_none() {
            let authority = format!("{host}:{}", bound.port());
            println!(
                "service-connection-string: {}",
                owner.connection_string(&authority)
            );
        }
    }

    let metrics_server = match args.metrics_listen {
        Some(addr) => {
            // The lifecycle processor's lag; routing and sink groups are added the same way.
            let metrics = HubMetrics::new(hub.clone()).lag_of("audit", "lifecycle-events")?;
            if let Some(device) = &args.device {
                metrics.watch_inbox(device.clone());
            }
            let server = HttpServer::new(metrics_router(metrics), HttpConfig::default());
            let bound = server.listen_tcp(addr).await?;
            println!("metrics: http://{bound}/metrics");
            Some(server)
        }
        None => None,
    };

    #[cfg(feature = "eventhubs")]
    let eventhubs = match args.eventhubs_listen {
        Some(addr) => Some(listen_eventhubs(&hub, &policies, host, addr, pem.as_ref()).await?),
        None => None,
    };

    let tail = tokio::spawn(print_telemetry(hub.telemetry_log().clone()));
    let run_for = args.run_for.unwrap_or(Duration::MAX);
    tokio::select! {
        () = tokio::time::sleep(run_for) => {}
        () = interrupted => {}
    }
    tail.abort();
    // Live streams (the dashboard's SSE) never end on their own: end them before the grace.
    streams.close_streams();
    #[cfg(feature = "eventhubs")]
    if let Some(endpoint) = eventhubs {
        endpoint.stop();
    }
    #[cfg(feature = "amqp")]
    amqp.shutdown().await;
    http.shutdown().await;
    fleet.jobs.shutdown();
    if let Some(server) = metrics_server {
        server.shutdown().await;
    }
    mqtt.shutdown().await;
    rules.shutdown().await?;
    #[cfg(feature = "alert-push")]
    alert_push.shutdown().await?;
    lifecycle.shutdown().await?;
    hub.shutdown().await;
    println!("stopped");
    Ok(())
}

/// The job and configuration engines over DIR/fleet/jobs and DIR/fleet/configurations.
async fn open_fleet(
    state: &HttpState,
    dir: &std::path::Path,
) -> Result<iot_gateway::fleet::Fleet, Box<dyn std::error::Error>> {
    use iot_gateway::fleet::{
        ConfigurationEngine, FileConfigurationStore, FileJobStore, Fleet, JobEngine,
    };
    let devices = state.fleet_devices();
    let jobs = FileJobStore::open(dir.join("fleet/jobs")).await?;
    let configurations = FileConfigurationStore::open(dir.join("fleet/configurations")).await?;
    Ok(Fleet {
        jobs: JobEngine::open(Arc::new(jobs), devices.clone(), Default::default()).await?,
        configurations: ConfigurationEngine::open(
            Arc::new(configurations),
            devices,
            Default::default(),
        )
        .await?,
    })
}

/// The Event Hubs-compatible endpoint over the telemetry log (entity: the hub's name), for
/// back ends with the `service` policy's connection string. With a certificate it speaks TLS
/// (`amqps`); a port other than 5671 is given to clients as their custom endpoint address.
#[cfg(feature = "eventhubs")]
async fn listen_eventhubs(
    hub: &Hub,
    policies: &Arc<PolicyStore>,
    host: &str,
    addr: SocketAddr,
    pem: Option<&(Vec<u8>, Vec<u8>)>,
) -> Result<iot_sdk::eventhubs::EventHubsEndpoint, Box<dyn std::error::Error>> {
    use iot_sdk::eventhubs::{EventHubsConfig, EventHubsEndpoint, tls_config_from_pem};
    let config = EventHubsConfig::new(host, iot_gateway::events::hub_name(host));
    let endpoint = EventHubsEndpoint::new(hub.telemetry_log().clone(), policies.clone(), config);
    let (scheme, bound) = match pem {
        Some((cert, key)) => {
            let tls = tls_config_from_pem(cert, key)?;
            ("amqps", endpoint.listen_tls(addr, tls).await?)
        }
        None => ("amqp", endpoint.listen_tcp(addr).await?),
    };
    println!(
        "eventhubs: {scheme}://{host}:{} (custom endpoint address sb://{host}:{})",
        bound.port(),
        bound.port()
    );
    let service = policies
        .get("service")
        .ok_or("the service policy was removed from DIR/policies")?;
    println!(
        "eventhubs-connection-string: {}",
        endpoint.config().connection_string(&service)
    );
    Ok(endpoint)
}

/// `GET /metrics`: the hub's metrics, rendered when scraped.
fn metrics_router(metrics: HubMetrics) -> axum::Router {
    use axum::http::{StatusCode, header};
    use axum::response::IntoResponse;
    axum::Router::new().route(
        "/metrics",
        axum::routing::get(move || {
            let metrics = metrics.clone();
            async move {
                match metrics.render().await {
                    Ok(text) => (
                        [(
                            header::CONTENT_TYPE,
                            "text/plain; version=0.0.4; charset=utf-8",
                        )],
                        text,
                    )
                        .into_response(),
                    Err(e) => (StatusCode::INTERNAL_SERVER_ERROR, e.to_string()).into_response(),
                }
            }
        }),
    )
}

/// Resolves on SIGINT (Ctrl-C); the handler is installed when this is called.
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

/// The device's primary key (base64), registering the device through the provisioner first if
/// it does not exist.
async fn device_key(
    provisioner: &Provisioner,
    identity: &FileIdentityStore,
    device: &DeviceId,
) -> Result<String, Box<dyn std::error::Error>> {
    let credentials = match identity.get(device).await? {
        Some(existing) => existing.credentials.clone(),
        None => {
            let registered = provisioner
                .register(RegisterRequest::new(device.clone(), json!({})))
                .await?;
            println!("provisioned: {device}");
            registered.credentials
        }
    };
    match credentials {
        Credentials::SymmetricKeys { primary, .. } => Ok(primary.expose_base64().to_string()),
        other => Err(format!(
            "{device} authenticates with a {}, not a key",
            other.kind_name()
        )
        .into()),
    }
}

/// Prints telemetry records as they land, from every partition.
async fn print_telemetry(log: Arc<dyn Log>) {
    let mut tasks = Vec::new();
    for p in 0..log.partition_count() {
        let log = log.clone();
        tasks.push(tokio::spawn(async move {
            let partition = iot_core::PartitionId(p);
            let Ok(mut next) = log.next_offset(partition).await else {
                return;
            };
            loop {
                if log.wait_for(partition, next).await.is_err() {
                    return;
                }
                let Ok(records) = log.read(partition, next, ReadLimits::default()).await else {
                    return;
                };
                for stored in records {
                    let headers: Vec<String> = stored
                        .record
                        .headers
                        .iter()
                        .map(|(k, v)| format!("{k}={v}"))
                        .collect();
                    println!(
                        "telemetry: device={} headers=[{}] payload={}",
                        stored.record.key,
                        headers.join(", "),
                        String::from_utf8_lossy(&stored.record.payload)
                    );
                    next = Offset(stored.offset.0 + 1);
                }
            }
        }));
    }
    for task in tasks {
        let _ = task.await;
    }
}
