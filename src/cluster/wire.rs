//! What instances say to each other over core NATS: the messages, their subjects and their
//! encoding.
//!
//! A frame is a JSON header (length-prefixed, 4 bytes big-endian) followed by an opaque body (a
//! method payload, a desired patch), so that payloads travel as the bytes they are.

use std::time::Duration;

use bytes::{BufMut, Bytes, BytesMut};
use iot_gateway::{Error, ThrottleScope, ThrottledOperation};
use serde::{Deserialize, Serialize};

use iot_core::DeviceId;

/// The subjects of a cluster under `prefix`.
#[derive(Clone, Debug)]
pub(crate) struct Subjects {
    prefix: String,
}

impl Subjects {
    pub(crate) fn new(prefix: &str) -> Self {
        Subjects {
            prefix: prefix.to_owned(),
        }
    }

    /// Heartbeats and who holds which device. One subject, so that each instance's messages
    /// reach every other instance in the order it sent them.
    pub(crate) fn presence(&self) -> String {
        format!("{}.presence", self.prefix)
    }

    /// "A C2D message was queued for this device."
    pub(crate) fn wake(&self) -> String {
        format!("{}.wake", self.prefix)
    }

    /// "This desired patch was written."
    pub(crate) fn desired(&self) -> String {
        format!("{}.desired", self.prefix)
    }

    /// Direct methods routed to `instance` (request/reply).
    pub(crate) fn methods(&self, instance: &str) -> String {
        format!("{}.inst.{instance}.method", self.prefix)
    }

    /// The devices `instance` holds (request/reply), for an instance that missed announcements.
    pub(crate) fn held(&self, instance: &str) -> String {
        format!("{}.inst.{instance}.held", self.prefix)
    }
}

/// One message on the presence subject.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Presence {
    /// The sender.
    pub(crate) instance: String,
    /// The sender's run: when its process started (µs). A restarted instance keeps its id but
    /// starts a new run and counts from 0 again; receivers forget what the old run announced.
    pub(crate) run: u64,
    /// The sender's change counter: one more for every open and close it announces. A
    /// receiver that sees a gap asks for the whole list.
    pub(crate) seq: u64,
    pub(crate) what: PresenceKind,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub(crate) enum PresenceKind {
    /// The sender is alive (its lease is renewed); `seq` is its latest change.
    Beat,
    /// A session of `device` opened on the sender at `at` (µs since the epoch, on its clock).
    Opened { device: DeviceId, at: u64 },
    /// The sender's session of `device` that opened at `at` closed.
    Closed { device: DeviceId, at: u64 },
    /// The sender is shutting down: forget it now rather than at the end of its lease.
    Bye,
}

/// A `held` request: the devices after `after` (from the start when `None`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct HeldAsk {
    pub(crate) after: Option<DeviceId>,
}

/// How many devices one `held` answer lists (a page stays far below NATS's 1 MB payload limit
/// with ids of up to 128 bytes).
pub(crate) const HELD_PAGE: usize = 2000;

/// The answer to a `held` request: one page of the list.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Held {
    /// The sender's run (see [`Presence::run`]).
    pub(crate) run: u64,
    /// The change counter the page is as of.
    pub(crate) seq: u64,
    /// Each device and when its session opened, in id order.
    pub(crate) devices: Vec<(DeviceId, u64)>,
    /// Where the next page starts (`None` on the last page).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) next: Option<DeviceId>,
}

/// A wake-up or desired-patch notice.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Notice {
    /// The instance that wrote it (it has told its own session already).
    pub(crate) origin: String,
    pub(crate) device: DeviceId,
    /// The desired version the patch (the frame's body) made; absent for a wake-up.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) version: Option<u64>,
}

/// A direct method routed to the instance that holds the device; the payload is the body.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct MethodAsk {
    pub(crate) device: DeviceId,
    pub(crate) name: String,
    pub(crate) response_timeout_ms: u64,
    pub(crate) connect_timeout_ms: u64,
}

/// The holder's answer; the device's payload is the body.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "outcome", rename_all = "snake_case")]
pub(crate) enum MethodAnswer {
    Ok { request_id: u64, status: i32 },
    Err(WireError),
}

/// A gateway error as the caller's instance rebuilds it. The kinds a method call can end with
/// keep their variant; anything else arrives as a non-retryable backend error with its message.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct WireError {
    pub(crate) kind: String,
    pub(crate) message: String,
    #[serde(default)]
    pub(crate) request_id: u64,
    #[serde(default)]
    pub(crate) millis: u64,
    #[serde(default)]
    pub(crate) scope: String,
    #[serde(default)]
    pub(crate) limit: u64,
}

