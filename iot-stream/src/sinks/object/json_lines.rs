//! JSON lines: one JSON object per record.

use base64::Engine;
use iot_core::StoredRecord;
use iot_core::time::Rfc3339;
use serde_json::{Map, Value, json};

use super::encoding::BatchEncoder;
use crate::sinks::SinkError;

/// One JSON object per line and record:
/// `{"partition":0,"offset":7,"enqueuedTimeUtc":"2024-…Z","deviceTime":null,"key":"dev-1",
/// "properties":{"level":"critical",…},"body":"…"}`. The body is its text when it is UTF-8, else
/// `"bodyBase64"` holds it in standard base64.
#[derive(Clone, Copy, Debug, Default)]
pub struct JsonLines;

fn time(micros: u64) -> String {
    Rfc3339(i64::try_from(micros).unwrap_or(i64::MAX)).to_string()
}

impl BatchEncoder for JsonLines {
    fn extension(&self) -> &str {
        "json"
    }

    fn encode(&self, records: &[StoredRecord]) -> Result<Vec<u8>, SinkError> {
        let mut out = Vec::new();
        for stored in records {
            let record = &stored.record;
            let properties: Map<String, Value> = record
                .headers
                .iter()
                .map(|(k, v)| (k.to_owned(), Value::from(v)))
                .collect();
            let mut line = json!({
                "partition": stored.partition.0,
                "offset": stored.offset.0,
                "enqueuedTimeUtc": time(stored.enqueued_time.as_unix_micros()),
                "deviceTime": record.device_time.map(|t| time(t.as_unix_micros())),
                "key": record.key,
                "properties": properties,
            });
            let body = match std::str::from_utf8(&record.payload) {
                Ok(text) => ("body", Value::from(text)),
                Err(_) => (
                    "bodyBase64",
                    Value::from(base64::engine::general_purpose::STANDARD.encode(&record.payload)),
                ),
            };
            if let Value::Object(map) = &mut line {
                map.insert(body.0.to_owned(), body.1);
            }
            serde_json::to_writer(&mut out, &line).map_err(|e| SinkError::Rejected {
                reason: format!("JSON encoding: {e}"),
            })?;
            out.push(b'\n');
        }
        Ok(out)
    }
}
