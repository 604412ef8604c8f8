//! The checks of a CONNECT packet that need no gateway. Its own module so that the connection
//! (`session`) keeps to the running session.

use iot_core::{DeviceId, ModuleId};
use iot_identity::Presented;
use rmqtt_codec::v3::{Connect, ConnectAckReason, QoS};

use super::client_chain::ClientChain;
use super::topics::{self, Inbound};
use super::{telemetry, username};
use crate::message::Telemetry;

/// What CONNECT says, once checked.
pub(super) struct CheckedConnect<'a> {
    pub(super) device: DeviceId,
    /// The module, for a module identity (`{host}/{deviceId}/{moduleId}/?…`).
    pub(super) module: Option<ModuleId>,
    /// Whose topics the connection may use: `{deviceId}`, or `{deviceId}/modules/{moduleId}`
    /// (as in `devices/{owner}/messages/events/`).
    pub(super) owner: String,
    pub(super) credential: Presented<'a>,
    pub(super) will: Option<Telemetry>,
    /// The username's `model-id`, stamped on the device's telemetry.
    pub(super) model_id: Option<String>,
}

/// The checks of CONNECT that need no gateway: username form, client id = device id (or
/// `{deviceId}/{moduleId}` for a module), a
/// credential (the password as a SAS token, else the TLS client certificate), and a will that
/// goes to the device's own telemetry topic at QoS 0 or 1.
pub(super) fn check_connect<'a>(
    connect: &'a Connect,
    client_cert: Option<&'a ClientChain>,
) -> Result<CheckedConnect<'a>, (ConnectAckReason, String)> {
    use ConnectAckReason::{BadUserNameOrPassword, IdentifierRejected, NotAuthorized};
    let username = connect
        .username
        .as_deref()
        .ok_or((BadUserNameOrPassword, "no username".to_string()))?;
    let username = username::parse(username).map_err(|e| (BadUserNameOrPassword, e.to_string()))?;
    let client_id_matches = match username.module_id {
        None => username.device_id == &*connect.client_id,
        Some(module) => connect
            .client_id
            .split_once('/')
            .is_some_and(|(d, m)| d == username.device_id && m == module),
    };
    if !client_id_matches {
        return Err((
            IdentifierRejected,
            "the client id is not the device (and module) id of the username".to_string(),
        ));
    }
    let device =
        DeviceId::new(username.device_id).map_err(|e| (IdentifierRejected, e.to_string()))?;
    let module = username
        .module_id
        .map(ModuleId::new)
        .transpose()
        .map_err(|e| (IdentifierRejected, e.to_string()))?;
    let owner = match &module {
        Some(module) => format!("{device}/modules/{module}"),
        None => device.to_string(),
    };
    let credential = match (connect.password.as_deref(), client_cert) {
        (Some(password), _) => {
            Presented::SasToken(std::str::from_utf8(password).map_err(|_| {
                (
                    BadUserNameOrPassword,
                    "the password is not UTF-8".to_string(),
                )
            })?)
        }
        (None, Some(chain)) => Presented::CertificateChain(chain.certificates()),
        (None, None) => {
            return Err((
                BadUserNameOrPassword,
                "neither a password (SAS token) nor a client certificate".to_string(),
            ));
        }
    };
    let will = match &connect.last_will {
        None => None,
        Some(will) => {
            if will.qos == QoS::ExactlyOnce {
                return Err((NotAuthorized, "a will at QoS 2".to_string()));
            }
            match topics::classify_publish(&will.topic, &owner) {
                Ok(Inbound::Telemetry { bag }) => {
                    // Marked as a will (`iothub-MessageType: Will`); the will's retain flag
                    // is not passed on: the will is not the device's own publish.
                    let flags = telemetry::Flags {
                        will: true,
                        retain: false,
                    };
                    Some(
                        telemetry::from_publish(bag, will.message.clone(), flags)
                            .map_err(|e| (NotAuthorized, e.to_string()))?,
                    )
                }
                _ => {
                    return Err((
                        NotAuthorized,
                        "the will topic is not the device's telemetry topic".to_string(),
                    ));
                }
            }
        }
    };
    Ok(CheckedConnect {
        device,
        module,
        owner,
        credential,
        will,
        model_id: username.model_id,
    })
}
