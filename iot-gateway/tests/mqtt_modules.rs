//! Module identities on the MQTT endpoint (rumqttc as the client): a module connects with its
//! own username, client id and SAS token, sends telemetry stamped with its module id, has its
//! own twin and methods on the device topics, and can neither act as its device or a sibling nor
//! be acted for by them. Deleting or re-keying a module, or disabling or deleting its device,
//! ends its session.

mod mqtt_support;

use std::net::SocketAddr;
use std::time::Duration;

use iot_core::ModuleId;
use iot_gateway::message::header;
use iot_gateway::{Gateway, MethodCall};
use iot_identity::{
    Credentials, DeviceStatus, IdentityStore, ModuleStore, NewModule, SymmetricKey, sas,
};
use mqtt_support::{Client, Device, Fixture, HOST, PATIENCE};
use rumqttc::{ConnectReturnCode, MqttOptions, QoS};
use serde_json::json;

struct Module {
    device: Device,
    id: ModuleId,
    key: SymmetricKey,
}

impl Module {
    fn options(&self, addr: SocketAddr) -> MqttOptions {
        let client_id = format!("{}/{}", self.device.id, self.id);
        let mut options = MqttOptions::new(client_id, addr.ip().to_string(), addr.port());
        options.set_credentials(self.username(), self.token(&self.key));
        options.set_keep_alive(Duration::from_secs(30));
        options
    }

    fn username(&self) -> String {
        format!(
            "{HOST}/{}/{}/?api-version=2021-04-12",
            self.device.id, self.id
        )
    }

    /// A token for this module's resource signed with `key`.
    fn token(&self, key: &SymmetricKey) -> String {
        let resource = sas::module_resource(HOST, &self.device.id, &self.id);
        sas::generate(&resource, key, sas::unix_now() + 3600, None)
            .expect("token")
            .as_str()
            .to_owned()
    }
}

async fn module(fx: &Fixture, device: &Device, id: &str) -> Module {
    let key = SymmetricKey::generate();
    let id: ModuleId = id.parse().expect("module id");
    let credentials = Credentials::SymmetricKeys {
        primary: key.clone(),
        secondary: SymmetricKey::generate(),
    };
    fx.hub
        .modules()
        .create(NewModule::new(device.id.clone(), id.clone(), credentials))
        .await
        .expect("create module");
    Module {
        device: Device {
            id: device.id.clone(),
            key: device.key.clone(),
        },
        id,
        key,
    }
}

/// Connects with `options` and returns the CONNACK's code (the connection is dropped).
async fn connack_code(options: MqttOptions) -> ConnectReturnCode {
    let (client, eventloop) = rumqttc::AsyncClient::new(options, 8);
    let mut c = Client::spawn(client, eventloop);
    // An accepted CONNACK arrives as an event; a refused one ends the event loop with
    // `ConnectionRefused(code)` (and closes the CONNACK channel).
    let accepted = tokio::time::timeout(PATIENCE, c.connack.recv())
        .await
        .expect("an answer in time");
    if let Some(ack) = accepted {
        return ack.code;
    }
    let text = tokio::time::timeout(PATIENCE, c.ended.recv())
        .await
        .expect("the end in time")
        .unwrap_or_default();
    [
        ConnectReturnCode::NotAuthorized,
        ConnectReturnCode::BadClientId,
        ConnectReturnCode::BadUserNamePassword,
        ConnectReturnCode::ServiceUnavailable,
    ]
    .into_iter()
    .find(|code| text.contains(&format!("`{code:?}`")))
    .unwrap_or_else(|| panic!("connection ended without a CONNACK: {text}"))
}

