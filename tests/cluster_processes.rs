//! Three gateway instances as three processes (`iot-cluster-node`) over the machine's NATS and
//! PostgreSQL, with real device clients (feature `cluster-node`).
//!
//! The device is Microsoft's `azure-iot-device` Python SDK, unmodified, driven by
//! `scripts/cluster/azure_device.py`; the SDK always connects to 127.0.0.1:8883, where gw0 serves
//! MQTT over TLS, so only one run at a time may use that port (locally: `flock
//! /tmp/port8883.lock cargo test …`). The back end is the instances' service REST API.
#![cfg(feature = "cluster-node")]
#![allow(
    clippy::unwrap_used,
    clippy::print_stderr,
    reason = "a test: a failed unwrap is a failed test; it prints what it measured"
)]

mod cluster_support;
#[path = "cluster_processes/driver.rs"]
mod driver;

use std::time::Duration;

use cluster_support::{NodeOptions, ProcessCluster, self_signed, unique_name};
use driver::{Driver, at, ms_between, python_with_sdk};
use iot_sdk::identity::{SymmetricKey, sas};
use serde_json::json;

#[test]
fn three_node_processes_hear_each_other() {
    let cluster = ProcessCluster::start(&unique_name("pc"), 3, NodeOptions::default(), &[]);
    assert_eq!(cluster.nodes.len(), 3);
}

/// A service token of the `iothubowner` policy every node shares, for an hour.
fn service_token(cluster: &ProcessCluster) -> String {
    let key = SymmetricKey::from_base64(&cluster.service_key).unwrap();
    sas::generate(
        &cluster.options.host,
        &key,
        sas::unix_now() + 3600,
        Some("iothubowner"),
    )
    .unwrap()
    .as_str()
    .to_owned()
}

/// On a failed test, what each node printed (warnings and errors).
struct NodeReport<'a>(&'a ProcessCluster);

impl Drop for NodeReport<'_> {
    fn drop(&mut self) {
        if std::thread::panicking() {
            for node in &self.0.nodes {
                eprintln!("--- {} printed:\n{}", node.instance, node.output());
            }
        }
    }
}

/// The multi-process case: a device on instance A (gw0) receives a C2D message sent
/// through C (gw2) and answers a method invoked through B (gw1); its second connection, to B,
/// closes the first on A; disabled through C, it is cut on A.
#[test]
fn azure_device_sdk_across_three_instance_processes() {
    let Some(python) = python_with_sdk() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let (ca, cert, key) = self_signed(dir.path());
    let options = NodeOptions {
        tls: Some((cert, key)),
        ..NodeOptions::default()
    };
    let cluster = ProcessCluster::start(&unique_name("az"), 3, options, &[8883]);
    let _report = NodeReport(&cluster);
    let [a, b, c] = ["gw0", "gw1", "gw2"].map(|id| cluster.node(id).addrs.clone());
    assert_eq!(
        a.mqtts.unwrap().port(),
        8883,
        "the SDK connects to 8883 only"
    );
    let (b_http, c_http) = (b.http.to_string(), c.http.to_string());

    let mut device = Driver::start(
        &python,
        &cluster.options.host,
        &ca,
        &service_token(&cluster),
    );
    device.send(json!({"op": "create", "http": c_http, "device": "azure-dev"}));
    device.expect("created");
    device.send(json!({"op": "connect"}));
    device.expect("connected");

    // 1a. A C2D message sent through C reaches the SDK on A, with its id and properties.
    device.send(json!({
        "op": "c2d", "http": c_http, "data": "hello through gw2", "message_id": "c2d-1",
        "properties": {"priority": "high"},
    }));
    let sent = device.expect("c2d_sent");
    assert_eq!(sent["status"], 200, "{sent}");
    let got = device.expect("c2d");
    assert_eq!(got["data"], "hello through gw2");
    assert_eq!(got["message_id"], "c2d-1");
    assert_eq!(got["properties"]["priority"], "high");
    let c2d_ms = ms_between(at(&sent, "t0"), at(&got, "t"));

    // 1b. A direct method invoked through B is answered by the SDK on A.
    device.send(json!({
        "op": "method", "http": b_http, "name": "reboot", "payload": {"delay": 2},
    }));
    let answer = device.expect("method_result");
    assert_eq!(answer["status"], 200, "{answer}");
    assert_eq!(answer["body"]["status"], 200);
    assert_eq!(
        answer["body"]["payload"],
        json!({"handled": "reboot", "echo": {"delay": 2}})
    );
    let handled = device.expect("method");
    assert_eq!(handled["via"], "sdk");
    assert_eq!(handled["name"], "reboot");
    let method_ms = ms_between(at(&answer, "t0"), at(&answer, "t"));

    // 2. A second connection of the device, to B, closes the first on A (the SDK's reconnect is
    // off, so it stays closed); B now holds the device: a method invoked through A reaches it.
    device.send(json!({"op": "second", "mqtt": b.mqtt.to_string()}));
    let second = device.expect("second_connected");
    assert_eq!(second["rc"], 0, "{second}");
    let cut = device.expect_where("state", |e| e["connected"] == false);
    let takeover_ms = ms_between(at(&second, "t0"), at(&cut, "t"));
    device.send(json!({
        "op": "method", "http": a.http.to_string(), "name": "where", "payload": {},
    }));
    let answer = device.expect("method_result");
    assert_eq!(answer["status"], 200, "{answer}");
    assert_eq!(answer["body"]["payload"]["via"], "second", "{answer}");

    // The SDK connects to A again and takes the device back: the connection to B is closed.
    device.send(json!({"op": "connect"}));
    device.expect("connected");
    device.expect("second_state");

    // 3. Disabled through C, the device is cut on A, and cannot connect again.
    device.send(json!({"op": "disable", "http": c_http}));
    let disabled = device.expect("disabled");
    assert_eq!(disabled["status"], 200, "{disabled}");
    assert_eq!(disabled["body"]["status"], "disabled");
    let cut = device.expect_where("state", |e| e["connected"] == false);
    let disable_ms = ms_between(at(&disabled, "t0"), at(&cut, "t"));
    let put_ms = ms_between(at(&disabled, "t0"), at(&disabled, "t"));
    device.send(json!({"op": "connect"}));
    let refused = device.expect("connect_failed");
    device.quit();

    eprintln!(
        "measured (one run, debug build): C2D through gw2 to the SDK on gw0 {c2d_ms:.1} ms \
         (HTTP call included); method through gw1 answered by the SDK on gw0 {method_ms:.1} ms \
         round trip; connect to gw1 to the SDK's disconnect on gw0 {takeover_ms:.1} ms; disable \
         through gw2 to the SDK's disconnect on gw0 {disable_ms:.1} ms from the start of the \
         request (which took {put_ms:.1} ms to answer); reconnect refused: {}",
        refused["error"]
    );
    // "Within a second" is what the issue asks; that is printed above, not asserted (a loaded
    // machine may take longer). The guard only keeps a missing cut from passing as a late one.
    assert!(Duration::from_secs_f64(disable_ms / 1000.0) < driver::GUARD);
}
