//! The service REST API against a hub with memory stores: device identities, twins (tags are
//! the registry record), direct methods, the C2D purge and queries.
#![cfg(feature = "http")]

mod http_support;

use std::time::Duration;

use http_support::{API, HOST, Stack};
use iot_core::DeviceId;
use iot_gateway::{
    C2dMessage, DeviceSession, Gateway, MethodResponse, SessionEvent, SessionOptions, Subscription,
};
use iot_identity::{Presented, SymmetricKey, sas};
use serde_json::{Value, json};

fn id(s: &str) -> DeviceId {
    s.parse().expect("device id")
}

async fn create(stack: &Stack, device: &str) -> Value {
    let reply = stack
        .owner(
            "PUT",
            &format!("/devices/{device}?{API}"),
            Some(&json!({"deviceId": device})),
        )
        .await;
    assert_eq!(
        reply.status,
        200,
        "{}",
        String::from_utf8_lossy(&reply.body)
    );
    reply.json()
}

async fn connect(stack: &Stack, device: &str, key: &str) -> Box<dyn DeviceSession> {
    let key = SymmetricKey::from_base64(key).expect("key");
    let token = sas::generate(
        &format!("{HOST}/devices/{device}"),
        &key,
        sas::unix_now() + 600,
        None,
    )
    .expect("token");
    stack
        .hub
        .connect(
            &id(device),
            Presented::SasToken(token.as_str()),
            SessionOptions::default(),
        )
        .await
        .expect("connect")
}

fn primary_key(device: &Value) -> String {
    device["authentication"]["symmetricKey"]["primaryKey"]
        .as_str()
        .expect("primary key")
        .to_owned()
}

#[tokio::test]
async fn device_identity_lifecycle_with_etags() {
    let stack = Stack::start().await;
    let path = format!("/devices/d1?{API}");
    let created = create(&stack, "d1").await;
    assert_eq!(created["deviceId"], "d1");
    assert_eq!(created["status"], "enabled");
    assert_eq!(created["connectionState"], "Disconnected");
    assert_eq!(created["authentication"]["type"], "sas");
    assert!(SymmetricKey::from_base64(&primary_key(&created)).is_ok());
    let etag = created["etag"].as_str().expect("etag").to_owned();

    // Created through provisioning: an identity and a registry record.
    assert!(stack.registry.get(&id("d1")).await.unwrap().is_some());
    assert!(stack.identity.get(&id("d1")).await.unwrap().is_some());

    let again = stack
        .owner("PUT", &path, Some(&json!({"deviceId": "d1"})))
        .await;
    assert_eq!(again.status, 409);
    assert_eq!(again.error_code(), "DeviceAlreadyExists");

    let got = stack.owner("GET", &path, None).await;
    assert_eq!(got.status, 200);
    assert_eq!(got.json()["etag"], etag.as_str());

    // Disable with the current etag (quoted, as the SDKs send it); the etag changes.
    let quoted = format!("\"{etag}\"");
    let disabled = stack
        .call_with(
            "PUT",
            &path,
            "registryReadWrite",
            Some(&json!({"deviceId": "d1", "status": "disabled"})),
            &[("If-Match", &quoted)],
        )
        .await;
    assert_eq!(
        disabled.status,
        200,
        "{}",
        String::from_utf8_lossy(&disabled.body)
    );
    assert_eq!(disabled.json()["status"], "disabled");
    assert_ne!(disabled.json()["etag"], etag.as_str());
    let stale = stack
        .call_with(
            "PUT",
            &path,
            "iothubowner",
            Some(&json!({"status": "enabled"})),
            &[("If-Match", &quoted)],
        )
        .await;
    assert_eq!(stale.status, 412);
    assert_eq!(stale.error_code(), "PreconditionFailed");

    // Enable and set keys of our choosing with If-Match "*".
    let key = SymmetricKey::generate().expose_base64().to_string();
    let body = json!({"deviceId": "d1", "status": "enabled", "authentication": {"type": "sas", "symmetricKey": {"primaryKey": key, "secondaryKey": key}}});
    let updated = stack
        .call_with(
            "PUT",
            &path,
            "iothubowner",
            Some(&body),
            &[("If-Match", "\"*\"")],
        )
        .await;
    assert_eq!(
        updated.status,
        200,
        "{}",
        String::from_utf8_lossy(&updated.body)
    );
    assert_eq!(updated.json()["status"], "enabled");
    assert_eq!(primary_key(&updated.json()), key);

    let stale_delete = stack
        .call_with(
            "DELETE",
            &path,
            "iothubowner",
            None,
            &[("If-Match", &quoted)],
        )
        .await;
    assert_eq!(stale_delete.status, 412);
    let deleted = stack
        .call_with(
            "DELETE",
            &path,
            "iothubowner",
            None,
            &[("If-Match", "\"*\"")],
        )
        .await;
    assert_eq!(deleted.status, 204);
    let gone = stack.owner("GET", &path, None).await;
    assert_eq!(gone.status, 404);
    assert_eq!(gone.error_code(), "DeviceNotFound");
    assert!(stack.registry.get(&id("d1")).await.unwrap().is_none());
}

