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

mod ast;
mod compile;
mod eval;
mod parse;
mod view;

pub(crate) use ast::{CmpOp, Cond, Path, Root};
pub use ast::{Query, Select};
pub use view::{CompareOp, Condition, Field, FieldRoot, Literal, OrderBy};
