//! Commands to devices as log records: actors never call the gateway. They append a
//! [`CommandRecord`] to the commands topic, which the hub consumes; a direct method's answer comes
//! back as a [`MethodResponse`] record on the topic the command names in `reply-to`.

use std::collections::BTreeMap;

use iot_core::Record;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::error::{Error, Result};

/// Header naming the kind of a command record (`c2d`, `direct-method`, `desired-patch`).
pub const KIND_HEADER: &str = "command-kind";
/// Header with the command's id: derived from the input that caused it, so a command emitted
/// again after a crash carries the same id and the hub can drop the duplicate.
pub const ID_HEADER: &str = "command-id";
/// Header naming the actor that issued the command.
pub const ISSUER_HEADER: &str = "command-issuer";
/// Header naming the topic a direct method's answer is to be appended to.
pub const REPLY_TO_HEADER: &str = "reply-to";
/// Header marking a record as a direct method's answer (value [`METHOD_RESPONSE`]).
pub const MESSAGE_TYPE_HEADER: &str = "message-type";
/// The [`MESSAGE_TYPE_HEADER`] value of a method response.
pub const METHOD_RESPONSE: &str = "method-response";

/// What an actor asks the hub to do to a device.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "kebab-case")]
pub enum Command {
    /// A cloud-to-device message.
    C2d {
        /// The message body (text; JSON by convention).
        body: String,
        /// Application properties of the message.
        #[serde(default)]
        properties: BTreeMap<String, String>,
    },
    /// A direct method call; the answer comes back as a [`MethodResponse`].
    DirectMethod {
        /// The method name.
        method: String,
        /// The JSON payload of the call.
        payload: Value,
        /// How long the hub waits for the device, in milliseconds.
        timeout_ms: u64,
    },
    /// A patch of the device twin's desired properties (RFC 7396 merge patch).
    DesiredPatch {
        /// The patch, a JSON object.
        patch: Value,
    },
}

impl Command {
    /// The [`KIND_HEADER`] value of this command.
    pub fn kind(&self) -> &'static str {
        match self {
            Command::C2d { .. } => "c2d",
            Command::DirectMethod { .. } => "direct-method",
            Command::DesiredPatch { .. } => "desired-patch",
        }
    }
}

/// A command as it is stored in the commands topic: keyed by the target device (so one
/// device's commands stay in order in one partition), headers [`KIND_HEADER`], [`ID_HEADER`],
/// [`ISSUER_HEADER`] and, for direct methods, [`REPLY_TO_HEADER`]; the payload is the
/// [`Command`] as JSON (`{"kind": "direct-method", "method": "reboot", "payload": {}, "timeout_ms": 30000}`).
#[derive(Clone, Debug, PartialEq)]
pub struct CommandRecord {
    /// The target device.
    pub device: String,
    /// The command's idempotency id.
    pub id: String,
    /// The issuing actor.
    pub issuer: String,
    /// Where a method's answer goes.
    pub reply_to: Option<String>,
    /// What to do.
    pub command: Command,
}

impl CommandRecord {
    /// The log record.
    pub fn to_record(&self) -> Result<Record> {
        let payload = serde_json::to_vec(&self.command)
            .map_err(|e| Error::invalid(format!("command not serializable: {e}")))?;
        let mut record = Record::new(self.device.clone(), payload)
            .with_header(KIND_HEADER, self.command.kind())
            .with_header(ID_HEADER, self.id.clone())
            .with_header(ISSUER_HEADER, self.issuer.clone())
            .with_header(iot_core::headers::CONTENT_TYPE, "application/json");
        if let Some(reply_to) = &self.reply_to {
            record = record.with_header(REPLY_TO_HEADER, reply_to.clone());
        }
        Ok(record)
    }

    /// Reads a command record (what the hub's consumer does). A record without an id, or whose
    /// payload is not a command of the kind its header names, is [`Error::InvalidInput`].
    pub fn from_record(record: &Record) -> Result<CommandRecord> {
        let header = |name: &str| record.headers.get(name).map(str::to_owned);
        let id = header(ID_HEADER).ok_or_else(|| Error::invalid("command without an id"))?;
        let command: Command = serde_json::from_slice(&record.payload)
            .map_err(|e| Error::invalid(format!("command {id}: {e}")))?;
        if header(KIND_HEADER).as_deref() != Some(command.kind()) {
            return Err(Error::invalid(format!(
                "command {id}: the {KIND_HEADER} header does not match the payload"
            )));
        }
        Ok(CommandRecord {
            device: record.key.clone(),
            id,
            issuer: header(ISSUER_HEADER).unwrap_or_default(),
            reply_to: header(REPLY_TO_HEADER),
            command,
        })
    }
}

