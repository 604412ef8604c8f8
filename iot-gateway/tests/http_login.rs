//! `POST /auth/login`, `POST /auth/logout` and `GET /auth/me`: user sessions of the access matrix
//! over HTTP, as a dashboard uses them.
#![cfg(feature = "http")]

mod http_support;

use std::sync::Arc;
use std::time::Duration;

use http_support::{API, Reply, Stack};
use iot_gateway::http::{HttpConfig, LoginLimit};
use iot_identity::PassphraseParams;
use iot_identity::access::{
    AccessConfig, AccessControl, DeviceSet, Grant, MemoryAccessStore, MemoryAuditSink,
    StaticDeviceSets,
};
use serde_json::{Value, json};

const LOGIN: &str = "/auth/login?api-version=2021-04-12";
const LOGOUT: &str = "/auth/logout?api-version=2021-04-12";
const ME: &str = "/auth/me?api-version=2021-04-12";

/// An access matrix with `olga`, operator of `pump-1`, and `dora`, disabled.
async fn access(audit: &MemoryAuditSink) -> AccessControl {
    let access = AccessControl::new(
        Arc::new(MemoryAccessStore::new()),
        Arc::new(StaticDeviceSets::new()),
    )
    .with_audit(Arc::new(audit.clone()))
    .with_config(AccessConfig::default().password_params(PassphraseParams::INSECURE_FOR_TESTS))
    .expect("config");
    for user in ["olga", "dora"] {
        access
            .create_user(user.parse().expect("name"), &format!("{user}'s password"))
            .await
            .expect("user");
    }
    access
        .grant(Grant::new(
            "olga".parse().expect("name"),
            "operator".parse().expect("role"),
            DeviceSet::Device("pump-1".parse().expect("id")),
        ))
        .await
        .expect("grant");
    access
        .store()
        .set_disabled(&"dora".parse().expect("name"), true)
        .await
        .expect("disable");
    access
}

async fn login(stack: &Stack, user: &str, password: &str) -> Reply {
    stack
        .call(
            "POST",
            LOGIN,
            None,
            Some(&json!({"user": user, "password": password})),
        )
        .await
}

fn message(reply: &Reply) -> String {
    reply.json()["Message"]
        .as_str()
        .expect("an error body")
        .to_owned()
}

#[tokio::test]
async fn log_in_call_the_api_log_out() {
    let stack = Stack::start().await;
    let created = stack
        .owner(
            "PUT",
            &format!("/devices/pump-1?{API}"),
            Some(&json!({"deviceId": "pump-1"})),
        )
        .await;
    assert_eq!(created.status, 200);
    let audit = MemoryAuditSink::new();
    let _ = stack.state.clone().with_access(access(&audit).await);

    let reply = login(&stack, "olga", "olga's password").await;
    assert_eq!(
        reply.status,
        200,
        "{}",
        String::from_utf8_lossy(&reply.body)
    );
    assert_eq!(reply.header("cache-control"), Some("no-store"));
    let body = reply.json();
    let token = body["token"].as_str().expect("token").to_owned();
    assert_eq!(token.len(), iot_identity::access::TOKEN_LEN);
    let expires = body["expiresAt"].as_str().expect("expiresAt");
    assert!(
        iot_core::Timestamp::parse_rfc3339(expires).expect("RFC 3339") > iot_core::Timestamp::now()
    );
    let bearer = format!("Bearer {token}");

    // The token works on a service route the grant covers, and is refused beyond it.
    let twin = format!("/twins/pump-1?{API}");
    let read = stack.call("GET", &twin, Some(&bearer), None).await;
    assert_eq!(read.status, 200, "{}", String::from_utf8_lossy(&read.body));
    assert_eq!(read.json()["deviceId"], "pump-1");
    // A listing shows what the grant covers; a hub-wide route is refused.
    let list = format!("/devices?{API}");
    let listed = stack.call("GET", &list, Some(&bearer), None).await;
    assert_eq!(listed.status, 200);
    let ids: Vec<Value> = listed.json().as_array().cloned().unwrap_or_default();
    assert!(ids.iter().all(|d| d["deviceId"] == "pump-1"), "{ids:?}");
    let service = format!("/statistics/service?{API}");
    assert_eq!(
        stack
            .call("GET", &service, Some(&bearer), None)
            .await
            .status,
        403
    );

    // Who am I: name, roles, grants; nothing secret.
    let me = stack.call("GET", ME, Some(&bearer), None).await;
    assert_eq!(me.status, 200, "{}", String::from_utf8_lossy(&me.body));
    assert_eq!(me.header("cache-control"), Some("no-store"));
    let me = me.json();
    assert_eq!(me["user"], "olga");
    assert_eq!(me["roles"], json!(["operator"]));
    assert_eq!(me["expiresAt"], expires);
    assert_eq!(me["grants"][0]["role"], "operator");
    assert_eq!(me["grants"][0]["devices"], json!({"device": "pump-1"}));
    let permissions = me["permissions"].as_array().expect("permissions");
    assert!(permissions.contains(&json!("invokeMethod")), "{me}");
    assert!(!permissions.contains(&json!("manageDevices")), "{me}");
    let text = me.to_string();
    assert!(!text.contains(&token) && !text.contains("argon2"), "{text}");

    // Logout ends the session: the token is refused everywhere after.
    let out = stack.call("POST", LOGOUT, Some(&bearer), None).await;
    assert_eq!(out.status, 204, "{}", String::from_utf8_lossy(&out.body));
    assert_eq!(
        stack.call("GET", &twin, Some(&bearer), None).await.status,
        401
    );
    assert_eq!(stack.call("GET", ME, Some(&bearer), None).await.status, 401);
    assert_eq!(
        stack.call("POST", LOGOUT, Some(&bearer), None).await.status,
        401
    );
    // Without a bearer token, or with a service token, the session routes are 401.
    assert_eq!(stack.call("GET", ME, None, None).await.status, 401);
    let service = stack.token("iothubowner");
    assert_eq!(
        stack
            .call("POST", LOGOUT, Some(&service), None)
            .await
            .status,
        401
    );
    // The one denial audited is the fleet listing; the login was not refused.
    let records = audit.records();
    assert_eq!(records.len(), 1, "{records:?}");
    assert_eq!(
        (
            records[0].operation.as_str(),
            records[0].device_id.as_deref()
        ),
        ("read", None)
    );
}

