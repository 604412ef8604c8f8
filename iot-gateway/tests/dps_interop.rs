//! DPS registration with Microsoft's azure-iot-device SDK, unmodified, over MQTT/TLS on port
//! 8883: `ProvisioningDeviceClient.create_from_symmetric_key` with a group enrollment, then
//! `IoTHubDeviceClient.create_from_symmetric_key` with the assigned hub and the derived key
//! sends telemetry; 100 devices of the group register at once (asyncio client), each once in
//! the registry and on the audit trail; a disabled enrollment and a wrong key are refused.
//!
//! Behind the `mqtt-interop` feature; `.ci/run` installs the SDK into `.venv`. Binds
//! 127.0.0.1:8883: run it alone (`flock /tmp/port8883.lock cargo test …` on a shared machine).
#![cfg(feature = "mqtt-interop")]

mod dps_support;
mod mqtt_support;

use std::path::PathBuf;
use std::process::Stdio;
use std::sync::Arc;
use std::time::{Duration, Instant};

use dps_support::{Dps, SCOPE};
use iot_core::{DeviceId, Offset, ReadLimits};
use iot_gateway::mqtt::{MqttConfig, MqttServer, SelfSigned};
use iot_gateway::{Gateway, Hub};
use iot_identity::{IdentityStore, MemoryIdentityStore, SymmetricKey};
use iot_provisioning::enrollment::EnrollmentStatus;
use iot_registry::{QueryOutput, RegistryExt};
use mqtt_support::HOST;
use serde_json::{Value, json};
use tokio::process::Command;

/// How long one SDK script may run: 100 registrations each poll once after the SDK's fixed
/// 2 s wait; this only guards against a hang.
const SCRIPT_PATIENCE: Duration = Duration::from_secs(180);

fn workspace() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("workspace root")
        .to_path_buf()
}

fn python() -> PathBuf {
    std::env::var_os("MQTT_INTEROP_PYTHON")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace().join(".venv/bin/python"))
}

/// Runs `scripts/mqtt/azure_dps.py` with `args`; its stdout lines.
async fn script(tls: &SelfSigned, args: &[&str]) -> Vec<String> {
    let mut command = Command::new(python());
    command
        .arg(workspace().join("scripts/mqtt/azure_dps.py"))
        .args(args)
        .env("IOT_DPS_SCOPE", SCOPE)
        .env("IOT_CA_PEM", &tls.ca_pem)
        .stdin(Stdio::null())
        .kill_on_drop(true);
    let out = tokio::time::timeout(SCRIPT_PATIENCE, command.output())
        .await
        .expect("the SDK script finished in time")
        .expect("the SDK script started");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{args:?}: {}\n{stdout}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    stdout.lines().map(str::to_owned).collect()
}

/// The JSON after `prefix` on the line that starts with it.
fn json_line(lines: &[String], prefix: &str) -> Value {
    let line = lines
        .iter()
        .find_map(|l| l.strip_prefix(prefix))
        .unwrap_or_else(|| panic!("no {prefix:?} line in {lines:?}"));
    serde_json::from_str(line.trim()).expect("JSON")
}

