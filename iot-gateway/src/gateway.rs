//! The `Gateway` trait: the contract between protocol endpoints (MQTT, HTTP) and the back end.

use std::fmt::Debug;
use std::net::IpAddr;
use std::sync::Arc;

use async_trait::async_trait;
use iot_core::{DeviceId, ModuleId, Timestamp};
use iot_identity::Presented;
use serde_json::Value;

use crate::error::{CloseReason, Result};
use crate::inbox::Settlement;
use crate::message::{C2dDelivery, C2dMessage, C2dReceipt, Feedback, LockToken, Telemetry};
use crate::method::{MethodCall, MethodRequest, MethodResponse};
use crate::twins::{DesiredPatch, Twin};

/// How an endpoint wants a session to behave.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct SessionOptions {
    /// The most C2D messages handed out and not yet settled at once (the endpoint's in-flight
    /// window). Default 16; at least 1.
    pub c2d_window: usize,
    /// The network address the connection comes from, when the endpoint has one. A failed
    /// authentication is charged to this address (and to a hub-wide failed-attempt budget),
    /// never to the device it named; `None` (in-process callers) charges the hub-wide budget
    /// only. Default `None`.
    pub peer: Option<IpAddr>,
    /// The IoT Plug and Play model id the device announced when it connected (the MQTT
    /// username's `model-id`), stamped on its telemetry as
    /// [`header::MODEL_ID`](crate::message::header::MODEL_ID). A non-empty property value of
    /// at most 4096 bytes without control characters. Default `None`.
    pub model_id: Option<String>,
}

impl Default for SessionOptions {
    fn default() -> Self {
        SessionOptions {
            c2d_window: 16,
            peer: None,
            model_id: None,
        }
    }
}

/// Chainable setters: the struct is `non_exhaustive`, so endpoints outside this crate start from
/// [`Default`] and change what they need.
impl SessionOptions {
    /// Sets [`c2d_window`](Self::c2d_window).
    pub fn c2d_window(mut self, c2d_window: usize) -> Self {
        self.c2d_window = c2d_window;
        self
    }

    /// Sets [`peer`](Self::peer).
    pub fn peer(mut self, peer: Option<IpAddr>) -> Self {
        self.peer = peer;
        self
    }

    /// Sets [`model_id`](Self::model_id).
    pub fn model_id(mut self, model_id: Option<String>) -> Self {
        self.model_id = model_id;
        self
    }
}

/// A kind of traffic a session receives only after the endpoint asks for it (an MQTT client
/// subscribes lazily).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Subscription {
    /// Cloud-to-device messages from the inbox.
    C2d,
    /// Desired-property patches.
    DesiredPatches,
    /// Direct-method requests.
    Methods,
}

/// What [`DeviceSession::next_event`] yields.
#[derive(Clone, Debug, PartialEq)]
#[non_exhaustive]
pub enum SessionEvent {
    /// A C2D message, locked for this session until settled or until its lock expires.
    C2d(C2dDelivery),
    /// The desired properties changed.
    DesiredPatch(DesiredPatch),
    /// The back end invoked a direct method; answer with [`DeviceSession::respond_method`].
    Method(MethodRequest),
    /// The session is over; every later call fails with
    /// [`Error::SessionClosed`](crate::Error::SessionClosed). Endpoints close the connection.
    Closed(CloseReason),
}

/// When a device's connection state last changed and when it was last active, as far as a
/// gateway saw it (IoT Hub's `connectionStateUpdatedTime` and `lastActivityTime`). `None` is
/// "never seen" (IoT Hub shows `0001-01-01T00:00:00Z`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct DeviceActivity {
    /// The last connect or disconnect.
    pub connection_state_updated: Option<Timestamp>,
    /// The last connect, telemetry message, C2D settlement, reported-property patch or method
    /// answer.
    pub last_activity: Option<Timestamp>,
}

impl DeviceActivity {
    /// An activity record from its two times.
    pub fn new(
        connection_state_updated: Option<Timestamp>,
        last_activity: Option<Timestamp>,
    ) -> Self {
        DeviceActivity {
            connection_state_updated,
            last_activity,
        }
    }
}

