//! `Provisioner`: the reference [`Provisioning`] over any identity store and registry.
//!
//! # Order of writes and recovery
//!
//! Writes to one device are serialised; writes to different devices run side by side (and share
//! the journal's and the stores' fsyncs), while recovery and bulk batches run alone (see
//! `writer.rs`; reads take no lock). An operation that touches both stores first records an
//! [`Intent`] in the journal (durably), then writes the stores, then marks the intent finished
//! (durably) — and only then returns. Recovery runs only when no write is in flight, and before
//! any later write once an operation left its intent unfinished; so the unfinished intents it
//! finds were all left by calls that are over, no later operation has touched their devices, and
//! recovery can decide from each intent alone:
//!
//! | intent | store order | recovery |
//! | --- | --- | --- |
//! | register (one device or a bulk batch) | registry record, then identity | roll back: delete both |
//! | unregister | identity (access ends), then record | roll forward: delete both |
//! | activate/deactivate with metadata | merge into record, then status | roll forward: merge (idempotent), set status |
//!
//! A registration rolls back because its caller never received the keys; the others roll
//! forward because their intent holds everything needed and none involves a secret. Operations
//! on one store only (update, reset credentials, a status change without metadata) need no
//! intent: each store write is atomic on its own.
//!
//! When a store call fails after the intent was recorded, the same recovery step runs at once;
//! if that fails too, the intent stays in the journal, the call returns
//! [`Error::RecoveryPending`], and every later write first retries recovery. Opening a
//! provisioner runs recovery for what a crashed process left.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use iot_core::{DeviceId, Log};
use iot_identity::{
    Credentials, DeviceIdentity, DeviceStatus, IdentityStore, NewIdentity, SasToken, sas,
};
use iot_registry::{DeviceDocument, DeviceRecord, ETag, Registry};
use serde_json::{Value, json};
use tracing::instrument;

use crate::error::{Error, Result, json_type};
use crate::hooks::{Hook, Operation};
use crate::journal::{Intent, Journal, MemoryJournal};
use crate::provisioning::Provisioning;
use crate::types::{BulkItemResult, BulkMode, Device, RegisterRequest, Registered};
use crate::workflow::Workflow;

mod bulk;
mod recovery;
mod writer;

use writer::{Gate, Writer};

/// Default number of registrations per journal intent in a best-effort bulk request.
pub const DEFAULT_BULK_BATCH: usize = 1024;

/// Builds a [`Provisioner`]; see [`Provisioner::builder`].
#[derive(Debug)]
pub struct ProvisionerBuilder {
    identity: Arc<dyn IdentityStore>,
    registry: Arc<dyn Registry>,
    journal: Option<Arc<dyn Journal>>,
    workflow: Workflow,
    host: String,
    bulk_batch: usize,
    sync: bool,
}

impl ProvisionerBuilder {
    /// Makes both stores' writes durable ([`IdentityStore::sync`], [`Registry::sync`]) before an
    /// intent is marked finished. Needed only when the stores acknowledge writes before they
    /// reach the disk (`Durability::OsBuffered`) and agreement must survive a power cut, not
    /// just a crash of the process; it costs one sync of each store per operation or bulk batch.
    pub fn sync_stores(mut self) -> Self {
        self.sync = true;
        self
    }

    /// The intent journal (default: a [`MemoryJournal`], enough only for in-memory stores).
    pub fn journal(mut self, journal: Arc<dyn Journal>) -> Self {
        self.journal = Some(journal);
        self
    }

    /// The log of the `audit` topic (default: no audit trail).
    pub fn audit_log(mut self, log: Arc<dyn Log>) -> Self {
        self.workflow = self.workflow.audit_log(log);
        self
    }

    /// Adds a workflow hook (called in the order added).
    pub fn hook(mut self, hook: Arc<dyn Hook>) -> Self {
        self.workflow = self.workflow.hook(hook);
        self
    }

    /// Hooks, audit trail and actor all at once (replacing what [`hook`](Self::hook),
    /// [`audit_log`](Self::audit_log) and [`actor`](Self::actor) set before).
    pub fn workflow(mut self, workflow: Workflow) -> Self {
        self.workflow = workflow;
        self
    }

