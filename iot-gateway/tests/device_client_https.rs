//! C2D reject and abandon from the device client (features `client-https`, `http`): a message
//! received over MQTT/TLS is settled over the hub's HTTPS device API by its lock token, and the
//! device's MQTT connection stays as it was (no session takeover).
//!
//! `cargo test -p iot-gateway --features client-https,http --test device_client_https`

mod mqtt_support;

use std::sync::Arc;
use std::time::Duration;

use iot_core::{DeviceId, Offset, ReadLimits};
use iot_gateway::client::{
    Backoff, C2dMessage as Received, ClientError, ClientOptions, ConnectionState, DeviceClient,
};
use iot_gateway::http::{HttpConfig, HttpServer, HttpState, PolicyStore, SharedAccessPolicy};
use iot_gateway::mqtt::{MqttConfig, MqttServer, SelfSigned};
use iot_gateway::{AckRequest, C2dMessage, Feedback, FeedbackStatus, Gateway, Hub};
use iot_identity::{Credentials, IdentityStore, MemoryIdentityStore, NewIdentity, SymmetricKey};
use iot_provisioning::{Provisioner, Provisioning};
use iot_registry::{MemoryRegistry, Registry};
use mqtt_support::{HOST, PATIENCE};
use tokio::sync::mpsc::UnboundedReceiver;

/// A hub with MQTT/TLS and HTTPS listeners sharing one throw-away CA.
struct Stack {
    hub: Hub,
    pair: SelfSigned,
    identity: Arc<MemoryIdentityStore>,
    mqtts: u16,
    https: u16,
    _mqtt: MqttServer,
    _http: HttpServer,
}

impl Stack {
    async fn start() -> Stack {
        let identity = Arc::new(MemoryIdentityStore::new());
        let hub = Hub::memory(identity.clone(), HOST).await.expect("hub");
        let gateway: Arc<dyn Gateway> = Arc::new(hub.clone());
        let pair = SelfSigned::generate(HOST).expect("certificates");
        let mqtt = MqttServer::new(gateway.clone(), MqttConfig::default()).expect("mqtt");
        let mqtts = mqtt
            .listen_tls(loopback(), pair.tls_config(false).expect("tls"))
            .await
            .expect("listen mqtts")
            .port();
        let registry: Arc<dyn Registry> = Arc::new(MemoryRegistry::new());
        let provisioner = Arc::new(
            Provisioner::builder(identity.clone(), registry.clone())
                .open()
                .await
                .expect("provisioner"),
        );
        let state = HttpState::new(
            gateway,
            provisioner as Arc<dyn Provisioning>,
            registry,
            identity.clone(),
            Arc::new(PolicyStore::memory(SharedAccessPolicy::defaults())),
            HOST,
            HttpConfig::default(),
        );
        let http = HttpServer::new(iot_gateway::http::router(state), HttpConfig::default());
        let https = http
            .listen_tls(loopback(), pair.tls_config(false).expect("tls"))
            .await
            .expect("listen https")
            .port();
        Stack {
            hub,
            pair,
            identity,
            mqtts,
            https,
            _mqtt: mqtt,
            _http: http,
        }
    }

    /// A device with a fresh key and a client for it over MQTT/TLS, with the HTTPS port when
    /// `with_https`; its C2D stream.
    async fn client(
        &self,
        id: &str,
        with_https: bool,
    ) -> (DeviceId, DeviceClient, UnboundedReceiver<Received>) {
        let device: DeviceId = id.parse().expect("device id");
        let key = SymmetricKey::generate();
        self.identity
            .create(NewIdentity::new(
                device.clone(),
                Credentials::SymmetricKeys {
                    primary: key.clone(),
                    secondary: SymmetricKey::generate(),
                },
            ))
            .await
            .expect("identity");
        let mut options = ClientOptions::with_key(HOST, id, key)
            .port(self.mqtts)
            .ca_roots_pem(self.pair.ca_pem.as_bytes())
            .backoff(Backoff {
                initial: Duration::from_millis(50),
                max: Duration::from_millis(500),
            });
        if with_https {
            options = options.https_port(self.https);
        }
        let client = DeviceClient::connect(options).await.expect("client");
        let c2d = within("the C2D subscription", client.c2d_messages())
            .await
            .expect("subscribed");
        (device, client, c2d)
    }

    async fn send(&self, device: &DeviceId, id: &str) {
        let mut message = C2dMessage::new(format!("body of {id}"));
        message.message_id = Some(id.into());
        message.ack = AckRequest::Full;
        self.hub.send_c2d(device, message).await.expect("send c2d");
    }

