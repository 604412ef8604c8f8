//! A hub with the HTTP endpoint's policies behind the AMQP endpoint on TLS, devices with their
//! keys, and a client on fe2o3-amqp's client side (a peer this crate did not write) over
//! tokio-rustls trusting the hub's throw-away CA.

#![allow(dead_code, unreachable_pub)]

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use fe2o3_amqp::connection::ConnectionHandle;
use fe2o3_amqp::sasl_profile::SaslProfile;
use fe2o3_amqp::session::SessionHandle;
use fe2o3_amqp::types::messaging::{
    AmqpValue, ApplicationProperties, Body, Message, MessageId, Properties,
};
use fe2o3_amqp::types::primitives::{OrderedMap, SimpleValue, Value};
use fe2o3_amqp::{Connection, Receiver, Sender, Session};
use iot_core::{DeviceId, Record};
use iot_gateway::amqp::{AmqpConfig, AmqpServer};
use iot_gateway::mqtt::SelfSigned;
use iot_gateway::testkit::{Fixture as _, StoreFixture};
use iot_identity::{Credentials, NewIdentity, SymmetricKey, sas};
use rustls_pki_types::{CertificateDer, ServerName, pem::PemObject};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

#[path = "../http_support/mod.rs"]
pub mod http_support;

pub use http_support::HOST;

/// How long a test waits for what must come.
pub const PATIENCE: Duration = Duration::from_secs(10);

pub struct Fixture {
    pub stack: http_support::Stack,
    pub server: AmqpServer,
    pub addr: SocketAddr,
    pub pair: SelfSigned,
}

impl Fixture {
    pub async fn start() -> Fixture {
        Self::with_config(AmqpConfig::default()).await
    }

    pub async fn with_config(config: AmqpConfig) -> Fixture {
        let stack = http_support::Stack::start().await;
        let pair = SelfSigned::generate(HOST).expect("certificates");
        let server = AmqpServer::new(Arc::new(stack.hub.clone()), config)
            .expect("server")
            .with_service_auth(stack.state.clone());
        let addr = server
            .listen_tls(
                "127.0.0.1:0".parse().expect("addr"),
                pair.tls_config(false).expect("tls"),
            )
            .await
            .expect("listen");
        Fixture {
            stack,
            server,
            addr,
            pair,
        }
    }

    /// A new device and its primary key.
    pub async fn device(&self, name: &str) -> (DeviceId, SymmetricKey) {
        let id: DeviceId = format!("{name}-{:08x}", rand::random::<u32>())
            .parse()
            .expect("device id");
        let key = SymmetricKey::generate();
        self.stack
            .identity
            .create(NewIdentity::new(
                id.clone(),
                Credentials::SymmetricKeys {
                    primary: key.clone(),
                    secondary: SymmetricKey::generate(),
                },
            ))
            .await
            .expect("create identity");
        (id, key)
    }

    /// A device token valid for `lifetime` seconds.
    pub fn device_token(&self, id: &DeviceId, key: &SymmetricKey, lifetime: u64) -> String {
        let resource = sas::device_resource(HOST, id);
        sas::generate(&resource, key, sas::unix_now() + lifetime, None)
            .expect("token")
            .as_str()
            .to_owned()
    }

    /// A service token of `policy` for the hub, valid for an hour.
    pub fn service_token(&self, policy: &str) -> String {
        let p = self.stack.policies.get(policy).expect("policy");
        http_support::token_for(HOST, &p.primary, policy, 3600)
    }

    pub async fn telemetry_of(&self, device: &DeviceId) -> Vec<Record> {
        StoreFixture {
            identity: self.stack.identity.clone(),
            telemetry: self.stack.hub.telemetry_log().clone(),
            host: HOST.into(),
        }
        .telemetry_of(device)
        .await
    }

    /// A TLS stream to the endpoint that trusts the fixture's CA.
    pub async fn tls(&self) -> tokio_rustls::client::TlsStream<TcpStream> {
        self.tls_to(self.addr).await
    }

    /// A TLS stream to `addr` (a listener with the fixture's certificate) that trusts the
    /// fixture's CA.
    pub async fn tls_to(&self, addr: SocketAddr) -> tokio_rustls::client::TlsStream<TcpStream> {
        let mut roots = rustls::RootCertStore::empty();
        for cert in CertificateDer::pem_slice_iter(self.pair.ca_pem.as_bytes()) {
            roots.add(cert.expect("ca pem")).expect("root");
        }
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let config = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .expect("versions")
            .with_root_certificates(roots)
            .with_no_client_auth();
        let tcp = TcpStream::connect(addr).await.expect("tcp");
        TlsConnector::from(Arc::new(config))
            .connect(ServerName::try_from(HOST).expect("name"), tcp)
            .await
            .expect("tls handshake")
    }

