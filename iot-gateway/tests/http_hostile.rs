//! Hostile and malformed input against the HTTP endpoint, over real sockets: oversized bodies
//! and headers, clients that trickle, malformed JSON, wrong content types, path tricks, absurd
//! page sizes. Each is a clear 4xx in IoT Hub's error shape (or a closed connection where HTTP
//! allows no answer), nothing is half-written, and other clients are served meanwhile.
#![cfg(feature = "http")]

mod http_support;

use std::time::{Duration, Instant};

use http_support::{API, HOST, Reply, Stack};
use iot_core::{Log as _, ReadLimits, partition_for_key};
use iot_gateway::http::HttpConfig;
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Writes `head` (and `body`) as they are, then reads to the end (or `limit`).
async fn exchange(stack: &Stack, head: &str, body: &[u8]) -> Vec<u8> {
    let mut stream = TcpStream::connect(stack.addr).await.expect("connect");
    stream.write_all(head.as_bytes()).await.expect("head");
    // The server may answer and close before the whole body is written: that is fine.
    let _ = stream.write_all(body).await;
    let mut raw = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(30), stream.read_to_end(&mut raw)).await;
    raw
}

fn status(raw: &[u8]) -> u16 {
    http_support::parse(raw).status
}

async fn device_count(stack: &Stack) -> u64 {
    let reply = stack
        .owner("GET", &format!("/statistics/devices?{API}"), None)
        .await;
    assert_eq!(reply.status, 200);
    reply.json()["totalDeviceCount"].as_u64().expect("count")
}

#[tokio::test]
async fn bodies_over_the_limit_are_413_and_write_nothing() {
    let stack = Stack::start_with(HttpConfig::default().max_body_bytes(64 * 1024)).await;
    let token = stack.token("iothubowner");
    // Declared too large: refused before it is read.
    let big = vec![b' '; 70 * 1024];
    let head = format!(
        "PUT /devices/big?{API} HTTP/1.1\r\nHost: {HOST}\r\nAuthorization: {token}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
        big.len()
    );
    let reply = http_support::parse(&exchange(&stack, &head, &big).await);
    assert_eq!(reply.status, 413);
    assert_eq!(reply.error_code(), "MessageTooLarge");
    // Chunked, no length: refused once it passes the limit.
    let mut chunked = Vec::new();
    for _ in 0..20 {
        chunked.extend_from_slice(format!("{:x}\r\n", 8 * 1024).as_bytes());
        chunked.extend_from_slice(&[b' '; 8 * 1024]);
        chunked.extend_from_slice(b"\r\n");
    }
    chunked.extend_from_slice(b"0\r\n\r\n");
    let head = format!(
        "PUT /devices/big?{API} HTTP/1.1\r\nHost: {HOST}\r\nAuthorization: {token}\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n"
    );
    let reply = http_support::parse(&exchange(&stack, &head, &chunked).await);
    assert_eq!(reply.status, 413);
    assert_eq!(reply.error_code(), "MessageTooLarge");
    assert_eq!(device_count(&stack).await, 0);

    // A device message over IoT Hub's 256 KiB (under the body limit here: 32 KiB limit).
    let stack = Stack::start_with(HttpConfig::default().max_message_bytes(32 * 1024)).await;
    stack
        .owner(
            "PUT",
            &format!("/devices/d1?{API}"),
            Some(&json!({"deviceId": "d1"})),
        )
        .await;
    let policy = stack.policies.get("device").expect("policy");
    let device_token = http_support::token_for(
        &format!("{HOST}/devices/d1"),
        &policy.primary,
        "device",
        600,
    );
    let payload = vec![b'x'; 33 * 1024];
    let head = format!(
        "POST /devices/d1/messages/events?{API} HTTP/1.1\r\nHost: {HOST}\r\nAuthorization: {device_token}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        payload.len()
    );
    let reply = http_support::parse(&exchange(&stack, &head, &payload).await);
    assert_eq!(reply.status, 413);
    assert_eq!(reply.error_code(), "MessageTooLarge");
    let log = stack.hub.telemetry_log();
    let p = partition_for_key("d1", log.partition_count());
    let earliest = log.earliest_offset(p).await.expect("earliest");
    let written = log
        .read(p, earliest, ReadLimits::default())
        .await
        .expect("read");
    assert!(written.is_empty(), "nothing reached the log");
}

#[tokio::test]
async fn too_many_or_too_large_headers_are_431() {
    let stack = Stack::start().await;
    let mut head = format!("GET /statistics/devices?{API} HTTP/1.1\r\nHost: {HOST}\r\n");
    for i in 0..100 {
        head.push_str(&format!("x-filler-{i}: {i}\r\n"));
    }
    head.push_str("Connection: close\r\n\r\n");
    assert_eq!(status(&exchange(&stack, &head, b"").await), 431);

    let head = format!(
        "GET /statistics/devices?{API} HTTP/1.1\r\nHost: {HOST}\r\nx-big: {}\r\nConnection: close\r\n\r\n",
        "a".repeat(64 * 1024)
    );
    let raw = exchange(&stack, &head, b"").await;
    assert_eq!(status(&raw), 431);
    // The server is still serving.
    assert_eq!(device_count(&stack).await, 0);
}

