//! Where the registry keeps its leases: [`Store::Memory`] (one process, the default: a
//! laptop needs nothing installed) or [`Store::Etcd`] (several registry instances share one
//! etcd cluster). Both apply the same admission rules, those of `table`; the service calls
//! the store and never knows which one it has.
//!
//! Every change a watcher could see moves the counter [`Store::changes`] publishes; a
//! `Watch` task re-resolves its service when it moves and sends the set only when it
//! differs from the last one sent, so a spurious move costs a lookup, never a message.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex, MutexGuard},
    time::{Duration, Instant},
};

use concord::{identity::Principal, pb::registry::v1::Instance};
use tokio::sync::watch;

use crate::{etcd_store::EtcdStore, LeaseTable, RegistryError};

/// The registry's lease store.
pub(crate) enum Store {
    /// In this process only; gone on restart (clients register again).
    Memory(Arc<MemoryStore>),
    /// In etcd, shared by every registry instance pointed at it.
    Etcd(EtcdStore),
}

/// A registration as the service hands it to the store.
pub(crate) struct NewLease<'a> {
    /// Who registers (the lease's owner).
    pub owner: &'a Principal,
    /// Service name.
    pub service: &'a str,
    /// Address clients dial.
    pub address: &'a str,
    /// Published labels.
    pub metadata: HashMap<String, String>,
    /// Asked TTL.
    pub ttl: Duration,
}

impl Store {
    /// Adds an instance under a new lease; the returned copy carries the lease id.
    pub(crate) async fn register(&self, lease: NewLease<'_>) -> Result<Instance, RegistryError> {
        match self {
            Store::Memory(memory) => memory.update(|table| {
                table.register(
                    lease.owner,
                    lease.service,
                    lease.address,
                    lease.metadata,
                    lease.ttl,
                    Instant::now(),
                )
            }),
            Store::Etcd(etcd) => etcd.register(lease).await,
        }
    }

    /// Renews `owner`'s lease, replacing its metadata when given; the instance's
    /// `expires_at_unix_ms` is the new expiry.
    pub(crate) async fn keep_alive(
        &self,
        owner: &Principal,
        lease_id: &str,
        metadata: Option<HashMap<String, String>>,
    ) -> Result<Instance, RegistryError> {
        match self {
            Store::Memory(memory) => {
                memory.update(|table| table.keep_alive(owner, lease_id, metadata, Instant::now()))
            }
            Store::Etcd(etcd) => etcd.keep_alive(owner, lease_id, metadata).await,
        }
    }

    /// Removes `owner`'s lease now.
    pub(crate) async fn deregister(
        &self,
        owner: &Principal,
        lease_id: &str,
    ) -> Result<Instance, RegistryError> {
        match self {
            Store::Memory(memory) => memory.update(|table| table.deregister(owner, lease_id)),
            Store::Etcd(etcd) => etcd.deregister(owner, lease_id).await,
        }
    }

    /// Live instances of `service`, oldest first, and the store revision they were read at.
    pub(crate) async fn resolve(
        &self,
        service: &str,
    ) -> Result<(Vec<Instance>, u64), RegistryError> {
        match self {
            Store::Memory(memory) => {
                let table = memory.table();
                Ok((table.resolve(service), table.revision()))
            }
            Store::Etcd(etcd) => etcd.instances(Some(service)).await,
        }
    }

    /// Every live instance, by service then age, and the store revision.
    pub(crate) async fn list(&self) -> Result<(Vec<Instance>, u64), RegistryError> {
        match self {
            Store::Memory(memory) => {
                let table = memory.table();
                Ok((table.list(), table.revision()))
            }
            Store::Etcd(etcd) => etcd.instances(None).await,
        }
    }

    /// A receiver of the change counter (module docs).
    pub(crate) fn changes(&self) -> watch::Receiver<u64> {
        match self {
            Store::Memory(memory) => memory.revision_tx.subscribe(),
            Store::Etcd(etcd) => etcd.changes(),
        }
    }
}

/// The in-memory store: the lease table behind a std `Mutex` (short critical sections,
/// never held across an `.await`), expired by the service's sweeper.
pub(crate) struct MemoryStore {
    table: Mutex<LeaseTable>,
    revision_tx: watch::Sender<u64>,
}

impl MemoryStore {
    /// An empty store.
    pub(crate) fn new() -> Self {
        Self {
            table: Mutex::new(LeaseTable::new()),
            revision_tx: watch::channel(0).0,
        }
    }

    pub(crate) fn table(&self) -> MutexGuard<'_, LeaseTable> {
        // A panic while holding the lock cannot leave the table half-changed (each
        // method validates before mutating), so a poisoned lock is safe to reuse.
        self.table.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Runs `change` on the table and tells watchers if the revision moved.
    pub(crate) fn update<T>(&self, change: impl FnOnce(&mut LeaseTable) -> T) -> T {
        let (result, revision) = {
            let mut table = self.table();
            let result = change(&mut table);
            (result, table.revision())
        };
        self.revision_tx.send_if_modified(|current| {
            let moved = *current != revision;
            *current = revision;
            moved
        });
        result
    }
}
