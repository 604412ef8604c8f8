//! Quickstart: one small IoT solution on embedded defaults, everything file-backed in a temporary
//! directory.
//!
//! ```sh
//! cargo run --example quickstart
//! ```
//!
//! 1. Provisioning registers five thermostats in one bulk request: each gets an identity (with
//!    generated keys, returned once) and a registry record, kept in agreement by an intent
//!    journal; every operation lands on the `audit` topic.
//! 2. The registry answers a query over the devices' metadata.
//! 3. A hub over the same identity store and log serves MQTT over TLS on loopback (a throw-away
//!    CA and certificate for `localhost`, made at start). Each device is a device client
//!    (`iot_sdk::gateway::client`) signing its SAS tokens with the key provisioning gave it; they
//!    send 30 simulated seconds of telemetry, each reading acknowledged by the hub once it is in
//!    the log; `thermostat-3` overheats.
//! 4. A rule in the Stream Analytics SQL subset averages each device's temperature over 10 s
//!    tumbling windows and writes an alert when the average passes 80; a second consumer group
//!    keeps each device's last known values.
//! 5. The back end reads the alert and sends the device a cloud-to-device command with full
//!    acknowledgement; the device receives it over its MQTT connection and completes it, and
//!    the back end reads the `success` feedback.
//! 6. Provisioning takes the overheating device out of service, and the registry shows it.
//!
//! The same scenario past one machine: `--nats URL` puts the log's topics on NATS JetStream
//! (feature `nats`), `--postgres URL` the identities, registry, provisioning journal and state
//! store in PostgreSQL (feature `postgres`). Application code does not change; only what is opened.
//!
//! ```sh
//! cargo run --example quickstart --features nats,postgres -- \
//!     --nats nats://127.0.0.1:4222 --postgres postgres://postgres@127.0.0.1:5432/test
//! ```
#![allow(clippy::print_stdout)]

use std::error::Error;
use std::sync::Arc;
use std::time::Duration;

use iot_sdk::core::{
    DeviceId, FileLogConfig, GroupConsumer, GroupName, StartFrom, Timestamp, TopicName, Topics,
};
use iot_sdk::gateway::client::{ClientOptions, DeviceClient, Message};
use iot_sdk::gateway::mqtt::{MqttConfig, MqttServer, SelfSigned};
use iot_sdk::gateway::{AckRequest, C2dMessage, Gateway, Hub};
use iot_sdk::identity::{Credentials, FileIdentityStore, FileIdentityStoreConfig, IdentityStore};
use iot_sdk::provisioning::{
    BulkMode, FileJournal, FileJournalConfig, Journal, Provisioner, Provisioning, RegisterRequest,
};
use iot_sdk::registry::{FileRegistry, FileRegistryConfig, QueryOutput, Registry, RegistryExt};
use iot_sdk::stream::processors::LastKnownValues;
use iot_sdk::stream::rules::RuleSet;
use iot_sdk::stream::window::OrderingPolicy;
use iot_sdk::stream::{HostConfig, MemoryStateStore, ProcessorHost, StateStore};
use serde_json::json;

/// The host name devices connect to and sign their tokens for: the hub's certificate is made
/// for it, and it resolves to loopback.
const HOST: &str = "localhost";

const RULE: &str = "SELECT deviceId, AVG(temperature) AS t INTO alerts FROM telemetry \
    TIMESTAMP BY time GROUP BY deviceId, TumblingWindow(second, 10) HAVING t > 80";

/// Quickstart: one small IoT solution on embedded defaults, everything file-backed in a
/// temporary directory: provisioning, a registry query, device clients sending telemetry over
/// MQTT/TLS to a hub on loopback, a windowed rule, an alert, a command the overheating device
/// completes, and that device taken out of service.
#[derive(Debug, clap::Parser)]
struct Cli {
    /// Put the log's topics on NATS JetStream at this URL (feature `nats`), under a prefix of
    /// this run's own.
    #[cfg(feature = "nats")]
    #[arg(long, value_name = "URL")]
    nats: Option<String>,
    /// Keep identities, registry, provisioning journal and device state in PostgreSQL at this URL
    /// (feature `postgres`), in a namespace of this run's own.
    #[cfg(feature = "postgres")]
    #[arg(long, value_name = "URL")]
    postgres: Option<String>,
}

