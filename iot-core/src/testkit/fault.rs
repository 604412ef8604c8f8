//! A fault-injecting [`Log`] wrapper, for testing what callers do when the log fails.
//!
//! [`FaultyLog`] forwards every call to the log it wraps until a planned fault fires: then the
//! call fails with [`Error::Backend`] (backend [`FaultyLog::BACKEND`], retryable), whose source is
//! an [`InjectedFault`] naming the operation and the call. Two kinds of fault model the two ways
//! a remote log fails:
//!
//! * [`FaultKind::Refuse`]: the call never reaches the log (a refused connection) — nothing
//!   happened;
//! * [`FaultKind::LoseReply`]: the call takes effect, then the reply is lost (a timeout after the
//!   database committed) — the caller sees an error for something that did happen.
//!
//! With no fault planned the wrapper is a faithful `Log`, and passes the conformance suite.
//!
//! ```
//! # tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(async {
//! use iot_core::testkit::{FaultKind, FaultyLog, Operation, sample_record};
//! use iot_core::{Log, MemoryLog, Offset, PartitionId};
//!
//! let log = FaultyLog::new(MemoryLog::new(1)?);
//! log.fail_nth(Some(Operation::Append), 2, FaultKind::Refuse);
//! let p = PartitionId(0);
//! log.append(p, vec![sample_record("k", 1)]).await?;
//! let refused = log.append(p, vec![sample_record("k", 2)]).await.unwrap_err();
//! assert!(refused.is_retryable());
//! assert_eq!(log.next_offset(p).await?, Offset(1), "a refused call changes nothing");
//! # Ok::<(), iot_core::Error>(()) }).unwrap();
//! ```

use std::fmt;
use std::sync::Mutex;

use async_trait::async_trait;

use crate::error::{Error, Result};
use crate::limits::ReadLimits;
use crate::log::{Appended, Log, RetentionPolicy, RetentionReport};
use crate::names::GroupName;
use crate::offset::{Offset, PartitionId};
use crate::record::{Record, StoredRecord};
use crate::sync_util::lock;
use crate::timestamp::Timestamp;

/// The fallible operations of a [`Log`] (`partition_count` cannot fail and is never faulted).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Operation {
    /// [`Log::append`].
    Append,
    /// [`Log::read`].
    Read,
    /// [`Log::wait_for`].
    WaitFor,
    /// [`Log::earliest_offset`].
    EarliestOffset,
    /// [`Log::next_offset`].
    NextOffset,
    /// [`Log::commit`].
    Commit,
    /// [`Log::committed`].
    Committed,
    /// [`Log::enforce_retention`].
    EnforceRetention,
    /// [`Log::sync`].
    Sync,
}

/// How an injected fault behaves.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum FaultKind {
    /// The call fails without reaching the wrapped log.
    Refuse,
    /// The call reaches the wrapped log and takes effect; the caller gets an error anyway.
    LoseReply,
}

/// The source of an injected [`Error::Backend`]: which operation failed, and which call of the
/// wrapper it was (counting every fallible call from 1).
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[error("injected fault ({kind:?}) in {operation:?}, call {call}")]
pub struct InjectedFault {
    /// The operation that failed.
    pub operation: Operation,
    /// The kind of fault.
    pub kind: FaultKind,
    /// The call's number among all fallible calls to the wrapper.
    pub call: u64,
}

/// A planned fault: fires on the `remaining`-th matching call from now.
#[derive(Clone, Copy, Debug)]
struct Planned {
    operation: Option<Operation>,
    remaining: u64,
    kind: FaultKind,
}

#[derive(Debug, Default)]
struct FaultState {
    calls: u64,
    injected: u64,
    planned: Vec<Planned>,
}

/// A [`Log`] that forwards to `L` and fails the calls it was told to fail. See the
/// [module docs](self).
pub struct FaultyLog<L> {
    inner: L,
    state: Mutex<FaultState>,
}

impl<L: fmt::Debug> fmt::Debug for FaultyLog<L> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let state = lock(&self.state);
        f.debug_struct("FaultyLog")
            .field("inner", &self.inner)
            .field("calls", &state.calls)
            .field("injected", &state.injected)
            .field("planned", &state.planned.len())
            .finish()
    }
}

impl<L: Log> FaultyLog<L> {
    /// The `backend` of every injected [`Error::Backend`].
    pub const BACKEND: &'static str = "fault-injection";

    /// Wraps `inner`, with no fault planned.
    pub fn new(inner: L) -> Self {
        FaultyLog {
            inner,
            state: Mutex::new(FaultState::default()),
        }
    }

