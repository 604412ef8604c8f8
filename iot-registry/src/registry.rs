//! The `Registry` trait.

use std::fmt::Debug;
use std::sync::Arc;

use async_trait::async_trait;
use iot_core::DeviceId;
use serde_json::Value;

use crate::error::Result;
use crate::paging::{Page, PageRequest};
use crate::query::{Query, Select};
use crate::record::{DeviceDocument, DeviceRecord, ETag};

/// The device registry: one descriptive record per device, and queries over them.
///
/// # Contract
///
/// Every implementation must hold these; `iot_registry::testkit` (feature `testkit`) checks
/// them.
///
/// * **Records.** [`create`](Registry::create) stores a new record and fails with
///   [`Error::AlreadyExists`](crate::Error::AlreadyExists) if one exists; [`get`](Registry::get)
///   returns it as written (`None` if absent); `replace`, `merge` and `delete` of an absent
///   device are [`Error::NotFound`](crate::Error::NotFound). `created` never changes after
///   `create`; `updated` is set by each write.
/// * **Etags.** Every successful write gives the record a new etag, never one it had before
///   (even across delete and re-create). A write with `if_match: Some(e)` where `e` is not the
///   current etag fails with [`Error::PreconditionFailed`](crate::Error::PreconditionFailed) and
///   changes nothing.
/// * **Merge** follows RFC 7396 on the document `{"metadata": …, "tags": …, "stateRef": …}`:
///   objects merge recursively, `null` removes a key, anything else replaces. A patch that is not
///   an object, names another top-level field, or leaves `metadata`/`tags` as non-objects is
///   [`Error::InvalidDocument`](crate::Error::InvalidDocument).
/// * **Limits.** Documents over the [`DocumentLimits`](crate::DocumentLimits) (size, depth, key
///   rules) are refused with a typed error and change nothing.
/// * **Queries.** [`query`](Registry::query) returns exactly the records for which
///   [`Query::matches`] holds, in [`Query::cmp_records`] order (device id when there is no
///   `ORDER BY`), at most `LIMIT` in all, split into pages of at most `max_items`, each page but
///   the last with a continuation token. [`count`](Registry::count) returns how many records
///   `query` would return in all. Indexes change speed, never results. A `SELECT COUNT()` query
///   passed to `query`, a zero or too large page size, or a token of another query are
///   [`Error::InvalidInput`](crate::Error::InvalidInput) /
///   [`Error::InvalidContinuation`](crate::Error::InvalidContinuation).
/// * **Durability** (durable implementations): a write is acknowledged only once it will survive
///   a crash of the process, and no reader sees a write before that.
/// * **Backend failures** (a lost connection, a refused statement) are
///   [`Error::Backend`](crate::Error::Backend) with the backend's own error as the source and a
///   flag saying whether a retry may help ([`Error::backend`](crate::Error::backend)).
/// * **Sync.** After [`sync`](Registry::sync) returns, every write acknowledged before it survives
///   a power cut.
/// * No input makes an implementation panic.
#[async_trait]
pub trait Registry: Send + Sync + Debug + 'static {
    /// Stores a new record for `id`.
    async fn create(&self, id: &DeviceId, doc: DeviceDocument) -> Result<DeviceRecord>;

    /// The record of `id`, if any.
    async fn get(&self, id: &DeviceId) -> Result<Option<DeviceRecord>>;

    /// Replaces the document of `id` whole.
    async fn replace(
        &self,
        id: &DeviceId,
        doc: DeviceDocument,
        if_match: Option<&ETag>,
    ) -> Result<DeviceRecord>;

    /// Applies a JSON merge patch (RFC 7396) to the document of `id`.
    async fn merge(
        &self,
        id: &DeviceId,
        patch: &Value,
        if_match: Option<&ETag>,
    ) -> Result<DeviceRecord>;

    /// Removes the record of `id`.
    async fn delete(&self, id: &DeviceId, if_match: Option<&ETag>) -> Result<()>;

    /// One page of the records matching `query`.
    async fn query(&self, query: &Query, page: &PageRequest) -> Result<Page>;

    /// How many records `query` returns in all.
    async fn count(&self, query: &Query) -> Result<u64>;

    /// Returns once every write acknowledged so far survives a power cut, not only a crash of
    /// the process. The provided method does nothing, which is right for a registry whose
    /// writes are durable when acknowledged (or that is not durable at all); a registry that
    /// acknowledges writes before they reach stable storage overrides it. Callers that need
    /// power-cut safety for a batch of writes (the provisioner, after recovery) call it once at
    /// the end rather than paying a sync per write.
    async fn sync(&self) -> Result<()> {
        Ok(())
    }
}

macro_rules! forward_registry {
    ($ptr:ident) => {
        #[deny(clippy::missing_trait_methods)]
        #[async_trait]
        impl<T: Registry + ?Sized> Registry for $ptr<T> {
            async fn create(&self, id: &DeviceId, doc: DeviceDocument) -> Result<DeviceRecord> {
                (**self).create(id, doc).await
            }
            async fn get(&self, id: &DeviceId) -> Result<Option<DeviceRecord>> {
                (**self).get(id).await
            }
            async fn replace(
                &self,
                id: &DeviceId,
                doc: DeviceDocument,
                if_match: Option<&ETag>,
            ) -> Result<DeviceRecord> {
                (**self).replace(id, doc, if_match).await
            }
            async fn merge(
                &self,
                id: &DeviceId,
                patch: &Value,
                if_match: Option<&ETag>,
            ) -> Result<DeviceRecord> {
                (**self).merge(id, patch, if_match).await
            }
            async fn delete(&self, id: &DeviceId, if_match: Option<&ETag>) -> Result<()> {
                (**self).delete(id, if_match).await
            }
            async fn query(&self, query: &Query, page: &PageRequest) -> Result<Page> {
                (**self).query(query, page).await
            }
            async fn count(&self, query: &Query) -> Result<u64> {
                (**self).count(query).await
            }
            async fn sync(&self) -> Result<()> {
                (**self).sync().await
            }
        }
    };
}

forward_registry!(Arc);
forward_registry!(Box);

/// What [`RegistryExt::run`] returns.
#[derive(Clone, Debug, PartialEq)]
#[non_exhaustive]
pub enum QueryOutput {
    /// The records of a `SELECT *` query (every page).
    Devices(Vec<DeviceRecord>),
    /// The answer of a `SELECT COUNT()` query.
    Count(u64),
}

/// Conveniences for every [`Registry`]; implementors write none of this.
#[async_trait]
pub trait RegistryExt: Registry {
    /// Every record `query` returns, following continuation tokens.
    async fn query_all(&self, query: &Query) -> Result<Vec<DeviceRecord>> {
        let mut out = Vec::new();
        let mut page = PageRequest::default();
        loop {
            let mut result = self.query(query, &page).await?;
            let continuation = result.continuation.take();
            out.extend(result.into_records()?);
            match continuation {
                Some(token) => page.continuation = Some(token),
                None => return Ok(out),
            }
        }
    }

    /// Parses and runs a query, returning all its records or its count.
    async fn run(&self, text: &str) -> Result<QueryOutput> {
        let query = Query::parse(text)?;
        Ok(match query.select() {
            Select::Count => QueryOutput::Count(self.count(&query).await?),
            _ => QueryOutput::Devices(self.query_all(&query).await?),
        })
    }
}

impl<T: Registry + ?Sized> RegistryExt for T {}
