//! The `Registry` gRPC service: authenticates the caller, converts requests, calls the
//! lease table, converts replies.
//!
//! Register, KeepAlive and Deregister change state and need a credential
//! ([`concord::identity::authenticate`] against the cluster secret: `UNAUTHENTICATED`
//! without one); the principal it proves is passed to the table, which decides what that
//! principal may do. Resolve, Watch and List only read, are open to any caller, and never
//! carry lease ids.
//!
//! The leases live in a [`Store`] (in memory, or etcd). Every change moves the store's
//! change counter; each `Watch` stream has its own task that re-resolves its service when
//! it moves and sends the set only when it differs from the last one sent, through a
//! bounded channel (a client that does not read stalls only its own task; a closed channel
//! ends it; a store that cannot answer ends the stream with `UNAVAILABLE`, and the client
//! reopens it, possibly at another registry).

use std::{
    collections::HashMap,
    pin::Pin,
    sync::atomic::{AtomicUsize, Ordering},
    sync::Arc,
    time::Duration,
};

use concord::identity::{authenticate, Principal, Verifier};
use concord::pb::registry::v1::{
    registry_server::Registry, DeregisterRequest, DeregisterResponse, Instance, KeepAliveRequest,
    KeepAliveResponse, ListRequest, ListResponse, RegisterRequest, RegisterResponse,
    ResolveRequest, ResolveResponse, WatchRequest, WatchResponse,
};
use tokio::sync::mpsc;
use tokio_stream::{wrappers::ReceiverStream, Stream};
use tokio_util::{sync::CancellationToken, task::TaskTracker};
use tonic::{Request, Response, Status};

use crate::{
    store::{MemoryStore, NewLease, Store},
    table::validate_service,
    EXPIRY_TICK,
};

/// A gap between two sweeps that means the registry process itself was stalled.
const STALL: Duration = Duration::from_millis(500);

/// Messages a slow watcher may have queued before its task waits.
const WATCH_CHANNEL_CAPACITY: usize = 16;

/// State shared by the service, the sweeper and the watch tasks.
pub(crate) struct Shared {
    store: Store,
    verifier: Verifier,
    /// Cancelled when the server stops: every task below ends.
    stop: CancellationToken,
    /// The Watch feeders, joined on shutdown with the other tasks.
    tasks: TaskTracker,
    /// What the metrics page shows ([`Shared::snapshot`]).
    metrics_view: std::sync::Mutex<(Vec<Instance>, u64)>,
    /// Open Watch streams.
    watchers: AtomicUsize,
}

impl Shared {
    pub(crate) fn new(
        store: Store,
        verifier: Verifier,
        stop: CancellationToken,
        tasks: TaskTracker,
    ) -> Self {
        Self {
            store,
            verifier,
            stop,
            tasks,
            metrics_view: std::sync::Mutex::new((Vec::new(), 0)),
            watchers: AtomicUsize::new(0),
        }
    }

    /// The principal `request` proves; `UNAUTHENTICATED` when it proves none.
    fn caller<T>(&self, request: &Request<T>) -> Result<Principal, Status> {
        authenticate(request, &self.verifier).map_err(|err| {
            tracing::debug!(%err, "unauthenticated registry call");
            Status::from(err)
        })
    }

