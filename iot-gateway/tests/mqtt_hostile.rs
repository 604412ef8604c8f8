//! Malformed and hostile input: each case closes that one connection, without a panic, while a
//! well-behaved device on the same server keeps working.

mod mqtt_support;

use std::time::Duration;

use iot_gateway::mqtt::MqttConfig;
use mqtt_support::raw::{connect, connect_keep_alive, connect_with, packet, publish, string};
use mqtt_support::{Client, Device, Fixture, PATIENCE};
use rumqttc::QoS;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

fn config(edit: impl FnOnce(&mut MqttConfig)) -> MqttConfig {
    let mut config = MqttConfig::default();
    edit(&mut config);
    config
}

/// A raw connection that completed CONNECT / CONNACK.
async fn raw_session(fx: &Fixture, device: &Device) -> TcpStream {
    let mut stream = TcpStream::connect(fx.addr).await.expect("connect");
    stream.write_all(&connect(device)).await.expect("write");
    let mut connack = [0u8; 4];
    tokio::time::timeout(PATIENCE, stream.read_exact(&mut connack))
        .await
        .expect("CONNACK in time")
        .expect("CONNACK");
    assert_eq!(connack, [0x20, 2, 0, 0], "accepted");
    stream
}

/// Reads until the server closes; returns what it sent before.
async fn closed_by_server(stream: &mut TcpStream) -> Vec<u8> {
    let mut seen = Vec::new();
    let read = async {
        let mut buf = [0u8; 4096];
        loop {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => seen.extend_from_slice(&buf[..n]),
            }
        }
    };
    tokio::time::timeout(PATIENCE, read)
        .await
        .expect("the server should close the connection");
    seen
}

/// A well-behaved device that must not notice any of this.
struct Bystander {
    device: Device,
    client: Client,
}

impl Bystander {
    async fn join(fx: &Fixture) -> Bystander {
        let device = fx.device("bystander").await;
        let client = Client::connect_device(&device, fx.addr).await;
        Bystander { device, client }
    }

    /// Publishes one more message and sees it land; `sent` counts what it sent before.
    async fn still_works(&self, fx: &Fixture, sent: usize) {
        self.client
            .client
            .publish(
                "devices/bystander/messages/events/",
                QoS::AtLeastOnce,
                false,
                b"ok".to_vec(),
            )
            .await
            .expect("publish");
        let records = fx.telemetry(&self.device.id, sent + 1).await;
        assert_eq!(records.len(), sent + 1);
    }
}

/// Sends `bytes` on a fresh connection (after CONNECT when `session`), expects the server to
/// close it, and checks that the bystander is unaffected.
async fn expect_closed(bytes: &[u8], session: bool) -> Vec<u8> {
    let fx = Fixture::start().await;
    let bystander = Bystander::join(&fx).await;
    let attacker = fx.device("attacker").await;
    let mut stream = if session {
        raw_session(&fx, &attacker).await
    } else {
        TcpStream::connect(fx.addr).await.expect("connect")
    };
    stream.write_all(bytes).await.expect("write");
    let seen = closed_by_server(&mut stream).await;
    bystander.still_works(&fx, 0).await;
    seen
}

#[tokio::test]
async fn truncated_packet_then_eof() {
    let fx = Fixture::start().await;
    let bystander = Bystander::join(&fx).await;
    let mut stream = TcpStream::connect(fx.addr).await.expect("connect");
    let device = fx.device("attacker").await;
    let full = connect(&device);
    stream
        .write_all(&full[..full.len() / 2])
        .await
        .expect("write");
    stream.shutdown().await.expect("half close");
    closed_by_server(&mut stream).await;
    bystander.still_works(&fx, 0).await;
}

#[tokio::test]
async fn field_lengths_past_the_packet_end() {
    // A PUBLISH whose topic length (300) runs past its remaining length (10).
    let mut body = 300u16.to_be_bytes().to_vec();
    body.extend_from_slice(b"devices/x");
    body.truncate(10);
    expect_closed(&packet(0x30, &body), true).await;
}

#[tokio::test]
async fn remaining_length_of_five_bytes() {
    expect_closed(&[0x30, 0xFF, 0xFF, 0xFF, 0xFF, 0x7F], true).await;
}

#[tokio::test]
async fn remaining_length_over_the_maximum_is_refused_before_reading_the_body() {
    // 268 435 455 bytes announced; nothing follows. The server must close without waiting.
    expect_closed(&[0x30, 0xFF, 0xFF, 0xFF, 0x7F], true).await;
}

#[tokio::test]
async fn wrong_protocol_name() {
    let fx = Fixture::start().await;
    let device = fx.device("attacker").await;
    let mut stream = TcpStream::connect(fx.addr).await.expect("connect");
    stream
        .write_all(&connect_with(b"MQTX", 4, &device))
        .await
        .expect("write");
    closed_by_server(&mut stream).await;
}

#[tokio::test]
async fn wrong_protocol_level_is_answered_then_closed() {
    let fx = Fixture::start().await;
    let device = fx.device("attacker").await;
    for level in [3u8, 5, 9] {
        let mut stream = TcpStream::connect(fx.addr).await.expect("connect");
        stream
            .write_all(&connect_with(b"MQTT", level, &device))
            .await
            .expect("write");
        let seen = closed_by_server(&mut stream).await;
        if level == 3 || level == 5 {
            // Unacceptable protocol version (3.1 named "MQTT", and 5.0, parse as CONNECT).
            assert_eq!(seen, vec![0x20, 2, 0, 1], "level {level}");
        }
    }
}

#[tokio::test]
async fn second_connect() {
    let fx = Fixture::start().await;
    let attacker = fx.device("attacker").await;
    let bytes = connect(&attacker);
    drop(fx);
    expect_closed(&bytes, true).await;
}

