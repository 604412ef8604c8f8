//! One partition of a `FileLog`: its segments, the writer, group commit, reads and recovery.

use std::fs;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use tokio::sync::watch;
use tracing::{debug, warn};

use crate::error::{Error, Result};
use crate::file_log::config::FileLogConfig;
use crate::file_log::frame::{self, BatchHeader};
use crate::file_log::segment::{
    self, FrameCursor, IndexEntry, Segment, SegmentFile, encode_index_entry, load_index,
};
use crate::limits::ReadLimits;
use crate::log::{Appended, RetentionPolicy, RetentionReport};
use crate::offset::{Offset, PartitionId};
use crate::record::{Record, StoredRecord};
use crate::storage::fs::{create_dir_durably, open_private, sync_dir, truncate_durably};
use crate::storage::{DirLock, Durability, Recovery, run_blocking};
use crate::sync_util::lock;
use crate::timestamp::Timestamp;

/// The largest encode buffer a partition keeps between appends.
const MAX_KEPT_ENCODE_BUFFER: usize = 4 * 1024 * 1024;

/// One partition.
///
/// Under [`Durability::Fsync`] an append does not write its frame itself: it stages the encoded
/// frame in `staged` (offsets, size and index assigned at once, under the state lock) and waits
/// for the group commit, whose leader writes everything staged with one `pwrite` just before its
/// fsync. An append answers only after that fsync anyway, and a hub appends one record per
/// telemetry message: one write per fsync instead of one per message saves a system call per
/// record, about a tenth of a field gateway's CPU (docs/performance.md, 2026-12-07). The other
/// durabilities write at once, as readers may see a batch as soon as it is written.
///
/// Invariants:
/// * `segments` is never empty; the last one is the active (written) segment; each segment's
///   `next` is the following segment's base.
/// * `written` is the active segment's `next`; every byte up to each segment's `size` is a whole,
///   checked batch on disk (or in the OS cache).
/// * `durable <= written`: everything below `durable` has been fsync'ed.
/// * `visible` is what readers may see: `written` under OS-buffered and interval durability,
///   `durable` under fsync-before-ack, so a reader never sees a record a crash could take back.
/// * The active segment's bytes `0..file_len` are in its file; `file_len..size` are staged (in
///   `staged`, from `staged_at`) or being written by the sync leader. Every offset below
///   `visible` lies below `file_len`, so readers, who read up to `file_len`, never ask the file
///   for bytes not yet in it.
#[derive(Debug)]
pub(crate) struct FilePartition {
    id: PartitionId,
    dir: PathBuf,
    config: Arc<FileLogConfig>,
    state: Mutex<PartitionState>,
    visible: watch::Sender<u64>,
    durable: watch::Sender<u64>,
    /// Held by the one task running an fsync; others queue for it (group commit, see
    /// `sync_up_to`).
    sync_leader: tokio::sync::Mutex<()>,
    /// Fsyncs issued for appends (group commit makes this far smaller than the append count).
    fsyncs: AtomicU64,
    /// Held (on the blocking pool) by the one task sealing the active segment, so that appenders
    /// that find it full at the same time roll it once.
    roll_lock: Mutex<()>,
    /// Held on the blocking pool around each write of staged frames and its fsync. The sync
    /// leader slot alone does not order them: a leader whose append is cancelled gives up the
    /// slot while its blocking write still runs, and the next leader's fsync must not be taken
    /// as covering bytes that are not written yet. It holds the failure of such a write or
    /// fsync: no leader is left to fail the partition for it, and the next one must not cover
    /// the hole it may have left with a good fsync of its own.
    flush_order: Arc<Mutex<Option<String>>>,
    /// The log directory's lock, carried into every blocking task that writes or removes files
    /// here: a task left running by a caller that went away (an aborted append) keeps the
    /// directory locked until it ends, so a log opened next on it never recovers files that
    /// are still being written.
    dir_lock: Arc<DirLock>,
}

