//! Limits and timeouts of the MQTT endpoint.

use std::path::PathBuf;
use std::time::Duration;

use iot_core::storage::Recovery;

use super::error::Error;

/// How the MQTT endpoint treats its connections. Every limit bounds memory or time that a client
/// could otherwise make the endpoint spend.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct MqttConfig {
    /// The largest packet accepted (its remaining length), checked from the fixed header before
    /// the body is buffered. Default 256 KiB + 4 KiB for the topic and property bag, matching the
    /// gateway's default message size limit.
    pub max_packet_size: u32,
    /// How long a new connection may take to send CONNECT (slow-loris guard). Default 10 s.
    pub connect_timeout: Duration,
    /// The largest keep-alive honoured: a client that asks for more is treated as if it asked
    /// for this. A connection is closed after 1.5 times its keep-alive without a packet.
    /// Default 1177 s, IoT Hub's cap (1767 s / 1.5).
    pub max_keep_alive: Duration,
    /// The server-side idle timeout: how long a client that asked for no keep-alive (0) may stay
    /// silent, and the ceiling of every connection's idle timeout. Default 1767 s, IoT Hub's
    /// (the Azure load balancer's TCP idle timeout).
    pub server_idle_timeout: Duration,
    /// The most QoS 1 cloud-to-device messages sent and not yet acknowledged with PUBACK.
    /// Default 16.
    pub inflight_window: usize,
    /// How long one write to a client may block (a client that stops reading) before the
    /// connection is closed. Default 30 s.
    pub write_timeout: Duration,
    /// The most connections served at once; further ones wait in the listen backlog. Default
    /// 100 000.
    pub max_connections: usize,
    /// The most connections from one address (IPv4 address or IPv6 /64) that are accepted and
    /// not yet authenticated (in the TLS handshake, the WebSocket upgrade or before CONNACK).
    /// Further ones from that address are closed at once, so that one host cannot hold every
    /// connection slot for the connect timeout. Default 4 096: far below `max_connections`, and
    /// above a legitimate burst from one address (a field gateway's leaf devices behind one NAT, or
    /// `examples/mqtt_load` starting 1 000 devices at once, which a cap of 512 cut short).
    pub max_unauthenticated_per_peer: usize,
    /// How long [`MqttServer::shutdown`](super::MqttServer::shutdown) waits for sessions to
    /// finish before it drops them. Default 5 s.
    pub shutdown_grace: Duration,
    /// How many times a throttled telemetry message is retried (after the throttle's
    /// `retry_after`) before the connection is closed. Default 20.
    pub throttle_retries: u32,
    /// Where the subscriptions of persistent sessions are kept across restarts; `None` keeps
    /// them in memory only (lost when the process ends). Default `None`.
    pub state_dir: Option<PathBuf>,
    /// What [`MqttServer::new`](super::MqttServer::new) does when the kept subscriptions in
    /// `state_dir` are corrupt (damage followed by intact data). Default [`Recovery::Strict`]:
    /// the server is not built and the error names the file and position; set
    /// [`Recovery::Repair`] to cut the journal there and drop what follows.
    pub state_recovery: Recovery,
}

impl Default for MqttConfig {
    fn default() -> Self {
        MqttConfig {
            max_packet_size: 256 * 1024 + 4 * 1024,
            connect_timeout: Duration::from_secs(10),
            max_keep_alive: Duration::from_secs(1177),
            server_idle_timeout: Duration::from_secs(1767),
            inflight_window: 16,
            write_timeout: Duration::from_secs(30),
            max_connections: 100_000,
            max_unauthenticated_per_peer: 4096,
            shutdown_grace: Duration::from_secs(5),
            throttle_retries: 20,
            state_dir: None,
            state_recovery: Recovery::Strict,
        }
    }
}

