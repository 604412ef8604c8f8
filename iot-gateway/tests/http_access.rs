//! User sessions of the access matrix on the service REST API: a bearer token accepted beside
//! shared access policies, each route's permission checked for the device it targets.
#![cfg(feature = "http")]

mod http_support;

use std::sync::Arc;

use http_support::{API, HOST, Stack};
use iot_core::DeviceId;
use iot_gateway::{
    DeviceSession, Gateway, MethodResponse, SessionEvent, SessionOptions, Subscription,
};
use iot_identity::access::{
    AccessConfig, AccessControl, DeviceSet, Grant, MemoryAccessStore, MemoryAuditSink,
    StaticDeviceSets,
};
use iot_identity::{PassphraseParams, Presented, SymmetricKey, sas};
use serde_json::{Value, json};

fn id(s: &str) -> DeviceId {
    s.parse().expect("device id")
}

async fn create(stack: &Stack, device: &str) -> String {
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
    reply.json()["authentication"]["symmetricKey"]["primaryKey"]
        .as_str()
        .expect("primary key")
        .to_owned()
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

/// Answers one direct method call on `session` with status 200.
async fn answer_one(session: &dyn DeviceSession) {
    let event = session.next_event().await.expect("event");
    let SessionEvent::Method(request) = event else {
        panic!("{event:?}")
    };
    session
        .respond_method(MethodResponse {
            request_id: request.request_id,
            status: 200,
            payload: bytes::Bytes::from_static(b"{\"rebooted\":true}"),
        })
        .await
        .expect("respond");
}

#[tokio::test]
async fn a_viewer_gets_403_on_a_method_and_an_operator_invokes_it() {
    let stack = Stack::start().await;
    let key = create(&stack, "pump-1").await;
    create(&stack, "fan-1").await;
    let audit = MemoryAuditSink::new();
    let access = AccessControl::new(
        Arc::new(MemoryAccessStore::new()),
        Arc::new(StaticDeviceSets::new()),
    )
    .with_audit(Arc::new(audit.clone()))
    .with_config(AccessConfig::default().password_params(PassphraseParams::INSECURE_FOR_TESTS))
    .expect("config");
    for (user, role, devices) in [
        ("vera", "viewer", DeviceSet::All),
        ("olga", "operator", DeviceSet::Device(id("pump-1"))),
    ] {
        access
            .create_user(user.parse().expect("name"), &format!("{user}'s password"))
            .await
            .expect("user");
        access
            .grant(Grant::new(
                user.parse().expect("name"),
                role.parse().expect("role"),
                devices,
            ))
            .await
            .expect("grant");
    }
    let (vera, _) = access
        .login("vera", "vera's password")
        .await
        .expect("login");
    let (olga, _) = access
        .login("olga", "olga's password")
        .await
        .expect("login");
    let vera = format!("Bearer {}", vera.expose());
    let olga = format!("Bearer {}", olga.expose());

    // Before the hub accepts user sessions, a bearer token is just unauthorized.
    let twin = format!("/twins/pump-1?{API}");
    assert_eq!(
        stack.call("GET", &twin, Some(&vera), None).await.status,
        401
    );
    let _ = stack.state.clone().with_access(access.clone());

    let call = json!({"methodName": "reboot", "payload": {}, "responseTimeoutInSeconds": 5});
    let method = format!("/twins/pump-1/methods?{API}");
    let session = connect(&stack, "pump-1", &key).await;
    session
        .subscribe(Subscription::Methods)
        .await
        .expect("subscribe");

    // The viewer reads the twin but may not invoke a method: 403, audited, the device sees nothing.
    let read = stack.call("GET", &twin, Some(&vera), None).await;
    assert_eq!(read.status, 200, "{}", String::from_utf8_lossy(&read.body));
    assert_eq!(read.json()["deviceId"], "pump-1");
    let denied = stack.call("POST", &method, Some(&vera), Some(&call)).await;
    assert_eq!(
        denied.status,
        403,
        "{}",
        String::from_utf8_lossy(&denied.body)
    );
    let records = audit.records();
    assert_eq!(records.len(), 1, "{records:?}");
    assert_eq!(
        (
            records[0].actor.as_str(),
            records[0].operation.as_str(),
            records[0].device_id.as_deref()
        ),
        ("vera", "invokeMethod", Some("pump-1"))
    );

    // The operator of pump-1 invokes it and gets the device's answer.
    let (reply, ()) = tokio::join!(
        stack.call("POST", &method, Some(&olga), Some(&call)),
        answer_one(session.as_ref())
    );
    assert_eq!(
        reply.status,
        200,
        "{}",
        String::from_utf8_lossy(&reply.body)
    );
    assert_eq!(
        reply.json(),
        json!({"status": 200, "payload": {"rebooted": true}})
    );

    // ... but not on a device outside the grant, nor may they read keys or list the fleet.
    let other = format!("/twins/fan-1/methods?{API}");
    assert_eq!(
        stack
            .call("POST", &other, Some(&olga), Some(&call))
            .await
            .status,
        403
    );
    let keys = format!("/devices/pump-1?{API}");
    assert_eq!(
        stack.call("GET", &keys, Some(&olga), None).await.status,
        403
    );
    assert_eq!(
        stack.call("GET", &keys, Some(&vera), None).await.status,
        403,
        "keys need manageDevices"
    );
    let list = format!("/devices?{API}");
    let listed = stack.call("GET", &list, Some(&olga), None).await;
    assert_eq!(listed.status, 200, "a listing shows the devices granted");
    let listed: Vec<Value> = listed.json().as_array().cloned().unwrap_or_default();
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0]["deviceId"], "pump-1");
    assert_eq!(
        stack.call("GET", &list, Some(&vera), None).await.status,
        200
    );

    // Shared access policies work as before beside sessions.
    assert_eq!(stack.owner("GET", &keys, None).await.status, 200);

    // A forged, malformed or logged-out session is 401.
    let forged = format!(
        "Bearer {}",
        iot_identity::access::SessionToken::generate().expose()
    );
    for bad in [forged.as_str(), "Bearer ", "Bearer not-a-token"] {
        let reply = stack.call("GET", &twin, Some(bad), None).await;
        assert_eq!(reply.status, 401, "{bad}");
        let body: Value = reply.json();
        assert!(
            !body.to_string().contains(&forged[7..]),
            "the token is not echoed"
        );
    }
    assert!(access.logout(&vera[7..]).await.expect("logout"));
    assert_eq!(
        stack.call("GET", &twin, Some(&vera), None).await.status,
        401
    );
    session.close().await;
}
