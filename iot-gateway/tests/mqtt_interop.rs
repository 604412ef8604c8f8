//! Interop with MQTT clients nobody here wrote: Debian's `mosquitto_pub` / `mosquitto_sub` and
//! Eclipse paho-mqtt (Python), run as subprocesses against the endpoint over plain TCP.
//!
//! Behind the `mqtt-interop` feature: `.ci/run` installs the clients
//! (`apt-get install mosquitto-clients`, `.venv/bin/pip install paho-mqtt`). The Python used is
//! `$MQTT_INTEROP_PYTHON`, else the workspace's `.venv/bin/python`.
#![cfg(feature = "mqtt-interop")]

mod mqtt_support;

use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use iot_gateway::{AckRequest, C2dMessage, FeedbackStatus};
use mqtt_support::{Device, Fixture, PATIENCE};
use tokio::process::Command;

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

/// Runs a client to its end and returns its stdout; the test fails if it fails.
async fn run(command: &mut Command) -> String {
    let output = tokio::time::timeout(
        PATIENCE * 2,
        command.stdin(Stdio::null()).kill_on_drop(true).output(),
    )
    .await
    .expect("client finished in time")
    .expect("client started");
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    assert!(
        output.status.success(),
        "{command:?} failed: {}\nstdout: {stdout}\nstderr: {}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    stdout
}

fn mosquitto(program: &str, fx: &Fixture, device: &Device) -> Command {
    let mut command = Command::new(program);
    command
        .args(["-h", "127.0.0.1", "-p", &fx.addr.port().to_string()])
        .args(["-V", "mqttv311", "-i", device.id.as_str()])
        .args(["-u", &device.username(), "-P", &device.token()]);
    command
}

async fn feedback(fx: &Fixture) -> Vec<iot_gateway::Feedback> {
    tokio::time::timeout(PATIENCE, async {
        loop {
            let f = fx.gateway.read_feedback(0, 10).await.expect("feedback");
            if !f.is_empty() {
                return f;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .expect("feedback in time")
}

#[tokio::test]
async fn mosquitto_pub_sends_telemetry() {
    let fx = Fixture::start().await;
    let device = fx.device("mosq-1").await;
    run(mosquitto("mosquitto_pub", &fx, &device)
        .args(["-q", "1", "-m", "{\"t\":20.5}"])
        .args([
            "-t",
            "devices/mosq-1/messages/events/%24.ct=application%2Fjson&source=mosquitto",
        ]))
    .await;
    let records = fx.telemetry(&device.id, 1).await;
    let record = &records[0].record;
    assert_eq!(record.payload.as_ref(), b"{\"t\":20.5}");
    assert_eq!(record.headers.get("content-type"), Some("application/json"));
    assert_eq!(record.headers.get("source"), Some("mosquitto"));
}

#[tokio::test]
async fn mosquitto_sub_receives_c2d_and_its_puback_completes_it() {
    let fx = Fixture::start().await;
    let device = fx.device("mosq-2").await;
    let mut message = C2dMessage::new(&b"turn left"[..]);
    message.message_id = Some("cmd-1".into());
    message.ack = AckRequest::Full;
    fx.gateway
        .send_c2d(&device.id, message)
        .await
        .expect("queue");
    // Queued before the client subscribes: delivered once the subscription arrives.
    let out = run(mosquitto("mosquitto_sub", &fx, &device)
        .args(["-q", "1", "-C", "1", "-v", "-W", "30"])
        .args(["-t", "devices/mosq-2/messages/devicebound/#"]))
    .await;
    let (topic, payload) = out.trim_end().split_once(' ').expect("topic and payload");
    assert!(
        topic.starts_with("devices/mosq-2/messages/devicebound/%24.mid=cmd-1"),
        "{topic}"
    );
    assert_eq!(payload, "turn left");
    let feedback = feedback(&fx).await;
    assert_eq!(feedback[0].status, FeedbackStatus::Success);
}

#[tokio::test]
async fn mosquitto_pub_to_another_device_is_cut_off() {
    let fx = Fixture::start().await;
    let device = fx.device("mosq-3").await;
    // mosquitto_pub exits non-zero when the server drops it before the PUBACK.
    let status = mosquitto("mosquitto_pub", &fx, &device)
        .args(["-q", "1", "-m", "x", "-t", "devices/other/messages/events/"])
        .stdin(Stdio::null())
        .status()
        .await
        .expect("mosquitto_pub ran");
    assert!(!status.success());
    assert!(fx.all_telemetry().await.is_empty());
}

fn paho(fx: &Fixture, device: &Device, scenario: &str) -> Command {
    let mut command = Command::new(python());
    command
        .arg(workspace().join("scripts/mqtt/paho_device.py"))
        .args(["--port", &fx.addr.port().to_string()])
        .args(["--device", device.id.as_str()])
        .args([
            "--username",
            &device.username(),
            "--password",
            &device.token(),
        ])
        .args(["--scenario", scenario]);
    command
}

#[tokio::test]
async fn paho_telemetry_and_c2d() {
    let fx = Fixture::start().await;
    let device = fx.device("paho-1").await;
    let mut message = C2dMessage::new(&b"{\"cmd\":\"blink\"}"[..]);
    message.properties.push(("priority".into(), "high".into()));
    message.ack = AckRequest::Positive;
    fx.gateway
        .send_c2d(&device.id, message)
        .await
        .expect("queue");
    let out = run(&mut paho(&fx, &device, "telemetry_c2d")).await;
    assert!(out.contains("connected rc=0"), "{out}");
    assert!(out.contains("published acked=True"), "{out}");
    assert!(out.contains("granted=[1]"), "{out}");
    let line = out
        .lines()
        .find(|l| l.starts_with("c2d "))
        .expect("a C2D line");
    assert!(
        line.starts_with("c2d qos=1 topic=devices/paho-1/messages/devicebound/"),
        "{line}"
    );
    assert!(line.contains("priority=high"), "{line}");
    assert!(line.ends_with("payload={\"cmd\":\"blink\"}"), "{line}");

    let records = fx.telemetry(&device.id, 1).await;
    assert_eq!(records[0].record.payload.as_ref(), b"{\"from\":\"paho\"}");
    assert_eq!(
        records[0].record.headers.get("content-type"),
        Some("application/json")
    );
    assert_eq!(records[0].record.headers.get("source"), Some("paho"));
    assert_eq!(feedback(&fx).await[0].status, FeedbackStatus::Success);
}

#[tokio::test]
async fn paho_over_websocket_telemetry_and_c2d() {
    let fx = Fixture::start().await;
    let ws = fx
        .server
        .listen_websocket("127.0.0.1:0".parse().expect("addr"), None)
        .await
        .expect("listen ws");
    let device = fx.device("paho-ws").await;
    fx.gateway
        .send_c2d(&device.id, C2dMessage::new(&b"over websocket"[..]))
        .await
        .expect("queue");
    let mut command = paho(&fx, &device, "telemetry_c2d");
    command.args(["--websocket", "--port", &ws.port().to_string()]);
    let out = run(&mut command).await;
    assert!(out.contains("published acked=True"), "{out}");
    assert!(out.contains("payload=over websocket"), "{out}");
    let records = fx.telemetry(&device.id, 1).await;
    assert_eq!(records[0].record.headers.get("source"), Some("paho"));
}

#[tokio::test]
async fn paho_acl_violation_closes_the_connection() {
    let fx = Fixture::start().await;
    let device = fx.device("paho-2").await;
    let out = run(&mut paho(&fx, &device, "acl")).await;
    assert!(out.contains("connected rc=0"), "{out}");
    assert!(
        out.lines()
            .any(|l| l.starts_with("disconnected rc=") && l != "disconnected rc=0"),
        "{out}"
    );
    assert!(fx.all_telemetry().await.is_empty());
}
