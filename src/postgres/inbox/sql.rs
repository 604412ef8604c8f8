//! The inbox's statements.

/// `RETURNING` every column `rows::message` and `rows::removed` read.
macro_rules! returning_message {
    () => {
        " RETURNING seq, device, message_id, correlation_id, content_type, content_encoding, \
         prop_names, prop_values, payload, ack, enqueued_at, expires_at, delivery_count"
    };
}

/// A transaction-scoped lock on one device's queue (a hash of the device id; a collision only
/// makes two devices wait for each other now and then). The seed keeps these keys apart from
/// other advisory lock users'.
pub(super) const LOCK_DEVICE: &str = "SELECT pg_advisory_xact_lock(hashtextextended($1, 4714119))";

pub(super) const DELETE_EXPIRED_OF_DEVICE: &str = concat!(
    "DELETE FROM iot_inbox WHERE device = $1 AND expires_at <= $2",
    returning_message!()
);

pub(super) const DEPTH: &str = "SELECT count(*) FROM iot_inbox WHERE device = $1";

pub(super) const INSERT: &str = "INSERT INTO iot_inbox \
     (device, message_id, correlation_id, content_type, content_encoding, prop_names, \
      prop_values, payload, ack, enqueued_at, expires_at) \
     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11) RETURNING seq";

/// The queue in FIFO order, locked against settlements and purges while `lock_next` decides.
pub(super) const QUEUE_HEAD: &str = "SELECT seq, expires_at, delivery_count, locked_until \
     FROM iot_inbox WHERE device = $1 ORDER BY seq FOR UPDATE";

pub(super) const DELETE_SEQS: &str = concat!(
    "DELETE FROM iot_inbox WHERE seq = ANY($1)",
    returning_message!()
);

pub(super) const LOCK_MESSAGE: &str = concat!(
    "UPDATE iot_inbox SET delivery_count = $2, locked_until = $3, lock_owner = $4 WHERE seq = $1",
    returning_message!()
);

/// Abandon: only the current lock (device, sequence and delivery count) matches.
pub(super) const UNLOCK: &str = "UPDATE iot_inbox SET locked_until = NULL, lock_owner = NULL \
     WHERE device = $1 AND seq = $2 AND delivery_count = $3 AND locked_until IS NOT NULL";

/// Complete or reject: only the current lock matches.
pub(super) const DELETE_LOCKED: &str = concat!(
    "DELETE FROM iot_inbox \
     WHERE device = $1 AND seq = $2 AND delivery_count = $3 AND locked_until IS NOT NULL",
    returning_message!()
);

/// Rows another transaction holds are skipped: that transaction meets the expiry and reports it.
pub(super) const PURGE_EXPIRED: &str = concat!(
    "DELETE FROM iot_inbox WHERE seq IN \
     (SELECT seq FROM iot_inbox WHERE expires_at <= $1 FOR UPDATE SKIP LOCKED)",
    returning_message!()
);

pub(super) const DELETE_DEVICE: &str = "DELETE FROM iot_inbox WHERE device = $1";

/// On open: the locks this instance held before it restarted.
pub(super) const RELEASE_OWN_LOCKS: &str =
    "UPDATE iot_inbox SET locked_until = NULL, lock_owner = NULL WHERE lock_owner = $1";
