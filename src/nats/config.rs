//! Connection and stream settings of the JetStream log, read from a URL.

use std::fmt;
use std::time::Duration;

use iot_core::{Error, LogLimits, Result, RetentionPolicy};

/// Where the streams live: on disk (the default) or in the server's memory.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub enum NatsStorage {
    /// JetStream's file store.
    #[default]
    File,
    /// JetStream's memory store: lost when the server stops.
    Memory,
}

/// Settings of a [`NatsLogFactory`](super::NatsLogFactory).
///
/// Build it from a URL with [`NatsLogConfig::from_url`], or start from [`Default`] and use the
/// setters. `Debug` never shows the URL's user information.
#[derive(Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct NatsLogConfig {
    /// Server URLs, comma-separated (`nats://host:4222`), possibly with `user:password@`.
    pub servers: String,
    /// Prefix of every stream, subject and bucket name, so that several deployments can share a
    /// server. Letters, digits, `-` and `_`. Default `iot`.
    pub prefix: String,
    /// Replicas of every stream and bucket (1, 3 or 5; more than 1 needs a cluster). Default 1.
    pub replicas: usize,
    /// Stream storage. Default [`NatsStorage::File`].
    pub storage: NatsStorage,
    /// How long connecting may take before it fails. Default 5 s.
    pub connect_timeout: Duration,
    /// How long any request (a publish's acknowledgement, a stream query, a read) may take before
    /// it fails with a retryable error. Default 5 s.
    pub request_timeout: Duration,
    /// Limits every log enforces; the record limit is lowered to what fits in the server's
    /// `max_payload`. Default [`LogLimits::default`].
    pub limits: LogLimits,
    /// Retention the server enforces by itself, as stream limits (`max_age`, `max_bytes` with
    /// discard-old). `max_bytes` here counts JetStream's stored bytes (subject, headers and our
    /// encoding included), not `Record::size_bytes`. Applied when a topic's streams are created;
    /// existing streams keep the limits they were created with. Default: none.
    pub stream_limits: RetentionPolicy,
}

impl Default for NatsLogConfig {
    fn default() -> Self {
        NatsLogConfig {
            servers: "nats://127.0.0.1:4222".into(),
            prefix: "iot".into(),
            replicas: 1,
            storage: NatsStorage::File,
            connect_timeout: Duration::from_secs(5),
            request_timeout: Duration::from_secs(5),
            limits: LogLimits::default(),
            stream_limits: RetentionPolicy::default(),
        }
    }
}

impl fmt::Debug for NatsLogConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("NatsLogConfig")
            .field("servers", &redacted(&self.servers))
            .field("prefix", &self.prefix)
            .field("replicas", &self.replicas)
            .field("storage", &self.storage)
            .field("connect_timeout", &self.connect_timeout)
            .field("request_timeout", &self.request_timeout)
            .field("limits", &self.limits)
            .field("stream_limits", &self.stream_limits)
            .finish()
    }
}

/// The server list with any `user:password@` replaced, for logs and errors.
pub(crate) fn redacted(servers: &str) -> String {
    servers
        .split(',')
        .map(|url| match (url.find("://"), url.rfind('@')) {
            (Some(scheme), Some(at)) if at > scheme => {
                format!("{}://***@{}", &url[..scheme], &url[at + 1..])
            }
            (None, Some(at)) => format!("***@{}", &url[at + 1..]),
            _ => url.to_owned(),
        })
        .collect::<Vec<_>>()
        .join(",")
}

impl NatsLogConfig {
    /// Reads settings from a URL: `nats://[user:password@]host:port[,host:port...]` followed by
    /// optional query parameters `prefix`, `replicas`, `storage` (`file` or `memory`),
    /// `connect_timeout_ms`, `request_timeout_ms`, `max_age_s` and `max_bytes` (stream limits).
    ///
    /// ```
    /// use iot_sdk::nats::NatsLogConfig;
    ///
    /// let c = NatsLogConfig::from_url("nats://127.0.0.1:4222?prefix=plant7&request_timeout_ms=2000")?;
    /// assert_eq!(c.prefix, "plant7");
    /// assert_eq!(c.request_timeout.as_millis(), 2000);
    /// # Ok::<(), iot_core::Error>(())
    /// ```
    pub fn from_url(url: &str) -> Result<Self> {
        let (servers, query) = url.split_once('?').unwrap_or((url, ""));
        if servers.is_empty() {
            return Err(config_error("the URL names no server".into()));
        }
        let mut config = NatsLogConfig {
            servers: servers.to_owned(),
            ..NatsLogConfig::default()
        };
        for pair in query.split('&').filter(|p| !p.is_empty()) {
            let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
            let number = || {
                value.parse::<u64>().map_err(|_| {
                    config_error(format!("{name} must be a whole number, got {value:?}"))
                })
            };
            match name {
                "prefix" => config.prefix = value.to_owned(),
                "replicas" => config.replicas = number()? as usize,
                "storage" => {
                    config.storage = match value {
                        "file" => NatsStorage::File,
                        "memory" => NatsStorage::Memory,
                        _ => {
                            return Err(config_error(format!(
                                "storage must be file or memory, got {value:?}"
                            )));
                        }
                    }
                }
                "connect_timeout_ms" => config.connect_timeout = Duration::from_millis(number()?),
                "request_timeout_ms" => config.request_timeout = Duration::from_millis(number()?),
                "max_age_s" => {
                    config.stream_limits.max_age = Some(Duration::from_secs(number()?));
                }
                "max_bytes" => config.stream_limits.max_bytes = Some(number()?),
                _ => return Err(config_error(format!("unknown URL parameter {name:?}"))),
            }
        }
        config.validate()?;
        Ok(config)
    }

