//! What each request does at the gateway: telemetry, the next C2D message, settlement. The
//! gateway is reached only through the public adapter kit ([`TokenSessions`]) and the
//! [`Gateway`](crate::Gateway) / [`DeviceSession`](crate::DeviceSession) API, as an adapter
//! outside this crate would.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use coap_lite::{RequestType, ResponseType};
use iot_core::DeviceId;

use super::request::{PROPERTIES_OPTION, REJECT_QUERY, Refusal, Request, media_type};
use crate::adapter::{Address, SharedSession, TokenSessions, properties};
use crate::error::Error;
use crate::gateway::{SessionEvent, SessionOptions, Subscription};
use crate::message::{C2dDelivery, LockToken};

/// The most bytes of body and property bag a C2D answer carries: a UDP datagram holds at most
/// 65 507, and the header, token and option headers need some.
const MAX_C2D_DATAGRAM: usize = 64_000;

/// A successful answer: the code, the payload and extra options.
#[derive(Debug)]
pub(super) struct Answer {
    pub(super) code: ResponseType,
    pub(super) payload: Vec<u8>,
    pub(super) options: Vec<(u16, Vec<u8>)>,
    /// An observation this answer registers (RFC 7641): the server then sends notifications.
    pub(super) observe: Option<Observation>,
}

impl Answer {
    fn empty(code: ResponseType) -> Self {
        Answer {
            code,
            payload: Vec::new(),
            options: Vec::new(),
            observe: None,
        }
    }
}

/// A registered observation of a device's C2D messages: its session, and the signal that a
/// newer registration or a deregistration ended it.
#[derive(Debug)]
pub(super) struct Observation {
    pub(super) session: SharedSession,
    pub(super) cancelled: tokio::sync::oneshot::Receiver<()>,
}

/// The per-server state requests share.
#[derive(Debug)]
pub(super) struct Handler {
    sessions: TokenSessions,
    c2d_wait: Duration,
    /// One C2D poll at a time per device: `DeviceSession::next_event` is for one task at a time.
    polls: Mutex<HashMap<DeviceId, Arc<tokio::sync::Mutex<()>>>>,
    /// The live observation of each device; dropping its sender ends it.
    observations: Mutex<HashMap<DeviceId, tokio::sync::oneshot::Sender<()>>>,
}

impl Handler {
    pub(super) fn new(sessions: TokenSessions, c2d_wait: Duration) -> Self {
        Handler {
            sessions,
            c2d_wait,
            polls: Mutex::new(HashMap::new()),
            observations: Mutex::new(HashMap::new()),
        }
    }

    pub(super) fn sessions(&self) -> &TokenSessions {
        &self.sessions
    }

    /// Carries out a parsed request from `peer`.
    pub(super) async fn handle(
        &self,
        request: Request,
        payload: Vec<u8>,
        peer: SocketAddr,
    ) -> Result<Answer, Refusal> {
        let Some(token) = request.token.as_deref() else {
            return Err(Refusal::new(
                ResponseType::Unauthorized,
                "no SAS token (Uri-Query sas=…)",
            ));
        };
        let options = SessionOptions::default().peer(Some(peer.ip()));
        let device = request.address.device().clone();
        // The address names the device whose session is opened, with the caller's token: a
        // token for another device is refused by the gateway, like a bad one.
        let session = self
            .sessions
            .session(&device, token, options)
            .await
            .map_err(refusal)?;
        match (&request.address, request.method) {
            (Address::Telemetry { .. }, RequestType::Post) => {
                self.telemetry(&session, request, payload).await
            }
            (Address::DeviceBound { .. }, RequestType::Get) => match request.observe {
                Some(0) => self.observe(session).await,
                Some(1) => {
                    lock(&self.observations).remove(&device);
                    self.next_c2d(&session).await
                }
                _ => self.next_c2d(&session).await,
            },
            (Address::DeviceBoundMessage { lock, .. }, RequestType::Delete) => {
                let reject = request.query.iter().any(|(k, _)| k == REJECT_QUERY);
                settle(&session, *lock, reject).await
            }
            (Address::Abandon { lock, .. }, RequestType::Post) => {
                session.abandon(*lock).await.map_err(refusal)?;
                Ok(Answer::empty(ResponseType::Changed))
            }
            _ => Err(Refusal::new(
                ResponseType::MethodNotAllowed,
                "method not allowed on this address",
            )),
        }
    }

    async fn telemetry(
        &self,
        session: &SharedSession,
        request: Request,
        payload: Vec<u8>,
    ) -> Result<Answer, Refusal> {
        let mut telemetry = properties::telemetry_from_properties(request.query, payload)?;
        if telemetry.system.content_type.is_none() {
            telemetry.system.content_type = request
                .content_format
                .and_then(media_type)
                .map(str::to_owned);
        }
        // Answered only once the message is in the log: the acknowledgement of a confirmable
        // request is the at-least-once promise.
        session.send_telemetry(telemetry).await.map_err(refusal)?;
        Ok(Answer::empty(ResponseType::Changed))
    }

