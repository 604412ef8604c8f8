//! The dashboard's routes: the live telemetry and alert streams (Server-Sent Events), user
//! management (admin only), the embedded UI assets, and access denials on them audited.
#![cfg(feature = "http")]

mod http_support;

use std::sync::Arc;
use std::time::Duration;

use http_support::{API, HOST, Stack, parse};
use iot_core::{Log, MemoryLog, PartitionId, Record};
use iot_gateway::http::{HttpConfig, HttpServer};
use iot_gateway::{DeviceSession, Gateway, SessionOptions, Telemetry};
use iot_identity::access::{
    AccessConfig, AccessControl, DeviceSet, Grant, MemoryAccessStore, MemoryAuditSink,
    StaticDeviceSets,
};
use iot_identity::{PassphraseParams, Presented, SymmetricKey, sas};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpStream;

/// An access matrix with `users` (name, role, device set), each with password "{name}-password".
async fn matrix(users: &[(&str, &str, DeviceSet)]) -> (AccessControl, MemoryAuditSink) {
    let audit = MemoryAuditSink::new();
    let access = AccessControl::new(
        Arc::new(MemoryAccessStore::new()),
        Arc::new(StaticDeviceSets::new()),
    )
    .with_audit(Arc::new(audit.clone()))
    .with_config(AccessConfig::default().password_params(PassphraseParams::INSECURE_FOR_TESTS))
    .expect("config");
    for (user, role, devices) in users {
        access
            .create_user(user.parse().expect("name"), &format!("{user}-password"))
            .await
            .expect("user");
        access
            .grant(Grant::new(
                user.parse().expect("name"),
                role.parse().expect("role"),
                devices.clone(),
            ))
            .await
            .expect("grant");
    }
    (access, audit)
}

async fn bearer(access: &AccessControl, user: &str) -> String {
    let (token, _) = access
        .login(user, &format!("{user}-password"))
        .await
        .expect("login");
    format!("Bearer {}", token.expose())
}

async fn register(stack: &Stack, device: &str) -> Box<dyn DeviceSession> {
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
            &device.parse().expect("id"),
            Presented::SasToken(token.as_str()),
            SessionOptions::default(),
        )
        .await
        .expect("connect")
}

/// An open event stream: the response's bytes as they come.
struct EventStream {
    stream: TcpStream,
    seen: String,
}

impl EventStream {
    async fn open(stack: &Stack, path: &str, token: &str) -> (u16, EventStream) {
        let mut stream = TcpStream::connect(stack.addr).await.expect("connect");
        let request = format!(
            "GET {path} HTTP/1.1\r\nHost: {HOST}\r\nAccept: text/event-stream\r\nAuthorization: {token}\r\n\r\n"
        );
        stream.write_all(request.as_bytes()).await.expect("write");
        let mut events = EventStream {
            stream,
            seen: String::new(),
        };
        events.until("\r\n\r\n").await;
        let status = events.seen[9..12].parse().expect("status");
        (status, events)
    }

    /// Reads until `needle` has arrived (10 s at most); returns everything read so far.
    async fn until(&mut self, needle: &str) -> &str {
        self.until_within(needle, Duration::from_secs(10)).await
    }

    /// [`until`](Self::until) with a deadline of `within`.
    async fn until_within(&mut self, needle: &str, within: Duration) -> &str {
        let deadline = tokio::time::Instant::now() + within;
        let mut buffer = [0u8; 4096];
        while !self.seen.contains(needle) {
            let n = tokio::time::timeout_at(deadline, self.stream.read(&mut buffer))
                .await
                .unwrap_or_else(|_| panic!("no {needle:?} in time; got {}", self.seen))
                .expect("read");
            assert!(n > 0, "stream closed before {needle:?}: {}", self.seen);
            self.seen.push_str(&String::from_utf8_lossy(&buffer[..n]));
        }
        &self.seen
    }
}

/// The data of the first event named `event` whose data contains `needle`.
fn event_data(seen: &str, event: &str, needle: &str) -> Value {
    let line = seen
        .split("\n\n")
        .filter(|block| block.contains(&format!("event: {event}\n")))
        .find_map(|block| {
            block
                .lines()
                .find_map(|l| l.strip_prefix("data: "))
                .filter(|d| d.contains(needle))
        })
        .unwrap_or_else(|| panic!("no {event} event with {needle}: {seen}"));
    serde_json::from_str(line).expect("event data is JSON")
}

