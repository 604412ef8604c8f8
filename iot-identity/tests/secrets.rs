//! No secret reaches `Debug`, `Display`, errors or tracing output. In its own test binary so that
//! the global tracing subscriber it installs sees every thread (including tokio's blocking pool).

use std::io::Write;
use std::sync::{Arc, Mutex};

use iot_core::DeviceId;
use iot_identity::{
    Authenticator, Credentials, DeviceStatus, FileIdentityStore, FileIdentityStoreConfig,
    IdentityStore, NewIdentity, PassphraseParams, Presented, SymmetricKey, sas,
};

const HOST: &str = "hub.example.net";

fn id(s: &str) -> DeviceId {
    s.parse().expect("valid id")
}

fn token(device: &str, key: &SymmetricKey, expiry: u64) -> String {
    let resource = sas::device_resource(HOST, &id(device));
    sas::generate(&resource, key, expiry, None)
        .expect("token")
        .as_str()
        .to_owned()
}

/// A writer that collects everything tracing prints.
#[derive(Clone, Default)]
struct Capture(Arc<Mutex<Vec<u8>>>);

impl Write for Capture {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0
            .lock()
            .map_err(|_| std::io::Error::other("poisoned"))?
            .extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[test]
fn secrets_never_reach_debug_errors_or_tracing() {
    let capture = Capture::default();
    let writer = capture.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_max_level(tracing::Level::TRACE)
        .with_writer(move || writer.clone())
        .with_ansi(false)
        .finish();
    let mut shown = String::new();
    let secret_key = SymmetricKey::generate();
    let key_b64 = secret_key.expose_base64().to_string();
    let passphrase = "correct horse battery staple";
    let now = sas::unix_now();
    let tok = token("dev", &secret_key, now + 600);
    let sig = tok
        .split("sig=")
        .nth(1)
        .and_then(|s| s.split('&').next())
        .expect("sig")
        .to_owned();
    tracing::subscriber::set_global_default(subscriber).expect("the only subscriber");
    {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        rt.block_on(async {
            let dir = tempfile::tempdir().expect("dir");
            let file = FileIdentityStore::open(
                dir.path(),
                FileIdentityStoreConfig::default().compact_after_wal_bytes(1),
            )
            .await
            .expect("open");
            let store: Arc<dyn IdentityStore> = Arc::new(file);
            let keys = Credentials::SymmetricKeys {
                primary: secret_key.clone(),
                secondary: secret_key.clone(),
            };
            let created = store
                .create(NewIdentity::new(id("dev"), keys.clone()))
                .await
                .expect("create");
            shown.push_str(&format!("{created:?} {keys:?}"));
            let pass = Credentials::passphrase(passphrase, &PassphraseParams::INSECURE_FOR_TESTS)
                .expect("hash");
            shown.push_str(&format!("{pass:?}"));
            let phc = match &pass {
                Credentials::Passphrase(h) => h.expose_phc().to_owned(),
                _ => String::new(),
            };
            store
                .create(NewIdentity::new(id("pdev"), pass))
                .await
                .expect("create");
            let auth = Authenticator::new(Arc::clone(&store), HOST);
            for presented in [
                Presented::SasToken(&tok),
                Presented::SymmetricKey(&key_b64),
                Presented::Passphrase(passphrase),
            ] {
                shown.push_str(&format!("{presented:?}"));
                for device in ["dev", "pdev", "ghost"] {
                    match auth.authenticate(&id(device), presented).await {
                        Ok(a) => shown.push_str(&format!("{a:?}")),
                        Err(e) => shown.push_str(&format!("{e} {e:?}")),
                    }
                }
            }
            let expired = auth
                .authenticate_at(&id("dev"), Presented::SasToken(&tok), now + 100_000)
                .await;
            shown.push_str(&format!("{expired:?}"));
            let generated = sas::generate("r", &secret_key, 1, None).expect("token");
            shown.push_str(&format!("{generated:?}"));
            store
                .set_status(&id("dev"), DeviceStatus::disabled("x"), None)
                .await
                .expect("disable");
            drop(auth);
            drop(store);
            let reopened = FileIdentityStore::open(dir.path(), FileIdentityStoreConfig::default())
                .await
                .expect("reopen");
            shown.push_str(&format!("{reopened:?}"));
            assert!(!phc.is_empty());
            shown.push_str("\n--tracing--\n");
            shown.push_str(&String::from_utf8_lossy(&capture.0.lock().expect("lock")));
            for secret in [
                key_b64.as_str(),
                sig.as_str(),
                passphrase,
                phc.as_str(),
                &phc[phc.len() - 20..],
            ] {
                assert!(!shown.contains(secret), "a secret leaked: {secret}");
            }
        });
    }
    assert!(
        shown.contains("authentication refused"),
        "tracing was captured: {shown}"
    );
}
