//! The configuration engine: applies each device's winning configuration (the highest priority
//! among those whose target condition matches it; ties go to the one created last) as a
//! desired-properties patch, and counts targeted and applied devices.
//!
//! Evaluation runs in one background worker, woken by a configuration written or deleted (every
//! device is evaluated again), by [`ConfigurationEngine::device_changed`] (the HTTP layer calls
//! it when a device is created or its twin's tags change: that device alone), and on a timer
//! ([`ConfigurationsConfig::sweep_interval`]) for changes made elsewhere (a registry write that
//! bypassed the service API, a reported property a condition reads). A device gets a
//! configuration's patch once per configuration version (its etag), recorded in the applied
//! map the store keeps, so a restart does not push it again.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use iot_core::{DeviceId, Timestamp};
use serde::{Deserialize, Serialize};
use tokio::sync::Notify;

use super::configuration::{Configuration, ConfigurationSpec, desired_patch};
use super::devices::FleetDevices;
use super::error::{FleetError, FleetResult};
use super::store::{Applied, ConfigurationStore};
use crate::sync_util::lock;

/// How the engine evaluates.
#[derive(Debug, Clone)]
pub struct ConfigurationsConfig {
    /// How often every device is evaluated again, whatever changed.
    pub sweep_interval: Duration,
    /// The most configurations a hub holds (IoT Hub's limit is 100 on its standard tiers).
    pub max_configurations: usize,
}

impl Default for ConfigurationsConfig {
    fn default() -> Self {
        ConfigurationsConfig {
            sweep_interval: Duration::from_secs(60),
            max_configurations: 100,
        }
    }
}

/// IoT Hub's system metrics of a configuration.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SystemMetrics {
    /// Devices its target condition matched at the last evaluation.
    pub targeted_count: u64,
    /// Devices it won and whose twin got its content.
    pub applied_count: u64,
}

/// Creates, evaluates and answers for configurations. Cloning shares the engine.
#[derive(Debug, Clone)]
pub struct ConfigurationEngine {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    store: Arc<dyn ConfigurationStore>,
    devices: Arc<dyn FleetDevices>,
    config: ConfigurationsConfig,
    configurations: Mutex<BTreeMap<String, Configuration>>,
    /// Devices each configuration's condition matched at the last evaluation.
    targeted: Mutex<BTreeMap<String, BTreeSet<String>>>,
    applied: Mutex<Applied>,
    /// One evaluation at a time.
    evaluating: tokio::sync::Mutex<()>,
    sequence: AtomicU64,
    /// Work for the worker: a full evaluation, and single devices.
    all_due: AtomicBool,
    devices_due: Mutex<BTreeSet<DeviceId>>,
    wake: Notify,
}

fn now_ms() -> u64 {
    Timestamp::now().as_unix_millis()
}

