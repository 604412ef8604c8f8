//! Bulk registration: validation and hooks per item, then batches of one journal intent each.

use std::collections::HashSet;

use iot_core::DeviceId;
use iot_identity::{DeviceIdentity, NewIdentity};
use iot_registry::{DeviceDocument, DeviceRecord};

use super::{Prepared, Provisioner, Writer, error_device, view};
use crate::error::{Error, Result};
use crate::hooks::{HookContext, Operation};
use crate::journal::Intent;
use crate::types::{BulkItemResult, BulkMode, RegisterRequest, Registered};

impl Provisioner {
    /// `Provisioning::bulk`: validation and hooks per item, then batches under the write lock.
    pub(super) async fn bulk_register(
        &self,
        requests: Vec<RegisterRequest>,
        mode: BulkMode,
    ) -> Result<Vec<BulkItemResult>> {
        // Validate and run the `before` hooks outside the write lock. Per request: its id (for
        // the audit trail) and the hook context if its `before` hooks ran.
        let mut seen = HashSet::with_capacity(requests.len());
        let mut results: Vec<Option<Result<Registered>>> = Vec::with_capacity(requests.len());
        let mut ids: Vec<Option<DeviceId>> = Vec::with_capacity(requests.len());
        let mut contexts: Vec<Option<HookContext>> = Vec::new();
        let mut todo = Vec::with_capacity(requests.len());
        for request in requests {
            let prepared = self.prepare(request).and_then(|p| {
                if seen.insert(p.id.clone()) {
                    Ok(p)
                } else {
                    Err(Error::AlreadyExists { id: p.id })
                }
            });
            let mut context = None;
            let prepared = match prepared {
                Ok(p) if self.workflow.has_hooks() => {
                    let ctx = self
                        .workflow
                        .context(Operation::Register, &p.id, Some(&p.metadata));
                    let agreed = self.workflow.before(&ctx).await;
                    context = Some(ctx);
                    agreed.map(|()| p)
                }
                other => other,
            };
            match prepared {
                Ok(p) => {
                    ids.push(Some(p.id.clone()));
                    results.push(None);
                    todo.push(p);
                    if self.workflow.has_hooks() {
                        contexts.push(context);
                    }
                }
                Err(e) => {
                    ids.push(error_device(&e).cloned());
                    results.push(Some(Err(e)));
                    if self.workflow.has_hooks() {
                        // A refusing hook already told the others.
                        contexts.push(None);
                    }
                }
            }
        }
        // An all-or-nothing request with invalid items still checks the others against the
        // stores, so that every item reports its own error.
        let doomed = mode == BulkMode::AllOrNothing && results.iter().any(Option::is_some);
        let done = {
            match self.lock_exclusive().await {
                Ok(mut writer) => {
                    let batch_size = match mode {
                        BulkMode::AllOrNothing => todo.len().max(1),
                        BulkMode::BestEffort => self.inner.bulk_batch,
                    };
                    let mut outcomes = Vec::with_capacity(todo.len());
                    let mut todo = todo.into_iter().peekable();
                    while todo.peek().is_some() {
                        let batch: Vec<Prepared> = todo.by_ref().take(batch_size).collect();
                        outcomes
                            .extend(self.register_batch(&mut writer, batch, mode, doomed).await);
                    }
                    // The batches' finishes become durable before the request returns.
                    if outcomes.iter().any(Result::is_ok)
                        && let Err(e) = self.inner.journal.sync().await
                    {
                        // Whether each finish survived is unknown: recovery after a restart
                        // keeps the batches whose finish did and rolls back the others, so the
                        // stores agree either way, but the outcome is not known yet.
                        writer.need_recovery();
                        let reason = e.to_string();
                        outcomes = outcomes
                            .into_iter()
                            .map(|r| {
                                r.and_then(|reg| {
                                    Err(Error::RecoveryPending {
                                        id: reg.device.id,
                                        reason: reason.clone(),
                                    })
                                })
                            })
                            .collect();
                    }
                    drop(writer);
                    fill(results, outcomes)
                }
                Err(e) => {
                    let reason = e.to_string();
                    let rest: Vec<_> = todo
                        .into_iter()
                        .map(|p| {
                            Err(Error::RecoveryPending {
                                id: p.id,
                                reason: reason.clone(),
                            })
                        })
                        .collect();
                    fill(results, rest)
                }
            }
        };
        self.workflow
            .finish_items(Operation::Register, &ids, &contexts, &done)
            .await;
        Ok(done)
    }