impl WireError {
    pub(crate) fn from_error(e: &Error) -> Self {
        let mut w = WireError {
            kind: "other".into(),
            message: e.to_string(),
            request_id: 0,
            millis: 0,
            scope: String::new(),
            limit: 0,
        };
        match e {
            Error::DeviceOffline { .. } => w.kind = "offline".into(),
            Error::DeviceNotFound { .. } => w.kind = "not_found".into(),
            Error::TimedOut { after, .. } => {
                w.kind = "timed_out".into();
                w.millis = after.as_millis() as u64;
            }
            Error::InvalidMethodResponse {
                request_id, reason, ..
            } => {
                w.kind = "invalid_response".into();
                w.request_id = *request_id;
                w.message = reason.clone();
            }
            Error::InvalidInput { reason } => {
                w.kind = "invalid".into();
                w.message = reason.clone();
            }
            Error::Throttled {
                scope, retry_after, ..
            } => {
                w.kind = "throttled".into();
                w.millis = retry_after.as_millis() as u64;
                w.scope = match scope {
                    ThrottleScope::Device => "device",
                    ThrottleScope::Peer => "peer",
                    _ => "hub",
                }
                .into();
            }
            Error::QueueFull { limit, .. } => {
                w.kind = "queue_full".into();
                w.limit = *limit as u64;
            }
            Error::Shutdown => w.kind = "shutdown".into(),
            _ => {}
        }
        w
    }

    pub(crate) fn into_error(self, device: &DeviceId) -> Error {
        let device = device.clone();
        match self.kind.as_str() {
            "offline" => Error::DeviceOffline { device },
            "not_found" => Error::DeviceNotFound { device },
            "timed_out" => Error::TimedOut {
                device,
                operation: "method response",
                after: Duration::from_millis(self.millis),
            },
            "invalid_response" => Error::InvalidMethodResponse {
                device,
                request_id: self.request_id,
                reason: self.message,
            },
            "invalid" => Error::InvalidInput {
                reason: self.message,
            },
            "throttled" => Error::Throttled {
                device,
                operation: ThrottledOperation::Method,
                scope: match self.scope.as_str() {
                    "device" => ThrottleScope::Device,
                    "peer" => ThrottleScope::Peer,
                    _ => ThrottleScope::Hub,
                },
                retry_after: Duration::from_millis(self.millis),
            },
            "queue_full" => Error::QueueFull {
                device,
                queue: "method requests",
                limit: usize::try_from(self.limit).unwrap_or(usize::MAX),
            },
            "shutdown" => Error::Shutdown,
            _ => Error::backend(
                "cluster",
                RemoteFailure {
                    message: self.message,
                },
                false,
            ),
        }
    }
}

/// An error another instance reported, by its message.
#[derive(Debug, thiserror::Error)]
#[error("the instance holding the device failed the call: {message}")]
pub(crate) struct RemoteFailure {
    message: String,
}

/// Why a frame could not be read.
#[derive(Debug, thiserror::Error)]
#[error("malformed cluster message: {0}")]
pub(crate) struct Malformed(String);

/// A frame: the header as JSON, then `body`.
pub(crate) fn encode<T: Serialize>(header: &T, body: &[u8]) -> Bytes {
    // Serialising these plain structs cannot fail (no maps with non-string keys, no I/O).
    let head = serde_json::to_vec(header).unwrap_or_default();
    let mut out = BytesMut::with_capacity(4 + head.len() + body.len());
    out.put_u32(u32::try_from(head.len()).unwrap_or(u32::MAX));
    out.put_slice(&head);
    out.put_slice(body);
    out.freeze()
}

/// The header and the body of a frame.
pub(crate) fn decode<T: for<'de> Deserialize<'de>>(frame: &Bytes) -> Result<(T, Bytes), Malformed> {
    if frame.len() < 4 {
        return Err(Malformed("shorter than its length prefix".into()));
    }
    let len = u32::from_be_bytes([frame[0], frame[1], frame[2], frame[3]]) as usize;
    let end = 4usize
        .checked_add(len)
        .filter(|&end| end <= frame.len())
        .ok_or_else(|| Malformed("header longer than the message".into()))?;
    let header = serde_json::from_slice(&frame[4..end]).map_err(|e| Malformed(e.to_string()))?;
    Ok((header, frame.slice(end..)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_frame_round_trips_and_a_truncated_one_is_refused() {
        let notice = Notice {
            origin: "a".into(),
            device: "dev-1".parse().unwrap(),
            version: Some(3),
        };
        let frame = encode(&notice, b"{\"x\":1}");
        let (back, body): (Notice, Bytes) = decode(&frame).unwrap();
        assert_eq!(back, notice);
        assert_eq!(&body[..], b"{\"x\":1}");
        assert!(decode::<Notice>(&frame.slice(..6)).is_err());
        assert!(decode::<Notice>(&Bytes::from_static(b"\x00")).is_err());
    }

    #[test]
    fn method_errors_keep_their_kind_across_the_wire() {
        let device: DeviceId = "dev-1".parse().unwrap();
        let sent = Error::TimedOut {
            device: device.clone(),
            operation: "method response",
            after: Duration::from_millis(1500),
        };
        let back = WireError::from_error(&sent).into_error(&device);
        assert!(
            matches!(back, Error::TimedOut { after, .. } if after == Duration::from_millis(1500))
        );
        let back = WireError::from_error(&Error::DeviceOffline {
            device: device.clone(),
        })
        .into_error(&device);
        assert!(matches!(back, Error::DeviceOffline { .. }));
        let back = WireError::from_error(&Error::Config { reason: "x".into() }).into_error(&device);
        assert!(matches!(
            back,
            Error::Backend {
                retryable: false,
                ..
            }
        ));
    }
}
