//! RabbitMQ endpoints: each routed message published to an exchange with a routing key (or
//! straight to a queue), persistent, with publisher confirms.

use std::fmt;
use std::time::Duration;

use async_trait::async_trait;
use iot_core::StoredRecord;
use iot_core::headers::CONTENT_TYPE;
use lapin::options::{BasicPublishOptions, ConfirmSelectOptions};
use lapin::types::{AMQPValue, FieldTable, LongString, ShortString};
use lapin::{BasicProperties, Channel, Connection, ConnectionProperties};
use tokio::sync::Mutex;
use tracing::{debug, warn};
use zeroize::Zeroizing;

use super::event::{Template, event_id};
use super::{Sink, SinkBatch, SinkError};

/// The header with the device id (the record's key).
pub const DEVICE_ID_HEADER: &str = "iot-device-id";

/// Publishes each record of a batch to `exchange` with a routing key from a [`Template`] (the
/// default exchange `""` with the queue's name as the key sends straight to that queue), as a
/// persistent message (delivery mode 2) whose `message_id` is the [event id](super::event_id),
/// with the record's properties as AMQP headers plus `iot-device-id`.
///
/// The channel is in confirm mode: a batch counts as delivered once the broker has confirmed
/// every message (for a durable queue: written to disk). A negative confirm, a lost connection or
/// a timeout is [`SinkError::Unavailable`] (retried, on a new connection when the old one is
/// gone); a message no queue takes (published `mandatory`, returned by the broker) or a routing
/// key that cannot be one is [`SinkError::Rejected`] (dead-lettered).
///
/// Messages are published in offset order on one channel, and a partition's batches one after
/// another, so a device's messages (one partition, by key) reach a queue in order.
pub struct RabbitMqSink {
    name: String,
    endpoint: String,
    uri: Zeroizing<String>,
    exchange: ShortString,
    routing_key: Template,
    timeout: Duration,
    channel: Mutex<Option<(Connection, Channel)>>,
}

impl fmt::Debug for RabbitMqSink {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The URI holds the password: it is never shown.
        f.debug_struct("RabbitMqSink")
            .field("name", &self.name)
            .field("endpoint", &self.endpoint)
            .field("exchange", &self.exchange.as_str())
            .field("routing_key", &self.routing_key)
            .field("timeout", &self.timeout)
            .finish_non_exhaustive()
    }
}

impl RabbitMqSink {
    /// A sink named `name` (also the endpoint in event ids) publishing to `exchange` with the
    /// routing key `routing_key` makes from each record, over the broker at `uri`
    /// (`amqp://user:password@host:5672/%2f`; connected at the first write, and again after a
    /// connection is lost).
    pub fn new(
        name: impl Into<String>,
        uri: impl Into<String>,
        exchange: &str,
        routing_key: &str,
    ) -> crate::Result<Self> {
        let name = name.into();
        let exchange = ShortString::try_new(exchange).map_err(|e| {
            crate::Error::invalid(format!("RabbitMQ endpoint {name}: exchange: {e}"))
        })?;
        Ok(RabbitMqSink {
            endpoint: name.clone(),
            name,
            uri: Zeroizing::new(uri.into()),
            exchange,
            routing_key: Template::parse(routing_key)?,
            timeout: Duration::from_secs(10),
            channel: Mutex::new(None),
        })
    }

    /// A sink publishing straight to the queue `queue` (the default exchange).
    pub fn queue(
        name: impl Into<String>,
        uri: impl Into<String>,
        queue: &str,
    ) -> crate::Result<Self> {
        if queue.contains('{') {
            return Err(crate::Error::invalid("a queue name is not a template"));
        }
        Self::new(name, uri, "", queue)
    }

    /// Sets the endpoint name in event ids (default: the sink's name).
    pub fn endpoint(mut self, endpoint: impl Into<String>) -> Self {
        self.endpoint = endpoint.into();
        self
    }

    /// Sets how long a batch may wait for connecting and its confirms (default 10 s).
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    fn unavailable(&self, what: impl fmt::Display) -> SinkError {
        // lapin's errors name the broker's address and the AMQP failure, never the URI's
        // password.
        SinkError::Unavailable {
            reason: format!("RabbitMQ endpoint {}: {what}", self.name),
        }
    }

    fn rejected(&self, what: impl fmt::Display) -> SinkError {
        SinkError::Rejected {
            reason: format!("RabbitMQ endpoint {}: {what}", self.name),
        }
    }