    /// Registers one batch under the write lock: prechecks, one intent, both stores (written
    /// concurrently: each is a separate file and the intent covers any interleaving), one
    /// finish. Returns one result per item.
    async fn register_batch(
        &self,
        writer: &mut Writer<'_>,
        batch: Vec<Prepared>,
        mode: BulkMode,
        doomed: bool,
    ) -> Vec<Result<Registered>> {
        // An earlier batch of this request may have left an intent unresolved: keep at most one.
        if let Err(e) = self.recover_locked(writer).await {
            let reason = e.to_string();
            return batch
                .into_iter()
                .map(|p| {
                    Err(Error::RecoveryPending {
                        id: p.id,
                        reason: reason.clone(),
                    })
                })
                .collect();
        }
        let mut results: Vec<Option<Result<Registered>>> = Vec::with_capacity(batch.len());
        let mut todo: Vec<Prepared> = Vec::with_capacity(batch.len());
        for p in batch {
            let exists = match self.inner.identity.get(&p.id).await {
                Ok(Some(_)) => Ok(true),
                Ok(None) => match self.inner.registry.get(&p.id).await {
                    Ok(found) => Ok(found.is_some()),
                    Err(e) => Err(Error::Registry(e)),
                },
                Err(e) => Err(Error::Identity(e)),
            };
            match exists {
                Ok(false) => {
                    results.push(None);
                    todo.push(p);
                }
                Ok(true) => results.push(Some(Err(Error::AlreadyExists { id: p.id }))),
                Err(e) => results.push(Some(Err(e))),
            }
        }
        if mode == BulkMode::AllOrNothing && (doomed || results.iter().any(Option::is_some)) {
            return abort_rest(results, todo);
        }
        if todo.is_empty() {
            return results.into_iter().flatten().collect();
        }
        let intent = Intent::Register {
            ids: todo.iter().map(|p| p.id.clone()).collect(),
        };
        let seq = match self.begin(writer, &intent).await {
            Ok(seq) => seq,
            Err(e) => {
                let reason = e.to_string();
                return fill(
                    results,
                    todo.into_iter().map(|p| {
                        Err(Error::RecoveryPending {
                            id: p.id,
                            reason: reason.clone(),
                        })
                    }),
                );
            }
        };
        let registry = &self.inner.registry;
        let identity = &self.inner.identity;
        let docs: Vec<DeviceDocument> = todo
            .iter_mut()
            .map(|p| std::mem::take(&mut p.doc))
            .collect();
        let records = async {
            let mut out = Vec::with_capacity(todo.len());
            for (p, doc) in todo.iter().zip(docs) {
                out.push(registry.create(&p.id, doc).await);
            }
            out
        };
        let identities = async {
            let mut out = Vec::with_capacity(todo.len());
            for p in &todo {
                let new = NewIdentity::new(p.id.clone(), p.credentials.clone());
                out.push(identity.create(new).await);
            }
            out
        };
        let (records, identities) = futures::future::join(records, identities).await;
        let mut outcomes: Vec<Result<(DeviceRecord, DeviceIdentity)>> = records
            .into_iter()
            .zip(identities)
            .map(|(r, i)| match (r, i) {
                (Ok(r), Ok(i)) => Ok((r, i)),
                (Err(e), _) => Err(Error::from_registry(e)),
                (_, Err(e)) => Err(Error::from_identity(e)),
            })
            .collect();
        let failed: Vec<DeviceId> = todo
            .iter()
            .zip(&outcomes)
            .filter(|(_, o)| o.is_err())
            .map(|(p, _)| p.id.clone())
            .collect();
        let settled = if failed.is_empty() {
            // Made durable by the next batch's intent, or by the sync that ends the request.
            self.finish_unsynced(writer, seq).await
        } else {
            // Undo what must not stay: the failed items, or every item when all-or-nothing.
            let undo = match mode {
                BulkMode::AllOrNothing => intent.clone(),
                BulkMode::BestEffort => Intent::Register {
                    ids: failed.clone(),
                },
            };
            match self.resolve(&undo).await {
                Ok(()) => self.finish(writer, seq).await,
                Err(e) => Err(e),
            }
        };
        if let Err(e) = settled {
            // The whole batch rolls back (now if possible, else at recovery): no item stands.
            let reason = e.to_string();
            let pending = match self.resolve(&intent).await {
                Ok(()) => self.finish(writer, seq).await.is_err(),
                Err(_) => true,
            };
            if pending {
                writer.need_recovery();
            }
            return fill(
                results,
                todo.into_iter().map(|p| {
                    Err(Error::RecoveryPending {
                        id: p.id,
                        reason: reason.clone(),
                    })
                }),
            );
        }
        if mode == BulkMode::AllOrNothing && !failed.is_empty() {
            outcomes = outcomes
                .into_iter()
                .zip(&todo)
                .map(|(o, p)| match o {
                    Ok(_) => Err(Error::Aborted { id: p.id.clone() }),
                    Err(e) => Err(e),
                })
                .collect();
        }
        fill(
            results,
            todo.into_iter().zip(outcomes).map(|(p, o)| {
                o.map(|(record, identity)| Registered {
                    device: view(&identity, record),
                    credentials: p.credentials,
                })
            }),
        )
    }
}

/// Fills the `None` slots of `results` with `rest`, in order.
fn fill(
    results: Vec<Option<Result<Registered>>>,
    rest: impl IntoIterator<Item = Result<Registered>>,
) -> Vec<Result<Registered>> {
    let mut rest = rest.into_iter();
    results
        .into_iter()
        .map(|slot| match slot {
            Some(r) => r,
            None => rest
                .next()
                .unwrap_or_else(|| Err(Error::invalid("internal error: a bulk result is missing"))),
        })
        .collect()
}

/// All-or-nothing with an invalid item: every valid item reports `Aborted`.
fn abort_rest(
    results: Vec<Option<Result<Registered>>>,
    todo: Vec<Prepared>,
) -> Vec<Result<Registered>> {
    fill(
        results,
        todo.into_iter().map(|p| Err(Error::Aborted { id: p.id })),
    )
}
