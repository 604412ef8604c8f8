//! `ClusterHub`: a [`Gateway`] over a local [`Hub`] that, with the other instances of its
//! cluster, acts as one hub.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_nats::client::RequestErrorKind;
use async_nats::{Client, Request};
use async_trait::async_trait;
use iot_core::DeviceId;
use iot_gateway::{
    C2dMessage, C2dReceipt, DeviceActivity, DeviceSession, Error, Feedback, Gateway, Hub,
    HubBuilder, MethodCall, MethodResponse, Result, SessionOptions, Twin,
};
use iot_identity::Presented;
use serde_json::Value;
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tracing::warn;

use super::config::ClusterConfig;
use super::node::{self, Node, nats_error};
use super::wire::{self, MethodAsk, Notice};

/// One instance of a cluster of hubs.
///
/// Build each instance's [`Hub`] over the stores every instance shares (the PostgreSQL
/// identity store, inbox and twin store; the NATS log), and hand its builder to
/// [`ClusterHub::start`] with a NATS client. Endpoints (MQTT, HTTP) serve a `ClusterHub` as any
/// [`Gateway`]. What it adds to the local hub:
///
/// * every instance knows which instance holds each device (announced over NATS, with a lease);
/// * `send_c2d` and `patch_desired` notify the holder, which wakes or feeds the device's session;
/// * `invoke_method` is routed to the holder (NATS request/reply) and its answer returned;
/// * a device that connects here closes its session on any other instance (`TakenOver`);
/// * `connected_devices` and `is_connected` answer for the whole cluster.
///
/// Revocation needs nothing more: each hub follows the shared identity store's change stream
/// (`PgIdentityStore` carries it across processes with `LISTEN`/`NOTIFY`) and cuts its own
/// sessions. docs/cluster.md has the design.
///
/// `ClusterHub` is cheap to clone (all clones are one instance). Dropping the last clone without
/// [`shutdown`](ClusterHub::shutdown) stops the coordination without a goodbye, as a crash
/// would: the others drop its devices when its lease lapses.
#[derive(Clone, Debug)]
pub struct ClusterHub {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    hub: Hub,
    node: Arc<Node>,
    tasks: Mutex<Vec<JoinHandle<()>>>,
}

impl Drop for Inner {
    fn drop(&mut self) {
        for task in self
            .tasks
            .get_mut()
            .unwrap_or_else(|e| e.into_inner())
            .drain(..)
        {
            task.abort();
        }
    }
}

impl ClusterHub {
    /// Builds the hub from `builder` (with this instance as its session observer) and joins
    /// the cluster on `client`. Needs a tokio runtime with a timer.
    pub async fn start(client: Client, builder: HubBuilder, config: ClusterConfig) -> Result<Self> {
        config.validate()?;
        let (node, queues) = Node::new(config, client);
        let hub = builder.session_observer(node.clone()).build().await?;
        let tasks = match node::start(&node, queues, &hub).await {
            Ok(tasks) => tasks,
            Err(e) => {
                hub.shutdown().await;
                return Err(e);
            }
        };
        Ok(ClusterHub {
            inner: Arc::new(Inner {
                hub,
                node,
                tasks: Mutex::new(tasks),
            }),
        })
    }

    /// The local hub (its logs, its inbox, its own sessions).
    pub fn hub(&self) -> &Hub {
        &self.inner.hub
    }

    /// This instance's id.
    pub fn instance(&self) -> &str {
        &self.inner.node.config.instance
    }

    /// The other instances this one hears from (their leases are current), in id order.
    pub fn peers(&self) -> Vec<String> {
        self.inner.node.peers()
    }

    /// The instance holding `device`: `Some(id)`, `None` when no live instance does (this
    /// instance's own id when it does).
    pub fn holder(&self, device: &DeviceId) -> Option<String> {
        self.inner
            .node
            .holder(device)
            .map(|h| h.unwrap_or_else(|| self.instance().to_owned()))
    }