#[derive(Debug)]
struct PartitionState {
    segments: Vec<Segment>,
    written: u64,
    last_time: Timestamp,
    total_bytes: u64,
    /// The active segment's index file (shared with a roll that fsyncs it off the lock).
    index_file: Option<Arc<fs::File>>,
    encode_buf: Vec<u8>,
    /// Frames of the active segment encoded but not yet written (fsync-before-ack only): the
    /// next sync leader writes them, from file position `staged_at`, before its fsync.
    staged: Vec<u8>,
    staged_at: u64,
    /// Bytes of the active segment that are in its file (see the invariants above).
    file_len: u64,
    /// Set when a write failure could not be undone; the partition then refuses appends.
    failed: Option<String>,
}

impl PartitionState {
    fn active(&self) -> &Segment {
        // Invariant: never empty.
        &self.segments[self.segments.len() - 1]
    }
}

/// What a reader needs from one segment, taken under the lock and used outside it.
struct ReadPlan {
    file: Arc<SegmentFile>,
    start: u64,
    end: u64,
    next: u64,
}

impl FilePartition {
    /// Opens the partition directory, recovering its segments.
    pub(crate) fn open(
        dir: PathBuf,
        id: PartitionId,
        config: Arc<FileLogConfig>,
        dir_lock: Arc<DirLock>,
    ) -> Result<Self> {
        create_dir_durably(&dir)?;
        let mut bases = Vec::new();
        for entry in fs::read_dir(&dir).map_err(|e| Error::io("list", &dir, e))? {
            let entry = entry.map_err(|e| Error::io("list", &dir, e))?;
            let name = entry.file_name();
            match name.to_str().and_then(segment::parse_log_file_name) {
                Some(base) => bases.push(base),
                None => {
                    if !name.to_string_lossy().ends_with(".idx") {
                        warn!(path = %entry.path().display(), "ignoring a stray file in a partition directory");
                    }
                }
            }
        }
        bases.sort_unstable();
        if bases.is_empty() {
            let file = SegmentFile::open(&dir, 0, true)?;
            sync_dir(&dir)?;
            bases.push(file.base);
        }
        let mut segments: Vec<Segment> = Vec::with_capacity(bases.len());
        let last = bases.len() - 1;
        for (i, base) in bases.into_iter().enumerate() {
            let file = Arc::new(SegmentFile::open(&dir, base, false)?);
            if let Some(prev) = segments.last()
                && prev.next != base
            {
                return Err(file.corrupt(
                    0,
                    format!(
                        "segment starts at offset {base} but the previous one ends at {}",
                        prev.next
                    ),
                ));
            }
            let seg = if i == last {
                recover_active(file, &config)?
            } else {
                load_sealed(file, &config)?
            };
            segments.push(seg);
        }
        let total_bytes = segments.iter().map(|s| s.size).sum();
        let active = &segments[segments.len() - 1];
        let written = active.next;
        let last_time = segments
            .iter()
            .map(|s| s.max_time)
            .max()
            .unwrap_or_default();
        let index_file = Some(Arc::new(segment_index_file(active)?));
        let file_len = active.size;
        debug!(partition = %id, segments = segments.len(), next = written, "partition recovered");
        Ok(FilePartition {
            id,
            dir,
            config,
            state: Mutex::new(PartitionState {
                segments,
                written,
                last_time,
                total_bytes,
                index_file,
                encode_buf: Vec::new(),
                staged: Vec::new(),
                staged_at: 0,
                file_len,
                failed: None,
            }),
            visible: watch::channel(written).0,
            durable: watch::channel(written).0,
            sync_leader: tokio::sync::Mutex::new(()),
            fsyncs: AtomicU64::new(0),
            roll_lock: Mutex::new(()),
            flush_order: Arc::default(),
            dir_lock,
        })
    }

    fn unavailable(&self, reason: &str) -> Error {
        Error::Unavailable {
            partition: self.id,
            reason: reason.to_owned(),
        }
    }

