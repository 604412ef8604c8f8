//! The request/response nodes: `$cbs` (put-token) and `$management` (READ of the entity and of
//! a partition). Requests carry `operation`, `type` and `name` application properties; answers
//! carry `status-code` and `status-description` (and `statusCode`, `statusDescription`) and the request's message id as correlation id.

use fe2o3_amqp::types::messaging::{AmqpValue, ApplicationProperties, Body, Message, Properties};
use fe2o3_amqp::types::primitives::{Array, OrderedMap, SimpleValue, Timestamp, Value};
use iot_core::{Offset, PartitionId, ReadLimits};

use super::Shared;
use super::claims::{Claims, unix_now};
use super::token;

/// A request or response message.
pub(crate) type Request = Message<Body<Value>>;

fn app_str<'a>(request: &'a Request, name: &str) -> Option<&'a str> {
    match request.application_properties.as_ref()?.get(name)? {
        SimpleValue::String(s) => Some(s),
        SimpleValue::Symbol(s) => Some(s.as_str()),
        _ => None,
    }
}

fn reply(request: &Request, status: i32, description: &str, body: Value) -> Request {
    let correlation_id = request
        .properties
        .as_ref()
        .and_then(|p| p.message_id.clone());
    let properties = Properties {
        correlation_id,
        ..Properties::default()
    };
    // Both spellings: Event Hubs' `status-code`, and the `statusCode` that pyamqp's management
    // link (azure-eventhub's `$management` requests) reads.
    let app = ApplicationProperties::builder()
        .insert("status-code", SimpleValue::Int(status))
        .insert(
            "status-description",
            SimpleValue::String(description.into()),
        )
        .insert("statusCode", SimpleValue::Int(status))
        .insert("statusDescription", SimpleValue::String(description.into()))
        .build();
    Message {
        header: None,
        delivery_annotations: None,
        message_annotations: None,
        properties: Some(properties),
        application_properties: Some(app),
        body: Body::Value(AmqpValue(body)),
        footer: None,
    }
}

/// Answers a `$cbs` request: `put-token` with a service SAS token for this entity.
pub(crate) fn cbs(shared: &Shared, claims: &Claims, request: &Request) -> Request {
    if app_str(request, "operation") != Some("put-token") {
        return reply(request, 400, "unsupported operation", Value::Null);
    }
    let token = match &request.body {
        Body::Value(AmqpValue(Value::String(t))) => t.as_str(),
        _ => {
            return reply(
                request,
                400,
                "the token must be a string value",
                Value::Null,
            );
        }
    };
    let audience = app_str(request, "name").unwrap_or("");
    if !token::covers(audience, &shared.config.host, &shared.config.entity) {
        return reply(
            request,
            404,
            "the audience is not this event hub",
            Value::Null,
        );
    }
    match token::verify(
        token,
        &shared.config.host,
        &shared.config.entity,
        &shared.policies,
        unix_now(),
    ) {
        Ok(grant) => {
            tracing::debug!(policy = grant.policy, "put-token accepted");
            claims.grant(grant.expires);
            reply(request, 202, "Accepted", Value::Null)
        }
        Err(e) => {
            tracing::debug!(error = %e, "put-token refused");
            reply(request, 401, &e.to_string(), Value::Null)
        }
    }
}

fn map(entries: Vec<(&str, Value)>) -> Value {
    let mut m = OrderedMap::new();
    for (k, v) in entries {
        m.insert(Value::String(k.to_owned()), v);
    }
    Value::Map(m)
}

fn millis(t: iot_core::Timestamp) -> Value {
    Value::Timestamp(Timestamp::from_milliseconds(
        i64::try_from(t.as_unix_millis()).unwrap_or(i64::MAX),
    ))
}

/// Answers a `$management` request: `READ` of `com.microsoft:eventhub` or
/// `com.microsoft:partition`. The connection's claims, or the request's own
/// `security_token`, must authorize it.
pub(crate) async fn management(shared: &Shared, claims: &Claims, request: &Request) -> Request {
    let now = unix_now();
    let authorized = claims.valid_until(now).is_some()
        || app_str(request, "security_token").is_some_and(|t| {
            token::verify(
                t,
                &shared.config.host,
                &shared.config.entity,
                &shared.policies,
                now,
            )
            .is_ok()
        });
    if !authorized {
        return reply(
            request,
            401,
            "unauthorized: put a token on $cbs first",
            Value::Null,
        );
    }
    if app_str(request, "operation") != Some("READ") {
        return reply(request, 400, "unsupported operation", Value::Null);
    }
    let entity = &shared.config.entity;
    if !app_str(request, "name").is_some_and(|n| n.eq_ignore_ascii_case(entity)) {
        return reply(request, 404, "no such event hub", Value::Null);
    }
    let count = shared.log.partition_count();
    match app_str(request, "type") {
        Some("com.microsoft:eventhub") => {
            let ids: Vec<Value> = (0..count).map(|p| Value::String(p.to_string())).collect();
            let body = map(vec![
                ("name", Value::String(entity.clone())),
                ("type", Value::String("com.microsoft:eventhub".into())),
                ("created_at", millis(shared.config.created_at)),
                (
                    "partition_count",
                    Value::Int(i32::try_from(count).unwrap_or(i32::MAX)),
                ),
                ("partition_ids", Value::Array(Array::from(ids))),
            ]);
            reply(request, 200, "OK", body)
        }
        Some("com.microsoft:partition") => {
            let Some(partition) = app_str(request, "partition")
                .and_then(|p| p.parse::<u32>().ok())
                .filter(|p| *p < count)
            else {
                return reply(request, 404, "no such partition", Value::Null);
            };
            match partition_info(shared, PartitionId(partition)).await {
                Ok(body) => reply(request, 200, "OK", body),
                Err(e) => {
                    tracing::warn!(error = %e, partition, "reading partition properties");
                    reply(request, 500, "the log failed", Value::Null)
                }
            }
        }
        _ => reply(request, 400, "unsupported type", Value::Null),
    }
}

async fn partition_info(shared: &Shared, partition: PartitionId) -> iot_core::Result<Value> {
    let log = &shared.log;
    let earliest = log.earliest_offset(partition).await?;
    let next = log.next_offset(partition).await?;
    let empty = earliest == next;
    let (last_seq, last_time) = if next.0 == 0 {
        (-1, iot_core::Timestamp::EPOCH)
    } else {
        let last = Offset(next.0 - 1);
        let time = if empty {
            iot_core::Timestamp::EPOCH
        } else {
            log.read(partition, last, ReadLimits::records(1))
                .await?
                .first()
                .map_or(iot_core::Timestamp::EPOCH, |r| r.enqueued_time)
        };
        (i64::try_from(last.0).unwrap_or(i64::MAX), time)
    };
    Ok(map(vec![
        ("name", Value::String(shared.config.entity.clone())),
        ("type", Value::String("com.microsoft:partition".into())),
        ("partition", Value::String(partition.0.to_string())),
        (
            "begin_sequence_number",
            Value::Long(i64::try_from(earliest.0).unwrap_or(i64::MAX)),
        ),
        ("last_enqueued_sequence_number", Value::Long(last_seq)),
        ("last_enqueued_offset", Value::String(last_seq.to_string())),
        ("last_enqueued_time_utc", millis(last_time)),
        ("is_partition_empty", Value::Bool(empty)),
    ]))
}
