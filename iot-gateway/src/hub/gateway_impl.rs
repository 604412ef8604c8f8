//! `impl Gateway for Hub`: the device and service operations of the contract, over the hub's
//! state in [`HubInner`](super::HubInner).

use std::sync::Arc;
use std::sync::atomic::Ordering;

use async_trait::async_trait;
use iot_core::{DeviceId, EndpointId, Log, ModuleId, Offset, PartitionId, ReadLimits, Timestamp};
use iot_identity::Presented;
use serde_json::Value;
use tokio::sync::oneshot;
use tracing::{debug, instrument};

use crate::error::{CloseReason, Error, Result};
use crate::events::EventKind;
use crate::gateway::{DeviceActivity, DeviceSession, Gateway, SessionOptions};
use crate::inbox::{InboxMessage, InboxStore, Settlement};
use crate::message::{C2dMessage, C2dReceipt, Feedback, LockToken};
use crate::method::{MethodCall, MethodRequest, MethodResponse};
use crate::sync_util::lock;
use crate::twins::{DesiredPatch, Twin};
use crate::twins::{Section, TwinStore};
use crate::validate;

use super::session::{HubSession, SessionShared};
use super::stats::InKind;
use super::{ForgetMethod, Hub, PendingMethod, check_json, check_method_name, records, stamp};

impl Hub {
    /// Opens the session of a device (`module: None`) or of one of its modules: the one path of
    /// [`Gateway::connect`] and [`Gateway::connect_module`], so both get the same throttling,
    /// takeover, events and re-check. A module's session is listed under its own key, so it
    /// never takes over its device's session or a sibling's.
    async fn open_session(
        &self,
        device: &DeviceId,
        module: Option<&ModuleId>,
        credential: Presented<'_>,
        options: SessionOptions,
    ) -> Result<Box<dyn DeviceSession>> {
        let hub = &self.inner;
        if hub.shut.load(Ordering::SeqCst) {
            return Err(Error::Shutdown);
        }
        if let Some(model) = &options.model_id {
            validate::check_system(&[(crate::message::header::MODEL_ID, &options.model_id)])
                .map_err(|_| {
                    Error::invalid(format!(
                        "the model id must be a property value (at most {} bytes, no control characters); got {} bytes",
                        validate::MAX_PROPERTY_VALUE,
                        model.len()
                    ))
                })?;
        }
        // Before authenticating, only the address's failure record counts: the device named
        // may be anyone's claim. Its own budget is spent once it proved who it is.
        hub.connect_throttle.admit(device, options.peer)?;
        let auth_method = match module {
            Some(_) => stamp::AuthMethod::of_module(&credential),
            None => stamp::AuthMethod::of(&credential),
        };
        let authenticated = match module {
            Some(module) => {
                iot_identity::authenticate_module(
                    &hub.auth,
                    hub.modules.as_ref(),
                    device,
                    module,
                    credential,
                    iot_identity::sas::unix_now(),
                )
                .await
            }
            None => hub.auth.authenticate(device, credential).await,
        };
        let who = match authenticated {
            Ok(who) => who,
            Err(e) => {
                let e = Error::from_auth(device, e);
                if matches!(e, Error::Unauthorized { .. }) {
                    hub.connect_throttle.failed(options.peer);
                }
                return Err(e);
            }
        };
        hub.stats.throttled(hub.connect_throttle.take(device))?;
        // A policy's token proves the hub's key, not the device's: IoT Hub stamps scope `hub`.
        let auth_method = if who.policy.is_some() {
            stamp::AuthMethod::HUB_SAS
        } else {
            auth_method
        };
        let shared = Arc::new(SessionShared::new(
            hub.next_session.fetch_add(1, Ordering::Relaxed),
            who,
            module.cloned(),
            auth_method,
            options,
            &hub.telemetry_throttle,
            hub.config.token_skew,
        ));
        let old = lock(&hub.sessions).insert(shared.key.clone(), shared.clone());
        if let Some(observer) = hub.observer.as_ref().filter(|_| module.is_none()) {
            observer.opened(device, shared.id);
        }
        if let Some(old) = old {
            hub.close_session(&old, CloseReason::TakenOver).await;
        }
        // After the old session's close, which records its disconnect.
        if module.is_none() {
            hub.activity.connected(device, Timestamp::now());
        }
        if let Err(e) = hub
            .events
            .send(records::connection_event(
                &hub.hub_name,
                &shared.key,
                true,
                None,
                hub.event_seq.fetch_add(1, Ordering::Relaxed),
            ))
            .await
        {
            // The device gets an error, so it holds no session: unlist this one (and tell the
            // observer), or the device would stay "connected" with nobody to close it.
            hub.close_session(&shared, CloseReason::ClientClosed).await;
            return Err(e.into());
        }
        // A change published between authentication and registration found no session to
        // close: look again now that the session is visible.
        hub.recheck(&shared).await;
        hub.bump_sessions();
        hub.stats.opened();
        debug!(session = shared.id, "session opened");
        Ok(Box::new(HubSession::new(self.inner.clone(), shared)))
    }