fn new_etag() -> String {
    use base64::Engine as _;
    let bytes: [u8; 12] = rand::random();
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

impl ConfigurationEngine {
    /// Opens the engine over `store` and starts its worker, which evaluates every device once
    /// at start and then as changes and the sweep interval ask.
    pub async fn open(
        store: Arc<dyn ConfigurationStore>,
        devices: Arc<dyn FleetDevices>,
        config: ConfigurationsConfig,
    ) -> FleetResult<Self> {
        let saved = store.load_all().await?;
        let applied = store.load_applied().await?;
        let sequence = saved.iter().map(|c| c.sequence).max().unwrap_or(0);
        let inner = Arc::new(Inner {
            store,
            devices,
            config,
            configurations: Mutex::new(saved.into_iter().map(|c| (c.spec.id.clone(), c)).collect()),
            targeted: Mutex::new(BTreeMap::new()),
            applied: Mutex::new(applied),
            evaluating: tokio::sync::Mutex::new(()),
            sequence: AtomicU64::new(sequence),
            all_due: AtomicBool::new(true),
            devices_due: Mutex::new(BTreeSet::new()),
            wake: Notify::new(),
        });
        // The first evaluation at once (the permit waits for the worker).
        inner.wake.notify_one();
        tokio::spawn(worker(Arc::downgrade(&inner)));
        Ok(ConfigurationEngine { inner })
    }

    /// Writes a configuration: creates it when `if_match` is `None` (it must not exist), or
    /// replaces it when `if_match` is `*` or its current etag. Every device is evaluated again
    /// soon after.
    pub async fn put(
        &self,
        spec: ConfigurationSpec,
        if_match: Option<&str>,
    ) -> FleetResult<Configuration> {
        validate(&spec, self.inner.devices.as_ref())?;
        let now = now_ms();
        let configuration = {
            let configurations = lock(&self.inner.configurations);
            match (configurations.get(&spec.id), if_match) {
                (Some(_), None) => {
                    return Err(FleetError::Exists {
                        kind: "configuration",
                        id: spec.id,
                    });
                }
                (Some(old), Some(etag)) if etag != "*" && etag != old.etag => {
                    return Err(FleetError::PreconditionFailed {
                        id: spec.id,
                        etag: etag.to_owned(),
                    });
                }
                (Some(old), Some(_)) => Configuration {
                    spec,
                    created_ms: old.created_ms,
                    updated_ms: now,
                    etag: new_etag(),
                    sequence: old.sequence,
                },
                (None, Some(etag)) if etag != "*" => {
                    return Err(FleetError::NotFound {
                        kind: "configuration",
                        id: spec.id,
                    });
                }
                (None, _) => {
                    if configurations.len() >= self.inner.config.max_configurations {
                        return Err(FleetError::Invalid(format!(
                            "a hub holds at most {} configurations",
                            self.inner.config.max_configurations
                        )));
                    }
                    Configuration {
                        spec,
                        created_ms: now,
                        updated_ms: now,
                        etag: new_etag(),
                        sequence: self.inner.sequence.fetch_add(1, Ordering::Relaxed) + 1,
                    }
                }
            }
        };
        self.inner.store.save(&configuration).await?;
        lock(&self.inner.configurations)
            .insert(configuration.spec.id.clone(), configuration.clone());
        tracing::info!(configuration = %configuration.spec.id, priority = configuration.spec.priority, "configuration written");
        self.inner.schedule_all();
        Ok(configuration)
    }

    /// The configuration `id`.
    pub fn get(&self, id: &str) -> FleetResult<Configuration> {
        lock(&self.inner.configurations)
            .get(id)
            .cloned()
            .ok_or_else(|| FleetError::NotFound {
                kind: "configuration",
                id: id.to_owned(),
            })
    }

    /// Up to `top` configurations, in id order.
    pub fn list(&self, top: usize) -> Vec<Configuration> {
        lock(&self.inner.configurations)
            .values()
            .take(top)
            .cloned()
            .collect()
    }

    /// Deletes configuration `id` (if `if_match` is given, only at that etag or `*`). Devices
    /// keep the desired properties it set (as in IoT Hub); another configuration that now wins
    /// a device is applied at the next evaluation.
    pub async fn delete(&self, id: &str, if_match: Option<&str>) -> FleetResult<()> {
        let current = self.get(id)?;
        if let Some(etag) = if_match
            && etag != "*"
            && etag != current.etag
        {
            return Err(FleetError::PreconditionFailed {
                id: id.to_owned(),
                etag: etag.to_owned(),
            });
        }
        self.inner.store.delete(id).await?;
        lock(&self.inner.configurations).remove(id);
        lock(&self.inner.targeted).remove(id);
        tracing::info!(configuration = %id, "configuration deleted");
        self.inner.schedule_all();
        Ok(())
    }

    /// The system metrics of configuration `id` as of the last evaluation.
    pub fn system_metrics(&self, id: &str) -> SystemMetrics {
        let Ok(configuration) = self.get(id) else {
            return SystemMetrics::default();
        };
        let targeted_count = lock(&self.inner.targeted)
            .get(id)
            .map_or(0, |s| s.len() as u64);
        let applied_count = lock(&self.inner.applied)
            .values()
            .filter(|(cid, etag)| *cid == configuration.spec.id && *etag == configuration.etag)
            .count() as u64;
        SystemMetrics {
            targeted_count,
            applied_count,
        }
    }

    /// The custom metrics of configuration `id`: each query's answer counted (a query that
    /// fails is left out, with a warning).
    pub async fn custom_metrics(&self, id: &str) -> FleetResult<BTreeMap<String, u64>> {
        let configuration = self.get(id)?;
        let mut out = BTreeMap::new();
        for (name, query) in &configuration.spec.metrics_queries {
            match self.inner.devices.count(query).await {
                Ok(n) => {
                    out.insert(name.clone(), n);
                }
                Err(e) => {
                    tracing::warn!(configuration = %id, metric = %name, error = %e, "metric query failed")
                }
            }
        }
        Ok(out)
    }

    /// The configuration (id) that won `device` at the last evaluation, if any.
    pub fn applied_to(&self, device: &DeviceId) -> Option<String> {
        lock(&self.inner.applied)
            .get(device.as_str())
            .map(|(id, _)| id.clone())
    }

    /// Asks for `device` to be evaluated again (it was created, or its tags changed).
    pub fn device_changed(&self, device: &DeviceId) {
        lock(&self.inner.devices_due).insert(device.clone());
        self.inner.wake.notify_one();
    }

    /// Evaluates every device now and waits for it (tests and tools; the worker does the same
    /// on its own).
    pub async fn evaluate_all(&self) -> FleetResult<()> {
        self.inner.evaluate_all().await
    }

    /// Checks a target condition and metric queries without storing anything (IoT Hub's
    /// `testQueries`): the condition's error (empty when valid) and each failing query's.
    pub async fn test_queries(
        &self,
        target_condition: &str,
        metric_queries: &BTreeMap<String, String>,
    ) -> (String, BTreeMap<String, String>) {
        let condition_error = if target_condition.is_empty() {
            String::new()
        } else {
            self.inner
                .devices
                .check_condition(target_condition)
                .err()
                .map(|e| e.to_string())
                .unwrap_or_default()
        };
        let mut errors = BTreeMap::new();
        for (name, query) in metric_queries {
            if let Err(e) = self.inner.devices.count(query).await {
                errors.insert(name.clone(), e.to_string());
            }
        }
        (condition_error, errors)
    }
}

fn validate(spec: &ConfigurationSpec, devices: &dyn FleetDevices) -> FleetResult<()> {
    let id_ok = !spec.id.is_empty()
        && spec.id.len() <= 128
        && spec.id.bytes().all(|b| {
            b.is_ascii_lowercase() || b.is_ascii_digit() || b"-:+%_#*?!(),=@;$'".contains(&b)
        });
    if !id_ok {
        return Err(FleetError::Invalid(
            "a configuration id is 1 to 128 lowercase letters, digits or -:+%_#*?!(),=@;$'".into(),
        ));
    }
    if spec.priority < 0 {
        return Err(FleetError::Invalid("priority must be 0 or more".into()));
    }
    desired_patch(&spec.device_content)?;
    if !spec.target_condition.trim().is_empty() {
        devices.check_condition(&spec.target_condition)?;
    }
    Ok(())
}

/// The configuration that wins `device`: the first of `ordered` (highest precedence first)
/// whose targeted set holds it.
fn winner<'a>(
    ordered: &'a [Configuration],
    targeted: &BTreeMap<String, BTreeSet<String>>,
    device: &str,
) -> Option<&'a Configuration> {
    ordered
        .iter()
        .find(|c| targeted.get(&c.spec.id).is_some_and(|s| s.contains(device)))
}

