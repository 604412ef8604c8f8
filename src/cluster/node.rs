//! One instance's side of the coordination: the observer its hub reports sessions to, and the
//! tasks that publish its presence, listen to the others and serve their requests.

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Instant;

use async_nats::client::RequestErrorKind;
use async_nats::{Client, Request, Subscriber};
use bytes::Bytes;
use futures::StreamExt;
use iot_core::{DeviceId, Timestamp};
use iot_gateway::{
    CloseReason, DesiredPatch, Error, Gateway, Hub, MethodCall, Result, SessionObserver,
};
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::JoinHandle;
use tracing::{debug, warn};

use super::config::ClusterConfig;
use super::directory::{Actions, Directory};
use super::wire::{
    self, Held, HeldAsk, MethodAnswer, MethodAsk, Notice, Presence, Subjects, WireError,
};

/// What the publishing task sends, in order.
#[derive(Debug)]
pub(crate) enum Outgoing {
    Presence(Presence),
    /// Answered once everything queued before it was handed to the client.
    Flush(oneshot::Sender<()>),
}

/// The state the hub's observer, the tasks and the `ClusterHub` share. Holds no `Hub` (the hub
/// holds it, as its observer).
#[derive(Debug)]
pub(crate) struct Node {
    pub(crate) config: ClusterConfig,
    pub(crate) subjects: Subjects,
    pub(crate) client: Client,
    directory: Mutex<Directory>,
    /// Bumped on every change of the directory, for method calls waiting for a device.
    pub(crate) changed: watch::Sender<u64>,
    outbox: mpsc::UnboundedSender<Outgoing>,
    /// Sessions of this instance to close: another instance has a newer one.
    take_over: mpsc::UnboundedSender<(DeviceId, u64)>,
    /// Instances whose list is being asked for, and whether it must be asked for again when
    /// that is done (a gap was seen meanwhile, which the list being fetched may predate).
    syncing: Mutex<HashMap<String, bool>>,
}

/// The receiving ends the tasks take.
#[derive(Debug)]
pub(crate) struct Queues {
    outbox: mpsc::UnboundedReceiver<Outgoing>,
    take_over: mpsc::UnboundedReceiver<(DeviceId, u64)>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // The state stays consistent across a panic (each change is one call), so go on.
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

fn now_us() -> u64 {
    Timestamp::now().as_unix_micros()
}

pub(crate) fn nats_error(e: impl std::error::Error + Send + Sync + 'static) -> Error {
    Error::backend("nats", e, true)
}

impl Node {
    pub(crate) fn new(config: ClusterConfig, client: Client) -> (Arc<Node>, Queues) {
        let (outbox, outbox_rx) = mpsc::unbounded_channel();
        let (take_over, take_over_rx) = mpsc::unbounded_channel();
        let node = Node {
            subjects: Subjects::new(&config.prefix),
            directory: Mutex::new(Directory::new(config.instance.clone(), now_us())),
            config,
            client,
            changed: watch::channel(0).0,
            outbox,
            take_over,
            syncing: Mutex::new(HashMap::new()),
        };
        let queues = Queues {
            outbox: outbox_rx,
            take_over: take_over_rx,
        };
        (Arc::new(node), queues)
    }

    fn bump(&self) {
        self.changed.send_modify(|n| *n = n.wrapping_add(1));
    }

    /// See [`Directory::holder`].
    pub(crate) fn holder(&self, device: &DeviceId) -> Option<Option<String>> {
        lock(&self.directory).holder(device)
    }

    pub(crate) fn devices(&self) -> Vec<DeviceId> {
        lock(&self.directory).devices()
    }

    pub(crate) fn peers(&self) -> Vec<String> {
        lock(&self.directory).peers()
    }

    /// Queues a presence message (ignored once the publisher stopped: the node is shutting down).
    fn send(&self, message: Presence) {
        let _ = self.outbox.send(Outgoing::Presence(message));
    }