#[tokio::test]
async fn rights_decide_who_may_write_and_bad_input_is_400() {
    let stack = Stack::start().await;
    let path = format!("/devices/r1?{API}");
    let denied = stack
        .call_with(
            "PUT",
            &path,
            "registryRead",
            Some(&json!({"deviceId": "r1"})),
            &[],
        )
        .await;
    assert_eq!(denied.status, 403);
    assert_eq!(denied.error_code(), "IotHubUnauthorized");
    assert!(
        stack.registry.get(&id("r1")).await.unwrap().is_none(),
        "nothing written"
    );
    create(&stack, "r1").await;
    assert_eq!(
        stack
            .call_with("GET", &path, "registryRead", None, &[])
            .await
            .status,
        200
    );
    assert_eq!(
        stack
            .call_with("GET", &path, "service", None, &[])
            .await
            .status,
        403
    );

    for (path, body) in [
        (format!("/devices/r2?{API}"), json!({"deviceId": "other"})),
        (format!("/devices/r2?{API}"), json!({"status": "sleepy"})),
        (
            format!("/devices/r2?{API}"),
            json!({"authentication": {"type": "sas", "symmetricKey": {"primaryKey": "not base64!"}}}),
        ),
        (
            format!("/devices/r2?{API}"),
            // `certificateAuthority` is supported now (http_certificates.rs); others are not.
            json!({"authentication": {"type": "x509Fancy"}}),
        ),
        (format!("/devices/r2?{API}"), json!(["not", "an", "object"])),
        (format!("/devices/bad%20id?{API}"), json!({})),
    ] {
        let reply = stack.owner("PUT", &path, Some(&body)).await;
        assert_eq!(reply.status, 400, "{path} {body}");
        assert_eq!(reply.error_code(), "ArgumentInvalid");
    }
    assert!(stack.registry.get(&id("r2")).await.unwrap().is_none());
    // Not JSON at all, with a JSON content type.
    let mut stream = tokio::net::TcpStream::connect(stack.addr).await.unwrap();
    let token = stack.token("iothubowner");
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let request = format!(
        "PUT /devices/r3?{API} HTTP/1.1\r\nHost: {HOST}\r\nAuthorization: {token}\r\nContent-Type: application/json\r\nContent-Length: 5\r\nConnection: close\r\n\r\n{{oops"
    );
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut raw = String::new();
    stream.read_to_string(&mut raw).await.unwrap();
    assert!(raw.starts_with("HTTP/1.1 400"), "{raw}");
    assert!(raw.contains("ErrorCode:ArgumentInvalid"), "{raw}");
}

