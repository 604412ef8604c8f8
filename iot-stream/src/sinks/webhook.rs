//! HTTP webhook endpoints: routed events POSTed as JSON to a URL, signed with HMAC-SHA256.
//!
//! Each request carries `x-iot-event-id` (see [`event_id`](super::event_id); a redelivery has the
//! same id) and `x-iot-signature: t=<unix seconds>,v1=<hex HMAC-SHA256 of "<t>.<body>">`, the
//! scheme GitHub and Stripe use: the receiver recomputes the MAC over the timestamp and the raw
//! body with the shared secret, compares in constant time, and refuses old timestamps (replays).

use std::fmt;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use base64::Engine;
use bytes::Bytes;
use hmac::{Hmac, Mac};
use http_body_util::{BodyExt, Full, Limited};
use hyper::client::conn::http1::SendRequest;
use hyper::{Request, StatusCode, Uri};
use hyper_util::rt::TokioIo;
use iot_core::StoredRecord;
use iot_core::time::Rfc3339;
use serde_json::{Map, Value, json};
use sha2::Sha256;
use tokio::net::TcpStream;
use tracing::debug;
use zeroize::Zeroizing;

use super::event::event_id;
use super::{Sink, SinkBatch, SinkError};

mod addresses;

pub use addresses::{AddressPolicy, is_public};

/// The header with the event id (per-event requests) or the batch id (batched requests).
pub const EVENT_ID_HEADER: &str = "x-iot-event-id";
/// The header with the signature, `t=<unix seconds>,v1=<hex MAC>`.
pub const SIGNATURE_HEADER: &str = "x-iot-signature";

/// A webhook's shared secret: never shown by `Debug`, wiped from memory when dropped.
#[derive(Clone)]
pub struct WebhookSecret(Zeroizing<Vec<u8>>);

impl WebhookSecret {
    /// The secret `bytes` (at least 16, so a MAC is not guessable from a short password).
    pub fn new(bytes: impl Into<Vec<u8>>) -> crate::Result<Self> {
        let bytes = Zeroizing::new(bytes.into());
        if bytes.len() < 16 {
            return Err(crate::Error::invalid(
                "a webhook secret must be at least 16 bytes",
            ));
        }
        Ok(WebhookSecret(bytes))
    }

    fn mac(&self) -> Hmac<Sha256> {
        // HMAC takes keys of any length: `new_from_slice` cannot fail for it.
        <Hmac<Sha256> as Mac>::new_from_slice(&self.0).unwrap_or_else(|_| unreachable!())
    }
}

impl fmt::Debug for WebhookSecret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("WebhookSecret(<redacted>)")
    }
}

/// The signature header's value for `body` sent at `timestamp` (unix seconds):
/// `t=<timestamp>,v1=<lowercase hex of HMAC-SHA256(secret, "<timestamp>." + body)>`.
pub fn sign(secret: &WebhookSecret, timestamp: u64, body: &[u8]) -> String {
    let mut mac = secret.mac();
    mac.update(timestamp.to_string().as_bytes());
    mac.update(b".");
    mac.update(body);
    format!("t={timestamp},v1={}", hex(&mac.finalize().into_bytes()))
}

/// Checks a signature header as a receiver does: the MAC matches `body` (compared in constant
/// time) and its timestamp is within `tolerance` of `now` (unix seconds), so a captured request
/// cannot be replayed later.
pub fn verify(
    secret: &WebhookSecret,
    header: &str,
    body: &[u8],
    now: u64,
    tolerance: Duration,
) -> bool {
    let mut timestamp = None;
    let mut signatures = Vec::new();
    for part in header.split(',') {
        match part.trim().split_once('=') {
            Some(("t", t)) => timestamp = t.parse::<u64>().ok(),
            Some(("v1", v)) => signatures.extend(unhex(v)),
            _ => {}
        }
    }
    let Some(timestamp) = timestamp else {
        return false;
    };
    if now.abs_diff(timestamp) > tolerance.as_secs() {
        return false;
    }
    signatures.iter().any(|signature| {
        let mut mac = secret.mac();
        mac.update(timestamp.to_string().as_bytes());
        mac.update(b".");
        mac.update(body);
        mac.verify_slice(signature).is_ok()
    })
}

fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut out = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        out.push(DIGITS[usize::from(b >> 4)] as char);
        out.push(DIGITS[usize::from(b & 0xf)] as char);
    }
    out
}

