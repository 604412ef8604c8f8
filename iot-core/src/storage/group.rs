//! Group commit: concurrent writers of one append-only file share its writes and fsyncs.
//!
//! A writer *stages* its encoded bytes into a shared buffer under a short lock and gets a ticket
//! (a sequence number). One *flusher* at a time takes everything staged, writes it and (with
//! [`Durability::Fsync`]) fsyncs it on the blocking pool, then publishes "durable up to ticket
//! N"; writers wait for that instead of fsyncing themselves. Writers that arrive while an fsync
//! runs are served by the next one, so the fsync rate bounds batches, not writes.
//!
//! # Invariants
//!
//! * Tickets are issued in buffer order and the buffer is written in that order, so "durable up
//!   to N" covers every ticket ≤ N. A store that plans a write from state changed by an earlier
//!   ticket therefore never has its own ticket acknowledged before the earlier one is durable.
//! * At most one flusher runs (the `flushing` flag, under the staging lock). A stager that finds
//!   none starts one: on the blocking pool when a tokio runtime is running (so dropping the
//!   stager's future cannot strand the bytes), else in its own [`wait_blocking`] call.
//! * The flusher holds the file lock for a whole batch, so [`GroupCommit::rotate`] (a store's
//!   compaction) never interleaves with a half-written batch.
//! # Apply before the fsync, acknowledge after
//!
//! The stores built on this stage a write and apply it to memory under the lock that orders their
//! writers, before the group's fsync, and acknowledge it after. Applying after the fsync instead
//! would leave the next writer planning against state without the writes in flight (an ETag check,
//! a create of an id just created, an inbox's next sequence number), unless the store kept a second
//! copy of its state. The price is that memory runs ahead of the disk by at most one batch, so:
//!
//! * a writer whose plan saw a write in flight is acknowledged only after it (ticket order above);
//! * a reader notes [`GroupCommit::last_staged`] with what it read and answers only once that ticket
//!   is durable ([`GroupCommit::is_durable`] is the fast path), so no reader reports a write that a
//!   crash could take back;
//! * a failed batch cannot be taken back in memory, so the store fails (below).
//!
//! # Failures
//!
//! * Any failed write or fsync puts the group in the failed state: every waiter of that batch and
//!   later gets [`StorageError::Failed`], staging is refused, and the store must be reopened.
//!   (A store applies a write to memory before its ticket is durable, so a failed batch cannot be
//!   taken back in memory; refusing everything from there on is the only honest answer.)
//!
//! [`wait_blocking`]: GroupCommit::wait_blocking

#![allow(
    clippy::disallowed_methods,
    reason = "the flusher runs on the blocking pool or in a blocking caller"
)]

use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError, Weak};

use tokio::sync::watch;
use tracing::warn;

use crate::storage::dir_lock::DirLock;
use crate::storage::durability::Durability;
use crate::storage::error::{StorageError, StorageResult};

/// The append-only file a [`GroupCommit`] writes, with its length (what is written so far).
#[derive(Debug)]
pub struct WalFile {
    /// The open file, positioned for appending.
    pub file: File,
    /// Its path, for errors.
    pub path: PathBuf,
    /// Bytes in the file.
    pub len: u64,
}

/// What the flusher has published: everything up to `durable` is durable; `failed` once a batch
/// failed.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct Progress {
    durable: u64,
    failed: bool,
}

#[derive(Debug, Default)]
struct Staged {
    buf: Vec<u8>,
    last: u64,
    flushing: bool,
    progress: Progress,
}