    /// Sets [`servers`](Self::servers).
    pub fn servers(mut self, servers: impl Into<String>) -> Self {
        self.servers = servers.into();
        self
    }

    /// Sets [`prefix`](Self::prefix).
    pub fn prefix(mut self, prefix: impl Into<String>) -> Self {
        self.prefix = prefix.into();
        self
    }

    /// Sets [`replicas`](Self::replicas).
    pub fn replicas(mut self, replicas: usize) -> Self {
        self.replicas = replicas;
        self
    }

    /// Sets [`storage`](Self::storage).
    pub fn storage(mut self, storage: NatsStorage) -> Self {
        self.storage = storage;
        self
    }

    /// Sets [`connect_timeout`](Self::connect_timeout).
    pub fn connect_timeout(mut self, timeout: Duration) -> Self {
        self.connect_timeout = timeout;
        self
    }

    /// Sets [`request_timeout`](Self::request_timeout).
    pub fn request_timeout(mut self, timeout: Duration) -> Self {
        self.request_timeout = timeout;
        self
    }

    /// Sets [`limits`](Self::limits).
    pub fn limits(mut self, limits: LogLimits) -> Self {
        self.limits = limits;
        self
    }

    /// Sets [`stream_limits`](Self::stream_limits).
    pub fn stream_limits(mut self, stream_limits: RetentionPolicy) -> Self {
        self.stream_limits = stream_limits;
        self
    }

    /// Refuses settings the server would refuse later, with a message naming the setting.
    pub fn validate(&self) -> Result<()> {
        self.limits.validate()?;
        if self.prefix.is_empty()
            || self.prefix.len() > 32
            || !self
                .prefix
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
        {
            return Err(config_error(format!(
                "prefix {:?} must be 1 to 32 ASCII letters, digits, '-' or '_'",
                self.prefix
            )));
        }
        if !matches!(self.replicas, 1..=5) {
            return Err(config_error(format!(
                "replicas must be 1 to 5, got {}",
                self.replicas
            )));
        }
        if self.connect_timeout.is_zero() || self.request_timeout.is_zero() {
            return Err(config_error("timeouts must be positive".into()));
        }
        Ok(())
    }
}

fn config_error(reason: String) -> Error {
    Error::Config {
        reason: format!("NATS log: {reason}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn url_parameters_are_read() {
        let c = NatsLogConfig::from_url(
            "nats://a:4222,nats://b:4222?prefix=x_1&replicas=3&storage=memory&max_age_s=60&max_bytes=10",
        )
        .unwrap();
        assert_eq!(c.servers, "nats://a:4222,nats://b:4222");
        assert_eq!(c.prefix, "x_1");
        assert_eq!(c.replicas, 3);
        assert_eq!(c.storage, NatsStorage::Memory);
        assert_eq!(c.stream_limits.max_age, Some(Duration::from_secs(60)));
        assert_eq!(c.stream_limits.max_bytes, Some(10));
    }

    #[test]
    fn bad_urls_are_refused_with_the_setting_named() {
        for (url, word) in [
            ("nats://a?replicas=two", "replicas"),
            ("nats://a?replicas=9", "replicas"),
            ("nats://a?prefix=a.b", "prefix"),
            ("nats://a?storage=tape", "storage"),
            ("nats://a?colour=red", "colour"),
            ("", "no server"),
        ] {
            let e = NatsLogConfig::from_url(url).unwrap_err();
            assert!(matches!(e, Error::Config { .. }), "{url}: {e:?}");
            assert!(e.to_string().contains(word), "{url}: {e}");
        }
    }

    #[test]
    fn debug_hides_credentials() {
        let c = NatsLogConfig::from_url("nats://user:s3cret@host:4222,nats://h2:4222").unwrap();
        let shown = format!("{c:?}");
        assert!(
            !shown.contains("s3cret") && !shown.contains("user"),
            "{shown}"
        );
        assert!(shown.contains("***@host:4222,nats://h2:4222"), "{shown}");
    }
}