async fn worker(inner: Weak<Inner>) {
    loop {
        let Some(strong) = inner.upgrade() else {
            return;
        };
        let interval = strong.config.sweep_interval;
        let woken = {
            let notified = strong.wake.notified();
            tokio::select! {
                () = notified => true,
                () = tokio::time::sleep(interval) => false,
            }
        };
        // A short pause gathers a burst of changes into one evaluation.
        if woken {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let result = if !woken || strong.all_due.swap(false, Ordering::AcqRel) {
            lock(&strong.devices_due).clear();
            strong.evaluate_all().await
        } else {
            let due: Vec<DeviceId> = std::mem::take(&mut *lock(&strong.devices_due))
                .into_iter()
                .collect();
            strong.evaluate_devices(&due).await
        };
        if let Err(e) = result {
            tracing::warn!(error = %e, "configuration evaluation failed; retried at the next sweep");
        }
        drop(strong);
    }
}

impl Inner {
    fn schedule_all(&self) {
        self.all_due.store(true, Ordering::Release);
        self.wake.notify_one();
    }

    /// Configurations in precedence order (the winner first).
    fn ordered(&self) -> Vec<Configuration> {
        let mut all: Vec<Configuration> = lock(&self.configurations).values().cloned().collect();
        all.sort_by_key(|c| std::cmp::Reverse(c.precedence()));
        all
    }

    async fn evaluate_all(&self) -> FleetResult<()> {
        let _one = self.evaluating.lock().await;
        let ordered = self.ordered();
        let mut targeted = BTreeMap::new();
        let mut everyone = BTreeSet::new();
        for c in &ordered {
            let matched: BTreeSet<String> = if c.spec.target_condition.trim().is_empty() {
                BTreeSet::new()
            } else {
                self.devices
                    .select(&c.spec.target_condition)
                    .await?
                    .into_iter()
                    .map(|d| d.as_str().to_owned())
                    .collect()
            };
            everyone.extend(matched.iter().cloned());
            targeted.insert(c.spec.id.clone(), matched);
        }
        everyone.extend(lock(&self.applied).keys().cloned());
        *lock(&self.targeted) = targeted.clone();
        for device in everyone {
            let winner = winner(&ordered, &targeted, &device);
            self.settle(&device, winner).await?;
        }
        let applied = lock(&self.applied).clone();
        self.store.save_applied(&applied).await
    }

    async fn evaluate_devices(&self, devices: &[DeviceId]) -> FleetResult<()> {
        let _one = self.evaluating.lock().await;
        let ordered = self.ordered();
        for device in devices {
            let mut winner = None;
            for c in &ordered {
                let hit = !c.spec.target_condition.trim().is_empty()
                    && self
                        .devices
                        .matches(&c.spec.target_condition, device)
                        .await?;
                {
                    let mut targeted = lock(&self.targeted);
                    let set = targeted.entry(c.spec.id.clone()).or_default();
                    if hit {
                        set.insert(device.as_str().to_owned());
                    } else {
                        set.remove(device.as_str());
                    }
                }
                if hit && winner.is_none() {
                    winner = Some(c);
                }
            }
            self.settle(device.as_str(), winner).await?;
        }
        let applied = lock(&self.applied).clone();
        self.store.save_applied(&applied).await
    }

    /// Applies `winner` to `device` unless that version is applied already.
    async fn settle(&self, device: &str, winner: Option<&Configuration>) -> FleetResult<()> {
        let Some(winner) = winner else {
            lock(&self.applied).remove(device);
            return Ok(());
        };
        let wanted = (winner.spec.id.clone(), winner.etag.clone());
        if lock(&self.applied).get(device) == Some(&wanted) {
            return Ok(());
        }
        let Ok(id) = DeviceId::new(device) else {
            return Ok(());
        };
        let patch = desired_patch(&winner.spec.device_content)?;
        match self.devices.update_twin(&id, None, Some(patch)).await {
            Ok(()) => {
                tracing::debug!(device = %id, configuration = %winner.spec.id, "configuration applied");
                lock(&self.applied).insert(device.to_owned(), wanted);
            }
            // A device deleted meanwhile drops out; others are retried at the next evaluation.
            Err(
                FleetError::Gateway(crate::Error::DeviceNotFound { .. })
                | FleetError::NotFound { kind: "device", .. },
            ) => {
                lock(&self.applied).remove(device);
            }
            Err(e) => {
                tracing::warn!(device = %id, configuration = %winner.spec.id, error = %e, "configuration not applied; retried later");
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn configuration(i: usize, priority: i64, created_ms: u64) -> Configuration {
        Configuration {
            spec: ConfigurationSpec {
                id: format!("c{i}"),
                labels: BTreeMap::new(),
                device_content: serde_json::Map::new(),
                target_condition: "tags.x = 1".into(),
                priority,
                metrics_queries: BTreeMap::new(),
            },
            created_ms,
            updated_ms: created_ms,
            etag: String::new(),
            sequence: i as u64,
        }
    }

    proptest! {
        /// The model: among the configurations that target a device, the highest priority,
        /// then the latest creation (then the latest sequence) wins; none targets, none wins.
        #[test]
        fn the_winner_is_the_highest_priority_then_the_newest(
            configs in proptest::collection::vec((0i64..4, 0u64..5, proptest::collection::btree_set(0usize..6, 0..6)), 0..8),
        ) {
            let all: Vec<Configuration> = configs
                .iter()
                .enumerate()
                .map(|(i, (p, t, _))| configuration(i, *p, *t))
                .collect();
            let targeted: BTreeMap<String, BTreeSet<String>> = configs
                .iter()
                .enumerate()
                .map(|(i, (_, _, devices))| {
                    (format!("c{i}"), devices.iter().map(|d| format!("d{d}")).collect())
                })
                .collect();
            let mut ordered = all.clone();
            ordered.sort_by_key(|c| std::cmp::Reverse(c.precedence()));
            for d in 0..6 {
                let device = format!("d{d}");
                let model = all
                    .iter()
                    .filter(|c| targeted[&c.spec.id].contains(&device))
                    .max_by_key(|c| (c.spec.priority, c.created_ms, c.sequence));
                prop_assert_eq!(
                    winner(&ordered, &targeted, &device).map(|c| &c.spec.id),
                    model.map(|c| &c.spec.id)
                );
            }
        }
    }
}
