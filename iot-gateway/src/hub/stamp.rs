//! What the hub stamps on every telemetry record, as IoT Hub stamps device-to-cloud messages:
//! who sent it, how it authenticated, which life of its identity, when it was accepted, and the
//! model it announced. The values come from the session, never from the device's message, so a
//! device cannot pass itself off as another (IoT Hub's "anti-spoofing properties").

use iot_core::{DeviceId, Headers, Timestamp};
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

    pub(crate) fn as_str(self) -> &'static str {
        self.0
    }
}

/// The stamps of one telemetry record.
#[derive(Debug)]
pub(crate) struct Stamp<'a> {
    pub(crate) device: &'a DeviceId,
    pub(crate) auth_method: AuthMethod,
    pub(crate) generation: GenerationId,
    /// The IoT Plug and Play model the session announced, if any.
    pub(crate) model_id: Option<&'a str>,
    /// When the hub accepted the message: taken just before the append, because a header cannot
    /// carry the log's own enqueued time, which the log sets during the append.
    pub(crate) accepted: Timestamp,
}

impl Stamp<'_> {
    /// Writes the stamps, replacing any header of the same name (validation already refuses
    /// custom properties with these names; replacing keeps that true even if it did not).
    pub(crate) fn apply(&self, headers: &mut Headers) {
        headers.insert(header::DEVICE_ID, self.device.as_str());
        headers.insert(header::AUTH_METHOD, self.auth_method.as_str());
        headers.insert(header::AUTH_GENERATION_ID, self.generation.to_string());
        headers.insert(
            header::ENQUEUED_TIME,
            self.accepted.as_unix_millis().to_string(),
        );
        headers.insert(header::MESSAGE_SOURCE, header::MESSAGE_SOURCE_TELEMETRY);
        if let Some(model) = self.model_id {
            headers.insert(header::MODEL_ID, model);
        }
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
