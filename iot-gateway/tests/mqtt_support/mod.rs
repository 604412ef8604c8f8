//! Shared fixture of the MQTT endpoint tests: a `Hub` over in-memory stores, an `MqttServer` on
//! an ephemeral loopback port, devices with SAS tokens, and a rumqttc client driven from a task.
#![allow(dead_code, unreachable_pub)]

pub mod raw;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use iot_core::{DeviceId, LogExt, Offset, ReadLimits, StoredRecord};
use iot_gateway::mqtt::{MqttConfig, MqttServer};
use iot_gateway::{Gateway, Hub};
use iot_identity::{
    Credentials, IdentityStore, MemoryIdentityStore, NewIdentity, SymmetricKey, sas,
};
use rumqttc::{AsyncClient, Event, EventLoop, Incoming, LastWill, MqttOptions, Publish, QoS};
use tokio::sync::mpsc;

/// The host name the hub signs for.
pub const HOST: &str = "localhost";

/// How long a test waits for something that should happen at once, so that a broken build
/// fails instead of hanging. Never part of an assertion about speed.
pub const PATIENCE: Duration = Duration::from_secs(20);

pub struct Fixture {
    pub hub: Hub,
    pub gateway: Arc<dyn Gateway>,
    pub identity: Arc<MemoryIdentityStore>,
    pub server: MqttServer,
    pub addr: SocketAddr,
}

impl Fixture {
    pub async fn start() -> Fixture {
        Fixture::start_with(MqttConfig::default()).await
    }

    pub async fn start_with(config: MqttConfig) -> Fixture {
        let identity = Arc::new(MemoryIdentityStore::new());
        let hub = Hub::memory(identity.clone(), HOST).await.expect("hub");
        let gateway: Arc<dyn Gateway> = Arc::new(hub.clone());
        let server = MqttServer::new(gateway.clone(), config).expect("server");
        let addr = server
            .listen_tcp("127.0.0.1:0".parse().expect("addr"))
            .await
            .expect("listen");
        Fixture {
            hub,
            gateway,
            identity,
            server,
            addr,
        }
    }

    /// Provisions `id` with a fresh symmetric key.
    pub async fn device(&self, id: &str) -> Device {
        let key = SymmetricKey::generate();
        let device: DeviceId = id.parse().expect("device id");
        self.identity
            .create(NewIdentity::new(
                device.clone(),
                Credentials::SymmetricKeys {
                    primary: key.clone(),
                    secondary: SymmetricKey::generate(),
                },
            ))
            .await
            .expect("create identity");
        Device { id: device, key }
    }

    /// Telemetry records of `device`, waiting until there are at least `count`.
    pub async fn telemetry(&self, device: &DeviceId, count: usize) -> Vec<StoredRecord> {
        let log = self.hub.telemetry_log();
        let partition = iot_core::partition_for_key(device.as_str(), log.partition_count());
        let read = async {
            loop {
                let records: Vec<StoredRecord> = log
                    .read(partition, Offset(0), ReadLimits::default())
                    .await
                    .expect("read log")
                    .into_iter()
                    .filter(|r| r.record.key == device.as_str())
                    .collect();
                if records.len() >= count {
                    return records;
                }
                let next = log.next_offset(partition).await.expect("next offset");
                log.wait_for(partition, next).await.expect("wait");
            }
        };
        tokio::time::timeout(PATIENCE, read)
            .await
            .expect("telemetry did not arrive")
    }

    /// Every telemetry record in the log, all devices.
    pub async fn all_telemetry(&self) -> Vec<StoredRecord> {
        let log = self.hub.telemetry_log();
        let mut all = Vec::new();
        for partition in log.partitions() {
            all.extend(
                log.read(partition, Offset(0), ReadLimits::default())
                    .await
                    .expect("read"),
            );
        }
        all
    }
}

#[derive(Clone)]
pub struct Device {
    pub id: DeviceId,
    pub key: SymmetricKey,
}

impl Device {
    pub fn username(&self) -> String {
        format!(
            "{HOST}/{}/?api-version=2021-04-12&DeviceClientType=rumqttc",
            self.id
        )
    }

