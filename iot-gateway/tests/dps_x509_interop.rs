//! DPS registration with an X.509 certificate chain, with Microsoft's azure-iot-device SDK,
//! unmodified, over MQTT/TLS on port 8883. The certificates are made by the openssl CLI
//! (`scripts/mqtt/x509_chain.sh`): root → intermediate → leaf.
//!
//! The root is uploaded to the hub's CA store and verified by proof of possession (a
//! certificate whose CN is the verification code, signed by the root's key with openssl); an
//! X.509 enrollment group holds the intermediate (and a second, never verified root).
//! `ProvisioningDeviceClient.create_from_x509_certificate` registers the leaf's CN, then
//! `IoTHubDeviceClient.create_from_x509_certificate` connects to the assigned hub with the leaf
//! and sends telemetry. A leaf from the unverified CA, an expired leaf and a leaf whose CN is not
//! the registration id are refused, and nothing is registered for them; then, as controls, the
//! rogue CA is verified and its leaf registers, and the mismatched chain registers under its CN.
//!
//! Behind the `mqtt-interop` feature; `.ci/run` installs the SDK into `.venv`. Binds
//! 127.0.0.1:8883: run it alone (`flock /tmp/port8883.lock cargo test …` on a shared machine).
#![cfg(feature = "mqtt-interop")]

mod dps_support;
mod mqtt_support;

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;

use dps_support::{Dps, SCOPE};
use iot_core::{DeviceId, Offset, ReadLimits};
use iot_gateway::mqtt::{MqttConfig, MqttServer, SelfSigned};
use iot_gateway::{Gateway, Hub};
use iot_identity::ca::{CaCondition, CertificateAuthorities, FileCaStore};
use iot_identity::{Credentials, IdentityStore, MemoryIdentityStore};
use iot_provisioning::enrollment::{
    EnrollmentGroup, EnrollmentStore, GroupAttestation, Precondition,
};
use mqtt_support::HOST;
use serde_json::{Value, json};
use tokio::process::Command;

const SCRIPT_PATIENCE: Duration = Duration::from_secs(120);

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

