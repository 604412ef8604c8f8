//! DPS's device protocol on the MQTT endpoint, driven by a third-party client (rumqttc): a
//! group device registers (202 "assigning", then 200 "assigned" on the status poll), gets its
//! initial twin, and connects to the hub with its derived key; refusals of bad tokens,
//! disabled enrollments and servers without onboarding.

mod dps_support;
mod mqtt_support;

use std::sync::Arc;

use dps_support::{Dps, registration_token, registration_username};
use iot_gateway::Gateway;
use iot_gateway::Hub;
use iot_gateway::mqtt::{MqttConfig, MqttServer};
use iot_identity::{MemoryIdentityStore, SymmetricKey, sas};
use iot_provisioning::enrollment::EnrollmentStatus;
use mqtt_support::{Client, HOST};
use rumqttc::{MqttOptions, QoS};
use serde_json::{Value, json};

async fn stack() -> (Dps, MqttServer, std::net::SocketAddr) {
    let identity = Arc::new(MemoryIdentityStore::new());
    let hub = Hub::memory(identity.clone(), HOST).await.expect("hub");
    let dps = Dps::new(hub, identity, HOST).await;
    let server = dps.server(MqttConfig::default());
    let addr = server
        .listen_tcp("127.0.0.1:0".parse().expect("addr"))
        .await
        .expect("listen");
    (dps, server, addr)
}

fn options(addr: std::net::SocketAddr, registration_id: &str, token: String) -> MqttOptions {
    let mut options = MqttOptions::new(registration_id, addr.ip().to_string(), addr.port());
    options.set_credentials(registration_username(registration_id), token);
    options
}

/// Publishes a request and returns the answer's (topic, JSON body).
async fn request(client: &mut Client, topic: &str, body: &[u8]) -> (String, Value) {
    client
        .client
        .publish(topic, QoS::AtLeastOnce, false, body.to_vec())
        .await
        .expect("publish");
    let answer = client.next_publish().await;
    let body = serde_json::from_slice(&answer.payload).expect("JSON answer");
    (answer.topic, body)
}

async fn register(client: &mut Client, registration_id: &str) -> (String, Value) {
    let body = json!({"registrationId": registration_id, "payload": null}).to_string();
    request(
        client,
        "$dps/registrations/PUT/iotdps-register/?$rid=r1",
        body.as_bytes(),
    )
    .await
}