impl MqttConfig {
    /// Checks that every limit is usable.
    pub fn validate(&self) -> Result<(), Error> {
        let bad = |what: &str| Err(Error::Config(what.to_string()));
        if self.max_packet_size < 64 {
            return bad("max_packet_size must be at least 64 bytes");
        }
        if self.inflight_window == 0 || self.inflight_window > 65_535 {
            return bad("inflight_window must be between 1 and 65535");
        }
        if self.max_connections == 0 {
            return bad("max_connections must be at least 1");
        }
        if self.max_unauthenticated_per_peer == 0 {
            return bad("max_unauthenticated_per_peer must be at least 1");
        }
        if self.connect_timeout.is_zero()
            || self.max_keep_alive.is_zero()
            || self.server_idle_timeout.is_zero()
            || self.write_timeout.is_zero()
        {
            return bad("timeouts must be positive");
        }
        // No device can ask for more (keep-alive is 16 bits of seconds), and the idle deadline
        // computed from it must not overflow.
        if self.max_keep_alive > Duration::from_secs(u64::from(u16::MAX)) {
            return bad("max_keep_alive must be at most 65535 s");
        }
        if self.server_idle_timeout > Duration::from_secs(u64::from(u16::MAX) * 2) {
            return bad("server_idle_timeout must be at most 131070 s");
        }
        Ok(())
    }

    /// The idle time after which a client that asked for `keep_alive_secs` is disconnected, as
    /// IoT Hub computes it: 1.5 times the keep-alive, the keep-alive capped at
    /// [`max_keep_alive`](Self::max_keep_alive); a keep-alive of 0 gets the
    /// [`server_idle_timeout`](Self::server_idle_timeout), which also bounds every result.
    pub fn idle_timeout(&self, keep_alive_secs: u16) -> Duration {
        if keep_alive_secs == 0 {
            return self.server_idle_timeout;
        }
        let keep_alive = Duration::from_secs(u64::from(keep_alive_secs)).min(self.max_keep_alive);
        (keep_alive + keep_alive / 2).min(self.server_idle_timeout)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn idle_timeout_is_one_and_a_half_keep_alives() {
        let c = MqttConfig::default();
        assert_eq!(c.idle_timeout(60), Duration::from_secs(90));
        assert_eq!(c.idle_timeout(1), Duration::from_millis(1500));
        assert_eq!(c.idle_timeout(1177), Duration::from_millis(1177 * 1500));
    }

    /// IoT Hub caps a client's keep-alive at 1177 s and never waits longer than its 1767 s
    /// server-side timeout; a keep-alive of 0 (none) gets that server-side timeout.
    #[test]
    fn keep_alive_is_capped_as_iot_hub_caps_it() {
        let c = MqttConfig::default();
        let capped = Duration::from_millis(1177 * 1500);
        assert_eq!(c.idle_timeout(1178), capped);
        assert_eq!(c.idle_timeout(1767), capped);
        assert_eq!(c.idle_timeout(u16::MAX), capped);
        assert_eq!(c.idle_timeout(0), Duration::from_secs(1767));
        for keep_alive in [0, 1, 1177, 1178, 1767, u16::MAX] {
            assert!(c.idle_timeout(keep_alive) <= Duration::from_secs(1767));
        }
        // A smaller server-side timeout bounds even keep-alives under the cap.
        let tight = MqttConfig {
            server_idle_timeout: Duration::from_secs(100),
            ..MqttConfig::default()
        };
        assert_eq!(tight.idle_timeout(90), Duration::from_secs(100));
        assert_eq!(tight.idle_timeout(0), Duration::from_secs(100));
    }

    #[test]
    fn validation() {
        assert!(MqttConfig::default().validate().is_ok());
        let c = MqttConfig {
            inflight_window: 0,
            ..MqttConfig::default()
        };
        assert!(c.validate().is_err());
        let c = MqttConfig {
            max_keep_alive: Duration::MAX,
            ..MqttConfig::default()
        };
        assert!(c.validate().is_err());
        let c = MqttConfig {
            server_idle_timeout: Duration::ZERO,
            ..MqttConfig::default()
        };
        assert!(c.validate().is_err());
    }
}
