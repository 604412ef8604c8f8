//! A partition's publish acknowledgements, read from one subscription of its own.
//!
//! A JetStream publish is a core NATS message with a reply subject; the server answers on that
//! subject with the acknowledgement (`{"stream":…,"seq":…}` or an error). async-nats's
//! `Context::send_publish` makes each one a request of its own: a fresh inbox subject, a oneshot
//! channel routed by the client's connection task, a permit of the context's in-flight semaphore
//! and a timer per message. A batch needs none of that per record. Its records are published
//! with reply subjects under one inbox the partition subscribes to once
//! (`INBOX.BATCH.INDEX`), and their acknowledgements are read from that subscription, the
//! whole batch under one deadline. The server does the same work either way.
//!
//! The batch number in each reply subject tells a late acknowledgement of an earlier batch (one
//! that timed out, or whose caller stopped waiting) from this batch's: it is skipped. The index
//! places each acknowledgement without relying on the order in which they arrive.

use async_nats::jetstream::ErrorCode;
use async_nats::jetstream::context::{PublishError, PublishErrorKind};
use async_nats::{Client, StatusCode, Subject, Subscriber};
use futures::{FutureExt, StreamExt};
use serde::Deserialize;

/// Records of one partition published and not yet acknowledged, at most: the writer waits for
/// acknowledgements before it publishes more. It bounds what a large batch holds in the
/// client's and the server's buffers, as async-nats's in-flight semaphore did (5 000 for a whole
/// client) but per partition, and keeps the subscription's channel (65 536 messages) from
/// overflowing.
pub(crate) const WINDOW: usize = 4_096;

/// The subscription a partition's appends take their acknowledgements from.
#[derive(Debug)]
pub(crate) struct AckInbox {
    prefix: String,
    subscriber: Subscriber,
    /// The last batch begun; each batch's replies carry its number.
    batch: u64,
    /// The subscription ended: the client was closed for good.
    closed: bool,
}

/// What the server answered for one record: the sequence it was stored at, or why not.
pub(crate) type AckResult = Result<u64, PublishError>;

impl AckInbox {
    /// Subscribes to a new inbox of `client`'s.
    pub(crate) async fn open(client: &Client) -> Result<Self, async_nats::SubscribeError> {
        let prefix = client.new_inbox();
        let subscriber = client.subscribe(format!("{prefix}.*.*")).await?;
        Ok(AckInbox {
            prefix,
            subscriber,
            batch: 0,
            closed: false,
        })
    }

    /// Whether the subscription ended: nothing more will arrive on it.
    pub(crate) fn is_closed(&self) -> bool {
        self.closed
    }

    /// Starts collecting the acknowledgements of a batch of `records` records.
    pub(crate) fn begin(&mut self, records: usize) -> BatchAcks<'_> {
        self.batch += 1;
        let reply_prefix = format!("{}.{}.", self.prefix, self.batch);
        BatchAcks {
            reply_prefix,
            acks: (0..records).map(|_| None).collect(),
            received: 0,
            inbox: self,
        }
    }
}

/// The acknowledgements of one batch as they arrive.
pub(crate) struct BatchAcks<'a> {
    inbox: &'a mut AckInbox,
    /// `INBOX.BATCH.`, to which a record's index is appended: what this batch's replies start
    /// with, and an earlier batch's do not (the number ends at the dot).
    reply_prefix: String,
    acks: Vec<Option<AckResult>>,
    received: usize,
}

