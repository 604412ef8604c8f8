//! IoT Hub's HTTPS device API against a hub with memory stores, over real sockets: telemetry
//! (headers and batches) lands in the telemetry log with its properties, C2D messages are
//! received, completed, abandoned and rejected across separate requests, and tokens are checked.
#![cfg(feature = "http")]

mod http_support;

use std::sync::Arc;
use std::time::Duration;

use http_support::{API, HOST, Reply, Stack, token_for};
use iot_core::{DeviceId, Log, ReadLimits, Record, partition_for_key};
use iot_gateway::message::header;
use iot_gateway::{AckRequest, C2dMessage, Gateway};
use iot_identity::{SymmetricKey, sas};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

fn id(s: &str) -> DeviceId {
    s.parse().expect("device id")
}

/// Creates `device` over the service API and returns a device token for it.
async fn device(stack: &Stack, device: &str) -> String {
    let reply = stack
        .owner(
            "PUT",
            &format!("/devices/{device}?{API}"),
            Some(&json!({"deviceId": device})),
        )
        .await;
    assert_eq!(reply.status, 200);
    let key = reply.json()["authentication"]["symmetricKey"]["primaryKey"]
        .as_str()
        .expect("key")
        .to_owned();
    let key = SymmetricKey::from_base64(&key).expect("key");
    sas::generate(
        &format!("{HOST}/devices/{device}"),
        &key,
        sas::unix_now() + 600,
        None,
    )
    .expect("token")
    .as_str()
    .to_owned()
}

/// A request with a raw body and `token`.
async fn raw(
    stack: &Stack,
    method: &str,
    path: &str,
    token: &str,
    body: &[u8],
    headers: &[(&str, &str)],
) -> Reply {
    let mut stream = TcpStream::connect(stack.addr).await.expect("connect");
    let mut request = format!(
        "{method} {path} HTTP/1.1\r\nHost: {HOST}\r\nConnection: close\r\nAuthorization: {token}\r\n"
    );
    for (name, value) in headers {
        request.push_str(&format!("{name}: {value}\r\n"));
    }
    request.push_str(&format!("Content-Length: {}\r\n\r\n", body.len()));
    stream.write_all(request.as_bytes()).await.expect("write");
    stream.write_all(body).await.expect("write body");
    let mut bytes = Vec::new();
    tokio::time::timeout(Duration::from_secs(30), stream.read_to_end(&mut bytes))
        .await
        .expect("answer in time")
        .expect("read");
    http_support::parse(&bytes)
}

async fn records_of(log: &Arc<dyn Log>, key: &str) -> Vec<Record> {
    let p = partition_for_key(key, log.partition_count());
    log.read(
        p,
        log.earliest_offset(p).await.expect("earliest"),
        ReadLimits::default(),
    )
    .await
    .expect("read")
    .into_iter()
    .filter(|r| r.record.key == key)
    .map(|r| r.record)
    .collect()
}

fn events(device: &str) -> String {
    format!("/devices/{device}/messages/events?{API}")
}

