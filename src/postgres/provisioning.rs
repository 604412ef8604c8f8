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

use std::collections::HashSet;
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use iot_core::DeviceId;
use iot_identity::{Credentials, IdentityStore, NewIdentity, SasToken};
use iot_provisioning::{
    BulkItemResult, BulkMode, Device, Error, Provisioner, Provisioning, RegisterRequest,
    Registered, Result,
};
use iot_registry::{DeviceDocument, ETag, Registry};
use serde_json::Value;

use crate::postgres::{PgError, PgIdentityStore, PgRegistry, identity, registry};

/// A [`Provisioning`] whose registrations and removals are single PostgreSQL transactions.
///
/// Build it over an identity store and a registry that use the same database (checked: their
/// pools must name the same `host:port/db`). Hooks and the audit trail are not applied to
/// `register`, `unregister` and `bulk` yet (the `Provisioner` behind the other calls has
/// none either); see `docs/postgres.md`.
#[derive(Clone)]
pub struct PgProvisioning {
    identity: PgIdentityStore,
    registry: PgRegistry,
    /// The other calls: one store each, or reads.
    others: Provisioner,
    /// Writes one at a time, as the `Provisioner` serialises its own.
    writes: Arc<tokio::sync::Mutex<()>>,
}

impl fmt::Debug for PgProvisioning {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PgProvisioning")
            .field("identity", &self.identity)
            .field("registry", &self.registry)
            .finish()
    }
}

impl PgProvisioning {
    /// Provisioning over `identity` and `registry`, issuing tokens for `host`.
    pub async fn open(
        identity: PgIdentityStore,
        registry: PgRegistry,
        host: impl Into<String>,
    ) -> Result<Self> {
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
        .open()
        .await?;
        Ok(PgProvisioning {
            identity,
            registry,
            others,
            writes: Arc::new(tokio::sync::Mutex::new(())),
        })
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
struct Prepared {
    id: DeviceId,
    credentials: Credentials,
    doc: DeviceDocument,
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
        let p = prepare(request)?;
        let _writing = self.writes.lock().await;
        let mut client = self.client().await?;
        let tx = Self::transaction(&mut client).await?;
        let outcome = self
            .register_in(&tx, std::slice::from_ref(&p))
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

    async fn unregister(&self, id: &DeviceId, if_match: Option<&ETag>) -> Result<()> {
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
    }

    async fn activate(&self, id: &DeviceId, metadata: Option<Value>) -> Result<Device> {
        let _writing = self.writes.lock().await;
        self.others.activate(id, metadata).await
    }

    async fn deactivate(&self, id: &DeviceId, metadata: Option<Value>) -> Result<Device> {
        let _writing = self.writes.lock().await;
        self.others.deactivate(id, metadata).await
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
        // Validate every item first; a repeated id is refused like an existing one.
        let mut seen = HashSet::with_capacity(requests.len());
        let mut results: Vec<Option<BulkItemResult>> = Vec::with_capacity(requests.len());
        let mut todo: Vec<(usize, Prepared)> = Vec::new();
        for (i, request) in requests.into_iter().enumerate() {
            match prepare(request) {
                Ok(p) if !seen.insert(p.id.clone()) => {
                    results.push(Some(Err(Error::AlreadyExists { id: p.id })));
                }
                Ok(p) => {
                    results.push(None);
                    todo.push((i, p));
                }
                Err(e) => results.push(Some(Err(e))),
            }
        }
        let _writing = self.writes.lock().await;
        let mut client = self.client().await?;
        match mode {
            BulkMode::BestEffort => {
                for (i, p) in &todo {
                    let tx = Self::transaction(&mut client).await?;
                    let outcome = self
                        .register_in(&tx, std::slice::from_ref(p))
                        .await
                        .pop()
                        .flatten()
                        .unwrap_or_else(|| Err(Error::Aborted { id: p.id.clone() }));
                    let outcome = match outcome {
                        Ok(r) => Self::commit(tx).await.map(|()| r),
                        Err(e) => Err(e),
                    };
                    self.identity.forget(&p.id);
                    if let Some(slot) = results.get_mut(*i) {
                        *slot = Some(outcome);
                    }
                }
            }
            BulkMode::AllOrNothing => {
                let tx = Self::transaction(&mut client).await?;
                let items: Vec<Prepared> = todo
                    .iter()
                    .map(|(_, p)| Prepared {
                        id: p.id.clone(),
                        credentials: p.credentials.clone(),
                        doc: p.doc.clone(),
                    })
                    .collect();
                let outcomes = self.register_in(&tx, &items).await;
                let failed = results.iter().any(|r| matches!(r, Some(Err(_))))
                    || outcomes.iter().any(|o| !matches!(o, Some(Ok(_))));
                let committed = if failed {
                    Err(())
                } else {
                    Self::commit(tx).await.map_err(|e| {
                        tracing::warn!(error = %e, "all-or-nothing bulk commit failed");
                    })
                };
                for ((i, p), outcome) in todo.iter().zip(outcomes) {
                    self.identity.forget(&p.id);
                    let item = match (committed.is_ok(), outcome) {
                        (true, Some(ok)) => ok,
                        // Its own failure is its result; a valid item of a failed request is
                        // aborted.
                        (false, Some(Err(e))) => Err(e),
                        _ => Err(Error::Aborted { id: p.id.clone() }),
                    };
                    if let Some(slot) = results.get_mut(*i) {
                        *slot = Some(item);
                    }
                }
            }
        }
        Ok(results
            .into_iter()
            .map(|r| {
                r.unwrap_or_else(|| {
                    Err(Error::InvalidInput {
                        reason: "internal error: a bulk item was not processed".into(),
                    })
                })
            })
            .collect())
    }

    async fn get(&self, id: &DeviceId) -> Result<Option<Device>> {
        self.others.get(id).await
    }

    async fn issue_token(&self, id: &DeviceId, lifetime: Duration) -> Result<SasToken> {
        self.others.issue_token(id, lifetime).await
    }
}
