//! Onboarding benchmark: DPS registrations through a group enrollment over MQTT, beside the
//! provisioner's in-process register rate, measured in the same run on the same disk.
//!
//! ```text
//! cargo run --release --example onboarding_bench              # 4 000 devices, 200 at once
//! cargo run --example onboarding_bench -- --quick             # 400 devices (CI, debug)
//! cargo run --release --example onboarding_bench -- --devices 10000 --concurrency 200
//! ```
//!
//! Both passes register the same number of devices through a `Provisioner` over file-backed
//! stores and intent journal that fsync before they acknowledge (`Durability::Fsync`), as
//! provisioning_bench's durable phase does, each in a fresh directory:
//!
//! * **in-process** — provisioning_bench's durable phase: single `Provisioning::register` calls
//!   from `--concurrency` callers (each registration four durable writes, shared by group commit).
//! * **mqtt** — the MQTT endpoint (`MqttServer::with_onboarding`, plain TCP on 127.0.0.1, in this
//!   process) with an `Onboarding` service over one symmetric-key enrollment group. `--concurrency`
//!   tasks each register their share of devices one after another, a new rumqttc client per
//!   device, as a device on first boot does: CONNECT with username
//!   `{idScope}/registrations/{id}/api-version=2019-03-31` and the SAS token signed with the group
//!   key derived for the device; SUBSCRIBE `$dps/registrations/res/#`; PUBLISH
//!   `$dps/registrations/PUT/iotdps-register/?$rid=1`; on the `202`, PUBLISH
//!   `$dps/registrations/GET/iotdps-get-operationstatus/?$rid=2&operationId=…` at once (the
//!   result is ready; the Azure SDKs wait the `retry-after`); the `200` must say `assigned`;
//!   DISCONNECT. Each registration is attested (the token checked against the group's derived
//!   keys), registered through the provisioner with the derived keys and the group's tags, and
//!   answered as DPS answers.
//!
//! The last line is JSON with `registrations_per_s` (mqtt), `mqtt_vs_inprocess` (mqtt ÷
//! in-process) and `failed` (registrations over MQTT that did not end `assigned`).
#![allow(clippy::print_stdout, clippy::print_stderr, clippy::unwrap_used)]

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use clap::Parser;
use iot_core::DeviceId;
use iot_gateway::Hub;
use iot_gateway::mqtt::{MqttConfig, MqttServer};
use iot_identity::{
    Durability, FileIdentityStore, FileIdentityStoreConfig, IdentityStore, SymmetricKey, sas,
};
use iot_provisioning::enrollment::{
    EnrollmentGroup, EnrollmentStore, GroupAttestation, MemoryEnrollmentStore, Precondition,
};
use iot_provisioning::onboarding::{Onboarding, OnboardingConfig};
use iot_provisioning::{
    FileJournal, FileJournalConfig, Provisioner, Provisioning, RegisterRequest,
};
use iot_registry::{FileRegistry, FileRegistryConfig, QueryOutput, Registry, RegistryExt};
use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};
use serde_json::{Value, json};

const SCOPE: &str = "0ne00BENCH1";
const HOST: &str = "localhost";
/// How long one device may take to register before it counts as failed.
const DEVICE_PATIENCE: Duration = Duration::from_secs(60);

/// Onboarding benchmark: DPS registrations over MQTT beside in-process registrations.
#[derive(Debug, Parser)]
struct Cli {
    /// Small run for CI: 400 devices.
    #[arg(long)]
    quick: bool,
    /// Devices to register in each pass (default 4 000, or 400 with --quick).
    #[arg(long)]
    devices: Option<usize>,
    /// Devices registering at once (a client each over MQTT; callers in process).
    #[arg(long, default_value_t = 200)]
    concurrency: usize,
}

fn id(i: usize) -> String {
    format!("bench-{i:06}")
}

/// A provisioner over durable file stores in `dir`; also its identity store (the hub's too).
async fn durable_provisioner(dir: &Path) -> (Provisioner, Arc<dyn IdentityStore>) {
    let identity: Arc<dyn IdentityStore> = Arc::new(
        FileIdentityStore::open(
            dir.join("identity"),
            FileIdentityStoreConfig::with_durability(Durability::Fsync),
        )
        .await
        .unwrap(),
    );
    let registry: Arc<dyn Registry> = Arc::new(
        FileRegistry::open_blocking(
            dir.join("registry"),
            FileRegistryConfig::default().durability(iot_registry::Durability::Fsync),
        )
        .unwrap(),
    );
    let journal = FileJournal::open(dir.join("journal"), FileJournalConfig::default())
        .await
        .unwrap();
    let provisioner = Provisioner::builder(identity.clone(), registry)
        .journal(Arc::new(journal))
        .open()
        .await
        .unwrap();
    (provisioner, identity)
}