    /// Closes this instance's sessions ([`CloseReason::Shutdown`](iot_gateway::CloseReason)),
    /// tells the others it leaves (so they do not wait for its lease) and stops its tasks.
    pub async fn shutdown(&self) {
        self.inner.hub.shutdown().await;
        self.inner.node.bye();
        self.inner.node.flush().await;
        let tasks: Vec<_> = self
            .inner
            .tasks
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .drain(..)
            .collect();
        for task in tasks {
            task.abort();
        }
    }

    async fn notify(&self, device: &DeviceId, version: Option<u64>, body: &[u8]) {
        let node = &self.inner.node;
        let notice = Notice {
            origin: node.config.instance.clone(),
            device: device.clone(),
            version,
        };
        let subject = match version {
            None => node.subjects.wake(),
            Some(_) => node.subjects.desired(),
        };
        let frame = wire::encode(&notice, body);
        // Published before the call returns, so that one caller's patches leave in version
        // order. The write is done and durable; the notice only makes it arrive sooner, so a
        // lost one is logged, not returned (the device gets the message on its next subscribe
        // or connect, the patch with its next twin read). Bounded: while NATS is down the
        // client's buffer fills and would hold the caller.
        let publish = node.client.publish(subject, frame);
        match tokio::time::timeout(node.config.request_timeout, publish).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => warn!(%device, error = %e, "could not notify the cluster"),
            Err(_) => warn!(%device, "could not notify the cluster in time"),
        }
    }

    /// Sends `call` to `peer`, which holds `device`.
    async fn forward(
        &self,
        peer: &str,
        device: &DeviceId,
        call: MethodCall,
    ) -> Result<MethodResponse> {
        let node = &self.inner.node;
        let ask = MethodAsk {
            device: device.clone(),
            name: call.name,
            response_timeout_ms: millis(call.response_timeout),
            connect_timeout_ms: millis(call.connect_timeout),
        };
        let wait = call.connect_timeout + call.response_timeout + node.config.request_timeout;
        let request = Request::new()
            .payload(wire::encode(&ask, &call.payload))
            .timeout(Some(wait));
        match node
            .client
            .send_request(node.subjects.methods(peer), request)
            .await
        {
            Ok(reply) => node::method_answer(device, &reply.payload),
            // The holder is gone (its lease has not lapsed yet): nobody can answer.
            Err(e) if e.kind() == RequestErrorKind::NoResponders => Err(Error::DeviceOffline {
                device: device.clone(),
            }),
            // The request may have reached NATS before it noticed the holder die (a killed
            // process's subscriptions go when the server sees its connection close): if nobody
            // serves the holder now, the device was offline, not slow to answer.
            Err(e) if e.kind() == RequestErrorKind::TimedOut && node.is_gone(peer).await => {
                Err(Error::DeviceOffline {
                    device: device.clone(),
                })
            }
            Err(e) if e.kind() == RequestErrorKind::TimedOut => Err(Error::TimedOut {
                device: device.clone(),
                operation: "method response",
                after: call.response_timeout,
            }),
            Err(e) => Err(nats_error(e)),
        }
    }

    /// Resolves when another instance holds `device`, or never after `deadline`.
    async fn held_elsewhere(&self, device: &DeviceId, deadline: Instant) {
        let mut changed = self.inner.node.changed.subscribe();
        loop {
            if matches!(self.inner.node.holder(device), Some(Some(_))) {
                return;
            }
            match tokio::time::timeout_at(deadline, changed.changed()).await {
                Ok(Ok(())) => {}
                _ => std::future::pending::<()>().await,
            }
        }
    }
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

#[async_trait]
impl Gateway for ClusterHub {
    async fn connect(
        &self,
        device: &DeviceId,
        credential: Presented<'_>,
        options: SessionOptions,
    ) -> Result<Box<dyn DeviceSession>> {
        // The observer announces the session; other instances close theirs on hearing it.
        self.inner.hub.connect(device, credential, options).await
    }

