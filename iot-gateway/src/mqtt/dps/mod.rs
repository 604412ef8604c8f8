//! DPS's device protocol on the MQTT endpoint: devices register through their enrollments on
//! the same listener that serves hub connections, told apart by the CONNECT username
//! (`{idScope}/registrations/{registrationId}/api-version=…`, see [`username::is_dps`]).
//!
//! * CONNECT: client id = registration id, password = the SAS token DPS's symmetric-key
//!   attestation uses — or no password and the certificate chain of the TLS handshake (X.509
//!   attestation: the leaf's common name is the registration id, see
//!   [`Onboarding::attest_x509`]). The credential is checked against the enrollments at once:
//!   one no enrollment accepts is refused with CONNACK 5 (not authorized); one that only a
//!   disabled enrollment accepts is let in, and its registration answered 401.
//! * The device subscribes `$dps/registrations/res/#` and publishes
//!   `$dps/registrations/PUT/iotdps-register/?$rid={rid}` with `{"registrationId", "payload"?}`.
//!   The registration runs through [`Onboarding::register`] (the provisioner: hooks, audit);
//!   a new device's twin gets the enrollment's initial twin through the gateway. The answer is
//!   DPS's: `202` `{"operationId", "status": "assigning"}`; the device then publishes
//!   `$dps/registrations/GET/iotdps-get-operationstatus/?$rid={rid}&operationId={op}` (its
//!   body, `" "` from the Azure SDKs, is ignored) and gets `200` with `"status": "assigned"`
//!   and the `registrationState`.
//! * Refusals: `401` (bad token, disabled enrollment), `403` (a hook vetoed), `503` with
//!   `retry-after` (a store failed), `400` (a body without the connection's registration id),
//!   `404` (an unknown operation). Anything outside these topics closes the connection.
//!
//! A server without an onboarding service ([`MqttServer::with_onboarding`](super::MqttServer::with_onboarding))
//! refuses every registration with CONNACK 5 and a log line saying why (`info` for the first,
//! `debug` after).

pub(crate) mod answer;
mod topics;
pub(crate) mod username;

use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use bytes::Bytes;
use bytestring::ByteString;
use futures::StreamExt;
use iot_provisioning::onboarding::{Assignment, Onboarding, OnboardingError};
use rmqtt_codec::types::Publish;
use rmqtt_codec::v3::{Connect, ConnectAck, ConnectAckReason, Packet, QoS, SubscribeReturnCode};
use serde_json::Value;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::time::{Instant, sleep_until};
use zeroize::Zeroizing;

use super::client_chain::ClientChain;
use super::error::{Error, ProtocolViolation, shorten};
use super::pending::PendingGuard;
use super::shared::Shared;
use super::transport::{self, Transport, write_now};
use crate::gateway::Gateway;
use topics::Request;

/// Finished operations a connection remembers for status requests; a device polls for the one
/// it just started, so a few are plenty.
const MAX_OPERATIONS: usize = 8;

/// The `retry-after` of a `202`: when to ask for the result (it is ready at once).
const POLL_AFTER_SECS: u32 = 1;

/// Whether a CONNECT is a DPS registration rather than a hub connection.
pub(crate) fn is_registration(connect: &Connect) -> bool {
    connect
        .username
        .as_deref()
        .is_some_and(|u| username::is_dps(u, &connect.client_id))
}

/// Serves one registration connection to its end.
pub(crate) async fn serve<IO>(
    mut transport: Transport<IO>,
    connect: Connect,
    shared: Arc<Shared>,
    client_cert: Option<ClientChain>,
    unauthenticated: Option<PendingGuard>,
) -> Result<(), Error>
where
    IO: AsyncRead + AsyncWrite + Unpin + Send,
{
    let Some(mut registration) = handshake(&mut transport, &connect, &shared, client_cert).await?
    else {
        return Ok(());
    };
    drop(unauthenticated);
    let result = registration.run(&mut transport, &shared).await;
    transport::close(&mut transport, shared.config.write_timeout).await;
    tracing::debug!(registration = %registration.registration_id, "DPS connection closed");
    result
}

