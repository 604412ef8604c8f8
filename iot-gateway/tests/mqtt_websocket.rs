//! MQTT over WebSocket: the upgrade rules (path `/$iothub/websocket`, subprotocol `mqtt`) and
//! MQTT packets that span or share WebSocket messages.

mod mqtt_support;

use futures::{SinkExt, StreamExt};
use mqtt_support::raw::{connect, publish};
use mqtt_support::{Fixture, PATIENCE};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;

type Ws = tokio_tungstenite::WebSocketStream<TcpStream>;

async fn open(
    addr: std::net::SocketAddr,
    path: &str,
    subprotocol: Option<&str>,
) -> Result<Ws, String> {
    let mut request = format!("ws://{addr}{path}")
        .into_client_request()
        .expect("request");
    if let Some(p) = subprotocol {
        request.headers_mut().insert(
            "Sec-WebSocket-Protocol",
            HeaderValue::from_str(p).expect("header"),
        );
    }
    let tcp = TcpStream::connect(addr).await.expect("connect");
    match tokio_tungstenite::client_async(request, tcp).await {
        Ok((ws, response)) => {
            assert_eq!(response.headers()["Sec-WebSocket-Protocol"], "mqtt");
            Ok(ws)
        }
        Err(e) => Err(e.to_string()),
    }
}

/// Reads binary messages until `n` bytes arrived.
async fn read_bytes(ws: &mut Ws, n: usize) -> Vec<u8> {
    let mut got = Vec::new();
    tokio::time::timeout(PATIENCE, async {
        while got.len() < n {
            match ws.next().await {
                Some(Ok(Message::Binary(bytes))) => got.extend_from_slice(&bytes),
                Some(Ok(_)) => {}
                other => panic!("connection ended: {other:?}"),
            }
        }
    })
    .await
    .expect("bytes in time");
    got
}

#[tokio::test]
async fn telemetry_over_websocket_with_packets_split_and_joined() {
    let fx = Fixture::start().await;
    let addr = fx
        .server
        .listen_websocket("127.0.0.1:0".parse().expect("addr"), None)
        .await
        .expect("listen");
    let device = fx.device("ws-1").await;
    let mut ws = open(addr, "/$iothub/websocket", Some("mqtt"))
        .await
        .expect("upgrade");

    // CONNECT split over two messages.
    let hello = connect(&device);
    let (a, b) = hello.split_at(7);
    ws.send(Message::binary(a.to_vec())).await.expect("send");
    ws.send(Message::binary(b.to_vec())).await.expect("send");
    assert_eq!(read_bytes(&mut ws, 4).await, vec![0x20, 2, 0, 0]);

    // Two QoS 1 publishes in one message: two PUBACKs.
    let mut both = publish(b"devices/ws-1/messages/events/n=1", 1, b"one");
    both.extend(publish(b"devices/ws-1/messages/events/n=2", 1, b"two"));
    ws.send(Message::binary(both)).await.expect("send");
    assert_eq!(
        read_bytes(&mut ws, 8).await,
        vec![0x40, 2, 0, 1, 0x40, 2, 0, 1]
    );
    let records = fx.telemetry(&device.id, 2).await;
    assert_eq!(records[0].record.payload.as_ref(), b"one");
    assert_eq!(records[1].record.headers.get("n"), Some("2"));
}

#[tokio::test]
async fn upgrade_needs_the_path_and_the_mqtt_subprotocol() {
    let fx = Fixture::start().await;
    let addr = fx
        .server
        .listen_websocket("127.0.0.1:0".parse().expect("addr"), None)
        .await
        .expect("listen");
    let wrong_path = open(addr, "/mqtt", Some("mqtt"))
        .await
        .expect_err("refused");
    assert!(wrong_path.contains("404"), "{wrong_path}");
    let no_protocol = open(addr, "/$iothub/websocket", None)
        .await
        .expect_err("refused");
    assert!(no_protocol.contains("400"), "{no_protocol}");
}

#[tokio::test]
async fn a_text_message_ends_the_connection() {
    let fx = Fixture::start().await;
    let addr = fx
        .server
        .listen_websocket("127.0.0.1:0".parse().expect("addr"), None)
        .await
        .expect("listen");
    let device = fx.device("ws-2").await;
    let mut ws = open(addr, "/$iothub/websocket", Some("mqtt"))
        .await
        .expect("upgrade");
    ws.send(Message::binary(connect(&device)))
        .await
        .expect("send");
    assert_eq!(read_bytes(&mut ws, 4).await, vec![0x20, 2, 0, 0]);
    ws.send(Message::text("not mqtt")).await.expect("send");
    let end = tokio::time::timeout(PATIENCE, async {
        loop {
            match ws.next().await {
                None | Some(Err(_)) | Some(Ok(Message::Close(_))) => return,
                Some(Ok(_)) => {}
            }
        }
    })
    .await;
    assert!(end.is_ok(), "the server should end the connection");
}
