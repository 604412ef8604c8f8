//! Errors of the MQTT endpoint.

use std::io;
use std::net::SocketAddr;

/// Why the endpoint closed one connection. The session logs it (without secrets) and only that
/// connection ends; every other session goes on.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ProtocolViolation {
    /// The packet codec refused the bytes (truncated, bad flags, bad lengths, invalid UTF-8, ...).
    #[error("malformed packet: {0}")]
    Malformed(String),
    /// A packet's remaining length exceeded the configured maximum packet size.
    #[error("packet larger than the maximum of {max} bytes")]
    TooLarge {
        /// The configured maximum.
        max: usize,
    },
    /// The connection did not start with CONNECT's fixed header; the value is the first byte
    /// received (an HTTP request shows up as `0x47`, "G").
    #[error("expected CONNECT (first byte 0x10), got first byte {0:#04x}")]
    ExpectedConnect(u8),
    /// CONNECT did not arrive within the connect timeout.
    #[error("no CONNECT within the connect timeout")]
    ConnectTimeout,
    /// A second CONNECT on an open session.
    #[error("a second CONNECT on an open session")]
    SecondConnect,
    /// CONNECT with an empty client id and clean session 0, which MQTT 3.1.1 answers with
    /// CONNACK 2 ("identifier rejected") [MQTT-3.1.3-8].
    #[error("an empty client id without clean session")]
    EmptyClientId,
    /// The protocol name or level is not MQTT 3.1.1.
    #[error("unsupported protocol level {0} (only MQTT 3.1.1, level 4)")]
    ProtocolLevel(u8),
    /// Nothing arrived for 1.5 times the keep-alive interval.
    #[error("keep-alive expired")]
    KeepAliveExpired,
    /// A PUBLISH or SUBSCRIBE at QoS 2, which the device protocol refuses.
    #[error("QoS 2 is not supported")]
    QoS2,
    /// A topic name or filter outside the device's own topics.
    #[error("topic {topic:?} is not allowed for this device")]
    TopicNotAllowed {
        /// The refused topic (shortened if long).
        topic: String,
    },
    /// A topic that breaks MQTT's rules (wildcards in a PUBLISH topic, NUL, empty).
    #[error("invalid topic {topic:?}: {reason}")]
    InvalidTopic {
        /// The refused topic (shortened if long).
        topic: String,
        /// Which rule it broke.
        reason: &'static str,
    },
    /// A packet that breaks one of MQTT 3.1.1's normative statements on fixed-header flags,
    /// reserved bits, flag combinations or strings.
    #[error("breaks MQTT 3.1.1 [{statement}]: {reason}")]
    NonConformant {
        /// The statement's identifier in the specification, e.g. `MQTT-3.1.2-13` (a section,
        /// `§2.2.1`, where the rule has no numbered statement).
        statement: &'static str,
        /// What the packet did.
        reason: &'static str,
    },
    /// A property bag that could not be decoded.
    #[error("invalid property bag: {0}")]
    PropertyBag(String),
    /// A packet that a client must not send (CONNACK, SUBACK, PUBREL, ...).
    #[error("unexpected packet from a client: {0}")]
    Unexpected(&'static str),
    /// A PUBACK for a packet id that is not in flight.
    #[error("PUBACK for packet id {0}, which is not in flight")]
    UnknownPacketId(u16),
}

/// Errors of the MQTT endpoint's public API.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// Binding a listener failed.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// The address asked for.
        addr: SocketAddr,
        /// The operating system's answer.
        source: io::Error,
    },
    /// An I/O error on a connection.
    #[error("I/O error: {0}")]
    Io(#[from] io::Error),
    /// The client broke the protocol; the connection was closed.
    #[error(transparent)]
    Protocol(#[from] ProtocolViolation),
    /// The gateway refused or failed an operation the connection needed.
    #[error(transparent)]
    Gateway(#[from] crate::Error),
    /// The configuration is not usable.
    #[error("invalid MQTT endpoint configuration: {0}")]
    Config(String),
}

/// Shortens untrusted text before it goes into an error or a log line.
pub(crate) fn shorten(text: &str) -> String {
    const MAX: usize = 120;
    if text.len() <= MAX {
        return text.to_string();
    }
    let mut end = MAX;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &text[..end])
}
