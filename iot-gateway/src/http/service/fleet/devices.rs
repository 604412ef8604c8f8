//! [`FleetDevices`] over the service API's own parts: conditions run as `POST /devices/query`
//! runs them, twin writes as `PATCH /twins/{id}` makes them.

use async_trait::async_trait;
use axum::http::StatusCode;
use iot_core::DeviceId;
use serde_json::Value;

use crate::fleet::{FleetDevices, FleetError, FleetResult};
use crate::http::error::{ApiError, code};
use crate::http::service::query::{condition_query, count_devices, select_ids};
use crate::http::service::twins::{fleet_notify, merge};
use crate::http::state::{HttpState, WeakState};
use crate::method::{MethodCall, MethodResponse};

/// The devices of a hub, as its service API sees them.
#[derive(Debug, Clone)]
pub struct HubDevices {
    state: HttpState,
    /// The state serving the fleet, told when a job changes a device's tags.
    origin: Option<WeakState>,
}

impl HubDevices {
    /// Over `state` (use [`HttpState::fleet_devices`], which gives a copy without the fleet).
    pub fn new(state: HttpState) -> Self {
        HubDevices {
            state,
            origin: None,
        }
    }

    /// Tells the configuration engine of `origin` (when it still exists) about twin writes
    /// that change tags, as `PATCH /twins/{id}` does.
    pub(crate) fn notifying(mut self, origin: WeakState) -> Self {
        self.origin = Some(origin);
        self
    }
}

fn fleet_error(e: ApiError) -> FleetError {
    if e.code == code::BAD_QUERY
        || (e.status == StatusCode::BAD_REQUEST && e.code == code::ARGUMENT_INVALID)
    {
        FleetError::Query(e.message)
    } else if e.status == StatusCode::NOT_FOUND {
        FleetError::NotFound {
            kind: "device",
            id: e.message,
        }
    } else {
        FleetError::Devices(format!("{}: {}", e.code, e.message))
    }
}

/// `'text'` as the query language quotes it (a quote doubled).
fn quoted(text: &str) -> String {
    format!("'{}'", text.replace('\'', "''"))
}

#[async_trait]
impl FleetDevices for HubDevices {
    fn check_condition(&self, condition: &str) -> FleetResult<()> {
        condition_query(condition).map(|_| ()).map_err(fleet_error)
    }

    async fn select(&self, condition: &str) -> FleetResult<Vec<DeviceId>> {
        select_ids(&self.state, condition)
            .await
            .map_err(fleet_error)
    }

    async fn matches(&self, condition: &str, device: &DeviceId) -> FleetResult<bool> {
        let one = format!("deviceId = {} AND ({condition})", quoted(device.as_str()));
        Ok(!select_ids(&self.state, &one)
            .await
            .map_err(fleet_error)?
            .is_empty())
    }

    async fn count(&self, query: &str) -> FleetResult<u64> {
        count_devices(&self.state, query).await.map_err(fleet_error)
    }

    async fn invoke_method(
        &self,
        device: &DeviceId,
        call: MethodCall,
    ) -> crate::Result<MethodResponse> {
        self.state.gateway().invoke_method(device, call).await
    }

    async fn update_twin(
        &self,
        device: &DeviceId,
        tags: Option<Value>,
        desired: Option<Value>,
    ) -> FleetResult<()> {
        let tags_changed = tags.is_some();
        merge(&self.state, device, tags, desired)
            .await
            .map_err(fleet_error)?;
        if tags_changed && let Some(origin) = self.origin.as_ref().and_then(WeakState::upgrade) {
            fleet_notify(&origin, device);
        }
        Ok(())
    }
}
