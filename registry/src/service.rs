//! The `Registry` gRPC service: authenticates the caller, converts requests, calls the
//! lease table, converts replies.
//!
//! Register, KeepAlive and Deregister change state and need a credential
//! ([`concord::identity::authenticate`] against the cluster secret: `UNAUTHENTICATED`
//! without one); the principal it proves is passed to the table, which decides what that
//! principal may do. Resolve, Watch and List only read, are open to any caller, and never
//! carry lease ids.
//!
//! The table sits behind a std `Mutex` (short critical sections, never held across an
//! `.await`). Every change publishes the new revision on a `watch` channel; each `Watch`
//! stream has its own task that recomputes its service's set on a new revision and sends it
//! only when it differs from the last one sent, through a bounded channel (a client that
//! does not read stalls only its own task; a closed channel ends it).

use std::{
    collections::HashMap,
    pin::Pin,
    sync::{Arc, Mutex, MutexGuard},
    time::{Duration, Instant},
};

use concord::identity::{authenticate, Principal, Verifier};
use concord::pb::registry::v1::{
    registry_server::Registry, DeregisterRequest, DeregisterResponse, Instance, KeepAliveRequest,
    KeepAliveResponse, ListRequest, ListResponse, RegisterRequest, RegisterResponse,
    ResolveRequest, ResolveResponse, WatchRequest, WatchResponse,
};
use tokio::sync::{mpsc, watch};
use tokio_stream::{wrappers::ReceiverStream, Stream};
use tonic::{Request, Response, Status};

use crate::{table::validate_service, LeaseTable, EXPIRY_TICK};

/// Messages a slow watcher may have queued before its task waits.
const WATCH_CHANNEL_CAPACITY: usize = 16;

/// State shared by the service, the sweeper and the watch tasks.
pub(crate) struct Shared {
    table: Mutex<LeaseTable>,
    verifier: Verifier,
    revision_tx: watch::Sender<u64>,
    stop_rx: watch::Receiver<bool>,
}

impl Shared {
    pub(crate) fn new(verifier: Verifier, stop_rx: watch::Receiver<bool>) -> Self {
        Self {
            table: Mutex::new(LeaseTable::new()),
            verifier,
            revision_tx: watch::channel(0).0,
            stop_rx,
        }
    }

    /// The principal `request` proves; `UNAUTHENTICATED` when it proves none.
    fn caller<T>(&self, request: &Request<T>) -> Result<Principal, Status> {
        authenticate(request, &self.verifier).map_err(|err| {
            tracing::debug!(%err, "unauthenticated registry call");
            Status::from(err)
        })
    }

    fn table(&self) -> MutexGuard<'_, LeaseTable> {
        // A panic while holding the lock cannot leave the table half-changed (each
        // method validates before mutating), so a poisoned lock is safe to reuse.
        self.table.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Every live instance and the table's revision, for the metrics page.
    pub(crate) fn snapshot(&self) -> (Vec<Instance>, u64) {
        let table = self.table();
        (table.list(), table.revision())
    }

    /// Open `Watch` streams (each holds one subscription to the revision).
    pub(crate) fn watchers(&self) -> usize {
        self.revision_tx.receiver_count()
    }

    /// Runs `change` on the table and tells watchers if the revision moved.
    fn update<T>(&self, change: impl FnOnce(&mut LeaseTable) -> T) -> T {
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

/// Sweeps expired leases every [`EXPIRY_TICK`] until shutdown.
pub(crate) async fn sweep_expired(shared: Arc<Shared>, mut stop_rx: watch::Receiver<bool>) {
    let mut tick = tokio::time::interval(EXPIRY_TICK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {
                let gone = shared.update(|table| table.expire(Instant::now()));
                for instance in gone {
                    crate::metrics::lease_expired();
                    tracing::info!(service = %instance.service, address = %instance.address, "lease expired");
                }
            }
            _ = stop_rx.wait_for(|stop| *stop) => return,
        }
    }
}

/// The gRPC face of the registry.
pub struct RegistryService {
    shared: Arc<Shared>,
}

impl RegistryService {
    pub(crate) fn new(shared: Arc<Shared>) -> Self {
        Self { shared }
    }
}

type WatchStream = Pin<Box<dyn Stream<Item = Result<WatchResponse, Status>> + Send>>;

#[tonic::async_trait]
impl Registry for RegistryService {
    async fn register(
        &self,
        request: Request<RegisterRequest>,
    ) -> Result<Response<RegisterResponse>, Status> {
        let caller = self.shared.caller(&request)?;
        let req = request.into_inner();
        let ttl = Duration::from_millis(req.ttl_ms);
        let instance = self.shared.update(|table| {
            table.register(
                &caller,
                &req.service,
                &req.address,
                req.metadata,
                ttl,
                Instant::now(),
            )
        })?;
        tracing::info!(service = %instance.service, address = %instance.address, principal = %caller, ttl_ms = req.ttl_ms, "instance registered");
        Ok(Response::new(RegisterResponse {
            lease_id: instance.lease_id,
            ttl_ms: req.ttl_ms,
            expires_at_unix_ms: instance.expires_at_unix_ms,
        }))
    }

