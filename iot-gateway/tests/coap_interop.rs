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
use iot_gateway::adapter::{LOCK_TOKEN_PROPERTY, properties};
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

/// The command-line client of libcoap (Debian's `libcoap3-bin`, `coap-client-notls`), a C
/// implementation: telemetry with properties, then the C2D message by GET, completed by
/// DELETE with the lock token it printed (the property option shows in its verbose dump).
///
/// The token goes in with `-O 15,sas=…` (option 15 is Uri-Query): coap-client 4.3's URI
/// parser has a fixed option buffer that silently drops a query parameter as long as a SAS
/// token ("buffer too small for option").
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn libcoap_client_sends_telemetry_and_completes_a_c2d_message() {
    let fx = Fixture::start().await;
    let (id, token) = fx.device("libcoap").await;
    let base = format!(
        "coap://127.0.0.1:{}/devices/{id}/messages",
        fx.server.local_addr().port()
    );
    let run = async |args: &[&str]| {
        let output = tokio::time::timeout(
            PATIENCE,
            Command::new("coap-client-notls")
                .args(args)
                .stdin(Stdio::null())
                .kill_on_drop(true)
                .output(),
        )
        .await
        .expect("coap-client finished in time")
        .expect("coap-client (apt-get install libcoap3-bin)");
        assert!(output.status.success(), "{args:?}: {output:?}");
        (
            String::from_utf8_lossy(&output.stdout).into_owned(),
            String::from_utf8_lossy(&output.stderr).into_owned(),
        )
    };
    let sas_option = format!("15,sas={token}");
    let telemetry = format!("{base}/events?%24.mid=libcoap-1&temp=19");
    // coap-client exits 0 whatever the answer; its verbose dump (`-v 7`) shows the answer.
    let (dump, _) = run(&[
        "-v",
        "7",
        "-O",
        &sas_option,
        "-m",
        "post",
        "-t",
        "50",
        "-e",
        r#"{"temp":19}"#,
        &telemetry,
    ])
    .await;
    assert!(dump.contains("t:ACK c:2.04"), "{dump}");
    let records = fx.telemetry_of(&id).await;
    assert_eq!(records.len(), 1);
    let r = &records[0];
    assert_eq!(r.payload, &br#"{"temp":19}"#[..]);
    assert_eq!(r.headers.get(header::DEVICE_ID), Some(id.as_str()));
    assert_eq!(r.headers.get(header::MESSAGE_ID), Some("libcoap-1"));
    assert_eq!(
        r.headers.get(header::CONTENT_TYPE),
        Some("application/json")
    );
    assert_eq!(r.headers.get("temp"), Some("19"));

    let mut message = C2dMessage::new(&b"reboot"[..]);
    message.message_id = Some("c2d-libcoap".into());
    message.ack = AckRequest::Positive;
    fx.hub.send_c2d(&id, message).await.expect("queue");
    let (dump, _) = run(&[
        "-v",
        "7",
        "-O",
        &sas_option,
        "-m",
        "get",
        &format!("{base}/devicebound"),
    ])
    .await;
    let answer = dump
        .lines()
        .find(|l| l.contains("t:ACK c:2.05"))
        .unwrap_or_else(|| panic!("no 2.05 answer: {dump}"));
    assert!(answer.ends_with(":: 'reboot'"), "{answer}");
    // The property option, as the dump shows an unknown option: `65000:\xNN\xNN…`.
    let escaped = answer
        .split_once("65000:")
        .and_then(|(_, rest)| rest.split([' ', ',']).next())
        .unwrap_or_else(|| panic!("no property option: {answer}"));
    let bag = unescape_dump(escaped);
    let pairs = properties::decode_bag(&bag).expect("bag");
    let property = |name: &str| {
        pairs
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.clone())
            .unwrap_or_else(|| panic!("no {name} in {pairs:?}"))
    };
    assert_eq!(property("$.mid"), "c2d-libcoap");
    let lock = property(LOCK_TOKEN_PROPERTY);
    let (dump, _) = run(&[
        "-v",
        "7",
        "-O",
        &sas_option,
        "-m",
        "delete",
        &format!("{base}/devicebound/{lock}"),
    ])
    .await;
    assert!(dump.contains("t:ACK c:2.02"), "{dump}");

    let feedback = fx.hub.read_feedback(0, 10).await.expect("feedback");
    assert_eq!(feedback.len(), 1, "{feedback:?}");
    assert_eq!(feedback[0].message_id, "c2d-libcoap");
    assert_eq!(feedback[0].status, FeedbackStatus::Success);
    fx.server.shutdown().await;
}

/// libcoap's dump of option bytes: `\xNN` escapes (printable ASCII may stand as itself).
fn unescape_dump(text: &str) -> String {
    let mut bytes = Vec::new();
    let mut rest = text.as_bytes();
    while let Some((&b, tail)) = rest.split_first() {
        match (b, tail) {
            (b'\\', [b'x', hi, lo, more @ ..]) => {
                let hex = std::str::from_utf8(&[*hi, *lo]).expect("ascii").to_owned();
                bytes.push(u8::from_str_radix(&hex, 16).expect("hex escape"));
                rest = more;
            }
            _ => {
                bytes.push(b);
                rest = tail;
            }
        }
    }
    String::from_utf8(bytes).expect("UTF-8 property bag")
}
