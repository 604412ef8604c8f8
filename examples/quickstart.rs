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
//! 3. The devices send 30 simulated seconds of telemetry into the log; `thermostat-3` overheats.
//! 4. A rule in the Stream Analytics SQL subset averages each device's temperature over 10 s
//!    tumbling windows and writes an alert when the average passes 80; a second consumer group
//!    keeps each device's last known values.
//! 5. Provisioning takes the overheating device out of service, and the registry shows it.
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
    DeviceId, FileLogConfig, GroupConsumer, GroupName, Producer, Record, StartFrom, Timestamp,
    TopicName, Topics, headers,
};
use iot_sdk::identity::{FileIdentityStore, FileIdentityStoreConfig, IdentityStore};
use iot_sdk::provisioning::{
    BulkMode, FileJournal, FileJournalConfig, Journal, Provisioner, Provisioning, RegisterRequest,
};
use iot_sdk::registry::{FileRegistry, FileRegistryConfig, QueryOutput, Registry, RegistryExt};
use iot_sdk::stream::processors::LastKnownValues;
use iot_sdk::stream::rules::RuleSet;
use iot_sdk::stream::window::OrderingPolicy;
use iot_sdk::stream::{HostConfig, MemoryStateStore, ProcessorHost, StateStore};
use serde_json::json;

const RULE: &str = "SELECT deviceId, AVG(temperature) AS t INTO alerts FROM telemetry \
    TIMESTAMP BY time GROUP BY deviceId, TumblingWindow(second, 10) HAVING t > 80";

/// Quickstart: one small IoT solution on embedded defaults, everything file-backed in a
/// temporary directory: provisioning, a registry query, telemetry into the log, a windowed rule,
/// an alert, and the overheating device taken out of service.
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
    let provisioning = Provisioner::builder(identity, registry)
        .journal(journal)
        .audit_log(topics.topic(TopicName::AUDIT).await?)
        .host("hub.example.net")
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
    for result in provisioning.bulk(requests, BulkMode::AllOrNothing).await? {
        let device = result?;
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

    // Simulated devices: a reading per simulated second, from a 10 s boundary a minute ago
    // (event time, so the windows close as the readings arrive, not in real time).
    let start = (Timestamp::now().as_unix_millis() / 1000 - 60) / 10 * 10;
    let mut batch = Vec::new();
    for second in 0..30u64 {
        for (n, device) in devices.iter().enumerate() {
            let hot = n == 2 && (10..20).contains(&second);
            let temperature = if hot {
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
            batch.push(
                Record::new(device.as_str(), body.to_string())
                    .with_header(headers::SUBJECT, "telemetry")
                    .with_device_time(Timestamp::from_unix_millis(time * 1000)),
            );
        }
    }
    let sent = Producer::new(topics.topic(TopicName::TELEMETRY).await?)
        .send_batch(batch)
        .await?;
    println!("{} devices sent {} readings", devices.len(), sent.len());
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
    for alert in &raised {
        println!("ALERT {}", String::from_utf8_lossy(&alert.record.payload));
    }
    let hot = &devices[2];
    if let Some(values) = state.last_known(hot).await? {
        println!("last known values of {hot}: {}", values.values());
    }
    rule_group.shutdown().await?;
    lkv_group.shutdown().await?;

    // 5. Take the device out of service: access revoked at once, the reason in its metadata.
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
    println!("\nnext: docs/provisioning.md, docs/registry.md, docs/stream.md, docs/log.md");
    Ok(())
}
