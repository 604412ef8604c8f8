//! The storage kit: the pieces every file-backed store of the SDK is built from, kept in one place
//! so that their rules cannot drift apart.
//!
//! * [`frame`] — length- and CRC32C-framed records, and the one rule that tells a torn tail (cut
//!   off on recovery) from corruption (refused, or repaired only when asked).
//! * [`fs`] — private files (mode 0600), durable directory creation, atomic replacement,
//!   directory fsync.
//! * [`DirLock`] — the exclusive lock that keeps a second writer out of a store's directory.
//! * [`run_blocking`] — file work moved off the async executor.
//! * [`Durability`] — when a store acknowledges a write.
//! * [`group`] — group commit: concurrent writers of one file share its writes and fsyncs. A store
//!   applies a write to memory before its group's fsync and acknowledges it after; readers answer
//!   only once what they saw is durable (the reasons are in the module docs).
//! * [`journal`] — a write-ahead log with snapshots for stores whose state fits in memory, on
//!   group commit.
//!
//! Integrators writing their own file-backed store can use the kit too; its error type,
//! [`StorageError`], converts into every crate's error.

pub mod blocking;
pub mod dir_lock;
pub mod durability;
pub mod error;
pub mod frame;
pub mod fs;
pub mod group;
pub mod journal;

pub use blocking::run_blocking;
pub use dir_lock::DirLock;
pub use durability::Durability;
pub use error::{StorageError, StorageResult};
pub use frame::{FrameReader, FrameScan, Recovery, TornTail};
pub use group::{GroupCommit, WalFile};
pub use journal::{Journal, JournalConfig, Journaled};
