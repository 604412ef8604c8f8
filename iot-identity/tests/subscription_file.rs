//! The file subscription store: the subscription suite, and what it wrote survives a reopen
//! (secrets included), compaction aside.

use std::collections::BTreeSet;

use iot_identity::access::{
    FileAccessStoreConfig, FileSubscriptionStore, Subscription, SubscriptionSecret,
    SubscriptionStore,
};
use iot_identity::testkit::subscriptions::{fresh_user, run_subscriptions};

#[tokio::test]
async fn the_file_store_passes_the_subscription_suite() {
    let dir = tempfile::tempdir().expect("dir");
    let store = FileSubscriptionStore::open(dir.path(), FileAccessStoreConfig::default())
        .await
        .expect("open");
    run_subscriptions(&store).await;
}

#[tokio::test]
async fn subscriptions_survive_a_reopen_and_deletions_stay_deleted() {
    let dir = tempfile::tempdir().expect("dir");
    let (vera, olga) = (fresh_user("vera"), fresh_user("olga"));
    let secret = SubscriptionSecret::new("a secret of sixteen+ bytes").expect("secret");
    let kept = Subscription::new(
        vera.clone(),
        "https://hooks.example/vera",
        Some(BTreeSet::from(["pump-7".parse().expect("id")])),
        secret.clone(),
    )
    .expect("valid");
    let removed =
        Subscription::new(vera.clone(), "http://x/", None, secret.clone()).expect("valid");
    let olgas = Subscription::new(olga.clone(), "http://x/", None, secret).expect("valid");
    {
        let store = FileSubscriptionStore::open(dir.path(), FileAccessStoreConfig::default())
            .await
            .expect("open");
        for s in [&kept, &removed, &olgas] {
            store.add(s.clone()).await.expect("add");
        }
        assert!(store.remove(&vera, &removed.id).await.expect("remove"));
        assert_eq!(store.delete_of(&olga).await.expect("delete"), 1);
    }
    let store = FileSubscriptionStore::open(dir.path(), FileAccessStoreConfig::default())
        .await
        .expect("reopen");
    assert_eq!(store.all().await.expect("all"), vec![kept.clone()]);
    assert_eq!(
        store.of_user(&vera).await.expect("of")[0].secret.expose(),
        "a secret of sixteen+ bytes"
    );
    assert!(store.of_user(&olga).await.expect("of").is_empty());
}