    /// The open channel in confirm mode, connecting first when there is none or it broke.
    async fn channel(&self) -> Result<Channel, SinkError> {
        let mut slot = self.channel.lock().await;
        if let Some((connection, channel)) = slot.as_ref() {
            if connection.status().connected() && channel.status().connected() {
                return Ok(channel.clone());
            }
            warn!(sink = %self.name, "RabbitMQ connection lost; reconnecting");
            *slot = None;
        }
        let connection = Connection::connect(&self.uri, ConnectionProperties::default())
            .await
            .map_err(|e| self.unavailable(format!("connect: {e}")))?;
        let channel = connection
            .create_channel()
            .await
            .map_err(|e| self.unavailable(format!("channel: {e}")))?;
        channel
            .confirm_select(ConfirmSelectOptions::default())
            .await
            .map_err(|e| self.unavailable(format!("confirm mode: {e}")))?;
        *slot = Some((connection, channel.clone()));
        Ok(channel)
    }

    async fn forget(&self, broken: &Channel) {
        let mut slot = self.channel.lock().await;
        if slot.as_ref().is_some_and(|(_, c)| c.id() == broken.id()) {
            *slot = None;
        }
    }

    fn properties(&self, stored: &StoredRecord) -> Result<BasicProperties, SinkError> {
        let mut headers = FieldTable::default();
        for (name, value) in stored.record.headers.iter() {
            match ShortString::try_new(name) {
                Ok(name) => {
                    headers.insert(name, AMQPValue::LongString(LongString::from(value)));
                }
                Err(_) => debug!(sink = %self.name, "a property name longer than 255 bytes"),
            }
        }
        headers.insert(
            ShortString::from(DEVICE_ID_HEADER),
            AMQPValue::LongString(LongString::from(stored.record.key.as_str())),
        );
        let id = ShortString::try_new(event_id(&self.endpoint, stored))
            .map_err(|e| self.rejected(format!("event id: {e}")))?;
        let mut properties = BasicProperties::default()
            .with_delivery_mode(2)
            .with_message_id(id)
            .with_headers(headers);
        if let Some(content_type) = stored.record.headers.get(CONTENT_TYPE)
            && let Ok(content_type) = ShortString::try_new(content_type)
        {
            properties = properties.with_content_type(content_type);
        }
        let seconds = stored.enqueued_time.as_unix_micros() / 1_000_000;
        Ok(properties.with_timestamp(seconds))
    }

    async fn publish(&self, batch: SinkBatch<'_>) -> Result<(), SinkError> {
        let mut messages = Vec::with_capacity(batch.records.len());
        for stored in batch.records {
            let key = self
                .routing_key
                .render(stored)
                .map_err(|e| self.rejected(format!("offset {}: {e}", stored.offset)))?;
            let key = ShortString::try_new(key).map_err(|e| {
                self.rejected(format!("offset {}: routing key: {e}", stored.offset))
            })?;
            messages.push((key, self.properties(stored)?, &stored.record.payload));
        }
        let channel = self.channel().await?;
        let result = async {
            let mut confirms = Vec::with_capacity(messages.len());
            for (key, properties, payload) in messages {
                let options = BasicPublishOptions {
                    mandatory: true,
                    ..BasicPublishOptions::default()
                };
                confirms.push(
                    channel
                        .basic_publish(self.exchange.clone(), key, options, payload, properties)
                        .await
                        .map_err(|e| self.unavailable(format!("publish: {e}")))?,
                );
            }
            for confirm in confirms {
                let confirmation = confirm
                    .await
                    .map_err(|e| self.unavailable(format!("confirm: {e}")))?;
                if confirmation.is_nack() {
                    return Err(self.unavailable("the broker refused a message (nack)"));
                }
                if let Some(returned) = confirmation.take_message() {
                    return Err(self.rejected(format!(
                        "no queue took a message (routing key {:?}: {})",
                        returned.delivery.routing_key.as_str(),
                        returned.reply_text.as_str()
                    )));
                }
            }
            Ok(())
        }
        .await;
        if matches!(result, Err(SinkError::Unavailable { .. })) {
            self.forget(&channel).await;
        }
        result
    }
}

#[async_trait]
impl Sink for RabbitMqSink {
    fn name(&self) -> &str {
        &self.name
    }

    async fn write(&self, batch: SinkBatch<'_>) -> Result<(), SinkError> {
        tokio::time::timeout(self.timeout, self.publish(batch))
            .await
            .map_err(|_| self.unavailable(format!("not confirmed within {:?}", self.timeout)))?
    }
}
