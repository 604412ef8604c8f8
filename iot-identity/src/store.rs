//! The `IdentityStore` trait and its change stream.

use std::fmt::Debug;
use std::future::{Future, Ready};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use async_trait::async_trait;
use iot_core::DeviceId;
use tokio::sync::broadcast;

use crate::credentials::Credentials;
use crate::error::Result;
use crate::identity::{
    DeviceIdentity, DeviceStatus, ETag, IdentityChange, IdentityPage, NewIdentity,
};

/// The most records one [`IdentityStore::list`] call returns; larger limits are lowered to it.
pub const MAX_PAGE_SIZE: usize = 1000;

/// The authority on which devices exist and how they prove who they are.
///
/// Lookups are by device id only (searching belongs to the registry). The provisioning API is the
/// only writer; the gateway reads (through [`Authenticator`](crate::Authenticator)) and follows
/// [`subscribe`](IdentityStore::subscribe) to cut the sessions of disabled or deleted devices.
///
/// # Contract
///
/// Every implementation must hold these; [`testkit`](crate::testkit) (feature `testkit`) checks them.
///
/// * **Unique ids.** [`create`](IdentityStore::create) of an existing id fails with
///   [`Error::AlreadyExists`](crate::Error::AlreadyExists) and changes nothing; of concurrent creates
///   of one id exactly one succeeds.
/// * **Read your writes.** Once a write returns, [`get`](IdentityStore::get) and every
///   authentication see it, from any task.
/// * **Etags.** Every successful write gives the record an etag it never had before (in this store,
///   also across delete and re-create). A write with `if_match: Some(e)` fails with
///   [`Error::PreconditionFailed`](crate::Error::PreconditionFailed) and changes nothing unless `e`
///   is the current etag. Writes to a missing id fail with
///   [`Error::NotFound`](crate::Error::NotFound).
/// * **Generations.** Creating an id gives the record a new [`GenerationId`](crate::GenerationId),
///   different from the one of a deleted predecessor; other writes keep it.
/// * **Timestamps.** `created_at` is set by create; `updated_at` by every write; `status_updated_at`
///   by create and status changes.
/// * **Listing.** [`list`](IdentityStore::list) returns records in ascending id order, after
///   `after` (exclusive), at most `limit` (capped at [`MAX_PAGE_SIZE`]); `next` is `Some` exactly
///   when more records may follow. A zero limit is
///   [`Error::InvalidInput`](crate::Error::InvalidInput).
/// * **Changes.** Each successful write publishes one [`IdentityChange`] to every
///   [`ChangeStream`] subscribed before it, after the write is durable, in write order.
/// * **Input.** Disable reasons over 1024 bytes are refused; no input makes an implementation
///   panic. Durable stores keep every acknowledged write across a crash.
#[async_trait]
pub trait IdentityStore: Send + Sync + Debug + 'static {
    /// Creates a new identity and returns the stored record.
    async fn create(&self, identity: NewIdentity) -> Result<DeviceIdentity>;

    /// The identity of `id`, or `None`; await the returned [`Lookup`].
    ///
    /// This is the gateway's hot path (every connection and re-authentication reads it), so it
    /// costs no copy and no allocation where the store allows: the record is shared (the store
    /// and the caller hold the same `Arc`; a lookup bumps one reference count), and a store that
    /// has the answer at once returns [`Lookup::ready`] instead of a boxed future. A store that
    /// waits on I/O implements it as `Lookup::new(async move { ... })` (see [`Lookup`]).
    ///
    /// The record is a snapshot: later writes replace it in the store, not in a copy held.
    fn get<'a>(&'a self, id: &'a DeviceId) -> Lookup<'a>;

    /// Sets the status (enable, or disable with a reason).
    async fn set_status(
        &self,
        id: &DeviceId,
        status: DeviceStatus,
        if_match: Option<ETag>,
    ) -> Result<DeviceIdentity>;

    /// Replaces the credentials (for example to roll keys).
    async fn replace_credentials(
        &self,
        id: &DeviceId,
        credentials: Credentials,
        if_match: Option<ETag>,
    ) -> Result<DeviceIdentity>;

    /// Deletes the identity.
    async fn delete(&self, id: &DeviceId, if_match: Option<ETag>) -> Result<()>;

    /// A page of identities in id order, starting after `after`.
    async fn list(&self, after: Option<&DeviceId>, limit: usize) -> Result<IdentityPage>;

    /// A stream of the changes made from now on.
    fn subscribe(&self) -> ChangeStream;

    /// Returns once every write acknowledged so far survives a crash or power cut.
    ///
    /// The provided method does nothing, which is right for stores whose writes are durable when
    /// they return (a database that commits each write) and for stores that keep nothing (memory).
    /// A store that can acknowledge writes before they are durable (such as
    /// [`FileIdentityStore`](crate::FileIdentityStore) with
    /// [`Durability::OsBuffered`](crate::Durability::OsBuffered)) overrides it. Call it where
    /// later steps rely on earlier writes being durable (a bulk load before it reports success).
    async fn sync(&self) -> Result<()> {
        Ok(())
    }
}

