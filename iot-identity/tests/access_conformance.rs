//! The access store conformance suite against the memory store, the file store (fsync and
//! OS-buffered, reopened over the same directory) and the pointer wrappers.

use std::sync::Arc;

use iot_identity::access::{
    AccessStore, FileAccessStore, FileAccessStoreConfig, MemoryAccessStore,
};
use iot_identity::{Durability, testkit};

#[tokio::test]
async fn memory_store() {
    let store: Arc<dyn AccessStore> = Arc::new(MemoryAccessStore::new());
    testkit::access::run_access(store, |_| async { None }).await;
}

async fn file_store(durability: Durability) {
    let dir = tempfile::tempdir().expect("temp dir");
    let config = FileAccessStoreConfig::default().durability(durability);
    let store: Arc<dyn AccessStore> = Arc::new(
        FileAccessStore::open(dir.path(), config)
            .await
            .expect("open"),
    );
    let path = dir.path().to_owned();
    testkit::access::run_access(store, |store| async move {
        // The journal holds its directory until the last handle is dropped.
        drop(store);
        let reopened = FileAccessStore::open(&path, config).await.expect("reopen");
        Some(Arc::new(reopened) as Arc<dyn AccessStore>)
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn file_store_fsync() {
    file_store(Durability::Fsync).await;
}

#[tokio::test]
async fn file_store_os_buffered() {
    file_store(Durability::OsBuffered).await;
}

#[tokio::test]
async fn boxed_and_arc_forward() {
    let store: Arc<dyn AccessStore> =
        Arc::new(Box::new(MemoryAccessStore::new()) as Box<dyn AccessStore>);
    testkit::access::run_access(store, |_| async { None }).await;
}

/// A second open of a directory in use is refused; a torn last write is cut off at open and the
/// writes before it are kept.
#[tokio::test]
async fn file_store_is_locked_and_recovers_a_torn_tail() {
    use iot_identity::access::{NewUser, UserName};
    use iot_identity::{Error, PassphraseHash, PassphraseParams};

    let dir = tempfile::tempdir().expect("temp dir");
    let config = FileAccessStoreConfig::default();
    let store = FileAccessStore::open(dir.path(), config)
        .await
        .expect("open");
    assert!(matches!(
        FileAccessStore::open(dir.path(), config).await,
        Err(Error::Locked { .. })
    ));
    let name: UserName = "ada".parse().expect("name");
    let hash = PassphraseHash::hash("pw", &PassphraseParams::INSECURE_FOR_TESTS).expect("hash");
    store
        .create_user(NewUser::new(name.clone(), hash.clone()))
        .await
        .expect("create");
    drop(store);
    // Half a frame at the end, as a crash during an append leaves it.
    let wal = dir.path().join("wal");
    let mut bytes = std::fs::read(&wal).expect("read wal");
    let whole = bytes.len();
    let torn = bytes[12..whole.min(40)].to_vec();
    bytes.extend_from_slice(&torn);
    std::fs::write(&wal, &bytes).expect("tear");
    let store = FileAccessStore::open(dir.path(), config)
        .await
        .expect("reopen");
    let user = store.get_user(&name).await.expect("get").expect("kept");
    assert_eq!(user.password, hash);
    assert_eq!(std::fs::metadata(&wal).expect("wal").len(), whole as u64);
}

/// What the files hold: the password's hash and the session's digest, never the password or the
/// token.
#[tokio::test]
async fn files_hold_no_password_or_token() {
    use iot_identity::PassphraseParams;
    use iot_identity::access::{AccessConfig, AccessControl, StaticDeviceSets};

    let dir = tempfile::tempdir().expect("temp dir");
    let store = FileAccessStore::open(dir.path(), FileAccessStoreConfig::default())
        .await
        .expect("open");
    let access = AccessControl::new(Arc::new(store), Arc::new(StaticDeviceSets::new()))
        .with_config(AccessConfig::default().password_params(PassphraseParams::INSECURE_FOR_TESTS))
        .expect("config");
    let password = "Tr0ub4dor&3-unique-marker";
    access
        .create_user("ada".parse().expect("name"), password)
        .await
        .expect("create");
    let (token, session) = access.login("ada", password).await.expect("login");
    let shown = format!("{token:?} {session:?}");
    assert!(!shown.contains(token.expose()), "{shown}");
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir.path()).expect("dir") {
        files.extend(std::fs::read(entry.expect("entry").path()).expect("read"));
    }
    let text = String::from_utf8_lossy(&files);
    assert!(text.contains("$argon2id$"), "the hash is there");
    assert!(!text.contains(password));
    assert!(!text.contains(token.expose()));
}

/// Passwords, hashes and tokens stay out of `Debug`, errors and audit records.
#[tokio::test]
async fn secrets_stay_out_of_debug_errors_and_audit() {
    use iot_identity::PassphraseParams;
    use iot_identity::access::{AccessConfig, AccessControl, MemoryAuditSink, StaticDeviceSets};

    let store = Arc::new(MemoryAccessStore::new());
    let audit = MemoryAuditSink::new();
    let access = AccessControl::new(store.clone(), Arc::new(StaticDeviceSets::new()))
        .with_audit(Arc::new(audit.clone()))
        .with_config(AccessConfig::default().password_params(PassphraseParams::INSECURE_FOR_TESTS))
        .expect("config");
    let password = "hunter2-unique-marker";
    let user = access
        .create_user("ada".parse().expect("name"), password)
        .await
        .expect("create");
    let (token, session) = access.login("ada", password).await.expect("login");
    let refused = access
        .login("ada", "wrong-password-marker")
        .await
        .expect_err("refused");
    let bad_session = access
        .session(&format!("{}x", &token.expose()[1..]))
        .await
        .expect_err("refused");
    let shown = format!(
        "{user:?} {session:?} {token:?} {access:?} {store:?} {refused} {refused:?} {bad_session} {:?}",
        audit.records()
    );
    for secret in [
        password,
        "wrong-password-marker",
        token.expose(),
        "$argon2id",
    ] {
        assert!(!shown.contains(secret), "{secret} shown in {shown}");
    }
    assert!(
        !shown.contains(&session.digest.to_hex()),
        "the full digest is not shown"
    );
}
