//! The service REST API with Microsoft's service SDKs, unmodified: Python `azure-iot-hub`
//! (IoTHubRegistryManager) and Node `azure-iothub` (Registry, Client), against a hub whose
//! device is Microsoft's Python `azure-iot-device` over MQTT/TLS.
//!
//! Behind the `http-interop` feature; `scripts/http/interop.sh` installs the clients and runs
//! this file. The device SDK always connects to 127.0.0.1:8883 and Node's service SDK to port
//! 443, so the tests of this binary run one at a time (a lock) and not beside the MQTT interop
//! tests.
#![cfg(feature = "http-interop")]

use std::path::PathBuf;
use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;

use iot_gateway::http::{HttpConfig, HttpServer, HttpState, PolicyStore, SharedAccessPolicy};
use iot_gateway::mqtt::{MqttConfig, MqttServer, SelfSigned};
use iot_gateway::{Gateway, Hub, HubConfig};
use iot_identity::{IdentityStore, MemoryIdentityStore};
use iot_provisioning::{Provisioner, Provisioning};
use iot_registry::{MemoryRegistry, Registry};
use tokio::io::{AsyncBufReadExt, BufReader, Lines};
use tokio::process::{ChildStdout, Command};

const HOST: &str = "localhost";
const PATIENCE: Duration = Duration::from_secs(60);
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

fn workspace() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("workspace root")
        .to_path_buf()
}

fn python() -> PathBuf {
    std::env::var_os("HTTP_INTEROP_PYTHON")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace().join(".venv/bin/python"))
}

struct Hubs {
    hub: Hub,
    policies: Arc<PolicyStore>,
    http: HttpServer,
    mqtt: MqttServer,
    https_port: u16,
    tls: SelfSigned,
    _dir: tempfile::TempDir,
    ca_file: PathBuf,
}

impl Hubs {
    /// A hub with memory stores: MQTT/TLS on 127.0.0.1:8883, HTTPS on `https`.
    async fn start(https: &str) -> Hubs {
        let identity: Arc<dyn IdentityStore> = Arc::new(MemoryIdentityStore::new());
        let registry: Arc<dyn Registry> = Arc::new(MemoryRegistry::new());
        let provisioner = Arc::new(
            Provisioner::builder(identity.clone(), registry.clone())
                .open()
                .await
                .expect("provisioner"),
        );
        let hub = Hub::builder(identity.clone(), HOST)
            .config(HubConfig::default())
            .build()
            .await
            .expect("hub");
        let policies = Arc::new(PolicyStore::memory(SharedAccessPolicy::defaults()));
        let tls = SelfSigned::generate(HOST).expect("certificates");
        let dir = tempfile::tempdir().expect("dir");
        let (ca_file, _, _) = tls.write_to(dir.path()).expect("write certificates");
        let state = HttpState::new(
            Arc::new(hub.clone()),
            provisioner as Arc<dyn Provisioning>,
            registry,
            identity,
            policies.clone(),
            HOST,
            HttpConfig::default(),
        );
        let http = HttpServer::new(iot_gateway::http::router(state), HttpConfig::default());
        let https_port = bind_retrying(|| {
            http.listen_tls(
                https.parse().expect("addr"),
                tls.tls_config(false).expect("tls"),
            )
        })
        .await
        .port();
        let mqtt = MqttServer::new(Arc::new(hub.clone()), MqttConfig::default()).expect("mqtt");
        bind_retrying(|| {
            mqtt.listen_tls(
                "127.0.0.1:8883".parse().expect("addr"),
                tls.tls_config(false).expect("tls"),
            )
        })
        .await;
        Hubs {
            hub,
            policies,
            http,
            mqtt,
            https_port,
            tls,
            _dir: dir,
            ca_file,
        }
    }

    fn connection_string(&self, policy: &str, with_port: bool) -> String {
        let authority = if with_port {
            format!("{HOST}:{}", self.https_port)
        } else {
            HOST.to_owned()
        };
        self.policies
            .get(policy)
            .expect("policy")
            .connection_string(&authority)
    }

    /// Microsoft's Python device SDK as `device` (scripts/mqtt/azure_device.py), once it has
    /// connected, sent telemetry and reported `firmware: 2.0`.
    async fn device(&self, device: &str, key: &str) -> (tokio::process::Child, Script) {
        let mut child = Command::new(python())
            .arg(workspace().join("scripts/mqtt/azure_device.py"))
            .env(
                "IOT_CONNECTION_STRING",
                format!("HostName={HOST};DeviceId={device};SharedAccessKey={key}"),
            )
            .env("IOT_CA_PEM", &self.tls.ca_pem)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("start the device SDK script");
        let mut script = Script {
            lines: BufReader::new(child.stdout.take().expect("stdout")).lines(),
            seen: Vec::new(),
        };
        script.expect("ready").await;
        (child, script)
    }

    async fn stop(self) {
        self.http.shutdown().await;
        self.mqtt.shutdown().await;
        self.hub.shutdown().await;
    }
}

