//! Limits and timeouts of the AMQP endpoint.

use std::time::Duration;

/// How the AMQP endpoint behaves. `Default` gives IoT Hub's figures where it publishes them.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct AmqpConfig {
    /// The container id in the endpoint's `open` performative.
    pub container_id: String,
    /// The largest frame a peer may send (and the endpoint sends); a larger frame closes the
    /// connection with `amqp:connection:framing-error`. 64 KiB.
    pub max_frame_size: u32,
    /// The largest message (a multi-frame transfer) a link takes: IoT Hub's 256 KiB message
    /// limit plus room for the AMQP sections around the body.
    pub max_message_size: u64,
    /// The idle timeout announced in `open`: a peer that sends nothing (not even an empty
    /// frame) for twice this long is disconnected. IoT Hub announces 240 s.
    pub idle_timeout: Duration,
    /// How long the TLS handshake, the SASL exchange and the `open` may take together before
    /// the connection is dropped (slow handshakes hold no resources for long).
    pub handshake_timeout: Duration,
    /// Connections served at once; more are closed at accept.
    pub max_connections: usize,
    /// How long an open connection may go without holding a grant (a device's or the
    /// service's, from `$cbs` put-token or the SASL PLAIN token) before it is closed with
    /// `amqp:unauthorized-access`; checked once, this long after `open`. 60 s.
    pub auth_timeout: Duration,
    /// Links attached at once on one connection (all its sessions); further attaches are
    /// refused with `amqp:resource-limit-exceeded` until some detach. 1024: a multiplexing
    /// client uses about six per device.
    pub max_links: usize,
    /// How often an idle feedback link looks for new feedback records.
    pub feedback_poll: Duration,
    /// The most feedback records in one feedback message (IoT Hub batches them).
    pub feedback_batch: usize,
    /// The most messages in one batched telemetry message (message format `0x80013700`);
    /// a larger batch is rejected whole. 500: with `max_message_size` this bounds the records
    /// one transfer can make (tiny inner messages would otherwise make tens of thousands).
    pub max_batch_messages: usize,
}

impl Default for AmqpConfig {
    fn default() -> Self {
        AmqpConfig {
            container_id: "iot-gateway".to_string(),
            max_frame_size: 64 * 1024,
            max_message_size: 256 * 1024 + 16 * 1024,
            idle_timeout: Duration::from_secs(240),
            handshake_timeout: Duration::from_secs(10),
            max_connections: 10_000,
            auth_timeout: Duration::from_secs(60),
            max_links: 1024,
            feedback_poll: Duration::from_millis(250),
            feedback_batch: 64,
            max_batch_messages: 500,
        }
    }
}
