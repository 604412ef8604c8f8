//! Connecting to NATS and opening topics.

use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::message::PublishMessage;
use async_nats::jetstream::stream::LastRawMessageErrorKind;
use async_nats::jetstream::{self, stream};
use async_nats::{ConnectOptions, ServerAddr};
use async_trait::async_trait;
use bytes::Bytes;
use iot_core::{Error, Log, LogFactory, LogLimits, PartitionId, Result, TopicName};

use super::codec;
use super::config::{NatsLogConfig, NatsStorage, redacted};
use super::error::{Timeout, backend, request};
use super::log::NatsLog;
use super::naming::{TopicNames, meta_stream, meta_subject};

/// What every log of one factory shares: the connection and the buckets.
#[derive(Debug)]
pub(crate) struct Shared {
    pub(crate) client: async_nats::Client,
    pub(crate) js: jetstream::Context,
    pub(crate) config: NatsLogConfig,
    /// The configured limits, with the record limit lowered to what fits in a message.
    pub(crate) limits: LogLimits,
    /// The stream of topic partition counts and group commits (see [`meta_stream`]).
    pub(crate) meta: stream::Stream,
    /// This writer's subject token in every partition stream (random, so that two processes
    /// never share one).
    pub(crate) writer: String,
}

impl Shared {
    pub(crate) fn storage(&self) -> stream::StorageType {
        match self.config.storage {
            NatsStorage::File => stream::StorageType::File,
            NatsStorage::Memory => stream::StorageType::Memory,
        }
    }

    /// The value of a metadata key (its subject's last message), or `None`.
    pub(crate) async fn get_meta(&self, subject: &str) -> Result<Option<Bytes>> {
        self.timed("reading metadata", async {
            match self.meta.get_last_raw_message_by_subject(subject).await {
                Ok(message) => Ok(Some(message.payload)),
                Err(e) if e.kind() == LastRawMessageErrorKind::NoMessageFound => Ok(None),
                Err(e) => Err(request(e)),
            }
        })
        .await
    }

    /// Runs `f` within the request timeout, so that no call waits on a dead server for longer.
    pub(crate) async fn timed<T>(
        &self,
        what: &'static str,
        f: impl Future<Output = Result<T>>,
    ) -> Result<T> {
        let timeout = self.config.request_timeout;
        tokio::time::timeout(timeout, f).await.unwrap_or_else(|_| {
            Err(backend(
                Timeout {
                    what,
                    millis: timeout.as_millis() as u64,
                },
                true,
            ))
        })
    }
}

/// Opens [`NatsLog`]s — one per topic, one JetStream stream per partition — over one connection.
///
/// ```no_run
/// # async fn demo() -> iot_core::Result<()> {
/// use iot_core::{LogExt, LogFactory, PartitionId, Record, TopicName};
/// use iot_sdk::nats::{NatsLogConfig, NatsLogFactory};
///
/// let factory = NatsLogFactory::connect(NatsLogConfig::from_url("nats://127.0.0.1:4222")?).await?;
/// let log = factory.open_log(&TopicName::new("telemetry")?, 4).await?;
/// log.append_one(PartitionId(0), Record::new("dev-1", "21.5")).await?;
/// # Ok(()) }
/// ```
#[derive(Debug, Clone)]
pub struct NatsLogFactory {
    shared: Arc<Shared>,
}

