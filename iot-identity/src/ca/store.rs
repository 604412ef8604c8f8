//! The store of CA certificates.

use std::fmt;
use std::sync::Arc;

use async_trait::async_trait;

use super::error::CaError;
use super::record::{CaCertificate, StoredCa};

/// What a write or delete requires of the stored certificate, as IoT Hub's `If-Match` does.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CaCondition {
    /// There is none of that name (create only).
    Absent,
    /// It is at this version.
    Version(u64),
    /// Anything (create or replace; delete if present, else `NotFound`).
    Any,
}

/// Where a hub keeps its CA certificates. Writes are atomic and conditioned; versions come
/// from one counter per store and never repeat. Implementations must pass
/// `testkit::ca::run_all`.
#[async_trait]
pub trait CaStore: Send + Sync + fmt::Debug {
    /// The certificate of this name.
    async fn get(&self, name: &str) -> Result<Option<StoredCa>, CaError>;
    /// Every certificate, in name order.
    async fn list(&self) -> Result<Vec<StoredCa>, CaError>;
    /// Creates or replaces `certificate` (by its name) if `condition` holds; the new version.
    async fn put(
        &self,
        certificate: CaCertificate,
        condition: CaCondition,
    ) -> Result<StoredCa, CaError>;
    /// Removes the certificate of this name if `condition` holds.
    async fn delete(&self, name: &str, condition: CaCondition) -> Result<(), CaError>;
}

#[async_trait]
impl<T: CaStore + ?Sized> CaStore for Arc<T> {
    async fn get(&self, name: &str) -> Result<Option<StoredCa>, CaError> {
        (**self).get(name).await
    }
    async fn list(&self) -> Result<Vec<StoredCa>, CaError> {
        (**self).list().await
    }
    async fn put(
        &self,
        certificate: CaCertificate,
        condition: CaCondition,
    ) -> Result<StoredCa, CaError> {
        (**self).put(certificate, condition).await
    }
    async fn delete(&self, name: &str, condition: CaCondition) -> Result<(), CaError> {
        (**self).delete(name, condition).await
    }
}