#[tokio::test]
async fn list_bulk_and_statistics() {
    let stack = Stack::start().await;
    let bulk = json!([
        {"id": "b1", "importMode": "create"},
        {"id": "b2", "importMode": "create", "status": "disabled"},
        {"id": "b3", "importMode": "create"},
        {"id": "b1", "importMode": "create"},
        {"id": "bad id", "importMode": "create"},
    ]);
    let reply = stack
        .owner("POST", &format!("/devices?{API}"), Some(&bulk))
        .await;
    assert_eq!(reply.status, 200);
    let result = reply.json();
    assert_eq!(result["isSuccessful"], false);
    let failed: Vec<&str> = result["errors"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["deviceId"].as_str().unwrap())
        .collect();
    assert_eq!(failed, ["b1", "bad id"]);
    assert_eq!(result["errors"][0]["errorCode"], "DeviceAlreadyExists");

    let list = stack
        .owner("GET", &format!("/devices?top=10&{API}"), None)
        .await;
    assert_eq!(list.status, 200);
    assert_eq!(ids(&list), ["b1", "b2", "b3"]);
    let stats = stack
        .owner("GET", &format!("/statistics/devices?{API}"), None)
        .await
        .json();
    assert_eq!(
        stats,
        json!({"totalDeviceCount": 3, "enabledDeviceCount": 2, "disabledDeviceCount": 1})
    );

    let delete = json!([{"id": "b2", "importMode": "delete"}, {"id": "b3", "importMode": "deleteIfMatchETag", "eTag": "nope"}]);
    let reply = stack
        .owner("POST", &format!("/devices?{API}"), Some(&delete))
        .await
        .json();
    assert_eq!(reply["errors"].as_array().unwrap().len(), 1);
    assert_eq!(reply["errors"][0]["errorCode"], "PreconditionFailed");
    let stats = stack
        .owner("GET", &format!("/statistics/devices?{API}"), None)
        .await
        .json();
    assert_eq!(stats["totalDeviceCount"], 2);

    let too_many: Vec<Value> = (0..101).map(|i| json!({"id": format!("x{i}")})).collect();
    let reply = stack
        .owner(
            "POST",
            &format!("/devices?{API}"),
            Some(&Value::Array(too_many)),
        )
        .await;
    assert_eq!(reply.status, 400);
}

