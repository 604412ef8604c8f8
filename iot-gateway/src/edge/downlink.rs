//! What the cloud sends a leaf: each leaf's upstream client receives it and hands it to the
//! local hub, which delivers it to the leaf's local session (or holds it, as a hub does).

use std::sync::Arc;

use iot_core::{DeviceId, Timestamp};
use serde_json::{Value, json};
use tokio::task::JoinHandle;
use tracing::{debug, warn};

use super::convert;
use super::options::ForwarderOptions;
use crate::client::{self, DeviceClient};
use crate::error::Error;
use crate::gateway::Gateway;
use crate::method::MethodCall;

/// Starts passing `leaf`'s C2D messages, direct methods and desired patches from `upstream` to
/// `local`. The task subscribes first (the subscriptions wait for the link and survive
/// reconnects) and ends when the client closes.
pub(crate) fn spawn(
    leaf: DeviceId,
    upstream: Arc<DeviceClient>,
    local: Arc<dyn Gateway>,
    options: Arc<ForwarderOptions>,
) -> JoinHandle<()> {
    tokio::spawn(async move {
        let subscribed = async {
            Ok::<_, client::ClientError>((
                upstream.c2d_messages().await?,
                upstream.method_calls().await?,
                upstream.desired_patches().await?,
            ))
        };
        let (mut c2d, mut methods, mut desired) = match subscribed.await {
            Ok(streams) => streams,
            Err(e) => {
                warn!(leaf = %leaf, error = %e, "upstream subscriptions failed; no downlink");
                return;
            }
        };
        // Drop the client handle: the forwarder owns the link, and holding it here would keep
        // its connection task alive after the forwarder let it go.
        drop(upstream);
        loop {
            tokio::select! {
                Some(message) = c2d.recv() => c2d_down(&leaf, &*local, message).await,
                Some(call) = methods.recv() => {
                    tokio::spawn(method_down(leaf.clone(), local.clone(), options.clone(), call));
                }
                Some(patch) = desired.recv() => desired_down(&leaf, &*local, patch).await,
                else => return,
            }
        }
    })
}

/// Queues the message in the local inbox, then completes it upstream: once the local hub holds
/// it durably, the cloud's copy has done its job. A message the local hub refuses is left
/// uncompleted: the cloud hub delivers it again after the next reconnect (or dead-letters it).
async fn c2d_down(leaf: &DeviceId, local: &dyn Gateway, message: client::C2dMessage) {
    let local_message = convert::local_c2d(&message, Timestamp::now());
    match local.send_c2d(leaf, local_message).await {
        Ok(receipt) => {
            debug!(leaf = %leaf, message_id = %receipt.message_id, "C2D message passed down");
            if message.complete().is_err() {
                debug!(leaf = %leaf, "upstream client closed before the C2D completion");
            }
        }
        Err(e) => warn!(leaf = %leaf, error = %e, "the local hub refused a C2D message"),
    }
}

/// Invokes the method on the local hub and answers the cloud with the leaf's status and body,
/// or with 404 (leaf not connected to the field gateway), 504 (no answer in time) or 500.
async fn method_down(
    leaf: DeviceId,
    local: Arc<dyn Gateway>,
    options: Arc<ForwarderOptions>,
    call: client::MethodCall,
) {
    let mut local_call = MethodCall::new(call.name.clone(), call.payload.clone());
    local_call.connect_timeout = options.method_connect_timeout;
    local_call.response_timeout = options.method_response_timeout;
    let (status, body) = match local.invoke_method(&leaf, local_call).await {
        Ok(response) => {
            let status = u16::try_from(response.status).unwrap_or(500);
            let body = if response.payload.is_empty() {
                Value::Null
            } else {
                serde_json::from_slice(&response.payload).unwrap_or(Value::Null)
            };
            (status, body)
        }
        Err(e @ Error::DeviceOffline { .. }) | Err(e @ Error::DeviceNotFound { .. }) => {
            (404, json!({ "message": e.to_string() }))
        }
        Err(e @ Error::TimedOut { .. }) => (504, json!({ "message": e.to_string() })),
        Err(e) => (500, json!({ "message": e.to_string() })),
    };
    if call.respond(status, &body).is_err() {
        debug!(leaf = %leaf, "upstream client closed before the method answer");
    }
}

/// Applies a desired-properties patch from the cloud to the local twin (without the cloud's
/// `$version`: the local twin counts its own versions).
async fn desired_down(leaf: &DeviceId, local: &dyn Gateway, patch: client::DesiredPatch) {
    let mut patch = patch.patch;
    if let Some(object) = patch.as_object_mut() {
        object.remove("$version");
    }
    if let Err(e) = local.patch_desired(leaf, patch, None).await {
        warn!(leaf = %leaf, error = %e, "the local hub refused a desired patch");
    }
}
