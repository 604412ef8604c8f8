//! The CONNECT username of IoT Hub's device protocol: `{host}/{deviceId}/?api-version=…`, or a
//! module's `{host}/{deviceId}/{moduleId}/?api-version=…`.

use percent_encoding::percent_decode_str;

use super::error::{ProtocolViolation, shorten};
use crate::validate;

/// A parsed username. Of the query, only `api-version` (for logging) and `model-id` (the IoT
/// Plug and Play model the device implements, stamped on its telemetry) are kept: devices send
/// many other parameters (`DeviceClientType`, ...) and none changes what the endpoint does.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Username<'a> {
    /// The host name the device believes it talks to.
    pub(crate) host: &'a str,
    /// The device id.
    pub(crate) device_id: &'a str,
    /// The module id, for a module identity.
    pub(crate) module_id: Option<&'a str>,
    /// The `api-version` parameter, if any.
    pub(crate) api_version: Option<&'a str>,
    /// The `model-id` parameter, percent-decoded, if any (and not empty).
    pub(crate) model_id: Option<String>,
}

/// Parses `{host}/{deviceId}/?{query}`; also accepts `{host}/{deviceId}` and
/// `{host}/{deviceId}/{query}` (older SDKs leave out the `?`), and a module identity's
/// `{host}/{deviceId}/{moduleId}/?{query}` (a query never holds a `/`: SDKs percent-encode
/// theirs, so a segment before a second `/` is the module id).
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
    let (module_id, query) = match query.split_once('/') {
        Some((module_id, query)) => (Some(module_id), query),
        None => (None, query),
    };
    if module_id.is_some_and(|m| m.is_empty() || m.starts_with('?')) {
        return Err(bad("empty module id"));
    }
    let query = query.strip_prefix('?').unwrap_or(query);
    if query.contains('/') {
        return Err(bad("a '/' after the module id"));
    }
    let api_version = query
        .split('&')
        .find_map(|pair| pair.strip_prefix("api-version="));
    let model_id = match query
        .split('&')
        .find_map(|pair| pair.strip_prefix("model-id="))
    {
        None | Some("") => None,
        Some(raw) => {
            let model = percent_decode_str(raw)
                .decode_utf8()
                .map_err(|_| bad("the model-id is not UTF-8"))?;
            // The hub refuses such a model id too; refusing here answers with CONNACK 4 (bad
            // username) instead of "server unavailable".
            validate::check_value("model-id", &model)
                .map_err(|_| bad("the model-id is too long or has control characters"))?;
            Some(model.into_owned())
        }
    };
    Ok(Username {
        host,
        device_id,
        module_id,
        api_version,
        model_id,
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
                module_id: None,
                api_version: Some("2019-10-01"),
                model_id: None,
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

    /// The model id the PnP SDKs put in the username is kept, decoded, for the telemetry stamp.
    #[test]
    fn keeps_the_model_id() {
        let u = parse("h/d/?api-version=2021-04-12&model-id=dtmi%3Acom%3Aexample%3AThermostat%3B1")
            .expect("pnp username");
        assert_eq!(u.model_id.as_deref(), Some("dtmi:com:example:Thermostat;1"));
        assert_eq!(parse("h/d/?model-id=").expect("empty").model_id, None);
        assert_eq!(parse("h/d/?api-version=1").expect("none").model_id, None);
        assert!(parse("h/d/?model-id=a%0Ab").is_err(), "control character");
        assert!(parse("h/d/?model-id=%FF").is_err(), "not UTF-8");
        let long = format!("h/d/?model-id={}", "m".repeat(4097));
        assert!(parse(&long).is_err(), "too long");
    }

    /// What `IoTHubModuleClient` sends: the module id between the device id and the query.
    #[test]
    fn parses_a_module_username() {
        let u = parse("localhost/edge-1/filter/?api-version=2019-10-01&DeviceClientType=x%2F1")
            .expect("python module client");
        assert_eq!(
            (u.device_id, u.module_id, u.api_version),
            ("edge-1", Some("filter"), Some("2019-10-01"))
        );
        assert_eq!(
            parse("h/d/$edgeHub/").expect("no query").module_id,
            Some("$edgeHub")
        );
        assert_eq!(parse("h/d/?api-version=1").expect("device").module_id, None);
    }

    #[test]
    fn refuses_malformed() {
        for bad in [
            "",
            "localhost",
            "/dev/?api-version=1",
            "localhost//?a=b",
            "h/d//?api-version=1",
            "h/d/m/x/?api-version=1",
        ] {
            assert!(parse(bad).is_err(), "{bad:?} must be refused");
        }
    }
}
