//! A partitioned [`Log`](iot_core::Log) over NATS JetStream (feature `nats`).
//!
//! Written against the crates' public API only — what any integrator can do — and checked by the
//! same conformance suite as `MemoryLog` and `FileLog` (`tests/nats_log.rs`).
//!
//! * one JetStream stream per (topic, partition), holding one subject; offsets are stream
//!   sequences minus one, dense because only this adapter writes the stream, deletes of single
//!   messages are denied, and retention only purges a prefix;
//! * each record is one message (the whole record, headers in order, in the payload), published
//!   chained to the record before it (`Nats-Expected-Last-Sequence`, and on every record after
//!   the first `Nats-Expected-Last-Msg-Id` naming the record before, which carries a
//!   `Nats-Msg-Id`), so that what the server stores of a batch is always the prefix it
//!   acknowledged, even with writers in other processes, and on a cluster; the
//!   acknowledgements come back on one subscription per partition, not as a request per record;
//! * consumer-group commits in a JetStream key-value bucket;
//! * `wait_for` follows the stream with a headers-only push consumer (no polling);
//! * retention as a purge of a prefix, or as stream limits the server enforces by itself.
//!
//! What JetStream 2.9 cannot give is stated, not faked: [`NatsLog`]'s
//! [`capabilities`](iot_core::Log::capabilities) deny atomic batches and a forced sync.
//! `docs/log.md` has the details and what an acknowledged append survives.

mod acks;
mod append;
mod codec;
mod config;
mod cursor;
mod error;
mod factory;
mod groups;
mod log;
mod naming;
mod partition;
mod retention;
mod tail;

pub use codec::DecodeError;
pub use config::{NatsLogConfig, NatsStorage};
pub use error::{AppendFailed, BACKEND, Inconsistent, Timeout};
pub use factory::NatsLogFactory;
pub use log::NatsLog;
