//! Who may write when: operations on different devices run side by side, operations on one
//! device one after another, and recovery and bulk batches alone.
//!
//! Recovery decides each unfinished intent from the intent alone (see the [module
//! docs](super)), which is sound only if no intent in the journal belongs to an operation still
//! running and no later operation has touched an unfinished intent's devices. So:
//!
//! * A single-device operation holds the gate shared and its device's stripe lock
//!   ([`Gate::device`]); two operations on one device (or on two devices that share a stripe)
//!   queue, others overlap — and so share the journal's and the stores' fsyncs (group commit).
//! * Recovery and bulk batches hold the gate exclusively ([`Gate::exclusive`]): nothing else is
//!   in flight, so every unfinished intent in the journal is a leftover.
//! * A writer that recorded an intent and is dropped before finishing it (its caller's future
//!   was dropped, or a settle failed) raises the shared `needs_recovery` flag before it releases
//!   its locks. Whoever takes a device lock next and finds the flag up lets go, runs recovery
//!   exclusively, and starts over: no operation touches a device whose intent is unresolved.

use std::collections::hash_map::RandomState;
use std::hash::BuildHasher;
use std::sync::atomic::{AtomicBool, Ordering};

use iot_core::DeviceId;
use tokio::sync::{Mutex, MutexGuard, RwLock, RwLockReadGuard, RwLockWriteGuard};

/// Stripe locks per provisioner: enough that unrelated devices rarely share one.
const STRIPES: usize = 256;

/// The provisioner's write locks; see the [module docs](self).
#[derive(Debug)]
pub(super) struct Gate {
    gate: RwLock<()>,
    stripes: Box<[Mutex<()>]>,
    hasher: RandomState,
    needs_recovery: AtomicBool,
}

#[derive(Debug)]
enum Held<'a> {
    Device {
        _gate: RwLockReadGuard<'a, ()>,
        _stripe: MutexGuard<'a, ()>,
    },
    Exclusive {
        _gate: RwLockWriteGuard<'a, ()>,
    },
}

/// A write permission: one device's, or everything's.
#[derive(Debug)]
pub(super) struct Writer<'a> {
    held: Held<'a>,
    needs_recovery: &'a AtomicBool,
    /// An intent recorded by this writer is not finished yet.
    unfinished: bool,
}

impl Gate {
    /// A gate whose first exclusive writer runs recovery (a previous run may have left intents).
    pub(super) fn new() -> Gate {
        Gate {
            gate: RwLock::new(()),
            stripes: (0..STRIPES).map(|_| Mutex::new(())).collect(),
            hasher: RandomState::new(),
            needs_recovery: AtomicBool::new(true),
        }
    }

    /// Waits for permission to write `id`. `None` means recovery is needed first: the caller
    /// runs it under [`exclusive`](Self::exclusive) and asks again.
    pub(super) async fn device(&self, id: &DeviceId) -> Option<Writer<'_>> {
        let gate = self.gate.read().await;
        let stripe = self.stripes[self.stripe(id)].lock().await;
        // Raised by a writer before it released its locks, so a writer that held this stripe
        // before us and left an intent unresolved is seen here.
        if self.needs_recovery.load(Ordering::Acquire) {
            return None;
        }
        Some(Writer {
            held: Held::Device {
                _gate: gate,
                _stripe: stripe,
            },
            needs_recovery: &self.needs_recovery,
            unfinished: false,
        })
    }

    /// Waits until no other writer holds anything.
    pub(super) async fn exclusive(&self) -> Writer<'_> {
        Writer {
            held: Held::Exclusive {
                _gate: self.gate.write().await,
            },
            needs_recovery: &self.needs_recovery,
            unfinished: false,
        }
    }

    /// Asks the next writer to run recovery first (an explicit `recover`).
    pub(super) fn require_recovery(&self) {
        self.needs_recovery.store(true, Ordering::Release);
    }

    fn stripe(&self, id: &DeviceId) -> usize {
        // The remainder is below STRIPES, so the cast cannot truncate.
        (self.hasher.hash_one(id.as_str()) % STRIPES as u64) as usize
    }
}

impl Writer<'_> {
    /// Whether this writer may run recovery: only when nothing else is in flight.
    pub(super) fn is_exclusive(&self) -> bool {
        matches!(self.held, Held::Exclusive { .. })
    }

    /// Whether recovery has work: the flag is up, or this writer left an intent unfinished.
    pub(super) fn recovery_needed(&self) -> bool {
        self.unfinished || self.needs_recovery.load(Ordering::Acquire)
    }

    /// Records that an intent left unresolved must be recovered before the next write.
    pub(super) fn need_recovery(&mut self) {
        self.needs_recovery.store(true, Ordering::Release);
    }

    /// Recovery ran: nothing is left unresolved.
    pub(super) fn recovered(&mut self) {
        self.unfinished = false;
        self.needs_recovery.store(false, Ordering::Release);
    }

    /// An intent is about to be recorded.
    pub(super) fn begun(&mut self) {
        self.unfinished = true;
    }

    /// The intent this writer recorded is finished.
    pub(super) fn finished(&mut self) {
        self.unfinished = false;
    }
}

impl Drop for Writer<'_> {
    fn drop(&mut self) {
        // Runs before the locks in `held` are released, so the next holder sees the flag.
        if self.unfinished {
            self.needs_recovery.store(true, Ordering::Release);
        }
    }
}