    async fn send_c2d(&self, device: &DeviceId, message: C2dMessage) -> Result<C2dReceipt> {
        let receipt = self.inner.hub.send_c2d(device, message).await?;
        // Every instance hears it and wakes its session of the device, if it has one: the holder
        // as the directory says may be out of date by a connect that is still being announced.
        self.notify(device, None, &[]).await;
        Ok(receipt)
    }

    async fn read_feedback(&self, from: u64, max: usize) -> Result<Vec<Feedback>> {
        self.inner.hub.read_feedback(from, max).await
    }

    async fn feedback_completed(&self) -> Result<u64> {
        // The feedback log is shared: so is its completed position.
        self.inner.hub.feedback_completed().await
    }

    async fn complete_feedback(&self, next: u64) -> Result<()> {
        self.inner.hub.complete_feedback(next).await
    }

    async fn get_twin(&self, device: &DeviceId) -> Result<Twin> {
        self.inner.hub.get_twin(device).await
    }

    async fn patch_desired(
        &self,
        device: &DeviceId,
        patch: Value,
        if_version: Option<u64>,
    ) -> Result<Twin> {
        let body = serde_json::to_vec(&patch).map_err(|e| Error::InvalidInput {
            reason: e.to_string(),
        })?;
        let twin = self
            .inner
            .hub
            .patch_desired(device, patch, if_version)
            .await?;
        self.notify(device, Some(twin.desired.version), &body).await;
        Ok(twin)
    }

    async fn replace_desired(
        &self,
        device: &DeviceId,
        patch: Value,
        if_version: Option<u64>,
    ) -> Result<Twin> {
        let body = serde_json::to_vec(&patch).map_err(|e| Error::InvalidInput {
            reason: e.to_string(),
        })?;
        let twin = self
            .inner
            .hub
            .replace_desired(device, patch, if_version)
            .await?;
        self.notify(device, Some(twin.desired.version), &body).await;
        Ok(twin)
    }

    async fn check_desired(
        &self,
        device: &DeviceId,
        patch: &Value,
        if_version: Option<u64>,
    ) -> Result<()> {
        self.inner
            .hub
            .check_desired(device, patch, if_version)
            .await
    }

    async fn invoke_method(&self, device: &DeviceId, call: MethodCall) -> Result<MethodResponse> {
        let deadline = Instant::now() + call.connect_timeout;
        loop {
            let mut call = call.clone();
            call.connect_timeout = deadline.saturating_duration_since(Instant::now());
            match self.inner.node.holder(device) {
                Some(Some(peer)) => return self.forward(&peer, device, call).await,
                // Held here: the local hub has the session.
                Some(None) => return self.inner.hub.invoke_method(device, call).await,
                // Held nowhere: the local hub waits for a session here (and refuses bad input
                // at once), unless the device turns up on another instance first.
                None => {
                    tokio::select! {
                        answer = self.inner.hub.invoke_method(device, call) => return answer,
                        () = self.held_elsewhere(device, deadline) => continue,
                    }
                }
            }
        }
    }

    async fn connected_devices(&self) -> Result<Vec<DeviceId>> {
        Ok(self.inner.node.devices())
    }

    async fn is_connected(&self, device: &DeviceId) -> Result<bool> {
        Ok(self.inner.node.holder(device).is_some())
    }

    async fn activity(&self, device: &DeviceId) -> Result<DeviceActivity> {
        self.inner.hub.activity(device).await
    }

    async fn pending_c2d(&self, device: &DeviceId) -> Result<usize> {
        self.inner.hub.pending_c2d(device).await
    }

    async fn purge_c2d(&self, device: &DeviceId) -> Result<usize> {
        self.inner.hub.purge_c2d(device).await
    }
}
