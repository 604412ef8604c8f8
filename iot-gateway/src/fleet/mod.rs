//! Fleet operations as IoT Hub offers them to back ends: jobs (a direct method or a twin update
//! on every device a query matches, scheduled, throttled, with per-device outcomes and cancel)
//! and automatic device configurations (desired properties applied to the devices a target
//! condition matches, highest priority winning, with metrics). See docs/fleet.md.
//!
//! The engines reach devices through [`FleetDevices`] — query, invoke, write twins — and keep
//! their documents in a [`JobStore`] / [`ConfigurationStore`] (memory or files here; another
//! database implements the same two small traits). The HTTP layer
//! ([`crate::http`]) serves them as IoT Hub's `/jobs/v2` and `/configurations` routes and
//! implements [`FleetDevices`] over its own query translation, so a job's `queryCondition`
//! means exactly what `POST /devices/query` means.

mod configuration;
mod configurations;
mod devices;
mod error;
mod job;
mod jobs;
mod pacer;
mod store;

pub use configuration::{Configuration, ConfigurationSpec, desired_patch};
pub use configurations::{ConfigurationEngine, ConfigurationsConfig, SystemMetrics};
pub use devices::FleetDevices;
pub use error::{FleetError, FleetResult};
pub use job::{
    DeviceJobStatus, DeviceOutcome, Job, JobKind, JobSpec, JobStatistics, JobStatus, MethodSpec,
    TwinUpdate,
};
pub use jobs::{JobEngine, JobsConfig};
pub use store::{
    Applied, ConfigurationStore, FileConfigurationStore, FileJobStore, JobStore,
    MemoryConfigurationStore, MemoryJobStore,
};

/// Both engines, as the HTTP layer holds them ([`crate::http::HttpState::with_fleet`]).
#[derive(Debug, Clone)]
pub struct Fleet {
    /// Jobs.
    pub jobs: JobEngine,
    /// Automatic device configurations.
    pub configurations: ConfigurationEngine,
}
