//! DPS's HTTPS form on the hub's HTTP endpoint (`iot_gateway::http::dps`), over the onboarding
//! service the MQTT form uses: a group device registered and its result read back as DPS shapes
//! it, registering again, bad tokens, a disabled enrollment, unknown operations, and hostile
//! input answered 4xx (never 5xx, never a dropped connection) while the endpoint keeps serving.
//! The same router still serves IoT Hub's routes. Plain HTTP on an ephemeral port; TLS and
//! Microsoft's SDK are in `dps_node_interop`.
#![cfg(feature = "http")]

mod dps_support;
mod http_support;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use dps_support::{Dps, SCOPE, registration_token};
use http_support::{Reply, parse};
use iot_gateway::Gateway;
use iot_gateway::Hub;
use iot_gateway::http::dps::{DpsEndpoint, DpsHttpConfig};
use iot_gateway::http::{HttpConfig, HttpServer, HttpState, PolicyStore, SharedAccessPolicy};
use iot_identity::{IdentityStore, MemoryIdentityStore, SymmetricKey, sas};
use iot_provisioning::Provisioning;
use iot_provisioning::enrollment::EnrollmentStatus;
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const HOST: &str = "localhost";
const API: &str = "api-version=2019-03-31";

struct Stack {
    dps: Dps,
    server: HttpServer,
    addr: SocketAddr,
}

async fn start_with(config: HttpConfig) -> Stack {
    let identity = Arc::new(MemoryIdentityStore::new());
    let hub = Hub::memory(identity.clone(), HOST).await.expect("hub");
    let dps = Dps::new(hub.clone(), identity.clone(), HOST).await;
    let state = HttpState::new(
        Arc::new(hub.clone()),
        Arc::new(dps.provisioner.clone()) as Arc<dyn Provisioning>,
        dps.provisioner.registry().clone(),
        identity as Arc<dyn IdentityStore>,
        Arc::new(PolicyStore::memory(SharedAccessPolicy::defaults())),
        HOST,
        config.clone(),
    );
    let endpoint = DpsEndpoint::new(
        dps.onboarding.clone(),
        Arc::new(hub) as Arc<dyn Gateway>,
        DpsHttpConfig::default(),
    );
    let server = HttpServer::new(iot_gateway::http::dps::router(state, endpoint), config);
    let addr = server
        .listen_tcp("127.0.0.1:0".parse().expect("addr"))
        .await
        .expect("listen");
    Stack { dps, server, addr }
}

async fn start() -> Stack {
    start_with(HttpConfig::default()).await
}

impl Stack {
    /// A request as raw bytes (head without the final blank line, then the body).
    async fn raw(&self, head: &str, body: &[u8]) -> Reply {
        let mut stream = TcpStream::connect(self.addr).await.expect("connect");
        let request = format!(
            "{head}\r\nHost: {HOST}\r\nConnection: close\r\nContent-Length: {}\r\n\r\n",
            body.len()
        );
        stream.write_all(request.as_bytes()).await.expect("write");
        stream.write_all(body).await.expect("write body");
        let mut raw = Vec::new();
        tokio::time::timeout(Duration::from_secs(30), stream.read_to_end(&mut raw))
            .await
            .expect("answer in time")
            .expect("read");
        parse(&raw)
    }

    async fn request(&self, method: &str, path: &str, token: Option<&str>, body: &[u8]) -> Reply {
        let mut head = format!("{method} {path} HTTP/1.1\r\nContent-Type: application/json");
        if let Some(token) = token {
            head.push_str(&format!("\r\nAuthorization: {token}"));
        }
        self.raw(&head, body).await
    }

    async fn register(&self, id: &str, token: &str) -> Reply {
        let body = json!({"registrationId": id}).to_string();
        self.request(
            "PUT",
            &format!("/{SCOPE}/registrations/{id}/register?{API}"),
            Some(token),
            body.as_bytes(),
        )
        .await
    }

    async fn status(&self, id: &str, operation: &str, token: &str) -> Reply {
        self.request(
            "GET",
            &format!("/{SCOPE}/registrations/{id}/operations/{operation}?{API}"),
            Some(token),
            b"",
        )
        .await
    }

