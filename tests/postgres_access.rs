//! `PgAccessStore` against the machine's PostgreSQL (feature `postgres`): the access
//! conformance suite (the one the memory and file stores pass), and two stores on one database,
//! as two processes would have them: a session opened through one is accepted, and ended,
//! through the other. Each test works in a schema of its own, dropped at the end.
#![cfg(feature = "postgres")]

mod pg_support;

use std::collections::BTreeSet;
use std::sync::Arc;

use iot_sdk::identity::access::{
    AccessConfig, AccessControl, AccessStore, Decision, DeviceSet, Grant,
    MAX_SUBSCRIPTIONS_PER_USER, NewUser, Permission, RoleName, StaticDeviceSets, Subscription,
    SubscriptionSecret, SubscriptionStore, Target,
};
use iot_sdk::identity::testkit::{self, access::fresh_user};
use iot_sdk::identity::{Error, PassphraseHash, PassphraseParams};
use iot_sdk::postgres::{PgAccessStore, PgAccessStoreConfig, PgConfig, PgPool};

/// A fresh schema on the shared server, and the URL whose connections use it.
struct Schema {
    admin: PgPool,
    name: String,
    url: String,
}

impl Schema {
    async fn fresh() -> Option<Schema> {
        let admin = pg_support::shared_pool().await?;
        let name = pg_support::unique("access").replace('-', "_");
        admin
            .get()
            .await
            .expect("connection")
            .batch_execute(&format!("CREATE SCHEMA {name}"))
            .await
            .expect("create schema");
        let base = std::env::var("IOT_TEST_POSTGRES_URL")
            .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".to_owned());
        let join = if base.contains('?') { '&' } else { '?' };
        // Every connection of the pool starts with the schema as its search path.
        let url = format!("{base}{join}options=-c%20search_path%3D{name}");
        Some(Schema { admin, name, url })
    }

    /// A pool of its own, as another process would have.
    fn pool(&self) -> PgPool {
        PgPool::new(PgConfig::from_url(&self.url).expect("URL")).expect("pool")
    }

    async fn open(&self) -> PgAccessStore {
        PgAccessStore::open(self.pool(), PgAccessStoreConfig::default())
            .await
            .expect("open")
    }

    async fn drop_it(self) {
        self.admin
            .get()
            .await
            .expect("connection")
            .batch_execute(&format!("DROP SCHEMA {} CASCADE", self.name))
            .await
            .expect("drop schema");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pg_access_store_passes_the_access_suite() {
    let Some(schema) = Schema::fresh().await else {
        return;
    };
    let store: Arc<dyn AccessStore> = Arc::new(schema.open().await);
    // The tables are where the schema says, not in `public`.
    let tables: i64 = schema
        .admin
        .get()
        .await
        .expect("connection")
        .query_one(
            "SELECT count(*) FROM information_schema.tables \
             WHERE table_schema = $1 AND table_name LIKE 'iot_access_%'",
            &[&schema.name],
        )
        .await
        .expect("count tables")
        .get(0);
    assert_eq!(tables, 5);
    let reopened = &schema;
    testkit::access::run_access(store, |previous| async move {
        drop(previous);
        Some(Arc::new(reopened.open().await) as Arc<dyn AccessStore>)
    })
    .await;
    schema.drop_it().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sessions_and_grants_cross_between_processes() {
    let Some(schema) = Schema::fresh().await else {
        return;
    };
    // Two stores opened at once: the migration runs once, the other waits for it.
    let (a, b) = tokio::join!(schema.open(), schema.open());
    let sets = || {
        Arc::new(
            StaticDeviceSets::new()
                .with_metadata("pump-7".parse().expect("id"), [("building", "HQ")]),
        )
    };
    let config = || AccessConfig::default().password_params(PassphraseParams::INSECURE_FOR_TESTS);
    let here = AccessControl::new(Arc::new(a), sets())
        .with_config(config())
        .expect("config");
    let there = AccessControl::new(Arc::new(b), sets())
        .with_config(config())
        .expect("config");
    let olga = fresh_user("cross");
    here.create_user(olga.clone(), "olga's password")
        .await
        .expect("create");
    here.grant(Grant::new(
        olga.clone(),
        RoleName::new("operator").expect("role"),
        DeviceSet::Node("building=HQ".parse().expect("node")),
    ))
    .await
    .expect("grant");
    let (token, _) = here
        .login(olga.as_str(), "olga's password")
        .await
        .expect("login");
    let pump = Target::Device("pump-7".parse().expect("id"));
    let (session, decision) = there
        .check_session(token.expose(), Permission::InvokeMethod, &pump)
        .await
        .expect("the other process accepts the session");
    assert_eq!(session.user, olga);
    assert_eq!(decision, Decision::Allow);
    assert!(there.logout(token.expose()).await.expect("logout"));
    assert!(matches!(
        here.session(token.expose()).await,
        Err(Error::SessionRefused { .. })
    ));
    // A password changed in one process ends the sessions the other opened.
    let (token, _) = there
        .login(olga.as_str(), "olga's password")
        .await
        .expect("login");
    here.set_password(&olga, "a new one").await.expect("set");
    assert!(there.session(token.expose()).await.is_err());
    schema.drop_it().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscriptions_are_shared_bounded_and_go_with_their_user() {
    let Some(schema) = Schema::fresh().await else {
        return;
    };
    let (a, b) = (schema.open().await, schema.open().await);
    let (here, there) = (a.subscriptions(), b.subscriptions());
    let vera = fresh_user("subs");
    let secret = || SubscriptionSecret::new("a secret of sixteen+ bytes").expect("secret");
    let orphan = Subscription::new(vera.clone(), "http://x/", None, secret()).expect("valid");
    assert!(matches!(
        here.add(orphan).await,
        Err(Error::UserNotFound { .. })
    ));
    a.create_user(NewUser::new(
        vera.clone(),
        PassphraseHash::hash("pw", &PassphraseParams::INSECURE_FOR_TESTS).expect("hash"),
    ))
    .await
    .expect("user");
    let devices = BTreeSet::from(["pump-7".parse().expect("id")]);
    let first = Subscription::new(
        vera.clone(),
        "https://hooks.example/vera",
        Some(devices),
        secret(),
    )
    .expect("valid");
    here.add(first.clone()).await.expect("add");
    assert_eq!(
        there.of_user(&vera).await.expect("of"),
        std::slice::from_ref(&first),
        "another process reads it back whole, secret included"
    );
    for _ in 1..MAX_SUBSCRIPTIONS_PER_USER {
        let s = Subscription::new(vera.clone(), "http://x/", None, secret()).expect("valid");
        there.add(s).await.expect("add");
    }
    let over = Subscription::new(vera.clone(), "http://x/", None, secret()).expect("valid");
    assert!(matches!(
        here.add(over).await,
        Err(Error::InvalidInput { .. })
    ));
    assert!(there.remove(&vera, &first.id).await.expect("remove"));
    assert!(!here.remove(&vera, &first.id).await.expect("again"));
    assert_eq!(
        here.all().await.expect("all").len(),
        MAX_SUBSCRIPTIONS_PER_USER - 1
    );
    a.delete_user(&vera).await.expect("delete user");
    assert!(
        there.of_user(&vera).await.expect("of").is_empty(),
        "deleting a user deletes their subscriptions"
    );
    schema.drop_it().await;
}