    /// The host name tokens are scoped to (`{host}/devices/{id}`); default `localhost`.
    pub fn host(mut self, host: impl Into<String>) -> Self {
        self.host = host.into();
        self
    }

    /// Who the operations are attributed to in audit records (default `provisioning`).
    pub fn actor(mut self, actor: impl Into<String>) -> Self {
        self.workflow = self.workflow.actor(actor.into());
        self
    }

    /// Registrations per journal intent in best-effort bulk requests (default 1024, at least 1).
    pub fn bulk_batch(mut self, size: usize) -> Self {
        self.bulk_batch = size.max(1);
        self
    }

    /// Builds the provisioner and runs recovery for whatever the journal holds unfinished.
    pub async fn open(self) -> Result<Provisioner> {
        let provisioner = Provisioner {
            inner: Arc::new(Inner {
                identity: self.identity,
                registry: self.registry,
                journal: self
                    .journal
                    .unwrap_or_else(|| Arc::new(MemoryJournal::new())),
                host: self.host,
                bulk_batch: self.bulk_batch,
                sync: self.sync,
                gate: Gate::new(),
            }),
            workflow: self.workflow,
        };
        provisioner.recover().await?;
        Ok(provisioner)
    }
}

/// The reference [`Provisioning`] implementation; see the [module docs](self) for how it keeps
/// the two stores in agreement. Cheap to clone (clones share everything).
#[derive(Debug, Clone)]
pub struct Provisioner {
    inner: Arc<Inner>,
    workflow: Workflow,
}

#[derive(Debug)]
struct Inner {
    identity: Arc<dyn IdentityStore>,
    registry: Arc<dyn Registry>,
    journal: Arc<dyn Journal>,
    host: String,
    bulk_batch: usize,
    /// Sync both stores before finishing an intent (see `ProvisionerBuilder::sync_stores`).
    sync: bool,
    /// Who may write when (see `writer.rs`).
    gate: Gate,
}

/// One validated registration, ready to write.
struct Prepared {
    id: DeviceId,
    credentials: Credentials,
    doc: DeviceDocument,
    /// The metadata as hooks see it (`Null` when there are no hooks).
    metadata: Value,
}

impl Provisioner {
    /// A builder over `identity` and `registry`. One provisioner per pair of stores: it must be
    /// their only writer.
    pub fn builder(
        identity: Arc<dyn IdentityStore>,
        registry: Arc<dyn Registry>,
    ) -> ProvisionerBuilder {
        ProvisionerBuilder {
            identity,
            registry,
            journal: None,
            workflow: Workflow::new(),
            host: "localhost".to_owned(),
            bulk_batch: DEFAULT_BULK_BATCH,
            sync: false,
        }
    }

    /// The same provisioner, with operations attributed to `actor` in the audit trail.
    pub fn with_actor(&self, actor: impl AsRef<str>) -> Provisioner {
        Provisioner {
            inner: Arc::clone(&self.inner),
            workflow: self.workflow.clone().actor(actor),
        }
    }

    /// The identity store (for reads: authentication, listing).
    pub fn identity_store(&self) -> &Arc<dyn IdentityStore> {
        &self.inner.identity
    }

    /// The registry (for reads: queries).
    pub fn registry(&self) -> &Arc<dyn Registry> {
        &self.inner.registry
    }

    /// The hooks, audit trail and actor this provisioner's operations run with.
    pub fn workflow(&self) -> &Workflow {
        &self.workflow
    }

    async fn device(&self, id: &DeviceId) -> Result<Option<Device>> {
        let identity = self.inner.identity.get(id).await.map_err(Error::Identity)?;
        let record = self.inner.registry.get(id).await.map_err(Error::Registry)?;
        Ok(match (identity, record) {
            (Some(identity), Some(record)) => Some(view(&identity, record)),
            // Only while an operation on the device is in flight.
            _ => None,
        })
    }

    async fn existing(&self, id: &DeviceId) -> Result<Device> {
        self.device(id)
            .await?
            .ok_or_else(|| Error::NotFound { id: id.clone() })
    }

