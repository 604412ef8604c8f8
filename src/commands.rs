//! The hub side of the actors' commands (`docs/actors.md`, "The hub side"): a
//! [`StreamProcessor`] over the `commands` topic that carries out each
//! [`CommandRecord`] through the hub's public [`Gateway`] API — send a C2D message, invoke a
//! direct method, patch the desired properties — and appends a [`MethodResponse`] record to the
//! command's `reply-to` topic for every method answer and every command that failed.
//!
//! It lives in the facade because it joins two crates that do not depend on each other:
//! `iot-stream` (the record formats, the processor host) and `iot-gateway` (the hub).
//!
//! Run it with a [`ProcessorHost`](iot_stream::ProcessorHost) as a consumer group of the
//! `commands` topic: the host commits a batch only after the commands were executed and their
//! answers appended.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use futures::StreamExt;
use iot_core::{DeviceId, PartitionId, Record, StoredRecord};
use iot_gateway::{C2dMessage, Error as GatewayError, Gateway, MethodCall};
use iot_stream::actors::command::{Command, CommandRecord, MethodResponse};
use iot_stream::{Context, ProcessorFactory, StreamProcessor};
use serde_json::{Value, json};

/// How the executor runs commands.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct CommandConfig {
    /// Devices whose commands one partition's worker runs at once (each device's commands run
    /// one after the other, in log order). Default 16; at least 1.
    pub max_concurrent_devices: usize,
    /// The response timeout of a method whose record says `timeout_ms: 0`. Default 30 s.
    pub default_method_timeout: Duration,
    /// The longest response timeout a record may ask for (longer is cut to it), so that no
    /// record holds its partition longer. Default 300 s (IoT Hub's maximum).
    pub max_method_timeout: Duration,
    /// How long a method waits for its device to be connected and listening. Default zero: an
    /// offline device is answered 404 at once.
    pub connect_timeout: Duration,
    /// Attempts of a command that fails with a retryable hub error (a throttle, a store) before
    /// its failure is answered. An offline device or an unanswered method is an answer, never
    /// retried. Default 3; at least 1.
    pub attempts: u32,
    /// Backoff before the second attempt, doubled for each further one. Default 100 ms.
    pub backoff: Duration,
    /// How many executed command ids each partition's worker remembers, so that a batch the
    /// host retries (its answers could not be appended) does not execute them again. Default
    /// 10 000.
    pub remembered_ids: usize,
}

impl Default for CommandConfig {
    fn default() -> Self {
        CommandConfig {
            max_concurrent_devices: 16,
            default_method_timeout: Duration::from_secs(30),
            max_method_timeout: Duration::from_secs(300),
            connect_timeout: Duration::ZERO,
            attempts: 3,
            backoff: Duration::from_millis(100),
            remembered_ids: 10_000,
        }
    }
}

/// Chainable setters: the struct is `non_exhaustive`.
impl CommandConfig {
    /// Sets [`max_concurrent_devices`](Self::max_concurrent_devices).
    pub fn max_concurrent_devices(mut self, n: usize) -> Self {
        self.max_concurrent_devices = n;
        self
    }

    /// Sets [`default_method_timeout`](Self::default_method_timeout).
    pub fn default_method_timeout(mut self, timeout: Duration) -> Self {
        self.default_method_timeout = timeout;
        self
    }

    /// Sets [`max_method_timeout`](Self::max_method_timeout).
    pub fn max_method_timeout(mut self, timeout: Duration) -> Self {
        self.max_method_timeout = timeout;
        self
    }

    /// Sets [`connect_timeout`](Self::connect_timeout).
    pub fn connect_timeout(mut self, timeout: Duration) -> Self {
        self.connect_timeout = timeout;
        self
    }

    /// Sets [`attempts`](Self::attempts).
    pub fn attempts(mut self, attempts: u32) -> Self {
        self.attempts = attempts;
        self
    }

    /// Sets [`backoff`](Self::backoff).
    pub fn backoff(mut self, backoff: Duration) -> Self {
        self.backoff = backoff;
        self
    }

    /// Sets [`remembered_ids`](Self::remembered_ids).
    pub fn remembered_ids(mut self, n: usize) -> Self {
        self.remembered_ids = n;
        self
    }
}

/// Executes the commands topic's records on a hub: the [`ProcessorFactory`] to start as a
/// consumer group of `commands`.
///
/// ```
/// # tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(async {
/// use std::sync::Arc;
/// use iot_sdk::commands::CommandExecutor;
/// use iot_sdk::core::GroupName;
/// use iot_sdk::gateway::Hub;
/// use iot_sdk::identity::MemoryIdentityStore;
/// use iot_sdk::stream::{HostConfig, ProcessorHost};
///
/// let hub = Arc::new(Hub::memory(Arc::new(MemoryIdentityStore::new()), "hub.local").await?);
/// let host = ProcessorHost::new(hub.topics().clone());
/// let executor = CommandExecutor::new(hub.clone());
/// let group = host
///     .start("commands", GroupName::new("hub-commands")?, Arc::new(executor), HostConfig::default())
///     .await?;
/// group.shutdown().await?;
/// # Ok::<(), Box<dyn std::error::Error>>(()) }).unwrap();
/// ```
#[derive(Clone, Debug)]
pub struct CommandExecutor {
    gateway: Arc<dyn Gateway>,
    config: CommandConfig,
}

