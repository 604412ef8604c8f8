//! DPS registration with Microsoft's Node provisioning device client, unmodified
//! (`azure-iot-provisioning-device` with `azure-iot-security-symmetric-key`), over both its
//! transports: `azure-iot-provisioning-device-mqtt` (`mqtts://{host}`, port 8883, the MQTT
//! endpoint's DPS form) and `azure-iot-provisioning-device-http` (`https://{host}`, port 443,
//! the HTTP endpoint's DPS form, `iot_gateway::http::dps`). Devices of a group enrollment
//! register, each with the group key derived for it in Node; each is registered once (registry
//! and audit trail) with the group's tags and initial twin; a wrong key and a disabled
//! enrollment are refused over both.
//!
//! Behind the `http-interop` feature; `scripts/http/dps_node_interop.sh` installs the packages
//! and runs it. Binds 127.0.0.1:8883 and 127.0.0.1:443 (the SDK's fixed ports), so it runs under
//! `flock /tmp/port8883.lock flock /tmp/port443.lock` and not beside the other interop tests.
#![cfg(feature = "http-interop")]

mod dps_support;
mod mqtt_support;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;

use dps_support::{Dps, SCOPE};
use iot_gateway::http::dps::{DpsEndpoint, DpsHttpConfig};
use iot_gateway::http::{HttpConfig, HttpServer, HttpState, PolicyStore, SharedAccessPolicy};
use iot_gateway::mqtt::{MqttConfig, SelfSigned, TlsConfig};
use iot_gateway::{Gateway, Hub};
use iot_identity::{IdentityStore, MemoryIdentityStore, SymmetricKey};
use iot_provisioning::Provisioning;
use iot_provisioning::enrollment::EnrollmentStatus;
use mqtt_support::HOST;
use serde_json::{Value, json};
use tokio::process::Command;

/// A hang guard for one script run (the SDK polls after 1–2 s; 20 devices at once).
const SCRIPT_PATIENCE: Duration = Duration::from_secs(120);

fn workspace() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("workspace root")
        .to_path_buf()
}

/// Where `scripts/http/dps_node_interop.sh` installed the packages.
fn node_modules() -> PathBuf {
    std::env::var_os("DPS_NODE_MODULES")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace().join("target/dps-node/node_modules"))
}

