//! How a [`DeviceClient`](super::DeviceClient) connects: identity, transport, TLS roots, token
//! lifetime, keep-alive, reconnect policy and outbox.

use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

use iot_core::storage::Durability;
use iot_identity::SymmetricKey;
use zeroize::Zeroizing;

use super::backoff::Backoff;
use super::connection_string::{ConnectionString, Credential};
use super::error::ClientError;

/// MQTT 3.1.1 over TLS, or MQTT over a WebSocket over TLS (for networks that pass only HTTPS).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    /// MQTT over TLS, port 8883 unless overridden.
    Mqtt,
    /// MQTT over WebSocket (`wss://host/$iothub/websocket`, subprotocol `mqtt`), port 443 unless
    /// overridden.
    WebSocket,
}

impl Transport {
    /// IoT Hub's port for the transport.
    pub fn default_port(self) -> u16 {
        match self {
            Transport::Mqtt => 8883,
            Transport::WebSocket => 443,
        }
    }
}

/// How the device authenticates.
#[derive(Clone)]
pub(crate) enum Auth {
    Key(SymmetricKey),
    Token(Zeroizing<String>),
    X509 {
        cert_chain_pem: Vec<u8>,
        key_pem: Zeroizing<Vec<u8>>,
    },
}

impl fmt::Debug for Auth {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Auth::Key(_) => "Key(<redacted>)",
            Auth::Token(_) => "Token(<redacted>)",
            Auth::X509 { .. } => "X509(<redacted key>)",
        })
    }
}

/// What the outbox does when it is full.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WhenFull {
    /// `enqueue_telemetry`/`send_telemetry` fail at once with [`ClientError::OutboxFull`].
    Error,
    /// They wait until a PUBACK makes room.
    Wait,
}

/// Where telemetry waits for its PUBACK.
#[derive(Debug, Clone)]
pub enum OutboxConfig {
    /// In memory: survives outages, not a restart of the process.
    Memory {
        /// At most this many unacknowledged messages.
        capacity: usize,
        /// What a send does past `capacity`.
        when_full: WhenFull,
    },
    /// In an `iot_core::FileLog` in `dir`: survives a restart; a new client on the same
    /// directory sends what the old one left, in order.
    File {
        /// The log's directory (one client at a time: the log locks it).
        dir: PathBuf,
        /// At most this many unacknowledged messages.
        capacity: usize,
        /// What a send does past `capacity`.
        when_full: WhenFull,
        /// When an enqueued message is on disk (default: fsynced before `enqueue` returns).
        durability: Durability,
    },
}

impl Default for OutboxConfig {
    fn default() -> Self {
        OutboxConfig::Memory {
            capacity: 1000,
            when_full: WhenFull::Error,
        }
    }
}

/// Everything a [`DeviceClient`](super::DeviceClient) needs; start from
/// [`from_connection_string`](Self::from_connection_string), [`with_key`](Self::with_key) or
/// [`with_x509`](Self::with_x509) and change what you need.
#[derive(Debug, Clone)]
pub struct ClientOptions {
    pub(crate) host_name: String,
    pub(crate) connect_host: String,
    pub(crate) device_id: String,
    pub(crate) module_id: Option<String>,
    pub(crate) auth: Auth,
    pub(crate) transport: Transport,
    pub(crate) port: Option<u16>,
    pub(crate) ca_roots_pem: Option<Vec<u8>>,
    pub(crate) token_lifetime: Duration,
    pub(crate) keep_alive: Duration,
    pub(crate) connect_timeout: Duration,
    pub(crate) operation_timeout: Duration,
    pub(crate) max_in_flight: usize,
    pub(crate) backoff: Backoff,
    pub(crate) outbox: OutboxConfig,
    pub(crate) model_id: Option<String>,
    #[cfg(feature = "client-https")]
    pub(crate) https_port: Option<u16>,
    /// Register through DPS first (see [`with_dps`](Self::with_dps)).
    pub(crate) dps: Option<super::dps::DpsOptions>,
}

