//! MQTT over TLS with real clients: mosquitto_pub / mosquitto_sub (server certificate from our
//! self-signed CA, and a device authenticated by its client certificate's thumbprint), and
//! Microsoft's azure-iot-device SDK, unmodified, on port 8883 — including its reconnect after the
//! gateway restarts.
//!
//! Behind the `mqtt-interop` feature; `.ci/run` installs the clients.
#![cfg(feature = "mqtt-interop")]

mod mqtt_support;

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;

use iot_gateway::mqtt::{MqttConfig, MqttServer, SelfSigned};
use iot_gateway::{C2dMessage, Gateway, Hub, HubConfig, MethodCall};
use iot_identity::{
    Credentials, IdentityStore, MemoryIdentityStore, NewIdentity, SymmetricKey, Thumbprint,
};
use mqtt_support::{Fixture, HOST, PATIENCE};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader, Lines};
use tokio::process::{ChildStdout, Command};

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

async fn status(command: &mut Command) -> std::process::ExitStatus {
    tokio::time::timeout(
        PATIENCE * 2,
        command.stdin(Stdio::null()).kill_on_drop(true).status(),
    )
    .await
    .expect("client finished in time")
    .expect("client started")
}

async fn output(command: &mut Command) -> String {
    let out = tokio::time::timeout(
        PATIENCE * 2,
        command.stdin(Stdio::null()).kill_on_drop(true).output(),
    )
    .await
    .expect("client finished in time")
    .expect("client started");
    assert!(
        out.status.success(),
        "{command:?}: {}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A TLS listener on an ephemeral port next to the fixture's TCP one; returns (port, CA file).
async fn tls_listener(fx: &Fixture, dir: &Path, client_certs: bool) -> (u16, PathBuf) {
    let pair = SelfSigned::generate(HOST).expect("certificates");
    let (ca, _, _) = pair.write_to(dir).expect("write certificates");
    let addr = fx
        .server
        .listen_tls(
            "127.0.0.1:0".parse().expect("addr"),
            pair.tls_config(client_certs).expect("tls"),
        )
        .await
        .expect("listen tls");
    (addr.port(), ca)
}

#[tokio::test]
async fn mosquitto_over_tls_telemetry_and_c2d() {
    let fx = Fixture::start().await;
    let dir = tempfile::tempdir().expect("dir");
    let (port, ca) = tls_listener(&fx, dir.path(), false).await;
    let device = fx.device("tls-1").await;
    let base = |program: &str| {
        let mut c = Command::new(program);
        c.args(["-h", HOST, "-p", &port.to_string(), "--cafile"])
            .arg(&ca)
            .args([
                "-V",
                "mqttv311",
                "-i",
                "tls-1",
                "-u",
                &device.username(),
                "-P",
                &device.token(),
            ]);
        c
    };
    let ok = status(
        base("mosquitto_pub")
            .args(["-q", "1", "-m", "over tls"])
            .args(["-t", "devices/tls-1/messages/events/via=tls"]),
    )
    .await;
    assert!(ok.success());
    let records = fx.telemetry(&device.id, 1).await;
    assert_eq!(records[0].record.payload.as_ref(), b"over tls");
    assert_eq!(records[0].record.headers.get("via"), Some("tls"));

    fx.gateway
        .send_c2d(&device.id, C2dMessage::new(&b"secret plan"[..]))
        .await
        .expect("queue");
    let out = output(
        base("mosquitto_sub")
            .args(["-q", "1", "-C", "1", "-W", "30"])
            .args(["-t", "devices/tls-1/messages/devicebound/#"]),
    )
    .await;
    assert_eq!(out.trim_end(), "secret plan");
}

#[tokio::test]
async fn mosquitto_with_a_client_certificate_authenticates_by_thumbprint() {
    let fx = Fixture::start().await;
    let dir = tempfile::tempdir().expect("dir");
    let (port, ca) = tls_listener(&fx, dir.path(), true).await;

    // The device's own self-signed certificate; the identity store holds its thumbprint.
    let device_cert = rcgen::generate_simple_self_signed(vec!["x509-1".to_string()]).expect("cert");
    let thumbprint = Thumbprint::of_der_certificate(device_cert.cert.der());
    let other = rcgen::generate_simple_self_signed(vec!["x509-1".to_string()]).expect("cert");
    fx.identity
        .create(NewIdentity::new(
            "x509-1".parse().expect("id"),
            Credentials::X509 {
                primary: thumbprint,
                secondary: thumbprint,
            },
        ))
        .await
        .expect("identity");
    for (name, cert) in [("good", &device_cert), ("other", &other)] {
        std::fs::write(dir.path().join(format!("{name}.pem")), cert.cert.pem()).expect("write");
        std::fs::write(
            dir.path().join(format!("{name}-key.pem")),
            cert.signing_key.serialize_pem(),
        )
        .expect("write");
    }
    let publish = |name: &str| {
        let mut c = Command::new("mosquitto_pub");
        c.args(["-h", HOST, "-p", &port.to_string(), "--cafile"])
            .arg(&ca)
            .arg("--cert")
            .arg(dir.path().join(format!("{name}.pem")))
            .arg("--key")
            .arg(dir.path().join(format!("{name}-key.pem")))
            .args(["-V", "mqttv311", "-i", "x509-1"])
            .args(["-u", &format!("{HOST}/x509-1/?api-version=2021-04-12")])
            .args([
                "-q",
                "1",
                "-m",
                name,
                "-t",
                "devices/x509-1/messages/events/",
            ]);
        c
    };
    assert!(status(&mut publish("good")).await.success());
    let device = "x509-1".parse().expect("id");
    let records = fx.telemetry(&device, 1).await;
    assert_eq!(records[0].record.payload.as_ref(), b"good");
    // A certificate with another thumbprint is refused (CONNACK 5): mosquitto_pub fails.
    assert!(!status(&mut publish("other")).await.success());
}

/// Reads the SDK script's stdout line by line.
struct Script {
    lines: Lines<BufReader<ChildStdout>>,
    seen: Vec<String>,
}

impl Script {
    /// The next line starting with `prefix` (earlier other lines are kept in `seen`).
    async fn expect(&mut self, prefix: &str) -> String {
        let found = tokio::time::timeout(PATIENCE * 3, async {
            loop {
                let line = self
                    .lines
                    .next_line()
                    .await
                    .expect("read stdout")
                    .unwrap_or_else(|| {
                        panic!("script ended before {prefix:?}; saw {:?}", self.seen)
                    });
                if let Some(rest) = line.strip_prefix(prefix) {
                    return rest.trim().to_string();
                }
                self.seen.push(line);
            }
        })
        .await;
        found.unwrap_or_else(|_| panic!("no {prefix:?} line; saw {:?}", self.seen))
    }
}

/// A hub with file-backed stores and its MQTT/TLS endpoint on 127.0.0.1:8883 (the port the SDK
/// hard-codes; only this test binds it).
async fn start_gateway(
    dir: &Path,
    identity: Arc<MemoryIdentityStore>,
    tls: &SelfSigned,
) -> (Hub, MqttServer) {
    let hub = Hub::open_dir(dir.join("hub"), identity, HOST, HubConfig::default())
        .await
        .expect("hub");
    let mut config = MqttConfig::default();
    config.state_dir = Some(dir.join("mqtt"));
    let server = MqttServer::new(Arc::new(hub.clone()), config).expect("server");
    let mut attempts = 0;
    loop {
        match server
            .listen_tls(
                "127.0.0.1:8883".parse().expect("addr"),
                tls.tls_config(false).expect("tls"),
            )
            .await
        {
            Ok(_) => break,
            // The previous listener's socket may take a moment to go.
            Err(_) if attempts < 50 => {
                attempts += 1;
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(e) => panic!("cannot bind 8883: {e}"),
        }
    }
    (hub, server)
}

#[tokio::test]
async fn azure_iot_device_sdk_end_to_end() {
    let dir = tempfile::tempdir().expect("dir");
    let identity = Arc::new(MemoryIdentityStore::new());
    let key = SymmetricKey::generate();
    let device: iot_core::DeviceId = "azure-1".parse().expect("id");
    identity
        .create(NewIdentity::new(
            device.clone(),
            Credentials::SymmetricKeys {
                primary: key.clone(),
                secondary: SymmetricKey::generate(),
            },
        ))
        .await
        .expect("identity");
    let tls = SelfSigned::generate(HOST).expect("certificates");
    let (hub, server) = start_gateway(dir.path(), identity.clone(), &tls).await;

    let connection_string = format!(
        "HostName={HOST};DeviceId={device};SharedAccessKey={}",
        key.expose_base64().as_str()
    );
    let mut child = Command::new(python())
        .arg(workspace().join("scripts/mqtt/azure_device.py"))
        .env("IOT_CONNECTION_STRING", &connection_string)
        .env("IOT_CA_PEM", &tls.ca_pem)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("start the SDK script");
    let mut stdin = child.stdin.take().expect("stdin");
    let mut script = Script {
        lines: BufReader::new(child.stdout.take().expect("stdout")).lines(),
        seen: Vec::new(),
    };

    // Telemetry with custom properties and content type, seen as record headers.
    script.expect("sent").await;
    let log = hub.telemetry_log().clone();
    let partition = iot_core::partition_for_key(device.as_str(), log.partition_count());
    let records = log
        .read(
            partition,
            iot_core::Offset(0),
            iot_core::ReadLimits::default(),
        )
        .await
        .expect("read");
    let record = &records.last().expect("a telemetry record").record;
    assert_eq!(record.payload.as_ref(), b"{\"temperature\": 21.5}");
    assert_eq!(record.headers.get("content-type"), Some("application/json"));
    assert_eq!(record.headers.get("content-encoding"), Some("utf-8"));
    assert_eq!(record.headers.get("message-id"), Some("az-1"));
    assert_eq!(record.headers.get("site"), Some("lab 7"));
    assert_eq!(record.headers.get("alert"), Some("false"));

    // get_twin and patch_twin_reported_properties.
    let twin: serde_json::Value =
        serde_json::from_str(&script.expect("twin").await).expect("twin JSON");
    assert_eq!(twin["desired"]["$version"], 0);
    script.expect("reported").await;
    let twin = hub.get_twin(&device).await.expect("twin");
    assert_eq!(twin.reported.properties["firmware"], "2.0");
    assert_eq!(twin.reported.properties["battery"], 87);
    script.expect("ready").await;

    // receive_message of a C2D message sent from Rust.
    let mut message = C2dMessage::new(&b"hello device"[..]);
    message.message_id = Some("c2d-1".into());
    message.content_type = Some("text/plain".into());
    message
        .properties
        .push(("priority".into(), "high & urgent".into()));
    hub.send_c2d(&device, message).await.expect("send C2D");
    let c2d: serde_json::Value =
        serde_json::from_str(&script.expect("c2d").await).expect("c2d JSON");
    assert_eq!(c2d["data"], "hello device");
    assert_eq!(c2d["message_id"], "c2d-1");
    assert_eq!(c2d["content_type"], "text/plain");
    assert_eq!(c2d["properties"]["priority"], "high & urgent");

    // The desired-property patch handler.
    hub.patch_desired(&device, serde_json::json!({"interval": 7}), None)
        .await
        .expect("patch desired");
    let desired: serde_json::Value =
        serde_json::from_str(&script.expect("desired").await).expect("desired JSON");
    assert_eq!(desired, serde_json::json!({"interval": 7, "$version": 1}));

    // A direct method invoked from Rust, answered by the method-request handler.
    let response = hub
        .invoke_method(&device, MethodCall::new("reboot", &b"{\"delay\":2}"[..]))
        .await
        .expect("method answered");
    assert_eq!(response.status, 200);
    let body: serde_json::Value = serde_json::from_slice(&response.payload).expect("JSON");
    assert_eq!(
        body,
        serde_json::json!({"handled": "reboot", "echo": {"delay": 2}})
    );
    script.expect("method reboot").await;

    // Restart the gateway: the SDK notices, reconnects on its own (persistent session), and
    // its subscriptions still work without it subscribing again.
    server.shutdown().await;
    hub.shutdown().await;
    // Everything holding the file-backed log must go, or the new hub finds it locked.
    drop((server, hub, log));
    script.expect("state disconnected").await;
    let (hub, server) = start_gateway(dir.path(), identity.clone(), &tls).await;
    script.expect("state connected").await;
    hub.send_c2d(&device, C2dMessage::new(&b"after restart"[..]))
        .await
        .expect("send C2D");
    let c2d: serde_json::Value =
        serde_json::from_str(&script.expect("c2d").await).expect("c2d JSON");
    assert_eq!(c2d["data"], "after restart");
    let mut call = MethodCall::new("ping", &b"{}"[..]);
    call.connect_timeout = PATIENCE;
    let response = hub
        .invoke_method(&device, call)
        .await
        .expect("method after restart");
    assert_eq!(response.status, 200);
    stdin
        .write_all(b"send still here\n")
        .await
        .expect("command");
    script.expect("sent").await;
    let records = log_after(&hub, &device).await;
    assert!(
        records
            .iter()
            .any(|r| r.record.payload.as_ref() == b"still here")
    );

    stdin.write_all(b"quit\n").await.expect("quit");
    script.expect("bye").await;
    let exit = tokio::time::timeout(PATIENCE, child.wait())
        .await
        .expect("script exits")
        .expect("wait");
    assert!(exit.success());
    server.shutdown().await;
    hub.shutdown().await;
}

async fn log_after(hub: &Hub, device: &iot_core::DeviceId) -> Vec<iot_core::StoredRecord> {
    let log = hub.telemetry_log();
    let partition = iot_core::partition_for_key(device.as_str(), log.partition_count());
    log.read(
        partition,
        iot_core::Offset(0),
        iot_core::ReadLimits::default(),
    )
    .await
    .expect("read")
}
