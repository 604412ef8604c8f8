//! The twin store's table, owned by the component `gateway-twins`.

use crate::postgres::Migration;

/// The component name in `iot_schema_migrations`.
pub(super) const COMPONENT: &str = "gateway-twins";

/// Version 1: one row per device that has a twin; each section a JSON object with its version.
/// A device without a row has the empty twin, so `remove` is a delete.
pub(super) const MIGRATIONS: &[Migration] = &[Migration {
    version: 1,
    sql: "
        CREATE TABLE iot_twins (
            device           text   PRIMARY KEY,
            desired          jsonb  NOT NULL,
            desired_version  bigint NOT NULL,
            reported         jsonb  NOT NULL,
            reported_version bigint NOT NULL
        );
    ",
}];
