//! [`PgProvisioning`]: provisioning over a [`PgIdentityStore`] and a [`PgRegistry`] in the same
//! database, registering and unregistering in one transaction.
//!
//! The crate's `Provisioner` keeps two independent stores agreeing with an intent journal: it
//! records what it is about to do, writes one store, then the other, and a recovery step rolls an
//! interrupted operation back or forward. When both stores are tables of one PostgreSQL database
//! there is nothing to recover: the identity row, the registry row and the identity's change
//! notification commit together or not at all. `register`, `unregister` and `bulk` run that way
//! here; the operations that touch one store only (`update`, `reset_credentials`, a status change
//! without metadata), reads and token issuing are the `Provisioner`'s own, over the same stores.
//!
//! Every operation runs in the same [`Workflow`] (hooks, audit trail, actor) as the
//! `Provisioner`'s, so an application that moves its stores onto PostgreSQL keeps its hooks and
//! its audit records unchanged.

use std::collections::HashSet;
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use iot_core::DeviceId;
use iot_identity::{Credentials, DeviceStatus, IdentityStore, NewIdentity, SasToken};
use iot_provisioning::{
    BulkItemResult, BulkMode, Device, Error, HookContext, Operation, Provisioner, Provisioning,
    RegisterRequest, Registered, Result, Workflow,
};
use iot_registry::{DeviceDocument, ETag, Registry};
use serde_json::Value;

use crate::postgres::{PgError, PgIdentityStore, PgRegistry, identity, registry};

/// A [`Provisioning`] whose registrations and removals are single PostgreSQL transactions.
///
/// Build it over an identity store and a registry that use the same database (checked: their
/// pools must name the same `host:port/db`). Hooks and the audit trail apply to every operation,
/// as in the `Provisioner` (see [`PgProvisioningBuilder::workflow`]).
#[derive(Clone)]
pub struct PgProvisioning {
    identity: PgIdentityStore,
    registry: PgRegistry,
    /// The other calls: one store each, or reads. It runs them in `workflow` too.
    others: Provisioner,
    workflow: Workflow,
    /// Writes one at a time, as the `Provisioner` serialises its own.
    writes: Arc<tokio::sync::Mutex<()>>,
}

impl fmt::Debug for PgProvisioning {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PgProvisioning")
            .field("identity", &self.identity)
            .field("registry", &self.registry)
            .field("workflow", &self.workflow)
            .finish()
    }
}

/// Builds a [`PgProvisioning`]; see [`PgProvisioning::builder`].
#[derive(Debug)]
pub struct PgProvisioningBuilder {
    identity: PgIdentityStore,
    registry: PgRegistry,
    host: String,
    workflow: Workflow,
}

impl PgProvisioningBuilder {
    /// The host name tokens are scoped to (`{host}/devices/{id}`); default `localhost`.
    pub fn host(mut self, host: impl Into<String>) -> Self {
        self.host = host.into();
        self
    }

    /// The hooks, audit trail and actor every operation runs with (default: none, none,
    /// `provisioning`).
    pub fn workflow(mut self, workflow: Workflow) -> Self {
        self.workflow = workflow;
        self
    }

    /// Checks that both stores share one database and builds the provisioning.
    pub async fn open(self) -> Result<PgProvisioning> {
        let PgProvisioningBuilder {
            identity,
            registry,
            host,
            workflow,
        } = self;
        let a = identity.pool().config().target();
        let b = registry.pool().config().target();
        if a != b {
            return Err(Error::InvalidInput {
                reason: format!(
                    "one-transaction provisioning needs both stores in one database, not {a} and {b}"
                ),
            });
        }
        let others = Provisioner::builder(
            Arc::new(identity.clone()) as Arc<dyn IdentityStore>,
            Arc::new(registry.clone()) as Arc<dyn Registry>,
        )
        .host(host)
        .workflow(workflow.clone())
        .open()
        .await?;
        Ok(PgProvisioning {
            identity,
            registry,
            others,
            workflow,
            writes: Arc::new(tokio::sync::Mutex::new(())),
        })
    }
}

