//! IoT Hub device connection strings: `HostName=…;DeviceId=…;SharedAccessKey=…`, with the
//! optional `ModuleId` and `GatewayHostName`, or a ready-made `SharedAccessSignature` instead of
//! the key.

use std::fmt;
use std::str::FromStr;

use iot_identity::SymmetricKey;
use zeroize::Zeroizing;

/// A parsed device (or module) connection string.
///
/// `Debug` shows the names but never the key or the signature.
#[derive(Clone)]
pub struct ConnectionString {
    /// The hub's host name; SAS tokens are signed for it.
    pub host_name: String,
    /// The device id.
    pub device_id: String,
    /// The module id, for a module identity.
    pub module_id: Option<String>,
    /// Where to connect instead of `host_name` (an IoT Edge gateway in front of the hub).
    pub gateway_host_name: Option<String>,
    /// How the device proves who it is.
    pub credential: Credential,
}

/// The secret part of a connection string.
#[derive(Clone)]
pub enum Credential {
    /// `SharedAccessKey=`: the client signs its own tokens and renews them.
    Key(SymmetricKey),
    /// `SharedAccessSignature=`: a token made elsewhere; it cannot be renewed.
    Token(Zeroizing<String>),
    /// `x509=true`: the device authenticates with its TLS client certificate.
    X509,
}

impl fmt::Debug for Credential {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Credential::Key(_) => f.write_str("Key(<redacted>)"),
            Credential::Token(_) => f.write_str("Token(<redacted>)"),
            Credential::X509 => f.write_str("X509"),
        }
    }
}

impl fmt::Debug for ConnectionString {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ConnectionString")
            .field("host_name", &self.host_name)
            .field("device_id", &self.device_id)
            .field("module_id", &self.module_id)
            .field("gateway_host_name", &self.gateway_host_name)
            .field("credential", &self.credential)
            .finish()
    }
}

/// Why a connection string was refused; names the part at fault, never its secret value.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConnectionStringError {
    /// A `;`-separated part without `=`.
    #[error("connection string part {index} is not `Name=value`")]
    Malformed {
        /// Zero-based position of the part.
        index: usize,
    },
    /// A part the client does not know.
    #[error("connection string has an unknown part `{0}`")]
    UnknownPart(String),
    /// A part given twice.
    #[error("connection string has `{0}` twice")]
    Duplicate(String),
    /// A required part is missing.
    #[error("connection string has no `{0}`")]
    Missing(&'static str),
    /// A part whose value is empty or not acceptable.
    #[error("connection string part `{part}` is invalid: {reason}")]
    Invalid {
        /// The part's name.
        part: &'static str,
        /// What is wrong with it (without the value when it is a secret).
        reason: String,
    },
    /// More than one of `SharedAccessKey`, `SharedAccessSignature`, `x509=true`.
    #[error(
        "connection string has more than one credential (SharedAccessKey, SharedAccessSignature, x509)"
    )]
    ConflictingCredentials,
}

impl FromStr for ConnectionString {
    type Err = ConnectionStringError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let mut host_name = None;
        let mut device_id = None;
        let mut module_id = None;
        let mut gateway = None;
        let mut key = None;
        let mut token = None;
        let mut x509 = None;
        for (index, part) in s.trim().split(';').enumerate() {
            if part.trim().is_empty() {
                continue;
            }
            // Split at the first `=` only: keys and tokens end in base64 padding.
            let (name, value) = part
                .split_once('=')
                .ok_or(ConnectionStringError::Malformed { index })?;
            let name = name.trim();
            let slot = match name {
                "HostName" => &mut host_name,
                "DeviceId" => &mut device_id,
                "ModuleId" => &mut module_id,
                "GatewayHostName" => &mut gateway,
                "SharedAccessKey" => &mut key,
                "SharedAccessSignature" => &mut token,
                "x509" => &mut x509,
                other => return Err(ConnectionStringError::UnknownPart(other.to_string())),
            };
            if slot.is_some() {
                return Err(ConnectionStringError::Duplicate(name.to_string()));
            }
            *slot = Some(value.to_string());
        }
        let host_name = host_name.ok_or(ConnectionStringError::Missing("HostName"))?;
        check_host("HostName", &host_name)?;
        let device_id = device_id.ok_or(ConnectionStringError::Missing("DeviceId"))?;
        check_id("DeviceId", &device_id)?;
        if let Some(m) = &module_id {
            check_id("ModuleId", m)?;
        }
        if let Some(g) = &gateway {
            check_host("GatewayHostName", g)?;
        }
        let x509 = match x509.as_deref().map(str::to_ascii_lowercase).as_deref() {
            None | Some("false") => false,
            Some("true") => true,
            Some(_) => {
                return Err(ConnectionStringError::Invalid {
                    part: "x509",
                    reason: "must be `true` or `false`".into(),
                });
            }
        };
        let credential = match (key, token, x509) {
            (Some(key), None, false) => {
                Credential::Key(SymmetricKey::from_base64(key.trim()).map_err(|e| {
                    ConnectionStringError::Invalid {
                        part: "SharedAccessKey",
                        reason: e.to_string(),
                    }
                })?)
            }
            (None, Some(token), false) => {
                if !token.starts_with("SharedAccessSignature ") || !token.contains("sig=") {
                    return Err(ConnectionStringError::Invalid {
                        part: "SharedAccessSignature",
                        reason: "not a `SharedAccessSignature sr=…&sig=…&se=…` token".into(),
                    });
                }
                Credential::Token(Zeroizing::new(token))
            }
            (None, None, true) => Credential::X509,
            (None, None, false) => {
                return Err(ConnectionStringError::Missing(
                    "SharedAccessKey, SharedAccessSignature or x509=true",
                ));
            }
            _ => return Err(ConnectionStringError::ConflictingCredentials),
        };
        Ok(ConnectionString {
            host_name,
            device_id,
            module_id,
            gateway_host_name: gateway,
            credential,
        })
    }
}