    /// Writes a batch. Under fsync-before-ack it returns only once the batch is durable.
    pub(crate) async fn append(self: &Arc<Self>, records: Vec<Record>) -> Result<Appended> {
        self.config.limits.check_batch(&records)?;
        let appended = loop {
            match self.write_batch(&records)? {
                Some(appended) => break appended,
                // The active segment is full. Sealing it fsyncs files and a directory, so it runs
                // on the blocking pool, not on this task's executor thread. What is staged for it
                // is written (and fsynced) first, through the group commit, so that no leader is
                // still writing to the segment while it is sealed.
                None => {
                    if matches!(self.config.durability, Durability::Fsync) {
                        self.sync().await?;
                    }
                    let partition = Arc::clone(self);
                    run_blocking(move || partition.roll_if_full()).await?;
                }
            }
        };
        match self.config.durability {
            Durability::Fsync => self.sync_up_to(appended.next().0).await?,
            Durability::OsBuffered | Durability::Interval(_) => {}
        }
        Ok(appended)
    }

    /// Writes a batch to the page cache, or returns `None` if the active segment is full and must
    /// be rolled first (nothing is ever written to a full segment, so a roll's fsync covers it).
    fn write_batch(&self, records: &[Record]) -> Result<Option<Appended>> {
        let mut guard = lock(&self.state);
        let st = &mut *guard;
        if let Some(reason) = &st.failed {
            return Err(self.unavailable(reason));
        }
        if st.active().size >= self.config.segment_bytes {
            return Ok(None);
        }
        let enqueued_time = Timestamp::now().max(st.last_time);
        let first = st.written;
        let count = records.len() as u64;
        let header = BatchHeader {
            base_offset: first,
            count: records.len() as u32,
            enqueued_time,
        };
        let position = st.active().size;
        let frame_len = if matches!(self.config.durability, Durability::Fsync) {
            // Staged for the sync leader's write (see the type's comment).
            if st.staged.is_empty() {
                st.staged_at = position;
            }
            let before = st.staged.len();
            if let Err(e) = frame::encode(&mut st.staged, header, records) {
                st.staged.truncate(before);
                return Err(e);
            }
            (st.staged.len() - before) as u64
        } else {
            let mut buf = std::mem::take(&mut st.encode_buf);
            buf.clear();
            if let Err(e) = frame::encode(&mut buf, header, records) {
                st.encode_buf = buf;
                return Err(e);
            }
            let active = st.active();
            if let Err(e) = active.file.file.write_all_at(&buf, position) {
                // Undo a partial write so that no torn batch sits before later ones.
                let error = Error::io("write", &active.file.log_path, e);
                if let Err(undo) = active.file.file.set_len(position) {
                    st.failed = Some(format!("could not undo a failed write: {undo}"));
                }
                st.encode_buf = buf;
                return Err(error);
            }
            let frame_len = buf.len() as u64;
            // Keep the buffer for the next batch unless an unusually large batch inflated it.
            if buf.capacity() <= MAX_KEPT_ENCODE_BUFFER {
                st.encode_buf = buf;
            }
            st.file_len = position + frame_len;
            frame_len
        };
        let interval = self.config.index_interval_bytes;
        let last = st.segments.len() - 1;
        let active = &mut st.segments[last];
        let needs_entry = active
            .index
            .last()
            .is_none_or(|e| position >= e.position + interval);
        active.size += frame_len;
        active.next = first + count;
        active.max_time = enqueued_time;
        if needs_entry {
            let entry = IndexEntry {
                offset: first,
                position,
            };
            active.index.push(entry);
            if let Some(f) = &st.index_file {
                let at = (active.index.len() as u64 - 1) * 16;
                // The index is a hint rebuilt by recovery, so a failed write only costs speed.
                if let Err(e) = f.write_all_at(&encode_index_entry(entry), at) {
                    warn!(error = %e, "index write failed; recovery will rebuild the index");
                }
            }
        }
        st.written = first + count;
        st.last_time = enqueued_time;
        st.total_bytes += frame_len;
        if !matches!(self.config.durability, Durability::Fsync) {
            self.visible.send_replace(st.written);
        }
        Ok(Some(Appended {
            partition: self.id,
            first: Offset(first),
            count,
            enqueued_time,
        }))
    }

