//! Settings of the HTTP endpoint.

use std::time::Duration;

/// The `api-version`s the endpoint accepts: those Microsoft's current service and device SDKs
/// send (Python `azure-iot-hub` 2.x and Node `azure-iothub` send 2021-04-12; the device SDKs
/// 2020-09-30 and later), and the older GA versions IoT Hub still serves.
pub const DEFAULT_API_VERSIONS: &[&str] = &[
    "2016-11-14",
    "2017-06-30",
    "2018-06-30",
    "2019-03-30",
    "2019-10-01",
    "2020-03-13",
    "2020-05-31-preview",
    "2020-06-30",
    "2020-09-30",
    "2021-04-12",
    "2021-06-30",
    "2021-07-02",
];

/// How the HTTP endpoint behaves. Start from [`Default`] and change what you need.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct HttpConfig {
    /// The `api-version` query values accepted; any other (or none) is 400
    /// `InvalidProtocolVersion`. Default [`DEFAULT_API_VERSIONS`].
    pub api_versions: Vec<String>,
    /// How long a client may take to send a request's headers, and how long an idle keep-alive
    /// connection is kept. Default 30 s.
    pub header_read_timeout: Duration,
    /// How long a TLS handshake may take. Default 10 s.
    pub handshake_timeout: Duration,
    /// How long [`HttpServer::shutdown`](super::HttpServer::shutdown) waits for requests in
    /// flight. Default 5 s.
    pub shutdown_grace: Duration,
    /// The most connections served at once; further ones wait in the kernel's backlog.
    /// Default 10 000.
    pub max_connections: usize,
    /// The largest request body, in bytes. Default 1 MiB (a bulk request of 100 devices fits).
    pub max_body_bytes: usize,
    /// The largest `x-ms-max-item-count` honoured; larger values are lowered to it.
    /// Default 1 000 (IoT Hub's page size).
    pub max_page_size: usize,
    /// The most devices in one bulk `POST /devices`. Default 100 (IoT Hub's limit).
    pub max_bulk_devices: usize,
    /// The largest device-to-cloud message (or batch) of the device API, in bytes.
    /// Default 256 KiB (IoT Hub's limit).
    pub max_message_bytes: usize,
    /// How long a client may take to send a request's body once its headers arrived; a slower
    /// one is answered 408 and the connection closed. Default 30 s.
    pub body_read_timeout: Duration,
    /// The most header fields in one request; more is answered 431. Default 64.
    pub max_headers: usize,
    /// The most bytes of a request's line and headers (at least 8 192); more is answered 431.
    /// Default 16 KiB.
    pub max_header_bytes: usize,
    /// How long the device API keeps a device's session open after its last request, so that
    /// a C2D message locked by a `GET` stays locked for the `DELETE` that completes it.
    /// Default 2 minutes (longer than the inbox's lock).
    pub device_session_idle: Duration,
    /// How long `GET …/messages/deviceBound` waits for a message the inbox says is queued
    /// before answering 204. Default 200 ms.
    pub c2d_receive_wait: Duration,
    /// How many verified service tokens (signed by a shared access policy) are remembered, so
    /// that a back end's repeated token is not parsed and HMAC-checked on every request; 0
    /// turns the cache off. An entry lasts until its token expires or any policy changes.
    /// Default 1 024.
    pub token_cache_size: usize,
    /// Failed logins allowed on `POST /auth/login` (user sessions, see
    /// [`HttpState::with_access`](super::HttpState::with_access)) per user name and per peer
    /// address. Default [`LoginLimit::default`].
    pub login_limit: LoginLimit,
}

/// Budgets of failed logins: a token bucket per user name and one per peer address (IPv4, or
/// the /64 of IPv6), both spent by every refused login and refilled at one attempt per
/// `refill_every`. A login is tried only when both buckets hold an attempt; otherwise it is
/// answered 429 without checking the password, so guessing costs the guesser time and the hub no
/// hashing. A successful login gives its attempt back.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct LoginLimit {
    /// Failed logins in a row one user name may take; 0 turns the per-user budget off.
    /// Default 10.
    pub per_user: u32,
    /// Failed logins in a row one peer address may take; 0 turns the per-peer budget off.
    /// Default 30.
    pub per_peer: u32,
    /// How long one attempt takes to come back to each bucket. Default 30 s.
    pub refill_every: Duration,
}

impl Default for LoginLimit {
    fn default() -> Self {
        LoginLimit {
            per_user: 10,
            per_peer: 30,
            refill_every: Duration::from_secs(30),
        }
    }
}

impl LoginLimit {
    /// `per_user` and `per_peer` failed logins in a row, one more every `refill_every`.
    pub fn new(per_user: u32, per_peer: u32, refill_every: Duration) -> Self {
        LoginLimit {
            per_user,
            per_peer,
            refill_every,
        }
    }
}

impl Default for HttpConfig {
    fn default() -> Self {
        HttpConfig {
            api_versions: DEFAULT_API_VERSIONS
                .iter()
                .map(|v| (*v).to_owned())
                .collect(),
            header_read_timeout: Duration::from_secs(30),
            handshake_timeout: Duration::from_secs(10),
            shutdown_grace: Duration::from_secs(5),
            max_connections: 10_000,
            max_body_bytes: 1 << 20,
            max_page_size: 1_000,
            max_bulk_devices: 100,
            max_message_bytes: 256 * 1024,
            body_read_timeout: Duration::from_secs(30),
            max_headers: 64,
            max_header_bytes: 16 * 1024,
            device_session_idle: Duration::from_secs(120),
            c2d_receive_wait: Duration::from_millis(200),
            token_cache_size: 1024,
            login_limit: LoginLimit::default(),
        }
    }
}