fn check_host(part: &'static str, host: &str) -> Result<(), ConnectionStringError> {
    let ok = !host.is_empty()
        && host.len() <= 253
        && host
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_' | ':' | '[' | ']'));
    if ok {
        Ok(())
    } else {
        Err(ConnectionStringError::Invalid {
            part,
            reason: "not a host name".into(),
        })
    }
}

fn check_id(part: &'static str, id: &str) -> Result<(), ConnectionStringError> {
    // IoT Hub's id alphabet, for module ids too: the rule `iot_core::DeviceId` enforces.
    let ok = iot_core::DeviceId::validate(id).is_ok();
    if ok {
        Ok(())
    } else {
        Err(ConnectionStringError::Invalid {
            part,
            reason: "1 to 128 letters, digits or -.+%_#*?!(),:=@$'".into(),
        })
    }
}

impl ConnectionString {
    /// The host the client connects to: the gateway if one is named, else the hub.
    pub fn connect_host(&self) -> &str {
        self.gateway_host_name.as_deref().unwrap_or(&self.host_name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: &str = "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=";

    #[test]
    fn parses_a_device_string() {
        let cs: ConnectionString =
            format!("HostName=hub.example.net;DeviceId=dev-1;SharedAccessKey={KEY}")
                .parse()
                .expect("parse");
        assert_eq!(cs.host_name, "hub.example.net");
        assert_eq!(cs.device_id, "dev-1");
        assert!(matches!(cs.credential, Credential::Key(_)));
        assert_eq!(cs.connect_host(), "hub.example.net");
    }

    #[test]
    fn parses_module_gateway_and_token_forms() {
        let cs: ConnectionString = format!(
            "HostName=hub.example.net;DeviceId=dev-1;ModuleId=m1;GatewayHostName=edge.local;SharedAccessKey={KEY}"
        )
        .parse()
        .expect("parse");
        assert_eq!(cs.module_id.as_deref(), Some("m1"));
        assert_eq!(cs.connect_host(), "edge.local");
        let cs: ConnectionString =
            "HostName=h;DeviceId=d;SharedAccessSignature=SharedAccessSignature sr=h%2Fdevices%2Fd&sig=abc%3D&se=1"
                .parse()
                .expect("parse");
        assert!(matches!(cs.credential, Credential::Token(_)));
        let cs: ConnectionString = "HostName=h;DeviceId=d;x509=true".parse().expect("parse");
        assert!(matches!(cs.credential, Credential::X509));
    }

    #[test]
    fn errors_name_the_part() {
        let e = |s: &str| s.parse::<ConnectionString>().expect_err("refused");
        assert_eq!(
            e("DeviceId=d;SharedAccessKey=x"),
            ConnectionStringError::Missing("HostName")
        );
        assert_eq!(
            e("HostName=h;SharedAccessKey=x"),
            ConnectionStringError::Missing("DeviceId")
        );
        assert!(matches!(
            e("HostName=h;DeviceId=d;SharedAccessKey=not base64!"),
            ConnectionStringError::Invalid {
                part: "SharedAccessKey",
                ..
            }
        ));
        assert!(matches!(
            e("HostName=h;DeviceId=bad id;SharedAccessKey=x"),
            ConnectionStringError::Invalid {
                part: "DeviceId",
                ..
            }
        ));
        assert_eq!(
            e("HostName=h;Foo=1"),
            ConnectionStringError::UnknownPart("Foo".into())
        );
        assert_eq!(
            e("HostName=h;HostName=g"),
            ConnectionStringError::Duplicate("HostName".into())
        );
        assert_eq!(
            e("HostName=h;junk"),
            ConnectionStringError::Malformed { index: 1 }
        );
        assert_eq!(
            e(&format!(
                "HostName=h;DeviceId=d;SharedAccessKey={KEY};x509=true"
            )),
            ConnectionStringError::ConflictingCredentials
        );
        assert!(matches!(
            e("HostName=h;DeviceId=d"),
            ConnectionStringError::Missing(_)
        ));
    }

    #[test]
    fn debug_redacts_secrets() {
        let cs: ConnectionString = format!("HostName=h;DeviceId=d;SharedAccessKey={KEY}")
            .parse()
            .expect("parse");
        let shown = format!("{cs:?}");
        assert!(!shown.contains(KEY), "{shown}");
        assert!(shown.contains("redacted"));
        let cs: ConnectionString =
            "HostName=h;DeviceId=d;SharedAccessSignature=SharedAccessSignature sr=h&sig=SECRETSIG&se=1"
                .parse()
                .expect("parse");
        assert!(!format!("{cs:?}").contains("SECRETSIG"));
    }
}
