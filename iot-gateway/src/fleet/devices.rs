//! How the engines reach devices: one trait, so that the query language and the twin writes
//! are the ones the service API uses (the HTTP layer implements it) and tests or other front
//! ends can bring their own.

use std::fmt::Debug;

use async_trait::async_trait;
use iot_core::DeviceId;
use serde_json::Value;

use super::error::FleetResult;
use crate::method::{MethodCall, MethodResponse};

/// The devices a fleet operation acts on.
#[async_trait]
pub trait FleetDevices: Send + Sync + Debug + 'static {
    /// Checks that `condition` (an IoT Hub query condition such as `tags.building = '43'` or
    /// `deviceId IN ['a', 'b']`) is one the query language accepts, without running it.
    fn check_condition(&self, condition: &str) -> FleetResult<()>;

    /// Every device `condition` matches now, in registry order.
    async fn select(&self, condition: &str) -> FleetResult<Vec<DeviceId>>;

    /// Whether `condition` matches `device` now (false for an unknown device).
    async fn matches(&self, condition: &str, device: &DeviceId) -> FleetResult<bool>;

    /// How many devices a whole IoT Hub query (`SELECT deviceId FROM devices WHERE …`)
    /// answers: a configuration's custom metric.
    async fn count(&self, query: &str) -> FleetResult<u64>;

    /// Invokes a direct method on `device` (a job's step).
    async fn invoke_method(
        &self,
        device: &DeviceId,
        call: MethodCall,
    ) -> crate::Result<MethodResponse>;

    /// Merges `tags` and `desired` (RFC 7396 patches; either may be absent) into the twin of
    /// `device`, as `PATCH /twins/{id}` does.
    async fn update_twin(
        &self,
        device: &DeviceId,
        tags: Option<Value>,
        desired: Option<Value>,
    ) -> FleetResult<()>;
}
