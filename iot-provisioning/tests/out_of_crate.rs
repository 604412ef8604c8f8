//! A `Journal` written the way an integrator would write one: outside this crate, over a
//! `Mutex<BTreeMap>` standing in for a table of their database, using only the public API. It
//! must pass the journal suite (twice over one "database", across reopens), and a `Provisioner`
//! over it and over an out-of-crate identity store (the one `iot-identity`'s out-of-crate test
//! runs the identity suite on) must pass the provisioning suite.

#[path = "../../iot-identity/tests/support/btreemap_store.rs"]
mod btreemap_store;

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, MutexGuard};

use async_trait::async_trait;
use btreemap_store::{BTreeMapStore, Db};
use iot_identity::IdentityStore;
use iot_provisioning::testkit::journal::{self, JournalFactory};
use iot_provisioning::testkit::{self, FaultPlan, FaultyJournal, ProvisioningFactory};
use iot_provisioning::{Error, Intent, Journal, Provisioner, Provisioning, Result};
use iot_registry::{MemoryRegistry, Registry};

/// The journal's "table": it outlives every handle, as a database outlives a process.
#[derive(Debug, Default)]
struct Table {
    /// The unfinished intents by sequence number.
    pending: BTreeMap<u64, Intent>,
    /// The last number given out. Kept with the rows, so numbers keep growing after a restart
    /// even when no row is left.
    last_seq: u64,
}

#[derive(Debug)]
struct BTreeMapJournal {
    table: Arc<Mutex<Table>>,
}

impl BTreeMapJournal {
    /// A poisoned lock is reported as the backend's failure, the way a driver error would be.
    fn table(&self) -> Result<MutexGuard<'_, Table>> {
        self.table.lock().map_err(|_| {
            Error::backend(
                "btreemap journal",
                "a writer panicked holding the lock",
                false,
            )
        })
    }
}

// Every write here is durable when it returns, so `finish_unsynced` and `sync` keep their
// provided meanings (a plain `finish`, nothing to do).
#[async_trait]
impl Journal for BTreeMapJournal {
    async fn begin(&self, intent: &Intent) -> Result<u64> {
        let mut table = self.table()?;
        let seq = table.last_seq.checked_add(1).ok_or_else(|| {
            Error::backend("btreemap journal", "sequence numbers exhausted", false)
        })?;
        table.last_seq = seq;
        table.pending.insert(seq, intent.clone());
        Ok(seq)
    }

    async fn finish(&self, seq: u64) -> Result<()> {
        self.table()?.pending.remove(&seq);
        Ok(())
    }

    async fn pending(&self) -> Result<Vec<(u64, Intent)>> {
        Ok(self
            .table()?
            .pending
            .iter()
            .map(|(seq, intent)| (*seq, intent.clone()))
            .collect())
    }
}

/// Handles on one shared table; a reopen is a new handle on the same rows.
#[derive(Default)]
struct Journals {
    table: Arc<Mutex<Table>>,
}

#[async_trait]
impl JournalFactory for Journals {
    async fn open(&self) -> Result<Arc<dyn Journal>> {
        Ok(Arc::new(BTreeMapJournal {
            table: Arc::clone(&self.table),
        }))
    }

    async fn reopen(&self, previous: Arc<dyn Journal>) -> Option<Result<Arc<dyn Journal>>> {
        drop(previous);
        Some(self.open().await)
    }
}

#[tokio::test]
async fn a_btreemap_journal_passes_the_suite_twice_over_one_table() {
    let factory = Journals::default();
    journal::run_all(&factory).await;
    journal::run_all(&factory).await;
    let table = factory.table.lock().expect("table");
    assert!(table.pending.is_empty(), "the suite finishes what it began");
    assert!(table.last_seq > 20, "both runs wrote");
}

#[tokio::test]
async fn a_btreemap_journal_passes_the_suite_behind_the_fault_wrapper() {
    struct Counted(Journals, Arc<FaultPlan>);

    #[async_trait]
    impl JournalFactory for Counted {
        async fn open(&self) -> Result<Arc<dyn Journal>> {
            let inner = BTreeMapJournal {
                table: Arc::clone(&self.0.table),
            };
            Ok(Arc::new(FaultyJournal::new(inner, Arc::clone(&self.1))))
        }
    }

    let plan = FaultPlan::counting();
    journal::run_all(&Counted(Journals::default(), Arc::clone(&plan))).await;
    assert!(plan.calls() > 20);
}

const HOST: &str = "hub.example.net";

/// A provisioner over the out-of-crate identity store and journal (and the memory registry),
/// opened afresh over the same data each time, as a restarted service would be.
struct Provisioners {
    identity: Arc<Mutex<Db>>,
    registry: Arc<MemoryRegistry>,
    journal: Journals,
}

#[async_trait]
impl ProvisioningFactory for Provisioners {
    async fn open(&self) -> Result<Arc<dyn Provisioning>> {
        let identity = Arc::new(BTreeMapStore::new(Arc::clone(&self.identity)));
        let provisioner = Provisioner::builder(identity, self.registry.clone())
            .journal(self.journal.open().await?)
            .host(HOST)
            .bulk_batch(3)
            .open()
            .await?;
        Ok(Arc::new(provisioner))
    }

    fn host(&self) -> &str {
        HOST
    }

    fn stores(&self) -> Option<(Arc<dyn IdentityStore>, Arc<dyn Registry>)> {
        let identity = BTreeMapStore::new(Arc::clone(&self.identity));
        Some((Arc::new(identity), self.registry.clone()))
    }
}

#[tokio::test]
async fn a_provisioner_over_out_of_crate_stores_passes_the_suite_twice() {
    let factory = Provisioners {
        identity: Arc::default(),
        registry: Arc::new(MemoryRegistry::new()),
        journal: Journals::default(),
    };
    testkit::run_all(&factory).await;
    testkit::run_all(&factory).await;
    let (identity, registry) = factory.stores().expect("stores");
    let devices = testkit::assert_agreement(identity.as_ref(), registry.as_ref()).await;
    assert!(devices > 40, "both runs registered devices: {devices}");
}

/// The journal suite catches a backend that restarts its numbering after a reopen (a counter
/// kept in memory next to rows kept on disk).
#[tokio::test]
#[should_panic(expected = "a begin after a reopen numbers")]
async fn the_journal_suite_catches_numbers_reused_after_a_reopen() {
    let table = Arc::new(Mutex::new(Table::default()));
    let first: Arc<dyn Journal> = Arc::new(BTreeMapJournal {
        table: Arc::clone(&table),
    });
    journal::survives_reopen(first, |first| async move {
        drop(first);
        let pending = table.lock().map(|t| t.pending.clone()).unwrap_or_default();
        let forgetful = Table {
            pending,
            last_seq: 0,
        };
        Some(Arc::new(BTreeMapJournal {
            table: Arc::new(Mutex::new(forgetful)),
        }) as Arc<dyn Journal>)
    })
    .await;
}
