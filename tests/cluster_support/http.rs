//! A minimal HTTP/1.1 client for the nodes' service REST API (docs/http.md), over a plain tokio
//! `TcpStream`: one request per connection (`Connection: close`), the answer read to its end.
//! The root package has no HTTP client among its dependencies and the tests need only this much;
//! seeing the raw status and error code is what the tests assert on anyway.

use std::net::SocketAddr;
use std::time::Duration;

use iot_sdk::identity::{SymmetricKey, sas};
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// The api-version every request carries (the one the current service SDKs send).
pub const API_VERSION: &str = "2021-04-12";

/// How long one request may take before it fails: a guard against a hung node, not a limit any
/// healthy answer comes near.
const REQUEST_GUARD: Duration = Duration::from_secs(60);

/// One answer.
#[derive(Debug, Clone)]
pub struct Reply {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Reply {
    /// The first header called `name` (any case).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// The body as JSON (`Null` when it is not JSON).
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or(Value::Null)
    }

    /// IoT Hub's error code of an error answer (`iothub-errorcode`), if any.
    pub fn error_code(&self) -> Option<&str> {
        self.header("iothub-errorcode")
    }

    /// Status, error code and body, for assertion messages.
    pub fn describe(&self) -> String {
        format!(
            "{} {} {}",
            self.status,
            self.error_code().unwrap_or("-"),
            String::from_utf8_lossy(&self.body)
        )
    }
}

/// A `SharedAccessSignature` for the hub `host`, signed by the policy `policy` with `key`
/// (base64), valid for an hour.
pub fn service_token(host: &str, policy: &str, key_base64: &str) -> String {
    let key = SymmetricKey::from_base64(key_base64).unwrap();
    sas::generate(host, &key, sas::unix_now() + 3600, Some(policy))
        .unwrap()
        .as_str()
        .to_owned()
}

/// A back end of one node: its address and a service token.
#[derive(Debug, Clone)]
pub struct ServiceClient {
    pub addr: SocketAddr,
    token: String,
}

impl ServiceClient {
    /// A client of the node at `addr` as `iothubowner` with the cluster's service key.
    pub fn owner(addr: SocketAddr, host: &str, service_key: &str) -> Self {
        ServiceClient {
            addr,
            token: service_token(host, "iothubowner", service_key),
        }
    }

    /// `method path` with a JSON body (or none); `?api-version=` is added. An I/O error (the
    /// node is gone, say) is returned, not a panic.
    pub async fn json(
        &self,
        method: &str,
        path: &str,
        body: Option<&Value>,
    ) -> std::io::Result<Reply> {
        let bytes = body.map(|b| serde_json::to_vec(b).unwrap());
        let headers: &[(&str, &str)] = if body.is_some() {
            &[("Content-Type", "application/json; charset=utf-8")]
        } else {
            &[]
        };
        self.raw(method, path, headers, bytes.as_deref().unwrap_or_default())
            .await
    }

    /// `method path` with `headers` and a raw `body`; `?api-version=` is added.
    pub async fn raw(
        &self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: &[u8],
    ) -> std::io::Result<Reply> {
        let separator = if path.contains('?') { '&' } else { '?' };
        let mut request = format!(
            "{method} {path}{separator}api-version={API_VERSION} HTTP/1.1\r\nHost: {}\r\n\
             Connection: close\r\nAuthorization: {}\r\nContent-Length: {}\r\n",
            self.addr,
            self.token,
            body.len()
        );
        for (name, value) in headers {
            request.push_str(&format!("{name}: {value}\r\n"));
        }
        request.push_str("\r\n");
        let exchange = async {
            let mut stream = TcpStream::connect(self.addr).await?;
            stream.write_all(request.as_bytes()).await?;
            stream.write_all(body).await?;
            let mut raw = Vec::new();
            stream.read_to_end(&mut raw).await?;
            parse(&raw)
        };
        tokio::time::timeout(REQUEST_GUARD, exchange)
            .await
            .map_err(|_| {
                std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    format!("{method} {path} on {}: no answer in time", self.addr),
                )
            })?
    }
}

/// Parses one whole HTTP/1.1 answer (fixed length or chunked).
fn parse(raw: &[u8]) -> std::io::Result<Reply> {
    let bad = |what: &str| {
        std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("{what}: {}", String::from_utf8_lossy(raw)),
        )
    };
    let split = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or_else(|| bad("no end of headers"))?;
    let head = String::from_utf8_lossy(&raw[..split]).into_owned();
    let mut lines = head.split("\r\n");
    let status = lines
        .next()
        .and_then(|line| line.split(' ').nth(1))
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| bad("no status line"))?;
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(n, v)| (n.trim().to_owned(), v.trim().to_owned()))
        .collect();
    let mut body = raw[split + 4..].to_vec();
    let chunked = headers
        .iter()
        .any(|(n, v)| n.eq_ignore_ascii_case("transfer-encoding") && v.contains("chunked"));
    if chunked {
        body = dechunk(&body).ok_or_else(|| bad("bad chunked body"))?;
    }
    Ok(Reply {
        status,
        headers,
        body,
    })
}

fn dechunk(mut data: &[u8]) -> Option<Vec<u8>> {
    let mut out = Vec::new();
    loop {
        let line_end = data.windows(2).position(|w| w == b"\r\n")?;
        let size_text = String::from_utf8_lossy(&data[..line_end]);
        let size = usize::from_str_radix(size_text.split(';').next()?.trim(), 16).ok()?;
        if size == 0 {
            return Some(out);
        }
        let start = line_end + 2;
        out.extend_from_slice(data.get(start..start + size)?);
        data = data.get(start + size + 2..)?;
    }
}