/// The gateway: device sessions on one side, the back end's operations on the other.
///
/// Endpoints authenticate a connection with [`connect`](Gateway::connect) and then drive the
/// returned [`DeviceSession`]. Back-end code sends C2D messages, reads feedback, patches desired
/// properties and invokes methods.
///
/// # Contract
///
/// `testkit` (feature `testkit`) checks these against any implementation.
///
/// * **Authentication.** `connect` checks the credential through the identity store; a refusal is
///   [`Error::Unauthorized`](crate::Error::Unauthorized) whatever the reason. A refused attempt
///   spends none of the named device's budgets (a stranger who knows a device id cannot keep the
///   device offline), and a refusal before authentication must not depend on the device named.
/// * **One session per device.** A new `connect` of a device closes its live session with
///   [`CloseReason::TakenOver`]; disabling, deleting or re-keying the device closes it with
///   [`CloseReason::Disabled`], [`CloseReason::Deleted`] or [`CloseReason::CredentialsReplaced`].
/// * **Telemetry** is acknowledged only once it is in the log (durable as the log promises), in
///   the order one session sent it. Each record is stamped from the session, as IoT Hub stamps
///   device-to-cloud messages (see [`message::header`](crate::message::header)):
///   `iothub-connection-device-id`, `iothub-connection-auth-method`,
///   `iothub-connection-auth-generation-id`, `iothub-enqueuedtime`, `iothub-message-source` and,
///   when the session announced a model, `dt-dataschema`. A custom property may not use a name
///   the gateway writes ([`Error::InvalidProperty`](crate::Error::InvalidProperty)), so no
///   message can carry another device's stamps.
/// * **C2D** messages wait in a durable per-device inbox until completed, rejected, expired or
///   dead-lettered; they reach a session only while it is subscribed to [`Subscription::C2d`],
///   in FIFO order, at most [`SessionOptions::c2d_window`] unsettled at once.
/// * **Twins** have versions that grow by one per patch; a desired patch reaches the device's
///   session (while subscribed to [`Subscription::DesiredPatches`]) in version order.
/// * **Methods** reach a session only while it is subscribed to [`Subscription::Methods`]; a
///   device without such a session is [`Error::DeviceOffline`](crate::Error::DeviceOffline)
///   (after the call's connect timeout), an unanswered call
///   [`Error::TimedOut`](crate::Error::TimedOut).
/// * **Unsubscribing** ([`DeviceSession::unsubscribe`]) stops a kind without losing C2D messages
///   or desired patches: C2D deliveries already handed out can still be settled, undelivered
///   messages stay in the inbox (one that a pending lookup had locked goes back with its
///   delivery count raised, as when a session closes), and patches wait for the next subscribe.
///   Method requests not yet handed out fail with `DeviceOffline`.
#[async_trait]
pub trait Gateway: Send + Sync + Debug + 'static {
    /// Authenticates `device` with `credential` and opens its session, closing any older one.
    async fn connect(
        &self,
        device: &DeviceId,
        credential: Presented<'_>,
        options: SessionOptions,
    ) -> Result<Box<dyn DeviceSession>>;

    /// Queues a C2D message for `device` (connected or not).
    async fn send_c2d(&self, device: &DeviceId, message: C2dMessage) -> Result<C2dReceipt>;

    /// Up to `max` feedback records from stream position `from` (0 is the start), oldest first.
    async fn read_feedback(&self, from: u64, max: usize) -> Result<Vec<Feedback>>;

    /// Where the feedback queue's receivers read on from: every feedback record before this
    /// stream position was completed by a receiver (0 when none was). IoT Hub's feedback is a
    /// queue, so what one receiver completed no receiver sees again. The position is kept with
    /// the feedback, not in an endpoint, so that a restarted endpoint, or another instance of a
    /// cluster, does not deliver completed feedback again.
    async fn feedback_completed(&self) -> Result<u64>;

    /// Records that a receiver completed every feedback record before `next`. The position
    /// never moves back (a smaller `next` changes nothing) nor past the end of the feedback.
    async fn complete_feedback(&self, next: u64) -> Result<()>;

    /// The twin of `device`.
    async fn get_twin(&self, device: &DeviceId) -> Result<Twin>;

    /// Merges `patch` (RFC 7396, a JSON object) into the desired properties, if their version is
    /// still `if_version` (when given); returns the new twin. The patch is pushed to the device.
    async fn patch_desired(
        &self,
        device: &DeviceId,
        patch: Value,
        if_version: Option<u64>,
    ) -> Result<Twin>;

    /// [`patch_desired`](Gateway::patch_desired) for a replacement of the whole desired section
    /// (the service API's `PUT /twins/{id}`): `patch` turns the current desired properties into
    /// the new ones (`null` for each one removed). A hub that writes twin change events writes
    /// this one as `replaceTwin` (IoT Hub's `opType` for a replaced twin) rather than
    /// `updateTwin`. The provided method is `patch_desired`.
    async fn replace_desired(
        &self,
        device: &DeviceId,
        patch: Value,
        if_version: Option<u64>,
    ) -> Result<Twin> {
        self.patch_desired(device, patch, if_version).await
    }

    /// Checks that [`patch_desired`](Gateway::patch_desired) with these arguments would be
    /// accepted now — the device exists, `patch` is valid and the merged section within the
    /// twin limits, `if_version` (when given) is the current version — without writing it. A
    /// caller that must make another write together with the patch runs this first, so that a
    /// patch refused for its content refuses the whole change. (The write itself can still
    /// fail: a concurrent patch, a throttle, a store.) The provided method accepts everything
    /// and leaves the checks to the write.
    async fn check_desired(
        &self,
        device: &DeviceId,
        patch: &Value,
        if_version: Option<u64>,
    ) -> Result<()> {
        let _ = (device, patch, if_version);
        Ok(())
    }

    /// Invokes a direct method on `device` and waits for its answer.
    async fn invoke_method(&self, device: &DeviceId, call: MethodCall) -> Result<MethodResponse>;

    /// The devices with a live session, in id order.
    async fn connected_devices(&self) -> Result<Vec<DeviceId>>;

    /// Whether `device` has a live session. The provided method searches
    /// [`connected_devices`](Gateway::connected_devices); gateways that can answer for one
    /// device directly override it.
    async fn is_connected(&self, device: &DeviceId) -> Result<bool> {
        Ok(self
            .connected_devices()
            .await?
            .binary_search(device)
            .is_ok())
    }

    /// When `device` last connected or disconnected and when it was last active. The provided
    /// method knows nothing (both `None`).
    async fn activity(&self, device: &DeviceId) -> Result<DeviceActivity> {
        let _ = device;
        Ok(DeviceActivity::default())
    }

    /// How many C2D messages wait for `device` (locked ones included). The provided method
    /// says the gateway cannot tell ([`Error::InvalidInput`](crate::Error::InvalidInput)).
    async fn pending_c2d(&self, device: &DeviceId) -> Result<usize> {
        Err(crate::Error::InvalidInput {
            reason: format!("this gateway cannot count the C2D messages of {device}"),
        })
    }

    /// Authenticates module `module` of `device` with the module's own credential and opens
    /// its session (IoT Hub's module identities), closing any older session of the same module.
    /// A module session is apart from its device's and its siblings': it never takes one over,
    /// and has a twin of its own. It takes no C2D messages. The provided method refuses
    /// ([`Error::InvalidInput`](crate::Error::InvalidInput)): this gateway has no modules.
    async fn connect_module(
        &self,
        device: &DeviceId,
        module: &ModuleId,
        credential: Presented<'_>,
        options: SessionOptions,
    ) -> Result<Box<dyn DeviceSession>> {
        let _ = (credential, options);
        Err(no_modules(device, module))
    }

    /// The twin of module `module` of `device`; the provided method refuses.
    async fn get_module_twin(&self, device: &DeviceId, module: &ModuleId) -> Result<Twin> {
        Err(no_modules(device, module))
    }

    /// [`patch_desired`](Gateway::patch_desired) for a module's twin (pushed to the module's
    /// session); the provided method refuses.
    async fn patch_module_desired(
        &self,
        device: &DeviceId,
        module: &ModuleId,
        patch: Value,
        if_version: Option<u64>,
    ) -> Result<Twin> {
        let _ = (patch, if_version);
        Err(no_modules(device, module))
    }

    /// [`invoke_method`](Gateway::invoke_method) on a module's session; the provided method
    /// refuses.
    async fn invoke_module_method(
        &self,
        device: &DeviceId,
        module: &ModuleId,
        call: MethodCall,
    ) -> Result<MethodResponse> {
        let _ = call;
        Err(no_modules(device, module))
    }

    /// Whether module `module` of `device` has a live session; the provided method says no.
    async fn is_module_connected(&self, device: &DeviceId, module: &ModuleId) -> Result<bool> {
        let _ = (device, module);
        Ok(false)
    }

    /// Removes every C2D message queued for `device` (IoT Hub's queue purge); returns how many.
    /// No feedback is written for them. The provided method refuses
    /// ([`Error::InvalidInput`](crate::Error::InvalidInput)).
    async fn purge_c2d(&self, device: &DeviceId) -> Result<usize> {
        Err(crate::Error::InvalidInput {
            reason: format!("this gateway cannot purge the C2D queue of {device}"),
        })
    }

    /// Whether [`settle_c2d`](Gateway::settle_c2d) works: endpoints settle through it when it
    /// does, and through a session of the device otherwise. The provided method says no.
    fn settles_c2d_by_token(&self) -> bool {
        false
    }

    /// Settles a C2D delivery by its lock token, outside the session it was handed to (the
    /// HTTPS device API's complete, reject and abandon, for a device whose MQTT connection
    /// received the message; docs/device-client.md). A token that is not the message's current
    /// lock is [`Error::LockLost`](crate::Error::LockLost). The provided method refuses
    /// ([`Error::InvalidInput`](crate::Error::InvalidInput)); see
    /// [`settles_c2d_by_token`](Gateway::settles_c2d_by_token).
    async fn settle_c2d(
        &self,
        device: &DeviceId,
        token: LockToken,
        settlement: Settlement,
    ) -> Result<()> {
        let _ = (token, settlement);
        Err(crate::Error::InvalidInput {
            reason: format!(
                "this gateway settles the C2D messages of {device} on their session only"
            ),
        })
    }
}