#[tokio::test]
async fn twin_tags_are_the_registry_record_and_desired_reaches_the_device() {
    let stack = Stack::start().await;
    let device = create(&stack, "t1").await;
    let session = connect(&stack, "t1", &primary_key(&device)).await;
    session
        .subscribe(Subscription::DesiredPatches)
        .await
        .unwrap();
    session.patch_reported(json!({"fw": "1.0"})).await.unwrap();

    let path = format!("/twins/t1?{API}");
    let twin = stack.owner("GET", &path, None).await.json();
    for field in [
        "deviceId",
        "etag",
        "version",
        "status",
        "connectionState",
        "lastActivityTime",
        "cloudToDeviceMessageCount",
        "tags",
        "properties",
    ] {
        assert!(twin.get(field).is_some(), "{field} in {twin}");
    }
    assert_eq!(twin["connectionState"], "Connected");
    assert_eq!(twin["properties"]["reported"]["fw"], "1.0");
    assert_eq!(twin["properties"]["reported"]["$version"], 1);
    assert!(twin["properties"]["desired"]["$metadata"]["$lastUpdated"].is_string());
    let etag = twin["etag"].as_str().unwrap().to_owned();

    let patch = json!({"tags": {"building": "B7", "floor": 3}, "properties": {"desired": {"interval": 30}}});
    let patched = stack
        .call_with(
            "PATCH",
            &path,
            "service",
            Some(&patch),
            &[("If-Match", &format!("\"{etag}\""))],
        )
        .await;
    assert_eq!(
        patched.status,
        200,
        "{}",
        String::from_utf8_lossy(&patched.body)
    );
    let patched = patched.json();
    assert_eq!(patched["tags"], json!({"building": "B7", "floor": 3}));
    assert_eq!(patched["properties"]["desired"]["interval"], 30);
    assert_ne!(patched["etag"], etag.as_str());
    // One source of truth: the tags are the registry record's metadata.
    let record = stack.registry.get(&id("t1")).await.unwrap().unwrap();
    assert_eq!(
        Value::Object(record.metadata.clone()),
        json!({"building": "B7", "floor": 3})
    );
    // The device got the desired patch.
    let event = tokio::time::timeout(Duration::from_secs(10), session.next_event())
        .await
        .unwrap()
        .unwrap();
    let SessionEvent::DesiredPatch(p) = event else {
        panic!("{event:?}")
    };
    assert_eq!(p.patch, json!({"interval": 30}));

    // A stale etag changes nothing.
    let stale = stack
        .call_with(
            "PATCH",
            &path,
            "iothubowner",
            Some(&json!({"tags": {"floor": 4}})),
            &[("If-Match", &format!("\"{etag}\""))],
        )
        .await;
    assert_eq!(stale.status, 412);
    assert_eq!(
        stack
            .registry
            .get(&id("t1"))
            .await
            .unwrap()
            .unwrap()
            .metadata["floor"],
        3
    );

    // PUT replaces tags and desired; the registry follows.
    let replaced = stack
        .owner(
            "PUT",
            &path,
            Some(&json!({"tags": {"building": "B8"}, "properties": {"desired": {"mode": "eco"}}})),
        )
        .await;
    assert_eq!(replaced.status, 200);
    let replaced = replaced.json();
    assert_eq!(replaced["tags"], json!({"building": "B8"}));
    assert_eq!(replaced["properties"]["desired"]["mode"], "eco");
    assert!(replaced["properties"]["desired"].get("interval").is_none());
    let record = stack.registry.get(&id("t1")).await.unwrap().unwrap();
    assert_eq!(Value::Object(record.metadata), json!({"building": "B8"}));

    // registryRead may read, not write.
    assert_eq!(
        stack
            .call_with("GET", &path, "registryRead", None, &[])
            .await
            .status,
        200
    );
    assert_eq!(
        stack
            .call_with(
                "PATCH",
                &path,
                "registryRead",
                Some(&json!({"tags": {}})),
                &[]
            )
            .await
            .status,
        403
    );
    assert_eq!(
        stack
            .owner("GET", &format!("/twins/none?{API}"), None)
            .await
            .status,
        404
    );
    session.close().await;
}

#[tokio::test]
async fn direct_methods_answer_as_iot_hub_does() {
    let stack = Stack::start().await;
    let device = create(&stack, "m1").await;
    let path = format!("/twins/m1/methods?{API}");
    let call = json!({"methodName": "reboot", "payload": {"delay": 1}, "responseTimeoutInSeconds": 5, "connectTimeoutInSeconds": 0});
    let offline = stack
        .call_with("POST", &path, "service", Some(&call), &[])
        .await;
    assert_eq!(offline.status, 404);
    assert_eq!(offline.error_code(), "DeviceNotOnline");
    let unknown = stack
        .call_with(
            "POST",
            &format!("/twins/nobody/methods?{API}"),
            "service",
            Some(&call),
            &[],
        )
        .await;
    assert_eq!(unknown.error_code(), "DeviceNotFound");
    assert_eq!(
        stack
            .call_with("POST", &path, "registryReadWrite", Some(&call), &[])
            .await
            .status,
        403
    );
    let bad = json!({"methodName": "reboot", "responseTimeoutInSeconds": 1000});
    assert_eq!(stack.owner("POST", &path, Some(&bad)).await.status, 400);

    let session = connect(&stack, "m1", &primary_key(&device)).await;
    session.subscribe(Subscription::Methods).await.unwrap();
    let answering = async {
        let event = session.next_event().await.unwrap();
        let SessionEvent::Method(request) = event else {
            panic!("{event:?}")
        };
        assert_eq!(request.name, "reboot");
        let payload: Value = serde_json::from_slice(&request.payload).unwrap();
        assert_eq!(payload, json!({"delay": 1}));
        let response = MethodResponse {
            request_id: request.request_id,
            status: 201,
            payload: bytes::Bytes::from_static(b"{\"ok\":true}"),
        };
        session.respond_method(response).await.unwrap();
    };
    let (reply, ()) = tokio::join!(
        stack.call_with("POST", &path, "service", Some(&call), &[]),
        answering
    );
    assert_eq!(
        reply.status,
        200,
        "{}",
        String::from_utf8_lossy(&reply.body)
    );
    assert_eq!(
        reply.json(),
        json!({"status": 201, "payload": {"ok": true}})
    );

    // Connected but silent: 504 after the response timeout (5 s, IoT Hub's minimum).
    let silent = stack
        .call_with("POST", &path, "service", Some(&call), &[])
        .await;
    assert_eq!(silent.status, 504);
    assert_eq!(silent.error_code(), "GatewayTimeout");
    session.close().await;
}

