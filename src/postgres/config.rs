//! Connection settings for the PostgreSQL adapters.

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use crate::postgres::PgError;

/// Where and how to connect: a libpq-style URL (`postgres://user@host:port/db?…`) plus the pool's
/// size and timeouts.
///
/// ```
/// use iot_sdk::postgres::PgConfig;
///
/// let config = PgConfig::from_url("postgres://postgres@127.0.0.1:5432/test")?
///     .with_pool_size(8);
/// assert_eq!(config.pool_size(), 8);
/// // The password never appears in Debug output.
/// let secret = PgConfig::from_url("postgres://app:hunter2@db/iot")?;
/// assert!(!format!("{secret:?}").contains("hunter2"));
/// # Ok::<_, iot_sdk::postgres::PgError>(())
/// ```
#[derive(Clone)]
#[non_exhaustive]
pub struct PgConfig {
    pub(crate) driver: tokio_postgres::Config,
    pool_size: usize,
    connect_timeout: Duration,
    acquire_timeout: Duration,
}

impl PgConfig {
    /// Parses a connection URL or a `key=value` connection string, as libpq accepts them.
    ///
    /// Defaults: a pool of 16 connections, 5 s to connect, 10 s to wait for a free connection.
    pub fn from_url(url: &str) -> Result<Self, PgError> {
        let mut driver = tokio_postgres::Config::from_str(url).map_err(|e| PgError::Config {
            // The driver's message names the part that failed to parse; it never repeats the
            // password.
            reason: format!("invalid PostgreSQL connection URL: {e}"),
        })?;
        let connect_timeout = driver
            .get_connect_timeout()
            .copied()
            .unwrap_or(Duration::from_secs(5));
        driver.connect_timeout(connect_timeout);
        if driver.get_application_name().is_none() {
            driver.application_name("iot-sdk");
        }
        Ok(Self {
            driver,
            pool_size: 16,
            connect_timeout,
            acquire_timeout: Duration::from_secs(10),
        })
    }

    /// The most connections the pool holds open.
    pub fn with_pool_size(mut self, size: usize) -> Self {
        self.pool_size = size.max(1);
        self
    }

    /// How long opening one connection may take before it fails as unreachable.
    pub fn with_connect_timeout(mut self, timeout: Duration) -> Self {
        self.connect_timeout = timeout;
        self.driver.connect_timeout(timeout);
        self
    }

    /// How long a call waits for a free pooled connection before it fails (retryably).
    pub fn with_acquire_timeout(mut self, timeout: Duration) -> Self {
        self.acquire_timeout = timeout;
        self
    }

    /// The pool's size.
    pub fn pool_size(&self) -> usize {
        self.pool_size
    }

    /// The connect timeout.
    pub fn connect_timeout(&self) -> Duration {
        self.connect_timeout
    }

    /// The acquire timeout.
    pub fn acquire_timeout(&self) -> Duration {
        self.acquire_timeout
    }

    /// `host:port/db` for messages and logs (never the user's password).
    pub fn target(&self) -> String {
        let host = self
            .driver
            .get_hosts()
            .first()
            .map(|h| match h {
                tokio_postgres::config::Host::Tcp(name) => name.clone(),
                tokio_postgres::config::Host::Unix(path) => path.display().to_string(),
            })
            .unwrap_or_else(|| "localhost".to_owned());
        let port = self.driver.get_ports().first().copied().unwrap_or(5432);
        let db = self.driver.get_dbname().unwrap_or("");
        format!("{host}:{port}/{db}")
    }
}

impl fmt::Debug for PgConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PgConfig")
            .field("target", &self.target())
            .field("user", &self.driver.get_user())
            .field(
                "password",
                &self.driver.get_password().map(|_| "<redacted>"),
            )
            .field("pool_size", &self.pool_size)
            .field("connect_timeout", &self.connect_timeout)
            .field("acquire_timeout", &self.acquire_timeout)
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn target_names_host_port_and_database() {
        let c = PgConfig::from_url("postgres://u:pw@db.example:6543/iot").unwrap();
        assert_eq!(c.target(), "db.example:6543/iot");
    }

    #[test]
    fn a_bad_url_is_a_config_error_without_the_password() {
        let e = PgConfig::from_url("postgres://u:sekrit@host:notaport/db").unwrap_err();
        assert!(matches!(e, PgError::Config { .. }));
        assert!(!e.to_string().contains("sekrit"));
    }
}
