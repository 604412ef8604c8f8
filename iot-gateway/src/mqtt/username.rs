//! The CONNECT username of IoT Hub's device protocol: `{host}/{deviceId}/?api-version=…`.

use super::error::{ProtocolViolation, shorten};

/// A parsed username. The query (`api-version`, `DeviceClientType`, `model-id`, ...) is kept only
/// for logging: devices send many variants and none changes what the endpoint does.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Username<'a> {
    /// The host name the device believes it talks to.
    pub(crate) host: &'a str,
    /// The device id.
    pub(crate) device_id: &'a str,
    /// The `api-version` parameter, if any.
    pub(crate) api_version: Option<&'a str>,
}

/// Parses `{host}/{deviceId}/?{query}`; also accepts `{host}/{deviceId}` and
/// `{host}/{deviceId}/{query}` (older SDKs leave out the `?`), and a module identity's
/// `{host}/{deviceId}/{moduleId}/?…` is refused because modules are not supported.
pub(crate) fn parse(username: &str) -> Result<Username<'_>, ProtocolViolation> {
    let bad = |reason: &str| {
        ProtocolViolation::Malformed(format!("username {:?}: {reason}", shorten(username)))
    };
    let (host, rest) = username
        .split_once('/')
        .ok_or_else(|| bad("no '/' after the host"))?;
    let (device_id, query) = match rest.split_once('/') {
        Some((device_id, query)) => (device_id, query),
        None => (rest, ""),
    };
    if host.is_empty() || device_id.is_empty() {
        return Err(bad("empty host or device id"));
    }
    let query = query.strip_prefix('?').unwrap_or(query);
    if query.contains('/') {
        return Err(bad("module identities are not supported"));
    }
    let api_version = query
        .split('&')
        .find_map(|pair| pair.strip_prefix("api-version="));
    Ok(Username {
        host,
        device_id,
        api_version,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_what_sdks_send() {
        let u = parse(
            "localhost/dev-1/?api-version=2019-10-01&DeviceClientType=py-azure-iot-device%2F2.14.0",
        )
        .expect("python sdk");
        assert_eq!(
            u,
            Username {
                host: "localhost",
                device_id: "dev-1",
                api_version: Some("2019-10-01")
            }
        );
        let u = parse("hub.example.net/dev-1/api-version=2016-11-14").expect("old sdk");
        assert_eq!(u.api_version, Some("2016-11-14"));
        let u = parse("hub.example.net/dev-1").expect("bare");
        assert_eq!(
            (u.host, u.device_id, u.api_version),
            ("hub.example.net", "dev-1", None)
        );
        let u = parse("h/d/?model-id=dtmi%3Ax%3B1&api-version=2021-04-12").expect("model id first");
        assert_eq!(u.api_version, Some("2021-04-12"));
    }

    #[test]
    fn refuses_malformed() {
        for bad in [
            "",
            "localhost",
            "/dev/?api-version=1",
            "localhost//?a=b",
            "h/d/module/?api-version=1",
        ] {
            assert!(parse(bad).is_err(), "{bad:?} must be refused");
        }
    }
}
