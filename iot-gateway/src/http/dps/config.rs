//! Settings of DPS's HTTPS form.

use std::time::Duration;

/// The DPS `api-version`s accepted: the one Microsoft's device SDKs send (2019-03-31: Node's
/// `azure-iot-provisioning-device`, Python's `azure-iot-device`), and the later GA versions of
/// DPS's device API.
pub const DEFAULT_DPS_API_VERSIONS: &[&str] =
    &["2018-11-01", "2019-03-31", "2021-06-01", "2021-10-01"];

/// How DPS's HTTPS form behaves. Start from [`Default`] and change what you need.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct DpsHttpConfig {
    /// The `api-version` query values accepted; any other (or none) is 400.
    /// Default [`DEFAULT_DPS_API_VERSIONS`].
    pub api_versions: Vec<String>,
    /// The most finished operations kept for status requests; the oldest goes first.
    /// Default 10 000.
    pub max_operations: usize,
    /// How long a finished operation can be asked for. Default 5 minutes.
    pub operation_ttl: Duration,
    /// The `retry-after` (seconds) of a `202`: when the device should ask for the result. The
    /// result is ready at once; the SDKs wait this long before asking. Default 1.
    pub retry_after_secs: u32,
}

impl Default for DpsHttpConfig {
    fn default() -> Self {
        DpsHttpConfig {
            api_versions: DEFAULT_DPS_API_VERSIONS
                .iter()
                .map(|v| (*v).to_owned())
                .collect(),
            max_operations: 10_000,
            operation_ttl: Duration::from_secs(300),
            retry_after_secs: 1,
        }
    }
}

impl DpsHttpConfig {
    /// Sets [`api_versions`](Self::api_versions).
    pub fn api_versions(mut self, versions: Vec<String>) -> Self {
        self.api_versions = versions;
        self
    }

    /// Sets [`max_operations`](Self::max_operations).
    pub fn max_operations(mut self, max: usize) -> Self {
        self.max_operations = max;
        self
    }

    /// Sets [`operation_ttl`](Self::operation_ttl).
    pub fn operation_ttl(mut self, ttl: Duration) -> Self {
        self.operation_ttl = ttl;
        self
    }

    /// Sets [`retry_after_secs`](Self::retry_after_secs).
    pub fn retry_after_secs(mut self, secs: u32) -> Self {
        self.retry_after_secs = secs;
        self
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_setter_sets_its_own_field() {
        let c = DpsHttpConfig::default()
            .api_versions(vec!["x".into()])
            .max_operations(3)
            .operation_ttl(Duration::from_secs(4))
            .retry_after_secs(5);
        assert_eq!(c.api_versions, ["x"]);
        assert_eq!(c.max_operations, 3);
        assert_eq!(c.operation_ttl, Duration::from_secs(4));
        assert_eq!(c.retry_after_secs, 5);
    }
}