impl PgProvisioning {
    /// A builder over `identity` and `registry`, which must use the same database.
    pub fn builder(identity: PgIdentityStore, registry: PgRegistry) -> PgProvisioningBuilder {
        PgProvisioningBuilder {
            identity,
            registry,
            host: "localhost".to_owned(),
            workflow: Workflow::new(),
        }
    }

    /// Provisioning over `identity` and `registry`, issuing tokens for `host`, with no hooks and
    /// no audit trail.
    pub async fn open(
        identity: PgIdentityStore,
        registry: PgRegistry,
        host: impl Into<String>,
    ) -> Result<Self> {
        Self::builder(identity, registry).host(host).open().await
    }

    /// The hooks, audit trail and actor the operations run with.
    pub fn workflow(&self) -> &Workflow {
        &self.workflow
    }

    /// The same provisioning, with operations attributed to `actor` in hook contexts and the
    /// audit trail.
    pub fn with_actor(&self, actor: impl AsRef<str>) -> Self {
        let mut other = self.clone();
        other.workflow = self.workflow.clone().actor(actor.as_ref());
        other.others = self.others.with_actor(actor);
        other
    }

    /// Registers one prepared device in its own transaction.
    async fn register_one(&self, p: &Prepared) -> Result<Registered> {
        let _writing = self.writes.lock().await;
        let mut client = self.client().await?;
        let tx = Self::transaction(&mut client).await?;
        let outcome = self
            .register_in(&tx, std::slice::from_ref(p))
            .await
            .pop()
            .flatten()
            .unwrap_or_else(|| Err(Error::Aborted { id: p.id.clone() }));
        let result = match outcome {
            Ok(registered) => Self::commit(tx).await.map(|()| registered),
            // Dropping the transaction rolls it back: neither store keeps anything.
            Err(e) => Err(e),
        };
        self.identity.forget(&p.id);
        result
    }

    /// `activate` / `deactivate`. Without metadata only the identity changes, by the
    /// `Provisioner`'s rules (it runs the workflow); with metadata the record's merge and the
    /// status change are one transaction, run in the workflow here.
    async fn change_status(
        &self,
        operation: Operation,
        id: &DeviceId,
        enabled: bool,
        metadata: Option<Value>,
    ) -> Result<Device> {
        let Some(metadata) = metadata else {
            let _writing = self.writes.lock().await;
            return if enabled {
                self.others.activate(id, None).await
            } else {
                self.others.deactivate(id, None).await
            };
        };
        let shown = metadata.clone();
        self.workflow
            .run(
                operation,
                id,
                Some(&shown),
                self.status_and_metadata(id, enabled, metadata),
            )
            .await
    }

    /// Merges `metadata` into the record of `id` and sets its status, in one transaction.
    async fn status_and_metadata(
        &self,
        id: &DeviceId,
        enabled: bool,
        metadata: Value,
    ) -> Result<Device> {
        let patch = match metadata {
            Value::Object(map) => serde_json::json!({ "metadata": map }),
            other => {
                return Err(Error::MetadataNotAnObject {
                    id: id.clone(),
                    found: json_type(&other),
                });
            }
        };
        let status = if enabled {
            DeviceStatus::Enabled
        } else {
            DeviceStatus::disabled(format!("deactivated by {}", self.workflow.actor_name()))
        };
        let _writing = self.writes.lock().await;
        let mut client = self.client().await?;
        let tx = Self::transaction(&mut client).await?;
        let limits = self.registry.config().limits;
        let result = async {
            let record = registry::update_in(&tx, self.registry.config(), id, None, |current| {
                current.merged(&patch, &limits)
            })
            .await
            .map_err(from_registry)?;
            let identity = identity::update_in(
                &tx,
                self.identity.namespace(),
                id,
                None,
                identity::Change::Status(status),
            )
            .await
            .map_err(from_identity)?;
            Self::commit(tx).await?;
            Ok(Device::new(&identity, record))
        }
        .await;
        self.identity.forget(id);
        result
    }