    /// Pushes a desired patch to the session of a device or of a module, after writing it. The
    /// twin change event is `kind`: `updateTwin` carries the patch, `replaceTwin` the desired
    /// properties as they are now.
    async fn patch_desired_of(
        &self,
        key: &EndpointId,
        patch: Value,
        if_version: Option<u64>,
        kind: EventKind,
    ) -> Result<Twin> {
        let hub = &self.inner;
        hub.stats
            .throttled(hub.twin_throttle.take_hub(&key.device))?;
        let _order = hub.desired_lock.lock().await;
        let twin = hub
            .patch_twin_of(key, Section::Desired, &patch, if_version)
            .await?;
        let version = twin.desired.version;
        let changed = match kind {
            EventKind::ReplaceTwin => &twin.desired.properties,
            _ => &patch,
        };
        hub.twin_changes
            .send(records::twin_change(
                &hub.hub_name,
                key,
                kind,
                "desired",
                version,
                changed,
            ))
            .await?;
        hub.stats
            .message_in(InKind::DesiredPatch, patch.to_string().len(), None);
        if let Some(s) = hub.endpoint_session(key) {
            s.push_desired(DesiredPatch::new(version, patch), hub.config.desired_queue);
        }
        Ok(twin)
    }

    /// Invokes a method on the session of a device or of a module.
    async fn invoke_on(&self, key: &EndpointId, call: MethodCall) -> Result<MethodResponse> {
        let hub = &self.inner;
        let device = &key.device;
        // Charged before waiting, so that calls queued for an offline device count too (a
        // module's calls count against its device's budget).
        hub.stats.throttled(hub.method_throttle.take(device))?;
        hub.stats
            .message_in(InKind::MethodInvoke, call.payload.len(), Some(device));
        // Wait (up to the connect timeout) for a session that takes method requests.
        let deadline = tokio::time::Instant::now() + call.connect_timeout;
        let mut changed = hub.sessions_changed.subscribe();
        let session = loop {
            changed.borrow_and_update();
            if let Some(s) = hub.endpoint_session(key).filter(|s| s.takes_methods()) {
                break s;
            }
            match tokio::time::timeout_at(deadline, changed.changed()).await {
                Ok(Ok(())) => continue,
                _ => {
                    return Err(Error::DeviceOffline {
                        device: device.clone(),
                    });
                }
            }
        };
        let request_id = hub.next_request.fetch_add(1, Ordering::Relaxed);
        let (reply, answer) = oneshot::channel();
        // However this call ends (answer, timeout, or the caller dropping it), the request is
        // forgotten, so that abandoned calls cannot pile up for a device that never answers.
        let _forget = ForgetMethod {
            hub,
            session: &session,
            request_id,
        };
        lock(&hub.methods).insert(
            request_id,
            PendingMethod {
                device: device.clone(),
                session: session.id,
                reply,
            },
        );
        let request = MethodRequest::new(request_id, call.name, call.payload);
        if let Err(e) = session.push_method(request, hub.config.method_queue) {
            lock(&hub.methods).remove(&request_id);
            return Err(e);
        }
        match tokio::time::timeout(call.response_timeout, answer).await {
            // The answer, or why the device's answer was refused.
            Ok(Ok(answer)) => answer,
            // The session closed before answering.
            Ok(Err(_)) => Err(Error::DeviceOffline {
                device: device.clone(),
            }),
            Err(_) => {
                lock(&hub.methods).remove(&request_id);
                session.forget_method(request_id);
                Err(Error::TimedOut {
                    device: device.clone(),
                    operation: "method response",
                    after: call.response_timeout,
                })
            }
        }
    }

    /// The checks every method call passes before it looks for a session.
    fn check_call(&self, call: &MethodCall) -> Result<()> {
        let config = &self.inner.config;
        check_method_name(&call.name)?;
        check_json("method payload", &call.payload, config.max_method_payload)?;
        let max = config.max_method_timeout;
        if call.response_timeout.is_zero()
            || call.response_timeout > max
            || call.connect_timeout > max
        {
            return Err(Error::invalid(format!(
                "method timeouts are at most {max:?} and the response timeout is positive"
            )));
        }
        Ok(())
    }
}