/// Runs `scripts/mqtt/x509_chain.sh` with `args`; its stdout.
async fn openssl_script(args: &[&str]) -> String {
    let out = Command::new("bash")
        .arg(workspace().join("scripts/mqtt/x509_chain.sh"))
        .args(args)
        .stdin(Stdio::null())
        .output()
        .await
        .expect("x509_chain.sh started");
    assert!(
        out.status.success(),
        "x509_chain.sh {args:?}: {}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("UTF-8")
}

/// Runs `scripts/mqtt/azure_dps_x509.py MODE ID DIR/NAME-chain.pem DIR/NAME-chain.key`.
async fn sdk(tls: &SelfSigned, mode: &str, id: &str, dir: &Path, name: &str) -> Vec<String> {
    let chain = dir.join(format!("{name}-chain.pem"));
    let key = dir.join(format!("{name}-chain.key"));
    let mut command = Command::new(python());
    command
        .arg(workspace().join("scripts/mqtt/azure_dps_x509.py"))
        .args([mode, id])
        .arg(&chain)
        .arg(&key)
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
        "{mode} {id}: {}\n{stdout}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    stdout.lines().map(str::to_owned).collect()
}

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
        // Client certificates offered: DPS's X.509 attestation and the hub's X.509 CA
        // authentication both read the chain of the handshake.
        match server
            .listen_tls(
                "127.0.0.1:8883".parse().expect("addr"),
                tls.tls_config(true).expect("tls"),
            )
            .await
        {
            Ok(_) => return,
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

fn pem(dir: &Path, name: &str) -> String {
    std::fs::read_to_string(dir.join(name)).expect("PEM")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn azure_iot_device_registers_with_an_openssl_chain_and_connects_with_it() {
    let dir = tempfile::tempdir().expect("dir");
    let certs = dir.path().join("certs");
    let certs_arg = certs.to_str().expect("UTF-8 path");
    openssl_script(&["chain", certs_arg, "x509-dev-1", "x509-dev-2"]).await;

    // The hub's CAs, in a file store: the root is uploaded and proved, the rogue only uploaded.
    let cas = CertificateAuthorities::new(
        FileCaStore::open(dir.path().join("cas"))
            .await
            .expect("CA store"),
    );
    cas.upload("fleet-root", &pem(&certs, "root.pem"), CaCondition::Absent)
        .await
        .expect("upload root");
    cas.upload("rogue-root", &pem(&certs, "rogue.pem"), CaCondition::Absent)
        .await
        .expect("upload rogue");
    let code = cas
        .generate_verification_code("fleet-root", CaCondition::Any)
        .await
        .expect("code")
        .certificate
        .verification_code
        .expect("a code");
    let proof = openssl_script(&["proof", certs_arg, &code]).await;
    let verified = cas
        .verify("fleet-root", &proof, CaCondition::Any)
        .await
        .expect("the openssl-made proof of possession verifies");
    assert!(verified.certificate.verified);

    let identity = Arc::new(MemoryIdentityStore::new());
    let hub = Hub::builder(identity.clone(), HOST)
        .certificate_authorities(cas.clone())
        .build()
        .await
        .expect("hub");
    let dps = Dps::new(hub.clone(), identity.clone(), HOST)
        .await
        .with_certificate_authorities(cas.clone());
    let mut group = EnrollmentGroup::new(
        "x509-fleet".parse().expect("group id"),
        GroupAttestation::X509Ca {
            certificates: vec![pem(&certs, "inter.pem"), pem(&certs, "rogue.pem")],
        },
    );
    group.settings.tags = json!({"fleet": "x509"});
    group.settings.initial_twin = json!({"interval": 30});
    dps.enrollments
        .put_group(group, Precondition::Absent)
        .await
        .expect("group");
    let tls = SelfSigned::generate(HOST).expect("certificates");
    let server = dps.server(MqttConfig::default());
    listen_8883(&server, &tls).await;

    // Register with the leaf (+ intermediate), then connect to the hub with it.
    let lines = sdk(&tls, "one", "x509-dev-1", &certs, "good").await;
    let registered = json_line(&lines, "registered");
    assert_eq!(registered["status"], "assigned", "{registered}");
    assert_eq!(registered["device_id"], "x509-dev-1");
    assert_eq!(registered["assigned_hub"], HOST);
    assert_eq!(registered["substatus"], "initialAssignment");
    assert!(lines.iter().any(|l| l == "sent"), "{lines:?}");
    let payloads = telemetry_of(&hub, "x509-dev-1").await;
    assert!(
        payloads.iter().any(|p| p == b"hello from x509-dev-1"),
        "the device's telemetry is in the hub's log: {payloads:?}"
    );
    let device: DeviceId = "x509-dev-1".parse().expect("id");
    let stored = identity
        .get(&device)
        .await
        .expect("get")
        .expect("registered");
    assert_eq!(stored.credentials, Credentials::CertificateAuthority);
    assert_eq!(
        hub.get_twin(&device)
            .await
            .expect("twin")
            .desired
            .properties["interval"],
        30
    );
    assert_eq!(dps.registers().await.get("x509-dev-1"), Some(&1));

    // Refusals: each asserted, none registered.
    // A leaf of the rogue root: the group holds that root, but nobody proved its key.
    let rogue = sdk(&tls, "refused", "x509-dev-1-rogue", &certs, "rogueleaf").await;
    // An expired leaf: the TLS handshake itself fails.
    let expired = sdk(&tls, "refused", "x509-dev-1-old", &certs, "old").await;
    // A good chain whose CN (x509-dev-2) is not the registration id.
    let mismatch = sdk(&tls, "refused", "x509-dev-3", &certs, "other").await;
    for (lines, why) in [
        (&rogue, "unverified CA"),
        (&expired, "expired leaf"),
        (&mismatch, "CN differs from the registration id"),
    ] {
        assert!(
            lines.iter().any(|l| l.starts_with("refused ")),
            "{why}: {lines:?}"
        );
        assert!(!lines.iter().any(|l| l == "assigned"), "{why}: {lines:?}");
    }
    // CONNACK 5 (not authorized) is the SDK's CredentialError; a failed handshake is not.
    assert!(
        rogue
            .iter()
            .any(|l| l.starts_with("refused CredentialError")),
        "{rogue:?}"
    );
    assert!(
        mismatch
            .iter()
            .any(|l| l.starts_with("refused CredentialError")),
        "{mismatch:?}"
    );
    assert!(
        !expired
            .iter()
            .any(|l| l.starts_with("refused CredentialError")),
        "the expired leaf never got to CONNECT: {expired:?}"
    );
    for id in [
        "x509-dev-1-rogue",
        "x509-dev-1-old",
        "x509-dev-3",
        "x509-dev-2",
    ] {
        let device: DeviceId = id.parse().expect("id");
        assert!(identity.get(&device).await.expect("get").is_none(), "{id}");
    }
    assert_eq!(dps.registers().await.len(), 1);

    // Controls: the refusals were for the reasons named. Once its owner proves the rogue root's
    // key, the same leaf registers and connects; the mismatched chain registers under its CN.
    let code = cas
        .generate_verification_code("rogue-root", CaCondition::Any)
        .await
        .expect("code")
        .certificate
        .verification_code
        .expect("a code");
    let proof = openssl_script(&["proof", certs_arg, &code, "rogue"]).await;
    cas.verify("rogue-root", &proof, CaCondition::Any)
        .await
        .expect("rogue root verified");
    let lines = sdk(&tls, "one", "x509-dev-1-rogue", &certs, "rogueleaf").await;
    assert!(lines.iter().any(|l| l == "sent"), "{lines:?}");
    let lines = sdk(&tls, "one", "x509-dev-2", &certs, "other").await;
    assert!(lines.iter().any(|l| l == "sent"), "{lines:?}");
    assert_eq!(dps.registers().await.len(), 3);

    server.shutdown().await;
    hub.shutdown().await;
}