    async fn register_locked(&self, writer: &mut Writer<'_>, p: Prepared) -> Result<Registered> {
        if self
            .inner
            .identity
            .get(&p.id)
            .await
            .map_err(Error::Identity)?
            .is_some()
            || self
                .inner
                .registry
                .get(&p.id)
                .await
                .map_err(Error::Registry)?
                .is_some()
        {
            return Err(Error::AlreadyExists { id: p.id });
        }
        let intent = Intent::Register {
            ids: vec![p.id.clone()],
        };
        let seq = self.begin(writer, &intent).await?;
        let record = match self.inner.registry.create(&p.id, p.doc).await {
            Ok(record) => record,
            Err(e) => {
                self.settle(writer, seq, &intent, &p.id).await?;
                return Err(Error::from_registry(e));
            }
        };
        let new = NewIdentity::new(p.id.clone(), p.credentials.clone());
        let identity = match self.inner.identity.create(new).await {
            Ok(identity) => identity,
            Err(e) => {
                self.settle(writer, seq, &intent, &p.id).await?;
                return Err(Error::from_identity(e));
            }
        };
        if let Err(e) = self.finish(writer, seq).await {
            // Not durably finished: undo, as recovery would.
            self.settle(writer, seq, &intent, &p.id).await?;
            return Err(e);
        }
        Ok(Registered {
            device: view(&identity, record),
            credentials: p.credentials,
        })
    }

    async fn set_status(
        &self,
        id: &DeviceId,
        enabled: bool,
        metadata: Option<Value>,
    ) -> Result<Device> {
        let patch = match metadata {
            Some(m) => Some(metadata_patch(id, m)?),
            None => None,
        };
        let mut writer = self.lock(id).await?;
        self.existing(id).await?;
        let reason = if enabled {
            String::new()
        } else {
            format!("deactivated by {}", self.workflow.actor_name())
        };
        let Some(patch) = patch else {
            self.inner
                .identity
                .set_status(id, status_of(enabled, &reason), None)
                .await
                .map_err(Error::from_identity)?;
            drop(writer);
            return self.existing(id).await;
        };
        let intent = Intent::SetStatus {
            id: id.clone(),
            enabled,
            reason,
            patch,
        };
        let Intent::SetStatus { patch, reason, .. } = &intent else {
            return Err(Error::invalid("internal error: intent changed kind"));
        };
        let seq = self.begin(&mut writer, &intent).await?;
        let outcome = match self.inner.registry.merge(id, patch, None).await {
            Err(e) if registry_refusal(&e) => {
                // Refused before anything changed.
                self.settle(&mut writer, seq, &intent, id).await?;
                return Err(Error::from_registry(e));
            }
            Err(e) => Err(Error::Registry(e)),
            Ok(_) => self
                .inner
                .identity
                .set_status(id, status_of(enabled, reason), None)
                .await
                .map(drop)
                .map_err(Error::Identity),
        };
        match outcome {
            Ok(()) => {
                if self.finish(&mut writer, seq).await.is_err() {
                    self.settle(&mut writer, seq, &intent, id).await?;
                }
            }
            // Roll forward now; when that works the call has done what was asked.
            Err(_) => self.settle(&mut writer, seq, &intent, id).await?,
        }
        drop(writer);
        self.existing(id).await
    }

    fn prepare(&self, request: RegisterRequest) -> Result<Prepared> {
        let id = match request.id {
            Some(id) => id,
            None => assign_id()?,
        };
        let map = match request.metadata {
            Value::Object(map) => map,
            other => {
                return Err(Error::MetadataNotAnObject {
                    found: json_type(&other),
                    id,
                });
            }
        };
        // Hooks are shown the metadata; without hooks it is not copied.
        let metadata = if !self.workflow.has_hooks() {
            Value::Null
        } else {
            Value::Object(map.clone())
        };
        Ok(Prepared {
            id,
            credentials: request
                .credentials
                .unwrap_or_else(Credentials::generate_symmetric_keys),
            doc: DeviceDocument {
                metadata: map,
                ..DeviceDocument::default()
            },
            metadata,
        })
    }
}

