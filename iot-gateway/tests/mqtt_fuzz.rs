//! Property tests in the spirit of a fuzzer, run with every `cargo test` (the coverage-guided
//! cargo-fuzz targets live in `fuzz/` and run briefly in `.ci/run`): arbitrary bytes, and
//! arbitrary sequences of well-formed packets, fed to a session of the real endpoint over an
//! in-memory pipe. Whatever arrives, the session ends when the input ends — no panic, no hang —
//! and the server keeps serving.

mod mqtt_support;

use std::time::Duration;

use mqtt_support::raw::{connect, packet, publish, string};
use mqtt_support::{Device, Fixture};
use proptest::prelude::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Runs one connection fed with `input`; returns once the session has ended.
async fn feed(fx: &Fixture, input: Vec<u8>) {
    let (mut client, server_end) = tokio::io::duplex(1 << 16);
    let server = fx.server.clone();
    let session = tokio::spawn(async move { server.serve(server_end).await });
    let drive = async {
        // The server may close before taking everything: that is fine.
        let _ = client.write_all(&input).await;
        let _ = client.shutdown().await;
        let mut sink = Vec::new();
        let _ = client.read_to_end(&mut sink).await;
    };
    tokio::time::timeout(Duration::from_secs(30), drive)
        .await
        .expect("the session ends when its input ends");
    let joined = tokio::time::timeout(Duration::from_secs(30), session)
        .await
        .expect("serve returns");
    assert!(joined.is_ok(), "the session task panicked");
}

/// One packet a device could send, well-formed or nearly so.
fn arb_packet() -> impl Strategy<Value = Vec<u8>> {
    let topic = prop_oneof![
        Just("devices/fuzz/messages/events/a=1".to_string()),
        Just("devices/fuzz/messages/events/%24.ct=x&%24.exp=nope".to_string()),
        Just("$iothub/twin/GET/?$rid=1".to_string()),
        Just("$iothub/twin/PATCH/properties/reported/?$rid=2".to_string()),
        Just("$iothub/methods/res/200/?$rid=99".to_string()),
        Just("devices/other/messages/events/".to_string()),
        "[ -~]{0,40}",
    ];
    let filter = prop_oneof![
        Just("devices/fuzz/messages/devicebound/#".to_string()),
        Just("$iothub/twin/res/#".to_string()),
        Just("$iothub/methods/POST/#".to_string()),
        "[ -~]{1,40}",
    ];
    prop_oneof![
        (topic, 0u8..3, proptest::collection::vec(any::<u8>(), 0..64))
            .prop_map(|(t, q, p)| publish(t.as_bytes(), q, &p)),
        (filter, 0u8..4, any::<u16>()).prop_map(|(f, q, id)| {
            let mut body = id.to_be_bytes().to_vec();
            string(f.as_bytes(), &mut body);
            body.push(q);
            packet(0x82, &body)
        }),
        any::<u16>().prop_map(|id| packet(0x40, &id.to_be_bytes())),
        Just(packet(0xC0, &[])),
        Just(packet(0xE0, &[])),
        (any::<u8>(), proptest::collection::vec(any::<u8>(), 0..16))
            .prop_map(|(b, body)| packet(b, &body)),
    ]
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime")
}

async fn fixture() -> (Fixture, Device) {
    let fx = Fixture::start().await;
    let device = fx.device("fuzz").await;
    (fx, device)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    #[test]
    fn arbitrary_bytes_before_connect(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
        let rt = runtime();
        rt.block_on(async {
            let (fx, _) = fixture().await;
            feed(&fx, bytes).await;
        });
    }

    #[test]
    fn arbitrary_bytes_after_connect(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
        let rt = runtime();
        rt.block_on(async {
            let (fx, device) = fixture().await;
            let mut input = connect(&device);
            input.extend(bytes);
            feed(&fx, input).await;
        });
    }

    #[test]
    fn arbitrary_packet_sequences(packets in proptest::collection::vec(arb_packet(), 0..24)) {
        let rt = runtime();
        rt.block_on(async {
            let (fx, device) = fixture().await;
            let mut input = connect(&device);
            for p in packets {
                input.extend(p);
            }
            feed(&fx, input).await;
            // The server still serves a well-behaved session afterwards.
            let mut ok = connect(&device);
            ok.extend(publish(b"devices/fuzz/messages/events/", 1, b"after"));
            ok.extend(packet(0xE0, &[]));
            feed(&fx, ok).await;
            let records = fx.all_telemetry().await;
            prop_assert!(records.iter().any(|r| r.record.payload.as_ref() == b"after"));
            Ok(())
        })?;
    }
}
