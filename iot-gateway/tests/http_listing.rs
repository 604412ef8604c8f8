//! Fleet listings filtered by the access matrix: a user session sees, in `GET /devices`,
//! `POST /devices/query` (pages, counts, derived conditions) and `GET /statistics/devices`,
//! exactly the devices its `read` grants hold — over a registry query, a hierarchy node and a
//! device id — while an admin and a shared access policy see the whole fleet.
#![cfg(feature = "http")]

mod http_support;

use std::collections::BTreeSet;
use std::sync::Arc;

use http_support::{API, Stack, send};
use iot_identity::PassphraseParams;
use iot_identity::access::{
    AccessConfig, AccessControl, DeviceSet, Grant, MemoryAccessStore, MemoryAuditSink,
};
use iot_provisioning::access::RegistryDeviceSets;
use iot_registry::DeviceDocument;
use serde_json::{Value, json};
use tokio::net::TcpStream;

/// Devices and their metadata; the viewer's grants hold the first five.
const FLEET: &[(&str, &str, &str, &str)] = &[
    // id, building, floor, kind
    ("tank-1", "Depot", "0", "tank"),
    ("tank-2", "Depot", "1", "tank"),
    ("room-a1", "HQ", "3", "sensor"),
    ("room-a2", "HQ", "3", "sensor"),
    ("pump-7", "HQ", "1", "pump"),
    ("room-b1", "HQ", "1", "sensor"),
    ("room-b2", "HQ", "2", "sensor"),
    ("fan-1", "Depot", "3", "fan"),
    ("fan-2", "Annex", "3", "fan"),
    ("pump-8", "HQ", "4", "pump"),
];

fn viewer_sees() -> BTreeSet<String> {
    ["tank-1", "tank-2", "room-a1", "room-a2", "pump-7"]
        .into_iter()
        .map(String::from)
        .collect()
}

fn everyone() -> BTreeSet<String> {
    FLEET.iter().map(|d| d.0.to_owned()).collect()
}

async fn call(
    stack: &Stack,
    method: &str,
    path: &str,
    bearer: &str,
    body: Option<&Value>,
    headers: &[(&str, &str)],
) -> http_support::Reply {
    let mut stream = TcpStream::connect(stack.addr).await.expect("connect");
    send(&mut stream, method, path, Some(bearer), body, headers).await
}

fn ids(reply: &http_support::Reply) -> Vec<String> {
    assert_eq!(
        reply.status,
        200,
        "{}",
        String::from_utf8_lossy(&reply.body)
    );
    reply
        .json()
        .as_array()
        .expect("an array")
        .iter()
        .map(|d| d["deviceId"].as_str().expect("deviceId").to_owned())
        .collect()
}

/// Every page of `query`, `page` items at a time, following the continuation tokens.
async fn all_pages(stack: &Stack, bearer: &str, query: &str, page: usize) -> Vec<String> {
    let path = format!("/devices/query?{API}");
    let body = json!({ "query": query });
    let size = page.to_string();
    let mut continuation: Option<String> = None;
    let mut out = Vec::new();
    for _ in 0..100 {
        let mut headers = vec![("x-ms-max-item-count", size.as_str())];
        if let Some(token) = continuation.as_deref() {
            headers.push(("x-ms-continuation", token));
        }
        let reply = call(stack, "POST", &path, bearer, Some(&body), &headers).await;
        let got = ids(&reply);
        assert!(got.len() <= page, "a page holds at most what was asked");
        out.extend(got);
        continuation = reply.header("x-ms-continuation").map(str::to_owned);
        if continuation.is_none() {
            return out;
        }
    }
    panic!("the pages never ended");
}

async fn count(stack: &Stack, bearer: &str, query: &str) -> u64 {
    let reply = call(
        stack,
        "POST",
        &format!("/devices/query?{API}"),
        bearer,
        Some(&json!({ "query": query })),
        &[],
    )
    .await;
    assert_eq!(
        reply.status,
        200,
        "{}",
        String::from_utf8_lossy(&reply.body)
    );
    reply.json()[0]["n"].as_u64().expect("a count")
}

async fn statistics(stack: &Stack, bearer: &str) -> Value {
    let reply = call(
        stack,
        "GET",
        &format!("/statistics/devices?{API}"),
        bearer,
        None,
        &[],
    )
    .await;
    assert_eq!(
        reply.status,
        200,
        "{}",
        String::from_utf8_lossy(&reply.body)
    );
    reply.json()
}

