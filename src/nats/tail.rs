//! `wait_for` without polling: one headers-only ordered consumer per watched partition.
//!
//! The first `wait_for` on a partition starts a task that follows the stream from its end with a
//! push consumer delivering headers only (the server pushes each new message's sequence, not its
//! payload). The task publishes the partition's next offset on a `watch` channel, which every
//! waiter of the partition shares. The task ends when the log is dropped; if the consumer fails
//! (the server went away), it starts a new one from the last sequence it saw and carries on.

use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::consumer::DeliverPolicy;
use async_nats::jetstream::consumer::push::OrderedConfig;
use futures::StreamExt;
use iot_core::{Error, Offset, Result};
use tokio::sync::watch;
use tokio::task::JoinHandle;

use super::factory::Shared;
use super::partition::Partition;

/// Pause before following the stream again after a failure, so a dead server is not hammered.
const RETRY_PAUSE: Duration = Duration::from_millis(500);

#[derive(Debug)]
pub(crate) struct Watcher {
    next: watch::Receiver<u64>,
    task: JoinHandle<()>,
}

impl Drop for Watcher {
    fn drop(&mut self) {
        self.task.abort();
    }
}

pub(crate) async fn wait_for(
    shared: &Arc<Shared>,
    part: &Arc<Partition>,
    offset: Offset,
) -> Result<Offset> {
    let mut next = subscribe(shared, part).await?;
    let seen = next
        .wait_for(|n| *n > offset.get())
        .await
        .map_err(|_| Error::Closed)?;
    Ok(Offset(*seen))
}

async fn subscribe(shared: &Arc<Shared>, part: &Arc<Partition>) -> Result<watch::Receiver<u64>> {
    if let Some(w) = lock(part).as_ref()
        && !w.task.is_finished()
    {
        return Ok(w.next.clone());
    }
    // Learn the end first, so that the watcher starts right after it and a failure to reach
    // the server is the caller's typed error, not a silent wait.
    let start = part.bounds(shared).await?.next.get();
    let mut slot = lock(part);
    if let Some(w) = slot.as_ref()
        && !w.task.is_finished()
    {
        return Ok(w.next.clone());
    }
    let (tx, rx) = watch::channel(start);
    let task = tokio::spawn(follow(shared.clone(), part.clone(), tx));
    *slot = Some(Watcher {
        next: rx.clone(),
        task,
    });
    Ok(rx)
}

fn lock(part: &Partition) -> std::sync::MutexGuard<'_, Option<Watcher>> {
    // The slot holds no invariant a panic could break.
    part.watcher
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Follows the stream from the sequence after `tx`'s value until every receiver is gone or the
/// task is aborted.
async fn follow(shared: Arc<Shared>, part: Arc<Partition>, tx: watch::Sender<u64>) {
    // The task holds the partition (for its stream), and the partition holds the task; the log
    // aborts the task on drop, which ends the cycle.
    loop {
        let start = *tx.borrow() + 1;
        let config = OrderedConfig {
            deliver_subject: shared.client.new_inbox(),
            filter_subject: part.subject.to_string(),
            deliver_policy: DeliverPolicy::ByStartSequence {
                start_sequence: start,
            },
            headers_only: true,
            ..OrderedConfig::default()
        };
        let messages = match part.stream.create_consumer(config).await {
            Ok(consumer) => consumer.messages().await,
            Err(e) => {
                tracing::debug!(stream = part.name(), error = %e, "tail consumer not created");
                tokio::time::sleep(RETRY_PAUSE).await;
                continue;
            }
        };
        let Ok(mut messages) = messages else {
            tokio::time::sleep(RETRY_PAUSE).await;
            continue;
        };
        while let Some(message) = messages.next().await {
            let Ok(message) = message else { break };
            if let Ok(info) = message.info() {
                let seq = info.stream_sequence;
                tx.send_if_modified(|n| {
                    let moved = seq > *n;
                    *n = (*n).max(seq);
                    moved
                });
            }
        }
        tokio::time::sleep(RETRY_PAUSE).await;
    }
}