#[tokio::test]
async fn purging_the_c2d_queue() {
    let stack = Stack::start().await;
    create(&stack, "c1").await;
    for _ in 0..2 {
        stack
            .hub
            .send_c2d(&id("c1"), C2dMessage::new(&b"x"[..]))
            .await
            .unwrap();
    }
    let twin = stack
        .owner("GET", &format!("/twins/c1?{API}"), None)
        .await
        .json();
    assert_eq!(twin["cloudToDeviceMessageCount"], 2);
    let path = format!("/devices/c1/commands?{API}");
    assert_eq!(
        stack
            .call_with("DELETE", &path, "registryReadWrite", None, &[])
            .await
            .status,
        403
    );
    let reply = stack.call_with("DELETE", &path, "service", None, &[]).await;
    assert_eq!(reply.status, 200);
    assert_eq!(reply.json()["totalMessagesPurged"], 2);
    let twin = stack
        .owner("GET", &format!("/twins/c1?{API}"), None)
        .await
        .json();
    assert_eq!(twin["cloudToDeviceMessageCount"], 0);
    assert_eq!(
        stack
            .owner("DELETE", &format!("/devices/nobody/commands?{API}"), None)
            .await
            .status,
        404
    );
}

async fn query(stack: &Stack, text: &str, headers: &[(&str, &str)]) -> http_support::Reply {
    stack
        .call_with(
            "POST",
            &format!("/devices/query?{API}"),
            "registryRead",
            Some(&json!({"query": text})),
            headers,
        )
        .await
}

fn ids(reply: &http_support::Reply) -> Vec<String> {
    reply
        .json()
        .as_array()
        .expect("an array")
        .iter()
        .map(|t| t["deviceId"].as_str().expect("deviceId").to_owned())
        .collect()
}