fn unhex(text: &str) -> Option<Vec<u8>> {
    if !text.len().is_multiple_of(2) {
        return None;
    }
    (0..text.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(text.get(i..i + 2)?, 16).ok())
        .collect()
}

/// How events are grouped into requests.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub enum WebhookMode {
    /// One request per event, its body the event's JSON object (the default; pair it with
    /// [`BatchPolicy::per_record`](super::BatchPolicy::per_record) so that a failing event does
    /// not hold back the next ones' retries).
    #[default]
    PerEvent,
    /// One request per batch, its body a JSON array of the events; `x-iot-event-id` is the
    /// batch's id `<first event id>+<count>`, and each object still has its own `id`.
    Batch,
}

/// POSTs an endpoint's events to a URL (`http://` or `https://`), signed with HMAC-SHA256.
///
/// Answers: 2xx is delivered; 408, 429, 5xx, a timeout or a connection error is
/// [`SinkError::Unavailable`] (retried by the sink processor with capped, jittered backoff);
/// any other answer (4xx, a redirect) is [`SinkError::Rejected`] and the batch is dead-lettered.
/// Connections are kept alive and reused.
///
/// Each event is a JSON object: `{"id":"alerts:0:17","endpoint":"alerts","partition":0,
/// "offset":17,"enqueuedTimeUtc":"…Z","deviceId":"dev-1","properties":{…},"body":"…"}` (the
/// body as text when it is UTF-8, else `"bodyBase64"`).
pub struct WebhookSink {
    name: String,
    endpoint: String,
    uri: Uri,
    https: bool,
    host: String,
    port: u16,
    secret: WebhookSecret,
    mode: WebhookMode,
    timeout: Duration,
    addresses: AddressPolicy,
    /// Set by [`tls`](Self::tls), else built from the system's roots at the first connection.
    tls: OnceLock<Arc<rustls::ClientConfig>>,
    idle: Mutex<Vec<SendRequest<Full<Bytes>>>>,
}

impl fmt::Debug for WebhookSink {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The URL's query may hold a token: only scheme, host, port and path are shown.
        f.debug_struct("WebhookSink")
            .field("name", &self.name)
            .field("endpoint", &self.endpoint)
            .field("url", &self.display_url())
            .field("secret", &self.secret)
            .field("mode", &self.mode)
            .field("timeout", &self.timeout)
            .field("addresses", &self.addresses)
            .finish_non_exhaustive()
    }
}

impl WebhookSink {
    /// A sink named `name` POSTing to `url`; `name` is also the endpoint part of event ids (set
    /// it to the endpoint's topic, or use [`endpoint`](Self::endpoint)). `https://` URLs trust
    /// the system's root certificates unless [`tls`](Self::tls) says otherwise.
    pub fn new(name: impl Into<String>, url: &str, secret: WebhookSecret) -> crate::Result<Self> {
        let name = name.into();
        let uri: Uri = url
            .parse()
            .map_err(|e| crate::Error::invalid(format!("webhook {name}: URL: {e}")))?;
        let https = match uri.scheme_str() {
            Some("http") => false,
            Some("https") => true,
            _ => {
                return Err(crate::Error::invalid(format!(
                    "webhook {name}: the URL must be http:// or https://"
                )));
            }
        };
        let Some(host) = uri.host().map(|h| h.trim_matches(['[', ']']).to_owned()) else {
            return Err(crate::Error::invalid(format!(
                "webhook {name}: the URL has no host"
            )));
        };
        let port = uri.port_u16().unwrap_or(if https { 443 } else { 80 });
        Ok(WebhookSink {
            endpoint: name.clone(),
            name,
            uri,
            https,
            host,
            port,
            secret,
            mode: WebhookMode::default(),
            timeout: Duration::from_secs(10),
            addresses: AddressPolicy::default(),
            tls: OnceLock::new(),
            idle: Mutex::new(Vec::new()),
        })
    }

    /// Sets the endpoint name in event ids (default: the sink's name).
    pub fn endpoint(mut self, endpoint: impl Into<String>) -> Self {
        self.endpoint = endpoint.into();
        self
    }

    /// Sets how events are grouped into requests (default [`WebhookMode::PerEvent`]).
    pub fn mode(mut self, mode: WebhookMode) -> Self {
        self.mode = mode;
        self
    }