    /// Waits until everything queued so far was handed to the NATS client, then flushes it;
    /// for at most the request timeout. Unbounded, a shutdown while NATS is unreachable would
    /// wait for it forever (the client's flush waits for the server's answer, reconnecting).
    pub(crate) async fn flush(&self) {
        let flushed = async {
            let (tx, rx) = oneshot::channel();
            if self.outbox.send(Outgoing::Flush(tx)).is_ok() {
                let _ = rx.await;
            }
            self.client.flush().await
        };
        match tokio::time::timeout(self.config.request_timeout, flushed).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => warn!(error = %e, "could not flush the cluster's messages"),
            Err(_) => warn!("could not flush the cluster's messages in time (NATS unreachable?)"),
        }
    }

    /// Announces that this instance leaves.
    pub(crate) fn bye(&self) {
        let mut bye = lock(&self.directory).beat();
        bye.what = wire::PresenceKind::Bye;
        self.send(bye);
    }

    fn act(self: &Arc<Self>, actions: Actions) {
        for t in actions.take_over {
            let _ = self.take_over.send(t);
        }
        for peer in actions.resync {
            self.resync(peer);
        }
    }

    /// Asks `peer` for its whole list and applies it; one request at a time per peer, repeated
    /// while gaps were seen during the last one.
    fn resync(self: &Arc<Self>, peer: String) {
        {
            let mut syncing = lock(&self.syncing);
            if let Some(again) = syncing.get_mut(&peer) {
                *again = true;
                return;
            }
            syncing.insert(peer.clone(), false);
        }
        let node = self.clone();
        tokio::spawn(async move {
            loop {
                // Unreachable or malformed: the peer's next heartbeat asks again.
                let Some(held) = node.fetch_held(&peer).await else {
                    lock(&node.directory).needs_list(&peer);
                    lock(&node.syncing).remove(&peer);
                    return;
                };
                let actions = lock(&node.directory).apply_held(&peer, held, Instant::now());
                node.bump();
                for t in actions.take_over {
                    let _ = node.take_over.send(t);
                }
                let mut syncing = lock(&node.syncing);
                let again = syncing.get(&peer).copied().unwrap_or(false);
                // The list could not be brought up to date from the announcements remembered.
                if again || !actions.resync.is_empty() {
                    syncing.insert(peer.clone(), false);
                } else {
                    syncing.remove(&peer);
                    return;
                }
            }
        });
    }
}

impl Node {
    /// Whether nobody serves `peer`'s subjects any more: NATS answers a request to them with
    /// "no responders" (its process is gone, and the server has noticed). Any other outcome,
    /// an answer included, is `false`.
    pub(crate) async fn is_gone(&self, peer: &str) -> bool {
        let ask = wire::encode(&HeldAsk { after: None }, &[]);
        let request = Request::new()
            .payload(ask)
            .timeout(Some(self.config.request_timeout));
        matches!(
            self.client.send_request(self.subjects.held(peer), request).await,
            Err(e) if e.kind() == RequestErrorKind::NoResponders
        )
    }

    /// `peer`'s whole list, its pages joined: as of the first page's counter (later pages may
    /// be newer, which the replay of announcements makes consistent).
    async fn fetch_held(&self, peer: &str) -> Option<Held> {
        let mut all: Option<Held> = None;
        let mut after = None;
        loop {
            let ask = wire::encode(&HeldAsk { after }, &[]);
            let request = Request::new()
                .payload(ask)
                .timeout(Some(self.config.request_timeout));
            let reply = match self
                .client
                .send_request(self.subjects.held(peer), request)
                .await
            {
                Ok(reply) => reply,
                Err(e) => {
                    debug!(peer = %peer, error = %e, "could not get an instance's devices");
                    return None;
                }
            };
            let Ok((page, _)) = wire::decode::<Held>(&reply.payload) else {
                warn!(peer = %peer, "an instance sent a malformed device list");
                return None;
            };
            after = page.next.clone();
            match &mut all {
                None => all = Some(page),
                // It restarted while being listed: start again with the new run.
                Some(first) if first.run != page.run => return None,
                Some(first) => first.devices.extend(page.devices),
            }
            if after.is_none() {
                return all;
            }
        }
    }
}

impl SessionObserver for Node {
    fn opened(&self, device: &DeviceId, session: u64) {
        let lost = {
            let mut dir = lock(&self.directory);
            let (announce, lost) = dir.opened_here(device, session, now_us());
            // Queued under the lock, so announcements leave in the order their counters say.
            self.send(announce);
            lost
        };
        if let Some(session) = lost {
            let _ = self.take_over.send((device.clone(), session));
        }
        self.bump();
    }

