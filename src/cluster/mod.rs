//! Several [`Hub`](iot_gateway::Hub) instances as one hub (feature `cluster`): coordination over
//! core NATS subjects and request/reply, state in the shared PostgreSQL stores and the NATS log.
//!
//! * [`ClusterHub`]: the [`Gateway`](iot_gateway::Gateway) of one instance;
//! * [`ClusterConfig`]: its id, subject prefix, heartbeat and lease.
//!
//! docs/cluster.md describes the design: what is shared, what is coordinated, the lease, and
//! what happens when an instance dies or NATS or PostgreSQL is down.

mod config;
mod directory;
mod hub;
mod node;
mod wire;

pub use config::ClusterConfig;
pub use hub::ClusterHub;