fn view(identity: &DeviceIdentity, record: DeviceRecord) -> Device {
    Device {
        id: identity.id.clone(),
        status: identity.status.clone(),
        generation_id: identity.generation_id,
        record,
    }
}

fn status_of(enabled: bool, reason: &str) -> DeviceStatus {
    if enabled {
        DeviceStatus::Enabled
    } else {
        DeviceStatus::disabled(reason)
    }
}

/// Registry errors that mean the write was refused and nothing changed.
fn registry_refusal(e: &iot_registry::Error) -> bool {
    matches!(
        e,
        iot_registry::Error::NotFound { .. }
            | iot_registry::Error::AlreadyExists { .. }
            | iot_registry::Error::PreconditionFailed { .. }
            | iot_registry::Error::InvalidDocument { .. }
            | iot_registry::Error::DocumentTooLarge { .. }
            | iot_registry::Error::DocumentTooDeep { .. }
            | iot_registry::Error::InvalidInput { .. }
    )
}

/// `{"metadata": m}` if `m` is an object.
fn metadata_patch(id: &DeviceId, metadata: Value) -> Result<Value> {
    if !metadata.is_object() {
        return Err(Error::MetadataNotAnObject {
            id: id.clone(),
            found: json_type(&metadata),
        });
    }
    Ok(json!({ "metadata": metadata }))
}

/// A service-assigned id: `dev-` and 16 random hex digits.
fn assign_id() -> Result<DeviceId> {
    Ok(DeviceId::new(format!(
        "dev-{:016x}",
        rand::random::<u64>()
    ))?)
}

#[async_trait]
impl Provisioning for Provisioner {
    #[instrument(level = "debug", skip_all)]
    async fn register(&self, request: RegisterRequest) -> Result<Registered> {
        let prepared = match self.prepare(request) {
            Ok(p) => p,
            Err(e) => {
                if let Error::MetadataNotAnObject { id, .. } = &e {
                    self.workflow
                        .audit(Operation::Register, [(id, Err(&e))])
                        .await;
                }
                return Err(e);
            }
        };
        let id = prepared.id.clone();
        let metadata = prepared.metadata.clone();
        self.workflow
            .run(Operation::Register, &id, Some(&metadata), async {
                let mut writer = self.lock(&id).await?;
                self.register_locked(&mut writer, prepared).await
            })
            .await
    }

    #[instrument(level = "debug", skip_all, fields(device = %id))]
    async fn unregister(&self, id: &DeviceId, if_match: Option<&ETag>) -> Result<()> {
        self.workflow
            .run(Operation::Unregister, id, None, async {
                let mut writer = self.lock(id).await?;
                let record = self.inner.registry.get(id).await.map_err(Error::Registry)?;
                let identity = self.inner.identity.get(id).await.map_err(Error::Identity)?;
                match (&record, if_match) {
                    (None, _) if identity.is_none() => {
                        return Err(Error::NotFound { id: id.clone() });
                    }
                    (Some(r), Some(expected)) if &r.etag != expected => {
                        return Err(Error::PreconditionFailed {
                            id: id.clone(),
                            expected: expected.as_str().to_owned(),
                            actual: r.etag.as_str().to_owned(),
                        });
                    }
                    (None, Some(_)) => return Err(Error::NotFound { id: id.clone() }),
                    _ => {}
                }
                let intent = Intent::Unregister { id: id.clone() };
                let seq = self.begin(&mut writer, &intent).await?;
                let done = match self.delete_identity(id).await {
                    Ok(()) => self.delete_record(id).await,
                    Err(e) => Err(e),
                };
                match done {
                    Ok(()) if self.finish(&mut writer, seq).await.is_ok() => Ok(()),
                    // Roll forward now; when that works the device is gone, as asked.
                    _ => self.settle(&mut writer, seq, &intent, id).await,
                }
            })
            .await
    }

    #[instrument(level = "debug", skip_all, fields(device = %id))]
    async fn activate(&self, id: &DeviceId, metadata: Option<Value>) -> Result<Device> {
        let shown = metadata.clone();
        self.workflow
            .run(
                Operation::Activate,
                id,
                shown.as_ref(),
                self.set_status(id, true, metadata),
            )
            .await
    }