    /// A SAS token for the device (iot-identity writes `sr` as the Azure SDKs do, `%2F` upper case).
    pub fn token(&self) -> String {
        let resource = format!("{HOST}/devices/{}", self.id);
        sas::generate(&resource, &self.key, sas::unix_now() + 3600, None)
            .expect("token")
            .as_str()
            .to_string()
    }

    pub fn options(&self, addr: SocketAddr) -> MqttOptions {
        let mut options = MqttOptions::new(self.id.as_str(), addr.ip().to_string(), addr.port());
        options.set_credentials(self.username(), self.token());
        options.set_keep_alive(Duration::from_secs(30));
        options
    }
}

/// A rumqttc client whose event loop runs in a task; incoming PUBLISHes arrive on `incoming`
/// (rumqttc answers QoS 1 with PUBACK itself), and the loop's end on `ended`.
pub struct Client {
    pub client: AsyncClient,
    pub incoming: mpsc::UnboundedReceiver<Publish>,
    pub ended: mpsc::UnboundedReceiver<String>,
    pub connack: mpsc::UnboundedReceiver<rumqttc::ConnAck>,
    pub subacks: mpsc::UnboundedReceiver<rumqttc::SubAck>,
    task: tokio::task::JoinHandle<()>,
}

impl Client {
    pub async fn connect(options: MqttOptions) -> Client {
        let (client, eventloop) = AsyncClient::new(options, 64);
        let mut c = Client::spawn(client, eventloop);
        let ack = tokio::time::timeout(PATIENCE, c.connack.recv())
            .await
            .expect("CONNACK in time");
        assert!(ack.is_some(), "connection failed: {:?}", c.ended.try_recv());
        c
    }

    pub async fn connect_device(device: &Device, addr: SocketAddr) -> Client {
        Client::connect(device.options(addr)).await
    }

    pub fn spawn(client: AsyncClient, mut eventloop: EventLoop) -> Client {
        let (tx, incoming) = mpsc::unbounded_channel();
        let (end_tx, ended) = mpsc::unbounded_channel();
        let (ack_tx, connack) = mpsc::unbounded_channel();
        let (sub_tx, subacks) = mpsc::unbounded_channel();
        let task = tokio::spawn(async move {
            loop {
                match eventloop.poll().await {
                    Ok(Event::Incoming(Incoming::Publish(p))) => {
                        let _ = tx.send(p);
                    }
                    Ok(Event::Incoming(Incoming::ConnAck(ack))) => {
                        let _ = ack_tx.send(ack);
                    }
                    Ok(Event::Incoming(Incoming::SubAck(ack))) => {
                        let _ = sub_tx.send(ack);
                    }
                    Ok(_) => {}
                    Err(e) => {
                        let _ = end_tx.send(e.to_string());
                        return;
                    }
                }
            }
        });
        Client {
            client,
            incoming,
            ended,
            connack,
            subacks,
            task,
        }
    }

    pub async fn subscribe(&mut self, filter: &str, qos: QoS) -> rumqttc::SubAck {
        self.client.subscribe(filter, qos).await.expect("subscribe");
        tokio::time::timeout(PATIENCE, self.subacks.recv())
            .await
            .expect("SUBACK in time")
            .expect("SUBACK")
    }

    pub async fn next_publish(&mut self) -> Publish {
        tokio::time::timeout(PATIENCE, self.incoming.recv())
            .await
            .expect("a PUBLISH in time")
            .expect("connection open")
    }

    /// Waits until the server closes the connection; returns the client's error text.
    pub async fn closed(&mut self) -> String {
        tokio::time::timeout(PATIENCE, self.ended.recv())
            .await
            .expect("the server should have closed the connection")
            .expect("end reported")
    }

    /// Drops the TCP connection without DISCONNECT (the device vanished).
    pub fn vanish(self) {
        self.task.abort();
    }

    pub fn will(device: &Device, payload: &str) -> LastWill {
        LastWill::new(
            format!("devices/{}/messages/events/alarm=lost", device.id),
            payload.to_string(),
            QoS::AtLeastOnce,
            false,
        )
    }
}

impl Drop for Client {
    fn drop(&mut self) {
        self.task.abort();
    }
}