impl NatsLogFactory {
    /// Connects and makes sure the buckets for partition counts and group commits exist.
    ///
    /// Fails within `connect_timeout` with a retryable `Error::Backend` when no server answers.
    /// Once connected, the client reconnects by itself after an outage; calls made meanwhile fail
    /// after `request_timeout`.
    pub async fn connect(config: NatsLogConfig) -> Result<Self> {
        config.validate()?;
        let addrs = config
            .servers
            .split(',')
            .map(|s| {
                s.trim().parse::<ServerAddr>().map_err(|_| Error::Config {
                    reason: format!("NATS log: not a server URL: {}", redacted(s)),
                })
            })
            .collect::<Result<Vec<_>>>()?;
        let options = ConnectOptions::new()
            .connection_timeout(config.connect_timeout)
            .request_timeout(Some(config.request_timeout))
            .name("iot-sdk log");
        // The client's own timeout covers each attempt; this one covers the whole handshake.
        let client = tokio::time::timeout(config.connect_timeout * 2, options.connect(addrs))
            .await
            .map_err(|_| {
                backend(
                    Timeout {
                        what: "connecting",
                        millis: (config.connect_timeout * 2).as_millis() as u64,
                    },
                    true,
                )
            })?
            .map_err(|e| backend(e, true))?;
        let js = jetstream::ContextBuilder::new()
            .timeout(config.request_timeout)
            .ack_timeout(config.request_timeout)
            .build(client.clone());

        // A message carries the encoded record, our headers and the subject; leave room for them.
        let max_payload = client.server_info().max_payload;
        let fits = max_payload.saturating_sub(codec::OVERHEAD + 512);
        let mut limits = config.limits;
        if limits.max_record_bytes > fits {
            limits = limits.max_record_bytes(fits);
        }
        limits.validate()?;

        // A key-value store made by hand: one subject per key, keeping its last message only.
        // (async-nats's KV layer sends settings nats-server 2.9 does not understand.)
        let meta_config = stream::Config {
            name: meta_stream(&config.prefix),
            subjects: vec![meta_subject(&config.prefix, ">")],
            max_messages_per_subject: 1,
            storage: match config.storage {
                NatsStorage::File => stream::StorageType::File,
                NatsStorage::Memory => stream::StorageType::Memory,
            },
            num_replicas: config.replicas,
            allow_direct: true,
            ..stream::Config::default()
        };
        let meta = tokio::time::timeout(config.request_timeout, get_or_create(&js, meta_config))
            .await
            .map_err(|_| {
                backend(
                    Timeout {
                        what: "creating the metadata stream",
                        millis: config.request_timeout.as_millis() as u64,
                    },
                    true,
                )
            })?
            .map_err(request)?;
        Ok(NatsLogFactory {
            shared: Arc::new(Shared {
                client,
                js,
                config,
                limits,
                meta,
                writer: format!("w{:016x}", rand::random::<u64>()),
            }),
        })
    }

    /// The limits every log of this factory enforces (the configured ones, with the record limit
    /// lowered to the server's `max_payload` if needed).
    pub fn limits(&self) -> LogLimits {
        self.shared.limits
    }

    /// The connection, for callers that want to share it.
    pub fn client(&self) -> &async_nats::Client {
        &self.shared.client
    }

    /// Opens the log of `topic`, creating its streams if needed. A topic keeps the partition
    /// count it was created with: another count is refused with `Error::Config`.
    pub async fn open(&self, topic: &TopicName, partitions: u32) -> Result<NatsLog> {
        if partitions == 0 {
            return Err(Error::Config {
                reason: "a log needs at least one partition".into(),
            });
        }
        let names = TopicNames::new(&self.shared.config.prefix, topic)?;
        self.check_partition_count(topic, &names, partitions)
            .await?;
        let mut streams = Vec::with_capacity(partitions as usize);
        for p in 0..partitions {
            let p = PartitionId(p);
            let config = stream_config(&self.shared, &names, p);
            let window = config.duplicate_window;
            let stream = self
                .shared
                .timed("creating a stream", async {
                    get_or_create(&self.shared.js, config)
                        .await
                        .map_err(request)
                })
                .await?;
            streams.push(self.shorten_duplicate_window(stream, window).await?);
        }
        Ok(NatsLog::new(
            self.shared.clone(),
            topic.clone(),
            names,
            streams,
        ))
    }

    /// A stream created before appends chained by message id keeps ids for the server's default
    /// two minutes: every id appended in that time, in the server's memory. Shorten its window.
    async fn shorten_duplicate_window(
        &self,
        mut stream: stream::Stream,
        window: Duration,
    ) -> Result<stream::Stream> {
        let current = stream.cached_info().config.clone();
        if current.duplicate_window <= window {
            return Ok(stream);
        }
        let config = stream::Config {
            duplicate_window: window,
            ..current
        };
        self.shared
            .timed("shortening a stream's duplicate window", async {
                self.shared.js.update_stream(config).await.map_err(request)
            })
            .await?;
        self.shared
            .timed("reading stream state", async {
                stream.info().await.map(|_| ()).map_err(request)
            })
            .await?;
        Ok(stream)
    }