    /// Sets how long one request may take, connecting included (default 10 s).
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// Sets which addresses the sink may connect to (default [`AddressPolicy::Any`]). Use
    /// [`AddressPolicy::PublicOnly`] when the URL comes from someone other than the operator:
    /// a URL whose host resolves to no public address is then refused
    /// ([`SinkError::Rejected`]) without a connection being made.
    pub fn addresses(mut self, policy: AddressPolicy) -> Self {
        self.addresses = policy;
        self
    }

    /// Sets the TLS configuration of `https://` URLs (default: the system's root certificates).
    pub fn tls(self, config: Arc<rustls::ClientConfig>) -> Self {
        let tls = OnceLock::new();
        let _ = tls.set(config);
        WebhookSink { tls, ..self }
    }

    /// The URL without its query (which may hold a token): for logs and errors.
    fn display_url(&self) -> String {
        format!(
            "{}://{}:{}{}",
            if self.https { "https" } else { "http" },
            self.host,
            self.port,
            self.uri.path()
        )
    }

    fn unavailable(&self, what: impl fmt::Display) -> SinkError {
        SinkError::Unavailable {
            reason: format!("POST {}: {what}", self.display_url()),
        }
    }

    fn tls_config(&self) -> Result<Arc<rustls::ClientConfig>, SinkError> {
        if let Some(config) = self.tls.get() {
            return Ok(config.clone());
        }
        let mut roots = rustls::RootCertStore::empty();
        let native = rustls_native_certs::load_native_certs();
        roots.add_parsable_certificates(native.certs);
        if roots.is_empty() {
            return Err(SinkError::Rejected {
                reason: "no root certificates for https webhooks (set WebhookSink::tls)".into(),
            });
        }
        let config = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .map_err(|e| SinkError::Rejected {
            reason: format!("TLS configuration: {e}"),
        })?
        .with_root_certificates(roots)
        .with_no_client_auth();
        Ok(self.tls.get_or_init(|| Arc::new(config)).clone())
    }

    /// A TCP connection to the URL's host, on an address the sink's [`AddressPolicy`] allows.
    async fn connect_tcp(&self) -> Result<TcpStream, SinkError> {
        if self.addresses == AddressPolicy::Any {
            return TcpStream::connect((self.host.as_str(), self.port))
                .await
                .map_err(|e| self.unavailable(format!("connect: {e}")));
        }
        // Resolved once, checked, and connected to by address: the name is not looked up again
        // between the check and the connection.
        let resolved: Vec<std::net::SocketAddr> =
            tokio::net::lookup_host((self.host.as_str(), self.port))
                .await
                .map_err(|e| self.unavailable(format!("resolve: {e}")))?
                .collect();
        let (allowed, refused): (Vec<_>, Vec<_>) = resolved
            .into_iter()
            .partition(|a| self.addresses.allows(a.ip()));
        if allowed.is_empty() {
            let refused: Vec<String> = refused.iter().map(|a| a.ip().to_string()).collect();
            return Err(SinkError::Rejected {
                reason: format!(
                    "POST {}: {} resolves to no public address ({}); the webhook's address policy refuses it",
                    self.display_url(),
                    self.host,
                    refused.join(", ")
                ),
            });
        }
        let mut errors = Vec::new();
        for address in allowed {
            match TcpStream::connect(address).await {
                Ok(tcp) => return Ok(tcp),
                Err(e) => errors.push(format!("{address}: {e}")),
            }
        }
        Err(self.unavailable(format!("connect: {}", errors.join("; "))))
    }