#[tokio::test]
async fn a_slow_loris_is_cut_off_and_others_are_served() {
    let config = HttpConfig::default()
        .header_read_timeout(Duration::from_millis(800))
        .body_read_timeout(Duration::from_millis(800));
    let stack = Stack::start_with(config).await;

    // Headers trickling in one byte at a time, slower than the timeout allows in total.
    let addr = stack.addr;
    let loris = tokio::spawn(async move {
        let mut stream = TcpStream::connect(addr).await.expect("connect");
        let head = format!("GET /statistics/devices?{API} HTTP/1.1\r\nHost: {HOST}\r\nx-slow: ");
        stream.write_all(head.as_bytes()).await.expect("start");
        let started = Instant::now();
        loop {
            tokio::time::sleep(Duration::from_millis(100)).await;
            if stream.write_all(b"a").await.is_err() {
                return started.elapsed();
            }
            let mut probe = [0u8; 512];
            match tokio::time::timeout(Duration::from_millis(1), stream.read(&mut probe)).await {
                Ok(Ok(0)) | Ok(Err(_)) => return started.elapsed(),
                _ => {}
            }
            assert!(
                started.elapsed() < Duration::from_secs(20),
                "the slow client was never cut off"
            );
        }
    });

    // A body trickling in: 408 in IoT Hub's shape, then the connection closes.
    let token = stack.token("iothubowner");
    let mut stream = TcpStream::connect(stack.addr).await.expect("connect");
    let head = format!(
        "PUT /devices/slow?{API} HTTP/1.1\r\nHost: {HOST}\r\nAuthorization: {token}\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{{\"deviceId\""
    );
    stream.write_all(head.as_bytes()).await.expect("head");

    // Meanwhile others are served.
    for _ in 0..5 {
        assert_eq!(device_count(&stack).await, 0);
    }

    let mut raw = Vec::new();
    tokio::time::timeout(Duration::from_secs(20), stream.read_to_end(&mut raw))
        .await
        .expect("the server ends the slow body")
        .expect("read");
    let reply: Reply = http_support::parse(&raw);
    assert_eq!(reply.status, 408);
    assert_eq!(reply.error_code(), "RequestTimeout");

    loris.await.expect("loris");
    assert_eq!(device_count(&stack).await, 0, "nothing half-written");
}

#[tokio::test]
async fn malformed_json_and_wrong_content_types_are_400_and_415() {
    let stack = Stack::start().await;
    let path = format!("/devices/j1?{API}");
    for (body, headers, want, code) in [
        (
            &b"{\"deviceId\":"[..],
            vec![("Content-Type", "application/json")],
            400,
            "ArgumentInvalid",
        ),
        (
            b"[1,2,3]",
            vec![("Content-Type", "application/json")],
            400,
            "ArgumentInvalid",
        ),
        (
            b"{\"deviceId\":\"j1\",\"status\":42}",
            vec![("Content-Type", "application/json")],
            400,
            "ArgumentInvalid",
        ),
        (
            b"{\"deviceId\":\"j1\"}",
            vec![("Content-Type", "text/plain")],
            415,
            "UnsupportedMediaType",
        ),
        (
            b"{\"deviceId\":\"j1\"}",
            vec![],
            415,
            "UnsupportedMediaType",
        ),
        (
            b"\xff\xfe{}",
            vec![("Content-Type", "application/json")],
            400,
            "ArgumentInvalid",
        ),
    ] {
        let reply = stack
            .call_raw("PUT", &path, "iothubowner", body, &headers)
            .await;
        assert_eq!(
            reply.status,
            want,
            "{} → {}",
            String::from_utf8_lossy(body),
            String::from_utf8_lossy(&reply.body)
        );
        assert_eq!(reply.error_code(), code);
    }
    // Twins and queries too.
    for (method, path) in [
        ("PATCH", format!("/twins/j1?{API}")),
        ("POST", format!("/devices/query?{API}")),
        ("POST", format!("/twins/j1/methods?{API}")),
    ] {
        let reply = stack
            .call_raw(
                method,
                &path,
                "iothubowner",
                b"{oops",
                &[("Content-Type", "application/json")],
            )
            .await;
        assert_eq!(reply.status, 400, "{method} {path}");
        assert_eq!(reply.error_code(), "ArgumentInvalid");
    }
    assert_eq!(device_count(&stack).await, 0);
}