fn no_modules(device: &DeviceId, module: &ModuleId) -> crate::Error {
    crate::Error::invalid(format!(
        "this gateway has no module identities (module {device}/{module})"
    ))
}

/// One device's live session, as an endpoint drives it. All methods take `&self`, so one task can
/// read the connection (telemetry, settlements, twin requests) while another writes it
/// ([`next_event`](DeviceSession::next_event)).
///
/// After the session closes every method fails with
/// [`Error::SessionClosed`](crate::Error::SessionClosed), except `next_event`, which yields
/// [`SessionEvent::Closed`].
#[async_trait]
pub trait DeviceSession: Send + Sync + Debug {
    /// The authenticated device (the module's device, for a module's session).
    fn device_id(&self) -> &DeviceId;

    /// The authenticated module, for a module's session
    /// ([`Gateway::connect_module`]); the provided method says `None` (a device's session).
    fn module_id(&self) -> Option<&ModuleId> {
        None
    }

    /// Sends telemetry; returns once it is in the log.
    async fn send_telemetry(&self, message: Telemetry) -> Result<()>;

    /// Whether [`send_telemetry`](DeviceSession::send_telemetry) may refuse a message with
    /// [`Error::Throttled`](crate::Error::Throttled). An endpoint that retries throttled
    /// messages keeps a copy of each message only while this is `true`. The provided method
    /// says `true`, which is always safe.
    fn throttles_telemetry(&self) -> bool {
        true
    }