#[tokio::test]
async fn a_group_device_registers_then_connects_to_its_hub_with_the_derived_key() {
    let (dps, _server, addr) = stack().await;
    let group_key = dps
        .group("plant-7", |g| {
            g.settings.tags = json!({"site": "plant-7"});
            g.settings.initial_twin = json!({"interval": 30});
        })
        .await;
    let key = group_key.derive_for_device("sensor-1");
    let mut client = Client::connect(options(
        addr,
        "sensor-1",
        registration_token("sensor-1", &key),
    ))
    .await;
    client
        .subscribe("$dps/registrations/res/#", QoS::AtLeastOnce)
        .await;

    let (topic, body) = register(&mut client, "sensor-1").await;
    assert_eq!(topic, "$dps/registrations/res/202/?$rid=r1&retry-after=1");
    assert_eq!(body["status"], "assigning");
    let operation = body["operationId"]
        .as_str()
        .expect("operation id")
        .to_string();

    // The Azure SDKs send one space as the status request's body.
    let (topic, body) = request(
        &mut client,
        &format!(
            "$dps/registrations/GET/iotdps-get-operationstatus/?$rid=r2&operationId={operation}"
        ),
        b" ",
    )
    .await;
    assert_eq!(topic, "$dps/registrations/res/200/?$rid=r2");
    assert_eq!(body["operationId"], operation.as_str());
    assert_eq!(body["status"], "assigned");
    let state = &body["registrationState"];
    assert_eq!(state["registrationId"], "sensor-1");
    assert_eq!(state["deviceId"], "sensor-1");
    assert_eq!(state["assignedHub"], HOST);
    assert_eq!(state["status"], "assigned");
    assert_eq!(state["substatus"], "initialAssignment");
    assert_eq!(
        state["initialTwin"]["properties"]["desired"],
        json!({"interval": 30})
    );
    assert!(
        state["createdDateTimeUtc"]
            .as_str()
            .is_some_and(|t| t.ends_with('Z'))
    );
    assert!(state["etag"].as_str().is_some());

    // An unknown operation is 404.
    let (topic, _) = request(
        &mut client,
        "$dps/registrations/GET/iotdps-get-operationstatus/?$rid=r3&operationId=nope",
        b" ",
    )
    .await;
    assert_eq!(topic, "$dps/registrations/res/404/?$rid=r3");

    // The twin has the initial desired properties.
    let device = "sensor-1".parse().expect("id");
    let twin = dps.hub.get_twin(&device).await.expect("twin");
    assert_eq!(twin.desired.properties["interval"], 30);

    // Registering again (a second connection): same device, no second registration.
    let mut again = Client::connect(options(
        addr,
        "sensor-1",
        registration_token("sensor-1", &key),
    ))
    .await;
    again
        .subscribe("$dps/registrations/res/#", QoS::AtMostOnce)
        .await;
    let (topic, _) = register(&mut again, "sensor-1").await;
    assert!(topic.starts_with("$dps/registrations/res/202/"), "{topic}");
    assert_eq!(dps.registers().await.get("sensor-1"), Some(&1));

    // The device connects to the hub with the derived key and sends telemetry.
    let hub_token = sas::generate(
        &sas::device_resource(HOST, &device),
        &key,
        sas::unix_now() + 600,
        None,
    )
    .expect("token");
    let mut hub_options = MqttOptions::new("sensor-1", addr.ip().to_string(), addr.port());
    hub_options.set_credentials(
        format!("{HOST}/sensor-1/?api-version=2021-04-12"),
        hub_token.as_str(),
    );
    let device_client = Client::connect(hub_options).await;
    device_client
        .client
        .publish(
            "devices/sensor-1/messages/events/",
            QoS::AtLeastOnce,
            false,
            b"hi".to_vec(),
        )
        .await
        .expect("publish");
    let fx_log = dps.hub.telemetry_log().clone();
    let partition = iot_core::partition_for_key("sensor-1", fx_log.partition_count());
    let found = tokio::time::timeout(mqtt_support::PATIENCE, async {
        loop {
            let records = fx_log
                .read(
                    partition,
                    iot_core::Offset(0),
                    iot_core::ReadLimits::default(),
                )
                .await
                .expect("read");
            if records.iter().any(|r| r.record.payload.as_ref() == b"hi") {
                return;
            }
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
    })
    .await;
    assert!(found.is_ok(), "telemetry of the registered device arrived");
}

#[tokio::test]
async fn bad_tokens_are_refused_at_connect_and_disabled_enrollments_at_register() {
    let (dps, _server, addr) = stack().await;
    let group_key = dps.group("g", |_| {}).await;
    let closed = |options| async move {
        let (client, eventloop) = rumqttc::AsyncClient::new(options, 8);
        Client::spawn(client, eventloop).closed().await
    };
    // Signed with the group key itself, or another device's key: CONNACK 5.
    for key in [
        group_key.clone(),
        group_key.derive_for_device("other"),
        SymmetricKey::generate(),
    ] {
        let error = closed(options(addr, "b-1", registration_token("b-1", &key))).await;
        assert!(error.contains("NotAuthorized"), "{error}");
    }
    // Another id scope.
    let key = group_key.derive_for_device("b-1");
    let mut other_scope = options(addr, "b-1", registration_token("b-1", &key));
    other_scope.set_credentials(
        "0ne-other/registrations/b-1/api-version=2019-03-31",
        registration_token("b-1", &key),
    );
    assert!(closed(other_scope).await.contains("NotAuthorized"));

    // A disabled group: connected, the registration answered 401.
    let off_key = dps
        .group("off", |g| g.settings.status = EnrollmentStatus::Disabled)
        .await;
    let key = off_key.derive_for_device("d-1");
    let mut client = Client::connect(options(addr, "d-1", registration_token("d-1", &key))).await;
    client
        .subscribe("$dps/registrations/res/#", QoS::AtLeastOnce)
        .await;
    let (topic, body) = register(&mut client, "d-1").await;
    assert_eq!(topic, "$dps/registrations/res/401/?$rid=r1");
    assert_eq!(body["errorCode"], 401002);
    assert!(
        body["message"]
            .as_str()
            .is_some_and(|m| m.contains("disabled")),
        "{body}"
    );
    // A body naming another registration id is 400.
    let (topic, _) = request(
        &mut client,
        "$dps/registrations/PUT/iotdps-register/?$rid=r9",
        br#"{"registrationId":"someone-else"}"#,
    )
    .await;
    assert_eq!(topic, "$dps/registrations/res/400/?$rid=r9");
    assert!(dps.registers().await.is_empty());
    let device = "d-1".parse().expect("id");
    assert!(
        dps.hub.get_twin(&device).await.is_err(),
        "no device was made"
    );
}

#[tokio::test]
async fn a_server_without_onboarding_refuses_registrations() {
    let identity = Arc::new(MemoryIdentityStore::new());
    let hub = Hub::memory(identity.clone(), HOST).await.expect("hub");
    let dps = Dps::new(hub.clone(), identity, HOST).await;
    let group_key = dps.group("g", |_| {}).await;
    let server = MqttServer::new(Arc::new(hub), MqttConfig::default()).expect("server");
    let addr = server
        .listen_tcp("127.0.0.1:0".parse().expect("addr"))
        .await
        .expect("listen");
    let key = group_key.derive_for_device("n-1");
    let (client, eventloop) =
        rumqttc::AsyncClient::new(options(addr, "n-1", registration_token("n-1", &key)), 8);
    let error = Client::spawn(client, eventloop).closed().await;
    assert!(error.contains("NotAuthorized"), "{error}");
}

#[tokio::test]
async fn topics_outside_dps_close_a_registration_connection() {
    let (dps, _server, addr) = stack().await;
    let group_key = dps.group("g", |_| {}).await;
    let key = group_key.derive_for_device("t-1");
    let mut client = Client::connect(options(addr, "t-1", registration_token("t-1", &key))).await;
    client
        .client
        .publish(
            "devices/t-1/messages/events/",
            QoS::AtLeastOnce,
            false,
            b"x".to_vec(),
        )
        .await
        .expect("publish");
    client.closed().await;
}