#[tokio::test]
async fn queries_over_tags_properties_status_and_connection_state() {
    let stack = Stack::start().await;
    let mut sessions = Vec::new();
    for (i, name) in ["q0", "q1", "q2", "q3", "q4"].iter().enumerate() {
        let device = create(&stack, name).await;
        let tags = json!({"tags": {"building": if i < 3 { "B7" } else { "B8" }, "floor": i}});
        assert_eq!(
            stack
                .owner("PATCH", &format!("/twins/{name}?{API}"), Some(&tags))
                .await
                .status,
            200
        );
        if i % 2 == 0 {
            let session = connect(&stack, name, &primary_key(&device)).await;
            session
                .patch_reported(json!({"fw": if i == 0 { "1.0" } else { "2.0" }}))
                .await
                .unwrap();
            sessions.push(session);
        }
    }
    stack
        .owner("PUT", &format!("/devices/q1?{API}"), None)
        .await; // no body: refused, changes nothing
    let disable = json!({"deviceId": "q1", "status": "disabled"});
    assert_eq!(
        stack
            .call_with(
                "PUT",
                &format!("/devices/q1?{API}"),
                "iothubowner",
                Some(&disable),
                &[("If-Match", "\"*\"")]
            )
            .await
            .status,
        200
    );

    let by_tag = query(
        &stack,
        "SELECT * FROM devices WHERE tags.building = 'B7'",
        &[],
    )
    .await;
    assert_eq!(by_tag.status, 200);
    assert_eq!(by_tag.header("x-ms-item-type"), Some("twin"));
    assert_eq!(ids(&by_tag), ["q0", "q1", "q2"]);
    assert_eq!(by_tag.json()[0]["tags"]["building"], "B7");

    let reported = query(
        &stack,
        "SELECT * FROM devices WHERE properties.reported.fw = '2.0'",
        &[],
    )
    .await;
    assert_eq!(ids(&reported), ["q2", "q4"]);
    let mixed = query(
        &stack,
        "SELECT * FROM devices WHERE tags.building = 'B7' AND properties.reported.fw = '2.0'",
        &[],
    )
    .await;
    assert_eq!(ids(&mixed), ["q2"]);
    let status = query(
        &stack,
        "SELECT * FROM devices WHERE status = 'disabled'",
        &[],
    )
    .await;
    assert_eq!(ids(&status), ["q1"]);
    let connected = query(
        &stack,
        "SELECT * FROM devices WHERE connectionState = 'Connected' AND tags.floor >= 1",
        &[],
    )
    .await;
    assert_eq!(ids(&connected), ["q2", "q4"]);

    let count = query(
        &stack,
        "SELECT COUNT() AS numberOfDevices FROM devices WHERE tags.building = 'B8'",
        &[],
    )
    .await;
    assert_eq!(count.json(), json!([{"numberOfDevices": 2}]));
    let count = query(
        &stack,
        "SELECT COUNT() AS n FROM devices WHERE IS_DEFINED(properties.reported.fw)",
        &[],
    )
    .await;
    assert_eq!(count.json(), json!([{"n": 3}]));
    let groups = query(&stack, "SELECT properties.reported.fw, COUNT() AS n FROM devices WHERE IS_DEFINED(properties.reported.fw) GROUP BY properties.reported.fw", &[]).await;
    assert_eq!(
        groups.json(),
        json!([{"fw": "1.0", "n": 1}, {"fw": "2.0", "n": 2}])
    );
    let groups = query(
        &stack,
        "SELECT tags.building, COUNT() AS n FROM devices GROUP BY tags.building",
        &[],
    )
    .await;
    assert_eq!(
        groups.json(),
        json!([{"building": "B7", "n": 3}, {"building": "B8", "n": 2}])
    );

    // Paging, on both paths.
    for text in [
        "SELECT * FROM devices",
        "SELECT * FROM devices WHERE status = 'enabled' OR status = 'disabled'",
    ] {
        let mut seen = Vec::new();
        let mut continuation: Option<String> = None;
        let mut pages = 0;
        loop {
            let mut headers = vec![("x-ms-max-item-count", "2")];
            if let Some(c) = &continuation {
                headers.push(("x-ms-continuation", c.as_str()));
            }
            let page = query(&stack, text, &headers).await;
            assert_eq!(page.status, 200);
            let got = ids(&page);
            assert!(got.len() <= 2);
            seen.extend(got);
            pages += 1;
            match page.header("x-ms-continuation") {
                Some(c) => continuation = Some(c.to_owned()),
                None => break,
            }
        }
        assert_eq!(seen, ["q0", "q1", "q2", "q3", "q4"], "{text}");
        assert_eq!(pages, 3, "{text}");
    }
    let huge = query(
        &stack,
        "SELECT * FROM devices",
        &[("x-ms-max-item-count", "99999999999")],
    )
    .await;
    assert_eq!(ids(&huge).len(), 5);
    assert_eq!(
        query(
            &stack,
            "SELECT * FROM devices",
            &[("x-ms-max-item-count", "-1")]
        )
        .await
        .status,
        400
    );
    let top = query(
        &stack,
        "SELECT TOP 2 * FROM devices WHERE status = 'enabled'",
        &[],
    )
    .await;
    assert_eq!(ids(&top), ["q0", "q2"]);

    for bad in [
        "SELECT * FROM devices WHERE",
        "SELECT * FROM devices.modules",
        "SELECT * FROM devices WHERE nothing.x = 1",
    ] {
        let reply = query(&stack, bad, &[]).await;
        assert_eq!(reply.status, 400, "{bad}");
        assert_eq!(reply.error_code(), "SqlQueryInvalid", "{bad}");
    }
    for s in sessions {
        s.close().await;
    }
}

