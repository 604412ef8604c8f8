//! IoT Hub's jobs (`/jobs/v2/…`) and automatic device configurations (`/configurations…`)
//! over [`crate::fleet`], and the engines' view of the devices ([`HubDevices`]).

pub(super) mod configurations;
pub(super) mod device_jobs;
mod devices;
mod errors;
pub(super) mod jobs;

pub use devices::HubDevices;