    /// Starts delivering a kind of traffic. Until it is called for a kind, nothing of that kind
    /// is delivered and nothing is lost (C2D messages wait in the inbox; desired patches and
    /// method requests made since the session opened wait in the session). Idempotent.
    async fn subscribe(&self, subscription: Subscription) -> Result<()>;

    /// Stops delivering a kind of traffic: the kind goes back to how it was before
    /// [`subscribe`](DeviceSession::subscribe), and a later `subscribe` starts it again.
    ///
    /// Once this returns, [`next_event`](DeviceSession::next_event) hands out nothing of that
    /// kind. What was handed out already stays the device's to finish:
    ///
    /// * [`Subscription::C2d`]: messages handed out stay locked to the session and can still be
    ///   completed, abandoned or rejected by their lock token (a device's acknowledgement may
    ///   arrive after it unsubscribed). Messages not handed out stay in the inbox for a later
    ///   subscription or session; one that a lookup had just locked goes back at once, having
    ///   counted that delivery.
    /// * [`Subscription::DesiredPatches`]: patches made from now on wait in the session as they
    ///   do before the first `subscribe`, so subscribing again delivers them in version order
    ///   (folded into one full-document patch if more than the session's queue piled up).
    /// * [`Subscription::Methods`]: the session no longer takes method requests, as if it had
    ///   never subscribed: requests queued and not yet handed out fail at once with
    ///   [`Error::DeviceOffline`](crate::Error::DeviceOffline), new invocations wait for a
    ///   method subscription up to their connect timeout. Requests already handed out can still
    ///   be answered with [`respond_method`](DeviceSession::respond_method).
    ///
    /// Unsubscribing a kind that is not subscribed is `Ok`. On a closed session it fails with
    /// [`Error::SessionClosed`](crate::Error::SessionClosed), like `subscribe`.
    async fn unsubscribe(&self, subscription: Subscription) -> Result<()>;

