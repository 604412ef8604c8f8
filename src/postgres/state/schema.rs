//! The state store's tables, owned by the component `stream-state`.

use crate::postgres::Migration;

/// The component name in `iot_schema_migrations`.
pub(super) const COMPONENT: &str = "stream-state";

/// Version 1.
///
/// * `iot_state_devices`: one row per device with any state. It holds the last source position
///   stored in the history (to skip redeliveries), a counter giving each event its place in
///   append order (so equal times read back in append order), and the last-known-values record
///   as the JSON the stream crate serializes it to. `json`, not `jsonb`: the record is read
///   whole, and `json` keeps an escaped NUL character a device may send.
/// * `iot_state_events`: the history, indexed by device and time.
pub(super) const MIGRATIONS: &[Migration] = &[Migration {
    version: 1,
    sql: "
        CREATE TABLE iot_state_devices (
            device         text   PRIMARY KEY,
            last_partition bigint,
            last_offset    bigint,
            appended       bigint NOT NULL DEFAULT 0,
            last_known     json
        );
        CREATE TABLE iot_state_events (
            device    text   NOT NULL,
            time      bigint NOT NULL,
            n         bigint NOT NULL,
            partition bigint,
            \"offset\"  bigint,
            payload   bytea  NOT NULL,
            PRIMARY KEY (device, time, n)
        );
        CREATE INDEX iot_state_events_time ON iot_state_events (time);
    ",
}];