#[tokio::test]
async fn module_telemetry_twin_and_methods_are_its_own() {
    let fx = Fixture::start().await;
    let device = fx.device("edge-1").await;
    let filter = module(&fx, &device, "filter").await;
    let mut dev = Client::connect_device(&device, fx.addr).await;
    let mut m = Client::connect(filter.options(fx.addr)).await;

    // Telemetry: the module's topic, stamped with the module; the device's stays unstamped.
    m.client
        .publish(
            "devices/edge-1/modules/filter/messages/events/kind=filtered",
            QoS::AtLeastOnce,
            false,
            b"from the module".to_vec(),
        )
        .await
        .expect("publish");
    dev.client
        .publish(
            "devices/edge-1/messages/events/",
            QoS::AtLeastOnce,
            false,
            b"from the device".to_vec(),
        )
        .await
        .expect("publish");
    let records = fx.telemetry(&device.id, 2).await;
    let by_payload = |p: &[u8]| {
        records
            .iter()
            .find(|r| &r.record.payload[..] == p)
            .expect("record")
    };
    let from_module = by_payload(b"from the module");
    assert_eq!(
        from_module.record.headers.get(header::MODULE_ID),
        Some("filter")
    );
    assert_eq!(
        from_module.record.headers.get(header::DEVICE_ID),
        Some("edge-1")
    );
    assert_eq!(from_module.record.headers.get("kind"), Some("filtered"));
    assert!(
        from_module
            .record
            .headers
            .get(header::AUTH_METHOD)
            .is_some_and(|m| m.contains(r#""scope":"module""#))
    );
    let from_device = by_payload(b"from the device");
    assert_eq!(from_device.record.headers.get(header::MODULE_ID), None);

    // Twins: the module's reported patch is in the module twin, not the device's.
    m.subscribe("$iothub/twin/res/#", QoS::AtLeastOnce).await;
    m.subscribe("$iothub/twin/PATCH/properties/desired/#", QoS::AtLeastOnce)
        .await;
    dev.subscribe("$iothub/twin/PATCH/properties/desired/#", QoS::AtLeastOnce)
        .await;
    m.client
        .publish(
            "$iothub/twin/PATCH/properties/reported/?$rid=1",
            QoS::AtMostOnce,
            false,
            br#"{"role":"filter"}"#.to_vec(),
        )
        .await
        .expect("reported");
    let answer = m.next_publish().await;
    assert_eq!(answer.topic, "$iothub/twin/res/204/?$rid=1&$version=1");
    let module_twin = fx
        .gateway
        .get_module_twin(&device.id, &filter.id)
        .await
        .expect("module twin");
    assert_eq!(module_twin.reported.properties, json!({"role": "filter"}));
    let device_twin = fx.gateway.get_twin(&device.id).await.expect("device twin");
    assert_eq!(
        device_twin.reported.version, 0,
        "the device's twin is untouched"
    );

    // A desired patch of the module reaches the module only.
    fx.gateway
        .patch_module_desired(&device.id, &filter.id, json!({"threshold": 3}), None)
        .await
        .expect("module desired");
    let pushed = m.next_publish().await;
    assert_eq!(
        pushed.topic,
        "$iothub/twin/PATCH/properties/desired/?$version=1"
    );
    let body: serde_json::Value = serde_json::from_slice(&pushed.payload).expect("JSON");
    assert_eq!(body, json!({"threshold": 3, "$version": 1}));
    fx.gateway
        .patch_desired(&device.id, json!({"device": true}), None)
        .await
        .expect("device desired");
    let pushed = dev.next_publish().await;
    let body: serde_json::Value = serde_json::from_slice(&pushed.payload).expect("JSON");
    assert_eq!(body, json!({"device": true, "$version": 1}));

    // Methods: one on the module reaches the module; the device, not subscribed, is offline.
    m.subscribe("$iothub/methods/POST/#", QoS::AtLeastOnce)
        .await;
    let gateway = fx.gateway.clone();
    let (d, mid) = (device.id.clone(), filter.id.clone());
    let call = tokio::spawn(async move {
        gateway
            .invoke_module_method(&d, &mid, MethodCall::new("recalibrate", &b"{}"[..]))
            .await
    });
    let request = m.next_publish().await;
    let rid = request
        .topic
        .strip_prefix("$iothub/methods/POST/recalibrate/?$rid=")
        .expect("method topic")
        .to_owned();
    m.client
        .publish(
            format!("$iothub/methods/res/200/?$rid={rid}"),
            QoS::AtMostOnce,
            false,
            br#"{"done":true}"#.to_vec(),
        )
        .await
        .expect("answer");
    let answer = call.await.expect("task").expect("answered");
    assert_eq!(answer.status, 200);
    assert!(matches!(
        fx.gateway
            .invoke_method(&device.id, MethodCall::new("recalibrate", &b"{}"[..]))
            .await,
        Err(iot_gateway::Error::DeviceOffline { .. })
    ));

    // IoT Edge's inputs filter is granted (nothing feeds it here).
    let ack = m
        .subscribe("devices/edge-1/modules/filter/inputs/#", QoS::AtLeastOnce)
        .await;
    assert_eq!(
        ack.return_codes,
        vec![rumqttc::SubscribeReasonCode::Success(QoS::AtLeastOnce)]
    );
    // Both sessions are live side by side: neither took the other over.
    assert!(fx.gateway.is_connected(&device.id).await.expect("state"));
    assert!(
        fx.gateway
            .is_module_connected(&device.id, &filter.id)
            .await
            .expect("state")
    );
}

#[tokio::test]
async fn a_module_cannot_act_as_its_device_or_a_sibling_and_vice_versa() {
    let fx = Fixture::start().await;
    let device = fx.device("edge-2").await;
    let filter = module(&fx, &device, "filter").await;
    let sibling = module(&fx, &device, "sink").await;

    // The module's own credentials connect it.
    assert_eq!(
        connack_code(filter.options(fx.addr)).await,
        ConnectReturnCode::Success
    );
    // The device's token for the module's username; the sibling's key for the module's
    // resource; the module's token for the device's username.
    let mut with_device_token = filter.options(fx.addr);
    with_device_token.set_credentials(filter.username(), device.token());
    let mut with_sibling_key = filter.options(fx.addr);
    with_sibling_key.set_credentials(filter.username(), filter.token(&sibling.key));
    let mut as_device = device.options(fx.addr);
    as_device.set_credentials(device.username(), filter.token(&filter.key));
    for options in [with_device_token, with_sibling_key, as_device] {
        assert_eq!(
            connack_code(options).await,
            ConnectReturnCode::NotAuthorized
        );
    }
    // The client id must be `{deviceId}/{moduleId}` of the username.
    let mut wrong_client = filter.options(fx.addr);
    wrong_client.set_client_id("edge-2/sink".to_owned());
    assert_eq!(
        connack_code(wrong_client).await,
        ConnectReturnCode::BadClientId
    );

    // A connected module may not publish on its device's or a sibling's telemetry topic.
    for topic in [
        "devices/edge-2/messages/events/",
        "devices/edge-2/modules/sink/messages/events/",
    ] {
        let mut m = Client::connect(filter.options(fx.addr)).await;
        m.client
            .publish(topic, QoS::AtLeastOnce, false, b"spoof".to_vec())
            .await
            .expect("publish");
        m.closed().await;
    }
    // Nor may the device publish as its module.
    let mut dev = Client::connect_device(&device, fx.addr).await;
    dev.client
        .publish(
            "devices/edge-2/modules/filter/messages/events/",
            QoS::AtLeastOnce,
            false,
            b"spoof".to_vec(),
        )
        .await
        .expect("publish");
    dev.closed().await;
    let spoofed = fx
        .all_telemetry()
        .await
        .into_iter()
        .filter(|r| &r.record.payload[..] == b"spoof")
        .count();
    assert_eq!(
        spoofed, 0,
        "nothing published on another's topic reached the log"
    );
}

#[tokio::test]
async fn module_sessions_end_with_the_module_or_its_device() {
    let fx = Fixture::start().await;
    let device = fx.device("edge-3").await;
    let a = module(&fx, &device, "a").await;
    let b = module(&fx, &device, "b").await;
    let mut ma = Client::connect(a.options(fx.addr)).await;
    let mut mb = Client::connect(b.options(fx.addr)).await;
    let mut dev = Client::connect_device(&device, fx.addr).await;

    // New keys for module a end its session only.
    fx.hub
        .modules()
        .replace(
            &device.id,
            &a.id,
            Credentials::generate_symmetric_keys(),
            None,
            None,
        )
        .await
        .expect("re-key");
    ma.closed().await;
    assert!(fx.gateway.is_connected(&device.id).await.expect("state"));
    assert!(
        fx.gateway
            .is_module_connected(&device.id, &b.id)
            .await
            .expect("state")
    );

    // Disabling the device ends its own session and its modules'.
    fx.identity
        .set_status(&device.id, DeviceStatus::disabled("test"), None)
        .await
        .expect("disable");
    mb.closed().await;
    dev.closed().await;
    assert_eq!(
        connack_code(b.options(fx.addr)).await,
        ConnectReturnCode::NotAuthorized,
        "a disabled device's module is refused"
    );
    fx.identity
        .set_status(&device.id, DeviceStatus::Enabled, None)
        .await
        .expect("enable");
    let mut mb = Client::connect(b.options(fx.addr)).await;

    // Deleting the device deletes its modules (and so ends their sessions).
    fx.identity.delete(&device.id, None).await.expect("delete");
    mb.closed().await;
    tokio::time::timeout(PATIENCE, async {
        while !fx
            .hub
            .modules()
            .list(&device.id)
            .await
            .expect("list")
            .is_empty()
        {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await
    .expect("the deleted device's modules are deleted");
}