    /// Waits for the next thing to hand to the device. Pull-based: the session never buffers
    /// more than its bounded queues, and a C2D message is locked only when this returns it.
    ///
    /// Cancel safe: dropping the future loses nothing (a C2D lock being taken completes and is
    /// handed out by the next call). Call it from one task at a time.
    async fn next_event(&self) -> Result<SessionEvent>;

    /// The device processed the message: it leaves the inbox (and success feedback is written if
    /// asked for).
    async fn complete(&self, token: LockToken) -> Result<()>;

    /// The device gives the message back: it is delivered again (up to the maximum delivery
    /// count, then dead-lettered).
    async fn abandon(&self, token: LockToken) -> Result<()>;

    /// The device refuses the message: it is dead-lettered at once.
    async fn reject(&self, token: LockToken) -> Result<()>;

    /// The twin.
    async fn get_twin(&self) -> Result<Twin>;

    /// Merges `patch` (a JSON object) into the reported properties; returns the new reported
    /// version.
    async fn patch_reported(&self, patch: Value) -> Result<u64>;

    /// Answers a method request handed out by `next_event`. An answer refused for its payload
    /// (not JSON, too large) ends the call with
    /// [`Error::InvalidMethodResponse`](crate::Error::InvalidMethodResponse), which is returned
    /// here too; the session stays open.
    async fn respond_method(&self, response: MethodResponse) -> Result<()>;

    /// Why the session closed, if it has.
    fn close_reason(&self) -> Option<CloseReason>;

    /// Ends the session (the device disconnected): a disconnect event is written, C2D messages
    /// it held are released for redelivery. Idempotent. Dropping a session without calling
    /// this does the same in the background.
    async fn close(&self);
}