    /// An AMQP connection (SASL ANONYMOUS) with one session.
    pub async fn client(&self) -> Client {
        self.client_with(SaslProfile::Anonymous)
            .await
            .expect("connection")
    }

    pub async fn client_with(&self, sasl: SaslProfile) -> Result<Client, String> {
        Client::over(self.tls().await, sasl).await
    }
}

/// The `$cbs` audience of a device's tokens.
pub fn device_audience(id: &DeviceId) -> String {
    format!("{HOST}/devices/{id}")
}

impl Client {
    /// An AMQP connection with one session on `stream` (TLS, a WebSocket's byte stream, …).
    pub async fn over<Io>(stream: Io, sasl: SaslProfile) -> Result<Client, String>
    where
        Io: tokio::io::AsyncRead + tokio::io::AsyncWrite + std::fmt::Debug + Send + Unpin + 'static,
    {
        let mut connection = Connection::builder()
            .container_id("amqp-test")
            .hostname(HOST)
            .sasl_profile(sasl)
            .open_with_stream(stream)
            .await
            .map_err(|e| e.to_string())?;
        let session = Session::begin(&mut connection)
            .await
            .map_err(|e| e.to_string())?;
        Ok(Client {
            connection,
            session,
            cbs: None,
        })
    }
}

pub struct Client {
    pub connection: ConnectionHandle<()>,
    pub session: SessionHandle<()>,
    cbs: Option<(Sender, Receiver)>,
}

pub fn app(pairs: &[(&str, SimpleValue)]) -> ApplicationProperties {
    let mut map = OrderedMap::new();
    for (k, v) in pairs {
        map.insert((*k).to_string(), v.clone());
    }
    ApplicationProperties(map)
}

impl Client {
    /// Puts a device token of `id` valid for an hour on `$cbs`; the endpoint must accept it.
    pub async fn authorize_device(&mut self, fx: &Fixture, id: &DeviceId, key: &SymmetricKey) {
        let status = self
            .put_token(&device_audience(id), &fx.device_token(id, key, 3600))
            .await;
        assert_eq!(status, 200, "put-token of {id}");
    }

    /// A `put-token` on `$cbs`; the reply's status code.
    pub async fn put_token(&mut self, audience: &str, token: &str) -> i32 {
        if self.cbs.is_none() {
            let sender = Sender::attach(&mut self.session, "cbs-sender", "$cbs")
                .await
                .expect("cbs sender");
            let receiver = Receiver::builder()
                .name("cbs-receiver")
                .source("$cbs")
                .target("cbs")
                .attach(&mut self.session)
                .await
                .expect("cbs receiver");
            self.cbs = Some((sender, receiver));
        }
        let (sender, receiver) = self.cbs.as_mut().expect("cbs links");
        let id = format!("put-{:08x}", rand::random::<u32>());
        let request = Message::builder()
            .properties(Properties {
                message_id: Some(MessageId::String(id.clone())),
                reply_to: Some("cbs".into()),
                ..Properties::default()
            })
            .application_properties(app(&[
                ("operation", SimpleValue::String("put-token".into())),
                (
                    "type",
                    SimpleValue::String("servicebus.windows.net:sastoken".into()),
                ),
                ("name", SimpleValue::String(audience.into())),
            ]))
            .body(Body::Value(AmqpValue(Value::String(token.to_owned()))))
            .build();
        sender.send(request).await.expect("send put-token");
        let reply = tokio::time::timeout(PATIENCE, receiver.recv::<Body<Value>>())
            .await
            .expect("a put-token reply in time")
            .expect("reply");
        receiver.accept(&reply).await.expect("accept reply");
        let message = reply.message();
        assert_eq!(
            message
                .properties
                .as_ref()
                .and_then(|p| p.correlation_id.clone()),
            Some(MessageId::String(id)),
            "the reply correlates with the request"
        );
        let ApplicationProperties(map) = message
            .application_properties
            .as_ref()
            .expect("reply properties");
        match map.get("status-code") {
            Some(SimpleValue::Int(code)) => *code,
            other => panic!("status-code is an int: {other:?}"),
        }
    }
}

/// A telemetry-like message with `body`, a message id and application properties.
pub fn message(
    body: &[u8],
    props: Properties,
    application: ApplicationProperties,
) -> Message<Body<Value>> {
    Message::builder()
        .properties(props)
        .application_properties(application)
        .body(Body::Data(
            vec![fe2o3_amqp::types::messaging::Data(body.to_vec().into())].into(),
        ))
        .build()
}