    fn closed(&self, device: &DeviceId, session: u64, _reason: &CloseReason) {
        {
            let mut dir = lock(&self.directory);
            if let Some(announce) = dir.closed_here(device, session) {
                self.send(announce);
            }
        }
        self.bump();
    }
}

/// Starts the instance's tasks; the subscriptions exist when this returns, so nothing published
/// afterwards is missed.
pub(crate) async fn start(
    node: &Arc<Node>,
    queues: Queues,
    hub: &Hub,
) -> Result<Vec<JoinHandle<()>>> {
    let client = &node.client;
    let subjects = &node.subjects;
    let me = &node.config.instance;
    let presence = client
        .subscribe(subjects.presence())
        .await
        .map_err(nats_error)?;
    let wakes = client
        .subscribe(subjects.wake())
        .await
        .map_err(nats_error)?;
    let desired = client
        .subscribe(subjects.desired())
        .await
        .map_err(nats_error)?;
    let methods = client
        .subscribe(subjects.methods(me))
        .await
        .map_err(nats_error)?;
    let held = client
        .subscribe(subjects.held(me))
        .await
        .map_err(nats_error)?;
    let tasks = vec![
        tokio::spawn(publish(node.clone(), queues.outbox)),
        tokio::spawn(heartbeat(node.clone(), hub.clone())),
        tokio::spawn(listen_presence(node.clone(), presence)),
        tokio::spawn(take_over(hub.clone(), queues.take_over)),
        tokio::spawn(listen_notices(node.clone(), hub.clone(), wakes)),
        tokio::spawn(listen_notices(node.clone(), hub.clone(), desired)),
        tokio::spawn(serve_methods(node.clone(), hub.clone(), methods)),
        tokio::spawn(serve_held(node.clone(), held)),
    ];
    // Say hello at once, so that the others ask for this instance's list.
    let beat = lock(&node.directory).beat();
    node.send(beat);
    Ok(tasks)
}

async fn publish(node: Arc<Node>, mut outbox: mpsc::UnboundedReceiver<Outgoing>) {
    let subject = node.subjects.presence();
    while let Some(out) = outbox.recv().await {
        match out {
            Outgoing::Presence(message) => {
                let frame = wire::encode(&message, &[]);
                // A lost announcement is repaired by the next heartbeat (its counter shows the
                // gap) as soon as NATS is back.
                if let Err(e) = node.client.publish(subject.clone(), frame).await {
                    warn!(error = %e, "could not publish the cluster presence");
                }
            }
            Outgoing::Flush(done) => {
                let _ = done.send(());
            }
        }
    }
}

async fn heartbeat(node: Arc<Node>, hub: Hub) {
    let mut ticks = tokio::time::interval(node.config.heartbeat);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let stats = node.client.statistics();
    let mut connects = stats.connects.load(Ordering::Relaxed);
    loop {
        ticks.tick().await;
        // Core NATS drops what is published to a client while it is disconnected: after a
        // reconnect, every session here looks in the inbox once, for wake-ups it may have
        // missed. (Lost presence is repaired by the counters; lost desired patches are not,
        // see docs/cluster.md.)
        let now_connects = stats.connects.load(Ordering::Relaxed);
        if now_connects != connects {
            connects = now_connects;
            let held = lock(&node.directory).held(None, usize::MAX);
            warn!(
                sessions = held.devices.len(),
                "reconnected to NATS; waking every session for C2D messages it may have missed"
            );
            for (device, _) in held.devices {
                hub.wake_c2d(&device);
            }
        }
        let (beat, gone, share) = {
            let mut dir = lock(&node.directory);
            let gone = dir.expire(Instant::now(), node.config.lease);
            (dir.beat(), gone, dir.quota_share())
        };
        node.send(beat);
        // Hub-wide quotas are split by the devices each instance holds, renewed every beat.
        if let Err(e) = hub.set_hub_quota_share(share) {
            warn!(error = %e, share, "could not set this instance's share of the hub-wide quotas");
        }
        if !gone.is_empty() {
            warn!(instances = ?gone, "cluster instances' leases lapsed; their devices are offline");
            node.bump();
        }
    }
}

