//! One network connection to the hub: TCP, TLS, optionally a WebSocket, and the MQTT codec. A
//! reader task decodes packets onto a channel; the connection task writes through [`Writer`].

use std::sync::Arc;

use bytes::BytesMut;
use futures::SinkExt;
use futures::stream::{SplitSink, StreamExt};
use rmqtt_codec::v3::{Codec, Packet};
use rustls::ClientConfig;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadHalf, WriteHalf};
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message as WsMessage;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_util::codec::{Decoder, Encoder};

use super::error::ClientError;
use super::options::{Auth, ClientOptions, Transport};

/// The largest packet the client accepts from the hub (IoT Hub's own limit is 256 KiB messages;
/// twins and C2D bodies are smaller).
const MAX_INCOMING: u32 = 1024 * 1024;

pub(crate) trait Io: AsyncRead + AsyncWrite + Send + Unpin {}
impl<T: AsyncRead + AsyncWrite + Send + Unpin> Io for T {}

type Stream = Box<dyn Io>;

/// The write side of a connection.
pub(crate) enum Writer {
    Stream(WriteHalf<Stream>),
    WebSocket(SplitSink<WebSocketStream<Stream>, WsMessage>),
}

impl std::fmt::Debug for Writer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Writer::Stream(_) => "Writer::Stream",
            Writer::WebSocket(_) => "Writer::WebSocket",
        })
    }
}

impl Writer {
    /// Encodes and writes one packet (flushed).
    pub(crate) async fn send(&mut self, packet: Packet) -> Result<(), String> {
        self.send_all(std::iter::once(packet)).await
    }

    /// Encodes `packets` and writes them with one flush: over TLS one write (so one record
    /// where they fit, and one system call) instead of one per packet. The window of telemetry
    /// refilled after a run of PUBACKs goes out this way.
    pub(crate) async fn send_all(
        &mut self,
        packets: impl IntoIterator<Item = Packet>,
    ) -> Result<(), String> {
        let mut codec = Codec::new(0);
        match self {
            Writer::Stream(w) => {
                let mut buf = BytesMut::new();
                for packet in packets {
                    codec
                        .encode(packet, &mut buf)
                        .map_err(|e| format!("encode: {e:?}"))?;
                }
                if buf.is_empty() {
                    return Ok(());
                }
                w.write_all(&buf).await.map_err(|e| e.to_string())?;
                w.flush().await.map_err(|e| e.to_string())
            }
            // One WebSocket message per packet (a receiver may expect them aligned), one flush.
            Writer::WebSocket(w) => {
                for packet in packets {
                    let mut buf = BytesMut::new();
                    codec
                        .encode(packet, &mut buf)
                        .map_err(|e| format!("encode: {e:?}"))?;
                    w.feed(WsMessage::binary(buf.freeze()))
                        .await
                        .map_err(|e| e.to_string())?;
                }
                w.flush().await.map_err(|e| e.to_string())
            }
        }
    }
}

/// An open connection: the writer, the decoded packets (ending with `Err(reason)` when the
/// connection ends), and the reader task, stopped when this is dropped.
#[derive(Debug)]
pub(crate) struct Link {
    pub(crate) writer: Writer,
    pub(crate) packets: mpsc::Receiver<Result<Packet, String>>,
    reader: tokio::task::JoinHandle<()>,
}

impl Drop for Link {
    fn drop(&mut self) {
        self.reader.abort();
    }
}

/// The rustls configuration of the options: their roots (or the system's), their client
/// certificate if X.509. Built once per client.
pub(crate) fn tls_config(options: &ClientOptions) -> Result<Arc<ClientConfig>, ClientError> {
    let mut roots = rustls::RootCertStore::empty();
    match &options.ca_roots_pem {
        Some(pem) => {
            for cert in CertificateDer::pem_slice_iter(pem) {
                let cert = cert.map_err(|e| ClientError::Config(format!("CA roots: {e}")))?;
                roots
                    .add(cert)
                    .map_err(|e| ClientError::Config(format!("CA roots: {e}")))?;
            }
        }
        None => {
            let found = rustls_native_certs::load_native_certs();
            for cert in found.certs {
                // A system root rustls cannot parse is skipped, as browsers skip it.
                let _ = roots.add(cert);
            }
        }
    }
    if roots.is_empty() {
        return Err(ClientError::Config("no trusted CA roots".into()));
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| ClientError::Config(e.to_string()))?
        .with_root_certificates(roots);
    let config = match &options.auth {
        Auth::X509 {
            cert_chain_pem,
            key_pem,
        } => {
            let chain = CertificateDer::pem_slice_iter(cert_chain_pem)
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| ClientError::Config(format!("client certificate: {e}")))?;
            if chain.is_empty() {
                return Err(ClientError::Config(
                    "X.509 identity without a certificate".into(),
                ));
            }
            let key = PrivateKeyDer::from_pem_slice(key_pem)
                .map_err(|e| ClientError::Config(format!("client key: {e}")))?;
            builder
                .with_client_auth_cert(chain, key)
                .map_err(|e| ClientError::Config(format!("client certificate and key: {e}")))?
        }
        _ => builder.with_no_client_auth(),
    };
    Ok(Arc::new(config))
}