impl CommandExecutor {
    /// An executor on `gateway` with the default [`CommandConfig`].
    pub fn new(gateway: Arc<dyn Gateway>) -> Self {
        CommandExecutor {
            gateway,
            config: CommandConfig::default(),
        }
    }

    /// Replaces the configuration; zero counts are raised to 1.
    pub fn with_config(mut self, mut config: CommandConfig) -> Self {
        config.max_concurrent_devices = config.max_concurrent_devices.max(1);
        config.attempts = config.attempts.max(1);
        config.remembered_ids = config.remembered_ids.max(1);
        self.config = config;
        self
    }
}

impl ProcessorFactory for CommandExecutor {
    fn create(&self, _partition: PartitionId) -> iot_stream::Result<Box<dyn StreamProcessor>> {
        Ok(Box::new(CommandProcessor {
            gateway: self.gateway.clone(),
            config: self.config.clone(),
            done: Remembered::default(),
        }))
    }
}

/// One partition's executor.
#[derive(Debug)]
struct CommandProcessor {
    gateway: Arc<dyn Gateway>,
    config: CommandConfig,
    done: Remembered,
}

/// What executing one command gave: the answer to append (topic, record), if any.
type Answer = Option<(String, Record)>;

#[async_trait]
impl StreamProcessor for CommandProcessor {
    async fn process(
        &mut self,
        batch: &[StoredRecord],
        ctx: &mut Context,
    ) -> iot_stream::Result<()> {
        // Each device's commands in log order; devices side by side.
        let mut answers: Vec<Answer> = vec![None; batch.len()];
        let mut by_device: HashMap<&str, Vec<(usize, CommandRecord)>> = HashMap::new();
        let mut order: Vec<&str> = Vec::new();
        // An actor's re-emission can sit in the same batch as the original: run it once.
        let mut in_batch: HashSet<String> = HashSet::new();
        let mut malformed = None;
        for (i, stored) in batch.iter().enumerate() {
            let command = match CommandRecord::from_record(&stored.record) {
                Ok(command) => command,
                Err(e) => {
                    // Failed after the others ran: the host retries (the others are remembered
                    // and not executed again) and then dead-letters this record alone.
                    malformed.get_or_insert(e);
                    continue;
                }
            };
            if let Some(answer) = self.done.get(&command.id) {
                answers[i] = answer.clone();
                continue;
            }
            if !in_batch.insert(command.id.clone()) {
                continue;
            }
            let key = stored.record.key.as_str();
            let queue = by_device.entry(key).or_default();
            if queue.is_empty() {
                order.push(key);
            }
            queue.push((i, command));
        }
        let groups: Vec<Vec<(usize, CommandRecord)>> = order
            .into_iter()
            .filter_map(|d| by_device.remove(d))
            .collect();
        let gateway = &self.gateway;
        let config = &self.config;
        let results: Vec<Vec<(usize, String, Answer)>> = futures::stream::iter(groups)
            .map(|commands| async move {
                let mut out = Vec::with_capacity(commands.len());
                for (i, command) in commands {
                    let answer = execute(gateway.as_ref(), config, &command).await;
                    out.push((i, command.id, answer));
                }
                out
            })
            .buffer_unordered(config.max_concurrent_devices)
            .collect()
            .await;
        for (i, id, answer) in results.into_iter().flatten() {
            self.done.insert(id, answer.clone(), config.remembered_ids);
            answers[i] = answer;
        }
        for (topic, record) in answers.into_iter().flatten() {
            ctx.emit(&topic, record);
        }
        match malformed {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }
}

/// Runs one command and makes its answer: the method's response, or the failure's outcome.
async fn execute(gateway: &dyn Gateway, config: &CommandConfig, command: &CommandRecord) -> Answer {
    let outcome = match DeviceId::new(&command.device) {
        Ok(device) => attempt(gateway, config, &device, &command.command, &command.id).await,
        Err(e) => Err((400, format!("invalid device id: {e}"))),
    };
    let (status, payload) = match outcome {
        Ok(None) => return None,
        Ok(Some(answer)) => answer,
        Err((status, error)) => {
            tracing::warn!(
                command = %command.id,
                device = %command.device,
                kind = command.command.kind(),
                status,
                %error,
                "command failed"
            );
            (status, json!({ "error": error }))
        }
    };
    let Some(topic) = &command.reply_to else {
        return None;
    };
    let response = MethodResponse {
        device: command.device.clone(),
        command_id: command.id.clone(),
        status,
        payload,
    };
    match response.to_record() {
        Ok(record) => Some((topic.clone(), record)),
        Err(e) => {
            tracing::warn!(command = %command.id, error = %e, "answer not serializable");
            None
        }
    }
}

/// The command's answer (`Some((status, payload))` for a method, `None` for a C2D message or
/// a patch that went through), or its failure as `(status, reason)`, after retrying
/// retryable hub errors.
async fn attempt(
    gateway: &dyn Gateway,
    config: &CommandConfig,
    device: &DeviceId,
    command: &Command,
    id: &str,
) -> Result<Option<(i32, Value)>, (i32, String)> {
    let mut backoff = config.backoff;
    let mut tries = 1;
    loop {
        match once(gateway, config, device, command, id).await {
            Ok(answer) => return Ok(answer),
            Err(e) if tries < config.attempts && transient(&e) => {
                tracing::debug!(command = %id, error = %e, "retrying command");
                tokio::time::sleep(backoff).await;
                backoff = backoff.saturating_mul(2);
                tries += 1;
            }
            Err(e) => return Err((status_of(&e), e.to_string())),
        }
    }
}

async fn once(
    gateway: &dyn Gateway,
    config: &CommandConfig,
    device: &DeviceId,
    command: &Command,
    id: &str,
) -> Result<Option<(i32, Value)>, GatewayError> {
    match command {
        Command::C2d { body, properties } => {
            let mut message = C2dMessage::new(body.clone().into_bytes());
            // The command id is the message id: a device sees a re-executed command's copy
            // under the same id and can drop it (the inbox itself does not deduplicate).
            message.message_id = Some(id.to_owned());
            message.properties = properties
                .iter()
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect();
            gateway.send_c2d(device, message).await?;
            Ok(None)
        }
        Command::DirectMethod {
            method,
            payload,
            timeout_ms,
        } => {
            let timeout = match *timeout_ms {
                0 => config.default_method_timeout,
                ms => Duration::from_millis(ms),
            }
            .min(config.max_method_timeout);
            let mut call = MethodCall::new(method.clone(), payload.to_string().into_bytes());
            call.response_timeout = timeout;
            call.connect_timeout = config.connect_timeout;
            let response = gateway.invoke_method(device, call).await?;
            // A device may answer something that is not JSON; it is passed on as a string.
            let payload = if response.payload.is_empty() {
                Value::Null
            } else {
                serde_json::from_slice(&response.payload).unwrap_or_else(|_| {
                    Value::String(String::from_utf8_lossy(&response.payload).into_owned())
                })
            };
            Ok(Some((response.status, payload)))
        }
        Command::DesiredPatch { patch } => {
            gateway.patch_desired(device, patch.clone(), None).await?;
            Ok(None)
        }
    }
}

/// Whether a failure is worth another attempt here: an offline device and an unanswered
/// method are answers to the actor (who may try later), not hub trouble.
fn transient(e: &GatewayError) -> bool {
    e.is_retryable()
        && !matches!(
            e,
            GatewayError::DeviceOffline { .. } | GatewayError::TimedOut { .. }
        )
}

/// The HTTP-style status of a failed command, as IoT Hub's service API would answer it.
fn status_of(e: &GatewayError) -> i32 {
    match e {
        GatewayError::DeviceNotFound { .. }
        | GatewayError::ModuleNotFound { .. }
        | GatewayError::DeviceOffline { .. } => 404,
        GatewayError::TimedOut { .. } => 504,
        GatewayError::Throttled { .. } => 429,
        GatewayError::QueueFull { .. } => 403,
        GatewayError::TooLarge { .. } => 413,
        GatewayError::InvalidInput { .. } | GatewayError::InvalidProperty { .. } => 400,
        GatewayError::PreconditionFailed { .. } => 412,
        GatewayError::Shutdown => 503,
        _ => 500,
    }
}

/// The answers of the last executed command ids, oldest forgotten first.
#[derive(Debug, Default)]
struct Remembered {
    answers: HashMap<String, Answer>,
    order: VecDeque<String>,
}

impl Remembered {
    fn get(&self, id: &str) -> Option<&Answer> {
        self.answers.get(id)
    }

    fn insert(&mut self, id: String, answer: Answer, capacity: usize) {
        if self.answers.insert(id.clone(), answer).is_none() {
            self.order.push_back(id);
        }
        while self.order.len() > capacity {
            if let Some(old) = self.order.pop_front() {
                self.answers.remove(&old);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn remembered_ids_forget_the_oldest_first() {
        let mut done = Remembered::default();
        for n in 0..5 {
            done.insert(format!("c{n}"), None, 3);
        }
        let kept: HashSet<&str> = done.answers.keys().map(String::as_str).collect();
        assert_eq!(kept, HashSet::from(["c2", "c3", "c4"]));
        done.insert("c3".into(), None, 3);
        assert_eq!(done.order.len(), 3);
    }
}
