//! Reject and abandon over IoT Hub's HTTPS device API (feature `client-https`).
//!
//! MQTT has one way to settle a C2D message, the PUBACK, which the hub takes as *complete*. The
//! HTTPS device API has all three: `DELETE /devices/{id}/messages/deviceBound/{etag}` (complete),
//! the same with `?reject`, and `POST …/{etag}/abandon`. This hub sends each MQTT delivery's lock
//! token (the `ETag` those calls take) as the `iothub-locktoken` property and settles such a call
//! in the inbox without touching the device's MQTT session (`docs/device-client.md`), so the
//! client rejects or abandons over HTTPS, then sends the PUBACK on MQTT only to free the packet
//! id (the hub finds the delivery settled and ignores it).
//!
//! One short HTTP/1.1 connection per settlement (hyper's client connection over the client's
//! own rustls configuration): settlements are rare, and a pooled connection would need its own
//! keep-alive and reconnect policy.

use std::sync::Arc;

use bytes::Bytes;
use http_body_util::Empty;
use hyper::http::{Method, Request, StatusCode, header};
use hyper_util::rt::TokioIo;
use iot_identity::sas;
use percent_encoding::{NON_ALPHANUMERIC, utf8_percent_encode};
use rustls::ClientConfig;
use rustls_pki_types::ServerName;
use tokio::net::TcpStream;

use super::error::ClientError;
use super::options::{Auth, ClientOptions};

/// The api-version the requests carry (the one the MQTT username names).
const API_VERSION: &str = "2021-04-12";
/// Lifetime of the SAS token signed for one request.
const REQUEST_TOKEN_LIFETIME: u64 = 300;

/// How a C2D message is settled over HTTPS.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Settle {
    Reject,
    Abandon,
}

/// Settles C2D messages of one device over the hub's HTTPS device API.
#[derive(Clone, Debug)]
pub(crate) struct HttpsSettler {
    options: Arc<ClientOptions>,
    tls: Arc<ClientConfig>,
    port: u16,
}

impl HttpsSettler {
    /// A settler when the options name the HTTPS port ([`ClientOptions::https_port`]).
    pub(crate) fn new(options: &Arc<ClientOptions>, tls: &Arc<ClientConfig>) -> Option<Self> {
        options.https_port.map(|port| HttpsSettler {
            options: options.clone(),
            tls: tls.clone(),
            port,
        })
    }

    /// Sends the settlement of delivery `lock_token`; `Ok` on the hub's 204.
    pub(crate) async fn settle(&self, lock_token: &str, how: Settle) -> Result<(), ClientError> {
        let options = &self.options;
        let authorization = match &options.auth {
            Auth::Key(key) => sas::generate(
                &options.sas_resource(),
                key,
                sas::unix_now() + REQUEST_TOKEN_LIFETIME,
                None,
            )
            .map_err(|e| ClientError::Config(format!("signing the SAS token: {e}")))?
            .as_str()
            .to_owned(),
            Auth::Token(token) => token.as_str().to_owned(),
            Auth::X509 { .. } => {
                return Err(ClientError::Config(
                    "settling over HTTPS needs a SAS key or token, not an X.509 identity".into(),
                ));
            }
        };
        let device = utf8_percent_encode(&options.device_id, NON_ALPHANUMERIC);
        let etag = utf8_percent_encode(lock_token, NON_ALPHANUMERIC);
        let (method, uri) = match how {
            Settle::Reject => (
                Method::DELETE,
                format!(
                    "/devices/{device}/messages/deviceBound/{etag}?reject&api-version={API_VERSION}"
                ),
            ),
            Settle::Abandon => (
                Method::POST,
                format!(
                    "/devices/{device}/messages/deviceBound/{etag}/abandon?api-version={API_VERSION}"
                ),
            ),
        };
        let host = options.connect_host.as_str();
        let request = Request::builder()
            .method(method)
            .uri(uri)
            .header(header::HOST, format!("{host}:{}", self.port))
            .header(header::AUTHORIZATION, authorization)
            .header(header::CONTENT_LENGTH, "0")
            .body(Empty::<Bytes>::new())
            .map_err(|e| ClientError::Https(format!("building the request: {e}")))?;
        let status = tokio::time::timeout(options.operation_timeout, self.send(request))
            .await
            .map_err(|_| ClientError::Timeout(options.operation_timeout))??;
        match status {
            StatusCode::NO_CONTENT | StatusCode::OK => Ok(()),
            other => Err(ClientError::HttpsStatus {
                status: other.as_u16(),
            }),
        }
    }

    async fn send(&self, request: Request<Empty<Bytes>>) -> Result<StatusCode, ClientError> {
        let host = self.options.connect_host.as_str();
        let port = self.port;
        let tcp = TcpStream::connect((host, port))
            .await
            .map_err(|e| ClientError::Https(format!("connect {host}:{port}: {e}")))?;
        let name = ServerName::try_from(host.to_string())
            .map_err(|e| ClientError::Config(format!("server name {host}: {e}")))?;
        let tls = tokio_rustls::TlsConnector::from(self.tls.clone())
            .connect(name, tcp)
            .await
            .map_err(|e| ClientError::Https(format!("TLS with {host}:{port}: {e}")))?;
        let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
            .await
            .map_err(|e| ClientError::Https(format!("HTTP with {host}:{port}: {e}")))?;
        // The connection future drives the socket; it ends when the response has been read and
        // `sender` is dropped.
        let driver = tokio::spawn(connection);
        let response = sender
            .send_request(request)
            .await
            .map_err(|e| ClientError::Https(format!("HTTP with {host}:{port}: {e}")));
        drop(sender);
        driver.abort();
        Ok(response?.status())
    }
}