    /// Registers every prepared item in one transaction, filling their slots of `results`:
    /// all commit or none does. An error means the transaction could not even start (nothing
    /// written, no slot filled).
    async fn register_all(
        &self,
        results: &mut [Option<BulkItemResult>],
        todo: &[(usize, Prepared)],
    ) -> Result<()> {
        let _writing = self.writes.lock().await;
        let mut client = self.client().await?;
        let tx = Self::transaction(&mut client).await?;
        let items: Vec<Prepared> = todo.iter().map(|(_, p)| p.clone()).collect();
        let outcomes = self.register_in(&tx, &items).await;
        let failed = results.iter().any(|r| matches!(r, Some(Err(_))))
            || outcomes.iter().any(|o| !matches!(o, Some(Ok(_))));
        let committed = if failed {
            false
        } else {
            match Self::commit(tx).await {
                Ok(()) => true,
                Err(e) => {
                    tracing::warn!(error = %e, "all-or-nothing bulk commit failed");
                    false
                }
            }
        };
        for ((i, p), outcome) in todo.iter().zip(outcomes) {
            self.identity.forget(&p.id);
            let item = match (committed, outcome) {
                (true, Some(ok)) => ok,
                // Its own failure is its result; a valid item of a failed request is aborted.
                (false, Some(Err(e))) => Err(e),
                _ => Err(Error::Aborted { id: p.id.clone() }),
            };
            if let Some(slot) = results.get_mut(*i) {
                *slot = Some(item);
            }
        }
        Ok(())
    }

    /// Registers each prepared item in the transaction `tx`; per item its outcome. Conflicts
    /// (`AlreadyExists`) leave the transaction usable; any other failure ends it, and the items
    /// after it are not tried (`None`).
    async fn register_in(
        &self,
        tx: &deadpool_postgres::Transaction<'_>,
        items: &[Prepared],
    ) -> Vec<Option<Result<Registered>>> {
        let mut out = Vec::with_capacity(items.len());
        let mut broken = false;
        for p in items {
            if broken {
                out.push(None);
                continue;
            }
            let outcome = async {
                let record = registry::create_in(tx, self.registry.config(), &p.id, p.doc.clone())
                    .await
                    .map_err(from_registry)?;
                let new = NewIdentity::new(p.id.clone(), p.credentials.clone());
                let identity = identity::create_in(tx, self.identity.namespace(), new)
                    .await
                    .map_err(from_identity)?;
                Ok(Registered::new(
                    Device::new(&identity, record),
                    p.credentials.clone(),
                ))
            }
            .await;
            broken = matches!(&outcome, Err(e) if !matches!(e, Error::AlreadyExists { .. }));
            out.push(Some(outcome));
        }
        out
    }

    async fn transaction<'c>(
        client: &'c mut crate::postgres::PgClient,
    ) -> Result<deadpool_postgres::Transaction<'c>> {
        client
            .transaction()
            .await
            .map_err(|e| pg(PgError::query("begin provisioning transaction", e)))
    }

    async fn commit(tx: deadpool_postgres::Transaction<'_>) -> Result<()> {
        tx.commit()
            .await
            .map_err(|e| pg(PgError::query("commit provisioning transaction", e)))
    }

    async fn client(&self) -> Result<crate::postgres::PgClient> {
        self.registry.pool().get().await.map_err(pg)
    }
}

/// One validated registration.
#[derive(Clone)]
struct Prepared {
    id: DeviceId,
    credentials: Credentials,
    doc: DeviceDocument,
}