impl BatchAcks<'_> {
    /// The reply subject of record `index`.
    pub(crate) fn reply(&self, index: usize) -> Subject {
        use std::fmt::Write as _;
        let mut subject = String::with_capacity(self.reply_prefix.len() + 8);
        subject.push_str(&self.reply_prefix);
        // Writing to a `String` cannot fail.
        let _ = write!(subject, "{index}");
        Subject::from(subject)
    }

    /// Acknowledgements received so far.
    pub(crate) fn received(&self) -> usize {
        self.received
    }

    /// Takes every acknowledgement that has already arrived, without waiting.
    pub(crate) fn take_ready(&mut self) {
        while !self.inbox.closed {
            match self.inbox.subscriber.next().now_or_never() {
                Some(message) => self.take(message),
                None => return,
            }
        }
    }

    /// Waits until at least `count` acknowledgements have arrived, or the subscription ends.
    /// Without a deadline: the caller sets one.
    pub(crate) async fn wait_for(&mut self, count: usize) {
        while self.received < count.min(self.acks.len()) && !self.inbox.closed {
            let message = self.inbox.subscriber.next().await;
            self.take(message);
        }
    }

    /// Whether the subscription ended (the client was closed): nothing more will arrive.
    pub(crate) fn is_closed(&self) -> bool {
        self.inbox.closed
    }

    /// What the server answered for each record, in order; `None` where nothing came.
    pub(crate) fn into_results(self) -> Vec<Option<AckResult>> {
        self.acks
    }

    fn take(&mut self, message: Option<async_nats::Message>) {
        let Some(message) = message else {
            self.inbox.closed = true;
            return;
        };
        let Some(index) = self.index_of(&message.subject) else {
            // An earlier batch's, arrived late: that batch already ended.
            return;
        };
        let Some(slot) = self.acks.get_mut(index) else {
            return;
        };
        if slot.is_none() {
            *slot = Some(parse(&message));
            self.received += 1;
        }
    }

    /// The record index a reply subject names, if it is one of this batch's.
    fn index_of(&self, subject: &str) -> Option<usize> {
        subject.strip_prefix(&self.reply_prefix)?.parse().ok()
    }
}

/// A JetStream publish acknowledgement: the sequence, or the error the server gave.
#[derive(Deserialize)]
struct Reply {
    #[serde(default)]
    seq: u64,
    #[serde(default)]
    error: Option<async_nats::jetstream::Error>,
}

/// Reads an acknowledgement as async-nats's publish does: the same error kinds, so that the
/// rest of the log (and callers matching `AppendFailed::kind`) see no difference.
fn parse(message: &async_nats::Message) -> AckResult {
    if message.status == Some(StatusCode::NO_RESPONDERS) {
        // No stream holds the subject (deleted under us).
        return Err(PublishError::new(PublishErrorKind::StreamNotFound));
    }
    let reply: Reply = serde_json::from_slice(&message.payload)
        .map_err(|e| PublishError::with_source(PublishErrorKind::Other, e))?;
    match reply.error {
        None => Ok(reply.seq),
        Some(error) => {
            let kind = match error.error_code() {
                ErrorCode::STREAM_WRONG_LAST_MESSAGE_ID => PublishErrorKind::WrongLastMessageId,
                ErrorCode::STREAM_WRONG_LAST_SEQUENCE => PublishErrorKind::WrongLastSequence,
                _ => PublishErrorKind::Other,
            };
            Err(PublishError::with_source(kind, error))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn message(subject: &str, payload: &str, status: Option<StatusCode>) -> async_nats::Message {
        async_nats::Message {
            subject: Subject::from(subject),
            reply: None,
            payload: bytes::Bytes::from(payload.to_owned()),
            headers: None,
            status,
            description: None,
            length: payload.len(),
        }
    }

    #[test]
    fn a_stored_record_gives_its_sequence() {
        let m = message("_INBOX.x.1.0", r#"{"stream":"s","seq":42}"#, None);
        assert_eq!(parse(&m).unwrap(), 42);
        let dup = message(
            "_INBOX.x.1.0",
            r#"{"stream":"s","seq":7,"duplicate":true}"#,
            None,
        );
        assert_eq!(parse(&dup).unwrap(), 7);
    }

    #[test]
    fn refusals_keep_async_nats_error_kinds() {
        let wrong_seq =
            r#"{"error":{"code":400,"err_code":10071,"description":"wrong last sequence: 4"}}"#;
        let wrong_id =
            r#"{"error":{"code":400,"err_code":10070,"description":"wrong last msg ID: a"}}"#;
        let other =
            r#"{"error":{"code":503,"err_code":10077,"description":"maximum messages exceeded"}}"#;
        let kind = |payload: &str| {
            parse(&message("_INBOX.x.1.0", payload, None))
                .unwrap_err()
                .kind()
        };
        assert_eq!(kind(wrong_seq), PublishErrorKind::WrongLastSequence);
        assert_eq!(kind(wrong_id), PublishErrorKind::WrongLastMessageId);
        assert_eq!(kind(other), PublishErrorKind::Other);
        assert_eq!(kind("not json"), PublishErrorKind::Other);
        let none = message("_INBOX.x.1.0", "", Some(StatusCode::NO_RESPONDERS));
        assert_eq!(
            parse(&none).unwrap_err().kind(),
            PublishErrorKind::StreamNotFound
        );
    }
}
