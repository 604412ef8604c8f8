//! One device's gateway events, shared by its links on a connection.
//!
//! A gateway session hands out C2D messages, method requests and desired patches through one
//! `next_event` stream, which only one task may read. The C2D, method and twin links of a
//! device each need their own kind, so a pump per device and connection reads the stream and
//! routes each event to the link of its kind; events wait in the router while no such link is
//! attached (C2D messages stay locked to the session, as they would with one link).
//!
//! The pump follows the device's grant: after a renewal it reads the new session and
//! subscribes it to the kinds the links asked for. When the session closes without a renewal,
//! [`Router::closed`] is cancelled and the links close.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};

use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;

use super::claims::DeviceGrant;
use super::convert::AmqpMessage;
use crate::gateway::{DeviceSession, SessionEvent, Subscription};
use crate::message::C2dDelivery;
use crate::method::MethodRequest;
use crate::twins::DesiredPatch;

/// Twin answers and pushes that may wait for the twin receiver link; past this, more are
/// dropped (a client that sends requests without reading answers gains nothing by it).
const TWIN_QUEUE: usize = 64;

/// A C2D delivery with the session whose lock it holds.
pub(super) type C2dItem = (Arc<dyn DeviceSession>, C2dDelivery);

/// Routes one device's events to its links.
#[derive(Debug)]
pub(super) struct Router {
    grant: watch::Receiver<Option<DeviceGrant>>,
    subscribed: Mutex<HashSet<Subscription>>,
    /// C2D deliveries, taken by the C2D link while it is attached.
    pub(super) c2d: tokio::sync::Mutex<mpsc::UnboundedReceiver<C2dItem>>,
    /// Method requests, taken by the method receiver link while it is attached.
    pub(super) methods: tokio::sync::Mutex<mpsc::UnboundedReceiver<MethodRequest>>,
    /// Twin answers and desired patches, sent on the twin receiver link.
    twin_tx: mpsc::Sender<AmqpMessage>,
    pub(super) twin_rx: tokio::sync::Mutex<mpsc::Receiver<AmqpMessage>>,
    /// Cancelled when the device's session closed without a renewal (or the connection ended).
    pub(super) closed: CancellationToken,
}

impl Router {
    /// A router for the device whose grant is `grant`, with its pump started.
    pub(super) fn start(
        grant: watch::Receiver<Option<DeviceGrant>>,
        conn_closed: CancellationToken,
    ) -> Arc<Router> {
        let (c2d_tx, c2d_rx) = mpsc::unbounded_channel();
        let (method_tx, method_rx) = mpsc::unbounded_channel();
        let (twin_tx, twin_rx) = mpsc::channel(TWIN_QUEUE);
        let router = Arc::new(Router {
            grant,
            subscribed: Mutex::new(HashSet::new()),
            c2d: tokio::sync::Mutex::new(c2d_rx),
            methods: tokio::sync::Mutex::new(method_rx),
            twin_tx,
            twin_rx: tokio::sync::Mutex::new(twin_rx),
            closed: conn_closed.child_token(),
        });
        tokio::spawn(pump(router.clone(), c2d_tx, method_tx));
        router
    }

    /// The device's current session, if its grant is current.
    pub(super) fn session(&self) -> Option<Arc<dyn DeviceSession>> {
        self.grant.borrow().as_ref().map(|g| g.session.clone())
    }

    /// The device's grant (for links that watch its expiry).
    pub(super) fn grant(&self) -> watch::Receiver<Option<DeviceGrant>> {
        self.grant.clone()
    }

    /// Subscribes the current session (and every later one) to `kind`.
    pub(super) async fn subscribe(&self, kind: Subscription) -> crate::Result<()> {
        lock(&self.subscribed).insert(kind);
        match self.session() {
            Some(session) => session.subscribe(kind).await,
            None => Err(crate::Error::Shutdown),
        }
    }

    /// Stops `kind` on the current session and on later ones.
    pub(super) async fn unsubscribe(&self, kind: Subscription) {
        lock(&self.subscribed).remove(&kind);
        if let Some(session) = self.session()
            && let Err(e) = session.unsubscribe(kind).await
        {
            tracing::debug!(error = %e, ?kind, "AMQP unsubscribe failed");
        }
    }

    /// Sends a twin answer or a desired patch on the twin receiver link (when attached).
    pub(super) fn to_twin_link(&self, message: AmqpMessage) {
        if let Err(e) = self.twin_tx.try_send(message) {
            tracing::debug!(error = %e, "AMQP twin queue full: message dropped");
        }
    }
}

async fn pump(
    router: Arc<Router>,
    c2d: mpsc::UnboundedSender<C2dItem>,
    methods: mpsc::UnboundedSender<MethodRequest>,
) {
    let mut grant = router.grant.clone();
    let mut session = match grant.borrow_and_update().as_ref() {
        Some(g) => g.session.clone(),
        None => {
            router.closed.cancel();
            return;
        }
    };
    loop {
        let event = tokio::select! {
            event = session.next_event() => event,
            changed = grant.changed() => {
                let next = grant.borrow_and_update().as_ref().map(|g| g.session.clone());
                match (changed, next) {
                    (Ok(()), Some(next)) => {
                        if !Arc::ptr_eq(&next, &session) {
                            session = next;
                            let kinds: Vec<Subscription> =
                                lock(&router.subscribed).iter().copied().collect();
                            for kind in kinds {
                                if let Err(e) = session.subscribe(kind).await {
                                    tracing::debug!(error = %e, ?kind, "AMQP resubscribe failed");
                                }
                            }
                        }
                        continue;
                    }
                    _ => break,
                }
            }
            () = router.closed.cancelled() => return,
        };
        match event {
            Ok(SessionEvent::C2d(delivery)) => {
                let _ = c2d.send((session.clone(), delivery));
            }
            Ok(SessionEvent::Method(request)) => {
                let _ = methods.send(request);
            }
            Ok(SessionEvent::DesiredPatch(patch)) => {
                router.to_twin_link(desired_message(&patch));
            }
            Ok(SessionEvent::Closed(reason)) => {
                // Taken over by a renewal: the grant already carries the next session.
                let renewed = grant
                    .borrow()
                    .as_ref()
                    .is_some_and(|g| !Arc::ptr_eq(&g.session, &session));
                if renewed {
                    continue;
                }
                tracing::debug!(%reason, "AMQP: the device's session closed");
                break;
            }
            Err(e) => {
                tracing::debug!(error = %e, "AMQP: next_event failed");
                if grant.borrow().is_none() {
                    break;
                }
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            }
        }
    }
    router.closed.cancel();
}

/// A desired-property patch as IoT Hub pushes it on the twin receiver link: the patch with
/// its `$version` in a data section, no correlation id.
fn desired_message(patch: &DesiredPatch) -> AmqpMessage {
    super::twin::message(
        None,
        None,
        Some(patch.version),
        patch.to_versioned_json().to_string().into_bytes(),
    )
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}
