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
            .max_bulk_devices(7);
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
    }
}