    async fn exists(&self, id: &str) -> bool {
        let device = id.parse().expect("id");
        self.dps.identity.get(&device).await.expect("get").is_some()
    }
}

/// The token the Node SDK sends: key name `registration`, resource URL-encoded by `sas`.
fn node_token(id: &str, key: &SymmetricKey) -> String {
    sas::generate(
        &format!("{SCOPE}/registrations/{id}"),
        key,
        sas::unix_now() + 3600,
        Some("registration"),
    )
    .expect("token")
    .as_str()
    .to_owned()
}

/// Checks DPS's error shape and returns its code.
fn dps_error(reply: &Reply) -> u64 {
    let body = reply.json();
    let code = body["errorCode"].as_u64().expect("errorCode");
    assert!(body["message"].is_string(), "{body}");
    assert!(body["trackingId"].is_string(), "{body}");
    assert!(body["timestampUtc"].is_string(), "{body}");
    assert_eq!(
        reply.header("x-ms-error-code"),
        Some(code.to_string().as_str())
    );
    assert_eq!(code / 1000, u64::from(reply.status), "{body}");
    code
}

#[tokio::test]
async fn a_group_device_registers_over_https_and_reads_its_assignment() {
    let stack = start().await;
    let group_key = stack
        .dps
        .group("fleet", |g| {
            g.settings.tags = json!({"fleet": "https"});
            g.settings.initial_twin = json!({"interval": 30});
        })
        .await;
    let key = group_key.derive_for_device("h-1");
    let token = node_token("h-1", &key);

    let accepted = stack.register("h-1", &token).await;
    assert_eq!(accepted.status, 202, "{:?}", accepted.json());
    assert_eq!(accepted.header("retry-after"), Some("1"));
    let body = accepted.json();
    assert_eq!(body["status"], "assigning");
    let operation = body["operationId"]
        .as_str()
        .expect("operationId")
        .to_owned();

    let done = stack.status("h-1", &operation, &token).await;
    assert_eq!(done.status, 200);
    let done = done.json();
    assert_eq!(done["operationId"], operation.as_str());
    assert_eq!(done["status"], "assigned");
    let state = &done["registrationState"];
    assert_eq!(state["registrationId"], "h-1");
    assert_eq!(state["deviceId"], "h-1");
    assert_eq!(state["assignedHub"], HOST);
    assert_eq!(state["status"], "assigned");
    assert_eq!(state["substatus"], "initialAssignment");
    assert_eq!(
        state["initialTwin"]["properties"]["desired"],
        json!({"interval": 30})
    );
    assert!(state["etag"].is_string() && state["createdDateTimeUtc"].is_string());

    // Registered through the provisioner (one audit record), with the derived key, the group's
    // tags, and the initial twin written through the hub.
    assert!(stack.exists("h-1").await);
    let device = "h-1".parse().expect("id");
    let registered = stack
        .dps
        .provisioner
        .get(&device)
        .await
        .expect("get")
        .expect("device");
    assert_eq!(registered.record.metadata["fleet"], "https");
    let twin = stack.dps.hub.get_twin(&device).await.expect("twin");
    assert_eq!(twin.desired.properties["interval"], 30);
    assert_eq!(stack.dps.registers().await.get("h-1"), Some(&1));

    // The token the Python SDK sends (no key name) works as well; registering again is
    // answered without a second registration.
    let again = stack
        .register("h-1", &registration_token("h-1", &key))
        .await;
    assert_eq!(again.status, 202);
    let operation = again.json()["operationId"].as_str().expect("id").to_owned();
    let done = stack.status("h-1", &operation, &token).await.json();
    assert_eq!(done["registrationState"]["substatus"], "deviceDataMigrated");
    assert_eq!(stack.dps.registers().await.get("h-1"), Some(&1));

    // Another device of the group: its own operation ids.
    let other_token = node_token("h-2", &group_key.derive_for_device("h-2"));
    assert_eq!(stack.register("h-2", &other_token).await.status, 202);
    assert!(stack.exists("h-2").await);
    stack.server.shutdown().await;
}