/// Opens TCP, TLS and (for [`Transport::WebSocket`]) the WebSocket; no MQTT yet.
pub(crate) async fn open(options: &ClientOptions, tls: &Arc<ClientConfig>) -> Result<Link, String> {
    let host = options.connect_host.as_str();
    let port = options.port_or_default();
    let tcp = TcpStream::connect((host, port))
        .await
        .map_err(|e| format!("connect {host}:{port}: {e}"))?;
    let _ = tcp.set_nodelay(true);
    let name =
        ServerName::try_from(host.to_string()).map_err(|e| format!("server name {host}: {e}"))?;
    let tls_stream = tokio_rustls::TlsConnector::from(tls.clone())
        .connect(name, tcp)
        .await
        .map_err(|e| format!("TLS with {host}:{port}: {e}"))?;
    let stream: Stream = Box::new(tls_stream);
    let (tx, packets) = mpsc::channel(64);
    match options.transport {
        Transport::Mqtt => {
            let (read, write) = tokio::io::split(stream);
            let reader = tokio::spawn(read_stream(read, tx));
            Ok(Link {
                writer: Writer::Stream(write),
                packets,
                reader,
            })
        }
        Transport::WebSocket => {
            let mut request = format!("wss://{host}:{port}/$iothub/websocket")
                .into_client_request()
                .map_err(|e| e.to_string())?;
            request
                .headers_mut()
                .insert("Sec-WebSocket-Protocol", HeaderValue::from_static("mqtt"));
            let (ws, _response) = tokio_tungstenite::client_async(request, stream)
                .await
                .map_err(|e| format!("WebSocket upgrade: {e}"))?;
            let (write, read) = ws.split();
            let reader = tokio::spawn(async move {
                let mut read = read;
                let mut codec = Codec::new(MAX_INCOMING);
                let mut buf = BytesMut::new();
                let end = loop {
                    match read.next().await {
                        Some(Ok(WsMessage::Binary(bytes))) => {
                            buf.extend_from_slice(&bytes);
                            if let Err(e) = drain(&mut codec, &mut buf, &tx).await {
                                break e;
                            }
                        }
                        Some(Ok(WsMessage::Close(_))) | None => {
                            break "closed by the hub".to_string();
                        }
                        Some(Ok(_)) => {}
                        Some(Err(e)) => break e.to_string(),
                    }
                };
                let _ = tx.send(Err(end)).await;
            });
            Ok(Link {
                writer: Writer::WebSocket(write),
                packets,
                reader,
            })
        }
    }
}

async fn read_stream(mut read: ReadHalf<Stream>, tx: mpsc::Sender<Result<Packet, String>>) {
    let mut codec = Codec::new(MAX_INCOMING);
    let mut buf = BytesMut::with_capacity(4096);
    let end = loop {
        match read.read_buf(&mut buf).await {
            Ok(0) => break "closed by the hub".to_string(),
            Ok(_) => {
                if let Err(e) = drain(&mut codec, &mut buf, &tx).await {
                    break e;
                }
            }
            Err(e) => break e.to_string(),
        }
    };
    let _ = tx.send(Err(end)).await;
}

/// Decodes every complete packet in `buf` onto `tx`.
async fn drain(
    codec: &mut Codec,
    buf: &mut BytesMut,
    tx: &mpsc::Sender<Result<Packet, String>>,
) -> Result<(), String> {
    loop {
        match codec.decode(buf) {
            Ok(Some((packet, _))) => {
                if tx.send(Ok(packet)).await.is_err() {
                    return Err("connection task gone".into());
                }
            }
            Ok(None) => return Ok(()),
            Err(e) => return Err(format!("malformed packet from the hub: {e:?}")),
        }
    }
}