#[tokio::test]
async fn telemetry_headers_become_the_mqtt_endpoints_properties() {
    let stack = Stack::start().await;
    let token = device(&stack, "t1").await;
    let reply = raw(
        &stack,
        "POST",
        &events("t1"),
        &token,
        b"{\"temp\":21}",
        &[
            ("IoTHub-MessageId", "m-1"),
            ("IoTHub-CorrelationId", "c-1"),
            ("iothub-contenttype", "application/json"),
            ("iothub-contentencoding", "utf-8"),
            ("iothub-app-site", "north"),
            ("iothub-to", "/devices/t1/messages/events"),
            ("iothub-connection-device-id", "someone-else"),
        ],
    )
    .await;
    assert_eq!(
        reply.status,
        204,
        "{}",
        String::from_utf8_lossy(&reply.body)
    );
    let records = records_of(stack.hub.telemetry_log(), "t1").await;
    assert_eq!(records.len(), 1);
    let h = &records[0].headers;
    assert_eq!(h.get(header::MESSAGE_ID), Some("m-1"));
    assert_eq!(h.get(header::CORRELATION_ID), Some("c-1"));
    assert_eq!(h.get(header::CONTENT_TYPE), Some("application/json"));
    assert_eq!(h.get(header::CONTENT_ENCODING), Some("utf-8"));
    assert_eq!(h.get("site"), Some("north"));
    // The stamp is the hub's, whatever the device sent.
    assert_eq!(h.get(header::DEVICE_ID), Some("t1"));
    assert!(
        h.get(header::AUTH_METHOD)
            .is_some_and(|m| m.contains("\"sas\""))
    );
    assert_eq!(&records[0].payload[..], b"{\"temp\":21}");

    // A reserved custom property name is refused, and nothing is written.
    let refused = raw(
        &stack,
        "POST",
        &events("t1"),
        &token,
        b"x",
        &[("iothub-app-$bad", "1")],
    )
    .await;
    assert_eq!(refused.status, 400);
    assert_eq!(refused.error_code(), "ArgumentInvalid");
    assert_eq!(records_of(stack.hub.telemetry_log(), "t1").await.len(), 1);
}

#[tokio::test]
async fn batches_are_sent_whole_or_not_at_all() {
    let stack = Stack::start().await;
    let token = device(&stack, "b1").await;
    let batch = json!([
        {"body": "b25l", "properties": {"iothub-app-n": "1", "iothub-messageid": "one"}},
        {"body": "two", "base64Encoded": false, "properties": {"iothub-app-n": "2"}},
    ]);
    let ct = [("Content-Type", "application/vnd.microsoft.iothub.json")];
    let reply = raw(
        &stack,
        "POST",
        &events("b1"),
        &token,
        batch.to_string().as_bytes(),
        &ct,
    )
    .await;
    assert_eq!(
        reply.status,
        204,
        "{}",
        String::from_utf8_lossy(&reply.body)
    );
    let records = records_of(stack.hub.telemetry_log(), "b1").await;
    assert_eq!(records.len(), 2);
    assert_eq!(&records[0].payload[..], b"one");
    assert_eq!(records[0].headers.get(header::MESSAGE_ID), Some("one"));
    assert_eq!(&records[1].payload[..], b"two");
    assert_eq!(records[1].headers.get("n"), Some("2"));

    // The second message is bad: the first is not sent either.
    let bad = json!([
        {"body": "b2s=", "properties": {"iothub-app-n": "3"}},
        {"body": "b2s=", "properties": {"iothub-app-$x": "4"}},
    ]);
    for body in [
        bad.to_string().into_bytes(),
        b"[{\"body\": 1}]".to_vec(),
        b"not json".to_vec(),
    ] {
        let reply = raw(&stack, "POST", &events("b1"), &token, &body, &ct).await;
        assert_eq!(reply.status, 400, "{}", String::from_utf8_lossy(&body));
        assert_eq!(reply.error_code(), "ArgumentInvalid");
    }
    assert_eq!(records_of(stack.hub.telemetry_log(), "b1").await.len(), 2);
}

#[tokio::test]
async fn device_tokens_are_checked() {
    let stack = Stack::start().await;
    let token = device(&stack, "a1").await;
    device(&stack, "a2").await;
    // Another device's token, a service token, no token: 401.
    for token in [token.as_str(), &stack.token("iothubowner"), ""] {
        let reply = raw(&stack, "POST", &events("a2"), token, b"x", &[]).await;
        assert_eq!(reply.status, 401);
        assert_eq!(reply.error_code(), "IotHubUnauthorizedAccess");
    }
    // A DeviceConnect policy token for the device, signed for host:port, opens a session.
    let policy = stack.policies.get("device").expect("device policy");
    let by_policy = token_for(
        &format!("{HOST}:{}/devices/a2", stack.addr.port()),
        &policy.primary,
        "device",
        600,
    );
    let reply = raw(&stack, "POST", &events("a2"), &by_policy, b"x", &[]).await;
    assert_eq!(
        reply.status,
        204,
        "{}",
        String::from_utf8_lossy(&reply.body)
    );
    // A policy without DeviceConnect cannot speak for a device.
    let service = stack.policies.get("service").expect("service policy");
    let wrong = token_for(
        &format!("{HOST}/devices/a2"),
        &service.primary,
        "service",
        600,
    );
    let reply = raw(&stack, "POST", &events("a2"), &wrong, b"x", &[]).await;
    assert_eq!(reply.status, 401);
    assert_eq!(records_of(stack.hub.telemetry_log(), "a2").await.len(), 1);
}

