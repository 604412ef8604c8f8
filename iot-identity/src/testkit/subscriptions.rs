//! The checks every [`SubscriptionStore`] passes: input checked, ids unique, at most
//! [`MAX_SUBSCRIPTIONS_PER_USER`] per user, listings per user, removal, and `delete_of`.
//!
//! A store that refuses subscriptions of unknown users (the PostgreSQL one) needs the users
//! `vera-…` and `olga-…` the suite names; the suite draws fresh names, so it suits stores that
//! take any user name (memory, file).
//!
//! ```
//! use iot_identity::access::MemorySubscriptionStore;
//! use iot_identity::testkit;
//!
//! # tokio::runtime::Builder::new_current_thread().enable_all().build().expect("rt").block_on(async {
//! testkit::subscriptions::run_subscriptions(&MemorySubscriptionStore::new()).await;
//! # });
//! ```

use std::collections::BTreeSet;

use rand::RngCore as _;

use crate::access::{
    MAX_SUBSCRIPTIONS_PER_USER, Subscription, SubscriptionSecret, SubscriptionStore, UserName,
};

/// A user name with a random suffix.
pub fn fresh_user(prefix: &str) -> UserName {
    let suffix = rand::rng().next_u32();
    UserName::new(format!("{prefix}-{suffix:08x}")).expect("a valid user name")
}

/// Runs every check against `store` (panics on a failure).
pub async fn run_subscriptions(store: &dyn SubscriptionStore) {
    let vera = fresh_user("vera");
    let olga = fresh_user("olga");
    let before = store.all().await.expect("all").len();
    let secret = SubscriptionSecret::generate();
    assert!(!format!("{secret:?}").contains(secret.expose()));
    assert!(SubscriptionSecret::new("short").is_err());
    assert!(Subscription::new(vera.clone(), "ftp://x", None, secret.clone()).is_err());
    assert!(
        Subscription::new(
            vera.clone(),
            "http://x",
            Some(BTreeSet::new()),
            secret.clone()
        )
        .is_err()
    );
    let mut ids = Vec::new();
    for _ in 0..MAX_SUBSCRIPTIONS_PER_USER {
        let s = Subscription::new(vera.clone(), "http://127.0.0.1:1/", None, secret.clone())
            .expect("valid");
        ids.push(s.id.clone());
        store.add(s).await.expect("add");
    }
    let one_more = Subscription::new(vera.clone(), "http://x/", None, secret.clone());
    assert!(store.add(one_more.expect("valid")).await.is_err());
    let devices = BTreeSet::from(["pump-7".parse().expect("id")]);
    let first =
        Subscription::new(olga.clone(), "https://x/", Some(devices), secret).expect("valid");
    store.add(first.clone()).await.expect("add");
    assert!(store.add(first.clone()).await.is_err(), "ids are unique");
    assert_eq!(
        store.of_user(&olga).await.expect("of"),
        std::slice::from_ref(&first),
        "read back whole, secret included"
    );
    assert!(!store.remove(&vera, &first.id).await.expect("remove"));
    assert!(store.remove(&vera, &ids[0]).await.expect("remove"));
    assert!(!store.remove(&vera, &ids[0]).await.expect("again"));
    assert_eq!(
        store.all().await.expect("all").len() - before,
        MAX_SUBSCRIPTIONS_PER_USER
    );
    assert_eq!(
        store.delete_of(&vera).await.expect("delete"),
        MAX_SUBSCRIPTIONS_PER_USER - 1
    );
    assert!(store.of_user(&vera).await.expect("of").is_empty());
    assert_eq!(store.delete_of(&vera).await.expect("again"), 0);
    assert_eq!(store.of_user(&olga).await.expect("of").len(), 1);
    assert!(store.remove(&olga, &first.id).await.expect("remove"));
}
