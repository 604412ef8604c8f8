//! The module routes of the service REST API against a hub with memory stores: module
//! identities (`/devices/{id}/modules/{mid}`), module twins and methods
//! (`/twins/{id}/modules/{mid}`), with a module session opened through the gateway.
#![cfg(feature = "http")]

mod http_support;

use http_support::{API, HOST, Stack};
use iot_core::{DeviceId, ModuleId};
use iot_gateway::{Gateway, MethodResponse, SessionEvent, SessionOptions, Subscription};
use iot_identity::{Presented, sas};
use serde_json::json;

fn ids() -> (DeviceId, ModuleId) {
    ("edge-1".parse().expect("id"), "filter".parse().expect("id"))
}

#[tokio::test]
async fn module_identities_crud() {
    let stack = Stack::start().await;
    let path = format!("/devices/edge-1/modules/filter?{API}");
    // A module of a device that does not exist.
    let missing = stack
        .owner("PUT", &path, Some(&json!({"moduleId": "filter"})))
        .await;
    assert_eq!(missing.status, 404, "{missing:?}");
    assert_eq!(missing.error_code(), "DeviceNotFound");

    let device = stack
        .owner(
            "PUT",
            &format!("/devices/edge-1?{API}"),
            Some(&json!({"deviceId": "edge-1"})),
        )
        .await;
    assert_eq!(device.status, 200);
    let created = stack
        .owner(
            "PUT",
            &path,
            Some(&json!({"deviceId": "edge-1", "moduleId": "filter", "managedBy": "iotEdge"})),
        )
        .await;
    assert_eq!(created.status, 200, "{created:?}");
    let module = created.json();
    assert_eq!(module["moduleId"], "filter");
    assert_eq!(module["managedBy"], "iotEdge");
    assert_eq!(module["authentication"]["type"], "sas");
    let key = module["authentication"]["symmetricKey"]["primaryKey"]
        .as_str()
        .expect("generated key")
        .to_owned();
    let etag = module["etag"].as_str().expect("etag").to_owned();

    // A second create is 409; a path/body mismatch is 400; registryRead may not write.
    let again = stack.owner("PUT", &path, Some(&json!({}))).await;
    assert_eq!(again.status, 409);
    assert_eq!(again.error_code(), "ModuleAlreadyExistsOnDevice");
    let mismatch = stack
        .owner("PUT", &path, Some(&json!({"moduleId": "other"})))
        .await;
    assert_eq!(mismatch.status, 400);
    let read_only = stack
        .call_with("PUT", &path, "registryRead", Some(&json!({})), &[])
        .await;
    assert_eq!(read_only.status, 403);

    // Replace with If-Match: a stale etag is 412, the current one keeps the keys.
    let stale = stack
        .call_with(
            "PUT",
            &path,
            "iothubowner",
            Some(&json!({})),
            &[("If-Match", "\"0000000000000000\"")],
        )
        .await;
    assert_eq!(stale.status, 412, "{stale:?}");
    let quoted = format!("\"{etag}\"");
    let replaced = stack
        .call_with(
            "PUT",
            &path,
            "iothubowner",
            Some(&json!({"managedBy": "me"})),
            &[("If-Match", quoted.as_str())],
        )
        .await;
    assert_eq!(replaced.status, 200, "{replaced:?}");
    assert_eq!(replaced.json()["managedBy"], "me");
    assert_eq!(
        replaced.json()["authentication"]["symmetricKey"]["primaryKey"],
        key.as_str()
    );

    let got = stack
        .call_with("GET", &path, "registryRead", None, &[])
        .await;
    assert_eq!(got.status, 200);
    assert_eq!(got.json()["connectionState"], "Disconnected");
    let listed = stack
        .owner("GET", &format!("/devices/edge-1/modules?{API}"), None)
        .await;
    assert_eq!(listed.json().as_array().map(Vec::len), Some(1));
    let bad_id = stack
        .owner("GET", &format!("/devices/edge-1/modules/a%2Fb?{API}"), None)
        .await;
    assert_eq!(bad_id.status, 400);

    assert_eq!(stack.owner("DELETE", &path, None).await.status, 204);
    let gone = stack.owner("GET", &path, None).await;
    assert_eq!(gone.status, 404);
    assert_eq!(gone.error_code(), "ModuleNotFound");

    // Deleting the device deletes its modules.
    stack.owner("PUT", &path, Some(&json!({}))).await;
    assert_eq!(
        stack
            .owner("DELETE", &format!("/devices/edge-1?{API}"), None)
            .await
            .status,
        204
    );
    let (device, module) = ids();
    tokio::time::timeout(std::time::Duration::from_secs(20), async {
        while stack
            .hub
            .modules()
            .get(&device, &module)
            .await
            .expect("get")
            .is_some()
        {
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
    })
    .await
    .expect("the device's modules go with it");
}

#[tokio::test]
async fn module_twins_and_methods() {
    let stack = Stack::start().await;
    stack
        .owner("PUT", &format!("/devices/edge-1?{API}"), Some(&json!({})))
        .await;
    let created = stack
        .owner(
            "PUT",
            &format!("/devices/edge-1/modules/filter?{API}"),
            Some(&json!({})),
        )
        .await
        .json();
    let key = iot_identity::SymmetricKey::from_base64(
        created["authentication"]["symmetricKey"]["primaryKey"]
            .as_str()
            .expect("key"),
    )
    .expect("key");
    let (device, module) = ids();
    let token = sas::generate(
        &sas::module_resource(HOST, &device, &module),
        &key,
        sas::unix_now() + 600,
        None,
    )
    .expect("token");
    let session = stack
        .hub
        .connect_module(
            &device,
            &module,
            Presented::SasToken(token.as_str()),
            SessionOptions::default(),
        )
        .await
        .expect("module session");
    session
        .subscribe(Subscription::DesiredPatches)
        .await
        .expect("subscribe");
    session
        .subscribe(Subscription::Methods)
        .await
        .expect("subscribe");
    session
        .patch_reported(json!({"role": "filter"}))
        .await
        .expect("reported");

    let twin_path = format!("/twins/edge-1/modules/filter?{API}");
    let twin = stack.owner("GET", &twin_path, None).await;
    assert_eq!(twin.status, 200);
    let twin = twin.json();
    assert_eq!(twin["moduleId"], "filter");
    assert_eq!(twin["connectionState"], "Connected");
    assert_eq!(twin["properties"]["reported"]["role"], "filter");
    let device_twin = stack
        .owner("GET", &format!("/twins/edge-1?{API}"), None)
        .await
        .json();
    assert_eq!(device_twin["properties"]["reported"]["$version"], 0);

    // A desired patch with the twin's etag reaches the module's session; a stale etag is 412;
    // tags are refused (module twins keep none here).
    let etag = format!("\"{}\"", twin["etag"].as_str().expect("etag"));
    let patched = stack
        .call_with(
            "PATCH",
            &twin_path,
            "iothubowner",
            Some(&json!({"properties": {"desired": {"threshold": 7}}})),
            &[("If-Match", etag.as_str())],
        )
        .await;
    assert_eq!(patched.status, 200, "{patched:?}");
    assert_eq!(patched.json()["properties"]["desired"]["threshold"], 7);
    let SessionEvent::DesiredPatch(pushed) = session.next_event().await.expect("event") else {
        panic!("expected a desired patch");
    };
    assert_eq!(pushed.version, 1);
    let stale = stack
        .call_with(
            "PATCH",
            &twin_path,
            "iothubowner",
            Some(&json!({"properties": {"desired": {"threshold": 8}}})),
            &[("If-Match", etag.as_str())],
        )
        .await;
    assert_eq!(stale.status, 412);
    let tags = stack
        .owner("PATCH", &twin_path, Some(&json!({"tags": {"site": "x"}})))
        .await;
    assert_eq!(tags.status, 400);

    // A method on the module is answered by its session; on an unknown module it is 404.
    let answer = tokio::spawn(async move {
        let SessionEvent::Method(request) = session.next_event().await.expect("event") else {
            panic!("expected a method");
        };
        assert_eq!(request.name, "recalibrate");
        session
            .respond_method(MethodResponse {
                request_id: request.request_id,
                status: 200,
                payload: bytes::Bytes::from_static(b"{\"ok\":1}"),
            })
            .await
            .expect("respond");
        session
    });
    let invoked = stack
        .owner(
            "POST",
            &format!("/twins/edge-1/modules/filter/methods?{API}"),
            Some(&json!({"methodName": "recalibrate", "payload": {}, "responseTimeoutInSeconds": 10})),
        )
        .await;
    assert_eq!(invoked.status, 200, "{invoked:?}");
    assert_eq!(invoked.json(), json!({"status": 200, "payload": {"ok": 1}}));
    let session = answer.await.expect("session task");
    let unknown = stack
        .owner(
            "POST",
            &format!("/twins/edge-1/modules/nope/methods?{API}"),
            Some(&json!({"methodName": "x", "payload": {}})),
        )
        .await;
    assert_eq!(unknown.status, 404);
    assert_eq!(unknown.error_code(), "ModuleNotFound");
    // The device itself has no session: its own method route does not reach the module.
    let on_device = stack
        .owner(
            "POST",
            &format!("/twins/edge-1/methods?{API}"),
            Some(&json!({"methodName": "recalibrate", "payload": {}})),
        )
        .await;
    assert_eq!(on_device.status, 404);
    assert_eq!(on_device.error_code(), "DeviceNotOnline");
    session.close().await;
}