/// The stores and the log the scenario runs on.
struct Backends {
    topics: Arc<Topics>,
    identity: Arc<dyn IdentityStore>,
    registry: Arc<dyn Registry>,
    journal: Arc<dyn Journal>,
    state: Arc<dyn StateStore>,
}

/// Embedded, file-backed defaults in `dir`, replaced by the engines the flags name.
async fn open_backends(cli: &Cli, dir: &std::path::Path) -> Result<Backends, Box<dyn Error>> {
    // A name of this run's own, so that a second run over the same engines starts afresh.
    #[cfg(any(feature = "nats", feature = "postgres"))]
    let run = format!("quickstart-{}", Timestamp::now().as_unix_millis());
    let topics = Arc::new(Topics::file(
        dir.join("log"),
        FileLogConfig::with_partitions(4),
    ));
    #[cfg(feature = "nats")]
    let topics = match &cli.nats {
        None => topics,
        Some(url) => {
            use iot_sdk::nats::{NatsLogConfig, NatsLogFactory};
            let config = NatsLogConfig::from_url(url)?.prefix(run.clone());
            println!("log: NATS JetStream, stream prefix {run}");
            Arc::new(Topics::new(NatsLogFactory::connect(config).await?, 4))
        }
    };
    let backends = Backends {
        topics,
        identity: Arc::new(
            FileIdentityStore::open(dir.join("identity"), FileIdentityStoreConfig::default())
                .await?,
        ),
        registry: Arc::new(
            FileRegistry::open(dir.join("registry"), FileRegistryConfig::default()).await?,
        ),
        journal: Arc::new(
            FileJournal::open(dir.join("journal"), FileJournalConfig::default()).await?,
        ),
        state: Arc::new(MemoryStateStore::new()),
    };
    #[cfg(feature = "postgres")]
    let backends = match &cli.postgres {
        None => backends,
        Some(url) => {
            use iot_sdk::postgres::{
                PgIdentityConfig, PgIdentityStore, PgJournal, PgJournalConfig, PgPool, PgRegistry,
                PgRegistryConfig, PgStateStore, PgStateStoreConfig,
            };
            let pool = PgPool::from_url(url)?;
            println!(
                "stores: PostgreSQL at {}, namespace {run}",
                pool.config().target()
            );
            Backends {
                identity: Arc::new(
                    PgIdentityStore::open(
                        pool.clone(),
                        PgIdentityConfig::default().namespace(&run),
                    )
                    .await?,
                ),
                registry: Arc::new(
                    PgRegistry::open(pool.clone(), PgRegistryConfig::default().namespace(&run))
                        .await?,
                ),
                journal: Arc::new(
                    PgJournal::open(pool.clone(), PgJournalConfig::default().instance(&run))
                        .await?,
                ),
                state: Arc::new(PgStateStore::open(pool, PgStateStoreConfig::default()).await?),
                ..backends
            }
        }
    };
    #[cfg(not(any(feature = "nats", feature = "postgres")))]
    let _ = cli;
    Ok(backends)
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn Error>> {
    // No flags; parsing still answers --help and refuses anything else (exit status 2) rather
    // than ignoring a mistyped option.
    let cli: Cli = clap::Parser::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()),
        )
        .init();
    let data = tempfile::tempdir()?;
    println!("data directory: {}", data.path().display());

    // 1. File-backed identity store, registry, journal and log topics (or the engines the flags
    //    name); the provisioner over them.
    let Backends {
        topics,
        identity,
        registry,
        journal,
        state,
    } = open_backends(&cli, data.path()).await?;
    let provisioning = Provisioner::builder(identity.clone(), registry)
        .journal(journal)
        .audit_log(topics.topic(TopicName::AUDIT).await?)
        .host(HOST)
        .actor("quickstart")
        .open()
        .await?;

    let requests = (1..=5)
        .map(|n| {
            let id = DeviceId::new(format!("thermostat-{n}"))?;
            let metadata = json!({"building": "B7", "floor": n, "model": "TH-100"});
            Ok(RegisterRequest::new(id, metadata))
        })
        .collect::<Result<Vec<_>, iot_sdk::core::Error>>()?;
    println!(
        "\nregistering {} devices in one bulk request:",
        requests.len()
    );
    let mut keys = Vec::new();
    for result in provisioning.bulk(requests, BulkMode::AllOrNothing).await? {
        let device = result?;
        if let Credentials::SymmetricKeys { primary, .. } = &device.credentials {
            keys.push((device.device.id.clone(), primary.clone()));
        }
        // The keys are returned here, once; their Debug output is redacted.
        println!(
            "  {:<14} etag {} credentials: {}",
            device.device.id,
            device.device.record.etag,
            device.credentials.kind_name()
        );
    }
    let devices: Vec<DeviceId> = (1..=5)
        .map(|n| DeviceId::new(format!("thermostat-{n}")))
        .collect::<Result<_, _>>()?;
    let token = provisioning
        .issue_token(&devices[0], Duration::from_secs(3600))
        .await?;
    println!(
        "a SAS token for {} expires at {} (unix seconds)",
        devices[0],
        token.expiry()
    );

    // 2. The registry finds devices by their metadata.
    let query = "SELECT * FROM devices WHERE metadata.building = 'B7' AND metadata.floor >= 4";
    if let QueryOutput::Devices(found) = provisioning.registry().run(query).await? {
        println!("\n{query}");
        for record in found {
            println!(
                "  {} {}",
                record.device_id,
                serde_json::Value::Object(record.metadata)
            );
        }
    }

    // 3. The rule and the last-known-values projection run as consumer groups over `telemetry`.
    let host = ProcessorHost::new(topics.clone());
    let rules = RuleSet::new(OrderingPolicy::replay());
    rules.add("overheat", RULE)?;
    println!("\nrule 'overheat': {RULE}");
    let rule_group = host
        .start(
            TopicName::TELEMETRY,
            GroupName::new("rules")?,
            Arc::new(rules.processor(TopicName::TELEMETRY)),
            HostConfig::default(),
        )
        .await?;
    let lkv_group = host
        .start(
            TopicName::TELEMETRY,
            GroupName::new("last-known-values")?,
            Arc::new(LastKnownValues::new(state.clone())),
            HostConfig::default(),
        )
        .await?;

    // The hub, over the same identity store (the keys provisioning issued are the ones it
    // checks) and the same log topics (its telemetry is what the rule reads), with MQTT over TLS
    // on a loopback port. The CA and certificate are made now and trusted by the devices only.
    let hub = Hub::builder(identity, HOST)
        .topics(topics.clone())
        .build()
        .await?;
    let server = MqttServer::new(Arc::new(hub.clone()), MqttConfig::default())?;
    let tls = SelfSigned::generate(HOST)?;
    let mqtts = server
        .listen_tls("127.0.0.1:0".parse()?, tls.tls_config(false)?)
        .await?;
    println!("\nhub: MQTT over TLS on {mqtts} (self-signed CA made for this run)");

    // Each simulated device is a device client with its own key.
    let mut clients = Vec::new();
    for (id, key) in keys {
        let options = ClientOptions::with_key(HOST, id.as_str(), key)
            .port(mqtts.port())
            .ca_roots_pem(tls.ca_pem.as_bytes());
        clients.push((id, DeviceClient::connect(options).await?));
    }
    let hot = &devices[2];
    // The overheating device listens for commands before it sends anything, so the back end's
    // command finds it subscribed.
    let mut commands = clients[2].1.c2d_messages().await?;

    // A reading per simulated second, from a 10 s boundary a minute ago (event time, so the
    // windows close as the readings arrive, not in real time). Each client queues its reading
    // and the hub acknowledges each once it is in the log. The rule tolerates no out-of-order
    // events (`OrderingPolicy::replay`), and devices share partitions: a second starts only
    // once every reading of the one before is in the log, so no device's readings land behind
    // another's later ones (a device running ahead would close the hot device's window early,
    // and its late readings would be moved into a later window).
    let start = (Timestamp::now().as_unix_millis() / 1000 - 60) / 10 * 10;
    let mut sent = 0;
    for second in 0..30u64 {
        let mut deliveries = Vec::new();
        for (n, (device, client)) in clients.iter().enumerate() {
            let heating = n == 2 && (10..20).contains(&second);
            let temperature = if heating {
                85.0 + (second % 3) as f64
            } else {
                20.0 + n as f64
            };
            let time = start + second + 1;
            let body = json!({
                "deviceId": device.as_str(),
                "temperature": temperature,
                "time": Timestamp::from_unix_millis(time * 1000).to_rfc3339(),
            });
            let reading = Message::new(body.to_string())
                .message_id(format!("{device}-{second}"))
                .content("application/json", "utf-8");
            deliveries.push(client.enqueue_telemetry(reading).await?);
        }
        for delivery in deliveries {
            tokio::time::timeout(Duration::from_secs(10), delivery.acknowledged()).await??;
            sent += 1;
        }
    }
    println!(
        "{} device clients sent {sent} readings over MQTT/TLS, each acknowledged",
        clients.len()
    );
    rule_group.wait_caught_up().await?;
    lkv_group.wait_caught_up().await?;

    // 4. The alerts the rule wrote, and the last known values of the device that raised them.
    let mut alerts = GroupConsumer::new(
        topics.topic(TopicName::ALERTS).await?,
        GroupName::new("operator")?,
        StartFrom::Earliest,
    )
    .await?;
    let raised = tokio::time::timeout(Duration::from_secs(5), alerts.next_batch()).await??;
    let mut alerted = Vec::new();
    for alert in &raised {
        println!("ALERT {}", String::from_utf8_lossy(&alert.record.payload));
        let body: serde_json::Value = serde_json::from_slice(&alert.record.payload)?;
        if let Some(device) = body["deviceId"].as_str() {
            alerted.push(DeviceId::new(device)?);
        }
    }
    if let Some(values) = state.last_known(hot).await? {
        println!("last known values of {hot}: {}", values.values());
    }
    rule_group.shutdown().await?;
    lkv_group.shutdown().await?;

    // 5. The back end answers each alerted device with a command, asking for full feedback;
    //    the device receives it over MQTT and completes it.
    alerted.dedup();
    for device in &alerted {
        let mut command = C2dMessage::new(json!({"command": "fan", "speed": "max"}).to_string());
        command.message_id = Some(format!("cool-{device}"));
        command.content_type = Some("application/json".into());
        command.ack = AckRequest::Full;
        hub.send_c2d(device, command).await?;
        println!("back end -> {device}: command queued");
    }
    if alerted.contains(hot) {
        let received = tokio::time::timeout(Duration::from_secs(5), commands.recv())
            .await?
            .ok_or("the device's command stream ended")?;
        println!(
            "{hot} received command {} {}: completing it",
            received.message_id().unwrap_or("-"),
            String::from_utf8_lossy(&received.payload)
        );
        received.complete()?;
        let feedback = tokio::time::timeout(Duration::from_secs(5), async {
            loop {
                let records = hub.read_feedback(0, 10).await?;
                if !records.is_empty() {
                    return Ok::<_, iot_sdk::gateway::Error>(records);
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
        .await??;
        for f in feedback {
            println!(
                "feedback: {} {} {} after {} delivery",
                f.device_id,
                f.message_id,
                f.status.as_str(),
                f.delivery_count
            );
        }
    }
    for (_, client) in clients {
        client.close().await;
    }
    server.shutdown().await;
    hub.shutdown().await;

    // 6. Take the device out of service: access revoked at once, the reason in its metadata.
    provisioning
        .deactivate(hot, Some(json!({"maintenance": "overheated"})))
        .await?;
    let query = "SELECT COUNT() FROM devices WHERE IS_DEFINED(metadata.maintenance)";
    if let QueryOutput::Count(n) = provisioning.registry().run(query).await? {
        println!("\n{query} -> {n}");
    }
    let mut audit = GroupConsumer::new(
        topics.topic(TopicName::AUDIT).await?,
        GroupName::new("auditor")?,
        StartFrom::Earliest,
    )
    .await?;
    println!(
        "audit topic: {} records",
        audit.try_next_batch().await?.len()
    );
    println!(
        "\nnext: docs/provisioning.md, docs/registry.md, docs/stream.md, docs/log.md, docs/device-client.md"
    );
    Ok(())
}