#[tokio::test]
async fn the_telemetry_stream_replays_then_pushes_live_records_to_readers_only() {
    let stack = Stack::start().await;
    let pump = register(&stack, "pump-1").await;
    let fan = register(&stack, "fan-1").await;
    let (access, audit) = matrix(&[
        (
            "vera",
            "viewer",
            DeviceSet::Device("pump-1".parse().expect("id")),
        ),
        (
            "fred",
            "viewer",
            DeviceSet::Device("fan-1".parse().expect("id")),
        ),
    ])
    .await;
    let vera = bearer(&access, "vera").await;
    let fred = bearer(&access, "fred").await;
    let path = format!("/devices/pump-1/telemetry/stream?{API}");

    // Without a telemetry log the route is not there.
    assert_eq!(
        stack
            .call("GET", &path, Some(&stack.token("iothubowner")), None)
            .await
            .status,
        404
    );
    let _ = stack
        .state
        .clone()
        .with_access(access.clone())
        .with_telemetry_stream(stack.hub.telemetry_log().clone());

    pump.send_telemetry(Telemetry::new(r#"{"temperature":20.5,"seq":1}"#))
        .await
        .expect("send");
    fan.send_telemetry(Telemetry::new(r#"{"temperature":99,"seq":1}"#))
        .await
        .expect("send");

    // A viewer of pump-1: 200, text/event-stream, the replayed record, then a live one.
    let (status, mut events) = EventStream::open(&stack, &path, &vera).await;
    assert_eq!(status, 200, "{}", events.seen);
    assert!(
        events
            .seen
            .to_ascii_lowercase()
            .contains("content-type: text/event-stream"),
        "{}",
        events.seen
    );
    let seen = events.until(r#""seq":1"#).await.to_owned();
    let replayed = event_data(&seen, "telemetry", r#""seq":1"#);
    assert_eq!(replayed["deviceId"], "pump-1");
    assert_eq!(replayed["body"], json!({"temperature": 20.5, "seq": 1}));
    pump.send_telemetry(Telemetry::new(r#"{"temperature":21.5,"seq":2}"#))
        .await
        .expect("send");
    let seen = events.until(r#""seq":2"#).await.to_owned();
    let live = event_data(&seen, "telemetry", r#""seq":2"#);
    assert_eq!(live["body"]["temperature"], 21.5);
    assert!(live["offset"].as_u64() > replayed["offset"].as_u64());
    // By its device id and its body: a bare "99" also turns up in enqueued times.
    assert!(
        !seen.contains("fan-1") && !seen.contains(r#""temperature":99"#),
        "another device's record leaked: {seen}"
    );

    // A viewer of fan-1 only: 403, audited; a shared access policy with ServiceConnect: 200.
    assert!(audit.records().is_empty());
    let denied = stack.call("GET", &path, Some(&fred), None).await;
    assert_eq!(denied.status, 403);
    let records = audit.records();
    assert_eq!(records.len(), 1, "{records:?}");
    assert_eq!(
        (
            records[0].actor.as_str(),
            records[0].operation.as_str(),
            records[0].device_id.as_deref()
        ),
        ("fred", "read", Some("pump-1"))
    );
    let (status, _) = EventStream::open(&stack, &path, &stack.token("service")).await;
    assert_eq!(status, 200);
    // A session that does not exist: 401.
    let (status, _) = EventStream::open(&stack, &path, "Bearer not-a-session").await;
    assert_eq!(status, 401);
}

#[tokio::test]
async fn an_open_stream_ends_once_its_session_is_logged_out() {
    let stack = Stack::start().await;
    let _pump = register(&stack, "pump-1").await;
    let (access, _audit) = matrix(&[("vera", "viewer", DeviceSet::All)]).await;
    let vera = bearer(&access, "vera").await;
    let _ = stack
        .state
        .clone()
        .with_access(access.clone())
        .with_telemetry_stream(stack.hub.telemetry_log().clone());
    let (status, mut events) = EventStream::open(
        &stack,
        &format!("/devices/pump-1/telemetry/stream?{API}"),
        &vera,
    )
    .await;
    assert_eq!(status, 200, "{}", events.seen);
    let token = vera.strip_prefix("Bearer ").expect("bearer");
    assert!(access.logout(token).await.expect("logout"));
    // The next check (every live::RECHECK) refuses the session: the body ends (the chunked
    // encoding's last chunk) instead of running on with keep-alives.
    events
        .until_within("\r\n0\r\n\r\n", iot_gateway::http::live::RECHECK * 2)
        .await;
}

#[tokio::test]
async fn the_alerts_stream_follows_its_topic() {
    let stack = Stack::start().await;
    let alerts: Arc<dyn Log> = Arc::new(MemoryLog::new(2).expect("log"));
    let (access, _) = matrix(&[("vera", "viewer", DeviceSet::All)]).await;
    let _ = stack
        .state
        .clone()
        .with_access(access.clone())
        .with_alerts_stream(alerts.clone());
    alerts
        .append(
            PartitionId(0),
            vec![Record::new(
                "pump-1",
                r#"{"deviceId":"pump-1","temperature":85}"#,
            )],
        )
        .await
        .expect("append");
    let path = format!("/alerts/stream?{API}");
    let (status, mut events) =
        EventStream::open(&stack, &path, &bearer(&access, "vera").await).await;
    assert_eq!(status, 200);
    let seen = events.until(r#""temperature":85"#).await.to_owned();
    assert_eq!(
        event_data(&seen, "alert", r#""temperature":85"#)["deviceId"],
        "pump-1"
    );
    alerts
        .append(
            PartitionId(1),
            vec![Record::new(
                "fan-1",
                r#"{"deviceId":"fan-1","temperature":90}"#,
            )],
        )
        .await
        .expect("append");
    let seen = events.until(r#""temperature":90"#).await.to_owned();
    assert_eq!(
        event_data(&seen, "alert", r#""temperature":90"#)["deviceId"],
        "fan-1"
    );

    // close_streams ends the open stream (the last chunk of the chunked body arrives).
    stack.state.close_streams();
    events.until("\r\n0\r\n\r\n").await;
}

#[tokio::test]
async fn a_scoped_viewer_gets_exactly_its_devices_alerts() {
    let stack = Stack::start().await;
    let alerts: Arc<dyn Log> = Arc::new(MemoryLog::new(2).expect("log"));
    let (access, audit) = matrix(&[
        (
            "fred",
            "viewer",
            DeviceSet::Device("pump-1".parse().expect("id")),
        ),
        (
            "tina",
            "viewer",
            DeviceSet::query("SELECT * FROM devices WHERE deviceId = 'fan-1'").expect("query"),
        ),
    ])
    .await;
    let _ = stack
        .state
        .clone()
        .with_access(access.clone())
        .with_alerts_stream(alerts.clone());
    for device in ["pump-1", "pump-2", "fan-1"] {
        drop(register(&stack, device).await);
    }
    let alert = |key: &str, device: &str, temperature: u32| {
        Record::new(
            key,
            format!(r#"{{"deviceId":"{device}","temperature":{temperature}}}"#),
        )
    };
    // Before the streams open (replayed) and after (live); the record's key names the device
    // (the authenticated sender, for a record-by-record rule), not the payload's deviceId, which
    // the device wrote itself: the alert keyed "pump-1" claiming pump-2 is pump-1's.
    alerts
        .append(
            PartitionId(0),
            vec![alert("pump-1", "pump-1", 81), alert("pump-1", "pump-2", 82)],
        )
        .await
        .expect("append");
    let path = format!("/alerts/stream?{API}");
    let (status, mut fred) = EventStream::open(&stack, &path, &bearer(&access, "fred").await).await;
    assert_eq!(status, 200);
    let (status, mut tina) = EventStream::open(&stack, &path, &bearer(&access, "tina").await).await;
    assert_eq!(status, 200);
    alerts
        .append(
            PartitionId(1),
            vec![
                alert("fan-1", "fan-1", 83),
                alert("pump-2", "pump-2", 84),
                alert("ghost", "ghost", 85),
            ],
        )
        .await
        .expect("append");
    alerts
        .append(PartitionId(1), vec![alert("pump-1", "pump-1", 86)])
        .await
        .expect("append");
    // Partition 1's alerts arrive in order, so once 86 is seen 83–85 have been decided.
    let seen = fred.until(r#""temperature":86"#).await.to_owned();
    let temperatures = |seen: &str| -> Vec<u64> {
        let mut t: Vec<u64> = seen
            .split("\n\n")
            .filter_map(|b| b.lines().find_map(|l| l.strip_prefix("data: ")))
            .map(|d| {
                serde_json::from_str::<Value>(d).expect("json")["body"]["temperature"]
                    .as_u64()
                    .expect("t")
            })
            .collect();
        t.sort_unstable();
        t
    };
    assert_eq!(temperatures(&seen), [81, 82, 86]);
    // tina's query grant is decided on fan-1's registry record; her last alert comes after
    // every other one in partition 1, so once it is seen the others have been decided.
    alerts
        .append(PartitionId(1), vec![alert("fan-1", "fan-1", 87)])
        .await
        .expect("append");
    let seen = tina.until(r#""temperature":87"#).await.to_owned();
    assert_eq!(temperatures(&seen), [83, 87]);
    assert!(audit.records().is_empty(), "nothing was denied");
}

#[tokio::test]
async fn only_admins_manage_users() {
    let stack = Stack::start().await;
    let (access, audit) = matrix(&[
        ("ada", "admin", DeviceSet::All),
        ("olga", "operator", DeviceSet::All),
        ("vera", "viewer", DeviceSet::All),
    ])
    .await;
    let users = format!("/access/users?{API}");
    // Without an access matrix the routes are not there.
    assert_eq!(stack.owner("GET", &users, None).await.status, 404);
    let _ = stack.state.clone().with_access(access.clone());
    let ada = bearer(&access, "ada").await;
    let olga = bearer(&access, "olga").await;
    let vera = bearer(&access, "vera").await;

    let new_user = json!({"name": "neo", "password": "neo-password",
        "grants": [{"role": "operator", "devices": {"device": "pump-1"}}]});
    // Operators and viewers may not; each refusal is audited as manageUsers.
    for token in [&olga, &vera] {
        assert_eq!(
            stack
                .call("POST", &users, Some(token), Some(&new_user))
                .await
                .status,
            403
        );
        assert_eq!(
            stack.call("GET", &users, Some(token), None).await.status,
            403
        );
    }
    let records = audit.records();
    assert_eq!(records.len(), 4, "{records:?}");
    assert!(
        records.iter().all(|r| r.operation == "manageUsers"),
        "{records:?}"
    );
    // A policy without RegistryWrite may not either.
    assert_eq!(
        stack
            .call("GET", &users, Some(&stack.token("service")), None)
            .await
            .status,
        403
    );

    // The admin creates neo, who logs in; the answer holds no password or hash.
    let created = stack
        .call("POST", &users, Some(&ada), Some(&new_user))
        .await;
    assert_eq!(
        created.status,
        201,
        "{}",
        String::from_utf8_lossy(&created.body)
    );
    let text = String::from_utf8_lossy(&created.body).into_owned();
    assert!(
        !text.contains("neo-password") && !text.contains("argon2"),
        "{text}"
    );
    assert_eq!(
        created.json()["grants"],
        json!([{"role": "operator", "devices": {"device": "pump-1"}}])
    );
    assert_eq!(
        stack
            .call("POST", &users, Some(&ada), Some(&new_user))
            .await
            .status,
        409
    );
    let bad_role = json!({"name": "x1", "password": "long-enough", "grants": [{"role": "nobody", "devices": "all"}]});
    assert_eq!(
        stack
            .call("POST", &users, Some(&ada), Some(&bad_role))
            .await
            .status,
        400
    );
    let short = json!({"name": "x2", "password": "short"});
    assert_eq!(
        stack
            .call("POST", &users, Some(&ada), Some(&short))
            .await
            .status,
        400
    );
    let listed = stack.call("GET", &users, Some(&ada), None).await.json();
    let names: Vec<&str> = listed
        .as_array()
        .expect("list")
        .iter()
        .filter_map(|u| u["name"].as_str())
        .collect();
    assert_eq!(names, ["ada", "neo", "olga", "vera"]);
    access
        .login("neo", "neo-password")
        .await
        .expect("neo logs in");

    // Grants replaced, then neo disabled (no more logins), then deleted.
    let grants = format!("/access/users/neo/grants?{API}");
    let put = stack
        .call(
            "PUT",
            &grants,
            Some(&ada),
            Some(&json!([{"role": "viewer", "devices": "all"}])),
        )
        .await;
    assert_eq!(put.status, 200, "{}", String::from_utf8_lossy(&put.body));
    assert_eq!(
        stack.call("GET", &grants, Some(&ada), None).await.json(),
        json!([{"role": "viewer", "devices": "all"}])
    );
    let neo = format!("/access/users/neo?{API}");
    let patched = stack
        .call("PATCH", &neo, Some(&ada), Some(&json!({"disabled": true})))
        .await;
    assert_eq!(patched.status, 200);
    assert_eq!(patched.json()["disabled"], true);
    assert!(access.login("neo", "neo-password").await.is_err());
    assert_eq!(
        stack.call("DELETE", &neo, Some(&ada), None).await.status,
        204
    );
    assert_eq!(stack.call("GET", &neo, Some(&ada), None).await.status, 404);
    let roles = stack
        .call("GET", &format!("/access/roles?{API}"), Some(&ada), None)
        .await;
    assert_eq!(roles.status, 200);
    assert!(
        roles
            .json()
            .as_array()
            .expect("roles")
            .iter()
            .any(|r| r["name"] == "viewer")
    );
    // iothubowner (RegistryWrite) manages users too.
    assert_eq!(stack.owner("GET", &users, None).await.status, 200);
}

/// A plain GET without `api-version` or a token.
async fn get(addr: std::net::SocketAddr, path: &str) -> http_support::Reply {
    let mut stream = TcpStream::connect(addr).await.expect("connect");
    let request = format!("GET {path} HTTP/1.1\r\nHost: {HOST}\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await.expect("write");
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw).await.expect("read");
    parse(&raw)
}

#[tokio::test]
async fn the_ui_assets_are_served_with_their_content_types() {
    let stack = Stack::start().await;
    // The plain router has no UI.
    assert_eq!(get(stack.addr, "/ui/").await.status, 404);
    let server = HttpServer::new(
        iot_gateway::http::router_with_ui(stack.state.clone()),
        HttpConfig::default(),
    );
    let addr = server
        .listen_tcp("127.0.0.1:0".parse().expect("addr"))
        .await
        .expect("listen");

    let root = get(addr, "/").await;
    assert_eq!(root.status, 303);
    assert_eq!(root.header("location"), Some("/ui/"));
    let index = get(addr, "/ui/").await;
    assert_eq!(index.status, 200);
    assert_eq!(
        index.header("content-type"),
        Some("text/html; charset=utf-8")
    );
    assert_eq!(index.header("x-content-type-options"), Some("nosniff"));
    let csp = index.header("content-security-policy").expect("csp");
    assert!(
        csp.contains("script-src 'self'") && csp.contains("connect-src 'self'"),
        "{csp}"
    );
    assert!(
        String::from_utf8_lossy(&index.body).contains(r#"<script type="module" src="app.js">"#)
    );
    for (file, kind) in [
        ("app.js", "text/javascript; charset=utf-8"),
        ("sse.js", "text/javascript; charset=utf-8"),
        ("style.css", "text/css; charset=utf-8"),
    ] {
        let reply = get(addr, &format!("/ui/{file}")).await;
        assert_eq!(reply.status, 200, "{file}");
        assert_eq!(reply.header("content-type"), Some(kind), "{file}");
        assert!(!reply.body.is_empty());
    }
    assert_eq!(get(addr, "/ui/nothing.js").await.status, 404);
    assert_eq!(get(addr, "/ui/../Cargo.toml").await.status, 404);
    // The API beside it is unchanged: still versioned, still authenticated.
    assert_eq!(get(addr, &format!("/devices?{API}")).await.status, 401);
    server.shutdown().await;
}
