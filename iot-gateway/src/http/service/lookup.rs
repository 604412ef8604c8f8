//! Reading a device from the stores that own its parts.

use iot_core::DeviceId;

use super::json::DeviceView;
use crate::http::error::{ApiError, ApiResult};
use crate::http::state::HttpState;

/// The device's identity, registry record, connection state and C2D depth; 404 when it has no
/// identity or no record (provisioning keeps the two in agreement, so one without the other is
/// a write in flight).
pub(crate) async fn device_view(state: &HttpState, id: &DeviceId) -> ApiResult<DeviceView> {
    let identity = state.identity().get(id).await?;
    let record = state.registry().get(id).await?;
    let (Some(identity), Some(record)) = (identity, record) else {
        return Err(ApiError::device_not_found(id.as_str()));
    };
    view_of(state, (*identity).clone(), record).await
}

/// Completes a view from an identity and a record already read.
pub(crate) async fn view_of(
    state: &HttpState,
    identity: iot_identity::DeviceIdentity,
    record: iot_registry::DeviceRecord,
) -> ApiResult<DeviceView> {
    let connected = state.gateway().is_connected(&identity.id).await?;
    // A gateway that cannot count its queue shows 0, as IoT Hub does for an empty one.
    let c2d_pending = state.gateway().pending_c2d(&identity.id).await.unwrap_or(0);
    let activity = state.gateway().activity(&identity.id).await?;
    Ok(DeviceView {
        identity,
        record,
        connected,
        c2d_pending,
        activity,
    })
}