#[async_trait]
impl Gateway for Hub {
    #[instrument(level = "debug", skip_all, fields(device = %device))]
    async fn connect(
        &self,
        device: &DeviceId,
        credential: Presented<'_>,
        options: SessionOptions,
    ) -> Result<Box<dyn DeviceSession>> {
        self.open_session(device, None, credential, options).await
    }

    #[instrument(level = "debug", skip_all, fields(device = %device, module = %module))]
    async fn connect_module(
        &self,
        device: &DeviceId,
        module: &ModuleId,
        credential: Presented<'_>,
        options: SessionOptions,
    ) -> Result<Box<dyn DeviceSession>> {
        self.open_session(device, Some(module), credential, options)
            .await
    }

    async fn get_module_twin(&self, device: &DeviceId, module: &ModuleId) -> Result<Twin> {
        let hub = &self.inner;
        hub.require_module(device, module).await?;
        hub.stats.throttled(hub.twin_throttle.take_hub(device))?;
        hub.twins.get_module(device, module).await
    }

    #[instrument(level = "debug", skip_all, fields(device = %device, module = %module))]
    async fn patch_module_desired(
        &self,
        device: &DeviceId,
        module: &ModuleId,
        patch: Value,
        if_version: Option<u64>,
    ) -> Result<Twin> {
        self.inner.require_module(device, module).await?;
        let key = EndpointId::module(device.clone(), module.clone());
        self.patch_desired_of(&key, patch, if_version, EventKind::UpdateTwin)
            .await
    }

    #[instrument(level = "debug", skip_all, fields(device = %device, module = %module, method = %call.name))]
    async fn invoke_module_method(
        &self,
        device: &DeviceId,
        module: &ModuleId,
        call: MethodCall,
    ) -> Result<MethodResponse> {
        self.check_call(&call)?;
        self.inner.require_module(device, module).await?;
        let key = EndpointId::module(device.clone(), module.clone());
        self.invoke_on(&key, call).await
    }

    async fn is_module_connected(&self, device: &DeviceId, module: &ModuleId) -> Result<bool> {
        let key = EndpointId::module(device.clone(), module.clone());
        Ok(lock(&self.inner.sessions).contains_key(&key))
    }

    #[instrument(level = "debug", skip_all, fields(device = %device))]
    async fn send_c2d(&self, device: &DeviceId, message: C2dMessage) -> Result<C2dReceipt> {
        let hub = &self.inner;
        hub.require_device(device).await?;
        let ttl = message.ttl.unwrap_or(hub.config.c2d_default_ttl);
        if ttl.is_zero() || ttl > hub.config.c2d_max_ttl {
            return Err(Error::invalid(format!(
                "a C2D time to live is between 1 ms and {:?}, got {ttl:?}",
                hub.config.c2d_max_ttl
            )));
        }
        let system = validate::check_system(&[
            (crate::message::header::MESSAGE_ID, &message.message_id),
            (
                crate::message::header::CORRELATION_ID,
                &message.correlation_id,
            ),
            (crate::message::header::CONTENT_TYPE, &message.content_type),
            (
                crate::message::header::CONTENT_ENCODING,
                &message.content_encoding,
            ),
        ])?;
        let size =
            message.payload.len() + system + validate::check_properties(&message.properties)?;
        if size > hub.config.max_message_bytes {
            return Err(Error::TooLarge {
                what: "C2D message",
                size,
                limit: hub.config.max_message_bytes,
            });
        }
        let now = Timestamp::now();
        let message_id = message
            .message_id
            .unwrap_or_else(|| format!("{:032x}", rand::random::<u128>()));
        let mut stored = InboxMessage::new(message_id.clone(), message.payload, now, ttl);
        stored.correlation_id = message.correlation_id;
        stored.content_type = message.content_type;
        stored.content_encoding = message.content_encoding;
        stored.properties = message.properties;
        stored.ack = message.ack;
        let expires_at = stored.expires_at;
        let (_, removed) = hub
            .inbox
            .enqueue(device, stored, now, hub.config.inbox)
            .await?;
        hub.report(&removed).await?;
        hub.stats.message_in(InKind::C2d, size, Some(device));
        if let Some(s) = hub.session_of(device) {
            s.wake();
        }
        Ok(C2dReceipt {
            message_id,
            expires_at,
        })
    }

    async fn read_feedback(&self, from: u64, max: usize) -> Result<Vec<Feedback>> {
        let log = &self.inner.feedback;
        let p = PartitionId(0);
        let (earliest, next) = (log.earliest_offset(p).await?, log.next_offset(p).await?);
        let from = Offset(from.max(earliest.0));
        if from >= next || max == 0 {
            return Ok(Vec::new());
        }
        let records = log.read(p, from, ReadLimits::records(max)).await?;
        Ok(records
            .iter()
            .filter_map(|r| records::decode_feedback(r.offset.0, &r.record.payload))
            .collect())
    }

