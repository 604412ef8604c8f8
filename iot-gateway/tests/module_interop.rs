//! Module identities with Microsoft's SDKs, unmodified: Python `azure-iot-device`'s
//! `IoTHubModuleClient.create_from_connection_string` as the module (MQTT/TLS on
//! 127.0.0.1:8883) and Python `azure-iot-hub`'s `IoTHubRegistryManager` as the back end (the
//! service REST API over HTTPS).
//!
//! The module sends telemetry (it lands in the log stamped with its module id), patches its
//! reported properties, receives a desired patch made through the service API and answers a
//! method invoked on it through the service API; the back end creates, lists and deletes it.
//!
//! Behind the `http-interop` feature (it binds 8883, the SDK's fixed port): `.ci/run` installs
//! the clients and runs it after the other tests that bind 8883.
#![cfg(feature = "http-interop")]

use std::path::PathBuf;
use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;

use iot_core::{Log, Offset, PartitionId, ReadLimits};
use iot_gateway::http::{HttpConfig, HttpServer, HttpState, PolicyStore, SharedAccessPolicy};
use iot_gateway::message::header;
use iot_gateway::mqtt::{MqttConfig, MqttServer, SelfSigned};
use iot_gateway::{Gateway, Hub, HubConfig};
use iot_identity::{IdentityStore, MemoryIdentityStore};
use iot_provisioning::{Provisioner, Provisioning};
use iot_registry::{MemoryRegistry, Registry};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::process::Command;

const HOST: &str = "localhost";
const PATIENCE: Duration = Duration::from_secs(60);

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

/// Every telemetry record in the hub's log.
async fn telemetry(hub: &Hub) -> Vec<iot_core::StoredRecord> {
    let log = hub.telemetry_log();
    let mut all = Vec::new();
    for p in 0..log.partition_count() {
        let p = PartitionId(p);
        let next = log.next_offset(p).await.expect("offset");
        if next.0 > 0 {
            all.extend(
                log.read(p, Offset(0), ReadLimits::records(10_000))
                    .await
                    .expect("read"),
            );
        }
    }
    all
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_module_client_and_registry_manager() {
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
    )
    .with_modules(hub.modules().clone());
    let http = HttpServer::new(iot_gateway::http::router(state), HttpConfig::default());
    let https = http
        .listen_tls(
            "127.0.0.1:0".parse().expect("addr"),
            tls.tls_config(false).expect("tls"),
        )
        .await
        .expect("https");
    let mqtt = MqttServer::new(Arc::new(hub.clone()), MqttConfig::default()).expect("mqtt");
    mqtt.listen_tls(
        "127.0.0.1:8883".parse().expect("addr"),
        tls.tls_config(false).expect("tls"),
    )
    .await
    .expect("bind 8883 (hold /tmp/port8883.lock when running beside other tests)");
    let service_cs = policies
        .get("iothubowner")
        .expect("policy")
        .connection_string(&format!("{HOST}:{}", https.port()));
    let service = |command: &str| {
        let mut c = Command::new(python());
        c.arg(workspace().join("scripts/modules/module_service.py"))
            .args([command, "edge-1", "filter"])
            .env("IOT_SERVICE_CS", &service_cs)
            .env("REQUESTS_CA_BUNDLE", &ca_file);
        c
    };

    // The back end creates the device and the module with keys of its own.
    let created = run(&mut service("create")).await;
    let created: serde_json::Value =
        serde_json::from_str(line(&created, "created")).expect("created JSON");
    let key = created["primaryKey"].as_str().expect("key");

    // The module connects with its connection string, sends, reports and reads its twin.
    let mut module = Command::new(python())
        .arg(workspace().join("scripts/modules/module_client.py"))
        .env(
            "IOT_CONNECTION_STRING",
            format!("HostName={HOST};DeviceId=edge-1;ModuleId=filter;SharedAccessKey={key}"),
        )
        .env("IOT_CA_PEM", &tls.ca_pem)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("start the module script");
    let mut lines = BufReader::new(module.stdout.take().expect("stdout")).lines();
    let mut seen = Vec::new();
    let mut expect = async |prefix: &str| -> String {
        let found = tokio::time::timeout(PATIENCE, async {
            while let Some(l) = lines.next_line().await.expect("read stdout") {
                if let Some(rest) = l.strip_prefix(prefix) {
                    return Some(rest.trim().to_owned());
                }
                seen.push(l);
            }
            None
        })
        .await;
        match found {
            Ok(Some(rest)) => rest,
            _ => panic!("no {prefix:?} line from the module; saw {seen:?}"),
        }
    };
    expect("sent").await;
    let twin: serde_json::Value = serde_json::from_str(&expect("twin").await).expect("twin JSON");
    assert_eq!(twin["reported"]["firmware"], "3.1", "{twin}");
    expect("ready").await;

    // Its telemetry is in the log, stamped with the device and the module.
    let records = telemetry(&hub).await;
    let from_module: Vec<_> = records
        .iter()
        .filter(|r| r.record.headers.get(header::MODULE_ID) == Some("filter"))
        .collect();
    assert_eq!(
        from_module.len(),
        2,
        "both messages of the module are stamped"
    );
    for r in &from_module {
        assert_eq!(r.record.headers.get(header::DEVICE_ID), Some("edge-1"));
        let method = r
            .record
            .headers
            .get(header::AUTH_METHOD)
            .unwrap_or_default();
        assert!(method.contains(r#""scope":"module""#), "{method}");
    }
    let first = from_module
        .iter()
        .find(|r| r.record.headers.get("stage") == Some("filtered"))
        .expect("the telemetry message");
    assert_eq!(&first.record.payload[..], br#"{"temperature": 40.5}"#);
    let output = from_module
        .iter()
        .find(|r| r.record.headers.get(header::OUTPUT_NAME).is_some())
        .expect("the output message");
    assert_eq!(
        output.record.headers.get(header::OUTPUT_NAME),
        Some("alerts")
    );

    // The back end reads the module twin, patches it, invokes a method on the module, lists and
    // finally deletes it.
    let out = run(&mut service("exercise")).await;
    for step in [
        "twin",
        "patched",
        "method",
        "device-method-refused",
        "listed",
        "deleted",
        "ok",
    ] {
        line(&out, step);
    }
    let desired: serde_json::Value =
        serde_json::from_str(&expect("desired").await).expect("desired JSON");
    assert_eq!(desired["threshold"], 42);
    assert_eq!(desired["unit"], "C");
    let method = expect("method").await;
    assert!(method.starts_with("recalibrate"), "{method}");

    // Deleting the module ended its session.
    let (device, module_id) = ("edge-1".parse().expect("id"), "filter".parse().expect("id"));
    tokio::time::timeout(PATIENCE, async {
        while hub
            .is_module_connected(&device, &module_id)
            .await
            .expect("state")
        {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .expect("the deleted module's session ends");
    if let Some(mut stdin) = module.stdin.take() {
        let _ = stdin.write_all(b"quit\n").await;
    }
    let _ = module.kill().await;
    http.shutdown().await;
    mqtt.shutdown().await;
    hub.shutdown().await;
}