/// provisioning_bench's durable phase: single registrations from `concurrency` callers.
/// Registrations/s.
async fn in_process(dir: &Path, n: usize, concurrency: usize) -> f64 {
    let (provisioner, _) = durable_provisioner(dir).await;
    let provisioner = Arc::new(provisioner);
    let started = Instant::now();
    let tasks: Vec<_> = (0..concurrency)
        .map(|w| {
            let p = Arc::clone(&provisioner);
            tokio::spawn(async move {
                for i in (w..n).step_by(concurrency) {
                    let device = DeviceId::new(id(i)).unwrap();
                    p.register(RegisterRequest::new(device, json!({"fleet": "bench"})))
                        .await
                        .unwrap();
                }
            })
        })
        .collect();
    for t in tasks {
        t.await.unwrap();
    }
    n as f64 / started.elapsed().as_secs_f64()
}

/// Where a device's registration time goes, summed over devices (microseconds): until CONNACK,
/// until the `202`, until the `200`, and the DISCONNECT.
static PHASES: [AtomicU64; 4] = [const { AtomicU64::new(0) }; 4];

fn phase(index: usize, since: Instant) -> Instant {
    let now = Instant::now();
    PHASES[index].fetch_add((now - since).as_micros() as u64, Ordering::Relaxed);
    now
}

/// Registers one device over MQTT as a device on first boot does; `Ok` once it is assigned.
async fn register_over_mqtt(
    port: u16,
    registration_id: &str,
    key: &SymmetricKey,
) -> Result<(), String> {
    let mut mark = Instant::now();
    let token = sas::generate(
        &format!("{SCOPE}/registrations/{registration_id}"),
        key,
        sas::unix_now() + 3600,
        Some("registration"),
    )
    .map_err(|e| e.to_string())?;
    let mut options = MqttOptions::new(registration_id, "127.0.0.1", port);
    options
        .set_credentials(
            format!("{SCOPE}/registrations/{registration_id}/api-version=2019-03-31"),
            token.as_str(),
        )
        .set_keep_alive(Duration::from_secs(30))
        .set_clean_session(true);
    let (client, mut events) = AsyncClient::new(options, 8);
    let mut step = 0;
    let outcome = loop {
        let event = events.poll().await.map_err(|e| e.to_string())?;
        match event {
            Event::Incoming(Packet::ConnAck(_)) => {
                mark = phase(0, mark);
                client
                    .subscribe("$dps/registrations/res/#", QoS::AtLeastOnce)
                    .await
                    .map_err(|e| e.to_string())?;
            }
            Event::Incoming(Packet::SubAck(_)) => {
                let body = json!({"registrationId": registration_id}).to_string();
                client
                    .publish(
                        "$dps/registrations/PUT/iotdps-register/?$rid=1",
                        QoS::AtLeastOnce,
                        false,
                        body,
                    )
                    .await
                    .map_err(|e| e.to_string())?;
            }
            Event::Incoming(Packet::Publish(publish)) => {
                let body: Value =
                    serde_json::from_slice(&publish.payload).map_err(|e| e.to_string())?;
                if step == 0 && publish.topic.starts_with("$dps/registrations/res/202/") {
                    step = 1;
                    mark = phase(1, mark);
                    let operation = body["operationId"].as_str().ok_or("no operationId")?;
                    client
                        .publish(
                            format!(
                                "$dps/registrations/GET/iotdps-get-operationstatus/?$rid=2&operationId={operation}"
                            ),
                            QoS::AtLeastOnce,
                            false,
                            " ",
                        )
                        .await
                        .map_err(|e| e.to_string())?;
                } else if step == 1 && publish.topic.starts_with("$dps/registrations/res/200/") {
                    mark = phase(2, mark);
                    break if body["status"] == "assigned" {
                        Ok(())
                    } else {
                        Err(format!("answered {body}"))
                    };
                } else {
                    break Err(format!("unexpected answer on {}: {body}", publish.topic));
                }
            }
            _ => {}
        }
    };
    let _ = client.disconnect().await;
    // Let the DISCONNECT go out; the server closes the connection.
    let _ = tokio::time::timeout(Duration::from_millis(200), events.poll()).await;
    phase(3, mark);
    outcome
}