    async fn feedback(&self, count: usize) -> Vec<Feedback> {
        within("the feedback", async {
            loop {
                let f = self.hub.read_feedback(0, 100).await.expect("feedback");
                if f.len() >= count {
                    return f;
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
        .await
    }
}

fn loopback() -> std::net::SocketAddr {
    "127.0.0.1:0".parse().expect("addr")
}

async fn within<T>(what: &str, f: impl std::future::Future<Output = T>) -> T {
    tokio::time::timeout(PATIENCE, f)
        .await
        .unwrap_or_else(|_| panic!("{what} did not happen in time"))
}

/// The client is on its first connection: nothing took its session over.
fn assert_first_connection(client: &DeviceClient) {
    assert_eq!(
        *client.connection_state().borrow(),
        ConnectionState::Connected { generation: 1 }
    );
}

#[tokio::test]
async fn reject_dead_letters_the_message_and_leaves_the_mqtt_connection_alone() {
    let stack = Stack::start().await;
    let (device, client, mut c2d) = stack.client("dc-reject", true).await;
    stack.send(&device, "r-1").await;
    let received = within("the C2D message", c2d.recv())
        .await
        .expect("message");
    assert_eq!(received.message_id(), Some("r-1"));
    assert_eq!(received.lock_token(), Some("1.1"));
    within("the reject", received.reject())
        .await
        .expect("rejected");

    let feedback = stack.feedback(1).await;
    assert_eq!(feedback.len(), 1);
    assert_eq!(feedback[0].message_id, "r-1");
    assert_eq!(feedback[0].status, FeedbackStatus::Rejected);
    let dead = within("the dead letter", async {
        loop {
            let log = stack.hub.deadletter_log();
            let partition = iot_core::partition_for_key(device.as_str(), log.partition_count());
            let records = log
                .read(partition, Offset(0), ReadLimits::default())
                .await
                .expect("dead letters");
            if !records.is_empty() {
                return records;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    assert_eq!(dead.len(), 1);
    assert_eq!(dead[0].record.headers.get("message-id"), Some("r-1"));
    assert_eq!(dead[0].record.headers.get("status"), Some("rejected"));
    assert_eq!(stack.hub.pending_c2d(&device).await.expect("pending"), 0);

    // The MQTT connection was not taken over: the next message arrives on it and completes.
    stack.send(&device, "r-2").await;
    let next = within("the next message", c2d.recv())
        .await
        .expect("message");
    assert_eq!(next.message_id(), Some("r-2"));
    next.complete().expect("complete");
    let feedback = stack.feedback(2).await;
    assert_eq!(feedback[1].status, FeedbackStatus::Success);
    assert_first_connection(&client);
    client.close().await;
}

#[tokio::test]
async fn abandon_redelivers_the_message_on_the_same_connection() {
    let stack = Stack::start().await;
    let (device, client, mut c2d) = stack.client("dc-abandon", true).await;
    stack.send(&device, "a-1").await;
    let first = within("the C2D message", c2d.recv())
        .await
        .expect("message");
    assert_eq!(first.lock_token(), Some("1.1"));
    within("the abandon", first.abandon())
        .await
        .expect("abandoned");

    let again = within("the redelivery", c2d.recv()).await.expect("message");
    assert_eq!(again.message_id(), Some("a-1"));
    assert_eq!(again.payload.as_ref(), b"body of a-1");
    assert_eq!(again.lock_token(), Some("1.2"), "the second delivery");
    again.complete().expect("complete");
    let feedback = stack.feedback(1).await;
    assert_eq!(feedback[0].status, FeedbackStatus::Success);
    assert_eq!(feedback[0].delivery_count, 2);
    within("the inbox to empty", async {
        while stack.hub.pending_c2d(&device).await.expect("pending") != 0 {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    assert_first_connection(&client);
    client.close().await;
}

#[tokio::test]
async fn a_settled_lock_token_is_refused_with_412() {
    let stack = Stack::start().await;
    let (device, client, mut c2d) = stack.client("dc-stale", true).await;
    stack.send(&device, "s-1").await;
    let first = within("the C2D message", c2d.recv())
        .await
        .expect("message");
    // Abandoning moves the lock to delivery 2, so a settlement of delivery 1 is stale: settle
    // the redelivered message with the first delivery's bag (and so its lock token).
    let stale_bag = first.properties.clone();
    within("the abandon", first.abandon())
        .await
        .expect("abandoned");
    let again = within("the redelivery", c2d.recv()).await.expect("message");
    assert_ne!(again.properties, stale_bag);
    let mut stale = again;
    stale.properties = stale_bag;
    let err = within("the stale reject", stale.reject())
        .await
        .expect_err("stale lock");
    assert!(
        matches!(err, ClientError::HttpsStatus { status: 412 }),
        "{err:?}"
    );
    client.close().await;
}

#[tokio::test]
async fn without_the_https_port_reject_says_so() {
    let stack = Stack::start().await;
    let (device, client, mut c2d) = stack.client("dc-nohttps", false).await;
    stack.send(&device, "n-1").await;
    let received = within("the C2D message", c2d.recv())
        .await
        .expect("message");
    let err = received.reject().await.expect_err("no HTTPS endpoint");
    assert!(matches!(err, ClientError::Unsupported(_)), "{err:?}");
    assert_eq!(stack.hub.pending_c2d(&device).await.expect("pending"), 1);
    client.close().await;
}