#[tokio::test]
async fn bad_tokens_are_refused_with_401_and_register_nothing() {
    let stack = start().await;
    let group_key = stack.dps.group("fleet", |_| {}).await;
    let key = group_key.derive_for_device("b-1");
    let expired = sas::generate(
        &format!("{SCOPE}/registrations/b-1"),
        &key,
        sas::unix_now().saturating_sub(3600),
        Some("registration"),
    )
    .expect("token")
    .as_str()
    .to_owned();
    let other_scope = sas::generate(
        "0neOTHER/registrations/b-1",
        &key,
        sas::unix_now() + 3600,
        Some("registration"),
    )
    .expect("token")
    .as_str()
    .to_owned();
    let bad = [
        ("wrong key", node_token("b-1", &SymmetricKey::generate())),
        ("the group key itself", node_token("b-1", &group_key)),
        (
            "another device's key",
            node_token("b-1", &group_key.derive_for_device("b-2")),
        ),
        ("expired", expired),
        ("other scope", other_scope),
        (
            "another key name",
            sas::generate(
                &format!("{SCOPE}/registrations/b-1"),
                &key,
                sas::unix_now() + 3600,
                Some("iothubowner"),
            )
            .expect("token")
            .as_str()
            .to_owned(),
        ),
        ("malformed", "SharedAccessSignature sr=x".to_owned()),
        ("not a SAS token", "Bearer abc".to_owned()),
    ];
    for (what, token) in &bad {
        let reply = stack.register("b-1", token).await;
        assert_eq!(reply.status, 401, "{what}: {:?}", reply.json());
        assert_eq!(dps_error(&reply), 401002, "{what}");
        let text = String::from_utf8_lossy(&reply.body).into_owned();
        assert!(!text.contains(key.expose_base64().as_str()), "{what}");
        assert!(!text.contains("sig="), "{what}: {text}");
    }
    // No Authorization header at all.
    let body = json!({"registrationId": "b-1"}).to_string();
    let reply = stack
        .request(
            "PUT",
            &format!("/{SCOPE}/registrations/b-1/register?{API}"),
            None,
            body.as_bytes(),
        )
        .await;
    assert_eq!(reply.status, 401);
    dps_error(&reply);
    // A genuine token for an unknown id scope in the path.
    let reply = stack
        .request(
            "PUT",
            &format!("/0neOTHER/registrations/b-1/register?{API}"),
            Some(&node_token("b-1", &key)),
            body.as_bytes(),
        )
        .await;
    assert_eq!(reply.status, 401);
    assert!(!stack.exists("b-1").await);
    assert!(stack.dps.registers().await.is_empty());
    stack.server.shutdown().await;
}

#[tokio::test]
async fn a_disabled_enrollment_is_refused_and_registers_nothing() {
    let stack = start().await;
    let off = stack
        .dps
        .group("off", |g| g.settings.status = EnrollmentStatus::Disabled)
        .await;
    let reply = stack
        .register("d-1", &node_token("d-1", &off.derive_for_device("d-1")))
        .await;
    assert_eq!(reply.status, 401);
    assert_eq!(dps_error(&reply), 401002);
    let message = reply.json()["message"]
        .as_str()
        .expect("message")
        .to_owned();
    assert!(message.contains("disabled"), "{message}");
    assert!(!stack.exists("d-1").await);
    assert!(stack.dps.registers().await.is_empty());
    stack.server.shutdown().await;
}