    #[instrument(level = "debug", skip_all, fields(device = %id))]
    async fn deactivate(&self, id: &DeviceId, metadata: Option<Value>) -> Result<Device> {
        let shown = metadata.clone();
        self.workflow
            .run(
                Operation::Deactivate,
                id,
                shown.as_ref(),
                self.set_status(id, false, metadata),
            )
            .await
    }

    #[instrument(level = "debug", skip_all, fields(device = %id))]
    async fn update(
        &self,
        id: &DeviceId,
        metadata: Value,
        if_match: Option<&ETag>,
    ) -> Result<Device> {
        let shown = metadata.clone();
        self.workflow
            .run(Operation::Update, id, Some(&shown), async {
                let patch = metadata_patch(id, metadata)?;
                let writer = self.lock(id).await?;
                self.existing(id).await?;
                self.inner
                    .registry
                    .merge(id, &patch, if_match)
                    .await
                    .map_err(Error::from_registry)?;
                drop(writer);
                self.existing(id).await
            })
            .await
    }

    #[instrument(level = "debug", skip_all, fields(device = %id))]
    async fn reset_credentials(
        &self,
        id: &DeviceId,
        credentials: Option<Credentials>,
    ) -> Result<Credentials> {
        self.workflow
            .run(Operation::ResetCredentials, id, None, async {
                let writer = self.lock(id).await?;
                let current = self.existing(id).await?;
                if !current.status.is_enabled() {
                    return Err(Error::DeviceDisabled { id: id.clone() });
                }
                let credentials = credentials.unwrap_or_else(Credentials::generate_symmetric_keys);
                self.inner
                    .identity
                    .replace_credentials(id, credentials.clone(), None)
                    .await
                    .map_err(Error::from_identity)?;
                drop(writer);
                Ok(credentials)
            })
            .await
    }

    #[instrument(level = "debug", skip_all, fields(items = requests.len(), ?mode))]
    async fn bulk(
        &self,
        requests: Vec<RegisterRequest>,
        mode: BulkMode,
    ) -> Result<Vec<BulkItemResult>> {
        self.bulk_register(requests, mode).await
    }

    async fn get(&self, id: &DeviceId) -> Result<Option<Device>> {
        self.device(id).await
    }

    #[instrument(level = "debug", skip_all, fields(device = %id))]
    async fn issue_token(&self, id: &DeviceId, lifetime: Duration) -> Result<SasToken> {
        self.workflow
            .run(Operation::IssueToken, id, None, async {
                if lifetime.as_secs() == 0 {
                    return Err(Error::invalid("a token lifetime is at least one second"));
                }
                let identity = self
                    .inner
                    .identity
                    .get(id)
                    .await
                    .map_err(Error::Identity)?
                    .ok_or_else(|| Error::NotFound { id: id.clone() })?;
                if !identity.status.is_enabled() {
                    return Err(Error::DeviceDisabled { id: id.clone() });
                }
                let Credentials::SymmetricKeys { primary, .. } = &identity.credentials else {
                    return Err(Error::invalid(format!(
                        "device {id} has no symmetric keys to sign a token with (it uses {})",
                        identity.credentials.kind_name()
                    )));
                };
                let resource = sas::device_resource(&self.inner.host, id);
                let expiry = sas::unix_now().saturating_add(lifetime.as_secs());
                sas::generate(&resource, primary, expiry, None).map_err(Error::Identity)
            })
            .await
    }
}

/// The device an error is about, if it names one.
fn error_device(e: &Error) -> Option<&DeviceId> {
    match e {
        Error::NotFound { id }
        | Error::AlreadyExists { id }
        | Error::PreconditionFailed { id, .. }
        | Error::MetadataNotAnObject { id, .. }
        | Error::DeviceDisabled { id }
        | Error::Vetoed { id, .. }
        | Error::HookFailed { id, .. }
        | Error::Aborted { id }
        | Error::RecoveryPending { id, .. } => Some(id),
        _ => None,
    }
}