/// Checks CONNECT and the token, answers CONNACK; `None` when refused (CONNACK already sent).
async fn handshake<IO>(
    transport: &mut Transport<IO>,
    connect: &Connect,
    shared: &Shared,
    client_cert: Option<ClientChain>,
) -> Result<Option<Registration>, Error>
where
    IO: AsyncRead + AsyncWrite + Unpin + Send,
{
    let write_timeout = shared.config.write_timeout;
    let decision = check(connect, shared, client_cert).await;
    let return_code = match &decision {
        Ok(_) => ConnectAckReason::ConnectionAccepted,
        Err((code, _)) => *code,
    };
    let connack = Packet::ConnectAck(ConnectAck {
        return_code,
        session_present: false,
    });
    write_now(transport, connack, write_timeout).await?;
    match decision {
        Ok(registration) => Ok(Some(registration)),
        Err((_, why)) => {
            tracing::debug!(client_id = %shorten(&connect.client_id), %why, "DPS CONNECT refused");
            Ok(None)
        }
    }
}

async fn check(
    connect: &Connect,
    shared: &Shared,
    client_cert: Option<ClientChain>,
) -> Result<Registration, (ConnectAckReason, String)> {
    use ConnectAckReason::{BadUserNameOrPassword, NotAuthorized, ServiceUnavailable};
    let name = connect.username.as_deref().unwrap_or_default();
    let parsed = username::parse(name).map_err(|e| (BadUserNameOrPassword, e.to_string()))?;
    let Some(onboarding) = shared.onboarding.clone() else {
        // The first at info: a fleet pointed at an endpoint that was not set up for it should
        // be obvious in the log. The rest at debug: retrying devices must not flood it.
        let registration = shorten(parsed.registration_id);
        let why = "DPS registration refused: this MQTT endpoint has no onboarding service (MqttServer::with_onboarding)";
        if shared.dps_refusal_logged.swap(true, Ordering::Relaxed) {
            tracing::debug!(%registration, "{why}");
        } else {
            tracing::info!(%registration, "{why} (further ones are logged at debug)");
        }
        return Err((NotAuthorized, "no onboarding service".into()));
    };
    if parsed.id_scope != onboarding.config().id_scope {
        return Err((
            NotAuthorized,
            format!("unknown id scope {:?}", shorten(parsed.id_scope)),
        ));
    }
    let credential = match (connect.password.as_deref(), client_cert) {
        (Some(p), _) => Credential::Token(Zeroizing::new(
            std::str::from_utf8(p)
                .map_err(|_| {
                    (
                        BadUserNameOrPassword,
                        "the password is not UTF-8".to_string(),
                    )
                })?
                .to_owned(),
        )),
        (None, Some(chain)) => Credential::Chain(chain),
        (None, None) => {
            return Err((
                BadUserNameOrPassword,
                "neither a password (SAS token) nor a client certificate".into(),
            ));
        }
    };
    let attested = match &credential {
        Credential::Token(token) => onboarding.attest(parsed.registration_id, token).await,
        Credential::Chain(chain) => {
            onboarding
                .attest_x509(parsed.registration_id, chain.certificates())
                .await
        }
    };
    match attested {
        // A disabled enrollment's device is let in: its registration is answered 401 with the
        // reason, which tells more than a bare CONNACK.
        Ok(_) | Err(OnboardingError::EnrollmentDisabled { .. }) => {}
        Err(e @ OnboardingError::Provisioning { .. }) => {
            return Err((ServiceUnavailable, e.to_string()));
        }
        Err(e) => return Err((NotAuthorized, e.to_string())),
    }
    tracing::debug!(
        registration = %parsed.registration_id,
        api_version = parsed.api_version.unwrap_or("-"),
        "DPS connection open"
    );
    Ok(Registration {
        registration_id: parsed.registration_id.to_owned(),
        credential,
        onboarding,
        idle: shared.config.idle_timeout(connect.keep_alive),
        subscribed: false,
        operations: VecDeque::new(),
    })
}

