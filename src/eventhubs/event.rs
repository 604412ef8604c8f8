//! A telemetry record as an Event Hubs event, with IoT Hub's system properties.
//!
//! | record | event |
//! | --- | --- |
//! | payload | one `data` body section |
//! | offset `n` | annotations `x-opt-sequence-number` = `n` (long), `x-opt-offset` = `"n"` |
//! | enqueued time | annotations `x-opt-enqueued-time` and `iothub-enqueuedtime` (timestamps) |
//! | key (the device id) | annotation `x-opt-partition-key` |
//! | `iothub-*`, `dt-*` headers (the hub's stamps) | annotations of the same name (strings) |
//! | `message-id`, `correlation-id`, `user-id`, `content-type`, `content-encoding`, `expiry-time` | the properties section (`absolute-expiry-time` for the last) |
//! | every other header (the device's application properties) | application properties (strings) |

//!
//! The bytes are written by [`encode_event`](super::encode_event) (`event_wire.rs`).

use iot_core::headers::{CONTENT_ENCODING, CONTENT_TYPE, CORRELATION_ID, MESSAGE_ID};

/// IoT Hub's stamp of the enqueued time, as an annotation.
pub(super) const IOTHUB_ENQUEUED_TIME: &str = "iothub-enqueuedtime";
pub(super) const USER_ID: &str = "user-id";
/// The message's expiry (Unix milliseconds), as the hub stores it.
pub(super) const EXPIRY_TIME: &str = "expiry-time";

/// Whether a header is a system property (never an application property), as the routing
/// query language decides it (`iot_stream::routing::MessageView::app_property`).
pub(super) fn is_system(name: &str) -> bool {
    let prefixed = |p: &str| {
        name.get(..p.len())
            .is_some_and(|h| h.eq_ignore_ascii_case(p))
    };
    [
        CONTENT_TYPE,
        CONTENT_ENCODING,
        MESSAGE_ID,
        CORRELATION_ID,
        USER_ID,
        EXPIRY_TIME,
    ]
    .iter()
    .any(|s| s.eq_ignore_ascii_case(name))
        || name.starts_with('$')
        || prefixed("iothub-")
        || prefixed("dt-")
}