    async fn keep_alive(
        &self,
        request: Request<KeepAliveRequest>,
    ) -> Result<Response<KeepAliveResponse>, Status> {
        let caller = self.shared.caller(&request)?;
        let req = request.into_inner();
        let metadata: Option<HashMap<String, String>> = req.metadata.map(|m| m.entries);
        let instance = self
            .shared
            .update(|table| table.keep_alive(&caller, &req.lease_id, metadata, Instant::now()))?;
        tracing::trace!(lease = %req.lease_id, "lease renewed");
        Ok(Response::new(KeepAliveResponse {
            ttl_ms: u64::try_from(instance.expires_at_unix_ms - now_ms()).unwrap_or(0),
            expires_at_unix_ms: instance.expires_at_unix_ms,
        }))
    }

    async fn deregister(
        &self,
        request: Request<DeregisterRequest>,
    ) -> Result<Response<DeregisterResponse>, Status> {
        let caller = self.shared.caller(&request)?;
        let req = request.into_inner();
        let instance = self
            .shared
            .update(|table| table.deregister(&caller, &req.lease_id))?;
        tracing::info!(service = %instance.service, address = %instance.address, principal = %caller, "instance deregistered");
        Ok(Response::new(DeregisterResponse {}))
    }

    async fn resolve(
        &self,
        request: Request<ResolveRequest>,
    ) -> Result<Response<ResolveResponse>, Status> {
        let req = request.into_inner();
        validate_service(&req.service)?;
        let instances = self.shared.table().resolve(&req.service);
        Ok(Response::new(ResolveResponse { instances }))
    }

    type WatchStream = WatchStream;

    async fn watch(
        &self,
        request: Request<WatchRequest>,
    ) -> Result<Response<Self::WatchStream>, Status> {
        let service = request.into_inner().service;
        validate_service(&service)?;
        let (updates_tx, updates_rx) = mpsc::channel(WATCH_CHANNEL_CAPACITY);
        let shared = self.shared.clone();
        tracing::debug!(%service, "watch opened");
        tokio::spawn(feed_watch(shared, service, updates_tx));
        Ok(Response::new(Box::pin(ReceiverStream::new(updates_rx))))
    }

    async fn list(&self, _request: Request<ListRequest>) -> Result<Response<ListResponse>, Status> {
        let table = self.shared.table();
        Ok(Response::new(ListResponse {
            instances: table.list(),
            revision: table.revision(),
        }))
    }
}

/// Sends `service`'s instance set now and after every change, until the client goes away
/// or the server stops.
async fn feed_watch(
    shared: Arc<Shared>,
    service: String,
    updates_tx: mpsc::Sender<Result<WatchResponse, Status>>,
) {
    let mut revision_rx = shared.revision_tx.subscribe();
    let mut stop_rx = shared.stop_rx.clone();
    // Compared without expiry times, which move on every renewal and are not a change.
    let mut last_sent: Option<Vec<Instance>> = None;
    loop {
        revision_rx.borrow_and_update();
        let (instances, revision) = {
            let table = shared.table();
            (table.resolve(&service), table.revision())
        };
        let visible: Vec<Instance> = instances
            .iter()
            .map(|i| Instance {
                expires_at_unix_ms: 0,
                ..i.clone()
            })
            .collect();
        if last_sent.as_ref() != Some(&visible) {
            let update = WatchResponse {
                instances: instances.clone(),
                revision,
            };
            if updates_tx.send(Ok(update)).await.is_err() {
                tracing::debug!(%service, "watcher went away");
                return;
            }
            last_sent = Some(visible);
        }
        tokio::select! {
            changed = revision_rx.changed() => if changed.is_err() { return },
            _ = stop_rx.wait_for(|stop| *stop) => return,
            () = updates_tx.closed() => return,
        }
    }
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}