/// How a registration connection attests.
enum Credential {
    /// DPS's symmetric-key attestation: a SAS token (the CONNECT password).
    Token(Zeroizing<String>),
    /// X.509 attestation: the TLS handshake's certificate chain.
    Chain(ClientChain),
}

/// An accepted registration connection.
struct Registration {
    registration_id: String,
    /// The SAS token or certificate chain of CONNECT: each registration is checked with it
    /// again, against the enrollments as they are then.
    credential: Credential,
    onboarding: Arc<Onboarding>,
    /// 1.5 × the keep-alive.
    idle: Duration,
    /// Whether the device subscribed to `$dps/registrations/res/#`.
    subscribed: bool,
    /// Finished operations: id and the `200` body.
    operations: VecDeque<(String, Value)>,
}

impl Registration {
    async fn run<IO>(&mut self, transport: &mut Transport<IO>, shared: &Shared) -> Result<(), Error>
    where
        IO: AsyncRead + AsyncWrite + Unpin + Send,
    {
        let mut last_packet = Instant::now();
        loop {
            let read = tokio::select! {
                () = shared.shutdown.cancelled() => return Ok(()),
                () = sleep_until(last_packet + self.idle) => {
                    return Err(ProtocolViolation::KeepAliveExpired.into());
                }
                read = transport.next() => read,
            };
            let Some(packet) = read else { return Ok(()) };
            if !self.handle(transport, shared, packet?).await? {
                return Ok(());
            }
            last_packet = Instant::now();
        }
    }

    /// Handles one packet; `false` after DISCONNECT.
    async fn handle<IO>(
        &mut self,
        transport: &mut Transport<IO>,
        shared: &Shared,
        packet: Packet,
    ) -> Result<bool, Error>
    where
        IO: AsyncRead + AsyncWrite + Unpin + Send,
    {
        let write_timeout = shared.config.write_timeout;
        match packet {
            Packet::Publish(publish) => {
                if publish.qos == QoS::ExactlyOnce {
                    return Err(ProtocolViolation::QoS2.into());
                }
                let request = topics::classify(&publish.topic)?;
                if let Some(packet_id) = publish.packet_id {
                    write_now(transport, Packet::PublishAck { packet_id }, write_timeout).await?;
                }
                let (rid, status, body, retry_after) = match request {
                    Request::Register { rid } => {
                        let (status, body, retry_after) =
                            self.register(shared, &publish.payload).await;
                        (rid, status, body, retry_after)
                    }
                    Request::OperationStatus { rid, operation_id } => {
                        let (status, body) = self.status(&operation_id);
                        (rid, status, body, None)
                    }
                };
                self.answer(transport, shared, &rid, status, body, retry_after)
                    .await?;
            }
            Packet::Subscribe {
                packet_id,
                topic_filters,
            } => {
                let mut status = Vec::with_capacity(topic_filters.len());
                for (filter, asked) in &topic_filters {
                    topics::check_filter(filter)?;
                    let granted = if *asked == QoS::AtMostOnce {
                        QoS::AtMostOnce
                    } else {
                        QoS::AtLeastOnce
                    };
                    status.push(SubscribeReturnCode::Success(granted));
                }
                self.subscribed = true;
                let ack = Packet::SubscribeAck { packet_id, status };
                write_now(transport, ack, write_timeout).await?;
            }
            Packet::Unsubscribe {
                packet_id,
                topic_filters,
            } => {
                for filter in &topic_filters {
                    topics::check_filter(filter)?;
                    self.subscribed = false;
                }
                write_now(
                    transport,
                    Packet::UnsubscribeAck { packet_id },
                    write_timeout,
                )
                .await?;
            }
            Packet::PingRequest => {
                write_now(transport, Packet::PingResponse, write_timeout).await?;
            }
            Packet::Disconnect => return Ok(false),
            Packet::Connect(_) => return Err(ProtocolViolation::SecondConnect.into()),
            Packet::PublishReceived { .. }
            | Packet::PublishRelease { .. }
            | Packet::PublishComplete { .. } => return Err(ProtocolViolation::QoS2.into()),
            // Answers go out at QoS 0: nothing of ours awaits a PUBACK.
            Packet::PublishAck { packet_id } => {
                return Err(ProtocolViolation::UnknownPacketId(packet_id.get()).into());
            }
            Packet::ConnectAck(_) => return Err(ProtocolViolation::Unexpected("CONNACK").into()),
            Packet::SubscribeAck { .. } => {
                return Err(ProtocolViolation::Unexpected("SUBACK").into());
            }
            Packet::UnsubscribeAck { .. } => {
                return Err(ProtocolViolation::Unexpected("UNSUBACK").into());
            }
            Packet::PingResponse => return Err(ProtocolViolation::Unexpected("PINGRESP").into()),
        }
        Ok(true)
    }