#[tokio::test]
async fn every_refused_login_looks_the_same() {
    let stack = Stack::start().await;
    let audit = MemoryAuditSink::new();
    let _ = stack.state.clone().with_access(access(&audit).await);

    let wrong = login(&stack, "olga", "not olga's password").await;
    let unknown = login(&stack, "nobody", "olga's password").await;
    let disabled = login(&stack, "dora", "dora's password").await;
    for reply in [&wrong, &unknown, &disabled] {
        assert_eq!(reply.status, 401);
        assert_eq!(reply.error_code(), "IotHubUnauthorizedAccess");
        // The same words; only the tracking id and time of `ExceptionMessage` differ.
        assert_eq!(message(reply), message(&wrong));
        let text = String::from_utf8_lossy(&reply.body);
        assert!(!text.contains("password\""), "{text}");
        assert!(
            !text.contains("olga's") && !text.contains("dora's"),
            "{text}"
        );
        let mut names: Vec<&str> = reply.headers.iter().map(|(n, _)| n.as_str()).collect();
        names.sort();
        let mut expected: Vec<&str> = wrong.headers.iter().map(|(n, _)| n.as_str()).collect();
        expected.sort();
        assert_eq!(names, expected);
    }
    assert_eq!(wrong.body.len(), unknown.body.len());
    // Each refusal is audited by the access control, as a login.
    let records = audit.records();
    assert_eq!(records.len(), 3, "{records:?}");
    assert!(
        records.iter().all(|r| r.operation == "login"),
        "{records:?}"
    );

    // Bad bodies are 400 without echoing what was sent; over 4 KiB is 413.
    for body in [
        json!({"user": "olga"}),
        json!({"user": "olga", "password": 123_456_789}),
        json!({"user": "olga", "password": "x", "extra": true}),
    ] {
        let reply = stack.call("POST", LOGIN, None, Some(&body)).await;
        assert_eq!(reply.status, 400, "{body}");
        assert!(
            !message(&reply).contains("123456789"),
            "{}",
            message(&reply)
        );
    }
    let huge = json!({"user": "olga", "password": "p".repeat(5000)}).to_string();
    let reply = stack
        .call_raw(
            "POST",
            LOGIN,
            "iothubowner",
            huge.as_bytes(),
            &[("Content-Type", "application/json")],
        )
        .await;
    assert_eq!(reply.status, 413);
}

#[tokio::test]
async fn failed_logins_are_budgeted_per_user_and_per_peer() {
    let stack = Stack::start_with(HttpConfig::default().login_limit(LoginLimit::new(
        3,
        5,
        Duration::from_secs(3600),
    )))
    .await;
    let audit = MemoryAuditSink::new();
    let _ = stack.state.clone().with_access(access(&audit).await);

    for _ in 0..3 {
        assert_eq!(login(&stack, "olga", "guess").await.status, 401);
    }
    // olga's budget is spent: even her right password waits, unchecked.
    let throttled = login(&stack, "olga", "olga's password").await;
    assert_eq!(throttled.status, 429);
    let retry: u64 = throttled
        .header("retry-after")
        .expect("Retry-After")
        .parse()
        .expect("seconds");
    assert!((1..=3600).contains(&retry), "{retry}");
    // An unknown name is budgeted the same way, and answered alike: no enumeration.
    assert_eq!(login(&stack, "nobody", "guess").await.status, 401);
    // That left the address one failure: the next one spends it, then everyone there waits.
    assert_eq!(login(&stack, "dora", "guess").await.status, 401);
    let peer = login(&stack, "nobody-else", "guess").await;
    assert_eq!(peer.status, 429);
    assert_eq!(message(&peer), message(&throttled));
    // Throttled attempts never reached the access control: 5 refusals audited, not 7.
    assert_eq!(audit.records().len(), 5, "{:?}", audit.records());
}

#[tokio::test]
async fn without_an_access_matrix_the_routes_are_absent() {
    let stack = Stack::start().await;
    for (method, path, body) in [
        (
            "POST",
            LOGIN,
            Some(json!({"user": "olga", "password": "x"})),
        ),
        ("GET", LOGIN, None),
        ("POST", LOGOUT, None),
        ("GET", ME, None),
        ("DELETE", ME, None),
    ] {
        let reply = stack.call(method, path, None, body.as_ref()).await;
        assert_eq!(reply.status, 404, "{method} {path}");
        assert_eq!(reply.error_code(), "NotFound");
        let unknown = stack
            .call(method, "/auth/nothing?api-version=2021-04-12", None, None)
            .await;
        assert_eq!(message(&reply), message(&unknown));
    }
    // With one, a wrong method is 405 like anywhere else.
    let _ = stack
        .state
        .clone()
        .with_access(access(&MemoryAuditSink::new()).await);
    assert_eq!(stack.call("GET", LOGIN, None, None).await.status, 405);
    assert_eq!(login(&stack, "olga", "olga's password").await.status, 200);
}