#[tokio::test]
async fn a_viewer_lists_queries_and_counts_exactly_the_devices_granted() {
    let stack = Stack::start().await;
    for (id, building, floor, kind) in FLEET {
        let reply = stack
            .owner(
                "PUT",
                &format!("/devices/{id}?{API}"),
                Some(&json!({"deviceId": id})),
            )
            .await;
        assert_eq!(reply.status, 200);
        let doc = DeviceDocument::with_metadata(
            json!({"building": building, "floor": floor.parse::<u32>().expect("floor"), "kind": kind}),
        )
        .expect("object");
        stack
            .registry
            .replace(&id.parse().expect("id"), doc, None)
            .await
            .expect("metadata");
    }
    let access = AccessControl::new(
        Arc::new(MemoryAccessStore::new()),
        Arc::new(RegistryDeviceSets::new(stack.registry.clone())),
    )
    .with_audit(Arc::new(MemoryAuditSink::new()))
    .with_config(AccessConfig::default().password_params(PassphraseParams::INSECURE_FOR_TESTS))
    .expect("config");
    let grants = [
        (
            "vic",
            "viewer",
            DeviceSet::query("SELECT * FROM devices WHERE metadata.kind = 'tank'").expect("q"),
        ),
        (
            "vic",
            "viewer",
            DeviceSet::Node("building=HQ/floor=3".parse().expect("node")),
        ),
        (
            "vic",
            "viewer",
            DeviceSet::Device("pump-7".parse().expect("id")),
        ),
        // Another permission over more devices adds nothing to what vic may read.
        ("vic", "custom-c2d", DeviceSet::All),
        ("ada", "admin", DeviceSet::All),
    ];
    access
        .store()
        .put_role(iot_identity::access::Role::new(
            "custom-c2d".parse().expect("role"),
            [iot_identity::access::Permission::SendC2d],
        ))
        .await
        .expect("role");
    let mut bearer = std::collections::BTreeMap::new();
    for user in ["vic", "ada", "nobody"] {
        access
            .create_user(user.parse().expect("name"), "a password")
            .await
            .expect("user");
        let (token, _) = access.login(user, "a password").await.expect("login");
        bearer.insert(user, format!("Bearer {}", token.expose()));
    }
    for (user, role, devices) in grants {
        access
            .grant(Grant::new(
                user.parse().expect("name"),
                role.parse().expect("role"),
                devices,
            ))
            .await
            .expect("grant");
    }
    let _ = stack.state.clone().with_access(access);
    let (vic, ada, nobody) = (&bearer["vic"], &bearer["ada"], &bearer["nobody"]);
    let set = |v: Vec<String>| -> BTreeSet<String> {
        let n = v.len();
        let set: BTreeSet<String> = v.into_iter().collect();
        assert_eq!(set.len(), n, "no device twice");
        set
    };

    // GET /devices: the viewer's five; `top` counts their devices, not the fleet's.
    let list = format!("/devices?{API}");
    assert_eq!(
        set(ids(&call(&stack, "GET", &list, vic, None, &[]).await)),
        viewer_sees()
    );
    let two = ids(&call(
        &stack,
        "GET",
        &format!("/devices?top=2&{API}"),
        vic,
        None,
        &[],
    )
    .await);
    assert_eq!(two.len(), 2);
    assert!(two.iter().all(|d| viewer_sees().contains(d)));
    assert_eq!(
        set(ids(&call(&stack, "GET", &list, ada, None, &[]).await)),
        everyone()
    );
    assert!(ids(&call(&stack, "GET", &list, nobody, None, &[]).await).is_empty());
    let owner = stack.owner("GET", &list, None).await;
    assert_eq!(
        set(ids(&owner)),
        everyone(),
        "policies see every device, as before"
    );

    // POST /devices/query: every page, two or three at a time, registry-answered and derived.
    for query in [
        "SELECT * FROM devices",
        "SELECT * FROM devices WHERE status = 'enabled'",
    ] {
        for page in [2, 3, 100] {
            assert_eq!(
                set(all_pages(&stack, vic, query, page).await),
                viewer_sees(),
                "{query} by {page}"
            );
            assert_eq!(
                set(all_pages(&stack, ada, query, page).await),
                everyone(),
                "{query} by {page}"
            );
        }
    }
    let both = "SELECT * FROM devices WHERE deviceId = 'room-a1' OR deviceId = 'room-b1'";
    assert_eq!(all_pages(&stack, vic, both, 10).await, ["room-a1"]);

    // Counts, registry-answered and derived.
    assert_eq!(
        count(&stack, vic, "SELECT COUNT() AS n FROM devices").await,
        5
    );
    assert_eq!(
        count(
            &stack,
            vic,
            "SELECT COUNT() AS n FROM devices WHERE status = 'enabled'"
        )
        .await,
        5
    );
    assert_eq!(
        count(
            &stack,
            vic,
            "SELECT COUNT() AS n FROM devices WHERE deviceId = 'fan-1'"
        )
        .await,
        0
    );
    assert_eq!(
        count(&stack, ada, "SELECT COUNT() AS n FROM devices").await,
        10
    );
    assert_eq!(
        count(&stack, nobody, "SELECT COUNT() AS n FROM devices").await,
        0
    );

    // GET /statistics/devices.
    let disable = json!({"deviceId": "tank-2", "status": "disabled"});
    let reply = stack
        .call_with(
            "PUT",
            &format!("/devices/tank-2?{API}"),
            "iothubowner",
            Some(&disable),
            &[("If-Match", "\"*\"")],
        )
        .await;
    assert_eq!(
        reply.status,
        200,
        "{}",
        String::from_utf8_lossy(&reply.body)
    );
    assert_eq!(
        statistics(&stack, vic).await,
        json!({"totalDeviceCount": 5, "enabledDeviceCount": 4, "disabledDeviceCount": 1})
    );
    assert_eq!(statistics(&stack, ada).await["totalDeviceCount"], 10);
    assert_eq!(statistics(&stack, nobody).await["totalDeviceCount"], 0);

    // What a listing shows is what a single read allows.
    for (id, ..) in FLEET {
        let reply = call(&stack, "GET", &format!("/twins/{id}?{API}"), vic, None, &[]).await;
        let expected = if viewer_sees().contains(*id) {
            200
        } else {
            403
        };
        assert_eq!(reply.status, expected, "{id}");
    }
}