#[tokio::test]
async fn unknown_operations_are_404_and_operations_are_per_registration() {
    let stack = start().await;
    let group_key = stack.dps.group("fleet", |_| {}).await;
    let token_1 = node_token("o-1", &group_key.derive_for_device("o-1"));
    let token_2 = node_token("o-2", &group_key.derive_for_device("o-2"));
    let reply = stack.status("o-1", "0123456789abcdef", &token_1).await;
    assert_eq!(reply.status, 404);
    assert_eq!(dps_error(&reply), 404201);

    let accepted = stack.register("o-1", &token_1).await.json();
    let operation = accepted["operationId"].as_str().expect("id").to_owned();
    // o-2 cannot read o-1's operation, even with a genuine token of its own.
    let reply = stack.status("o-2", &operation, &token_2).await;
    assert_eq!(reply.status, 404);
    // Nor can o-1's operation be read with o-2's token under o-1's name.
    let reply = stack.status("o-1", &operation, &token_2).await;
    assert_eq!(reply.status, 401);
    // No token.
    let reply = stack
        .request(
            "GET",
            &format!("/{SCOPE}/registrations/o-1/operations/{operation}?{API}"),
            None,
            b"",
        )
        .await;
    assert_eq!(reply.status, 401);
    assert_eq!(stack.status("o-1", &operation, &token_1).await.status, 200);
    stack.server.shutdown().await;
}