macro_rules! forward_store {
    ($ptr:ident) => {
        #[deny(clippy::missing_trait_methods)]
        #[async_trait]
        impl<T: IdentityStore + ?Sized> IdentityStore for $ptr<T> {
            async fn create(&self, identity: NewIdentity) -> Result<DeviceIdentity> {
                (**self).create(identity).await
            }
            fn get<'a>(&'a self, id: &'a DeviceId) -> Lookup<'a> {
                (**self).get(id)
            }
            async fn set_status(
                &self,
                id: &DeviceId,
                status: DeviceStatus,
                if_match: Option<ETag>,
            ) -> Result<DeviceIdentity> {
                (**self).set_status(id, status, if_match).await
            }
            async fn replace_credentials(
                &self,
                id: &DeviceId,
                credentials: Credentials,
                if_match: Option<ETag>,
            ) -> Result<DeviceIdentity> {
                (**self)
                    .replace_credentials(id, credentials, if_match)
                    .await
            }
            async fn delete(&self, id: &DeviceId, if_match: Option<ETag>) -> Result<()> {
                (**self).delete(id, if_match).await
            }
            async fn list(&self, after: Option<&DeviceId>, limit: usize) -> Result<IdentityPage> {
                (**self).list(after, limit).await
            }
            fn subscribe(&self) -> ChangeStream {
                (**self).subscribe()
            }
            async fn sync(&self) -> Result<()> {
                (**self).sync().await
            }
        }
    };
}

forward_store!(Arc);
forward_store!(Box);

/// What [`IdentityStore::get`] yields.
pub type LookupResult = Result<Option<Arc<DeviceIdentity>>>;

/// The future of an [`IdentityStore::get`]: either ready at once, or a boxed future.
///
/// `async_trait` would box every call's future, and on the gateway's hot path that allocation
/// and free cost as much as the lookup itself (`examples/identity_bench.rs` measured an
/// in-memory lookup at about half the rate with it). A concrete future type keeps the trait
/// object safe and lets stores that hold their identities in memory answer without allocating.
///
/// ```
/// use iot_identity::{Lookup, LookupResult};
///
/// // What a store backed by a database does in `IdentityStore::get`: any `Send` future.
/// async fn fetch_from_database() -> LookupResult {
///     Ok(None)
/// }
/// let waiting = Lookup::new(fetch_from_database());
/// // What an in-memory store does: answer at once, nothing allocated.
/// let ready = Lookup::ready(Ok(None));
///
/// # let rt = tokio::runtime::Builder::new_current_thread().build().expect("runtime");
/// # rt.block_on(async {
/// assert!(waiting.await?.is_none());
/// assert!(ready.await?.is_none());
/// # Ok::<(), iot_identity::Error>(())
/// # }).expect("example");
/// ```
#[must_use = "futures do nothing unless awaited"]
pub struct Lookup<'a>(LookupState<'a>);

enum LookupState<'a> {
    Ready(Ready<LookupResult>),
    Boxed(Pin<Box<dyn Future<Output = LookupResult> + Send + 'a>>),
}

impl<'a> Lookup<'a> {
    /// A lookup already answered (stores that hold their identities in memory).
    pub fn ready(result: LookupResult) -> Self {
        Lookup(LookupState::Ready(std::future::ready(result)))
    }