/// Runs `scripts/http/dps_node.js` with `args`; its status and stdout lines.
#[allow(
    clippy::print_stderr,
    reason = "a failed script's output, for the CI log"
)]
async fn node(ca_file: &std::path::Path, args: &[&str]) -> (bool, Vec<String>) {
    let mut command = Command::new("node");
    command
        .arg(workspace().join("scripts/http/dps_node.js"))
        .args(args)
        .env("NODE_PATH", node_modules())
        .env("NODE_EXTRA_CA_CERTS", ca_file)
        // `localhost` may resolve to ::1 first; the endpoints listen on 127.0.0.1.
        .env("NODE_OPTIONS", "--dns-result-order=ipv4first")
        .env("IOT_DPS_SCOPE", SCOPE)
        .env("IOT_DPS_HOST", HOST)
        .stdin(Stdio::null())
        .kill_on_drop(true);
    let out = tokio::time::timeout(SCRIPT_PATIENCE, command.output())
        .await
        .expect("the Node script finished in time")
        .expect("node started");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    if !out.status.success() {
        eprintln!(
            "{args:?}: {}\n{stdout}\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
    }
    (
        out.status.success(),
        stdout.lines().map(str::to_owned).collect(),
    )
}

/// Binds a fixed port, waiting a little for a previous run's socket to go.
async fn bind_retrying<F, Fut, E>(what: &str, mut bind: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<SocketAddr, E>>,
    E: std::fmt::Display,
{
    for attempt in 0.. {
        match bind().await {
            Ok(_) => return,
            Err(_) if attempt < 50 => tokio::time::sleep(Duration::from_millis(100)).await,
            Err(e) => panic!("cannot bind {what}: {e}"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[allow(
    clippy::print_stderr,
    reason = "a failed script's output, for the CI log"
)]
async fn node_provisioning_client_registers_over_mqtt_and_https() {
    let identity = Arc::new(MemoryIdentityStore::new());
    let hub = Hub::memory(identity.clone(), HOST).await.expect("hub");
    let dps = Dps::new(hub.clone(), identity.clone(), HOST).await;
    let group_key = dps
        .group("node-fleet", |g| {
            g.settings.tags = json!({"fleet": "node"});
            g.settings.initial_twin = json!({"interval": 20});
        })
        .await;
    let tls = SelfSigned::generate(HOST).expect("certificates");
    let dir = tempfile::tempdir().expect("tempdir");
    let (ca_file, _, _) = tls.write_to(dir.path()).expect("write certificates");
    let tls_config: TlsConfig = tls.tls_config(false).expect("tls");

    // The MQTT endpoint on 8883, serving DPS too.
    let mqtt = dps.server(MqttConfig::default());
    bind_retrying("127.0.0.1:8883", || {
        mqtt.listen_tls("127.0.0.1:8883".parse().expect("addr"), tls_config.clone())
    })
    .await;

    // The HTTP endpoint on 443: IoT Hub's APIs and DPS's HTTPS form on one listener.
    let config = HttpConfig::default();
    let state = HttpState::new(
        Arc::new(hub.clone()),
        Arc::new(dps.provisioner.clone()) as Arc<dyn Provisioning>,
        dps.provisioner.registry().clone(),
        identity.clone() as Arc<dyn IdentityStore>,
        Arc::new(PolicyStore::memory(SharedAccessPolicy::defaults())),
        HOST,
        config.clone(),
    );
    let endpoint = DpsEndpoint::new(
        dps.onboarding.clone(),
        Arc::new(hub.clone()) as Arc<dyn Gateway>,
        DpsHttpConfig::default(),
    );
    let https = HttpServer::new(iot_gateway::http::dps::router(state, endpoint), config);
    bind_retrying("127.0.0.1:443", || {
        https.listen_tls("127.0.0.1:443".parse().expect("addr"), tls_config.clone())
    })
    .await;

    const EACH: usize = 10;
    let key = group_key.expose_base64();
    for transport in ["mqtt", "http"] {
        let prefix = format!("node-{transport}");
        let (ok, lines) = node(
            &ca_file,
            &[
                "register",
                transport,
                &prefix,
                &EACH.to_string(),
                key.as_str(),
            ],
        )
        .await;
        assert!(ok, "{transport}: {lines:?}");
        let results: Value = serde_json::from_str(
            lines
                .iter()
                .find_map(|l| l.strip_prefix("registered "))
                .unwrap_or_else(|| panic!("{transport}: no result in {lines:?}")),
        )
        .expect("JSON");
        let results = results.as_array().expect("array");
        assert_eq!(results.len(), EACH, "{transport}: {results:?}");
        for r in results {
            assert_eq!(r["status"], "assigned", "{transport}: {r}");
            assert_eq!(r["assignedHub"], HOST, "{transport}: {r}");
            assert_eq!(r["substatus"], "initialAssignment", "{transport}: {r}");
            assert_eq!(r["deviceId"], r["registrationId"], "{transport}: {r}");
        }
        for i in 0..EACH {
            let id = format!("{prefix}-{i}");
            let device = id.parse().expect("id");
            let registered = dps
                .provisioner
                .get(&device)
                .await
                .expect("get")
                .unwrap_or_else(|| panic!("{id} is registered"));
            assert_eq!(registered.record.metadata["fleet"], "node", "{id}");
            let twin = hub.get_twin(&device).await.expect("twin");
            assert_eq!(twin.desired.properties["interval"], 20, "{id}");
        }
    }
    let registers = dps.registers().await;
    assert_eq!(registers.len(), 2 * EACH, "{registers:?}");
    assert!(registers.values().all(|n| *n == 1), "{registers:?}");

    // Registering again over the other transport: answered, not registered twice.
    let (ok, lines) = node(
        &ca_file,
        &["register", "http", "node-mqtt", "1", key.as_str()],
    )
    .await;
    assert!(ok, "{lines:?}");
    assert_eq!(dps.registers().await.get("node-mqtt-0"), Some(&1));

    // A wrong key and a disabled enrollment are refused over both transports.
    let off = dps
        .group("node-off", |g| {
            g.settings.status = EnrollmentStatus::Disabled
        })
        .await;
    for transport in ["mqtt", "http"] {
        let wrong = SymmetricKey::generate();
        let (ok, lines) = node(
            &ca_file,
            &[
                "refused",
                transport,
                &format!("wrong-{transport}"),
                wrong.expose_base64().as_str(),
            ],
        )
        .await;
        assert!(ok, "{transport}: {lines:?}");
        assert!(
            lines.iter().any(|l| l.starts_with("refused ")),
            "{transport}: {lines:?}"
        );
        let id = format!("off-{transport}");
        let disabled = off.derive_for_device(&id);
        let (ok, lines) = node(
            &ca_file,
            &["refused", transport, &id, disabled.expose_base64().as_str()],
        )
        .await;
        assert!(ok, "{transport}: {lines:?}");
        assert!(
            lines.iter().any(|l| l.starts_with("refused ")),
            "{transport}: {lines:?}"
        );
        for id in [format!("wrong-{transport}"), id] {
            let device = id.parse().expect("id");
            assert!(identity.get(&device).await.expect("get").is_none(), "{id}");
        }
    }
    assert_eq!(dps.registers().await.len(), 2 * EACH);

    https.shutdown().await;
    mqtt.shutdown().await;
    hub.shutdown().await;
}