    async fn check_partition_count(
        &self,
        topic: &TopicName,
        names: &TopicNames,
        partitions: u32,
    ) -> Result<()> {
        let subject = meta_subject(&self.shared.config.prefix, &names.topic_key());
        let stored = match self.shared.get_meta(&subject).await? {
            Some(v) => v,
            None => {
                let value = Bytes::from(partitions.to_string());
                // Stored only if the subject has no message yet; if another process created the
                // topic first, read what it stored.
                let message = PublishMessage::build()
                    .payload(value.clone())
                    .expected_last_subject_sequence(0);
                let created = self
                    .shared
                    .timed("storing a topic's partition count", async {
                        let ack = self
                            .shared
                            .js
                            .send_publish(subject.clone(), message)
                            .await
                            .map_err(request)?;
                        Ok(ack.await)
                    })
                    .await?;
                match created {
                    Ok(_) => value,
                    Err(_) => self.shared.get_meta(&subject).await?.unwrap_or(value),
                }
            }
        };
        let count = std::str::from_utf8(&stored)
            .ok()
            .and_then(|s| s.parse::<u32>().ok());
        match count {
            Some(n) if n == partitions => Ok(()),
            Some(n) => Err(Error::Config {
                reason: format!(
                    "topic {topic} has {n} partitions in NATS; opening it with {partitions} would move keys to other partitions"
                ),
            }),
            None => Err(Error::Config {
                reason: format!("topic {topic}: unreadable partition count in NATS"),
            }),
        }
    }
}

#[async_trait]
impl LogFactory for NatsLogFactory {
    async fn open_log(&self, topic: &TopicName, partitions: u32) -> Result<Arc<dyn Log>> {
        Ok(Arc::new(self.open(topic, partitions).await?))
    }
}

/// One partition's stream: one subject, limits-based retention (a prefix is all it ever drops),
/// no deletes of single messages (a hole would break dense offsets), direct gets for reads by
/// sequence.
fn stream_config(shared: &Shared, names: &TopicNames, p: PartitionId) -> stream::Config {
    let limits = shared.config.stream_limits;
    stream::Config {
        name: names.stream(p),
        // One subject per writer, so that each message says which writer stored it.
        subjects: vec![format!("{}.*", names.subject(p))],
        retention: stream::RetentionPolicy::Limits,
        discard: stream::DiscardPolicy::Old,
        max_age: limits.max_age.unwrap_or(Duration::ZERO),
        max_bytes: limits
            .max_bytes
            .map_or(-1, |b| i64::try_from(b).unwrap_or(i64::MAX)),
        storage: shared.storage(),
        num_replicas: shared.config.replicas,
        deny_delete: true,
        allow_direct: true,
        duplicate_window: duplicate_window(shared),
        ..stream::Config::default()
    }
}

/// How long the server remembers a message id (its default is two minutes).
const DUPLICATE_WINDOW: Duration = Duration::from_secs(1);

/// Appends chain their records by message id (see `append`), and the ids are unique, so the
/// server's duplicate tracking buys nothing and costs memory for every id in the window: keep it
/// short. It may not exceed `max_age`.
fn duplicate_window(shared: &Shared) -> Duration {
    match shared.config.stream_limits.max_age {
        Some(age) if !age.is_zero() => age.min(DUPLICATE_WINDOW),
        _ => DUPLICATE_WINDOW,
    }
}

/// `get_or_create_stream`, tolerant of a race with another process creating the same stream:
/// both find it missing, both create it, and nats-server 2.9 may refuse the second create (seen:
/// "subjects overlap with an existing stream", when gateway instances of one cluster start
/// together). Whatever the create's error, a stream of that name that now exists is the one.
async fn get_or_create(
    js: &async_nats::jetstream::Context,
    config: stream::Config,
) -> std::result::Result<stream::Stream, async_nats::jetstream::context::CreateStreamError> {
    let name = config.name.clone();
    match js.get_or_create_stream(config).await {
        Ok(stream) => Ok(stream),
        Err(create) => match js.get_stream(&name).await {
            Ok(stream) => {
                tracing::debug!(stream = %name, error = %create, "another process created the stream first");
                Ok(stream)
            }
            Err(_) => Err(create),
        },
    }
}