    /// A lookup that has to wait (stores that do I/O); the future is boxed.
    pub fn new(future: impl Future<Output = LookupResult> + Send + 'a) -> Self {
        Lookup(LookupState::Boxed(Box::pin(future)))
    }
}

impl Future for Lookup<'_> {
    type Output = LookupResult;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<LookupResult> {
        // Both states are `Unpin`, so the lookup is too.
        match &mut self.get_mut().0 {
            LookupState::Ready(ready) => Pin::new(ready).poll(cx),
            LookupState::Boxed(future) => future.as_mut().poll(cx),
        }
    }
}

impl Debug for Lookup<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let state = match self.0 {
            LookupState::Ready(_) => "ready",
            LookupState::Boxed(_) => "boxed",
        };
        f.debug_tuple("Lookup").field(&state).finish()
    }
}

/// What a [`ChangeStream`] yields.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ChangeEvent {
    /// One change, in write order.
    Changed(IdentityChange),
    /// The subscriber fell behind and `missed` changes were dropped: it must re-check every
    /// identity it cares about (a gateway re-authenticates its live sessions).
    Lagged {
        /// How many changes were lost.
        missed: u64,
    },
}

/// A subscription to a store's changes. Bounded: a subscriber that does not keep up gets
/// [`ChangeEvent::Lagged`] instead of unbounded memory growth.
#[derive(Debug)]
pub struct ChangeStream(broadcast::Receiver<IdentityChange>);

impl ChangeStream {
    /// The next event; `None` once the store is dropped and every change was delivered.
    pub async fn recv(&mut self) -> Option<ChangeEvent> {
        match self.0.recv().await {
            Ok(change) => Some(ChangeEvent::Changed(change)),
            Err(broadcast::error::RecvError::Lagged(missed)) => {
                Some(ChangeEvent::Lagged { missed })
            }
            Err(broadcast::error::RecvError::Closed) => None,
        }
    }

    /// The next event if one is ready, without waiting.
    pub fn try_recv(&mut self) -> Option<ChangeEvent> {
        match self.0.try_recv() {
            Ok(change) => Some(ChangeEvent::Changed(change)),
            Err(broadcast::error::TryRecvError::Lagged(missed)) => {
                Some(ChangeEvent::Lagged { missed })
            }
            Err(_) => None,
        }
    }
}

/// The sending side that stores keep; implementors of [`IdentityStore`] outside this crate can use
/// it to offer the same stream.
#[derive(Debug, Clone)]
pub struct ChangeSender(broadcast::Sender<IdentityChange>);

impl ChangeSender {
    /// A sender whose subscribers may fall `capacity` changes behind before they lag.
    pub fn new(capacity: usize) -> Self {
        ChangeSender(broadcast::channel(capacity.max(1)).0)
    }

    /// Publishes `change` to current subscribers (a no-op without subscribers).
    pub fn send(&self, change: IdentityChange) {
        // An error only means nobody listens right now.
        let _ = self.0.send(change);
    }

    /// A new subscription.
    pub fn subscribe(&self) -> ChangeStream {
        ChangeStream(self.0.subscribe())
    }
}

impl Default for ChangeSender {
    /// Room for 4096 changes per subscriber.
    fn default() -> Self {
        ChangeSender::new(4096)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::Error;

    fn block_on<F: Future>(future: F) -> F::Output {
        tokio::runtime::Builder::new_current_thread()
            .build()
            .map(|rt| rt.block_on(future))
            .expect("runtime")
    }

    #[test]
    fn lookups_resolve_in_both_states() {
        let id: DeviceId = "lookup-1".parse().expect("id");
        let ready = Lookup::ready(Err(Error::NotFound { id: id.clone() }));
        assert_eq!(format!("{ready:?}"), "Lookup(\"ready\")");
        assert!(matches!(block_on(ready), Err(Error::NotFound { .. })));

        let boxed = Lookup::new(async {
            tokio::task::yield_now().await;
            Ok(None)
        });
        assert_eq!(format!("{boxed:?}"), "Lookup(\"boxed\")");
        assert!(matches!(block_on(boxed), Ok(None)));
    }
}