impl HttpConfig {
    /// Sets [`api_versions`](Self::api_versions).
    pub fn api_versions(mut self, versions: Vec<String>) -> Self {
        self.api_versions = versions;
        self
    }

    /// Sets [`header_read_timeout`](Self::header_read_timeout).
    pub fn header_read_timeout(mut self, timeout: Duration) -> Self {
        self.header_read_timeout = timeout;
        self
    }

    /// Sets [`handshake_timeout`](Self::handshake_timeout).
    pub fn handshake_timeout(mut self, timeout: Duration) -> Self {
        self.handshake_timeout = timeout;
        self
    }

    /// Sets [`shutdown_grace`](Self::shutdown_grace).
    pub fn shutdown_grace(mut self, grace: Duration) -> Self {
        self.shutdown_grace = grace;
        self
    }

    /// Sets [`max_connections`](Self::max_connections).
    pub fn max_connections(mut self, max: usize) -> Self {
        self.max_connections = max;
        self
    }

    /// Sets [`max_body_bytes`](Self::max_body_bytes).
    pub fn max_body_bytes(mut self, max: usize) -> Self {
        self.max_body_bytes = max;
        self
    }

    /// Sets [`max_page_size`](Self::max_page_size).
    pub fn max_page_size(mut self, max: usize) -> Self {
        self.max_page_size = max;
        self
    }

    /// Sets [`max_bulk_devices`](Self::max_bulk_devices).
    pub fn max_bulk_devices(mut self, max: usize) -> Self {
        self.max_bulk_devices = max;
        self
    }

    /// Sets [`max_message_bytes`](Self::max_message_bytes).
    pub fn max_message_bytes(mut self, max: usize) -> Self {
        self.max_message_bytes = max;
        self
    }

    /// Sets [`body_read_timeout`](Self::body_read_timeout).
    pub fn body_read_timeout(mut self, timeout: Duration) -> Self {
        self.body_read_timeout = timeout;
        self
    }

    /// Sets [`max_headers`](Self::max_headers).
    pub fn max_headers(mut self, max: usize) -> Self {
        self.max_headers = max;
        self
    }

    /// Sets [`max_header_bytes`](Self::max_header_bytes).
    pub fn max_header_bytes(mut self, max: usize) -> Self {
        self.max_header_bytes = max;
        self
    }

    /// Sets [`device_session_idle`](Self::device_session_idle).
    pub fn device_session_idle(mut self, idle: Duration) -> Self {
        self.device_session_idle = idle;
        self
    }

    /// Sets [`c2d_receive_wait`](Self::c2d_receive_wait).
    pub fn c2d_receive_wait(mut self, wait: Duration) -> Self {
        self.c2d_receive_wait = wait;
        self
    }

    /// Sets [`token_cache_size`](Self::token_cache_size).
    pub fn token_cache_size(mut self, size: usize) -> Self {
        self.token_cache_size = size;
        self
    }

    /// Sets [`login_limit`](Self::login_limit).
    pub fn login_limit(mut self, limit: LoginLimit) -> Self {
        self.login_limit = limit;
        self
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_setter_sets_its_own_field() {
        let c = HttpConfig::default()
            .api_versions(vec!["x".into()])
            .header_read_timeout(Duration::from_secs(1))
            .handshake_timeout(Duration::from_secs(2))
            .shutdown_grace(Duration::from_secs(3))
            .max_connections(4)
            .max_body_bytes(5)
            .max_page_size(6)
            .max_bulk_devices(7)
            .max_message_bytes(8)
            .body_read_timeout(Duration::from_secs(9))
            .max_headers(10)
            .max_header_bytes(11)
            .device_session_idle(Duration::from_secs(12))
            .c2d_receive_wait(Duration::from_secs(13))
            .token_cache_size(14)
            .login_limit(LoginLimit::new(15, 16, Duration::from_secs(17)));
        assert_eq!(c.api_versions, ["x"]);
        assert_eq!(c.header_read_timeout, Duration::from_secs(1));
        assert_eq!(c.handshake_timeout, Duration::from_secs(2));
        assert_eq!(c.shutdown_grace, Duration::from_secs(3));
        assert_eq!(
            (
                c.max_connections,
                c.max_body_bytes,
                c.max_page_size,
                c.max_bulk_devices
            ),
            (4, 5, 6, 7)
        );
        assert_eq!(
            (c.max_message_bytes, c.max_headers, c.max_header_bytes),
            (8, 10, 11)
        );
        assert_eq!(c.body_read_timeout, Duration::from_secs(9));
        assert_eq!(c.device_session_idle, Duration::from_secs(12));
        assert_eq!(c.c2d_receive_wait, Duration::from_secs(13));
        assert_eq!(c.token_cache_size, 14);
        assert_eq!(
            c.login_limit,
            LoginLimit::new(15, 16, Duration::from_secs(17))
        );
    }
}