impl ClientOptions {
    fn new(host_name: String, device_id: String, auth: Auth) -> Self {
        ClientOptions {
            connect_host: host_name.clone(),
            host_name,
            device_id,
            module_id: None,
            auth,
            transport: Transport::Mqtt,
            port: None,
            ca_roots_pem: None,
            token_lifetime: Duration::from_secs(3600),
            keep_alive: Duration::from_secs(60),
            connect_timeout: Duration::from_secs(10),
            operation_timeout: Duration::from_secs(30),
            max_in_flight: 16,
            backoff: Backoff::default(),
            outbox: OutboxConfig::default(),
            model_id: None,
            #[cfg(feature = "client-https")]
            https_port: None,
            dps: None,
        }
    }

    /// From a device or module connection string (see [`ConnectionString`]).
    pub fn from_connection_string(s: &str) -> Result<Self, ClientError> {
        let cs: ConnectionString = s.parse()?;
        Self::from_parsed(cs)
    }

    /// From a parsed connection string. `x509=true` needs [`x509_identity`](Self::x509_identity)
    /// afterwards.
    pub fn from_parsed(cs: ConnectionString) -> Result<Self, ClientError> {
        let auth = match cs.credential {
            Credential::Key(key) => Auth::Key(key),
            Credential::Token(token) => Auth::Token(token),
            Credential::X509 => Auth::X509 {
                cert_chain_pem: Vec::new(),
                key_pem: Zeroizing::new(Vec::new()),
            },
        };
        let mut options = ClientOptions::new(cs.host_name, cs.device_id, auth);
        if let Some(gateway) = cs.gateway_host_name {
            options.connect_host = gateway;
        }
        options.module_id = cs.module_id;
        Ok(options)
    }

    /// A device that signs its tokens with `key`.
    pub fn with_key(host_name: &str, device_id: &str, key: SymmetricKey) -> Self {
        ClientOptions::new(host_name.into(), device_id.into(), Auth::Key(key))
    }

    /// A device that registers through DPS first: [`DeviceClient::connect`](super::DeviceClient::connect)
    /// registers with `dps`, then connects to the assigned hub as the assigned device, signing
    /// its tokens with the registration's key. [`connect_host`](Self::connect_host) and
    /// [`port`](Self::port) still apply to the hub (the assigned hub by default); give the hub's
    /// CA with [`ca_roots_pem`](Self::ca_roots_pem) as for any hub.
    pub fn with_dps(dps: super::dps::DpsOptions) -> Self {
        let mut options = ClientOptions::new(
            dps.endpoint.clone(),
            dps.registration_id.clone(),
            Auth::Key(dps.key.clone()),
        );
        options.dps = Some(dps);
        options
    }

    /// After a DPS registration: the assigned hub (also the connect host, unless another was
    /// set) and device id.
    pub(crate) fn assigned(&mut self, registration: &super::dps::Registration) {
        if self.connect_host == self.host_name {
            self.connect_host = registration.assigned_hub.clone();
        }
        self.host_name = registration.assigned_hub.clone();
        self.device_id = registration.device_id.clone();
    }

    /// A device that authenticates with an X.509 certificate (PEM chain and PEM private key).
    pub fn with_x509(
        host_name: &str,
        device_id: &str,
        cert_chain_pem: &[u8],
        key_pem: &[u8],
    ) -> Self {
        ClientOptions::new(
            host_name.into(),
            device_id.into(),
            Auth::X509 {
                cert_chain_pem: cert_chain_pem.to_vec(),
                key_pem: Zeroizing::new(key_pem.to_vec()),
            },
        )
    }

    /// Sets the X.509 identity (for an `x509=true` connection string, or instead of a key).
    pub fn x509_identity(mut self, cert_chain_pem: &[u8], key_pem: &[u8]) -> Self {
        self.auth = Auth::X509 {
            cert_chain_pem: cert_chain_pem.to_vec(),
            key_pem: Zeroizing::new(key_pem.to_vec()),
        };
        self
    }

    /// MQTT/TLS (default) or MQTT over WebSocket/TLS.
    pub fn transport(mut self, transport: Transport) -> Self {
        self.transport = transport;
        self
    }

    /// Connects to this port instead of the transport's (8883 or 443); for tests and proxies.
    pub fn port(mut self, port: u16) -> Self {
        self.port = Some(port);
        self
    }

    /// Connects to this host instead of the connection string's (`HostName`, or
    /// `GatewayHostName`); the TLS certificate must be valid for it. Tokens are still signed
    /// for `HostName`.
    pub fn connect_host(mut self, host: &str) -> Self {
        self.connect_host = host.into();
        self
    }

