//! What a `Log` implementation guarantees beyond the rules every log must hold.

/// The properties of the [`Log`](crate::Log) contract that a backend may lack, as the log states
/// them ([`Log::capabilities`](crate::Log::capabilities)).
///
/// Every log holds the rest of the contract. A backend that cannot give one of these properties
/// says so here instead of pretending: callers that depend on it can check, and the conformance
/// suite (`testkit::run_all`) checks the properties a log states and skips, by name, the ones it
/// does not. `MemoryLog` and `FileLog` state all of them ([`LogCapabilities::FULL`]).
///
/// `#[non_exhaustive]`: start from [`LogCapabilities::FULL`] and switch off what your backend lacks,
/// so that a property added later is not silently claimed or denied by your code.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub struct LogCapabilities {
    /// A batch is atomic: a concurrent reader sees all of an appended batch or none of it, and a
    /// failed append leaves nothing behind.
    ///
    /// Without it, a batch is still written in order and **contiguously** (no other writer's
    /// record lands inside it, and offsets stay dense), but readers may see a prefix of a batch
    /// that is still being written, and a failed append may leave a prefix of its batch in the log
    /// (the backend's error says how much it knows was written).
    pub atomic_batches: bool,
    /// [`Log::sync`](crate::Log::sync) makes every acknowledged record durable against a machine
    /// crash.
    ///
    /// Without it, `sync` cannot force the backend to disk: what an acknowledged record survives
    /// is the backend's (and its operator's) setting, which the backend documents.
    pub forced_sync: bool,
}

impl LogCapabilities {
    /// Every property: what `MemoryLog`, `FileLog` and the trait's default state.
    pub const FULL: LogCapabilities = LogCapabilities {
        atomic_batches: true,
        forced_sync: true,
    };

    /// Sets [`atomic_batches`](Self::atomic_batches).
    pub const fn atomic_batches(mut self, atomic_batches: bool) -> Self {
        self.atomic_batches = atomic_batches;
        self
    }

    /// Sets [`forced_sync`](Self::forced_sync).
    pub const fn forced_sync(mut self, forced_sync: bool) -> Self {
        self.forced_sync = forced_sync;
        self
    }
}

impl Default for LogCapabilities {
    fn default() -> Self {
        LogCapabilities::FULL
    }
}
