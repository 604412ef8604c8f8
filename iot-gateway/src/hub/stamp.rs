//! What the hub stamps on every telemetry record, as IoT Hub stamps device-to-cloud messages:
//! who sent it, how it authenticated, which life of its identity, when it was accepted, and the
//! model it announced. The values come from the session, never from the device's message, so a
//! device cannot pass itself off as another (IoT Hub's "anti-spoofing properties").

use std::sync::Arc;

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

/// What a session stamps on each of its records, made once when the session opens: the device
/// id, identity generation and model id are shared by every record instead of formatted and copied
/// for each (at full speed the copies were most of the hub's cost per message).
#[derive(Debug)]
pub(crate) struct SessionStamps {
    device: Arc<str>,
    auth_method: AuthMethod,
    generation: Arc<str>,
    /// The IoT Plug and Play model the session announced, if any.
    model_id: Option<Arc<str>>,
}

impl SessionStamps {
    pub(crate) fn new(
        device: &DeviceId,
        auth_method: AuthMethod,
        generation: GenerationId,
        model_id: Option<&str>,
    ) -> Self {
        SessionStamps {
            device: Arc::from(device.as_str()),
            auth_method,
            generation: Arc::from(generation.to_string()),
            model_id: model_id.map(Arc::from),
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
    /// How many headers [`apply`](Stamp::apply) writes at most.
    pub(crate) const MAX_HEADERS: usize = 6;

    /// The device that sent the record.
    pub(crate) fn device(&self) -> &str {
        &self.session.device
    }

    /// Writes the stamps, replacing any header of the same name (validation already refuses
    /// custom properties with these names; replacing keeps that true even if it did not).
    pub(crate) fn apply(&self, headers: &mut Headers) {
        let s = self.session;
        headers.insert_shared(header::DEVICE_ID, &s.device);
        headers.insert_static(header::AUTH_METHOD, s.auth_method.as_str());
        headers.insert_shared(header::AUTH_GENERATION_ID, &s.generation);
        headers.insert_owned(
            header::ENQUEUED_TIME,
            self.accepted.as_unix_millis().to_string(),
        );
        headers.insert_static(header::MESSAGE_SOURCE, header::MESSAGE_SOURCE_TELEMETRY);
        if let Some(model) = &s.model_id {
            headers.insert_shared(header::MODEL_ID, model);
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