    /// Seals the active segment if it is (still) full and starts a new one. Blocking: runs on the
    /// blocking pool.
    ///
    /// The sealed segment and its index are fsynced whatever the durability, so that only the
    /// active segment can ever have a torn tail. The state lock is not held across the fsyncs:
    /// appenders meanwhile find the segment full and wait for this roll, and readers go on.
    #[allow(
        clippy::disallowed_methods,
        reason = "called only through run_blocking"
    )]
    fn roll_if_full(&self) -> Result<()> {
        let _rolling = lock(&self.roll_lock);
        let (sealed, index_file, base, last_time, staged) = {
            let mut st = lock(&self.state);
            if let Some(reason) = &st.failed {
                return Err(self.unavailable(reason));
            }
            if st.active().size < self.config.segment_bytes {
                return Ok(()); // another appender rolled it
            }
            // Normally empty: `append` has the group commit write what is staged before it
            // rolls. Anything still here belongs in the segment being sealed.
            let staged = (st.staged_at, std::mem::take(&mut st.staged));
            (
                st.active().file.clone(),
                st.index_file.clone(),
                st.written,
                st.last_time,
                staged,
            )
        };
        let (staged_at, staged) = staged;
        let mut order = lock(&self.flush_order);
        if let Some(reason) = order.clone() {
            lock(&self.state).failed = Some(reason.clone());
            return Err(self.unavailable(&reason));
        }
        if let Err((what, e)) = write_staged_and_sync(&mut order, &sealed, &staged, staged_at) {
            // As after any failed fsync, what was written since the last good one is unknown.
            let error = Error::io(what, &sealed.log_path, e);
            lock(&self.state).failed = Some(error.to_string());
            return Err(error);
        }
        if let Some(f) = &index_file {
            f.sync_data()
                .map_err(|e| Error::io("fsync", &sealed.idx_path, e))?;
        }
        let file = Arc::new(SegmentFile::open(&self.dir, base, true)?);
        sync_dir(&self.dir)?;
        let seg = Segment {
            file,
            size: 0,
            next: base,
            max_time: last_time,
            index: Vec::new(),
        };
        let index_file = Arc::new(segment_index_file(&seg)?);
        let mut st = lock(&self.state);
        // Nothing was written meanwhile: every appender found the segment full.
        debug_assert_eq!(st.written, base);
        st.index_file = Some(index_file);
        st.segments.push(seg);
        st.file_len = 0;
        debug!(partition = %self.id, base, "rolled to a new segment");
        Ok(())
    }

    /// Returns once everything below `target` is fsync'ed.
    ///
    /// Group commit: callers queue (first come, first served) for the one leader slot; the holder
    /// fsyncs everything written when it starts and publishes the durable offset. Callers queued
    /// behind it then mostly find their batch covered and leave without a syscall, and by the time
    /// one that is not covered reaches the slot, the appends made meanwhile have piled up for it to
    /// cover in one fsync. (Waking all waiters at once and racing for the slot was tried: the next
    /// leader then starts too early and each fsync covers half as many appends.)
    pub(crate) async fn sync_up_to(&self, target: u64) -> Result<()> {
        loop {
            if *self.durable.borrow() >= target {
                return Ok(());
            }
            let _leader = self.sync_leader.lock().await;
            if *self.durable.borrow() >= target {
                return Ok(());
            }
            let upto = self.sync_written().await?;
            self.durable.send_modify(|d| *d = (*d).max(upto));
            if matches!(self.config.durability, Durability::Fsync) {
                self.visible.send_modify(|v| *v = (*v).max(upto));
            }
        }
    }

    /// Fsyncs the active segment and returns the offset everything below which is now durable.
    #[allow(
        clippy::disallowed_methods,
        reason = "the fsync runs inside run_blocking"
    )]
    async fn sync_written(&self) -> Result<u64> {
        // The bytes staged so far and `written` are taken together: the write below covers
        // every offset below `upto`.
        // `upto_len` is where the frames below `upto` end in the file: once this leader's write
        // and fsync are done (and, through `flush_order`, every earlier one), all of it is in
        // the file.
        let (file, upto, upto_len, staged_at, staged) = {
            let mut st = lock(&self.state);
            if let Some(reason) = &st.failed {
                return Err(self.unavailable(reason));
            }
            let staged = std::mem::take(&mut st.staged);
            let active = st.active();
            (
                active.file.clone(),
                st.written,
                active.size,
                st.staged_at,
                staged,
            )
        };
        if staged.is_empty() && *self.durable.borrow() >= upto {
            return Ok(upto);
        }
        let path = file.log_path.clone();
        self.fsyncs.fetch_add(1, Ordering::Relaxed);
        let written_file = file.clone();
        let flush_order = self.flush_order.clone();
        let dir_lock = self.dir_lock.clone();
        // The outer result is the blocking task's own failure, the inner one the write's or
        // the fsync's.
        let outcome = run_blocking(move || {
            let _dir_lock = dir_lock;
            let mut order = lock(&flush_order);
            if let Some(reason) = order.as_ref() {
                // An earlier write or fsync failed after its leader was gone.
                return Ok(Err((
                    "write or fsync",
                    std::io::Error::other(reason.clone()),
                )));
            }
            let synced = write_staged_and_sync(&mut order, &file, &staged, staged_at);
            Ok::<_, Error>(synced.map(|()| staged))
        })
        .await?;
        match outcome {
            Ok(mut buf) => {
                let mut st = lock(&self.state);
                // A roll waits for this leader (`append` syncs first), so the active segment
                // is still the one written; the check only keeps `file_len` right if not.
                if Arc::ptr_eq(&st.active().file, &written_file) {
                    st.file_len = st.file_len.max(upto_len);
                }
                // Keep the buffer for the next batch unless an unusually large one inflated it.
                if st.staged.is_empty() && buf.capacity() <= MAX_KEPT_ENCODE_BUFFER {
                    buf.clear();
                    st.staged = buf;
                }
                Ok(upto)
            }
            Err((what, e)) => {
                // Staged frames already have their offsets, and after a failed fsync the kernel
                // may have dropped the dirty pages: nothing written since the last good fsync can
                // be trusted or taken back, so stop accepting writes (as the storage kit's group
                // commit does).
                let error = Error::io(what, &path, e);
                lock(&self.state).failed = Some(error.to_string());
                Err(error)
            }
        }
    }

    /// Fsyncs everything written so far.
    pub(crate) async fn sync(&self) -> Result<()> {
        let written = lock(&self.state).written;
        self.sync_up_to(written).await
    }

    pub(crate) fn fsyncs(&self) -> u64 {
        self.fsyncs.load(Ordering::Relaxed)
    }

    pub(crate) fn next_visible(&self) -> u64 {
        *self.visible.borrow()
    }

    pub(crate) fn earliest(&self) -> u64 {
        lock(&self.state).segments[0].file.base
    }

    pub(crate) async fn wait_for(&self, offset: Offset) -> Result<Offset> {
        let mut rx = self.visible.subscribe();
        let next = rx
            .wait_for(|v| *v > offset.0)
            .await
            .map_err(|_| Error::Closed)?;
        Ok(Offset(*next))
    }

    fn plan_read(&self, from: u64) -> Result<Option<ReadPlan>> {
        let st = lock(&self.state);
        let visible = *self.visible.borrow();
        let earliest = st.segments[0].file.base;
        if from < earliest {
            return Err(Error::OffsetTruncated {
                partition: self.id,
                offset: Offset(from),
                earliest: Offset(earliest),
            });
        }
        if from > visible {
            return Err(Error::OffsetBeyondEnd {
                partition: self.id,
                offset: Offset(from),
                next: Offset(visible),
            });
        }
        if from == visible {
            return Ok(None);
        }
        let i = st.segments.partition_point(|s| s.file.base <= from) - 1;
        let seg = &st.segments[i];
        // The active segment's staged bytes are not in its file yet (none of them is visible).
        let end = if i + 1 == st.segments.len() {
            st.file_len
        } else {
            seg.size
        };
        Ok(Some(ReadPlan {
            file: seg.file.clone(),
            start: seg.position_for(from),
            end,
            next: seg.next.min(visible),
        }))
    }

    pub(crate) fn read(&self, from: Offset, limits: ReadLimits) -> Result<Vec<StoredRecord>> {
        limits.validate()?;
        let mut out: Vec<StoredRecord> = Vec::new();
        let mut bytes = 0usize;
        let mut at = from.0;
        'segments: while let Some(plan) = self.plan_read(at)? {
            // Everything below the segment's size passed recovery's checks: any bad frame a read
            // meets now is damage done since, an error (Strict), never a tail to skip.
            let mut cursor = FrameCursor::new(&plan.file, plan.start, plan.end);
            while at < plan.next {
                let Some(frame) = cursor.next_frame()? else {
                    return Err(match cursor.tail() {
                        Some(tail) => plan.file.corrupt(tail.position, "damaged batch"),
                        None => plan
                            .file
                            .corrupt(plan.end, format!("segment ends before offset {at}")),
                    });
                };
                let header = frame
                    .header()
                    .map_err(|reason| plan.file.corrupt(frame.position, reason))?;
                if header.next_offset() <= at {
                    continue;
                }
                let records = frame::decode_records(self.id, header, &frame.body)
                    .map_err(|reason| plan.file.corrupt(frame.position, reason))?;
                for stored in records {
                    if stored.offset.0 < at {
                        continue;
                    }
                    if stored.offset.0 >= plan.next {
                        break;
                    }
                    let size = stored.record.size_bytes();
                    if out.len() >= limits.max_records
                        || (!out.is_empty() && bytes + size > limits.max_bytes)
                    {
                        break 'segments;
                    }
                    bytes += size;
                    at = stored.offset.0 + 1;
                    out.push(stored);
                }
            }
            if out.len() >= limits.max_records {
                break;
            }
        }
        Ok(out)
    }

    /// Removes whole sealed segments from the front that the policy no longer keeps. The file
    /// removals and the directory fsync run on the blocking pool.
    #[allow(
        clippy::disallowed_methods,
        reason = "the removals run inside run_blocking"
    )]
    pub(crate) async fn enforce_retention(
        &self,
        policy: &RetentionPolicy,
        now: Timestamp,
        report: &mut RetentionReport,
    ) -> Result<()> {
        let cutoff = policy.max_age.map(|age| now.saturating_sub(age));
        let removed: Vec<Segment> = {
            let mut st = lock(&self.state);
            let mut n = 0;
            let mut remaining = st.total_bytes;
            while n + 1 < st.segments.len() {
                let seg = &st.segments[n];
                let too_old = cutoff.is_some_and(|c| seg.max_time < c);
                let too_big = policy.max_bytes.is_some_and(|max| remaining > max);
                if !(too_old || too_big) {
                    break;
                }
                remaining -= seg.size;
                n += 1;
            }
            st.total_bytes = remaining;
            st.segments.drain(..n).collect()
        };
        if removed.is_empty() {
            return Ok(());
        }
        for seg in &removed {
            report.records_removed += seg.next - seg.file.base;
            report.bytes_removed += seg.size;
        }
        let (dir, id, dir_lock) = (self.dir.clone(), self.id, self.dir_lock.clone());
        run_blocking(move || {
            let _dir_lock = dir_lock;
            for seg in &removed {
                for path in [&seg.file.log_path, &seg.file.idx_path] {
                    match fs::remove_file(path) {
                        Ok(()) => {}
                        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                        Err(e) => return Err(Error::io("remove", path, e)),
                    }
                }
                debug!(partition = %id, base = seg.file.base, "retention removed a segment");
            }
            sync_dir(&dir).map_err(Error::from)
        })
        .await
    }
}