#[tokio::test]
async fn publish_before_connect() {
    expect_closed(
        &publish(b"devices/attacker/messages/events/", 0, b"x"),
        false,
    )
    .await;
}

#[tokio::test]
async fn invalid_utf8_in_topic() {
    expect_closed(
        &publish(b"devices/attacker/messages/events/\xFF\xFE", 0, b"x"),
        true,
    )
    .await;
}

#[tokio::test]
async fn nul_in_topic() {
    expect_closed(
        &publish(b"devices/attacker/messages/events/a\0b", 0, b"x"),
        true,
    )
    .await;
}

#[tokio::test]
async fn wildcard_in_publish_topic() {
    expect_closed(
        &publish(b"devices/attacker/messages/events/#", 0, b"x"),
        true,
    )
    .await;
    expect_closed(&publish(b"devices/+/messages/events/", 1, b"x"), true).await;
}

#[tokio::test]
async fn subscribing_to_another_devices_topics() {
    let mut body = 7u16.to_be_bytes().to_vec();
    string(b"devices/bystander/messages/devicebound/#", &mut body);
    body.push(1);
    expect_closed(&packet(0x82, &body), true).await;
}

#[tokio::test]
async fn qos_2_publish() {
    expect_closed(
        &publish(b"devices/attacker/messages/events/", 2, b"x"),
        true,
    )
    .await;
}

#[tokio::test]
async fn oversized_payload() {
    let fx = Fixture::start_with(config(|c| c.max_packet_size = 1024)).await;
    let bystander = Bystander::join(&fx).await;
    let attacker = fx.device("attacker").await;
    let mut stream = raw_session(&fx, &attacker).await;
    let big = vec![b'x'; 4096];
    // The server may close before the whole packet is written.
    let _ = stream
        .write_all(&publish(b"devices/attacker/messages/events/", 1, &big))
        .await;
    closed_by_server(&mut stream).await;
    bystander.still_works(&fx, 0).await;
}

#[tokio::test]
async fn slow_loris_connect() {
    let fx = Fixture::start_with(config(|c| c.connect_timeout = Duration::from_millis(300))).await;
    let bystander = Bystander::join(&fx).await;
    let attacker = fx.device("attacker").await;
    let mut stream = TcpStream::connect(fx.addr).await.expect("connect");
    let bytes = connect(&attacker);
    // Dribble the first bytes, then stall: CONNECT never completes.
    for byte in &bytes[..4] {
        stream.write_all(&[*byte]).await.expect("write");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let seen = closed_by_server(&mut stream).await;
    assert!(seen.is_empty(), "no CONNACK for an incomplete CONNECT");
    bystander.still_works(&fx, 0).await;
}

#[tokio::test]
async fn qos_1_flood_without_reading_pubacks() {
    // The attacker sends QoS 1 requests and never reads the PUBACKs nor the answers. To make the
    // answers fill the socket buffers quickly, each request is a twin GET of a large twin. The
    // endpoint writes until the buffers are full, then stops reading (backpressure: nothing is
    // queued in it), and once a write has been stuck for the write timeout it closes the
    // connection.
    let fx = Fixture::start_with(config(|c| c.write_timeout = Duration::from_millis(500))).await;
    let bystander = Bystander::join(&fx).await;
    let attacker = fx.device("attacker").await;
    let socket = tokio::net::TcpSocket::new_v4().expect("socket");
    socket
        .set_recv_buffer_size(4096)
        .expect("small receive buffer");
    let mut stream = socket.connect(fx.addr).await.expect("connect");
    stream
        .write_all(&connect(&attacker))
        .await
        .expect("CONNECT");
    let mut subscribe = 1u16.to_be_bytes().to_vec();
    string(b"$iothub/twin/res/#", &mut subscribe);
    subscribe.push(1);
    stream
        .write_all(&packet(0x82, &subscribe))
        .await
        .expect("SUBSCRIBE");
    let big = format!("{{\"blob\":\"{}\"}}", "x".repeat(24 * 1024));
    stream
        .write_all(&publish(
            b"$iothub/twin/PATCH/properties/reported/?$rid=0",
            0,
            big.as_bytes(),
        ))
        .await
        .expect("PATCH");
    let flood: Vec<u8> = (1..=64u32)
        .flat_map(|i| publish(format!("$iothub/twin/GET/?$rid={i}").as_bytes(), 1, b""))
        .collect();
    let mut rounds = 0usize;
    tokio::time::timeout(Duration::from_secs(120), async {
        loop {
            match tokio::time::timeout(Duration::from_secs(2), stream.write_all(&flood)).await {
                Ok(Ok(())) => rounds += 1,
                // Closed by the server, or it stopped reading: either way the flood is over.
                Ok(Err(_)) | Err(_) => return,
            }
        }
    })
    .await
    .expect("the server pushes back or closes");
    assert!(rounds > 0);
    closed_by_server(&mut stream).await;
    bystander.still_works(&fx, 0).await;
}

#[tokio::test]
async fn a_silent_client_is_dropped_after_one_and_a_half_keep_alives() {
    let fx = Fixture::start().await;
    let bystander = Bystander::join(&fx).await;
    let attacker = fx.device("attacker").await;
    let mut stream = TcpStream::connect(fx.addr).await.expect("connect");
    stream
        .write_all(&connect_keep_alive(1, &attacker))
        .await
        .expect("CONNECT");
    // CONNACK, then nothing more from either side until the server gives up on the client.
    let seen = closed_by_server(&mut stream).await;
    assert_eq!(seen, vec![0x20, 2, 0, 0]);
    bystander.still_works(&fx, 0).await;
}