    async fn feedback_completed(&self) -> Result<u64> {
        let committed = self
            .inner
            .feedback
            .committed(&feedback_receivers()?, PartitionId(0))
            .await?;
        Ok(committed.map_or(0, |o| o.0))
    }

    async fn complete_feedback(&self, next: u64) -> Result<()> {
        let hub = &self.inner;
        let (group, p) = (feedback_receivers()?, PartitionId(0));
        // Read, compare and commit in turn: two receivers completing at once must not move the
        // position back. (Instances of a cluster each have their own turn: there the later of
        // two concurrent commits wins, and feedback after the smaller is delivered again.)
        let _turn = hub.feedback_completion.lock().await;
        let current = hub.feedback.committed(&group, p).await?.map_or(0, |o| o.0);
        let next = next.min(hub.feedback.next_offset(p).await?.0);
        if next > current {
            hub.feedback.commit(&group, p, Offset(next)).await?;
        }
        Ok(())
    }

    async fn get_twin(&self, device: &DeviceId) -> Result<Twin> {
        let hub = &self.inner;
        hub.require_device(device).await?;
        hub.stats.throttled(hub.twin_throttle.take_hub(device))?;
        hub.twins.get(device).await
    }

    #[instrument(level = "debug", skip_all, fields(device = %device))]
    async fn patch_desired(
        &self,
        device: &DeviceId,
        patch: Value,
        if_version: Option<u64>,
    ) -> Result<Twin> {
        self.inner.require_device(device).await?;
        let key = EndpointId::device(device.clone());
        self.patch_desired_of(&key, patch, if_version, EventKind::UpdateTwin)
            .await
    }

    #[instrument(level = "debug", skip_all, fields(device = %device))]
    async fn replace_desired(
        &self,
        device: &DeviceId,
        patch: Value,
        if_version: Option<u64>,
    ) -> Result<Twin> {
        self.inner.require_device(device).await?;
        let key = EndpointId::device(device.clone());
        self.patch_desired_of(&key, patch, if_version, EventKind::ReplaceTwin)
            .await
    }

    #[instrument(level = "debug", skip_all, fields(device = %device, method = %call.name))]
    async fn invoke_method(&self, device: &DeviceId, call: MethodCall) -> Result<MethodResponse> {
        self.check_call(&call)?;
        self.inner.require_device(device).await?;
        self.invoke_on(&EndpointId::device(device.clone()), call)
            .await
    }

    async fn connected_devices(&self) -> Result<Vec<DeviceId>> {
        let mut devices: Vec<_> = lock(&self.inner.sessions)
            .keys()
            .filter(|k| k.module.is_none())
            .map(|k| k.device.clone())
            .collect();
        devices.sort();
        Ok(devices)
    }

    async fn is_connected(&self, device: &DeviceId) -> Result<bool> {
        Ok(self.inner.session_of(device).is_some())
    }

    async fn activity(&self, device: &DeviceId) -> Result<DeviceActivity> {
        let hub = &self.inner;
        let live = hub.session_of(device).and_then(|s| s.last_active.get());
        Ok(hub.activity.get(device, live))
    }

    async fn check_desired(
        &self,
        device: &DeviceId,
        patch: &Value,
        if_version: Option<u64>,
    ) -> Result<()> {
        let hub = &self.inner;
        hub.require_device(device).await?;
        // The same pure rule every twin store applies when it writes (`Twin::patched`).
        hub.twins.get(device).await?.patched(
            device,
            Section::Desired,
            patch,
            if_version,
            hub.config.twin,
        )?;
        Ok(())
    }

    async fn pending_c2d(&self, device: &DeviceId) -> Result<usize> {
        self.inner.inbox.depth(device).await
    }

    async fn purge_c2d(&self, device: &DeviceId) -> Result<usize> {
        let removed = self.inner.inbox.remove_device(device).await?;
        tracing::info!(%device, removed, "C2D queue purged");
        Ok(removed)
    }

    fn settles_c2d_by_token(&self) -> bool {
        true
    }

    async fn settle_c2d(
        &self,
        device: &DeviceId,
        token: LockToken,
        settlement: Settlement,
    ) -> Result<()> {
        Hub::settle_c2d(self, device, token, settlement).await
    }
}

/// The consumer group whose commit on the feedback log is the feedback queue's completed
/// position ([`Gateway::feedback_completed`]).
fn feedback_receivers() -> Result<iot_core::GroupName> {
    Ok(iot_core::GroupName::new("feedback-receivers")?)
}
