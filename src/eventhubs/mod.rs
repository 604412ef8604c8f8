//! An Event Hubs-compatible endpoint over the hub's telemetry log, as IoT Hub has one: back
//! ends read device telemetry with any Event Hubs client (`azure-eventhub`, the .NET, Java and
//! JavaScript SDKs, Azure Functions' trigger …) from a connection string
//! `Endpoint=sb://{host}/;SharedAccessKeyName=service;SharedAccessKey=…;EntityPath={entity}`.
//!
//! * **Partitions** are the telemetry log's partitions (`0`…`n-1`); a partition's sequence
//!   numbers *and* offsets are its log offsets, so a checkpoint taken from either resumes at
//!   the same record ([`position`](self) describes the selector filters).
//! * **Consumer groups** are names a reader is allowed to use (`$Default` unless configured);
//!   positions are the client's (its checkpoints), so readers of one group do not share one.
//! * **Events** carry IoT Hub's system properties and the device's application properties
//!   (see the table in `event.rs` and `docs/eventhubs.md`).
//! * **Security**: TLS (rustls), SASL ANONYMOUS followed by a `$cbs` put-token of a Service Bus
//!   SAS token signed with a shared access policy that has `ServiceConnect`, or SASL PLAIN with
//!   such a policy's name and key. A receive link whose token expires is closed.
//! * **`$management`** answers `READ` of `com.microsoft:eventhub` and `com.microsoft:partition`.
//!
//! Built on the crates' public API only (`Hub::telemetry_log`, `iot_gateway::http::PolicyStore`,
//! the adapter kit's AMQP frame checker and encoder) with a connection engine of its own
//! (`engine`), which uses fe2o3-amqp's types for the performatives and requests.
//!
//! ```no_run
//! # async fn run(hub: iot_gateway::Hub, policies: std::sync::Arc<iot_gateway::http::PolicyStore>) -> Result<(), Box<dyn std::error::Error>> {
//! use iot_sdk::eventhubs::{EventHubsConfig, EventHubsEndpoint};
//! let config = EventHubsConfig::new("contoso.azure-devices.net", "contoso");
//! let endpoint = EventHubsEndpoint::new(hub.telemetry_log().clone(), policies, config);
//! let tls = iot_sdk::eventhubs::tls_config_from_pem(b"…cert…", b"…key…")?;
//! let bound = endpoint.listen_tls("0.0.0.0:5671".parse()?, tls).await?;
//! # Ok(()) }
//! ```

mod address;
mod claims;
mod engine;
mod error;
mod event;
#[cfg(test)]
mod event_reference;
mod event_wire;
mod management;
mod position;
mod sasl;
mod server;
pub mod token;

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use iot_core::{Log, Timestamp};
use iot_gateway::http::{PolicyStore, SharedAccessPolicy};
use tokio::sync::watch;
use tokio_rustls::rustls::ServerConfig;
use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer};

pub use error::{EventHubsError, Result};
pub use event_wire::encode_event;

/// How the endpoint presents the log.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct EventHubsConfig {
    /// The host name clients' connection strings and tokens name (`sb://{host}/`).
    pub host: String,
    /// The event hub's name (`EntityPath`); IoT Hub uses the hub's name.
    pub entity: String,
    /// Consumer groups readers may name. Default `$Default`.
    pub consumer_groups: Vec<String>,
    /// What `$management` reports as the entity's creation time.
    pub created_at: Timestamp,
    /// Largest AMQP frame accepted. Default 256 KiB.
    pub max_frame_size: u32,
    /// Time for the TLS, SASL and AMQP open handshakes together. Default 10 s.
    pub handshake_timeout: Duration,
    /// Connections served at once, over all listeners; more are closed at accept. Default
    /// 10 000.
    pub max_connections: usize,
}

impl EventHubsConfig {
    /// The entity `entity` on host `host`, with the defaults.
    pub fn new(host: impl Into<String>, entity: impl Into<String>) -> Self {
        EventHubsConfig {
            host: host.into(),
            entity: entity.into(),
            consumer_groups: vec!["$Default".to_owned()],
            created_at: Timestamp::now(),
            max_frame_size: 256 * 1024,
            handshake_timeout: Duration::from_secs(10),
            max_connections: 10_000,
        }
    }

    /// Adds a consumer group readers may name.
    pub fn with_consumer_group(mut self, group: impl Into<String>) -> Self {
        self.consumer_groups.push(group.into());
        self
    }

    /// The connection string of `policy` for this endpoint:
    /// `Endpoint=sb://{host}/;SharedAccessKeyName=…;SharedAccessKey=…;EntityPath={entity}`.
    pub fn connection_string(&self, policy: &SharedAccessPolicy) -> String {
        format!(
            "Endpoint=sb://{}/;SharedAccessKeyName={};SharedAccessKey={};EntityPath={}",
            self.host,
            policy.name,
            policy.primary.expose_base64().as_str(),
            self.entity
        )
    }
}

/// What every connection of the endpoint shares.
pub(crate) struct Shared {
    pub(crate) log: Arc<dyn Log>,
    pub(crate) policies: Arc<PolicyStore>,
    pub(crate) config: EventHubsConfig,
    /// One permit per connection served ([`EventHubsConfig::max_connections`]).
    pub(crate) slots: Arc<tokio::sync::Semaphore>,
}

/// The endpoint: listeners over one log. Dropping it (or [`stop`](Self::stop)) stops the
/// listeners and closes every connection.
pub struct EventHubsEndpoint {
    shared: Arc<Shared>,
    stop: watch::Sender<bool>,
}

impl fmt::Debug for EventHubsEndpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EventHubsEndpoint")
            .field("host", &self.shared.config.host)
            .field("entity", &self.shared.config.entity)
            .finish_non_exhaustive()
    }
}

impl EventHubsEndpoint {
    /// An endpoint over `log` (the hub's telemetry log, `Hub::telemetry_log`), authorizing
    /// clients with `policies`.
    pub fn new(log: Arc<dyn Log>, policies: Arc<PolicyStore>, config: EventHubsConfig) -> Self {
        let (stop, _) = watch::channel(false);
        EventHubsEndpoint {
            shared: Arc::new(Shared {
                log,
                policies,
                slots: Arc::new(tokio::sync::Semaphore::new(config.max_connections)),
                config,
            }),
            stop,
        }
    }

    /// The configuration.
    pub fn config(&self) -> &EventHubsConfig {
        &self.shared.config
    }

    /// Stops the listeners and closes every connection.
    pub fn stop(&self) {
        self.stop.send_replace(true);
    }
}

impl Drop for EventHubsEndpoint {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A rustls server configuration (ring) from a PEM certificate chain and private key.
pub fn tls_config_from_pem(cert_chain_pem: &[u8], key_pem: &[u8]) -> Result<Arc<ServerConfig>> {
    let config = |e: String| EventHubsError::Config(format!("TLS: {e}"));
    let chain = CertificateDer::pem_slice_iter(cert_chain_pem)
        .collect::<std::result::Result<Vec<_>, _>>()
        .map_err(|e| config(format!("certificate chain: {e}")))?;
    if chain.is_empty() {
        return Err(config("no certificate in the PEM".into()));
    }
    let key =
        PrivateKeyDer::from_pem_slice(key_pem).map_err(|e| config(format!("private key: {e}")))?;
    let provider = Arc::new(tokio_rustls::rustls::crypto::ring::default_provider());
    let server = ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| config(e.to_string()))?
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .map_err(|e| config(format!("certificate and key: {e}")))?;
    Ok(Arc::new(server))
}