/// Registrations over MQTT: registrations/s and how many failed.
async fn over_mqtt(dir: &Path, n: usize, concurrency: usize) -> (f64, usize) {
    let (provisioner, identity) = durable_provisioner(dir).await;
    let hub = Hub::memory(identity, HOST).await.unwrap();
    let enrollments = Arc::new(MemoryEnrollmentStore::new());
    let group_key = SymmetricKey::generate();
    let mut group = EnrollmentGroup::new(
        "bench-fleet".parse().unwrap(),
        GroupAttestation::SymmetricKey {
            primary: group_key.clone(),
            secondary: SymmetricKey::generate(),
        },
    );
    group.settings.tags = json!({"fleet": "bench"});
    enrollments
        .put_group(group, Precondition::Absent)
        .await
        .unwrap();
    let onboarding = Arc::new(
        Onboarding::new(
            enrollments,
            Arc::new(provisioner.clone()),
            OnboardingConfig::new(SCOPE, HOST),
        )
        .unwrap(),
    );
    let server =
        MqttServer::with_onboarding(Arc::new(hub.clone()), MqttConfig::default(), onboarding)
            .unwrap();
    let port = server
        .listen_tcp("127.0.0.1:0".parse().unwrap())
        .await
        .unwrap()
        .port();
    let failed = Arc::new(AtomicUsize::new(0));
    let started = Instant::now();
    let tasks: Vec<_> = (0..concurrency)
        .map(|w| {
            let group_key = group_key.clone();
            let failed = Arc::clone(&failed);
            tokio::spawn(async move {
                for i in (w..n).step_by(concurrency) {
                    let registration_id = id(i);
                    let key = group_key.derive_for_device(&registration_id);
                    let attempt = tokio::time::timeout(
                        DEVICE_PATIENCE,
                        register_over_mqtt(port, &registration_id, &key),
                    )
                    .await;
                    let error = match attempt {
                        Ok(Ok(())) => continue,
                        Ok(Err(e)) => e,
                        Err(_) => "timed out".to_owned(),
                    };
                    if failed.fetch_add(1, Ordering::Relaxed) < 5 {
                        eprintln!("{registration_id}: {error}");
                    }
                }
            })
        })
        .collect();
    for t in tasks {
        t.await.unwrap();
    }
    let rate = n as f64 / started.elapsed().as_secs_f64();
    let per_device = |i: usize| PHASES[i].load(Ordering::Relaxed) as f64 / n as f64 / 1000.0;
    eprintln!(
        "mean per device: connect {:.1} ms, register (to the 202) {:.1} ms, status (to the 200) {:.1} ms, disconnect {:.1} ms",
        per_device(0),
        per_device(1),
        per_device(2),
        per_device(3)
    );
    server.shutdown().await;
    hub.shutdown().await;
    let registered = provisioner
        .registry()
        .run("SELECT COUNT() FROM devices WHERE metadata.fleet = 'bench'")
        .await
        .unwrap();
    let failed = failed.load(Ordering::Relaxed);
    // Every assigned registration is in the registry, once.
    assert_eq!(
        registered,
        QueryOutput::Count((n - failed) as u64),
        "registry after the mqtt pass"
    );
    (rate, failed)
}

#[tokio::main]
async fn main() {
    let cli = Cli::parse();
    let n = cli.devices.unwrap_or(if cli.quick { 400 } else { 4_000 });
    let concurrency = cli.concurrency.max(1);
    let root = tempfile::tempdir().unwrap();
    eprintln!(
        "{n} devices, {concurrency} at once, stores fsyncing, in {:?}",
        root.path()
    );

    let inprocess = in_process(&root.path().join("in-process"), n, concurrency).await;
    eprintln!("in-process register: {inprocess:.0}/s");
    let (mqtt, failed) = over_mqtt(&root.path().join("mqtt"), n, concurrency).await;
    eprintln!("DPS over MQTT: {mqtt:.0}/s, {failed} failed");
    let ratio = mqtt / inprocess;

    println!("{:<64} {:>12}", "measurement", "devices/s");
    println!(
        "{:<64} {:>12.0}",
        "in-process Provisioning::register (provisioning_bench durable)", inprocess
    );
    println!(
        "{:<64} {:>12.0}",
        "DPS registration over MQTT (group enrollment, client per device)", mqtt
    );
    println!("{:<64} {:>12.2}", "ratio (mqtt / in-process)", ratio);
    let out = json!({
        "registrations_per_s": (mqtt * 10.0).round() / 10.0,
        "mqtt_vs_inprocess": (ratio * 1000.0).round() / 1000.0,
        "failed": failed,
    });
    println!("{out}");
    if failed > 0 {
        std::process::exit(1);
    }
}