    async fn connect(&self) -> Result<SendRequest<Full<Bytes>>, SinkError> {
        let tcp = self.connect_tcp().await?;
        let _ = tcp.set_nodelay(true);
        if self.https {
            let name = rustls::pki_types::ServerName::try_from(self.host.clone()).map_err(|e| {
                SinkError::Rejected {
                    reason: format!("webhook host {}: {e}", self.host),
                }
            })?;
            let tls = tokio_rustls::TlsConnector::from(self.tls_config()?)
                .connect(name, tcp)
                .await
                .map_err(|e| self.unavailable(format!("TLS: {e}")))?;
            let (sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
                .await
                .map_err(|e| self.unavailable(format!("handshake: {e}")))?;
            tokio::spawn(connection);
            Ok(sender)
        } else {
            let (sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(tcp))
                .await
                .map_err(|e| self.unavailable(format!("handshake: {e}")))?;
            tokio::spawn(connection);
            Ok(sender)
        }
    }

    /// An open connection: an idle one that is still usable, else a new one.
    async fn sender(&self) -> Result<SendRequest<Full<Bytes>>, SinkError> {
        loop {
            let idle = self.idle.lock().unwrap_or_else(|p| p.into_inner()).pop();
            let Some(mut sender) = idle else { break };
            if sender.ready().await.is_ok() {
                return Ok(sender);
            }
        }
        self.connect().await
    }

    /// One signed POST of `body`.
    async fn post(&self, id: &str, body: Vec<u8>) -> Result<(), SinkError> {
        let timestamp = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        let signature = sign(&self.secret, timestamp, &body);
        let authority = self
            .uri
            .authority()
            .map(|a| a.as_str().rsplit('@').next().unwrap_or_default().to_owned())
            .unwrap_or_else(|| self.host.clone());
        let path = self.uri.path_and_query().map(|p| p.as_str()).unwrap_or("/");
        let request = Request::post(path)
            .header(hyper::header::HOST, authority)
            .header(hyper::header::CONTENT_TYPE, "application/json")
            .header(hyper::header::USER_AGENT, "iot-sdk-webhook")
            .header(EVENT_ID_HEADER, id)
            .header(SIGNATURE_HEADER, signature)
            .body(Full::new(Bytes::from(body)))
            .map_err(|e| SinkError::Rejected {
                reason: format!("request for {}: {e}", self.display_url()),
            })?;
        let exchange = async {
            let mut sender = self.sender().await?;
            let response = sender
                .send_request(request)
                .await
                .map_err(|e| self.unavailable(e))?;
            let status = response.status();
            // Read the (small) answer so that the connection can carry the next request.
            let drained = Limited::new(response.into_body(), 64 << 10)
                .collect()
                .await
                .is_ok();
            if drained && !sender.is_closed() {
                self.idle
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .push(sender);
            }
            Ok::<_, SinkError>(status)
        };
        let status = tokio::time::timeout(self.timeout, exchange)
            .await
            .map_err(|_| self.unavailable(format!("no answer within {:?}", self.timeout)))??;
        classify(status).map_err(|e| match e {
            Classified::Retry => self.unavailable(format!("answered {status}")),
            Classified::Refused => SinkError::Rejected {
                reason: format!("POST {}: answered {status}", self.display_url()),
            },
        })?;
        debug!(webhook = %self.name, id, %status, "event delivered");
        Ok(())
    }

    fn event(&self, stored: &StoredRecord) -> Value {
        let record = &stored.record;
        let properties: Map<String, Value> = record
            .headers
            .iter()
            .map(|(k, v)| (k.to_owned(), Value::from(v)))
            .collect();
        let time = |micros: u64| Rfc3339(i64::try_from(micros).unwrap_or(i64::MAX)).to_string();
        let mut event = json!({
            "id": event_id(&self.endpoint, stored),
            "endpoint": self.endpoint,
            "partition": stored.partition.0,
            "offset": stored.offset.0,
            "enqueuedTimeUtc": time(stored.enqueued_time.as_unix_micros()),
            "deviceId": record.key,
            "properties": properties,
        });
        let body = match std::str::from_utf8(&record.payload) {
            Ok(text) => ("body", Value::from(text)),
            Err(_) => (
                "bodyBase64",
                Value::from(base64::engine::general_purpose::STANDARD.encode(&record.payload)),
            ),
        };
        if let Value::Object(map) = &mut event {
            map.insert(body.0.to_owned(), body.1);
        }
        event
    }
}

enum Classified {
    Retry,
    Refused,
}

fn classify(status: StatusCode) -> Result<(), Classified> {
    if status.is_success() {
        Ok(())
    } else if status.is_server_error()
        || status == StatusCode::REQUEST_TIMEOUT
        || status == StatusCode::TOO_MANY_REQUESTS
    {
        Err(Classified::Retry)
    } else {
        Err(Classified::Refused)
    }
}

fn to_json(value: &Value) -> Result<Vec<u8>, SinkError> {
    serde_json::to_vec(value).map_err(|e| SinkError::Rejected {
        reason: format!("JSON encoding: {e}"),
    })
}

#[async_trait]
impl Sink for WebhookSink {
    fn name(&self) -> &str {
        &self.name
    }

