//! The CoAP adapter's settings.

use std::time::Duration;

/// How the CoAP adapter behaves. Start from [`Default`] and change what you need.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct CoapConfig {
    /// The largest datagram accepted, in bytes; larger ones are dropped unread. Default 4096
    /// (RFC 7252 recommends messages of at most 1152 bytes; block-wise transfer is not
    /// supported, so a message must fit in one datagram).
    pub max_datagram: usize,
    /// How long a request's message id is remembered for deduplication: RFC 7252's
    /// `EXCHANGE_LIFETIME`, 247 s with the default transmission parameters. A retransmission
    /// within it gets the first answer again and is not processed twice.
    pub exchange_lifetime: Duration,
    /// The most message ids remembered at once; past it the oldest are forgotten early.
    /// Default 65 536.
    pub max_remembered: usize,
    /// The most requests processed at once; a request over it is dropped (its client
    /// retransmits). Default 256.
    pub max_in_flight: usize,
    /// How long a `GET …/devicebound` waits for a C2D message before it answers that there is
    /// none. Below RFC 7252's `ACK_TIMEOUT` (2 s) so that the answer usually beats the client's
    /// first retransmission. Default 500 ms.
    pub c2d_wait: Duration,
    /// A device's gateway session is closed after this long without a request. Longer than the
    /// inbox's lock (one minute by default) so that a lock outlives the pause between `GET` and
    /// `DELETE`. Default 5 minutes.
    pub session_idle: Duration,
}

impl Default for CoapConfig {
    fn default() -> Self {
        CoapConfig {
            max_datagram: 4096,
            exchange_lifetime: Duration::from_secs(247),
            max_remembered: 65_536,
            max_in_flight: 256,
            c2d_wait: Duration::from_millis(500),
            session_idle: Duration::from_secs(300),
        }
    }
}

impl CoapConfig {
    /// Sets [`c2d_wait`](Self::c2d_wait).
    pub fn c2d_wait(mut self, wait: Duration) -> Self {
        self.c2d_wait = wait;
        self
    }

    /// Sets [`exchange_lifetime`](Self::exchange_lifetime).
    pub fn exchange_lifetime(mut self, lifetime: Duration) -> Self {
        self.exchange_lifetime = lifetime;
        self
    }

    /// Sets [`session_idle`](Self::session_idle).
    pub fn session_idle(mut self, idle: Duration) -> Self {
        self.session_idle = idle;
        self
    }

    /// Sets [`max_datagram`](Self::max_datagram).
    pub fn max_datagram(mut self, bytes: usize) -> Self {
        self.max_datagram = bytes;
        self
    }
}
