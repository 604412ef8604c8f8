//! [`Workflow`]: the frame every provisioning operation runs in — the workflow [`Hook`]s before
//! and after it, and one [`AuditRecord`] with its outcome.
//!
//! [`Provisioner`](crate::Provisioner) runs each of its operations in a `Workflow`. It is public
//! so that a [`Provisioning`](crate::Provisioning) of one's own — one that writes the identity
//! and the registry in a single database transaction, say — applies a solution's hooks and
//! audit trail exactly as the `Provisioner` does, and an application that moves from one to the
//! other keeps them without changing its code.
//!
//! ```
//! use iot_core::DeviceId;
//! use iot_provisioning::{Error, Operation, Workflow};
//!
//! # tokio::runtime::Builder::new_current_thread().build().expect("rt").block_on(async {
//! let workflow = Workflow::new().actor("ops-console");
//! let id: DeviceId = "sensor-1".parse()?;
//! // Hooks' `before`, the operation, hooks' `after` (or `aborted`), one audit record.
//! let written = workflow
//!     .run(Operation::Update, &id, None, async { Ok::<_, Error>(42) })
//!     .await?;
//! assert_eq!(written, 42);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! # }).expect("example");
//! ```

use std::fmt;
use std::sync::Arc;

use iot_core::{DeviceId, Log};
use serde_json::Value;

use crate::audit::{AuditRecord, AuditTrail};
use crate::error::{Error, Result};
use crate::hooks::{Hook, HookContext, HookError, Operation};

/// The default actor operations are attributed to.
const DEFAULT_ACTOR: &str = "provisioning";

/// Hooks, audit trail and actor of provisioning operations; cheap to clone.
///
/// Built with [`new`](Workflow::new) and the builder methods; by default it has no hooks, no
/// audit trail and the actor `provisioning`.
#[derive(Clone)]
pub struct Workflow {
    hooks: Arc<[Arc<dyn Hook>]>,
    audit: AuditTrail,
    actor: Arc<str>,
}

impl fmt::Debug for Workflow {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Workflow")
            .field(
                "hooks",
                &self.hooks.iter().map(|h| h.name()).collect::<Vec<_>>(),
            )
            .field("audit", &self.audit)
            .field("actor", &self.actor)
            .finish()
    }
}

impl Default for Workflow {
    fn default() -> Self {
        Workflow::new()
    }
}

impl Workflow {
    /// No hooks, no audit trail, actor `provisioning`.
    pub fn new() -> Self {
        Workflow {
            hooks: Arc::from(Vec::new()),
            audit: AuditTrail::new(None),
            actor: Arc::from(DEFAULT_ACTOR),
        }
    }

    /// Adds a hook (hooks are called in the order added).
    pub fn hook(mut self, hook: Arc<dyn Hook>) -> Self {
        let mut hooks = self.hooks.to_vec();
        hooks.push(hook);
        self.hooks = Arc::from(hooks);
        self
    }

    /// Appends audit records to `log`, on the `audit` topic's records (see [`AuditRecord`]).
    pub fn audit_log(mut self, log: Arc<dyn Log>) -> Self {
        self.audit = AuditTrail::new(Some(log));
        self
    }

    /// Attributes operations to `actor` in hook contexts and audit records.
    pub fn actor(mut self, actor: impl AsRef<str>) -> Self {
        self.actor = Arc::from(actor.as_ref());
        self
    }

    /// Who operations are attributed to.
    pub fn actor_name(&self) -> &str {
        &self.actor
    }

    /// Whether any hook is installed (callers skip copying metadata for hooks when not).
    pub fn has_hooks(&self) -> bool {
        !self.hooks.is_empty()
    }

    /// What the hooks are told about `operation` on `id`.
    pub fn context(
        &self,
        operation: Operation,
        id: &DeviceId,
        metadata: Option<&Value>,
    ) -> HookContext {
        HookContext {
            operation,
            id: id.clone(),
            actor: self.actor.to_string(),
            metadata: metadata.cloned(),
        }
    }

    /// Runs every hook's `before` in order. On a refusal or failure, the hooks that had agreed
    /// are told ([`Hook::aborted`]) and the error says which hook refused; nothing may be written
    /// then.
    pub async fn before(&self, ctx: &HookContext) -> Result<()> {
        for (i, hook) in self.hooks.iter().enumerate() {
            if let Err(e) = hook.before(ctx).await {
                let error = match e {
                    HookError::Veto(reason) => Error::Vetoed {
                        hook: hook.name().to_owned(),
                        operation: ctx.operation.name(),
                        id: ctx.id.clone(),
                        reason,
                    },
                    HookError::Failed(reason) => Error::HookFailed {
                        hook: hook.name().to_owned(),
                        operation: ctx.operation.name(),
                        id: ctx.id.clone(),
                        reason,
                    },
                };
                let reason = error.to_string();
                for earlier in self.hooks.iter().take(i) {
                    earlier.aborted(ctx, &reason).await;
                }
                return Err(error);
            }
        }
        Ok(())
    }

    /// Tells every hook how an operation whose `before` hooks all agreed ended: `after` on
    /// success, `aborted` with the error otherwise.
    pub async fn after<T>(&self, ctx: &HookContext, result: &Result<T>) {
        for hook in self.hooks.iter() {
            match result {
                Ok(_) => hook.after(ctx).await,
                Err(e) => hook.aborted(ctx, &e.to_string()).await,
            }
        }
    }

    /// Appends one audit record per outcome (one batch; a failed append is logged, not
    /// returned: the operations stand).
    pub async fn audit<'a, I>(&self, operation: Operation, outcomes: I)
    where
        I: IntoIterator<Item = (&'a DeviceId, std::result::Result<(), &'a Error>)>,
    {
        let records = outcomes
            .into_iter()
            .map(|(id, outcome)| AuditRecord::new(&self.actor, operation, id, outcome))
            .collect();
        self.audit.write(records).await;
    }

    /// Closes a request of many items (a bulk registration): `after`/`aborted` for each item
    /// whose `before` hooks all agreed (`contexts[i]` is `Some`), then one audit record per item
    /// that names a device (`ids[i]` is `Some`), in one batch. The three slices run in step.
    pub async fn finish_items<T>(
        &self,
        operation: Operation,
        ids: &[Option<DeviceId>],
        contexts: &[Option<HookContext>],
        results: &[Result<T>],
    ) {
        for (ctx, result) in contexts.iter().zip(results) {
            if let Some(ctx) = ctx {
                self.after(ctx, result).await;
            }
        }
        let outcomes = ids
            .iter()
            .zip(results)
            .filter_map(|(id, r)| Some((id.as_ref()?, r.as_ref().map(drop))));
        self.audit(operation, outcomes).await;
    }

    /// The frame of a single-device operation: `before` hooks, then `op` if they all agreed,
    /// then `after`/`aborted`, then one audit record with the outcome.
    pub async fn run<T, F>(
        &self,
        operation: Operation,
        id: &DeviceId,
        metadata: Option<&Value>,
        op: F,
    ) -> Result<T>
    where
        F: Future<Output = Result<T>> + Send,
    {
        let ctx = self.context(operation, id, metadata);
        let result = match self.before(&ctx).await {
            Ok(()) => {
                let result = op.await;
                self.after(&ctx, &result).await;
                result
            }
            Err(e) => Err(e),
        };
        self.audit(operation, [(id, result.as_ref().map(drop))])
            .await;
        result
    }
}