/// Writes `staged` (frames whose offsets are already given out) at `staged_at` in `segment`, then
/// fsyncs it; the caller holds `order`, the partition's `flush_order`. A failure is recorded in
/// `order` before it is returned: the append that led this write may have been cancelled while
/// it ran on the blocking pool, and then no one else would learn of it, and the next leader's
/// good fsync would make offsets durable whose bytes never reached the file. The next writer
/// (or roll) finds the record and fails the partition.
#[allow(
    clippy::disallowed_methods,
    reason = "called only on the blocking pool, by sync_written's run_blocking and roll_if_full"
)]
fn write_staged_and_sync(
    order: &mut Option<String>,
    segment: &SegmentFile,
    staged: &[u8],
    staged_at: u64,
) -> std::result::Result<(), (&'static str, std::io::Error)> {
    let written = if staged.is_empty() {
        Ok(())
    } else {
        segment
            .file
            .write_all_at(staged, staged_at)
            .map_err(|e| ("write", e))
    };
    let synced = written.and_then(|()| segment.file.sync_data().map_err(|e| ("fsync", e)));
    if let Err((what, e)) = &synced {
        *order = Some(format!("{what} of {}: {e}", segment.log_path.display()));
    }
    synced
}

fn segment_index_file(seg: &Segment) -> Result<fs::File> {
    Ok(open_private(&seg.file.idx_path, true)?)
}