#[tokio::test]
async fn path_tricks_are_refused_in_iot_hubs_shape() {
    let stack = Stack::start().await;
    let body = json!({"deviceId": "x"});
    for path in [
        "/devices/a%2Fb",
        "/devices/..",
        "/devices/%2E%2E",
        "/devices/..%2F..%2Fstatistics",
        "/devices/a%00b",
        "/devices/a%20b",
        "/devices/%",
        "/devices/%zz",
        "/devices/%C3%28",
    ] {
        let reply = stack
            .owner("PUT", &format!("{path}?{API}"), Some(&body))
            .await;
        assert!(
            (400..500).contains(&reply.status),
            "{path}: {}",
            reply.status
        );
        reply.error_code();
    }
    let long = "a".repeat(200);
    for path in [
        format!("/devices/{long}"),
        format!("/twins/{long}"),
        "/twins/..".to_owned(),
        "/twins/a%2Fb/methods".to_owned(),
    ] {
        let reply = stack.owner("GET", &format!("{path}?{API}"), None).await;
        assert!(
            (400..500).contains(&reply.status),
            "{path}: {}",
            reply.status
        );
        reply.error_code();
    }
    // The device API checks the same way (the device must exist and match the token anyway).
    let reply = stack
        .call_raw(
            "POST",
            &format!("/devices/..%2Fx/messages/events?{API}"),
            "iothubowner",
            b"x",
            &[],
        )
        .await;
    assert!((400..500).contains(&reply.status));
    reply.error_code();
    assert_eq!(device_count(&stack).await, 0, "nothing was created");
}

#[tokio::test]
async fn query_paging_headers_and_query_strings_are_checked() {
    let stack = Stack::start().await;
    let query = json!({"query": "SELECT * FROM devices"});
    let path = format!("/devices/query?{API}");
    // Far beyond the page limit: lowered to it.
    let reply = stack
        .call_with(
            "POST",
            &path,
            "iothubowner",
            Some(&query),
            &[("x-ms-max-item-count", "1000000000")],
        )
        .await;
    assert_eq!(reply.status, 200);
    // Not a number, negative, zero, beyond u64: 400.
    for count in ["lots", "-1", "0", "99999999999999999999999"] {
        let reply = stack
            .call_with(
                "POST",
                &path,
                "iothubowner",
                Some(&query),
                &[("x-ms-max-item-count", count)],
            )
            .await;
        assert_eq!(reply.status, 400, "{count}");
        assert_eq!(reply.error_code(), "ArgumentInvalid");
    }
    // A garbage continuation token.
    let reply = stack
        .call_with(
            "POST",
            &path,
            "iothubowner",
            Some(&query),
            &[("x-ms-continuation", "%%%not-a-token")],
        )
        .await;
    assert_eq!(reply.status, 400);
    reply.error_code();
    // A query string that does not deserialize: axum's rejection, in IoT Hub's shape.
    let reply = stack
        .owner(
            "GET",
            &format!("/messages/serviceBound/feedback?from=abc&{API}"),
            None,
        )
        .await;
    assert_eq!(reply.status, 400);
    assert_eq!(reply.error_code(), "ArgumentInvalid");
}

#[tokio::test]
async fn twin_documents_over_their_limits_change_nothing() {
    let stack = Stack::start().await;
    let created = stack
        .owner(
            "PUT",
            &format!("/devices/tw1?{API}"),
            Some(&json!({"deviceId": "tw1"})),
        )
        .await;
    assert_eq!(created.status, 200);
    let path = format!("/twins/tw1?{API}");
    let before = stack.owner("GET", &path, None).await.json();
    // Desired properties over the hub's 32 KiB section limit, tags over the registry's
    // document limit, and nesting deeper than allowed.
    let mut deep = json!(1);
    for _ in 0..40 {
        deep = json!({ "d": deep });
    }
    for patch in [
        json!({"properties": {"desired": {"big": "x".repeat(40 * 1024)}}}),
        json!({"tags": {"big": "x".repeat(600 * 1024)}}),
        json!({"properties": {"desired": {"deep": deep.clone()}}}),
        json!({"tags": {"deep": deep}}),
    ] {
        let reply = stack.owner("PATCH", &path, Some(&patch)).await;
        assert!(
            reply.status == 413 || reply.status == 400,
            "{}: {}",
            reply.status,
            String::from_utf8_lossy(&reply.body)
        );
        reply.error_code();
    }
    let after = stack.owner("GET", &path, None).await.json();
    assert_eq!(after["etag"], before["etag"]);
    assert_eq!(after["tags"], before["tags"]);
    assert_eq!(
        after["properties"]["desired"]["$version"],
        before["properties"]["desired"]["$version"]
    );
}

#[tokio::test]
async fn silent_and_idle_keep_alive_connections_are_closed() {
    let stack =
        Stack::start_with(HttpConfig::default().header_read_timeout(Duration::from_millis(500)))
            .await;
    // Connects and says nothing.
    let mut silent = TcpStream::connect(stack.addr).await.expect("connect");
    // One request with keep-alive, then nothing.
    let mut idle = TcpStream::connect(stack.addr).await.expect("connect");
    let token = stack.token("iothubowner");
    let head = format!(
        "GET /statistics/devices?{API} HTTP/1.1\r\nHost: {HOST}\r\nAuthorization: {token}\r\n\r\n"
    );
    idle.write_all(head.as_bytes()).await.expect("request");
    for stream in [&mut silent, &mut idle] {
        let mut raw = Vec::new();
        tokio::time::timeout(Duration::from_secs(20), stream.read_to_end(&mut raw))
            .await
            .expect("the server closes the connection")
            .expect("read");
    }
    // Closed, and the server goes on serving.
    assert_eq!(device_count(&stack).await, 0);
}