/// Concurrent appenders to one file sharing its writes and fsyncs; see the [module docs](self).
#[derive(Debug)]
pub struct GroupCommit {
    durability: Durability,
    staged: Mutex<Staged>,
    /// Signals blocking waiters (paired with `staged`).
    wake: Condvar,
    /// Signals async waiters.
    progress: watch::Sender<Progress>,
    /// Held by the flusher for a batch and by [`GroupCommit::rotate`].
    file: Mutex<WalFile>,
    /// The last ticket issued, readable without the staging lock.
    last_staged: AtomicU64,
    /// The last durable ticket, readable without the staging lock.
    last_durable: AtomicU64,
    /// The file's length after the last batch, readable without the file lock.
    file_len: AtomicU64,
    /// How many batches were written (each one fsync under [`Durability::Fsync`]).
    batches: AtomicU64,
    /// The current file's path, for errors; its own lock, taken with no other held, so that an
    /// error can be built under the staging lock.
    path: Mutex<PathBuf>,
    /// The store directory's lock ([`GroupCommit::locked`]), held by the store. A flusher takes
    /// a strong reference when it starts and lets go of it before it wakes the writers of its
    /// last batch: a store dropped while a batch is being written keeps its directory locked
    /// until the batch ends (a store opened next never recovers a file mid-write), and one
    /// dropped after its writes returned lets go of it at once.
    dir_lock: Option<Weak<DirLock>>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl GroupCommit {
    /// Group commit over `file`. [`Durability::Fsync`] fsyncs every batch; any other durability
    /// only writes it (to the page cache).
    pub fn new(file: WalFile, durability: Durability) -> Arc<Self> {
        Self::build(file, durability, None)
    }

    /// [`new`](Self::new) for a store whose directory is locked by `dir_lock`, which the store
    /// keeps for its life: the lock stays held until the group's last batch has ended, even if
    /// the store is dropped first (the group itself keeps only a weak reference).
    pub fn locked(file: WalFile, durability: Durability, dir_lock: Arc<DirLock>) -> Arc<Self> {
        Self::build(file, durability, Some(dir_lock))
    }

    fn build(file: WalFile, durability: Durability, dir_lock: Option<Arc<DirLock>>) -> Arc<Self> {
        let len = file.len;
        let path = file.path.clone();
        Arc::new(GroupCommit {
            path: Mutex::new(path),
            durability,
            staged: Mutex::new(Staged::default()),
            wake: Condvar::new(),
            progress: watch::Sender::new(Progress::default()),
            file: Mutex::new(file),
            last_staged: AtomicU64::new(0),
            last_durable: AtomicU64::new(0),
            file_len: AtomicU64::new(len),
            batches: AtomicU64::new(0),
            dir_lock: dir_lock.as_ref().map(Arc::downgrade),
        })
    }

    /// Stages what `encode` appends to the buffer and returns its ticket. If `encode` fails, the
    /// buffer is left as it was and the error returned. Refused with [`StorageError::Failed`]
    /// after a failed batch.
    ///
    /// A store calls this under the lock that orders its writes, and applies the write to memory
    /// in the same critical section, so ticket order is the order of its state changes.
    pub fn stage<E: From<StorageError>>(
        self: &Arc<Self>,
        encode: impl FnOnce(&mut Vec<u8>) -> Result<(), E>,
    ) -> Result<u64, E> {
        let mut staged = lock(&self.staged);
        if staged.progress.failed {
            return Err(self.failed().into());
        }
        let before = staged.buf.len();
        if let Err(e) = encode(&mut staged.buf) {
            staged.buf.truncate(before);
            return Err(e);
        }
        staged.last += 1;
        let ticket = staged.last;
        self.last_staged.store(ticket, Ordering::Release);
        if !staged.flushing && tokio::runtime::Handle::try_current().is_ok() {
            staged.flushing = true;
            let this = Arc::clone(self);
            // Taken here, where the store is alive, so that it outlives the store if need be.
            let held = self.hold_dir_lock();
            tokio::task::spawn_blocking(move || this.flush_loop(held));
        }
        Ok(ticket)
    }

    /// The last ticket issued. A reader that read a store's state under the lock that orders its
    /// writes waits for this ticket before returning what it read.
    pub fn last_staged(&self) -> u64 {
        self.last_staged.load(Ordering::Acquire)
    }

    /// Whether `ticket` is durable already (a reader's fast path).
    pub fn is_durable(&self, ticket: u64) -> bool {
        self.last_durable.load(Ordering::Acquire) >= ticket
    }

    /// Waits until `ticket` is durable (fsynced under [`Durability::Fsync`], written otherwise).
    pub async fn wait(&self, ticket: u64) -> StorageResult<()> {
        if self.is_durable(ticket) {
            return Ok(());
        }
        let mut rx = self.progress.subscribe();
        let progress = *rx
            .wait_for(|p| p.durable >= ticket || p.failed)
            .await
            .map_err(|_| self.failed())?;
        self.outcome(progress, ticket)
    }

    /// [`wait`](Self::wait) for a synchronous caller: flushes on the calling thread when no
    /// flusher is running.
    pub fn wait_blocking(self: &Arc<Self>, ticket: u64) -> StorageResult<()> {
        let mut staged = lock(&self.staged);
        loop {
            if staged.progress.durable >= ticket || staged.progress.failed {
                return self.outcome(staged.progress, ticket);
            }
            if !staged.flushing {
                staged.flushing = true;
                drop(staged);
                self.flush_loop(self.hold_dir_lock());
                staged = lock(&self.staged);
                continue;
            }
            staged = self
                .wake
                .wait(staged)
                .unwrap_or_else(PoisonError::into_inner);
        }
    }

    fn outcome(&self, progress: Progress, ticket: u64) -> StorageResult<()> {
        if progress.durable >= ticket {
            Ok(())
        } else {
            Err(self.failed())
        }
    }

    fn failed(&self) -> StorageError {
        StorageError::Failed {
            path: lock(&self.path).clone(),
        }
    }

    /// Writes batches until nothing is staged. Runs with `flushing` set; clears it on return.
    fn flush_loop(&self, mut held: Option<Arc<DirLock>>) {
        loop {
            let mut file = lock(&self.file);
            let (batch, upto) = {
                let mut staged = lock(&self.staged);
                if staged.buf.is_empty() || staged.progress.failed {
                    staged.flushing = false;
                    drop(held.take());
                    self.wake.notify_all();
                    return;
                }
                (std::mem::take(&mut staged.buf), staged.last)
            };
            let result = self.write_batch(&mut file, &batch);
            drop(file);
            let mut staged = lock(&self.staged);
            match result {
                Ok(()) => {
                    // A rotation between this batch and here may have published more already.
                    staged.progress.durable = staged.progress.durable.max(upto);
                    self.last_durable
                        .store(staged.progress.durable, Ordering::Release);
                    // Hand the (now empty) allocation back for the next batch.
                    if staged.buf.is_empty() {
                        let mut batch = batch;
                        batch.clear();
                        staged.buf = batch;
                    }
                }
                Err(e) => {
                    warn!(error = %e, "group commit failed; the store refuses writes until reopened");
                    staged.progress.failed = true;
                }
            }
            // The last batch: stop here, and let go of the lock before anyone is woken, so a
            // writer that returns and drops its store can reopen the directory at once.
            let last = staged.buf.is_empty() || staged.progress.failed;
            if last {
                staged.flushing = false;
                drop(held.take());
            }
            self.progress.send_replace(staged.progress);
            self.wake.notify_all();
            if last {
                return;
            }
        }
    }

    /// A strong reference to the store's directory lock, if the group has one and the store is
    /// still there.
    fn hold_dir_lock(&self) -> Option<Arc<DirLock>> {
        self.dir_lock.as_ref().and_then(Weak::upgrade)
    }

    fn write_batch(&self, file: &mut WalFile, batch: &[u8]) -> StorageResult<()> {
        file.file
            .write_all(batch)
            .map_err(|e| StorageError::io("write", &file.path, e))?;
        if self.durability.syncs_each_write() {
            file.file
                .sync_data()
                .map_err(|e| StorageError::io("fsync", &file.path, e))?;
        }
        file.len += batch.len() as u64;
        self.file_len.store(file.len, Ordering::Release);
        self.batches.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }

    /// The file's length after the last batch (a store's compaction trigger).
    pub fn file_len(&self) -> u64 {
        self.file_len.load(Ordering::Acquire)
    }

    /// How many batches were written since the group was created: under [`Durability::Fsync`],
    /// writes divided by this is how many writes each fsync served.
    pub fn batches(&self) -> u64 {
        self.batches.load(Ordering::Relaxed)
    }

    /// Fsyncs the file (for stores opened with [`Durability::OsBuffered`]). Blocking.
    pub fn sync_blocking(&self) -> StorageResult<()> {
        let file = lock(&self.file);
        file.file
            .sync_data()
            .map_err(|e| StorageError::io("fsync", &file.path, e))
    }

    /// A store's compaction. The caller holds the lock that orders its writes (so nothing is
    /// staged meanwhile) and has captured its state; `rotate` waits for a running batch, takes
    /// what is staged — every ticket so far, all reflected in the captured state — and calls
    /// `write` with the file. `write` persists the captured state and replaces the file (its
    /// result returned as the new [`WalFile`]); the taken tickets are then durable.
    ///
    /// When `write` fails it says whether the old file is still the store's (`true`: the
    /// replacement was not renamed into place). Then the taken bytes are appended to the old file
    /// as a normal batch instead and the error returned; otherwise, or if that fallback fails,
    /// the group fails.
    pub fn rotate<E: From<StorageError>>(
        &self,
        write: impl FnOnce(&Path) -> Result<WalFile, (E, bool)>,
    ) -> Result<(), E> {
        let mut file = lock(&self.file);
        let (taken, upto) = {
            let mut staged = lock(&self.staged);
            if staged.progress.failed {
                return Err(StorageError::Failed {
                    path: file.path.clone(),
                }
                .into());
            }
            (std::mem::take(&mut staged.buf), staged.last)
        };
        let rotated = write(&file.path);
        let result = match rotated {
            Ok(new) => {
                lock(&self.path).clone_from(&new.path);
                *file = new;
                self.file_len.store(file.len, Ordering::Release);
                Ok(())
            }
            Err((e, old_intact)) => match old_intact.then(|| self.write_batch(&mut file, &taken)) {
                Some(Ok(())) => Err(e),
                fallback => {
                    if let Some(Err(fallback)) = fallback {
                        warn!(error = %fallback, "writing staged bytes after a failed compaction failed");
                    }
                    let mut staged = lock(&self.staged);
                    staged.progress.failed = true;
                    self.progress.send_replace(staged.progress);
                    self.wake.notify_all();
                    return Err(e);
                }
            },
        };
        drop(file);
        let mut staged = lock(&self.staged);
        staged.progress.durable = staged.progress.durable.max(upto);
        self.last_durable
            .store(staged.progress.durable, Ordering::Release);
        self.progress.send_replace(staged.progress);
        self.wake.notify_all();
        result
    }

    /// Puts the group in the failed state (a store whose compaction left its files in an unknown
    /// state).
    pub fn fail(&self) {
        let mut staged = lock(&self.staged);
        staged.progress.failed = true;
        self.progress.send_replace(staged.progress);
        self.wake.notify_all();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn group(dir: &Path, durability: Durability) -> Arc<GroupCommit> {
        let path = dir.join("wal");
        let file = crate::storage::fs::open_append(&path, true).expect("open");
        GroupCommit::new(WalFile { file, path, len: 0 }, durability)
    }

    #[test]
    fn a_dropped_store_keeps_its_directory_locked_until_the_last_batch_is_written() {
        use crate::testkit::blocking_pool::{BlockingThreadHeld, runtime_with_one_blocking_thread};

        let dir = tempfile::tempdir().expect("dir");
        runtime_with_one_blocking_thread().block_on(async {
            let lock = Arc::new(DirLock::acquire(dir.path()).expect("lock"));
            let path = dir.path().join("wal");
            let file = crate::storage::fs::open_append(&path, true).expect("open");
            let g = GroupCommit::locked(
                WalFile { file, path, len: 0 },
                Durability::Fsync,
                lock.clone(),
            );
            // The pool's one thread kept busy, so the flusher waits in its queue.
            let held = BlockingThreadHeld::hold();
            g.stage(|buf| {
                buf.extend_from_slice(b"last words");
                Ok::<_, StorageError>(())
            })
            .expect("stage");
            // The store goes away (its lock and its group) with the batch still queued.
            drop((g, lock));
            assert!(
                matches!(
                    DirLock::acquire(dir.path()),
                    Err(StorageError::Locked { .. })
                ),
                "the directory stays locked while the batch is pending"
            );
            held.release().await;
            let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
            while DirLock::acquire(dir.path()).is_err() {
                assert!(std::time::Instant::now() < deadline, "the lock is released");
                tokio::time::sleep(std::time::Duration::from_millis(5)).await;
            }
            let data = std::fs::read(dir.path().join("wal")).expect("read");
            assert_eq!(data, b"last words");
        });
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn concurrent_writers_share_batches_and_all_bytes_land_in_ticket_order() {
        let dir = tempfile::tempdir().expect("dir");
        let g = group(dir.path(), Durability::Fsync);
        let tasks: Vec<_> = (0..64u8)
            .map(|w| {
                let g = Arc::clone(&g);
                tokio::spawn(async move {
                    for i in 0..20u8 {
                        let ticket = g
                            .stage(|buf| {
                                buf.extend_from_slice(&[w, i]);
                                Ok::<_, StorageError>(())
                            })
                            .expect("stage");
                        g.wait(ticket).await.expect("durable");
                        assert!(g.is_durable(ticket));
                    }
                })
            })
            .collect();
        for t in tasks {
            t.await.expect("task");
        }
        let data = std::fs::read(dir.path().join("wal")).expect("read");
        assert_eq!(data.len(), 64 * 20 * 2);
        // Each writer's records appear in its own order.
        let mut next = [0u8; 64];
        for pair in data.chunks(2) {
            assert_eq!(pair[1], next[pair[0] as usize]);
            next[pair[0] as usize] += 1;
        }
        assert!(g.batches() <= 64 * 20);
    }

    #[test]
    fn a_blocking_caller_without_a_runtime_flushes_itself() {
        let dir = tempfile::tempdir().expect("dir");
        let g = group(dir.path(), Durability::OsBuffered);
        let ticket = g
            .stage(|buf| {
                buf.extend_from_slice(b"abc");
                Ok::<_, StorageError>(())
            })
            .expect("stage");
        assert!(!g.is_durable(ticket));
        g.wait_blocking(ticket).expect("durable");
        assert_eq!(std::fs::read(dir.path().join("wal")).expect("read"), b"abc");
        assert_eq!(g.file_len(), 3);
    }

    #[test]
    fn a_failed_encoding_leaves_the_buffer_alone_and_a_failed_group_refuses() {
        let dir = tempfile::tempdir().expect("dir");
        let g = group(dir.path(), Durability::OsBuffered);
        let refused = g.stage(|buf| {
            buf.extend_from_slice(b"partial");
            Err(StorageError::Config { reason: "x".into() })
        });
        assert!(refused.is_err());
        let ticket = g
            .stage(|buf| {
                buf.extend_from_slice(b"ok");
                Ok::<_, StorageError>(())
            })
            .expect("stage");
        assert_eq!(ticket, 1);
        g.wait_blocking(ticket).expect("durable");
        assert_eq!(std::fs::read(dir.path().join("wal")).expect("read"), b"ok");
        g.fail();
        let after = g.stage(|_| Ok::<_, StorageError>(()));
        assert!(matches!(after, Err(StorageError::Failed { .. })));
    }
}