/// Loads a sealed segment: trusts a consistent index, then checks the frames after its last entry
/// (which also yields the segment's end and newest time). Sealed segments were fsync'ed when they
/// were sealed, so any damage there is corruption, reported rather than cut, whatever the
/// configured [`Recovery`].
fn load_sealed(file: Arc<SegmentFile>, config: &FileLogConfig) -> Result<Segment> {
    let len = file.len()?;
    let interval = config.index_interval_bytes;
    if let Some(index) = load_index(&file.idx_path, file.base, len) {
        let (start, expected, kept) = match index.last() {
            Some(last) => (
                last.position,
                last.offset,
                index[..index.len() - 1].to_vec(),
            ),
            None => (0, file.base, Vec::new()),
        };
        // An index pointing where no batch starts is only a wrong hint: any failure here falls
        // back to the full scan below, whose verdict is final.
        let scan = segment::scan(
            &file,
            start,
            expected,
            Timestamp::EPOCH,
            interval,
            kept,
            Recovery::Strict,
        );
        if let Ok(scan) = scan
            && scan.tail.is_none()
            && scan.valid_end == len
        {
            return Ok(Segment {
                file,
                size: len,
                next: scan.next,
                max_time: scan.max_time,
                index: scan.index,
            });
        }
    }
    warn!(path = %file.log_path.display(), "index missing or inconsistent; rebuilding it");
    let scan = segment::scan(
        &file,
        0,
        file.base,
        Timestamp::EPOCH,
        interval,
        Vec::new(),
        Recovery::Strict,
    )
    .map_err(|e| match e {
        Error::Corrupt {
            path,
            position,
            reason,
        } => Error::Corrupt {
            path,
            position,
            reason: format!("sealed segment is damaged: {reason}"),
        },
        other => other,
    })?;
    if let Some(tail) = scan.tail {
        return Err(file.corrupt(
            tail.position,
            "sealed segment ends in a damaged or incomplete batch",
        ));
    }
    let seg = Segment {
        file,
        size: len,
        next: scan.next,
        max_time: scan.max_time,
        index: scan.index,
    };
    seg.rewrite_index()?;
    Ok(seg)
}