    /// Plans a fault on the `nth` call from now (1 is the next one) of `operation`, or of any
    /// operation if `None`. Plans are independent: each counts its own matching calls, and
    /// fires once.
    pub fn fail_nth(&self, operation: Option<Operation>, nth: u64, kind: FaultKind) {
        lock(&self.state).planned.push(Planned {
            operation,
            remaining: nth.max(1),
            kind,
        });
    }

    /// Forgets every planned fault that has not fired.
    pub fn clear(&self) {
        lock(&self.state).planned.clear();
    }

    /// Fallible calls made so far.
    pub fn calls(&self) -> u64 {
        lock(&self.state).calls
    }

    /// Faults injected so far.
    pub fn injected(&self) -> u64 {
        lock(&self.state).injected
    }

    /// The wrapped log.
    pub fn inner(&self) -> &L {
        &self.inner
    }

    /// Counts a call of `operation` and says whether (and how) it must fail.
    fn fault_for(&self, operation: Operation) -> Option<InjectedFault> {
        let mut state = lock(&self.state);
        state.calls += 1;
        let call = state.calls;
        let mut fired = None;
        for plan in &mut state.planned {
            if plan.operation.is_some_and(|op| op != operation) {
                continue;
            }
            plan.remaining -= 1;
            if plan.remaining == 0 && fired.is_none() {
                fired = Some(plan.kind);
            }
        }
        // A plan that reached zero while another one fired is spent as well: it lost its turn
        // rather than moving to a later call the test did not ask for.
        state.planned.retain(|p| p.remaining > 0);
        let kind = fired?;
        state.injected += 1;
        tracing::debug!(?operation, ?kind, call, "injecting a log fault");
        Some(InjectedFault {
            operation,
            kind,
            call,
        })
    }

    /// Runs `call` on the wrapped log unless a fault says otherwise. The call is made only after
    /// the decision, so a refused call cannot have started anything in the wrapped log.
    async fn run<'a, T, F, Fut>(&'a self, operation: Operation, call: F) -> Result<T>
    where
        F: FnOnce(&'a L) -> Fut,
        Fut: Future<Output = Result<T>>,
    {
        match self.fault_for(operation) {
            None => call(&self.inner).await,
            Some(fault) => {
                if fault.kind == FaultKind::LoseReply {
                    // The effect happens; only the answer is lost.
                    let _ = call(&self.inner).await;
                }
                Err(Error::backend(Self::BACKEND, fault, true))
            }
        }
    }
}

#[deny(clippy::missing_trait_methods)]
#[async_trait]
impl<L: Log> Log for FaultyLog<L> {
    fn partition_count(&self) -> u32 {
        self.inner.partition_count()
    }

    fn capabilities(&self) -> crate::capabilities::LogCapabilities {
        self.inner.capabilities()
    }

    async fn append(&self, partition: PartitionId, records: Vec<Record>) -> Result<Appended> {
        self.run(Operation::Append, move |l| l.append(partition, records))
            .await
    }

    async fn read(
        &self,
        partition: PartitionId,
        from: Offset,
        limits: ReadLimits,
    ) -> Result<Vec<StoredRecord>> {
        self.run(Operation::Read, move |l| l.read(partition, from, limits))
            .await
    }

    async fn wait_for(&self, partition: PartitionId, offset: Offset) -> Result<Offset> {
        self.run(Operation::WaitFor, move |l| l.wait_for(partition, offset))
            .await
    }

    async fn earliest_offset(&self, partition: PartitionId) -> Result<Offset> {
        self.run(Operation::EarliestOffset, move |l| {
            l.earliest_offset(partition)
        })
        .await
    }

    async fn next_offset(&self, partition: PartitionId) -> Result<Offset> {
        self.run(Operation::NextOffset, move |l| l.next_offset(partition))
            .await
    }

    async fn commit(
        &self,
        group: &GroupName,
        partition: PartitionId,
        offset: Offset,
    ) -> Result<()> {
        self.run(Operation::Commit, move |l| {
            l.commit(group, partition, offset)
        })
        .await
    }

    async fn committed(&self, group: &GroupName, partition: PartitionId) -> Result<Option<Offset>> {
        self.run(Operation::Committed, move |l| l.committed(group, partition))
            .await
    }

    async fn enforce_retention(
        &self,
        policy: &RetentionPolicy,
        now: Timestamp,
    ) -> Result<RetentionReport> {
        self.run(Operation::EnforceRetention, move |l| {
            l.enforce_retention(policy, now)
        })
        .await
    }

    async fn sync(&self) -> Result<()> {
        self.run(Operation::Sync, move |l| l.sync()).await
    }
}