    async fn write(&self, batch: SinkBatch<'_>) -> Result<(), SinkError> {
        match self.mode {
            WebhookMode::PerEvent => {
                for stored in batch.records {
                    let event = self.event(stored);
                    self.post(&event_id(&self.endpoint, stored), to_json(&event)?)
                        .await?;
                }
            }
            WebhookMode::Batch => {
                let Some(first) = batch.first() else {
                    return Ok(());
                };
                let id = format!(
                    "{}+{}",
                    event_id(&self.endpoint, first),
                    batch.records.len()
                );
                let events: Vec<Value> = batch.records.iter().map(|r| self.event(r)).collect();
                self.post(&id, to_json(&Value::Array(events))?).await?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_signature_verifies_only_for_its_body_secret_and_time() {
        let secret = WebhookSecret::new(*b"0123456789abcdef").unwrap();
        let header = sign(&secret, 1_700_000_000, b"{\"a\":1}");
        let ok =
            |h: &str, body: &[u8], now| verify(&secret, h, body, now, Duration::from_secs(300));
        assert!(ok(&header, b"{\"a\":1}", 1_700_000_100));
        assert!(!ok(&header, b"{\"a\":2}", 1_700_000_100));
        assert!(!ok(&header, b"{\"a\":1}", 1_700_000_400), "too old");
        let other = WebhookSecret::new(*b"fedcba9876543210").unwrap();
        assert!(!verify(
            &other,
            &header,
            b"{\"a\":1}",
            1_700_000_000,
            Duration::from_secs(1)
        ));
        assert!(!ok("t=1700000000", b"{\"a\":1}", 1_700_000_000));
        assert!(!ok("garbage", b"", 0));
        assert!(header.starts_with("t=1700000000,v1="));
        assert_eq!(header.len(), "t=1700000000,v1=".len() + 64);
    }

    #[test]
    fn the_secret_is_never_shown() {
        let secret = WebhookSecret::new(*b"super-secret-key-123").unwrap();
        let sink = WebhookSink::new("hook", "http://127.0.0.1:9/in?token=abc", secret).unwrap();
        let shown = format!("{sink:?}");
        assert!(!shown.contains("super-secret"), "{shown}");
        assert!(!shown.contains("token=abc"), "{shown}");
        assert!(WebhookSecret::new(*b"short").is_err());
        assert!(WebhookSink::new("h", "ftp://x/", WebhookSecret::new([7; 16]).unwrap()).is_err());
    }

    #[tokio::test]
    async fn public_only_refuses_a_local_host_without_connecting() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let port = listener.local_addr().unwrap().port();
        let secret = WebhookSecret::new([7; 16]).unwrap();
        for host in ["127.0.0.1", "localhost"] {
            let url = format!("http://{host}:{port}/in");
            let sink = WebhookSink::new("hook", &url, secret.clone())
                .unwrap()
                .addresses(AddressPolicy::PublicOnly);
            match sink.connect_tcp().await {
                Err(SinkError::Rejected { reason }) => {
                    assert!(reason.contains("address policy"), "{reason}");
                    assert!(reason.contains(host), "{reason}");
                }
                other => panic!("{host}: expected a refusal, got {other:?}"),
            }
        }
        // Nothing reached the listener.
        assert_eq!(
            listener.accept().unwrap_err().kind(),
            std::io::ErrorKind::WouldBlock
        );
        // The default policy connects.
        let sink =
            WebhookSink::new("hook", &format!("http://127.0.0.1:{port}/in"), secret).unwrap();
        sink.connect_tcp().await.unwrap();
        assert!(listener.accept().is_ok());
    }

    #[test]
    fn answers_are_classified_as_the_docs_say() {
        assert!(classify(StatusCode::OK).is_ok());
        assert!(classify(StatusCode::NO_CONTENT).is_ok());
        for retry in [500, 502, 503, 408, 429] {
            let status = StatusCode::from_u16(retry).unwrap();
            assert!(
                matches!(classify(status), Err(Classified::Retry)),
                "{retry}"
            );
        }
        for refuse in [400, 401, 404, 410, 301] {
            let status = StatusCode::from_u16(refuse).unwrap();
            assert!(
                matches!(classify(status), Err(Classified::Refused)),
                "{refuse}"
            );
        }
    }
}