/// Recovers the active segment by the storage kit's rule: a torn tail (a damaged or incomplete
/// last batch, or zeros, with no intact batch after it) is cut off; damage followed by intact
/// batches is [`Error::Corrupt`], unless the configuration asks for [`Recovery::Repair`], which
/// cuts the segment at the damage.
#[allow(
    clippy::disallowed_methods,
    reason = "runs while the log is opened, on the blocking pool"
)]
fn recover_active(file: Arc<SegmentFile>, config: &FileLogConfig) -> Result<Segment> {
    let scan = segment::scan(
        &file,
        0,
        file.base,
        Timestamp::EPOCH,
        config.index_interval_bytes,
        Vec::new(),
        config.recovery,
    )?;
    if let Some(tail) = &scan.tail {
        if tail.repaired_corruption.is_none() {
            warn!(path = %file.log_path.display(), position = tail.position,
                dropped_bytes = tail.bytes, "cutting off a torn write at the end of the segment");
        }
        truncate_durably(&file.log_path, scan.valid_end)?;
    }
    // What a crashed process wrote may still sit only in the page cache. Make it durable before
    // anyone can read it, so that recovered records are as durable as acknowledged ones.
    file.file
        .sync_all()
        .map_err(|e| Error::io("fsync", &file.log_path, e))?;
    let seg = Segment {
        file,
        size: scan.valid_end,
        next: scan.next,
        max_time: scan.max_time,
        index: scan.index,
    };
    seg.rewrite_index()?;
    Ok(seg)
}

/// The directory of partition `id` under a log directory.
pub(crate) fn partition_dir(root: &Path, id: PartitionId) -> PathBuf {
    root.join(format!("p{:05}", id.0))
}

#[cfg(test)]
mod tests;