    /// Every live instance and the store revision, as last seen by [`follow_for_metrics`]
    /// (the metrics page is encoded synchronously; the etcd store answers only async).
    pub(crate) fn snapshot(&self) -> (Vec<Instance>, u64) {
        self.metrics_view
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Open `Watch` streams.
    pub(crate) fn watchers(&self) -> usize {
        self.watchers.load(Ordering::Relaxed)
    }
}

/// Sweeps expired leases every [`EXPIRY_TICK`] until shutdown. A sweep that comes more
/// than [`STALL`] after the previous one means this process was stalled (stopped,
/// starved, suspended): it could not have seen renewals meanwhile, so every lease gets a
/// fresh TTL instead of expiring; while the table counts itself isolated (nobody reached
/// it for half a TTL) nothing expires (see `table`, "A silent registry expires nothing").
pub(crate) async fn sweep_expired(shared: Arc<MemoryStore>, stop: CancellationToken) {
    let mut tick = tokio::time::interval(EXPIRY_TICK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // tokio's clock (the same as std's outside tests), so a test can pause and jump it.
    let mut last_sweep = tokio::time::Instant::now().into_std();
    loop {
        tokio::select! {
            _ = tick.tick() => {
                let now = tokio::time::Instant::now().into_std();
                let gap = now.saturating_duration_since(last_sweep);
                last_sweep = now;
                if gap > STALL {
                    tracing::warn!(gap_ms = u64::try_from(gap.as_millis()).unwrap_or(u64::MAX), "registry was stalled; every lease gets a fresh TTL");
                    shared.update(|table| table.grace(now));
                    continue;
                }
                let gone = shared.update(|table| {
                    if table.is_isolated(now) { Vec::new() } else { table.expire(now) }
                });
                for instance in gone {
                    crate::metrics::lease_expired();
                    tracing::info!(service = %instance.service, address = %instance.address, "lease expired");
                }
            }
            () = stop.cancelled() => return,
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
        let instance = self
            .shared
            .store
            .register(NewLease {
                owner: &caller,
                service: &req.service,
                address: &req.address,
                metadata: req.metadata,
                ttl,
            })
            .await?;
        tracing::info!(service = %instance.service, address = %instance.address, principal = %caller, ttl_ms = req.ttl_ms, "instance registered");
        Ok(Response::new(RegisterResponse {
            lease_id: instance.lease_id,
            ttl_ms: u64::try_from(instance.expires_at_unix_ms - instance.registered_at_unix_ms)
                .unwrap_or(req.ttl_ms),
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
            .store
            .keep_alive(&caller, &req.lease_id, metadata)
            .await?;
        tracing::trace!(lease = %req.lease_id, "lease renewed");
        Ok(Response::new(KeepAliveResponse {
            ttl_ms: u64::try_from(instance.expires_at_unix_ms - concord::clock::unix_ms())
                .unwrap_or(0),
            expires_at_unix_ms: instance.expires_at_unix_ms,
        }))
    }

    async fn deregister(
        &self,
        request: Request<DeregisterRequest>,
    ) -> Result<Response<DeregisterResponse>, Status> {
        let caller = self.shared.caller(&request)?;
        let req = request.into_inner();
        let instance = self.shared.store.deregister(&caller, &req.lease_id).await?;
        tracing::info!(service = %instance.service, address = %instance.address, principal = %caller, "instance deregistered");
        Ok(Response::new(DeregisterResponse {}))
    }

    async fn resolve(
        &self,
        request: Request<ResolveRequest>,
    ) -> Result<Response<ResolveResponse>, Status> {
        let req = request.into_inner();
        validate_service(&req.service)?;
        let (instances, _) = self.shared.store.resolve(&req.service).await?;
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
        self.shared
            .tasks
            .spawn(feed_watch(shared, service, updates_tx));
        Ok(Response::new(Box::pin(ReceiverStream::new(updates_rx))))
    }

    async fn list(&self, _request: Request<ListRequest>) -> Result<Response<ListResponse>, Status> {
        let (instances, revision) = self.shared.store.list().await?;
        Ok(Response::new(ListResponse {
            instances,
            revision,
        }))
    }
}

/// Counts an open Watch stream until dropped.
struct WatcherGuard(Arc<Shared>);

impl Drop for WatcherGuard {
    fn drop(&mut self) {
        self.0.watchers.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Keeps the metrics page's view of the store ([`Shared::snapshot`]) current: reads the
/// whole instance set after every change, until the server stops.
pub(crate) async fn follow_for_metrics(shared: Arc<Shared>) {
    let mut changes_rx = shared.store.changes();
    let stop = shared.stop.clone();
    loop {
        changes_rx.borrow_and_update();
        if let Ok(view) = shared.store.list().await {
            *shared
                .metrics_view
                .lock()
                .unwrap_or_else(|p| p.into_inner()) = view;
        }
        tokio::select! {
            changed = changes_rx.changed() => if changed.is_err() { return },
            () = stop.cancelled() => return,
        }
    }
}

/// Sends `service`'s instance set now and after every change, until the client goes away,
/// the store cannot answer, or the server stops.
async fn feed_watch(
    shared: Arc<Shared>,
    service: String,
    updates_tx: mpsc::Sender<Result<WatchResponse, Status>>,
) {
    let mut changes_rx = shared.store.changes();
    let stop = shared.stop.clone();
    shared.watchers.fetch_add(1, Ordering::Relaxed);
    let _open = WatcherGuard(Arc::clone(&shared));
    // Compared without expiry times, which move on every renewal and are not a change.
    let mut last_sent: Option<Vec<Instance>> = None;
    loop {
        changes_rx.borrow_and_update();
        let (instances, revision) = match shared.store.resolve(&service).await {
            Ok(found) => found,
            Err(err) => {
                tracing::warn!(%service, %err, "watch ends: the store cannot answer");
                let _ = updates_tx.send(Err(Status::from(err))).await;
                return;
            }
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
            changed = changes_rx.changed() => if changed.is_err() { return },
            () = stop.cancelled() => return,
            () = updates_tx.closed() => return,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A stalled registry process (here: the clock jumps 3 TTLs between two sweeps) gives
    /// every lease a fresh TTL instead of expiring it; a holder that then stays silent
    /// expires two TTLs later.
    #[tokio::test(start_paused = true)]
    async fn a_stall_gives_every_lease_a_fresh_ttl() {
        let memory = Arc::new(MemoryStore::new());
        let ttl = Duration::from_secs(1);
        let start = tokio::time::Instant::now().into_std();
        memory
            .update(|table| {
                table.register(
                    &Principal::Gateway,
                    "gateway",
                    "127.0.0.1:1",
                    HashMap::new(),
                    ttl,
                    start,
                )
            })
            .expect("register");
        let stop = CancellationToken::new();
        let sweeper = tokio::spawn(sweep_expired(memory.clone(), stop.clone()));
        tokio::time::sleep(EXPIRY_TICK).await;
        // The stall: no sweep for 3 s.
        tokio::time::advance(ttl * 3).await;
        tokio::time::sleep(EXPIRY_TICK * 2).await;
        assert_eq!(
            memory.table().resolve("gateway").len(),
            1,
            "expired after a stall"
        );
        // Silent for the whole grace (two TTLs) after it: gone.
        tokio::time::sleep(ttl * 2 + EXPIRY_TICK * 2).await;
        assert!(
            memory.table().resolve("gateway").is_empty(),
            "grace is two TTLs, not forever"
        );
        stop.cancel();
        sweeper.await.expect("sweeper ends");
    }
}
