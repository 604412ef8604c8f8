//! What the hub stamps on every telemetry record, as IoT Hub stamps device-to-cloud messages:
//! who sent it, how it authenticated, which life of its identity, when it was accepted, and the
//! model it announced. The values come from the session, never from the device's message, so a
//! device cannot pass itself off as another (IoT Hub's "anti-spoofing properties").

use std::sync::Arc;

use iot_core::{DeviceId, Headers, ModuleId, SharedHeaders, Timestamp};
use iot_identity::{GenerationId, Presented};

use crate::message::header;

/// How a session's device authenticated, as the JSON object IoT Hub writes in
/// `iothub-connection-auth-method`. The strings are constants: nothing in them comes from the
/// device, and their field order is IoT Hub's.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct AuthMethod(&'static str);

impl AuthMethod {
    /// The method of a device that presented `credential` ([`header::auth_method`]).
    pub(crate) fn of(credential: &Presented<'_>) -> Self {
        AuthMethod(header::auth_method(credential))
    }

    /// A device that authenticated with a token signed by a hub-level shared access policy (a
    /// protocol gateway's `DeviceConnect` token): IoT Hub's scope `hub`.
    pub(crate) const HUB_SAS: AuthMethod = AuthMethod(
        r#"{"scope":"hub","type":"sas","issuer":"iothub","acceptingIpFilterRule":null}"#,
    );

    /// The method of a module that presented `credential`: IoT Hub's scope `module`.
    pub(crate) fn of_module(credential: &Presented<'_>) -> Self {
        AuthMethod(match credential {
            Presented::SasToken(_) => {
                r#"{"scope":"module","type":"sas","issuer":"iothub","acceptingIpFilterRule":null}"#
            }
            Presented::SymmetricKey(_) => {
                r#"{"scope":"module","type":"symkey","issuer":"iothub","acceptingIpFilterRule":null}"#
            }
            Presented::Thumbprint(_) | Presented::CertificateChain(_) => {
                r#"{"scope":"module","type":"x509Certificate","issuer":"iothub","acceptingIpFilterRule":null}"#
            }
            // Refused by module authentication; never stamped.
            Presented::Passphrase(_) => {
                r#"{"scope":"module","type":"passphrase","issuer":"iothub","acceptingIpFilterRule":null}"#
            }
        })
    }

    pub(crate) fn as_str(self) -> &'static str {
        self.0
    }
}

/// What a session stamps on each of its records, made once when the session opens: every stamp
/// but the enqueued time is the same on all of them, so each record shares one block of them
/// instead of holding (and the in-memory log's reads cloning) a copy of each.
#[derive(Debug)]
pub(crate) struct SessionStamps {
    device: Arc<str>,
    /// The device id, auth method, generation, message source and model id, in the order IoT
    /// Hub's event endpoint shows them.
    block: SharedHeaders,
}

impl SessionStamps {
    pub(crate) fn new(
        device: &DeviceId,
        module: Option<&ModuleId>,
        auth_method: AuthMethod,
        generation: GenerationId,
        model_id: Option<&str>,
    ) -> Self {
        let device: Arc<str> = Arc::from(device.as_str());
        let mut block = Headers::with_capacity(6);
        block.insert_shared(header::DEVICE_ID, &device);
        if let Some(module) = module {
            block.insert_owned(header::MODULE_ID, module.as_str().to_owned());
        }
        block.insert_static(header::AUTH_METHOD, auth_method.as_str());
        block.insert_owned(header::AUTH_GENERATION_ID, generation.to_string());
        block.insert_static(header::MESSAGE_SOURCE, header::MESSAGE_SOURCE_TELEMETRY);
        if let Some(model) = model_id {
            block.insert_owned(header::MODEL_ID, model.to_owned());
        }
        SessionStamps {
            device,
            block: SharedHeaders::from(block),
        }
    }

    /// The stamps of a record the hub accepts at `accepted`: taken just before the append,
    /// because a header cannot carry the log's own enqueued time, which the log sets during the
    /// append.
    pub(crate) fn at(&self, accepted: Timestamp) -> Stamp<'_> {
        Stamp {
            session: self,
            accepted,
        }
    }
}

/// The stamps of one telemetry record.
#[derive(Debug)]
pub(crate) struct Stamp<'a> {
    session: &'a SessionStamps,
    accepted: Timestamp,
}

impl Stamp<'_> {
    /// The device that sent the record.
    pub(crate) fn device(&self) -> &str {
        &self.session.device
    }

    /// The record's headers so far: the session's stamps and the enqueued time, with room for
    /// `more`. (Validation refuses custom properties with a stamp's name; were one inserted
    /// anyway, it would replace the stamp in this record only.)
    pub(crate) fn headers(&self, more: usize) -> Headers {
        let mut headers = Headers::with_shared(&self.session.block, 1 + more);
        headers.insert_u64(header::ENQUEUED_TIME, self.accepted.as_unix_millis());
        headers
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn auth_methods_are_json_objects_in_iot_hubs_shape() {
        let thumbprint = iot_identity::Thumbprint::from_hex(&"ab".repeat(32)).expect("thumbprint");
        for (credential, kind) in [
            (Presented::SasToken("t"), "sas"),
            (Presented::SymmetricKey("k"), "symkey"),
            (Presented::Thumbprint(thumbprint), "x509Certificate"),
            (Presented::Passphrase("p"), "passphrase"),
        ] {
            let json: serde_json::Value =
                serde_json::from_str(AuthMethod::of(&credential).as_str()).expect("JSON");
            assert_eq!(
                json,
                serde_json::json!({
                    "scope": "device",
                    "type": kind,
                    "issuer": "iothub",
                    "acceptingIpFilterRule": null,
                })
            );
        }
    }
}
