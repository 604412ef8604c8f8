//! NATS subject endpoints: each routed message published to a subject built from the message,
//! on core NATS or, with acks, into a JetStream stream.

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use async_nats::{HeaderMap, HeaderName, HeaderValue};
use async_trait::async_trait;
use iot_core::StoredRecord;
use tracing::debug;

use super::event::{Template, event_id};
use super::{Sink, SinkBatch, SinkError};

/// The header with the device id (the record's key).
pub const DEVICE_ID_HEADER: &str = "iot-device-id";

/// Where a NATS sink publishes.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub enum NatsTarget {
    /// Core NATS: a batch counts as delivered once the server has read it (a flush returned).
    /// Subscribers that are not connected then miss it: core NATS keeps nothing.
    #[default]
    Core,
    /// JetStream: a batch counts as delivered once the stream that captures the subjects has
    /// acknowledged every message (stored, and replicated when the stream is). The stream drops
    /// a redelivery within its duplicate window by `Nats-Msg-Id`.
    JetStream,
}

/// Publishes each record of a batch to a subject from a [`Template`] (e.g.
/// `telemetry.{deviceId}`), with the record's properties as NATS headers plus `Nats-Msg-Id`
/// (the [event id](super::event_id), for dedupe) and `iot-device-id`.
///
/// A batch's messages are published in offset order on one connection, and a partition's batches
/// one after another, so a device's messages (one partition, by key) arrive in order. A record
/// without a property its subject needs makes the batch [`SinkError::Rejected`] (dead-lettered);
/// a NATS error or a missing ack makes it [`SinkError::Unavailable`] (retried).
pub struct NatsSink {
    name: String,
    endpoint: String,
    client: async_nats::Client,
    jetstream: Option<async_nats::jetstream::Context>,
    subject: Template,
    timeout: Duration,
}

impl fmt::Debug for NatsSink {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("NatsSink")
            .field("name", &self.name)
            .field("endpoint", &self.endpoint)
            .field("subject", &self.subject)
            .field("jetstream", &self.jetstream.is_some())
            .field("timeout", &self.timeout)
            .finish_non_exhaustive()
    }
}

impl NatsSink {
    /// A sink named `name` (also the endpoint in event ids) publishing with `client` (connected
    /// by the caller, with its own credentials and reconnect policy) to the subject `subject`
    /// makes from each record.
    pub fn new(
        name: impl Into<String>,
        client: async_nats::Client,
        subject: &str,
        target: NatsTarget,
    ) -> crate::Result<Self> {
        let name = name.into();
        let subject = Template::parse(subject)?;
        let jetstream = match target {
            NatsTarget::Core => None,
            NatsTarget::JetStream => Some(async_nats::jetstream::new(client.clone())),
        };
        Ok(NatsSink {
            endpoint: name.clone(),
            name,
            client,
            jetstream,
            subject,
            timeout: Duration::from_secs(10),
        })
    }

    /// Sets the endpoint name in event ids (default: the sink's name).
    pub fn endpoint(mut self, endpoint: impl Into<String>) -> Self {
        self.endpoint = endpoint.into();
        self
    }

    /// Sets how long a batch may wait for its flush or acks (default 10 s).
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    fn headers(&self, stored: &StoredRecord) -> HeaderMap {
        let mut headers = HeaderMap::new();
        for (name, value) in stored.record.headers.iter() {
            // async-nats panics on a header name with ':' or control characters: such a
            // property cannot be a NATS header and is left out.
            match HeaderName::from_str(name) {
                Ok(name) => headers.insert(name, value),
                Err(_) => debug!(sink = %self.name, property = name, "not a NATS header name"),
            }
        }
        headers.insert(DEVICE_ID_HEADER, stored.record.key.as_str());
        headers.insert(
            async_nats::header::NATS_MESSAGE_ID,
            HeaderValue::from_lossy(&event_id(&self.endpoint, stored)),
        );
        headers
    }

    fn unavailable(&self, what: impl fmt::Display) -> SinkError {
        SinkError::Unavailable {
            reason: format!("NATS endpoint {}: {what}", self.name),
        }
    }

    async fn publish(&self, batch: SinkBatch<'_>) -> Result<(), SinkError> {
        let mut messages = Vec::with_capacity(batch.records.len());
        for stored in batch.records {
            let subject = self
                .subject
                .render(stored)
                .map_err(|e| SinkError::Rejected {
                    reason: format!("NATS endpoint {}: offset {}: {e}", self.name, stored.offset),
                })?;
            messages.push((subject, self.headers(stored), stored.record.payload.clone()));
        }
        match &self.jetstream {
            None => {
                for (subject, headers, payload) in messages {
                    self.client
                        .publish_with_headers(subject, headers, payload)
                        .await
                        .map_err(|e| self.unavailable(e))?;
                }
                // A flush returns once the server answered a PING sent after the messages.
                self.client.flush().await.map_err(|e| self.unavailable(e))?;
            }
            Some(jetstream) => {
                // Published back to back, acks awaited afterwards: one round trip per batch,
                // and the server stores them in the order sent.
                let mut acks = Vec::with_capacity(messages.len());
                for (subject, headers, payload) in messages {
                    acks.push(
                        jetstream
                            .publish_with_headers(subject, headers, payload)
                            .await
                            .map_err(|e| self.unavailable(e))?,
                    );
                }
                for ack in acks {
                    ack.await.map_err(|e| self.unavailable(e))?;
                }
            }
        }
        Ok(())
    }
}

#[async_trait]
impl Sink for NatsSink {
    fn name(&self) -> &str {
        &self.name
    }

    async fn write(&self, batch: SinkBatch<'_>) -> Result<(), SinkError> {
        tokio::time::timeout(self.timeout, self.publish(batch))
            .await
            .map_err(|_| self.unavailable(format!("not delivered within {:?}", self.timeout)))?
    }
}