    /// Registers an observation of the device's C2D messages (ending an older one); the
    /// server sends them as notifications.
    async fn observe(&self, session: SharedSession) -> Result<Answer, Refusal> {
        session
            .subscribe(Subscription::C2d)
            .await
            .map_err(refusal)?;
        let (cancel, cancelled) = tokio::sync::oneshot::channel();
        lock(&self.observations).insert(session.device_id().clone(), cancel);
        let mut answer = Answer::empty(ResponseType::Content);
        answer.observe = Some(Observation { session, cancelled });
        Ok(answer)
    }

    /// The lock that lets one task at a time wait for `device`'s next C2D message.
    pub(super) fn poll_lock(&self, device: &DeviceId) -> Arc<tokio::sync::Mutex<()>> {
        let mut polls = lock(&self.polls);
        polls.retain(|_, p| Arc::strong_count(p) > 1);
        polls.entry(device.clone()).or_default().clone()
    }

    async fn next_c2d(&self, session: &SharedSession) -> Result<Answer, Refusal> {
        let poll = self.poll_lock(session.device_id());
        // An observation holds the lock while it waits: a GET beside it finds nothing.
        let Ok(_one_at_a_time) = tokio::time::timeout(self.c2d_wait, poll.lock()).await else {
            return Ok(Answer::empty(ResponseType::Content));
        };
        session
            .subscribe(Subscription::C2d)
            .await
            .map_err(refusal)?;
        // Cancel safe (the `DeviceSession` contract): a message locked as the wait ends is
        // handed out by the next GET.
        let event = match tokio::time::timeout(self.c2d_wait, session.next_event()).await {
            Err(_) => return Ok(Answer::empty(ResponseType::Content)),
            Ok(event) => event.map_err(refusal)?,
        };
        match event {
            SessionEvent::C2d(delivery) => c2d_answer(session, delivery).await,
            SessionEvent::Closed(reason) => Err(Refusal::new(
                ResponseType::ServiceUnavailable,
                format!("the session closed: {reason:?}"),
            )),
            // Only C2D is subscribed; nothing else is handed out.
            _ => Ok(Answer::empty(ResponseType::Content)),
        }
    }
}

/// The answer (or notification) carrying a C2D delivery: its body, and its properties in
/// [`PROPERTIES_OPTION`].
pub(super) async fn c2d_answer(
    session: &SharedSession,
    delivery: C2dDelivery,
) -> Result<Answer, Refusal> {
    let to = Address::device_bound_of(session.device_id());
    let pairs = properties::c2d_properties(&delivery, &to);
    let bag = properties::encode_bag(pairs.iter().map(|(k, v)| (k.as_str(), v.as_str())));
    if delivery.payload.len() + bag.len() > MAX_C2D_DATAGRAM {
        // No block-wise transfer: it can never reach the device this way. Dead-letter it
        // (rejected, with that feedback) rather than give it back, which would hold up the
        // device's queue until the maximum delivery count.
        tracing::warn!(device = %session.device_id(), "a C2D message does not fit in a CoAP datagram; rejected");
        session.reject(delivery.lock_token).await.map_err(refusal)?;
        return Err(Refusal::new(
            ResponseType::InternalServerError,
            "the message does not fit in a datagram",
        ));
    }
    Ok(Answer {
        code: ResponseType::Content,
        payload: delivery.payload.to_vec(),
        options: vec![(PROPERTIES_OPTION, bag.into_bytes())],
        observe: None,
    })
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

async fn settle(session: &SharedSession, lock: LockToken, reject: bool) -> Result<Answer, Refusal> {
    if reject {
        session.reject(lock).await
    } else {
        session.complete(lock).await
    }
    .map_err(refusal)?;
    Ok(Answer::empty(ResponseType::Deleted))
}

/// The response code of a gateway error. Refusals of credentials all read alike.
fn refusal(e: Error) -> Refusal {
    use ResponseType as R;
    let (code, text) = match &e {
        Error::Unauthorized { .. } => (R::Unauthorized, "unauthorized".to_string()),
        Error::Throttled { .. } => (R::TooManyRequests, e.to_string()),
        Error::TooLarge { .. } => (R::RequestEntityTooLarge, e.to_string()),
        Error::InvalidProperty { .. } | Error::InvalidInput { .. } => {
            (R::BadRequest, e.to_string())
        }
        Error::LockLost { .. } => (R::PreconditionFailed, e.to_string()),
        Error::QueueFull { .. } => (R::ServiceUnavailable, e.to_string()),
        Error::SessionClosed { .. } | Error::Shutdown => {
            (R::ServiceUnavailable, "the session closed".to_string())
        }
        _ => {
            tracing::warn!(error = %e, "CoAP request failed at the gateway");
            (R::InternalServerError, "internal error".to_string())
        }
    };
    Refusal::new(code, text)
}