async fn listen_8883(server: &MqttServer, tls: &SelfSigned) {
    let mut attempts = 0;
    loop {
        match server
            .listen_tls(
                "127.0.0.1:8883".parse().expect("addr"),
                tls.tls_config(false).expect("tls"),
            )
            .await
        {
            Ok(_) => return,
            // A previous listener's socket may take a moment to go.
            Err(_) if attempts < 50 => {
                attempts += 1;
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(e) => panic!("cannot bind 8883: {e}"),
        }
    }
}

async fn telemetry_of(hub: &Hub, device: &str) -> Vec<Vec<u8>> {
    let log = hub.telemetry_log();
    let partition = iot_core::partition_for_key(device, log.partition_count());
    log.read(partition, Offset(0), ReadLimits::default())
        .await
        .expect("read")
        .into_iter()
        .filter(|r| r.record.key == device)
        .map(|r| r.record.payload.to_vec())
        .collect()
}

// The time the 100 registrations took is printed (a figure, not an assertion).
#[allow(clippy::print_stderr)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn azure_iot_device_registers_through_a_group_enrollment_and_connects() {
    let identity = Arc::new(MemoryIdentityStore::new());
    let hub = Hub::memory(identity.clone(), HOST).await.expect("hub");
    let dps = Dps::new(hub.clone(), identity.clone(), HOST).await;
    let group_key = dps
        .group("fleet", |g| {
            g.settings.tags = json!({"fleet": "interop"});
            g.settings.initial_twin = json!({"interval": 15});
        })
        .await;
    let tls = SelfSigned::generate(HOST).expect("certificates");
    let server = dps.server(MqttConfig::default());
    listen_8883(&server, &tls).await;

    // One device: register, then connect to the assigned hub with the derived key.
    let key = group_key.derive_for_device("py-0001");
    let lines = script(&tls, &["one", "py-0001", key.expose_base64().as_str()]).await;
    let registered = json_line(&lines, "registered");
    assert_eq!(registered["status"], "assigned", "{registered}");
    assert_eq!(registered["device_id"], "py-0001");
    assert_eq!(registered["assigned_hub"], HOST);
    assert_eq!(registered["substatus"], "initialAssignment");
    assert!(lines.iter().any(|l| l == "sent"), "{lines:?}");
    let payloads = telemetry_of(&hub, "py-0001").await;
    assert!(
        payloads.iter().any(|p| p == b"hello from py-0001"),
        "the device's telemetry is in the hub's log: {payloads:?}"
    );
    let device: DeviceId = "py-0001".parse().expect("id");
    let twin = hub.get_twin(&device).await.expect("twin");
    assert_eq!(twin.desired.properties["interval"], 15);

    // 100 devices of the group at once, each deriving its own key in Python.
    let started = Instant::now();
    let lines = script(
        &tls,
        &["many", "fleet", "100", group_key.expose_base64().as_str()],
    )
    .await;
    let elapsed = started.elapsed();
    let many = json_line(&lines, "many");
    assert_eq!(many["failed"], json!({}), "{many}");
    assert_eq!(
        many["assigned"].as_array().map(Vec::len),
        Some(100),
        "{many}"
    );
    eprintln!(
        "100 concurrent DPS registrations (azure-iot-device aio, MQTT/TLS): {} s in the SDK, {:.2} s with the interpreter",
        many["seconds"],
        elapsed.as_secs_f64()
    );
    let registers = dps.registers().await;
    for i in 0..100 {
        let id = format!("fleet-{i:04}");
        assert_eq!(registers.get(&id), Some(&1), "{id}: {registers:?}");
        let device: DeviceId = id.parse().expect("id");
        assert!(identity.get(&device).await.expect("get").is_some(), "{id}");
    }
    assert_eq!(registers.len(), 101, "{registers:?}");
    let in_registry = dps
        .provisioner
        .registry()
        .run("SELECT COUNT() FROM devices WHERE metadata.fleet = 'interop'")
        .await
        .expect("query");
    assert_eq!(in_registry, QueryOutput::Count(101));

    // A disabled enrollment and a wrong key are refused; nothing is registered.
    let off_key = dps
        .group("off", |g| g.settings.status = EnrollmentStatus::Disabled)
        .await;
    let disabled_key = off_key.derive_for_device("off-1");
    let lines = script(
        &tls,
        &["refused", "off-1", disabled_key.expose_base64().as_str()],
    )
    .await;
    // Connected (the token is genuine), the registration answered 401: the SDK's ServiceError.
    assert!(
        lines
            .iter()
            .any(|l| l.starts_with("refused ClientError ServiceError") && l.ends_with("401")),
        "{lines:?}"
    );
    let wrong = SymmetricKey::generate();
    let lines = script(&tls, &["refused", "w-1", wrong.expose_base64().as_str()]).await;
    // CONNACK 5 (not authorized): the SDK's CredentialError.
    assert!(
        lines
            .iter()
            .any(|l| l.starts_with("refused CredentialError")),
        "{lines:?}"
    );
    for id in ["off-1", "w-1"] {
        let device: DeviceId = id.parse().expect("id");
        assert!(identity.get(&device).await.expect("get").is_none(), "{id}");
    }
    assert_eq!(dps.registers().await.len(), 101);

    server.shutdown().await;
    hub.shutdown().await;
}
