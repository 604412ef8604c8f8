//! How a cluster instance is named and timed.

use std::time::Duration;

use iot_gateway::{Error, Result};

/// The settings of one instance of a cluster.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct ClusterConfig {
    /// This instance's id: unique among the live instances of the cluster and stable across its
    /// restarts (a pod's or host's name). 1 to 64 of `A-Z a-z 0-9 _ -`. Give the instance's
    /// `PgInbox` the same name, so that a restart releases exactly its own C2D locks.
    pub instance: String,
    /// The NATS subject prefix every instance of the cluster shares: dot-separated tokens of
    /// `A-Z a-z 0-9 _ -`. Default `iot.cluster`. Two clusters on one NATS server need two
    /// prefixes.
    pub prefix: String,
    /// How often the instance says it is alive. Default 500 ms.
    pub heartbeat: Duration,
    /// How long the others keep its devices after its last heartbeat: when it lapses the
    /// instance is considered dead and its devices offline. Default 3 s; more than two
    /// heartbeats.
    pub lease: Duration,
    /// How long a request to another instance (a routed method beyond its own timeouts, a
    /// device list) may take on the wire. Default 2 s.
    pub request_timeout: Duration,
}

impl ClusterConfig {
    /// The defaults, for the instance `instance`.
    pub fn new(instance: impl Into<String>) -> Self {
        ClusterConfig {
            instance: instance.into(),
            prefix: "iot.cluster".into(),
            heartbeat: Duration::from_millis(500),
            lease: Duration::from_secs(3),
            request_timeout: Duration::from_secs(2),
        }
    }

    /// Sets [`prefix`](Self::prefix).
    pub fn prefix(mut self, prefix: impl Into<String>) -> Self {
        self.prefix = prefix.into();
        self
    }

    /// Sets [`heartbeat`](Self::heartbeat) and [`lease`](Self::lease).
    pub fn timing(mut self, heartbeat: Duration, lease: Duration) -> Self {
        self.heartbeat = heartbeat;
        self.lease = lease;
        self
    }

    /// Sets [`request_timeout`](Self::request_timeout).
    pub fn request_timeout(mut self, timeout: Duration) -> Self {
        self.request_timeout = timeout;
        self
    }

    /// `Config` unless the settings can work.
    pub fn validate(&self) -> Result<()> {
        let token = |s: &str| {
            !s.is_empty()
                && s.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
        };
        if !token(&self.instance) || self.instance.len() > 64 {
            return Err(Error::Config {
                reason: format!(
                    "a cluster instance id is 1 to 64 of A-Z a-z 0-9 _ -, got {:?}",
                    self.instance
                ),
            });
        }
        if !self.prefix.split('.').all(token) {
            return Err(Error::Config {
                reason: format!(
                    "a cluster subject prefix is dot-separated tokens of A-Z a-z 0-9 _ -, got {:?}",
                    self.prefix
                ),
            });
        }
        if self.heartbeat.is_zero() || self.lease <= self.heartbeat * 2 {
            return Err(Error::Config {
                reason: format!(
                    "the lease ({:?}) must be more than two heartbeats ({:?} each, positive)",
                    self.lease, self.heartbeat
                ),
            });
        }
        if self.request_timeout.is_zero() {
            return Err(Error::Config {
                reason: "the cluster request timeout must be positive".into(),
            });
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_that_are_not_subject_tokens_and_short_leases_are_refused() {
        assert!(ClusterConfig::new("gw-1").validate().is_ok());
        assert!(ClusterConfig::new("gw.1").validate().is_err());
        assert!(ClusterConfig::new("").validate().is_err());
        assert!(ClusterConfig::new("a").prefix("x..y").validate().is_err());
        assert!(ClusterConfig::new("a").prefix("x>").validate().is_err());
        let short = ClusterConfig::new("a").timing(Duration::from_secs(1), Duration::from_secs(2));
        assert!(short.validate().is_err());
    }
}