#[tokio::test]
async fn c2d_over_rest_reaches_the_device_and_feedback_is_readable() {
    let stack = Stack::start().await;
    let device = create(&stack, "k1").await;
    let path = format!("/devices/k1/messages/cloudToDevice?{API}");
    let headers = [
        ("iothub-messageid", "msg-1"),
        ("iothub-correlationid", "corr-1"),
        ("iothub-ack", "full"),
        ("iothub-app-color", "red"),
        ("Content-Type", "text/plain"),
    ];
    assert_eq!(
        stack
            .call_raw("POST", &path, "registryReadWrite", b"hi", &headers)
            .await
            .status,
        403
    );
    let sent = stack
        .call_raw("POST", &path, "service", b"hello device", &headers)
        .await;
    assert_eq!(sent.status, 200, "{}", String::from_utf8_lossy(&sent.body));
    assert_eq!(sent.json()["messageId"], "msg-1");
    let bad_ack = stack
        .call_raw("POST", &path, "service", b"x", &[("iothub-ack", "maybe")])
        .await;
    assert_eq!(bad_ack.status, 400);
    let unknown = stack
        .call_raw(
            "POST",
            &format!("/devices/nobody/messages/cloudToDevice?{API}"),
            "service",
            b"x",
            &[],
        )
        .await;
    assert_eq!(unknown.status, 404);

    let session = connect(&stack, "k1", &primary_key(&device)).await;
    session.subscribe(Subscription::C2d).await.unwrap();
    let event = tokio::time::timeout(Duration::from_secs(10), session.next_event())
        .await
        .unwrap()
        .unwrap();
    let SessionEvent::C2d(delivery) = event else {
        panic!("{event:?}")
    };
    assert_eq!(delivery.message_id, "msg-1");
    assert_eq!(delivery.correlation_id.as_deref(), Some("corr-1"));
    assert_eq!(delivery.content_type.as_deref(), Some("text/plain"));
    assert_eq!(
        delivery.properties,
        [("color".to_owned(), "red".to_owned())]
    );
    assert_eq!(&delivery.payload[..], b"hello device");
    session.complete(delivery.lock_token).await.unwrap();

    let feedback_path = format!("/messages/serviceBound/feedback?from=0&max=10&{API}");
    let mut records = Value::Null;
    for _ in 0..100 {
        let reply = stack
            .call_with("GET", &feedback_path, "service", None, &[])
            .await;
        assert_eq!(reply.status, 200);
        records = reply.json();
        if records["records"].as_array().is_some_and(|r| !r.is_empty()) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(records["records"][0]["originalMessageId"], "msg-1");
    assert_eq!(records["records"][0]["deviceId"], "k1");
    assert_eq!(records["records"][0]["statusCode"], "Success");
    assert_eq!(records["next"], 1);
    session.close().await;
}

#[tokio::test]
async fn bodies_over_the_limit_are_413_and_change_nothing() {
    let stack =
        Stack::start_with(iot_gateway::http::HttpConfig::default().max_body_bytes(256)).await;
    let big = json!({"deviceId": "big", "padding": "x".repeat(1000)});
    let reply = stack
        .owner("PUT", &format!("/devices/big?{API}"), Some(&big))
        .await;
    assert_eq!(reply.status, 413);
    assert_eq!(reply.error_code(), "MessageTooLarge");
    assert!(stack.registry.get(&id("big")).await.unwrap().is_none());
    // A wrong content type is 415.
    let reply = stack
        .call_raw(
            "PUT",
            &format!("/devices/big?{API}"),
            "iothubowner",
            b"{}",
            &[("Content-Type", "text/plain")],
        )
        .await;
    assert_eq!(reply.status, 415);
    assert_eq!(reply.error_code(), "UnsupportedMediaType");
}