macro_rules! forward_gateway {
    ($ptr:ident) => {
        #[deny(clippy::missing_trait_methods)]
        #[async_trait]
        impl<T: Gateway + ?Sized> Gateway for $ptr<T> {
            async fn connect(
                &self,
                device: &DeviceId,
                credential: Presented<'_>,
                options: SessionOptions,
            ) -> Result<Box<dyn DeviceSession>> {
                (**self).connect(device, credential, options).await
            }
            async fn send_c2d(&self, device: &DeviceId, message: C2dMessage) -> Result<C2dReceipt> {
                (**self).send_c2d(device, message).await
            }
            async fn read_feedback(&self, from: u64, max: usize) -> Result<Vec<Feedback>> {
                (**self).read_feedback(from, max).await
            }
            async fn feedback_completed(&self) -> Result<u64> {
                (**self).feedback_completed().await
            }
            async fn complete_feedback(&self, next: u64) -> Result<()> {
                (**self).complete_feedback(next).await
            }
            async fn get_twin(&self, device: &DeviceId) -> Result<Twin> {
                (**self).get_twin(device).await
            }
            async fn patch_desired(
                &self,
                device: &DeviceId,
                patch: Value,
                if_version: Option<u64>,
            ) -> Result<Twin> {
                (**self).patch_desired(device, patch, if_version).await
            }
            async fn replace_desired(
                &self,
                device: &DeviceId,
                patch: Value,
                if_version: Option<u64>,
            ) -> Result<Twin> {
                (**self).replace_desired(device, patch, if_version).await
            }
            async fn check_desired(
                &self,
                device: &DeviceId,
                patch: &Value,
                if_version: Option<u64>,
            ) -> Result<()> {
                (**self).check_desired(device, patch, if_version).await
            }
            async fn invoke_method(
                &self,
                device: &DeviceId,
                call: MethodCall,
            ) -> Result<MethodResponse> {
                (**self).invoke_method(device, call).await
            }
            async fn activity(&self, device: &DeviceId) -> Result<DeviceActivity> {
                (**self).activity(device).await
            }
            async fn connected_devices(&self) -> Result<Vec<DeviceId>> {
                (**self).connected_devices().await
            }
            async fn is_connected(&self, device: &DeviceId) -> Result<bool> {
                (**self).is_connected(device).await
            }
            async fn pending_c2d(&self, device: &DeviceId) -> Result<usize> {
                (**self).pending_c2d(device).await
            }
            async fn purge_c2d(&self, device: &DeviceId) -> Result<usize> {
                (**self).purge_c2d(device).await
            }
            async fn connect_module(
                &self,
                device: &DeviceId,
                module: &ModuleId,
                credential: Presented<'_>,
                options: SessionOptions,
            ) -> Result<Box<dyn DeviceSession>> {
                (**self)
                    .connect_module(device, module, credential, options)
                    .await
            }
            async fn get_module_twin(&self, device: &DeviceId, module: &ModuleId) -> Result<Twin> {
                (**self).get_module_twin(device, module).await
            }
            async fn patch_module_desired(
                &self,
                device: &DeviceId,
                module: &ModuleId,
                patch: Value,
                if_version: Option<u64>,
            ) -> Result<Twin> {
                (**self)
                    .patch_module_desired(device, module, patch, if_version)
                    .await
            }
            async fn invoke_module_method(
                &self,
                device: &DeviceId,
                module: &ModuleId,
                call: MethodCall,
            ) -> Result<MethodResponse> {
                (**self).invoke_module_method(device, module, call).await
            }
            async fn is_module_connected(
                &self,
                device: &DeviceId,
                module: &ModuleId,
            ) -> Result<bool> {
                (**self).is_module_connected(device, module).await
            }
            fn settles_c2d_by_token(&self) -> bool {
                (**self).settles_c2d_by_token()
            }
            async fn settle_c2d(
                &self,
                device: &DeviceId,
                token: LockToken,
                settlement: Settlement,
            ) -> Result<()> {
                (**self).settle_c2d(device, token, settlement).await
            }
        }
    };
}

forward_gateway!(Arc);
forward_gateway!(Box);

// The setters are the only way other crates can build `SessionOptions` (`non_exhaustive`): each
// must set its own field and nothing else.
#[cfg(test)]
mod setter_tests {
    use super::*;

    #[test]
    fn each_setter_sets_its_own_field() {
        let peer = Some(IpAddr::from([192, 0, 2, 7]));
        let built = SessionOptions::default()
            .c2d_window(3)
            .peer(peer)
            .model_id(Some("dtmi:x;1".into()));
        let expected = SessionOptions {
            c2d_window: 3,
            peer,
            model_id: Some("dtmi:x;1".into()),
        };
        assert_eq!(built, expected);
    }
}
