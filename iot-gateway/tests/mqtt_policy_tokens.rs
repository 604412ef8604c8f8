//! Protocol-gateway style authentication on MQTT: a SAS token for `{host}/devices/{id}` signed by
//! a shared access policy with `DeviceConnect` (`skn=device`) connects the device, as it does on
//! the HTTPS device API — when the hub is given the policies.
#![cfg(feature = "http")]

mod mqtt_support;

use std::sync::Arc;

use iot_core::DeviceId;
use iot_gateway::http::{PolicyStore, SharedAccessPolicy};
use iot_gateway::message::header;
use iot_gateway::mqtt::{MqttConfig, MqttServer};
use iot_gateway::{Gateway, Hub};
use iot_identity::{
    Credentials, IdentityStore, KeySlot, MemoryIdentityStore, NewIdentity, SymmetricKey, sas,
};
use mqtt_support::{Client, Fixture, HOST};
use rumqttc::QoS;

struct Stack {
    policies: Arc<PolicyStore>,
    fixture: Fixture,
}

/// A hub that knows the default policies, with device `d1` (its own keys unknown to the test).
async fn stack() -> Stack {
    let identity = Arc::new(MemoryIdentityStore::new());
    identity
        .create(NewIdentity::new(
            "d1".parse().expect("id"),
            Credentials::SymmetricKeys {
                primary: SymmetricKey::generate(),
                secondary: SymmetricKey::generate(),
            },
        ))
        .await
        .expect("create");
    let policies = Arc::new(PolicyStore::memory(SharedAccessPolicy::defaults()));
    let hub = Hub::builder(identity.clone() as Arc<dyn IdentityStore>, HOST)
        .device_connect_policies(policies.clone())
        .build()
        .await
        .expect("hub");
    let gateway: Arc<dyn Gateway> = Arc::new(hub.clone());
    let server = MqttServer::new(gateway.clone(), MqttConfig::default()).expect("server");
    let addr = server
        .listen_tcp("127.0.0.1:0".parse().expect("addr"))
        .await
        .expect("listen");
    Stack {
        policies,
        fixture: Fixture {
            hub,
            gateway,
            identity,
            server,
            addr,
        },
    }
}

fn policy_token(policies: &PolicyStore, policy: &str, device: &str) -> String {
    let p = policies.get(policy).expect("policy");
    sas::generate(
        &format!("{HOST}/devices/{device}"),
        &p.primary,
        sas::unix_now() + 600,
        Some(policy),
    )
    .expect("token")
    .as_str()
    .to_owned()
}

fn options(addr: std::net::SocketAddr, device: &str, token: String) -> rumqttc::MqttOptions {
    let mut options = rumqttc::MqttOptions::new(device, addr.ip().to_string(), addr.port());
    options.set_credentials(
        format!("{HOST}/{device}/?api-version=2021-04-12&DeviceClientType=rumqttc"),
        token,
    );
    options
}

async fn refused(addr: std::net::SocketAddr, device: &str, token: String) -> String {
    let (client, eventloop) = rumqttc::AsyncClient::new(options(addr, device, token), 8);
    Client::spawn(client, eventloop).closed().await
}

#[tokio::test]
async fn a_device_connect_policy_token_connects_a_device_over_mqtt() {
    let s = stack().await;
    let addr = s.fixture.addr;
    let token = policy_token(&s.policies, "device", "d1");
    let client = Client::connect(options(addr, "d1", token.clone())).await;
    client
        .client
        .publish(
            "devices/d1/messages/events/",
            QoS::AtLeastOnce,
            false,
            "hello",
        )
        .await
        .expect("publish");
    let id: DeviceId = "d1".parse().expect("id");
    let records = s.fixture.telemetry(&id, 1).await;
    assert_eq!(records[0].record.payload.as_ref(), b"hello");
    assert_eq!(records[0].record.headers.get(header::DEVICE_ID), Some("d1"));
    let method = records[0].record.headers.get(header::AUTH_METHOD);
    assert!(
        method.is_some_and(|m| m.contains(r#""scope":"hub""#) && m.contains(r#""type":"sas""#)),
        "a policy token is stamped as IoT Hub stamps it: {method:?}"
    );
    assert!(s.fixture.hub.is_connected(&id).await.expect("connected"));
    drop(client);

    // A policy without DeviceConnect, a token for another device, and an unknown device are
    // refused like any bad credential.
    let reader = policy_token(&s.policies, "registryRead", "d1");
    assert!(refused(addr, "d1", reader).await.contains("NotAuthorized"));
    let other = policy_token(&s.policies, "device", "d2");
    assert!(refused(addr, "d1", other).await.contains("NotAuthorized"));
    let ghost = policy_token(&s.policies, "device", "ghost");
    assert!(
        refused(addr, "ghost", ghost)
            .await
            .contains("NotAuthorized")
    );

    // Rotating the key that signed it refuses the token at the next connect.
    s.policies
        .rotate("device", KeySlot::Primary)
        .await
        .expect("rotate");
    assert!(refused(addr, "d1", token).await.contains("NotAuthorized"));
    let fresh = policy_token(&s.policies, "device", "d1");
    drop(Client::connect(options(addr, "d1", fresh)).await);
}
