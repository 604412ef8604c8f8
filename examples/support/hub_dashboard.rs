//! The hub example's solution layer: the access matrix over a file store, its first admin, the
//! alert rule whose topic the dashboard's alerts feed follows (docs/dashboard.md), users' alert
//! subscriptions, and (feature `alert-push`) the processor group pushing alerts to them.

use std::path::Path;
use std::sync::Arc;

use iot_core::{GroupName, Topics};
use iot_identity::access::{
    AccessControl, DeviceSet, FileAccessStore, FileAccessStoreConfig, FileSubscriptionStore, Grant,
    LogAuditSink, SubscriptionStore, UserName,
};
use iot_provisioning::RegistryDeviceSets;
use iot_registry::Registry;
use iot_stream::rules::RuleSet;
use iot_stream::window::OrderingPolicy;
use iot_stream::{HostConfig, ProcessorHost, RunningGroup};

/// The topic the hub's rule writes alerts to, and the dashboard's alerts feed reads.
pub(crate) const ALERTS_TOPIC: &str = "alerts";

/// The hub's one alert rule: a record-by-record filter, so an alert is raised as the reading
/// arrives (a windowed rule closes its window only when a later reading comes).
pub(crate) const OVERHEAT_RULE: &str = "SELECT deviceId, temperature, EventEnqueuedUtcTime AS time \
    INTO alerts FROM telemetry WHERE temperature > 80";

/// Where the first admin's password comes from: `--admin-password-file` or, failing that, the
/// `IOT_ADMIN_PASSWORD` environment variable; never argv (other users see a process's
/// arguments) and never a log.
/// The password is hashed at start and the text dropped.
pub(crate) fn admin_password(file: Option<&Path>) -> Result<Option<String>, String> {
    if let Some(path) = file {
        let mut text = std::fs::read_to_string(path)
            .map_err(|e| format!("--admin-password-file {}: {e}", path.display()))?;
        text.truncate(text.trim_end_matches(['\r', '\n']).len());
        return Ok(Some(text));
    }
    match std::env::var("IOT_ADMIN_PASSWORD") {
        Ok(text) if !text.is_empty() => Ok(Some(text)),
        _ => Ok(None),
    }
}

/// The access matrix over `DIR/access`: query and hierarchy grants decided by the registry,
/// denials and refused logins audited on the hub's `audit` topic.
pub(crate) async fn open_access(
    dir: &Path,
    registry: Arc<dyn Registry>,
    topics: &Topics,
) -> Result<AccessControl, Box<dyn std::error::Error>> {
    let store = FileAccessStore::open(dir.join("access"), FileAccessStoreConfig::default()).await?;
    let audit = LogAuditSink::new(topics.topic("audit").await?);
    Ok(
        AccessControl::new(Arc::new(store), Arc::new(RegistryDeviceSets::new(registry)))
            .with_audit(Arc::new(audit)),
    )
}

/// Creates `name` as an admin over all devices with `password` if no such user exists yet;
/// an existing user is left as they are (their password is not reset by a restart).
pub(crate) async fn ensure_admin(
    access: &AccessControl,
    name: &str,
    password: Option<&str>,
) -> Result<(), Box<dyn std::error::Error>> {
    let name: UserName = name.parse()?;
    if access.store().get_user(&name).await?.is_some() {
        println!("admin: {name} (exists)");
        return Ok(());
    }
    let Some(password) = password else {
        if access.store().list_users().await?.is_empty() {
            println!(
                "admin: none yet; restart with --admin-password-file FILE or IOT_ADMIN_PASSWORD set"
            );
        }
        return Ok(());
    };
    access.create_user(name.clone(), password).await?;
    access
        .grant(Grant::new(name.clone(), "admin".parse()?, DeviceSet::All))
        .await?;
    println!("admin: {name} (created)");
    Ok(())
}

/// Runs [`OVERHEAT_RULE`] over the hub's telemetry into [`ALERTS_TOPIC`].
pub(crate) async fn start_rules(
    topics: Arc<Topics>,
) -> Result<RunningGroup, Box<dyn std::error::Error>> {
    let rules = RuleSet::new(OrderingPolicy::replay());
    rules.add("overheat", OVERHEAT_RULE)?;
    let group = ProcessorHost::new(topics)
        .start(
            iot_core::TopicName::TELEMETRY,
            GroupName::new("rules")?,
            Arc::new(rules.processor(iot_core::TopicName::TELEMETRY)),
            HostConfig::default(),
        )
        .await?;
    Ok(group)
}

/// Users' alert subscriptions (`/access/me/subscriptions`) over `DIR/access/subscriptions`.
pub(crate) async fn open_subscriptions(
    dir: &Path,
) -> Result<Arc<dyn SubscriptionStore>, Box<dyn std::error::Error>> {
    let dir = dir.join("access").join("subscriptions");
    let store = FileSubscriptionStore::open(dir, FileAccessStoreConfig::default()).await?;
    Ok(Arc::new(store))
}

/// Pushes each alert of [`ALERTS_TOPIC`] to the subscriptions of the users whose `read` grants
/// cover its device: signed webhooks, with the sink framework's retries and checkpoint
/// (docs/access.md, "Alert subscriptions"). The group's checkpoint is in the hub's stores, so
/// a restart resumes where the push left off.
#[cfg(feature = "alert-push")]
pub(crate) async fn start_alert_push(
    topics: Arc<Topics>,
    access: AccessControl,
    subscriptions: Arc<dyn SubscriptionStore>,
    webhooks_anywhere: bool,
) -> Result<RunningGroup, Box<dyn std::error::Error>> {
    use iot_sdk::alert_push::AlertPush;
    use iot_stream::sinks::webhook::AddressPolicy;
    use iot_stream::sinks::{BatchPolicy, SinkConfig, SinkProcessor};

    // A notification should leave within a second, not wait for a full batch (the default
    // batch may wait a minute); reads no larger than a batch bound what a crash re-sends.
    const BATCH: usize = 100;
    let push = AlertPush::new(access, subscriptions)
        .endpoint(ALERTS_TOPIC)
        .addresses(if webhooks_anywhere {
            AddressPolicy::Any
        } else {
            AddressPolicy::PublicOnly
        });
    let config = SinkConfig::default().batch(BatchPolicy {
        max_records: BATCH,
        max_age: std::time::Duration::from_secs(1),
        ..BatchPolicy::default()
    });
    let factory = SinkProcessor::factory(Arc::new(push), config)?;
    let group = ProcessorHost::new(topics)
        .start(
            ALERTS_TOPIC,
            GroupName::new("alert-push")?,
            Arc::new(factory),
            HostConfig::default().read_limits(iot_core::ReadLimits::records(BATCH)),
        )
        .await?;
    Ok(group)
}
