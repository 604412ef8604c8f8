//! The inbox's tables, owned by the component `gateway-inbox`.

use crate::postgres::Migration;

/// The component name in `iot_schema_migrations`.
pub(super) const COMPONENT: &str = "gateway-inbox";

/// Version 1: one row per queued message.
///
/// * `seq` comes from one identity sequence for every device, so a sequence number is never
///   reused, not even after a device's messages were all removed; a device's FIFO order is `seq`
///   order.
/// * Times are microseconds since the Unix epoch, as the caller's clock gave them: the store
///   never reads the database's clock, so expiry and lock lapses follow the gateway's `now`.
/// * `lock_owner` names the instance whose session holds the lock, so an instance that restarts
///   releases its own locks and nobody else's.
/// * Properties keep their order and duplicates as two parallel arrays.
pub(super) const MIGRATIONS: &[Migration] = &[Migration {
    version: 1,
    sql: "
        CREATE TABLE iot_inbox (
            seq              bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
            device           text    NOT NULL,
            message_id       text    NOT NULL,
            correlation_id   text,
            content_type     text,
            content_encoding text,
            prop_names       text[]  NOT NULL,
            prop_values      text[]  NOT NULL,
            payload          bytea   NOT NULL,
            ack              text    NOT NULL,
            enqueued_at      bigint  NOT NULL,
            expires_at       bigint  NOT NULL,
            delivery_count   bigint  NOT NULL DEFAULT 0,
            locked_until     bigint,
            lock_owner       text
        );
        CREATE INDEX iot_inbox_device_seq ON iot_inbox (device, seq);
        CREATE INDEX iot_inbox_expires_at ON iot_inbox (expires_at);
        CREATE INDEX iot_inbox_lock_owner ON iot_inbox (lock_owner) WHERE lock_owner IS NOT NULL;
    ",
}];
