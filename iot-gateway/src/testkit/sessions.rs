//! Gateway checks of sessions: authentication, takeover, a disabled device.

use iot_core::DeviceId;
use iot_identity::Presented;

use crate::error::{CloseReason, Error};
use crate::gateway::{Gateway, SessionEvent, SessionOptions, Subscription};
use crate::message::{AckRequest, Telemetry};

use super::helpers::{c2d, connect, next_c2d};
use super::{Fixture, within};

/// A wrong token and an unknown device are both `Unauthorized`.
pub async fn connect_refuses_bad_credentials(gw: &dyn Gateway, fx: &dyn Fixture) {
    let (id, token) = fx.provision("auth").await;
    let (other, _) = fx.provision("auth-other").await;
    let wrong = gw
        .connect(
            &other,
            Presented::SasToken(&token),
            SessionOptions::default(),
        )
        .await;
    assert!(
        matches!(wrong, Err(Error::Unauthorized { .. })),
        "{wrong:?}"
    );
    let unknown: DeviceId = "no-such-device-x".parse().expect("id");
    let unknown = gw
        .connect(
            &unknown,
            Presented::SasToken(&token),
            SessionOptions::default(),
        )
        .await;
    assert!(
        matches!(unknown, Err(Error::Unauthorized { .. })),
        "{unknown:?}"
    );
    let s = connect(gw, &id, &token).await;
    assert_eq!(s.device_id(), &id);
    assert!(gw.connected_devices().await.expect("list").contains(&id));
    s.close().await;
    assert!(!gw.connected_devices().await.expect("list").contains(&id));
}

/// Refused attempts in a device's name, as many as a stranger may make, spend nothing of that
/// device's budget: it still connects with its own credential at once.
pub async fn refused_connects_spend_nothing_of_the_device(gw: &dyn Gateway, fx: &dyn Fixture) {
    let (id, token) = fx.provision("lockout").await;
    let (_, other_token) = fx.provision("lockout-other").await;
    // More than any sensible per-device connect burst, fewer than a hub-wide failure budget.
    for _ in 0..40 {
        let refused = gw
            .connect(
                &id,
                Presented::SasToken(&other_token),
                SessionOptions::default(),
            )
            .await;
        assert!(
            matches!(refused, Err(Error::Unauthorized { .. })),
            "{refused:?}"
        );
    }
    let s = connect(gw, &id, &token).await;
    assert_eq!(s.device_id(), &id);
    s.close().await;
}

/// A second connection takes over: the first session ends with `TakenOver`, and C2D messages
/// it held go to the new one.
pub async fn session_takeover(gw: &dyn Gateway, fx: &dyn Fixture) {
    let (id, token) = fx.provision("takeover").await;
    let m = gw
        .send_c2d(&id, c2d("held", AckRequest::None))
        .await
        .expect("send");
    let old = connect(gw, &id, &token).await;
    old.subscribe(Subscription::C2d).await.expect("subscribe");
    let held = next_c2d(&*old).await;
    let new = connect(gw, &id, &token).await;
    assert_eq!(
        within(old.next_event()).await.expect("event"),
        SessionEvent::Closed(CloseReason::TakenOver)
    );
    assert!(matches!(
        old.send_telemetry(Telemetry::new("x")).await,
        Err(Error::SessionClosed {
            reason: CloseReason::TakenOver,
            ..
        })
    ));
    assert!(old.complete(held.lock_token).await.is_err());
    new.subscribe(Subscription::C2d).await.expect("subscribe");
    let d = next_c2d(&*new).await;
    assert_eq!(d.message_id, m.message_id);
    new.complete(d.lock_token).await.expect("complete");
    assert!(new.close_reason().is_none());
    new.close().await;
}

/// Disabling the device in the identity store ends its session promptly, and it cannot
/// connect again.
pub async fn disabled_device_session_ends(gw: &dyn Gateway, fx: &dyn Fixture) {
    let (id, token) = fx.provision("disable").await;
    let s = connect(gw, &id, &token).await;
    fx.disable(&id).await;
    assert_eq!(
        within(s.next_event()).await.expect("event"),
        SessionEvent::Closed(CloseReason::Disabled)
    );
    assert!(matches!(
        s.send_telemetry(Telemetry::new("x")).await,
        Err(Error::SessionClosed { .. })
    ));
    let again = gw
        .connect(&id, Presented::SasToken(&token), SessionOptions::default())
        .await;
    assert!(
        matches!(again, Err(Error::Unauthorized { .. })),
        "{again:?}"
    );
    assert!(!gw.connected_devices().await.expect("list").contains(&id));
}
