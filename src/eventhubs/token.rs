//! Service Bus SAS tokens, as Event Hubs clients sign them, checked against the hub's shared
//! access policies.
//!
//! A token is `SharedAccessSignature sr={uri}&sig={signature}&se={expiry}&skn={policy}`, fields
//! in any order and URL-encoded. Unlike IoT Hub's own tokens, Service Bus signs with the *text*
//! of the key (its base64 form as UTF-8 bytes), not the decoded bytes: `azure-eventhub`,
//! the .NET and Java clients all do, and IoT Hub's Event Hubs-compatible endpoint accepts its
//! policies' keys that way. The signed string is the `sr` field as it appears in the token (the
//! URL-encoded URI), a newline and the expiry. Signatures are compared in constant time
//! (`Mac::verify_slice`); a token never reaches a log or an error.

use std::borrow::Cow;

use hmac::{Hmac, Mac};
use iot_gateway::http::{PolicyStore, Rights};
use percent_encoding::percent_decode_str;
use sha2::Sha256;

use super::error::{EventHubsError, Result};

/// Longest token accepted: a bound on the work an unauthenticated peer can cause.
const MAX_TOKEN_LEN: usize = 4096;

/// A verified token: the entity path it names and when it expires.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Grant {
    /// The policy that signed it.
    pub(crate) policy: String,
    /// Unix seconds after which it no longer holds.
    pub(crate) expires: u64,
}

/// The fields of a token, `sr` still encoded (that is what was signed).
struct Fields<'a> {
    raw_sr: &'a str,
    sig: &'a str,
    se: &'a str,
    skn: &'a str,
}

fn fields(token: &str) -> Option<Fields<'_>> {
    let body = token.strip_prefix("SharedAccessSignature ")?;
    let (mut raw_sr, mut sig, mut se, mut skn) = (None, None, None, None);
    for pair in body.split('&') {
        let (name, value) = pair.split_once('=')?;
        let slot = match name {
            "sr" => &mut raw_sr,
            "sig" => &mut sig,
            "se" => &mut se,
            "skn" => &mut skn,
            _ => continue,
        };
        if slot.replace(value).is_some() {
            return None;
        }
    }
    Some(Fields {
        raw_sr: raw_sr?,
        sig: sig?,
        se: se?,
        skn: skn?,
    })
}

/// URL-decodes a form value (`+` is a space, as `quote_plus` writes it).
fn decode(value: &str) -> Option<Cow<'_, str>> {
    if value.contains('+') {
        let spaced = value.replace('+', " ");
        return percent_decode_str(&spaced)
            .decode_utf8()
            .ok()
            .map(|s| Cow::Owned(s.into_owned()));
    }
    percent_decode_str(value).decode_utf8().ok()
}

/// Whether `uri` (`sb://host[:port]/entity[/…]`, or `amqps://`) names `host` and, when it has a
/// path, `entity`. A namespace-wide URI (no path) covers every entity, as in Service Bus.
pub(crate) fn covers(uri: &str, host: &str, entity: &str) -> bool {
    let Some((scheme, rest)) = uri.split_once("://") else {
        return false;
    };
    if !["sb", "amqps", "amqp"]
        .iter()
        .any(|s| s.eq_ignore_ascii_case(scheme))
    {
        return false;
    }
    let (authority, path) = rest.split_once('/').unwrap_or((rest, ""));
    let name = match authority.rsplit_once(':') {
        Some((name, port)) if port.bytes().all(|b| b.is_ascii_digit()) => name,
        _ => authority,
    };
    if !name.eq_ignore_ascii_case(host) {
        return false;
    }
    let first = path.split('/').next().unwrap_or("");
    first.is_empty() || first.eq_ignore_ascii_case(entity)
}

