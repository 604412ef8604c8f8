// The module's documentation is docs/actors.md (included from lib.rs, so its examples run as
// doctests).

mod actor;
pub mod command;
mod hierarchy;
mod reminders;
mod runtime;
mod stored;

pub use actor::{Actor, ActorContext, FROM_HEADER, MESSAGE_ID_HEADER};
pub use command::{Command, CommandRecord, MethodResponse};
pub use hierarchy::Hierarchy;
pub use runtime::{ACTOR_NAMESPACE_HEADER, ActorConfig, ActorCounts, ActorRuntime, ActorStats};