    /// The hub's HTTPS device API on this port of the connect host (IoT Hub: 443), with the
    /// same TLS trust. Enables [`C2dMessage::reject`](super::C2dMessage::reject) and
    /// [`abandon`](super::C2dMessage::abandon), which MQTT cannot express (feature
    /// `client-https`; docs/device-client.md).
    #[cfg(feature = "client-https")]
    pub fn https_port(mut self, port: u16) -> Self {
        self.https_port = Some(port);
        self
    }

    /// Trusts only the CA certificates in this PEM text instead of the system's roots (a
    /// self-signed development or test hub).
    pub fn ca_roots_pem(mut self, pem: &[u8]) -> Self {
        self.ca_roots_pem = Some(pem.to_vec());
        self
    }

    /// Lifetime of the SAS tokens the client signs (default one hour). The client reconnects with
    /// a fresh token when four fifths of it have passed (at most two minutes before expiry).
    pub fn token_lifetime(mut self, lifetime: Duration) -> Self {
        self.token_lifetime = lifetime;
        self
    }

    /// MQTT keep-alive (default 60 s): a PINGREQ after this much silence; no answer by the next
    /// one ends the connection.
    pub fn keep_alive(mut self, keep_alive: Duration) -> Self {
        self.keep_alive = keep_alive;
        self
    }

    /// How long one connection attempt (TCP, TLS, WebSocket, CONNACK) may take (default 10 s).
    pub fn connect_timeout(mut self, timeout: Duration) -> Self {
        self.connect_timeout = timeout;
        self
    }

    /// How long a twin request waits for its answer (default 30 s).
    pub fn operation_timeout(mut self, timeout: Duration) -> Self {
        self.operation_timeout = timeout;
        self
    }

    /// Telemetry messages sent but not yet acknowledged at a time (default 16).
    pub fn max_in_flight(mut self, n: usize) -> Self {
        self.max_in_flight = n.max(1);
        self
    }

    /// Reconnect delays (default 250 ms doubling to 30 s, with jitter).
    pub fn backoff(mut self, backoff: Backoff) -> Self {
        self.backoff = backoff;
        self
    }

    /// Where telemetry waits for its PUBACK (default: memory, 1000 messages, error when full).
    pub fn outbox(mut self, outbox: OutboxConfig) -> Self {
        self.outbox = outbox;
        self
    }

    /// The IoT Plug and Play model id sent in the username.
    pub fn model_id(mut self, model_id: &str) -> Self {
        self.model_id = Some(model_id.into());
        self
    }

    pub(crate) fn port_or_default(&self) -> u16 {
        self.port.unwrap_or(self.transport.default_port())
    }

    /// MQTT client id: the device id, or `{device}/{module}`.
    pub(crate) fn client_id(&self) -> String {
        match &self.module_id {
            Some(m) => format!("{}/{m}", self.device_id),
            None => self.device_id.clone(),
        }
    }

    /// `{host}/{device}[/{module}]/?api-version=…`, as IoT Hub expects.
    pub(crate) fn username(&self) -> String {
        let mut u = format!(
            "{}/{}/?api-version=2021-04-12",
            self.host_name,
            self.client_id()
        );
        u.push_str("&DeviceClientType=iot-sdk-rust%2F");
        u.push_str(env!("CARGO_PKG_VERSION"));
        if let Some(model) = &self.model_id {
            u.push_str("&model-id=");
            u.push_str(&super::topics::escape(model));
        }
        u
    }

    /// The resource SAS tokens are signed for.
    pub(crate) fn sas_resource(&self) -> String {
        match &self.module_id {
            Some(m) => format!("{}/devices/{}/modules/{m}", self.host_name, self.device_id),
            None => format!("{}/devices/{}", self.host_name, self.device_id),
        }
    }

    /// When a token signed now should be replaced: after four fifths of its life, and at least two
    /// minutes before it expires (IoT Hub closes a connection whose token expired).
    pub(crate) fn renew_after(&self) -> Duration {
        let margin = (self.token_lifetime / 5).min(Duration::from_secs(120));
        self.token_lifetime.saturating_sub(margin)
    }
}
