//! The device query language, in the style of Azure IoT Hub's device queries.
//!
//! ```text
//! SELECT * FROM devices
//!   WHERE metadata.building = 'B7' AND metadata.floor >= 3 AND NOT IS_DEFINED(metadata.retired)
//!   ORDER BY metadata.room LIMIT 100
//! SELECT COUNT() FROM devices WHERE metadata.model IN ['M1', 'M2']
//! ```
//!
//! See `docs/registry.md` for the full grammar, the semantics and the limits.
//!
//! ## Reading a query (for backends)
//!
//! A registry outside this crate reads a parsed [`Query`] through a read-only view —
//! [`Query::condition`] ([`Condition`], [`Field`], [`Literal`], [`CompareOp`]),
//! [`Query::order_by`] ([`OrderBy`]), [`Query::limit`], [`Query::select`] — and makes and reads
//! continuation tokens with [`PageToken`](crate::PageToken). It must reproduce these semantics
//! ([`Query::matches`] and [`Query::cmp_records`] are the reference):
//!
//! * **Paths.** A [`Field`] starts at `deviceId`, `stateRef`, `metadata` or `tags`; the segments
//!   that follow are object keys (never array indexes). `deviceId` and `stateRef` have no
//!   segments. `metadata` and `tags` alone name the whole object. A path is *defined* in a
//!   record when every segment finds a key; `stateRef` is defined when the record has one.
//! * **Values.** What a path finds is a scalar (null, boolean, number, string) or a composite
//!   (an object or an array). Scalars compare only within their class: booleans `false < true`,
//!   numbers as `f64`, strings by their UTF-8 bytes, null equal only to null.
//! * **Conditions are two-valued.** A comparison with an undefined path, with a composite, or
//!   with a scalar of another class than the literal is false — except `!=`, which is true when
//!   the path is defined and holds anything other than the literal (a composite included).
//!   `IN` is true when the path holds a scalar equal to one of the literals. `STARTS_WITH` is
//!   true when the path holds a string starting with the prefix. `NOT` negates; `AND` holds when all
//!   of its conditions hold, `OR` when any does (chains are flattened into one list).
//! * **Positions.** `WITHIN_BOX` and `WITHIN_DISTANCE` ([`Condition::Within`]) hold when the
//!   path names an object whose `lat` and `lon` are numbers forming a position
//!   ([`is_position`]) inside the [`GeoArea`] ([`GeoArea::contains`]); distances are
//!   great-circle distances on a sphere of [`EARTH_RADIUS_M`] ([`geo_distance_m`]).
//! * **Order.** [`Query::order_by`] keys in turn, each ascending unless `descending`: undefined
//!   (or composite) values first, then null, booleans, numbers, strings; ties broken by device id,
//!   ascending. Without `ORDER BY`, records come in device-id order ([`Query::cmp_records`]).
//! * **Limit and paging.** At most [`Query::limit`] records in all, across pages; continuation
//!   tokens are made and read with [`PageToken`](crate::PageToken).

mod ast;
mod compile;
mod eval;
mod geo;
mod parse;
mod view;

pub(crate) use ast::{CmpOp, Cond, Path, Root};
pub use ast::{Query, Select};
pub use geo::{
    EARTH_RADIUS_M, GeoArea, GeoBounds, InvalidArea, distance_m as geo_distance_m, is_position,
};
pub use view::{CompareOp, Condition, Field, FieldRoot, Literal, OrderBy};
