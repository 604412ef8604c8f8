//! A hub with memory stores behind the HTTP endpoint, and a small HTTP/1.1 client over a raw
//! socket (so the tests see exactly the status, headers and body the server wrote).
#![allow(dead_code, unreachable_pub)]

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use iot_gateway::http::{HttpConfig, HttpServer, HttpState, PolicyStore, SharedAccessPolicy};
use iot_gateway::{Hub, HubConfig};
use iot_identity::{IdentityStore, MemoryIdentityStore, SymmetricKey, sas};
use iot_provisioning::{Provisioner, Provisioning};
use iot_registry::{MemoryRegistry, Registry};
use serde_json::Value;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;

pub const HOST: &str = "localhost";
pub const API: &str = "api-version=2021-04-12";

pub struct Stack {
    pub hub: Hub,
    pub identity: Arc<dyn IdentityStore>,
    pub registry: Arc<dyn Registry>,
    pub provisioner: Arc<Provisioner>,
    pub policies: Arc<PolicyStore>,
    pub state: HttpState,
    /// The CA certificates the `/certificates` routes manage and the hub authenticates with.
    pub cas: iot_identity::ca::CertificateAuthorities,
    pub server: HttpServer,
    pub addr: SocketAddr,
}

impl Stack {
    pub async fn start() -> Stack {
        Self::start_with(HttpConfig::default()).await
    }

    pub async fn start_with(config: HttpConfig) -> Stack {
        Self::start_with_hub(config, HubConfig::default()).await
    }

    pub async fn start_with_hub(config: HttpConfig, hub_config: HubConfig) -> Stack {
        let identity: Arc<dyn IdentityStore> = Arc::new(MemoryIdentityStore::new());
        let registry: Arc<dyn Registry> = Arc::new(MemoryRegistry::new());
        let provisioner = Arc::new(
            Provisioner::builder(identity.clone(), registry.clone())
                .open()
                .await
                .expect("provisioner"),
        );
        let cas = iot_identity::ca::CertificateAuthorities::new(Arc::new(
            iot_identity::ca::MemoryCaStore::new(),
        ));
        let hub = Hub::builder(identity.clone(), HOST)
            .certificate_authorities(cas.clone())
            .config(hub_config)
            .build()
            .await
            .expect("hub");
        let policies = Arc::new(PolicyStore::memory(SharedAccessPolicy::defaults()));
        let state = HttpState::new(
            Arc::new(hub.clone()),
            provisioner.clone() as Arc<dyn Provisioning>,
            registry.clone(),
            identity.clone(),
            policies.clone(),
            HOST,
            config.clone(),
        )
        .with_certificate_authorities(cas.clone())
        .with_modules(hub.modules().clone());
        let server = HttpServer::new(iot_gateway::http::router(state.clone()), config);
        let addr = server
            .listen_tcp("127.0.0.1:0".parse().expect("addr"))
            .await
            .expect("listen");
        Stack {
            hub,
            identity,
            registry,
            provisioner,
            policies,
            state,
            cas,
            server,
            addr,
        }
    }

    /// A service token for `policy`, valid for an hour, signed for `localhost:{port}` as the
    /// Python SDK signs it.
    pub fn token(&self, policy: &str) -> String {
        let p = self.policies.get(policy).expect("policy");
        token_for(
            &format!("{HOST}:{}", self.addr.port()),
            &p.primary,
            policy,
            3600,
        )
    }

    pub async fn call(
        &self,
        method: &str,
        path: &str,
        token: Option<&str>,
        body: Option<&Value>,
    ) -> Reply {
        let mut stream = TcpStream::connect(self.addr).await.expect("connect");
        send(&mut stream, method, path, token, body, &[]).await
    }

    pub async fn call_with(
        &self,
        method: &str,
        path: &str,
        policy: &str,
        body: Option<&Value>,
        headers: &[(&str, &str)],
    ) -> Reply {
        let token = self.token(policy);
        let mut stream = TcpStream::connect(self.addr).await.expect("connect");
        send(&mut stream, method, path, Some(&token), body, headers).await
    }