/// Checks `token` as of `now` (Unix seconds): a policy of `policies` with `ServiceConnect`
/// signed it for `entity` on `host`.
pub(crate) fn verify(
    token: &str,
    host: &str,
    entity: &str,
    policies: &PolicyStore,
    now: u64,
) -> Result<Grant> {
    let refused = EventHubsError::Unauthorized;
    if token.len() > MAX_TOKEN_LEN {
        return Err(refused("the token is too long"));
    }
    let f = fields(token).ok_or(refused("malformed SAS token"))?;
    let expires: u64 = f.se.parse().map_err(|_| refused("malformed expiry (se)"))?;
    if expires <= now {
        return Err(refused("the token expired"));
    }
    let uri = decode(f.raw_sr).ok_or(refused("malformed resource (sr)"))?;
    if !covers(&uri, host, entity) {
        return Err(refused("the token's resource (sr) is not this event hub"));
    }
    let name = decode(f.skn).ok_or(refused("malformed policy name (skn)"))?;
    let sig = decode(f.sig).ok_or(refused("malformed signature"))?;
    let sig = base64::Engine::decode(&base64::engine::general_purpose::STANDARD, sig.as_bytes())
        .map_err(|_| refused("malformed signature"))?;
    let policy = policies
        .get(&name)
        .ok_or(refused("the token's signature or policy does not match"))?;
    let signed = format!("{}\n{}", f.raw_sr, f.se);
    let matches = [&policy.primary, &policy.secondary].iter().any(|key| {
        let text = key.expose_base64();
        match Hmac::<Sha256>::new_from_slice(text.as_bytes()) {
            Ok(mut mac) => {
                mac.update(signed.as_bytes());
                mac.verify_slice(&sig).is_ok()
            }
            Err(_) => false,
        }
    });
    if !matches {
        return Err(refused("the token's signature or policy does not match"));
    }
    if !policy.rights.contains(Rights::SERVICE_CONNECT) {
        return Err(refused("the policy lacks ServiceConnect"));
    }
    Ok(Grant {
        policy: policy.name,
        expires,
    })
}

/// Signs a token for `uri` with `key` (the key's base64 text) the way Event Hubs clients do;
/// for tests, benchmarks and tools.
pub fn sign(uri: &str, policy: &str, key: &str, expires: u64) -> String {
    let encode = |s: &str| {
        percent_encoding::utf8_percent_encode(s, percent_encoding::NON_ALPHANUMERIC).to_string()
    };
    let sr = encode(uri);
    let mut mac = match Hmac::<Sha256>::new_from_slice(key.as_bytes()) {
        Ok(mac) => mac,
        // HMAC takes keys of any length.
        Err(_) => return String::new(),
    };
    mac.update(format!("{sr}\n{expires}").as_bytes());
    let sig = base64::Engine::encode(
        &base64::engine::general_purpose::STANDARD,
        mac.finalize().into_bytes(),
    );
    format!(
        "SharedAccessSignature sr={sr}&sig={}&se={expires}&skn={}",
        encode(&sig),
        encode(policy)
    )
}

#[cfg(test)]
mod tests {
    use iot_gateway::http::SharedAccessPolicy;

    use super::*;

    fn store() -> (PolicyStore, String, String) {
        let service = SharedAccessPolicy::generate("service", Rights::SERVICE_CONNECT);
        let device = SharedAccessPolicy::generate("device", Rights::DEVICE_CONNECT);
        let (sk, dk) = (
            service.primary.expose_base64().to_string(),
            device.primary.expose_base64().to_string(),
        );
        (PolicyStore::memory(vec![service, device]), sk, dk)
    }

    #[test]
    fn accepts_a_service_token_and_refuses_the_rest() {
        let (policies, key, device_key) = store();
        let uri = "sb://hub.local/hub/consumergroups/$default";
        let ok = sign(uri, "service", &key, 2000);
        let grant = verify(&ok, "HUB.local", "hub", &policies, 1000).expect("valid");
        assert_eq!(grant.expires, 2000);
        let refused = |t: &str, now| verify(t, "hub.local", "hub", &policies, now).is_err();
        assert!(refused(&ok, 2000), "expired");
        assert!(refused(&sign(uri, "service", "wrong", 2000), 1000));
        assert!(refused(
            &sign("sb://other/hub", "service", &key, 2000),
            1000
        ));
        assert!(refused(
            &sign("sb://hub.local/other", "service", &key, 2000),
            1000
        ));
        assert!(
            refused(&sign(uri, "device", &device_key, 2000), 1000),
            "no ServiceConnect"
        );
        assert!(refused(&ok.replace("se=2000", "se=2001"), 1000));
        assert!(refused("SharedAccessSignature sr=x", 1000));
        assert!(refused(&"x".repeat(5000), 1000));
    }

    #[test]
    fn namespace_uris_cover_every_entity() {
        assert!(covers("sb://hub.local/", "hub.local", "e"));
        assert!(covers(
            "amqps://hub.local:5671/E/ConsumerGroups/$Default",
            "hub.local",
            "e"
        ));
        assert!(!covers("http://hub.local/e", "hub.local", "e"));
    }
}
