//! The CONNECT username of DPS's device protocol:
//! `{idScope}/registrations/{registrationId}/api-version=…[&ClientVersion=…]`.

use super::super::error::{ProtocolViolation, shorten};

/// A parsed DPS username.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct DpsUsername<'a> {
    /// The id scope the device was given.
    pub(crate) id_scope: &'a str,
    /// The registration id (also the client id).
    pub(crate) registration_id: &'a str,
    /// The `api-version` parameter, if any (for logging).
    pub(crate) api_version: Option<&'a str>,
}

/// Whether a CONNECT is a DPS registration rather than a hub connection: a username of four
/// `/`-separated parts whose second is `registrations` and whose third is the client id. A hub
/// username is `{host}/{deviceId}/?…` (three parts), and a module's
/// `{host}/{deviceId}/{moduleId}/?…` has the client id `{deviceId}/{moduleId}`, so neither is
/// taken for a registration — not even for a device named `registrations`.
pub(crate) fn is_dps(username: &str, client_id: &str) -> bool {
    let mut parts = username.splitn(4, '/');
    let (Some(_scope), Some(kind), Some(registration), Some(_query)) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return false;
    };
    kind == "registrations" && !registration.is_empty() && registration == client_id
}

/// Parses a username that [`is_dps`].
pub(crate) fn parse(username: &str) -> Result<DpsUsername<'_>, ProtocolViolation> {
    let bad = |reason: &str| {
        ProtocolViolation::Malformed(format!("DPS username {:?}: {reason}", shorten(username)))
    };
    let mut parts = username.splitn(4, '/');
    let (Some(id_scope), Some("registrations"), Some(registration_id), Some(query)) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(bad("not {idScope}/registrations/{registrationId}/{query}"));
    };
    if id_scope.is_empty() || registration_id.is_empty() {
        return Err(bad("empty id scope or registration id"));
    }
    // The Azure SDKs write the query without `?`; accept it with one too.
    let query = query.strip_prefix('?').unwrap_or(query);
    let api_version = query
        .split('&')
        .find_map(|pair| pair.strip_prefix("api-version="));
    Ok(DpsUsername {
        id_scope,
        registration_id,
        api_version,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_what_the_python_sdk_sends() {
        let name = "0ne00A1B2C3/registrations/sensor-1/api-version=2019-03-31&ClientVersion=azure-iot-provisioning-devicesdk%2F2.14.0";
        assert!(is_dps(name, "sensor-1"));
        let u = parse(name).expect("parse");
        assert_eq!(
            u,
            DpsUsername {
                id_scope: "0ne00A1B2C3",
                registration_id: "sensor-1",
                api_version: Some("2019-03-31"),
            }
        );
        assert_eq!(
            parse("s/registrations/r/?api-version=1")
                .expect("with ?")
                .api_version,
            Some("1")
        );
    }

    #[test]
    fn hub_usernames_are_not_registrations() {
        for (username, client_id) in [
            ("hub/dev-1/?api-version=2021-04-12", "dev-1"),
            ("hub/registrations/?api-version=2021-04-12", "registrations"),
            ("hub/registrations/api-version=2016-11-14", "registrations"),
            ("hub/registrations/m1/?api-version=1", "registrations/m1"),
            ("s/registrations/r-1/api-version=1", "someone-else"),
            ("s/registrations//api-version=1", ""),
        ] {
            assert!(!is_dps(username, client_id), "{username}");
        }
    }
}