    /// A request with a raw body and `headers`, as `policy`.
    pub async fn call_raw(
        &self,
        method: &str,
        path: &str,
        policy: &str,
        body: &[u8],
        headers: &[(&str, &str)],
    ) -> Reply {
        let token = self.token(policy);
        let mut stream = TcpStream::connect(self.addr).await.expect("connect");
        let mut request = format!(
            "{method} {path} HTTP/1.1\r\nHost: {HOST}\r\nConnection: close\r\nAuthorization: {token}\r\n"
        );
        for (name, value) in headers {
            request.push_str(&format!("{name}: {value}\r\n"));
        }
        request.push_str(&format!("Content-Length: {}\r\n\r\n", body.len()));
        stream.write_all(request.as_bytes()).await.expect("write");
        stream.write_all(body).await.expect("write body");
        let mut raw = Vec::new();
        tokio::time::timeout(Duration::from_secs(60), stream.read_to_end(&mut raw))
            .await
            .expect("answer in time")
            .expect("read");
        parse(&raw)
    }

    /// A request as `iothubowner`.
    pub async fn owner(&self, method: &str, path: &str, body: Option<&Value>) -> Reply {
        self.call_with(method, path, "iothubowner", body, &[]).await
    }
}

pub fn token_for(resource: &str, key: &SymmetricKey, policy: &str, lifetime: i64) -> String {
    let expiry = (sas::unix_now() as i64 + lifetime).max(0) as u64;
    sas::generate(resource, key, expiry, Some(policy))
        .expect("token")
        .as_str()
        .to_owned()
}

#[derive(Debug)]
pub struct Reply {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Reply {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(&self.body)))
    }

    /// The IoT Hub error code of an error answer, from its body (checked against the header).
    pub fn error_code(&self) -> String {
        let body = self.json();
        let message = body["Message"].as_str().expect("Message");
        let code = message
            .strip_prefix("ErrorCode:")
            .and_then(|m| m.split(';').next())
            .expect("ErrorCode:…;")
            .to_owned();
        assert!(body["ExceptionMessage"].is_string(), "{body}");
        assert_eq!(self.header("iothub-errorcode"), Some(code.as_str()));
        code
    }
}

pub async fn send<S: AsyncRead + AsyncWrite + Unpin>(
    stream: &mut S,
    method: &str,
    path: &str,
    token: Option<&str>,
    body: Option<&Value>,
    headers: &[(&str, &str)],
) -> Reply {
    let body_bytes = body
        .map(|b| serde_json::to_vec(b).expect("json"))
        .unwrap_or_default();
    let mut request = format!("{method} {path} HTTP/1.1\r\nHost: {HOST}\r\nConnection: close\r\n");
    if let Some(token) = token {
        request.push_str(&format!("Authorization: {token}\r\n"));
    }
    if body.is_some() {
        request.push_str("Content-Type: application/json; charset=utf-8\r\n");
    }
    for (name, value) in headers {
        request.push_str(&format!("{name}: {value}\r\n"));
    }
    request.push_str(&format!("Content-Length: {}\r\n\r\n", body_bytes.len()));
    stream.write_all(request.as_bytes()).await.expect("write");
    stream.write_all(&body_bytes).await.expect("write body");
    let mut raw = Vec::new();
    tokio::time::timeout(Duration::from_secs(60), stream.read_to_end(&mut raw))
        .await
        .expect("answer in time")
        .expect("read");
    parse(&raw)
}

pub fn parse(raw: &[u8]) -> Reply {
    let split = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .unwrap_or_else(|| panic!("no header end: {}", String::from_utf8_lossy(raw)));
    let head = String::from_utf8_lossy(&raw[..split]).into_owned();
    let mut lines = head.split("\r\n");
    let status_line = lines.next().expect("status line");
    let status = status_line
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .expect("status");
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(n, v)| (n.trim().to_owned(), v.trim().to_owned()))
        .collect();
    let mut body = raw[split + 4..].to_vec();
    let chunked = headers
        .iter()
        .any(|(n, v)| n.eq_ignore_ascii_case("transfer-encoding") && v.contains("chunked"));
    if chunked {
        body = dechunk(&body);
    }
    Reply {
        status,
        headers,
        body,
    }
}

fn dechunk(mut data: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    loop {
        let Some(line_end) = data.windows(2).position(|w| w == b"\r\n") else {
            return out;
        };
        let size = usize::from_str_radix(
            String::from_utf8_lossy(&data[..line_end])
                .split(';')
                .next()
                .unwrap_or("0")
                .trim(),
            16,
        )
        .unwrap_or(0);
        if size == 0 {
            return out;
        }
        let start = line_end + 2;
        out.extend_from_slice(&data[start..start + size]);
        data = &data[start + size + 2..];
    }
}