impl Prepared {
    /// The metadata as hooks are shown it.
    fn metadata(&self) -> Value {
        Value::Object(self.doc.metadata.clone())
    }
}

fn prepare(request: RegisterRequest) -> Result<Prepared> {
    let id = match request.id {
        Some(id) => id,
        None => DeviceId::new(format!("dev-{:016x}", rand::random::<u64>()))?,
    };
    let metadata = match request.metadata {
        Value::Object(map) => map,
        other => {
            return Err(Error::MetadataNotAnObject {
                id,
                found: json_type(&other),
            });
        }
    };
    Ok(Prepared {
        id,
        credentials: request
            .credentials
            .unwrap_or_else(Credentials::generate_symmetric_keys),
        doc: DeviceDocument {
            metadata,
            ..DeviceDocument::default()
        },
    })
}

/// The device a per-item error names, for its audit record.
fn item_device(e: &Error) -> Option<&DeviceId> {
    match e {
        Error::AlreadyExists { id }
        | Error::MetadataNotAnObject { id, .. }
        | Error::Vetoed { id, .. }
        | Error::HookFailed { id, .. } => Some(id),
        _ => None,
    }
}

fn json_type(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "boolean",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    }
}

fn pg(e: PgError) -> Error {
    let retryable = e.is_retryable();
    Error::backend("postgres", e, retryable)
}

/// A registry error as provisioning reports it (the kinds a caller acts on, unwrapped).
fn from_registry(e: iot_registry::Error) -> Error {
    match e {
        iot_registry::Error::NotFound { id } => Error::NotFound { id },
        iot_registry::Error::AlreadyExists { id } => Error::AlreadyExists { id },
        iot_registry::Error::PreconditionFailed {
            id,
            expected,
            actual,
        } => Error::PreconditionFailed {
            id,
            expected: expected.as_str().to_owned(),
            actual: actual.as_str().to_owned(),
        },
        other => Error::Registry(other),
    }
}

fn from_identity(e: iot_identity::Error) -> Error {
    match e {
        iot_identity::Error::NotFound { id } => Error::NotFound { id },
        iot_identity::Error::AlreadyExists { id } => Error::AlreadyExists { id },
        other => Error::Identity(other),
    }
}