/// A direct method's answer, appended by the hub to the command's `reply-to` topic, keyed by the
/// device (so it reaches the device's actor), with headers [`MESSAGE_TYPE_HEADER`]` =
/// `[`METHOD_RESPONSE`] and [`ID_HEADER`] (the command's id); payload
/// `{"status": 200, "payload": …}`. A device that did not answer in time is status 504.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct MethodResponse {
    /// The device that answered.
    #[serde(skip)]
    pub device: String,
    /// The id of the command answered.
    #[serde(skip)]
    pub command_id: String,
    /// The device's status code.
    pub status: i32,
    /// The device's JSON answer.
    #[serde(default)]
    pub payload: Value,
}

impl MethodResponse {
    /// The log record.
    pub fn to_record(&self) -> Result<Record> {
        let payload = serde_json::to_vec(self)
            .map_err(|e| Error::invalid(format!("method response not serializable: {e}")))?;
        Ok(Record::new(self.device.clone(), payload)
            .with_header(MESSAGE_TYPE_HEADER, METHOD_RESPONSE)
            .with_header(ID_HEADER, self.command_id.clone())
            .with_header(iot_core::headers::CONTENT_TYPE, "application/json"))
    }

    /// `None` if `record` is not a method response; otherwise the response, or
    /// [`Error::InvalidInput`] if it is malformed.
    pub fn from_record(record: &Record) -> Option<Result<MethodResponse>> {
        if record.headers.get(MESSAGE_TYPE_HEADER) != Some(METHOD_RESPONSE) {
            return None;
        }
        Some((|| {
            let command_id = record
                .headers
                .get(ID_HEADER)
                .ok_or_else(|| Error::invalid("method response without a command id"))?
                .to_owned();
            let mut response: MethodResponse = serde_json::from_slice(&record.payload)
                .map_err(|e| Error::invalid(format!("method response {command_id}: {e}")))?;
            response.device = record.key.clone();
            response.command_id = command_id;
            Ok(response)
        })())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn every_command_kind_round_trips_through_a_record() {
        let commands = [
            Command::C2d {
                body: "{\"led\":\"on\"}".into(),
                properties: BTreeMap::from([("p".to_owned(), "1".to_owned())]),
            },
            Command::DirectMethod {
                method: "reboot".into(),
                payload: json!({"delay": 5}),
                timeout_ms: 30_000,
            },
            Command::DesiredPatch {
                patch: json!({"fan": {"speed": 3}}),
            },
        ];
        for command in commands {
            let sent = CommandRecord {
                device: "dev-1".into(),
                id: "room@0:7#0".into(),
                issuer: "room".into(),
                reply_to: Some("actor-messages".into()),
                command,
            };
            let record = sent.to_record().expect("serializable");
            assert_eq!(record.headers.get(KIND_HEADER), Some(sent.command.kind()));
            assert_eq!(CommandRecord::from_record(&record).expect("valid"), sent);
        }
    }

    #[test]
    fn a_command_whose_kind_header_lies_is_refused() {
        let record = CommandRecord {
            device: "d".into(),
            id: "x".into(),
            issuer: "a".into(),
            reply_to: None,
            command: Command::DesiredPatch { patch: json!({}) },
        }
        .to_record()
        .expect("serializable")
        .with_header(KIND_HEADER, "c2d");
        assert!(matches!(
            CommandRecord::from_record(&record),
            Err(Error::InvalidInput { .. })
        ));
    }

    #[test]
    fn method_responses_are_recognised_and_read() {
        let sent = MethodResponse {
            device: "dev-1".into(),
            command_id: "c-1".into(),
            status: 200,
            payload: json!({"ok": true}),
        };
        let record = sent.to_record().expect("serializable");
        assert_eq!(
            MethodResponse::from_record(&record).map(|r| r.expect("valid")),
            Some(sent)
        );
        assert!(MethodResponse::from_record(&Record::new("dev-1", "{}")).is_none());
        let broken = Record::new("dev-1", "not json")
            .with_header(MESSAGE_TYPE_HEADER, METHOD_RESPONSE)
            .with_header(ID_HEADER, "c");
        assert!(matches!(
            MethodResponse::from_record(&broken),
            Some(Err(Error::InvalidInput { .. }))
        ));
    }
}
