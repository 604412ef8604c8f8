//! AMQP over WebSocket (feature `amqp`), as IoT Hub serves it on
//! `wss://{host}:443/$iothub/websocket` with the subprotocol `AMQPWSB10`: on the endpoint's own
//! listeners (`listen_ws`, `listen_wss`) and handed over by the HTTP server's upgrade dispatch
//! (`WebSocketUpgrades`, REST and MQTT on the same port). The peer is fe2o3-amqp's client on
//! tokio-tungstenite's client side, bridged by the small adapter below; it splits what it
//! writes into WebSocket messages of a chosen size, so that frames span messages (and one
//! message holds several frames when the size is large).

mod amqp_support;

use std::net::SocketAddr;

use amqp_support::{Client, Fixture, HOST, PATIENCE, app, message};
use fe2o3_amqp::Sender;
use fe2o3_amqp::sasl_profile::SaslProfile;
use fe2o3_amqp::types::messaging::{MessageId, Outcome, Properties};
use fe2o3_amqp::types::primitives::SimpleValue;
use futures::{SinkExt, StreamExt};
use iot_gateway::http::{HttpConfig, HttpServer, WebSocketUpgrades};
use iot_gateway::message::header;
use iot_gateway::mqtt::{MqttConfig, MqttServer};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, DuplexStream};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;

const PATH: &str = "/$iothub/websocket";

/// The upgrade on `io` to `authority`'s `/$iothub/websocket` asking for `subprotocol`; the
/// WebSocket and the subprotocol the answer names, or the refusal.
async fn upgrade<S>(
    io: S,
    authority: &str,
    subprotocol: &str,
) -> Result<(tokio_tungstenite::WebSocketStream<S>, String), String>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let mut request = format!("ws://{authority}{PATH}")
        .into_client_request()
        .expect("request");
    request.headers_mut().insert(
        "Sec-WebSocket-Protocol",
        HeaderValue::from_str(subprotocol).expect("header"),
    );
    let (ws, response) = tokio_tungstenite::client_async(request, io)
        .await
        .map_err(|e| e.to_string())?;
    let answered = response
        .headers()
        .get("Sec-WebSocket-Protocol")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_string();
    Ok((ws, answered))
}

/// A byte stream over `ws`: what is written goes out in binary messages of at most `chunk`
/// bytes; what arrives in binary messages is read. Ends (EOF) when the server closes.
fn bridged<S>(ws: tokio_tungstenite::WebSocketStream<S>, chunk: usize) -> DuplexStream
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (ours, theirs) = tokio::io::duplex(64 * 1024);
    tokio::spawn(async move {
        let (mut sink, mut messages) = ws.split();
        let (mut from_client, mut to_client) = tokio::io::split(theirs);
        let inbound = async {
            while let Some(Ok(message)) = messages.next().await {
                let bytes = match message {
                    Message::Binary(bytes) => bytes,
                    Message::Close(_) => break,
                    _ => continue,
                };
                if to_client.write_all(&bytes).await.is_err() {
                    break;
                }
            }
            let _ = to_client.shutdown().await;
        };
        let outbound = async {
            let mut buf = vec![0u8; 16 * 1024];
            while let Ok(n) = from_client.read(&mut buf).await {
                if n == 0 {
                    break;
                }
                for piece in buf[..n].chunks(chunk) {
                    if sink.send(Message::binary(piece.to_vec())).await.is_err() {
                        return;
                    }
                }
            }
            let _ = sink.close().await;
        };
        tokio::select! {
            () = inbound => {}
            () = outbound => {}
        }
    });
    ours
}

/// Puts a device token on `client`'s `$cbs` and sends one telemetry message with a message id
/// and a property; checks it lands in the log with them.
async fn telemetry_lands(fx: &Fixture, mut client: Client, name: &str) {
    let (id, key) = fx.device(name).await;
    client.authorize_device(fx, &id, &key).await;
    let mut sender = Sender::attach(
        &mut client.session,
        "tel",
        format!("/devices/{id}/messages/events"),
    )
    .await
    .expect("attach");
    let props = Properties {
        message_id: Some(MessageId::String(format!("{name}-1"))),
        ..Properties::default()
    };
    let outcome = sender
        .send(message(
            b"over websocket",
            props,
            app(&[("site", SimpleValue::String("lab-7".into()))]),
        ))
        .await
        .expect("send");
    assert!(matches!(outcome, Outcome::Accepted(_)), "{outcome:?}");
    let records = fx.telemetry_of(&id).await;
    assert_eq!(records.len(), 1);
    assert_eq!(records[0].payload, &b"over websocket"[..]);
    assert_eq!(records[0].headers.get(header::DEVICE_ID), Some(id.as_str()));
    assert_eq!(
        records[0].headers.get(header::MESSAGE_ID),
        Some(format!("{name}-1").as_str())
    );
    assert_eq!(records[0].headers.get("site"), Some("lab-7"));
    sender.close().await.expect("close");
    client.session.end().await.expect("end session");
    client.connection.close().await.expect("close connection");
}