async fn bind_retrying<F, Fut, E>(mut listen: F) -> std::net::SocketAddr
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<std::net::SocketAddr, E>>,
    E: std::fmt::Display,
{
    for _ in 0..50 {
        match listen().await {
            Ok(addr) => return addr,
            // The previous test's socket may take a moment to go.
            Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
    match listen().await {
        Ok(addr) => addr,
        Err(e) => panic!("cannot bind: {e}"),
    }
}

/// Reads a script's stdout line by line.
struct Script {
    lines: Lines<BufReader<ChildStdout>>,
    seen: Vec<String>,
}

impl Script {
    /// The rest of the next line starting with `prefix`.
    async fn expect(&mut self, prefix: &str) -> String {
        let seen = &mut self.seen;
        let lines = &mut self.lines;
        let found = tokio::time::timeout(PATIENCE, async {
            loop {
                let line = lines.next_line().await.expect("read stdout")?;
                if let Some(rest) = line.strip_prefix(prefix) {
                    return Some(rest.trim().to_owned());
                }
                seen.push(line);
            }
        })
        .await;
        match found {
            Ok(Some(rest)) => rest,
            _ => panic!("no {prefix:?} line; saw {:?}", self.seen),
        }
    }
}

async fn run(command: &mut Command) -> String {
    let out = tokio::time::timeout(
        PATIENCE * 2,
        command.stdin(Stdio::null()).kill_on_drop(true).output(),
    )
    .await
    .expect("client finished in time")
    .expect("client started");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{command:?}: {}\nstdout:\n{stdout}\nstderr:\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

fn line<'a>(output: &'a str, prefix: &str) -> &'a str {
    output
        .lines()
        .find_map(|l| l.strip_prefix(prefix))
        .unwrap_or_else(|| panic!("no {prefix:?} line in {output}"))
        .trim()
}

#[tokio::test]
async fn python_azure_iot_hub_registry_manager() {
    let _serial = SERIAL.lock().await;
    let hubs = Hubs::start("127.0.0.1:0").await;
    let service = |command: &str| {
        let mut c = Command::new(python());
        c.arg(workspace().join("scripts/http/azure_service.py"))
            .args([command, "py-1"])
            .env(
                "IOT_SERVICE_CS",
                hubs.connection_string("iothubowner", true),
            )
            .env("IOT_READ_CS", hubs.connection_string("registryRead", true))
            .env("REQUESTS_CA_BUNDLE", &hubs.ca_file);
        c
    };
    let created = run(&mut service("create")).await;
    let created: serde_json::Value =
        serde_json::from_str(line(&created, "created")).expect("created JSON");
    let key = created["primaryKey"].as_str().expect("key").to_owned();

    let (mut device, mut script) = hubs.device("py-1", &key).await;
    let out = run(&mut service("exercise")).await;
    for step in [
        "updated",
        "twin",
        "patched",
        "queried",
        "method",
        "forbidden",
        "expired",
        "deleted",
        "ok",
    ] {
        line(&out, step);
    }
    // The connected device received the desired patch and answered the method.
    let desired: serde_json::Value =
        serde_json::from_str(&script.expect("desired").await).expect("desired JSON");
    assert_eq!(desired["interval"], 30);
    assert_eq!(desired["mode"], "eco");
    let method = script.expect("method").await;
    assert!(method.starts_with("reboot"), "{method}");
    // Deleting the device cut its session.
    let id = "py-1".parse().expect("id");
    tokio::time::timeout(PATIENCE, async {
        while hubs.hub.is_connected(&id).await.expect("state") {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .expect("the deleted device's session ends");
    let _ = device.kill().await;
    hubs.stop().await;
}

#[tokio::test]
#[allow(
    clippy::print_stderr,
    reason = "a skipped run outside CI says why on stderr"
)]
async fn node_azure_iothub_registry_and_client() {
    let _serial = SERIAL.lock().await;
    let Some(modules) = std::env::var_os("HTTP_INTEROP_NODE_MODULES") else {
        assert!(
            std::env::var_os("CI").is_none(),
            "HTTP_INTEROP_NODE_MODULES is not set (scripts/http/interop.sh sets it)"
        );
        eprintln!("skipped: HTTP_INTEROP_NODE_MODULES is not set; run scripts/http/interop.sh");
        return;
    };
    let hubs = Hubs::start("127.0.0.1:443").await;
    assert_eq!(hubs.https_port, 443);
    let node = |command: &str, device: &str| {
        let mut c = Command::new("node");
        c.arg(workspace().join("scripts/http/node_service.js"))
            .args([command, device])
            .env("NODE_PATH", &modules)
            .env(
                "IOT_SERVICE_CS",
                hubs.connection_string("iothubowner", false),
            )
            .env("NODE_EXTRA_CA_CERTS", &hubs.ca_file);
        c
    };
    let created = run(&mut node("create", "node-1")).await;
    let created: serde_json::Value =
        serde_json::from_str(line(&created, "created")).expect("created JSON");
    let key = created["primaryKey"].as_str().expect("key").to_owned();
    let (mut device, mut script) = hubs.device("node-1", &key).await;
    let out = run(&mut node("exercise", "node-1")).await;
    for step in ["got", "listed", "twin", "queried", "method", "ok"] {
        line(&out, step);
    }
    let desired: serde_json::Value =
        serde_json::from_str(&script.expect("desired").await).expect("desired JSON");
    assert_eq!(desired["owner"], "node");
    let _ = device.kill().await;
    hubs.stop().await;
}
