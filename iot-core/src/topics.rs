//! Named topics opened from one root.

use std::collections::HashMap;
use std::fmt::Debug;
use std::path::PathBuf;
use std::sync::Arc;

use async_trait::async_trait;

use crate::error::Result;
use crate::file_log::{FileLog, FileLogConfig};
use crate::limits::LogLimits;
use crate::log::Log;
use crate::memory_log::MemoryLog;
use crate::names::TopicName;
use crate::sync_util::lock;

/// Opens the log of one topic; implemented once per backend.
///
/// It is also what the conformance suite takes (`testkit::run_all`, feature `testkit`): the suite
/// opens every log it checks through the factory, under topic names drawn fresh per run, so an
/// integrator's factory over a persistent engine is tested as it will be used.
#[async_trait]
pub trait LogFactory: Send + Sync + Debug + 'static {
    /// Opens (creating if needed) the log of `topic` with `partitions` partitions.
    async fn open_log(&self, topic: &TopicName, partitions: u32) -> Result<Arc<dyn Log>>;
}

/// Topics held in memory.
#[derive(Debug, Default)]
pub struct MemoryLogFactory {
    /// Limits of every topic.
    pub limits: LogLimits,
}

#[async_trait]
impl LogFactory for MemoryLogFactory {
    async fn open_log(&self, _topic: &TopicName, partitions: u32) -> Result<Arc<dyn Log>> {
        Ok(Arc::new(MemoryLog::with_limits(partitions, self.limits)?))
    }
}

/// Topics as [`FileLog`]s in subdirectories of one root directory (`ROOT/TOPIC/`).
#[derive(Debug)]
pub struct FileLogFactory {
    /// The root directory.
    pub root: PathBuf,
    /// Configuration of every topic (its `partitions` is replaced by the topic's).
    pub config: FileLogConfig,
}

#[async_trait]
impl LogFactory for FileLogFactory {
    async fn open_log(&self, topic: &TopicName, partitions: u32) -> Result<Arc<dyn Log>> {
        let config = FileLogConfig {
            partitions,
            ..self.config.clone()
        };
        Ok(Arc::new(
            FileLog::open(self.root.join(topic.as_str()), config).await?,
        ))
    }
}

/// Named topics — `telemetry`, `alerts`, `audit`, … — opened on first use from one root and shared
/// afterwards: every caller asking for a topic gets the same log.
///
/// ```
/// # tokio::runtime::Builder::new_current_thread().build().unwrap().block_on(async {
/// use std::sync::Arc;
/// use iot_core::{Topics, TopicName};
///
/// let topics = Topics::memory(4);
/// let telemetry = topics.topic(TopicName::TELEMETRY).await?;
/// assert!(Arc::ptr_eq(&telemetry, &topics.topic("telemetry").await?));
/// assert_eq!(telemetry.partition_count(), 4);
/// # Ok::<(), iot_core::Error>(()) }).unwrap();
/// ```
#[derive(Debug)]
pub struct Topics {
    factory: Box<dyn LogFactory>,
    default_partitions: u32,
    /// The topics opened so far. A lookup of an open topic takes only this lock, for a hash
    /// lookup and an `Arc` clone, and never waits on another task: callers that look topics up
    /// often (a processor host emitting to many topics) do not queue behind an opening.
    open: std::sync::Mutex<HashMap<TopicName, Arc<dyn Log>>>,
    /// Held while a topic is opened, so that one topic is never opened twice.
    opening: tokio::sync::Mutex<()>,
}

impl Topics {
    /// Topics from `factory`, with `default_partitions` partitions unless a topic is opened with
    /// [`topic_with_partitions`](Self::topic_with_partitions).
    pub fn new(factory: impl LogFactory, default_partitions: u32) -> Self {
        Topics {
            factory: Box::new(factory),
            default_partitions,
            open: std::sync::Mutex::new(HashMap::new()),
            opening: tokio::sync::Mutex::new(()),
        }
    }

    /// In-memory topics.
    pub fn memory(default_partitions: u32) -> Self {
        Self::new(MemoryLogFactory::default(), default_partitions)
    }

    /// File-backed topics under `root`, each configured as `config` (its partition count is the
    /// default).
    pub fn file(root: impl Into<PathBuf>, config: FileLogConfig) -> Self {
        let partitions = config.partitions;
        Self::new(
            FileLogFactory {
                root: root.into(),
                config,
            },
            partitions,
        )
    }

    /// The log of topic `name`, opened with the default partition count if it is not open yet.
    pub async fn topic(&self, name: &str) -> Result<Arc<dyn Log>> {
        self.topic_with_partitions(name, self.default_partitions)
            .await
    }

    /// The log of topic `name`, opened with `partitions` partitions if it is not open yet.
    pub async fn topic_with_partitions(&self, name: &str, partitions: u32) -> Result<Arc<dyn Log>> {
        let name = TopicName::new(name)?;
        if let Some(log) = lock(&self.open).get(&name) {
            return Ok(log.clone());
        }
        let _opening = self.opening.lock().await;
        // Another caller may have opened it while this one waited.
        if let Some(log) = lock(&self.open).get(&name) {
            return Ok(log.clone());
        }
        let log = self.factory.open_log(&name, partitions).await?;
        lock(&self.open).insert(name, log.clone());
        Ok(log)
    }

    /// The topics opened so far.
    pub async fn open_topics(&self) -> Vec<TopicName> {
        let mut names: Vec<_> = lock(&self.open).keys().cloned().collect();
        names.sort();
        names
    }
}

#[cfg(test)]
mod tests;
