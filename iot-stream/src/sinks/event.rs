//! What the push endpoints (webhook, NATS, RabbitMQ) share: the event id receivers dedupe by, and
//! subject / routing-key templates filled from a record.

use iot_core::StoredRecord;

/// The id of a routed event: `{endpoint}:{partition}:{offset}`, its place in the endpoint's topic.
///
/// A sink only ever re-sends a record it read from that place (a retry, or a restart replaying
/// from the checkpoint), so a redelivery carries the same id, and a receiver that remembers the
/// ids it processed drops the copies. Unlike the device's `message-id`, which is optional and
/// chosen by the device, it is always there and unique per endpoint.
pub fn event_id(endpoint: &str, record: &StoredRecord) -> String {
    format!("{endpoint}:{}:{}", record.partition.0, record.offset.0)
}

/// A subject or routing key built from a record: literal text with `{deviceId}`, `{partition}`
/// and `{property:NAME}` (an application property) in it, e.g. `telemetry.{deviceId}` or
/// `alerts.{property:level}`.
///
/// A filled-in value has every character outside `[A-Za-z0-9_-]` replaced by `_`, so a device id
/// or property value can never add a subject token (`.`), a wildcard (`*`, `>`) or whitespace.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Template {
    parts: Vec<Part>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum Part {
    Text(String),
    DeviceId,
    Partition,
    Property(String),
}

impl Template {
    /// Parses `template`; an unknown or unclosed `{…}` is an error naming it.
    pub fn parse(template: &str) -> crate::Result<Self> {
        let mut parts = Vec::new();
        let mut rest = template;
        while let Some(open) = rest.find('{') {
            if open > 0 {
                parts.push(Part::Text(rest[..open].to_owned()));
            }
            let after = &rest[open + 1..];
            let Some(close) = after.find('}') else {
                return Err(crate::Error::invalid(format!(
                    "template {template:?}: `{{` at byte {} is not closed",
                    template.len() - rest.len() + open
                )));
            };
            let token = &after[..close];
            parts.push(match token {
                "deviceId" => Part::DeviceId,
                "partition" => Part::Partition,
                _ => match token.strip_prefix("property:") {
                    Some(name) if !name.is_empty() => Part::Property(name.to_owned()),
                    _ => {
                        return Err(crate::Error::invalid(format!(
                            "template {template:?}: unknown token {{{token}}} (expected \
                             {{deviceId}}, {{partition}} or {{property:NAME}})"
                        )));
                    }
                },
            });
            rest = &after[close + 1..];
        }
        if !rest.is_empty() {
            parts.push(Part::Text(rest.to_owned()));
        }
        if parts.is_empty() {
            return Err(crate::Error::invalid("an empty template"));
        }
        Ok(Template { parts })
    }

    /// The template filled from `record`, or the name of the property it lacks.
    pub fn render(&self, record: &StoredRecord) -> Result<String, MissingProperty> {
        let mut out = String::new();
        for part in &self.parts {
            match part {
                Part::Text(text) => out.push_str(text),
                Part::DeviceId => push_sanitized(&mut out, &record.record.key),
                Part::Partition => out.push_str(&record.partition.0.to_string()),
                Part::Property(name) => match record.record.headers.get(name) {
                    Some(value) => push_sanitized(&mut out, value),
                    None => return Err(MissingProperty(name.clone())),
                },
            }
        }
        Ok(out)
    }
}

/// A template's property that a record does not have.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("the record has no property {0:?} for the template")]
pub struct MissingProperty(pub String);

fn push_sanitized(out: &mut String, value: &str) {
    if value.is_empty() {
        out.push('_');
    }
    out.extend(value.chars().map(|c| {
        if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
            c
        } else {
            '_'
        }
    }));
}

#[cfg(test)]
mod tests {
    use super::*;
    use iot_core::{Offset, PartitionId, Record, Timestamp};

    fn stored(key: &str) -> StoredRecord {
        StoredRecord::new(
            PartitionId(3),
            Offset(41),
            Timestamp::from_unix_micros(1),
            Record::new(key, "{}").with_header("level", "crit ical"),
        )
    }

    #[test]
    fn fills_tokens_and_keeps_values_inside_one_token() {
        let t = Template::parse("t.{deviceId}.{property:level}.p{partition}").unwrap();
        assert_eq!(
            t.render(&stored("dev.1>*")).unwrap(),
            "t.dev_1__.crit_ical.p3"
        );
        assert_eq!(
            Template::parse("x.{property:nope}")
                .unwrap()
                .render(&stored("d")),
            Err(MissingProperty("nope".into()))
        );
        assert_eq!(event_id("alerts", &stored("d")), "alerts:3:41");
    }

    #[test]
    fn refuses_unknown_and_unclosed_tokens() {
        assert!(Template::parse("a.{device}").is_err());
        assert!(Template::parse("a.{deviceId").is_err());
        assert!(Template::parse("a.{property:}").is_err());
        assert!(Template::parse("").is_err());
    }
}