/// An AMQP client over plain WebSocket to `addr`, messages of at most `chunk` bytes.
async fn ws_client(addr: SocketAddr, subprotocol: &str, chunk: usize) -> Client {
    let tcp = TcpStream::connect(addr).await.expect("tcp");
    let (ws, answered) = upgrade(tcp, &addr.to_string(), subprotocol)
        .await
        .expect("upgrade");
    assert_eq!(
        answered, subprotocol,
        "the answer names the subprotocol asked for"
    );
    Client::over(bridged(ws, chunk), SaslProfile::Anonymous)
        .await
        .expect("AMQP over WebSocket")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn telemetry_over_ws_with_frames_split_across_and_joined_in_messages() {
    let fx = Fixture::start().await;
    let addr = fx
        .server
        .listen_ws("127.0.0.1:0".parse().expect("addr"))
        .await
        .expect("listen_ws");
    // 5-byte messages: every frame (and the protocol headers) spans several.
    telemetry_lands(&fx, ws_client(addr, "AMQPWSB10", 5).await, "ws-split").await;
    // 16 KiB messages: a message holds what the client wrote at once, often several frames.
    telemetry_lands(
        &fx,
        ws_client(addr, "AMQPWSB10", 16 * 1024).await,
        "ws-joined",
    )
    .await;
    // The OASIS binding's name for the subprotocol is served too.
    telemetry_lands(&fx, ws_client(addr, "amqp", 16 * 1024).await, "ws-oasis").await;
    fx.server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn telemetry_over_wss() {
    let fx = Fixture::start().await;
    let addr = fx
        .server
        .listen_wss(
            "127.0.0.1:0".parse().expect("addr"),
            fx.pair.tls_config(false).expect("tls"),
        )
        .await
        .expect("listen_wss");
    let tls = fx.tls_to(addr).await;
    let (ws, answered) = upgrade(tls, &format!("{HOST}:{}", addr.port()), "AMQPWSB10")
        .await
        .expect("upgrade");
    assert_eq!(answered, "AMQPWSB10");
    let client = Client::over(bridged(ws, 16 * 1024), SaslProfile::Anonymous)
        .await
        .expect("AMQP over wss");
    telemetry_lands(&fx, client, "wss").await;
    fx.server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upgrades_that_are_not_amqp_are_refused() {
    let fx = Fixture::start().await;
    let addr = fx
        .server
        .listen_ws("127.0.0.1:0".parse().expect("addr"))
        .await
        .expect("listen_ws");
    for subprotocol in ["mqtt", "AMQPWSB9", ""] {
        let tcp = TcpStream::connect(addr).await.expect("tcp");
        let refused = upgrade(tcp, &addr.to_string(), subprotocol).await;
        let why = refused.expect_err("refused");
        assert!(why.contains("400"), "{subprotocol:?}: {why}");
    }
    let tcp = TcpStream::connect(addr).await.expect("tcp");
    let mut request = format!("ws://{addr}/mqtt")
        .into_client_request()
        .expect("request");
    request.headers_mut().insert(
        "Sec-WebSocket-Protocol",
        HeaderValue::from_static("AMQPWSB10"),
    );
    let why = tokio_tungstenite::client_async(request, tcp)
        .await
        .expect_err("another path is refused")
        .to_string();
    assert!(why.contains("404"), "{why}");
    fx.server.shutdown().await;
}

/// Sends `bytes` in one binary message on a fresh WebSocket and reports whether the endpoint
/// then ends the connection (close, EOF or an error) within `PATIENCE`.
async fn ws_closes_after(addr: SocketAddr, bytes: &[u8], chunk: usize) -> bool {
    let tcp = TcpStream::connect(addr).await.expect("tcp");
    let (ws, _) = upgrade(tcp, &addr.to_string(), "AMQPWSB10")
        .await
        .expect("upgrade");
    let mut stream = bridged(ws, chunk);
    if stream.write_all(bytes).await.is_err() {
        return true;
    }
    let mut buf = vec![0u8; 4096];
    tokio::time::timeout(PATIENCE, async {
        loop {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => return true,
                Ok(_) => {}
            }
        }
    })
    .await
    .unwrap_or(false)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hostile_frame_over_websocket_closes_that_connection_only() {
    let fx = Fixture::start().await;
    let addr = fx
        .server
        .listen_ws("127.0.0.1:0".parse().expect("addr"))
        .await
        .expect("listen_ws");
    let (id, key) = fx.device("ws-hostile").await;
    let mut good = ws_client(addr, "AMQPWSB10", 16 * 1024).await;
    good.authorize_device(&fx, &id, &key).await;
    let mut sender = Sender::attach(
        &mut good.session,
        "tel",
        format!("/devices/{id}/messages/events"),
    )
    .await
    .expect("attach");

    // A frame whose size (4) is below its own 8-byte header: the frame guard ends the
    // connection, whether the frame comes in one message with the protocol header or spread
    // over several.
    let mut undersized = b"AMQP\x00\x01\x00\x00".to_vec();
    undersized.extend_from_slice(&[0, 0, 0, 4, 2, 0, 0, 0]);
    assert!(
        ws_closes_after(addr, &undersized, 1024).await,
        "undersized, one message"
    );
    assert!(
        ws_closes_after(addr, &undersized, 3).await,
        "undersized, split"
    );
    // An oversized frame (2 GiB announced).
    let mut oversized = b"AMQP\x00\x01\x00\x00".to_vec();
    oversized.extend_from_slice(&[0x7f, 0xff, 0xff, 0xff, 2, 0, 0, 0]);
    oversized.extend_from_slice(&[0u8; 64]);
    assert!(ws_closes_after(addr, &oversized, 1024).await, "oversized");

    // The good connection was untouched.
    let outcome = sender
        .send(message(b"still here", Properties::default(), app(&[])))
        .await
        .expect("send");
    assert!(matches!(outcome, Outcome::Accepted(_)), "{outcome:?}");
    assert_eq!(fx.telemetry_of(&id).await.len(), 1);
    fx.server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_http_server_hands_upgrades_to_amqp_and_mqtt_by_subprotocol() {
    let fx = Fixture::start().await;
    let mqtt = MqttServer::new(
        std::sync::Arc::new(fx.stack.hub.clone()),
        MqttConfig::default(),
    )
    .expect("mqtt");
    let router = WebSocketUpgrades::new()
        .mqtt(mqtt.clone())
        .amqp(fx.server.clone())
        .add_to(iot_gateway::http::router(fx.stack.state.clone()));
    let http = HttpServer::new(router, HttpConfig::default());
    let addr = http
        .listen_tcp("127.0.0.1:0".parse().expect("addr"))
        .await
        .expect("listen");

    // AMQPWSB10 reaches the AMQP endpoint: a whole device exchange runs.
    telemetry_lands(&fx, ws_client(addr, "AMQPWSB10", 7).await, "http-ws").await;
    // `mqtt` reaches the MQTT endpoint: it answers a CONNECT without a username with a CONNACK
    // refusing it (return code 4) where AMQP would have answered with its protocol header.
    let tcp = TcpStream::connect(addr).await.expect("tcp");
    let (ws, answered) = upgrade(tcp, &addr.to_string(), "mqtt")
        .await
        .expect("upgrade");
    assert_eq!(answered, "mqtt");
    let mut stream = bridged(ws, 1024);
    // CONNECT: protocol MQTT level 4, clean session, keep-alive 60, client id "x".
    let connect = [
        0x10, 13, 0, 4, b'M', b'Q', b'T', b'T', 4, 0x02, 0, 60, 0, 1, b'x',
    ];
    stream.write_all(&connect).await.expect("connect");
    let mut connack = [0u8; 4];
    tokio::time::timeout(PATIENCE, stream.read_exact(&mut connack))
        .await
        .expect("a CONNACK in time")
        .expect("connack");
    assert_eq!(connack[0], 0x20, "a CONNACK: {connack:?}");
    assert_ne!(connack[3], 0, "refused without credentials: {connack:?}");
    // Other subprotocols are refused; the REST API still answers on the same port.
    let tcp = TcpStream::connect(addr).await.expect("tcp");
    let why = upgrade(tcp, &addr.to_string(), "wamp")
        .await
        .expect_err("refused");
    assert!(why.contains("400"), "{why}");
    let mut tcp = TcpStream::connect(addr).await.expect("tcp");
    tcp.write_all(
        b"GET /devices/x?api-version=2021-04-12 HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n",
    )
    .await
    .expect("request");
    let mut answer = String::new();
    tcp.read_to_string(&mut answer).await.expect("answer");
    assert!(answer.starts_with("HTTP/1.1 401"), "{answer}");

    http.shutdown().await;
    mqtt.shutdown().await;
    fx.server.shutdown().await;
}
