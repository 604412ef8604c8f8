//! Between the inbox's rows and the gateway's message types.

use std::time::Duration;

use iot_core::DeviceId;
use iot_gateway::inbox::{InboxMessage, Removed};
use iot_gateway::{AckRequest, Error, FeedbackStatus};
use tokio_postgres::Row;

use crate::postgres::values::{from_bigint, from_micros};

/// `ack` as stored: IoT Hub's own names.
pub(super) fn ack_to_str(ack: AckRequest) -> &'static str {
    ack.as_str()
}

fn ack_from_str(s: &str) -> Result<AckRequest, Error> {
    Ok(match s {
        "none" => AckRequest::None,
        "positive" => AckRequest::Positive,
        "negative" => AckRequest::Negative,
        "full" => AckRequest::Full,
        other => return Err(corrupt(format!("unknown ack request {other:?}"))),
    })
}

/// A row that no adapter could have written: someone edited the table by hand.
fn corrupt(reason: String) -> Error {
    Error::backend(
        "postgres",
        format!("iot_inbox holds a row this adapter cannot read: {reason}"),
        false,
    )
}

/// The message of a row selected with [`MESSAGE_COLUMNS`].
pub(super) fn message(row: &Row) -> Result<InboxMessage, Error> {
    let names: Vec<String> = row.get("prop_names");
    let values: Vec<String> = row.get("prop_values");
    if names.len() != values.len() {
        return Err(corrupt("property names and values differ in number".into()));
    }
    let payload: Vec<u8> = row.get("payload");
    let mut message = InboxMessage::new(
        row.get::<_, String>("message_id"),
        payload,
        from_micros(row.get("enqueued_at")),
        Duration::ZERO,
    )
    .with_expiry(from_micros(row.get("expires_at")))
    .with_content(row.get("content_type"), row.get("content_encoding"))
    .with_properties(names.into_iter().zip(values).collect())
    .with_ack(ack_from_str(row.get("ack"))?);
    if let Some(id) = row.get::<_, Option<String>>("correlation_id") {
        message = message.with_correlation_id(id);
    }
    Ok(message)
}

/// The device a row belongs to.
pub(super) fn device(row: &Row) -> Result<DeviceId, Error> {
    let id: String = row.get("device");
    id.parse()
        .map_err(|_| corrupt(format!("invalid device id {id:?}")))
}

/// A row that left the inbox with `status`.
pub(super) fn removed(row: &Row, status: FeedbackStatus) -> Result<Removed, Error> {
    let count = u32::try_from(from_bigint(row.get("delivery_count"))).unwrap_or(u32::MAX);
    Ok(Removed::new(device(row)?, message(row)?, status, count))
}
