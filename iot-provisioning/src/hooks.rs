//! Workflow hooks: code of the solution run around each operation (activate a SIM through an
//! operator's API, open a billing account…).
//!
//! For each operation the provisioner calls every hook's [`before`](Hook::before) in order. A
//! hook may refuse ([`HookError::Veto`]) or fail ([`HookError::Failed`]); then nothing is
//! written, and the hooks whose `before` had already succeeded get [`aborted`](Hook::aborted)
//! so they can undo their own side effects. Otherwise the operation runs, and each hook gets
//! [`after`](Hook::after) with the outcome, or `aborted` if the operation failed. `after` and
//! `aborted` cannot fail the operation: it is complete (or undone) in both stores by then.

use std::fmt::Debug;

use async_trait::async_trait;
use iot_core::DeviceId;

/// The operations of [`Provisioning`](crate::Provisioning), as hooks and audit records name them.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Operation {
    /// `register` (also each item of `bulk`).
    Register,
    /// `unregister`.
    Unregister,
    /// `activate`.
    Activate,
    /// `deactivate`.
    Deactivate,
    /// `update`.
    Update,
    /// `reset_credentials`.
    ResetCredentials,
    /// `issue_token`.
    IssueToken,
}

impl Operation {
    /// The operation's name (`"register"`, `"reset_credentials"`, …).
    pub fn name(self) -> &'static str {
        match self {
            Operation::Register => "register",
            Operation::Unregister => "unregister",
            Operation::Activate => "activate",
            Operation::Deactivate => "deactivate",
            Operation::Update => "update",
            Operation::ResetCredentials => "reset_credentials",
            Operation::IssueToken => "issue_token",
        }
    }
}

/// What a hook is told about an operation. It never holds a secret.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct HookContext {
    /// The operation.
    pub operation: Operation,
    /// The device.
    pub id: DeviceId,
    /// Who asked (the provisioner's actor).
    pub actor: String,
    /// The metadata of the request, if it has any.
    pub metadata: Option<serde_json::Value>,
}

/// Why a hook stopped an operation.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum HookError {
    /// The hook refuses the operation (a business rule).
    #[error("vetoed: {0}")]
    Veto(String),
    /// The hook could not do its work (the operator's API is down).
    #[error("failed: {0}")]
    Failed(String),
}

/// A workflow hook. Implementations must be cheap to call concurrently.
#[async_trait]
pub trait Hook: Send + Sync + Debug + 'static {
    /// A name for errors and audit records.
    fn name(&self) -> &str;

    /// Called before anything is written; an error stops the operation with nothing written.
    async fn before(&self, ctx: &HookContext) -> Result<(), HookError>;

    /// Called after the operation succeeded.
    async fn after(&self, _ctx: &HookContext) {}

    /// Called when `before` succeeded but the operation did not happen (another hook vetoed, or
    /// it failed): undo what `before` did.
    async fn aborted(&self, _ctx: &HookContext, _reason: &str) {}
}
