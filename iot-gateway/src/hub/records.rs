//! The records the hub writes: telemetry, connection events, twin changes, feedback, dead letters.

use iot_core::{EndpointId, Record, Timestamp};
use serde_json::Value;

use super::stamp::Stamp;
use crate::error::{Error, Result};
use crate::events::{self, EventKind};
use crate::inbox::Removed;
use crate::message::{Feedback, FeedbackStatus, Telemetry, header};
use crate::validate;

/// Validates a telemetry message and turns it into its log record, stamped with `stamp`.
pub(crate) fn telemetry(message: Telemetry, stamp: &Stamp<'_>, max_bytes: usize) -> Result<Record> {
    let s = &message.system;
    let system = validate::check_system(&[
        (header::MESSAGE_ID, &s.message_id),
        (header::CORRELATION_ID, &s.correlation_id),
        (header::CONTENT_TYPE, &s.content_type),
        (header::CONTENT_ENCODING, &s.content_encoding),
        (header::USER_ID, &s.user_id),
        (header::INTERFACE_ID, &s.interface_id),
        (header::OUTPUT_NAME, &s.output_name),
        (header::COMPONENT, &s.component),
    ])?;
    // Check the size before looking at every property of a huge list.
    let rough = message.payload.len() + system;
    if rough > max_bytes {
        return Err(Error::TooLarge {
            what: "telemetry message",
            size: rough,
            limit: max_bytes,
        });
    }
    let props = validate::check_properties(&message.properties)?;
    let size = rough + props;
    if size > max_bytes {
        return Err(Error::TooLarge {
            what: "telemetry message",
            size,
            limit: max_bytes,
        });
    }
    let system = message.system;
    let own = [
        &system.message_id,
        &system.correlation_id,
        &system.content_type,
        &system.content_encoding,
        &system.user_id,
        &system.interface_id,
        &system.output_name,
        &system.component,
    ]
    .iter()
    .filter(|v| v.is_some())
    .count()
        + usize::from(system.expiry.is_some())
        + usize::from(message.will)
        + message.properties.len();
    // The stamps first, in the order IoT Hub's event endpoint shows them.
    let mut headers = stamp.headers(own);
    for (name, value) in [
        (header::MESSAGE_ID, system.message_id),
        (header::CORRELATION_ID, system.correlation_id),
        (header::CONTENT_TYPE, system.content_type),
        (header::CONTENT_ENCODING, system.content_encoding),
        (header::USER_ID, system.user_id),
        (header::INTERFACE_ID, system.interface_id),
        (header::OUTPUT_NAME, system.output_name),
        (header::COMPONENT, system.component),
    ] {
        if let Some(value) = value {
            headers.insert_owned(name, value);
        }
    }
    if let Some(expiry) = system.expiry {
        headers.insert_u64(header::EXPIRY_TIME, expiry.as_unix_millis());
    }
    if message.will {
        headers.insert_static(header::MESSAGE_TYPE, header::MESSAGE_TYPE_WILL);
    }
    for (name, value) in message.properties {
        headers.insert(name, value);
    }
    let mut record = Record::new(stamp.device(), message.payload).with_headers(headers);
    if let Some(t) = message.device_time {
        record = record.with_device_time(t);
    }
    Ok(record)
}

/// A connect or disconnect event in IoT Hub's shape (`crate::events`), plus the hub's own
/// `$event` (`"connected"`, `"disconnected"`) and, on a disconnect, `$reason`.
pub(crate) fn connection_event(
    hub: &str,
    who: &EndpointId,
    connected: bool,
    reason: Option<&str>,
    seq: u64,
) -> Record {
    let at = Timestamp::now();
    let kind = if connected {
        EventKind::DeviceConnected
    } else {
        EventKind::DeviceDisconnected
    };
    let body = events::connection_body(at, seq);
    let mut r = events::event_record(kind, hub, who.device.as_str(), at, correlation_id(), &body)
        .with_header(
            header::EVENT,
            if connected {
                "connected"
            } else {
                "disconnected"
            },
        );
    if let Some(reason) = reason {
        r = r.with_header(header::REASON, reason);
    }
    // A module's connect and disconnect name the module (keyed by its device, like its twin
    // changes).
    if let Some(module) = &who.module {
        r = r.with_header(header::MODULE_ID, module.as_str());
    }
    r
}

/// A twin change in IoT Hub's shape (`opType` `kind`: `updateTwin` with the patch, or
/// `replaceTwin` with the section as the replacement made it; body `{"version", "properties":
/// {section: …}}`), plus the hub's own `$section` and `$version` headers.
pub(crate) fn twin_change(
    hub: &str,
    twin: &EndpointId,
    kind: EventKind,
    section: &str,
    version: u64,
    properties: &Value,
) -> Record {
    let at = Timestamp::now();
    let body = events::twin_change_body(section, version, properties, at);
    let record = events::event_record(kind, hub, twin.device.as_str(), at, correlation_id(), &body)
        .with_header(header::SECTION, section)
        .with_header(header::VERSION, version.to_string());
    // Keyed by the device (one partition per device, modules included); a module's change
    // names the module, as IoT Hub's twin change events do.
    match &twin.module {
        Some(module) => record.with_header(header::MODULE_ID, module.as_str()),
        None => record,
    }
}

/// A random 128-bit id in hexadecimal, unique per event.
fn correlation_id() -> String {
    format!("{:032x}", rand::random::<u128>())
}

/// The feedback record of a settled message, if its sender asked for one.
pub(crate) fn feedback(removed: &Removed, at: Timestamp) -> Option<Record> {
    if !removed.message.ack.wants(removed.status) {
        return None;
    }
    let fb = Feedback::new(
        removed.device.clone(),
        removed.message.message_id.clone(),
        removed.status,
        at,
        removed.delivery_count,
    )
    .with_correlation_id(removed.message.correlation_id.clone());
    let payload = serde_json::to_vec(&fb).ok()?;
    Some(
        Record::new(removed.device.as_str(), payload)
            .with_header(header::CONTENT_TYPE, "application/json")
            .with_header("status", removed.status.as_str()),
    )
}

/// The dead-letter record of a rejected or over-delivered message: the message itself.
pub(crate) fn dead_letter(removed: &Removed) -> Option<Record> {
    if !matches!(
        removed.status,
        FeedbackStatus::Rejected | FeedbackStatus::DeliveryCountExceeded
    ) {
        return None;
    }
    let m = &removed.message;
    let mut r = Record::new(removed.device.as_str(), m.payload.clone())
        .with_header(header::MESSAGE_ID, m.message_id.clone())
        .with_header("status", removed.status.as_str())
        .with_header("delivery-count", removed.delivery_count.to_string());
    if let Some(c) = &m.correlation_id {
        r = r.with_header(header::CORRELATION_ID, c.clone());
    }
    Some(r)
}

/// Decodes a feedback record.
pub(crate) fn decode_feedback(offset: u64, payload: &[u8]) -> Option<Feedback> {
    let fb: Feedback = serde_json::from_slice(payload).ok()?;
    Some(fb.with_offset(offset))
}