fn bound(device: &str, suffix: &str) -> String {
    format!("/devices/{device}/messages/deviceBound{suffix}?{API}")
}

async fn feedback(stack: &Stack, want: usize) -> Value {
    let path = format!("/messages/serviceBound/feedback?from=0&max=10&{API}");
    let mut records = Value::Null;
    for _ in 0..100 {
        records = stack.owner("GET", &path, None).await.json();
        if records["records"].as_array().map_or(0, Vec::len) >= want {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    records
}

#[tokio::test]
async fn c2d_is_received_completed_abandoned_and_rejected_across_requests() {
    let stack = Stack::start().await;
    let token = device(&stack, "c1").await;
    let empty = raw(&stack, "GET", &bound("c1", ""), &token, b"", &[]).await;
    assert_eq!(empty.status, 204);

    let mut message = C2dMessage::new(&b"open the valve"[..]);
    message.message_id = Some("cmd-1".into());
    message.correlation_id = Some("corr-1".into());
    message.ack = AckRequest::Full;
    message.properties = vec![("valve".into(), "3".into())];
    stack
        .hub
        .send_c2d(&id("c1"), message)
        .await
        .expect("send c2d");

    // The Node SDK writes the path in lower case.
    let got = raw(
        &stack,
        "GET",
        &format!("/devices/c1/messages/devicebound?{API}"),
        &token,
        b"",
        &[],
    )
    .await;
    assert_eq!(got.status, 200, "{}", String::from_utf8_lossy(&got.body));
    assert_eq!(&got.body[..], b"open the valve");
    assert_eq!(got.header("iothub-messageid"), Some("cmd-1"));
    assert_eq!(got.header("iothub-correlationid"), Some("corr-1"));
    assert_eq!(got.header("iothub-app-valve"), Some("3"));
    assert_eq!(got.header("iothub-deliverycount"), Some("1"));
    assert_eq!(got.header("iothub-ack"), Some("full"));
    let etag = got.header("etag").expect("etag").to_owned();
    assert!(etag.starts_with('"') && etag.ends_with('"'), "{etag}");
    let lock = etag.trim_matches('"').to_owned();

    // Locked: a second GET finds nothing to hand out.
    let locked = raw(&stack, "GET", &bound("c1", ""), &token, b"", &[]).await;
    assert_eq!(locked.status, 204);

    // Abandon, receive again (second delivery), reject.
    let abandoned = raw(
        &stack,
        "POST",
        &bound("c1", &format!("/{lock}/abandon")),
        &token,
        b"",
        &[],
    )
    .await;
    assert_eq!(abandoned.status, 204);
    let again = raw(&stack, "GET", &bound("c1", ""), &token, b"", &[]).await;
    assert_eq!(again.status, 200);
    assert_eq!(again.header("iothub-deliverycount"), Some("2"));
    let lock = again
        .header("etag")
        .expect("etag")
        .trim_matches('"')
        .to_owned();
    // Settling the first delivery's lock is too late.
    let stale = raw(
        &stack,
        "DELETE",
        &bound("c1", &format!("/{}", etag.trim_matches('"'))),
        &token,
        b"",
        &[],
    )
    .await;
    assert_eq!(stale.status, 412);
    assert_eq!(stale.error_code(), "DeviceMessageLockLost");
    let path = format!("/devices/c1/messages/deviceBound/{lock}?{API}&reject");
    let rejected = raw(&stack, "DELETE", &path, &token, b"", &[]).await;
    assert_eq!(rejected.status, 204);
    let records = feedback(&stack, 1).await;
    assert_eq!(records["records"][0]["originalMessageId"], "cmd-1");
    assert_eq!(records["records"][0]["statusCode"], "Rejected");

    // A second message, completed with the quoted ETag as the Node SDK sends it.
    let mut message = C2dMessage::new(&b"close it"[..]);
    message.message_id = Some("cmd-2".into());
    message.ack = AckRequest::Positive;
    stack.hub.send_c2d(&id("c1"), message).await.expect("send");
    let got = raw(&stack, "GET", &bound("c1", ""), &token, b"", &[]).await;
    assert_eq!(got.status, 200);
    let etag = got.header("etag").expect("etag").to_owned();
    let encoded = etag.replace('"', "%22");
    let done = raw(
        &stack,
        "DELETE",
        &bound("c1", &format!("/{encoded}")),
        &token,
        b"",
        &[("If-Match", &etag)],
    )
    .await;
    assert_eq!(done.status, 204, "{}", String::from_utf8_lossy(&done.body));
    let records = feedback(&stack, 2).await;
    assert_eq!(records["records"][1]["originalMessageId"], "cmd-2");
    assert_eq!(records["records"][1]["statusCode"], "Success");
    // Settled already, and a token that was never handed out.
    for lock in [encoded.as_str(), "garbage", "999.1"] {
        let reply = raw(
            &stack,
            "DELETE",
            &bound("c1", &format!("/{lock}")),
            &token,
            b"",
            &[],
        )
        .await;
        assert_eq!(reply.status, 412, "{lock}");
    }
    assert_eq!(stack.hub.pending_c2d(&id("c1")).await.expect("pending"), 0);
}

#[tokio::test]
async fn idle_sessions_close_and_a_taken_over_session_is_reopened() {
    let stack = Stack::start_with(
        iot_gateway::http::HttpConfig::default().device_session_idle(Duration::from_millis(300)),
    )
    .await;
    let token = device(&stack, "i1").await;
    let sent = raw(&stack, "POST", &events("i1"), &token, b"1", &[]).await;
    assert_eq!(sent.status, 204);
    assert!(stack.hub.is_connected(&id("i1")).await.expect("connected"));
    // Unused for longer than the idle time: the sweep closes it.
    let mut closed = false;
    for _ in 0..100 {
        tokio::time::sleep(Duration::from_millis(50)).await;
        if !stack.hub.is_connected(&id("i1")).await.expect("connected") {
            closed = true;
            break;
        }
    }
    assert!(closed, "the idle HTTP session was not closed");

    // Another session of the device takes the cached one over; the next request reopens.
    let sent = raw(&stack, "POST", &events("i1"), &token, b"2", &[]).await;
    assert_eq!(sent.status, 204);
    let key = match &stack
        .identity
        .get(&id("i1"))
        .await
        .expect("get")
        .expect("identity")
        .credentials
    {
        iot_identity::Credentials::SymmetricKeys { primary, .. } => primary.clone(),
        other => panic!("{other:?}"),
    };
    let other = sas::generate(
        &format!("{HOST}/devices/i1"),
        &key,
        sas::unix_now() + 600,
        None,
    )
    .expect("token");
    let taker = stack
        .hub
        .connect(
            &id("i1"),
            iot_identity::Presented::SasToken(other.as_str()),
            iot_gateway::SessionOptions::default(),
        )
        .await
        .expect("connect");
    let sent = raw(&stack, "POST", &events("i1"), &token, b"3", &[]).await;
    assert_eq!(sent.status, 204, "{}", String::from_utf8_lossy(&sent.body));
    assert!(
        taker.close_reason().is_some(),
        "the HTTP request took it back"
    );
    assert_eq!(records_of(stack.hub.telemetry_log(), "i1").await.len(), 3);
}