#[async_trait]
impl Provisioning for PgProvisioning {
    async fn register(&self, request: RegisterRequest) -> Result<Registered> {
        let p = match prepare(request) {
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
        let metadata = self.workflow.has_hooks().then(|| p.metadata());
        self.workflow
            .run(
                Operation::Register,
                &p.id,
                metadata.as_ref(),
                self.register_one(&p),
            )
            .await
    }

    async fn unregister(&self, id: &DeviceId, if_match: Option<&ETag>) -> Result<()> {
        self.workflow
            .run(Operation::Unregister, id, None, async {
                let _writing = self.writes.lock().await;
                let mut client = self.client().await?;
                let tx = Self::transaction(&mut client).await?;
                let result = async {
                    registry::delete_in(&tx, self.registry.config(), id, if_match)
                        .await
                        .map_err(from_registry)?;
                    identity::delete_in(&tx, self.identity.namespace(), id, None)
                        .await
                        .map_err(from_identity)?;
                    Self::commit(tx).await
                }
                .await;
                self.identity.forget(id);
                result
            })
            .await
    }

    async fn activate(&self, id: &DeviceId, metadata: Option<Value>) -> Result<Device> {
        self.change_status(Operation::Activate, id, true, metadata)
            .await
    }

    async fn deactivate(&self, id: &DeviceId, metadata: Option<Value>) -> Result<Device> {
        self.change_status(Operation::Deactivate, id, false, metadata)
            .await
    }

    async fn update(
        &self,
        id: &DeviceId,
        metadata: Value,
        if_match: Option<&ETag>,
    ) -> Result<Device> {
        let _writing = self.writes.lock().await;
        self.others.update(id, metadata, if_match).await
    }

    async fn reset_credentials(
        &self,
        id: &DeviceId,
        credentials: Option<Credentials>,
    ) -> Result<Credentials> {
        let _writing = self.writes.lock().await;
        self.others.reset_credentials(id, credentials).await
    }

    async fn bulk(
        &self,
        requests: Vec<RegisterRequest>,
        mode: BulkMode,
    ) -> Result<Vec<BulkItemResult>> {
        // Validate every item and run its `before` hooks first; a repeated id is refused like an
        // existing one. Per item: its id (for the audit trail) and its hook context if all its
        // `before` hooks agreed.
        let mut seen = HashSet::with_capacity(requests.len());
        let mut results: Vec<Option<BulkItemResult>> = Vec::with_capacity(requests.len());
        let mut ids: Vec<Option<DeviceId>> = Vec::with_capacity(requests.len());
        let mut contexts: Vec<Option<HookContext>> = Vec::with_capacity(requests.len());
        let mut todo: Vec<(usize, Prepared)> = Vec::new();
        for (i, request) in requests.into_iter().enumerate() {
            let prepared = prepare(request).and_then(|p| {
                if seen.insert(p.id.clone()) {
                    Ok(p)
                } else {
                    Err(Error::AlreadyExists { id: p.id })
                }
            });
            let mut context = None;
            let prepared = match prepared {
                Ok(p) if self.workflow.has_hooks() => {
                    let ctx =
                        self.workflow
                            .context(Operation::Register, &p.id, Some(&p.metadata()));
                    let agreed = self.workflow.before(&ctx).await;
                    context = agreed.is_ok().then_some(ctx);
                    agreed.map(|()| p)
                }
                other => other,
            };
            match prepared {
                Ok(p) => {
                    ids.push(Some(p.id.clone()));
                    results.push(None);
                    todo.push((i, p));
                }
                Err(e) => {
                    ids.push(item_device(&e).cloned());
                    results.push(Some(Err(e)));
                }
            }
            contexts.push(context);
        }
        let written = match mode {
            BulkMode::BestEffort => {
                // One transaction per item: each commits or fails on its own.
                for (i, p) in &todo {
                    let outcome = self.register_one(p).await;
                    if let Some(slot) = results.get_mut(*i) {
                        *slot = Some(outcome);
                    }
                }
                Ok(())
            }
            BulkMode::AllOrNothing => self.register_all(&mut results, &todo).await,
        };
        let results: Vec<BulkItemResult> = match written {
            Ok(()) => results
                .into_iter()
                .map(|r| {
                    r.unwrap_or_else(|| {
                        Err(Error::InvalidInput {
                            reason: "internal error: a bulk item was not processed".into(),
                        })
                    })
                })
                .collect(),
            Err(e) => {
                // Nothing was written: tell the hooks that agreed, audit every item, and report
                // the request's own failure.
                let failed: Result<()> = Err(e);
                for ctx in contexts.iter().flatten() {
                    self.workflow.after(ctx, &failed).await;
                }
                let audit = ids.iter().zip(&results).filter_map(|(id, r)| {
                    let outcome = match r {
                        Some(r) => r.as_ref().map(drop),
                        None => failed.as_ref().map(drop),
                    };
                    Some((id.as_ref()?, outcome))
                });
                self.workflow.audit(Operation::Register, audit).await;
                return Err(failed.err().unwrap_or_else(|| Error::InvalidInput {
                    reason: "internal error: a failed bulk request lost its error".into(),
                }));
            }
        };
        self.workflow
            .finish_items(Operation::Register, &ids, &contexts, &results)
            .await;
        Ok(results)
    }

    async fn get(&self, id: &DeviceId) -> Result<Option<Device>> {
        self.others.get(id).await
    }

    async fn issue_token(&self, id: &DeviceId, lifetime: Duration) -> Result<SasToken> {
        self.others.issue_token(id, lifetime).await
    }
}
