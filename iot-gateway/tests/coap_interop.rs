//! The CoAP adapter against a CoAP client nobody here wrote: aiocoap (Python), run as a
//! subprocess (`scripts/coap/aiocoap_device.py`). It sends telemetry with properties, receives
//! a C2D message by GET and completes it, then observes its C2D address and completes the
//! message that arrives as a notification.
//!
//! Behind the `coap-interop` feature: `scripts/coap/interop.sh` installs aiocoap into `.venv`
//! and runs this test. The Python used is `$COAP_INTEROP_PYTHON`, else the workspace's
//! `.venv/bin/python`.

mod coap_support;

use std::path::PathBuf;
use std::process::Stdio;

use coap_support::{Fixture, PATIENCE};
use iot_gateway::message::header;
use iot_gateway::{AckRequest, C2dMessage, FeedbackStatus, Gateway};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::Command;

fn workspace() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("workspace root")
        .to_path_buf()
}

fn python() -> PathBuf {
    std::env::var_os("COAP_INTEROP_PYTHON")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace().join(".venv/bin/python"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn aiocoap_sends_telemetry_and_receives_c2d_by_get_and_by_observe() {
    let fx = Fixture::start().await;
    let (id, token) = fx.device("aiocoap").await;
    let mut child = Command::new(python())
        .arg(workspace().join("scripts/coap/aiocoap_device.py"))
        .args(["--port", &fx.server.local_addr().port().to_string()])
        .args(["--device", id.as_str(), "--token", &token])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .kill_on_drop(true)
        .spawn()
        .expect("python with aiocoap (scripts/coap/interop.sh installs it)");
    let mut lines = BufReader::new(child.stdout.take().expect("stdout")).lines();
    let mut next_line = async || {
        tokio::time::timeout(PATIENCE, lines.next_line())
            .await
            .expect("the client answers in time")
            .expect("read")
            .expect("a line")
    };

    assert_eq!(next_line().await, "telemetry code=2.04 Changed");
    let records = fx.telemetry_of(&id).await;
    assert_eq!(records.len(), 1);
    let r = &records[0];
    assert_eq!(r.payload, &br#"{"temp": 21.5}"#[..]);
    assert_eq!(r.headers.get(header::DEVICE_ID), Some(id.as_str()));
    assert_eq!(r.headers.get(header::MESSAGE_ID), Some("aiocoap-1"));
    assert_eq!(
        r.headers.get(header::CONTENT_TYPE),
        Some("application/json")
    );
    assert_eq!(r.headers.get("temp"), Some("21.5"));
    assert_eq!(r.headers.get("unit"), Some("celsius"));

    let mut message = C2dMessage::new(&b"{\"cmd\":\"blink\"}"[..]);
    message.message_id = Some("c2d-aiocoap".into());
    message.properties.push(("priority".into(), "high".into()));
    message.ack = AckRequest::Positive;
    fx.hub.send_c2d(&id, message).await.expect("queue");

    assert_eq!(
        next_line().await,
        r#"c2d payload={"cmd":"blink"} mid=c2d-aiocoap priority=high"#
    );
    assert_eq!(next_line().await, "complete code=2.02 Deleted");

    // Observe: the next message arrives as a notification.
    assert_eq!(
        next_line().await,
        "observing code=2.05 Content observe=True"
    );
    let mut message = C2dMessage::new(&b"{\"cmd\":\"dim\"}"[..]);
    message.message_id = Some("c2d-observed".into());
    message.ack = AckRequest::Positive;
    fx.hub.send_c2d(&id, message).await.expect("queue");
    assert_eq!(
        next_line().await,
        r#"notification payload={"cmd":"dim"} mid=c2d-observed"#
    );
    assert_eq!(next_line().await, "complete code=2.02 Deleted");
    let status = tokio::time::timeout(PATIENCE, child.wait())
        .await
        .expect("the client exits")
        .expect("status");
    assert!(status.success(), "{status}");

    let feedback = fx.hub.read_feedback(0, 10).await.expect("feedback");
    let settled: Vec<_> = feedback
        .iter()
        .map(|f| (f.message_id.as_str(), f.status))
        .collect();
    assert_eq!(
        settled,
        vec![
            ("c2d-aiocoap", FeedbackStatus::Success),
            ("c2d-observed", FeedbackStatus::Success)
        ]
    );
    assert_eq!(fx.hub.pending_c2d(&id).await.expect("pending"), 0);
    fx.server.shutdown().await;
}