    /// Runs a registration; the answer's status, body and retry-after.
    async fn register(&mut self, shared: &Shared, body: &[u8]) -> (u16, Value, Option<u32>) {
        let named = serde_json::from_slice::<Value>(body).ok().and_then(|b| {
            b.get("registrationId")
                .and_then(Value::as_str)
                .map(str::to_owned)
        });
        if named.as_deref() != Some(self.registration_id.as_str()) {
            let message = "the body must be a JSON object whose registrationId is the client id";
            return (400, answer::error_body(400004, message), None);
        }
        let registered = match &self.credential {
            Credential::Token(token) => {
                self.onboarding.register(&self.registration_id, token).await
            }
            Credential::Chain(chain) => {
                self.onboarding
                    .register_x509(&self.registration_id, chain.certificates())
                    .await
            }
        };
        match registered {
            Ok(assignment) => {
                if assignment.apply_initial_twin {
                    write_initial_twin(shared.gateway.as_ref(), &assignment).await;
                }
                let operation_id = format!("{:032x}", rand::random::<u128>());
                let done = answer::assigned(&operation_id, &assignment);
                if self.operations.len() == MAX_OPERATIONS {
                    self.operations.pop_front();
                }
                self.operations.push_back((operation_id.clone(), done));
                (202, answer::assigning(&operation_id), Some(POLL_AFTER_SECS))
            }
            Err(e) => {
                tracing::debug!(registration = %self.registration_id, error = %e, kind = e.kind(), "DPS registration refused");
                answer::refused(&e)
            }
        }
    }

    /// The answer to an operation status request.
    fn status(&self, operation_id: &str) -> (u16, Value) {
        match self.operations.iter().find(|(id, _)| id == operation_id) {
            Some((_, done)) => (200, done.clone()),
            None => (
                404,
                answer::error_body(404201, "no such operation on this connection"),
            ),
        }
    }

    async fn answer<IO>(
        &self,
        transport: &mut Transport<IO>,
        shared: &Shared,
        rid: &str,
        status: u16,
        body: Value,
        retry_after: Option<u32>,
    ) -> Result<(), Error>
    where
        IO: AsyncRead + AsyncWrite + Unpin + Send,
    {
        if !self.subscribed {
            tracing::debug!(registration = %self.registration_id, "DPS answer dropped: not subscribed to $dps/registrations/res/#");
            return Ok(());
        }
        let publish = Publish {
            dup: false,
            retain: false,
            qos: QoS::AtMostOnce,
            topic: ByteString::from(topics::response_topic(status, rid, retry_after)),
            packet_id: None,
            payload: Bytes::from(body.to_string()),
            properties: None,
        };
        write_now(
            transport,
            Packet::Publish(Box::new(publish)),
            shared.config.write_timeout,
        )
        .await
    }
}

/// Gives a newly registered (or reset) device's twin the enrollment's desired properties,
/// merged as a desired patch. A failure is logged and the assignment stands: the device can
/// register, and the back end can patch the twin, again.
pub(crate) async fn write_initial_twin(gateway: &dyn Gateway, assignment: &Assignment) {
    if let Err(e) = gateway
        .patch_desired(&assignment.device_id, assignment.initial_twin.clone(), None)
        .await
    {
        tracing::warn!(device = %assignment.device_id, error = %e, "the initial twin could not be written");
    }
}