/// Every answer to hostile input is a 4xx; the endpoint keeps serving.
#[tokio::test]
async fn hostile_input_is_answered_4xx_and_the_endpoint_keeps_serving() {
    let stack = start_with(HttpConfig::default().max_body_bytes(4096)).await;
    let group_key = stack.dps.group("fleet", |_| {}).await;
    let key = group_key.derive_for_device("x-1");
    let token = node_token("x-1", &key);
    let register = format!("/{SCOPE}/registrations/x-1/register");
    let good_body = json!({"registrationId": "x-1"}).to_string();
    let long_id = "a".repeat(300);
    let long_token = format!("SharedAccessSignature sr={}&sig=x&se=1", "y".repeat(9000));
    let cases: Vec<(String, String, Option<String>, Vec<u8>)> = vec![
        // api-version: missing, unknown, IoT Hub's.
        (
            "PUT".into(),
            register.clone(),
            Some(token.clone()),
            good_body.clone().into_bytes(),
        ),
        (
            "PUT".into(),
            format!("{register}?api-version=1999-01-01"),
            Some(token.clone()),
            good_body.clone().into_bytes(),
        ),
        // Bodies: not JSON, not an object, another registration id, none, binary.
        (
            "PUT".into(),
            format!("{register}?{API}"),
            Some(token.clone()),
            b"{not json".to_vec(),
        ),
        (
            "PUT".into(),
            format!("{register}?{API}"),
            Some(token.clone()),
            b"[1,2]".to_vec(),
        ),
        (
            "PUT".into(),
            format!("{register}?{API}"),
            Some(token.clone()),
            json!({"registrationId": "x-2"}).to_string().into_bytes(),
        ),
        (
            "PUT".into(),
            format!("{register}?{API}"),
            Some(token.clone()),
            Vec::new(),
        ),
        (
            "PUT".into(),
            format!("{register}?{API}"),
            Some(token.clone()),
            vec![0xff, 0x00, 0xfe],
        ),
        // Too large.
        (
            "PUT".into(),
            format!("{register}?{API}"),
            Some(token.clone()),
            vec![b' '; 5000],
        ),
        // Registration ids that are not device ids.
        (
            "PUT".into(),
            format!("/{SCOPE}/registrations/{long_id}/register?{API}"),
            Some(token.clone()),
            json!({"registrationId": long_id}).to_string().into_bytes(),
        ),
        (
            "PUT".into(),
            format!("/{SCOPE}/registrations/a%00b/register?{API}"),
            Some(token.clone()),
            json!({"registrationId": "a\u{0}b"})
                .to_string()
                .into_bytes(),
        ),
        (
            "PUT".into(),
            format!("/{SCOPE}/registrations/%ff%fe/register?{API}"),
            Some(token.clone()),
            good_body.clone().into_bytes(),
        ),
        (
            "PUT".into(),
            format!("/{SCOPE}/registrations/a%2Fb/register?{API}"),
            Some(token.clone()),
            json!({"registrationId": "a/b"}).to_string().into_bytes(),
        ),
        // Tokens: huge, odd bytes.
        (
            "PUT".into(),
            format!("{register}?{API}"),
            Some(long_token),
            good_body.clone().into_bytes(),
        ),
        (
            "PUT".into(),
            format!("{register}?{API}"),
            Some("SharedAccessSignature sr=%zz&sig=%%&se=-1&skn=".into()),
            good_body.clone().into_bytes(),
        ),
        // Methods the routes do not have.
        (
            "POST".into(),
            format!("{register}?{API}"),
            Some(token.clone()),
            good_body.clone().into_bytes(),
        ),
        (
            "DELETE".into(),
            format!("/{SCOPE}/registrations/x-1/operations/1?{API}"),
            Some(token.clone()),
            Vec::new(),
        ),
        // Operation ids: long, odd.
        (
            "GET".into(),
            format!(
                "/{SCOPE}/registrations/x-1/operations/{}?{API}",
                "9".repeat(2000)
            ),
            Some(token.clone()),
            Vec::new(),
        ),
        (
            "GET".into(),
            format!("/{SCOPE}/registrations/x-1/operations/%ff?{API}"),
            Some(token.clone()),
            Vec::new(),
        ),
        (
            "GET".into(),
            format!("/{SCOPE}/registrations/x-1/operations/?{API}"),
            Some(token.clone()),
            Vec::new(),
        ),
        // Paths next to the routes.
        (
            "PUT".into(),
            format!("/{SCOPE}/registrations/x-1?{API}"),
            Some(token.clone()),
            good_body.clone().into_bytes(),
        ),
        (
            "PUT".into(),
            format!("/{SCOPE}/registrations//register?{API}"),
            Some(token.clone()),
            good_body.clone().into_bytes(),
        ),
    ];
    for (method, path, token, body) in &cases {
        let reply = stack.request(method, path, token.as_deref(), body).await;
        assert!(
            (400..500).contains(&reply.status),
            "{method} {path}: {} {}",
            reply.status,
            String::from_utf8_lossy(&reply.body)
        );
    }

    // Random bytes in the path's segments and the body.
    let alphabet: Vec<char> = "abc-._~%2FfF0/?&=#:@!$'()*+,;\\\"<> ".chars().collect();
    for round in 0..200 {
        let mut segment = String::new();
        for _ in 0..(rand::random::<u8>() % 24) {
            segment.push(alphabet[rand::random::<u8>() as usize % alphabet.len()]);
        }
        let segment = segment
            .replace(' ', "%20")
            .replace('#', "%23")
            .replace('"', "%22")
            .replace('<', "%3C")
            .replace('>', "%3E")
            .replace('\\', "%5C");
        let body: Vec<u8> = (0..(rand::random::<u8>() % 64))
            .map(|_| rand::random())
            .collect();
        let (method, path) = if round % 2 == 0 {
            (
                "PUT",
                format!("/{SCOPE}/registrations/{segment}/register?{API}"),
            )
        } else {
            (
                "GET",
                format!("/{SCOPE}/registrations/x-1/operations/{segment}?{API}"),
            )
        };
        let reply = stack.request(method, &path, Some(&token), &body).await;
        assert!(
            (400..500).contains(&reply.status),
            "{method} {path}: {} {}",
            reply.status,
            String::from_utf8_lossy(&reply.body)
        );
    }

    // Still serving, and nothing was registered by the hostile requests.
    assert!(stack.dps.registers().await.is_empty());
    assert_eq!(stack.register("x-1", &token).await.status, 202);
    assert!(stack.exists("x-1").await);
    stack.server.shutdown().await;
}

#[tokio::test]
async fn the_same_router_still_serves_iot_hub_routes() {
    let stack = start().await;
    // IoT Hub's service API: no token is 401 in IoT Hub's shape, an unknown path 404 likewise.
    let reply = stack
        .request("GET", "/devices/x?api-version=2021-04-12", None, b"")
        .await;
    assert_eq!(reply.status, 401);
    assert!(reply.header("iothub-errorcode").is_some());
    let reply = stack
        .request("GET", "/no/such/route?api-version=2021-04-12", None, b"")
        .await;
    assert_eq!(reply.status, 404);
    assert!(reply.header("iothub-errorcode").is_some());
    stack.server.shutdown().await;
}