async fn listen_presence(node: Arc<Node>, mut messages: Subscriber) {
    while let Some(message) = messages.next().await {
        let Ok((presence, _)) = wire::decode::<Presence>(&message.payload) else {
            warn!("a malformed cluster presence message was ignored");
            continue;
        };
        let actions = lock(&node.directory).heard(presence, Instant::now());
        node.bump();
        node.act(actions);
    }
}

async fn take_over(hub: Hub, mut queue: mpsc::UnboundedReceiver<(DeviceId, u64)>) {
    while let Some((device, session)) = queue.recv().await {
        let hub = hub.clone();
        // Each close on its own: one that waits on a store must not hold up the others.
        tokio::spawn(async move {
            if hub
                .close_device(&device, Some(session), CloseReason::TakenOver)
                .await
            {
                debug!(%device, session, "session taken over by another instance");
            }
        });
    }
}

/// Wake-ups and desired patches written through other instances, for this instance's sessions.
async fn listen_notices(node: Arc<Node>, hub: Hub, mut messages: Subscriber) {
    while let Some(message) = messages.next().await {
        let Ok((notice, body)) = wire::decode::<Notice>(&message.payload) else {
            warn!("a malformed cluster notice was ignored");
            continue;
        };
        if notice.origin == node.config.instance {
            continue; // the hub told its own session already
        }
        match notice.version {
            None => {
                hub.wake_c2d(&notice.device);
            }
            Some(version) => match serde_json::from_slice(&body) {
                Ok(patch) => {
                    hub.push_desired(&notice.device, DesiredPatch::new(version, patch));
                }
                Err(e) => {
                    warn!(device = %notice.device, error = %e, "a malformed desired patch notice was ignored")
                }
            },
        }
    }
}

/// Direct methods other instances route here: invoked on the local hub, answered on the reply
/// subject.
async fn serve_methods(node: Arc<Node>, hub: Hub, mut requests: Subscriber) {
    while let Some(message) = requests.next().await {
        let Some(reply) = message.reply.clone() else {
            continue;
        };
        let node = node.clone();
        let hub = hub.clone();
        tokio::spawn(async move {
            let answer = match wire::decode::<MethodAsk>(&message.payload) {
                Ok((ask, payload)) => {
                    let mut call = MethodCall::new(ask.name, payload);
                    call.response_timeout =
                        std::time::Duration::from_millis(ask.response_timeout_ms);
                    call.connect_timeout = std::time::Duration::from_millis(ask.connect_timeout_ms);
                    match hub.invoke_method(&ask.device, call).await {
                        Ok(response) => wire::encode(
                            &MethodAnswer::Ok {
                                request_id: response.request_id,
                                status: response.status,
                            },
                            &response.payload,
                        ),
                        Err(e) => wire::encode(&MethodAnswer::Err(WireError::from_error(&e)), &[]),
                    }
                }
                Err(e) => wire::encode(
                    &MethodAnswer::Err(WireError::from_error(&Error::InvalidInput {
                        reason: e.to_string(),
                    })),
                    &[],
                ),
            };
            if let Err(e) = node.client.publish(reply, answer).await {
                warn!(error = %e, "could not answer a routed method call");
            }
        });
    }
}

async fn serve_held(node: Arc<Node>, mut requests: Subscriber) {
    while let Some(message) = requests.next().await {
        let Some(reply) = message.reply else { continue };
        let after = wire::decode::<HeldAsk>(&message.payload)
            .ok()
            .and_then(|(ask, _)| ask.after);
        let held = lock(&node.directory).held(after.as_ref(), wire::HELD_PAGE);
        if let Err(e) = node.client.publish(reply, wire::encode(&held, &[])).await {
            warn!(error = %e, "could not answer a device-list request");
        }
    }
}

/// A routed method's answer, as the caller's instance returns it.
pub(crate) fn method_answer(
    device: &DeviceId,
    payload: &Bytes,
) -> Result<iot_gateway::MethodResponse> {
    let (answer, body) =
        wire::decode::<MethodAnswer>(payload).map_err(|e| Error::backend("cluster", e, false))?;
    match answer {
        MethodAnswer::Ok { request_id, status } => Ok(iot_gateway::MethodResponse {
            request_id,
            status,
            payload: body,
        }),
        MethodAnswer::Err(e) => Err(e.into_error(device)),
    }
}
