//! Registry clients: [`LeaseKeeper`] keeps one registration alive, [`ServiceWatch`] follows
//! one service's instance set.
//!
//! Both run as background tasks and survive registry restarts: a `KeepAlive` answered
//! `NOT_FOUND` (the registry forgot the lease) registers again at once, so a restarted
//! registry knows every live process again within one heartbeat; a broken `Watch` stream is
//! reopened with capped exponential backoff. While the registry is unreachable a watcher
//! keeps the last set it saw (stale but usable) rather than emptying it.
//!
//! **Several registries.** Every registry address these take may be a comma-separated list
//! (`--registry a,b`, [`Registries`]). Calls go to the registry that answered last; one that
//! stops answering (no answer within [`CALL_TIMEOUT`], `UNAVAILABLE`, a broken stream) is
//! left for the next one at once. The keeper keeps its lease id when it moves: with the
//! registries sharing one etcd the lease lives in etcd, so the next registry renews it (no
//! re-registration storm, no gap in which watchers see the instance vanish, no spurious
//! failover); registries with in-memory stores do not share leases, so the next one answers
//! `NOT_FOUND` and the keeper registers again, as after a restart. A watcher that moves opens
//! a new stream (its [`WatchSnapshot::stream`] moves on).

use std::{
    collections::HashMap,
    sync::{
        atomic::{AtomicUsize, Ordering},
        Arc,
    },
    time::{Duration, Instant},
};

use tokio::{sync::watch, task::JoinHandle};
use tokio_util::sync::CancellationToken;
use tonic::{transport::Channel, Code};

use crate::retry::RetryPolicy;

use crate::pb::registry::v1::{
    registry_client::RegistryClient, DeregisterRequest, Instance, KeepAliveRequest, Metadata,
    RegisterRequest, WatchRequest,
};

/// Longest wait between two attempts to reach the registry.
pub const MAX_BACKOFF: Duration = Duration::from_secs(2);
/// First wait after a failed attempt.
pub const MIN_BACKOFF: Duration = Duration::from_millis(100);
/// How the registry clients retry: [`MIN_BACKOFF`] doubling to [`MAX_BACKOFF`].
pub const RETRY: RetryPolicy = RetryPolicy::new(MIN_BACKOFF, MAX_BACKOFF);
/// Time limit of one Register/KeepAlive/Deregister call.
pub const CALL_TIMEOUT: Duration = Duration::from_secs(1);

/// The addresses in a registry list (`a,b`, spaces allowed).
pub fn registry_addrs(list: &str) -> Vec<&str> {
    list.split(',')
        .map(str::trim)
        .filter(|addr| !addr.is_empty())
        .collect()
}

/// Clients of every registry in a list, and which one answered last; cheap to clone (the
/// clones share the choice).
#[derive(Clone)]
pub struct Registries {
    clients: Arc<[(String, RegistryClient<Channel>)]>,
    current: Arc<AtomicUsize>,
}

impl Registries {
    /// Lazy channels to every registry in `list` (module docs, "Several registries").
    pub fn connect(list: &str) -> Result<Self, tonic::transport::Error> {
        Self::connect_with(list, |addr| {
            crate::grpc::lazy_channel_to(addr, &crate::identity::Principal::Registry)
        })
    }

    /// Like [`connect`](Self::connect), with channels that ping every registry every
    /// [`WATCH_LIVENESS`] and drop a connection whose ping goes unanswered as long: for
    /// Watch streams, whose silence must not pass for "nothing changed".
    pub fn connect_watching(list: &str) -> Result<Self, tonic::transport::Error> {
        Self::connect_with(list, |addr| {
            crate::grpc::watch_channel_to(
                addr,
                &crate::identity::Principal::Registry,
                WATCH_LIVENESS,
            )
        })
    }

    fn connect_with(
        list: &str,
        channel: impl Fn(&str) -> Result<Channel, tonic::transport::Error>,
    ) -> Result<Self, tonic::transport::Error> {
        let mut clients = Vec::new();
        for addr in registry_addrs(list) {
            clients.push((addr.to_owned(), RegistryClient::new(channel(addr)?)));
        }
        if clients.is_empty() {
            // An empty list dials nothing that answers; keep the old error for it.
            clients.push((list.to_owned(), RegistryClient::new(channel(list)?)));
        }
        Ok(Self {
            clients: clients.into(),
            current: Arc::new(AtomicUsize::new(0)),
        })
    }

    /// How many registries the list has.
    pub fn len(&self) -> usize {
        self.clients.len()
    }

    /// Whether the list is empty (never: [`Registries::connect`] keeps at least one).
    pub fn is_empty(&self) -> bool {
        self.clients.is_empty()
    }

    /// The registry to call now: its index, address and client.
    pub fn current(&self) -> (usize, &str, RegistryClient<Channel>) {
        let index = self.current.load(Ordering::Relaxed) % self.clients.len();
        let (addr, client) = &self.clients[index];
        (index, addr, client.clone())
    }

    /// Registry `index` stopped answering: move on to the next one, unless someone already
    /// did. Returns whether there is another registry to try.
    pub fn failed(&self, index: usize) -> bool {
        let next = (index + 1) % self.clients.len();
        if self
            .current
            .compare_exchange(index, next, Ordering::Relaxed, Ordering::Relaxed)
            .is_ok()
            && next != index
        {
            tracing::warn!(from = %self.clients[index].0, to = %self.clients[next].0, "registry stopped answering; moving to the next");
        }
        self.clients.len() > 1
    }

    /// `Resolve(service)` at the first registry that answers within `timeout`, starting
    /// with the current one; the last error when none does.
    pub async fn resolve(
        &self,
        service: &str,
        timeout: Duration,
    ) -> Result<Vec<Instance>, tonic::Status> {
        let mut last = tonic::Status::unavailable("no registry configured");
        for _ in 0..self.clients.len() {
            let (index, addr, mut client) = self.current();
            let request = crate::pb::registry::v1::ResolveRequest {
                service: service.to_owned(),
            };
            match tokio::time::timeout(timeout, client.resolve(request)).await {
                Ok(Ok(reply)) => return Ok(reply.into_inner().instances),
                Ok(Err(status)) if !stopped_answering(&status) => return Err(status),
                Ok(Err(status)) => last = status,
                Err(_) => {
                    last =
                        tonic::Status::deadline_exceeded(format!("registry {addr} did not answer"))
                }
            }
            self.failed(index);
        }
        Err(last)
    }
}

/// Counts moves from registry to registry since the last answer, so that a retry goes out
/// at once to each other registry but backs off once all of them failed in a row.
struct Hops {
    count: usize,
    registries: usize,
}

impl Hops {
    fn new(registries: usize) -> Self {
        Self {
            count: 0,
            registries,
        }
    }

    /// A call failed and `moved` says whether it moved to another registry; true when the
    /// retry may go out at once (not every registry has failed in a row yet).
    fn failed(&mut self, moved: bool) -> bool {
        if !moved {
            return false;
        }
        self.count += 1;
        !self.count.is_multiple_of(self.registries)
    }

    fn answered(&mut self) {
        self.count = 0;
    }
}

/// Whether a failed call means the registry (or its store) stopped answering, so that the
/// next registry should be tried, rather than an answer every registry would repeat.
fn stopped_answering(status: &tonic::Status) -> bool {
    matches!(
        status.code(),
        Code::Unavailable | Code::Unknown | Code::Cancelled | Code::DeadlineExceeded
    )
}

/// What to publish in the registry.
#[derive(Clone, Debug)]
pub struct Registration {
    /// Service name, e.g. "predictor".
    pub service: String,
    /// Address clients dial.
    pub address: String,
    /// Labels published with the instance.
    pub metadata: HashMap<String, String>,
    /// Lease TTL; the keeper renews at a third of it.
    pub ttl: Duration,
    /// The credential every Register/KeepAlive/Deregister carries (the registry refuses
    /// anonymous registrations; `None` only for a registry that does not check).
    pub credential: Option<crate::identity::Credential>,
}

impl Registration {
    /// A tonic request carrying this registration's credential.
    fn request<T>(&self, message: T) -> tonic::Request<T> {
        let mut request = tonic::Request::new(message);
        if let Some(credential) = &self.credential {
            credential.attach(&mut request);
        }
        request
    }
}

/// Metadata the registry refused (`FAILED_PRECONDITION`: e.g. a primary claim for a term
/// another instance holds); the registry keeps what it had before.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rejection {
    /// The metadata that was refused.
    pub metadata: HashMap<String, String>,
    /// The registry's reason.
    pub message: String,
}

/// Keeps a registration alive in the background until [`LeaseKeeper::deregister`] or drop.
pub struct LeaseKeeper {
    metadata_tx: watch::Sender<HashMap<String, String>>,
    stop: CancellationToken,
    task: Option<JoinHandle<()>>,
    lease_rx: watch::Receiver<Option<String>>,
    valid_until_rx: watch::Receiver<Option<Instant>>,
    accepted_rx: watch::Receiver<HashMap<String, String>>,
    rejected_rx: watch::Receiver<Option<Rejection>>,
}

impl LeaseKeeper {
    /// Starts registering `registration` with the registry at `registry_addr` (or the
    /// first of a comma-separated list that answers: module docs, "Several registries").
    pub fn spawn(
        registry_addr: &str,
        registration: Registration,
    ) -> Result<Self, tonic::transport::Error> {
        let registries = Registries::connect(registry_addr)?;
        let (metadata_tx, metadata_rx) = watch::channel(registration.metadata.clone());
        let (lease_tx, lease_rx) = watch::channel(None);
        let (valid_until_tx, valid_until_rx) = watch::channel(None);
        let (accepted_tx, accepted_rx) = watch::channel(HashMap::new());
        let (rejected_tx, rejected_rx) = watch::channel(None);
        let stop = CancellationToken::new();
        let task = tokio::spawn(keep_alive_loop(
            registries,
            registration,
            metadata_rx,
            LeaseState {
                lease_tx,
                valid_until_tx,
                accepted_tx,
                rejected_tx,
            },
            stop.clone(),
        ));
        Ok(Self {
            metadata_tx,
            stop,
            task: Some(task),
            lease_rx,
            valid_until_rx,
            accepted_rx,
            rejected_rx,
        })
    }

    /// Replaces the published metadata; pushed to the registry at once when it differs
    /// from the last one asked for.
    pub fn set_metadata(&self, metadata: HashMap<String, String>) {
        self.metadata_tx.send_if_modified(|current| {
            let changed = *current != metadata;
            if changed {
                *current = metadata;
            }
            changed
        });
    }

    /// The metadata the registry last accepted for this instance (empty until registered).
    /// A role granted by the registry (a shop primary's claim) holds only once it is here.
    pub fn accepted_metadata(&self) -> watch::Receiver<HashMap<String, String>> {
        self.accepted_rx.clone()
    }

    /// The last metadata the registry refused, if any.
    pub fn rejections(&self) -> watch::Receiver<Option<Rejection>> {
        self.rejected_rx.clone()
    }

    /// The current lease, if registered.
    pub fn lease_id(&self) -> Option<String> {
        self.lease_rx.borrow().clone()
    }

    /// Until when the registry is certain to hold the lease: the time the last successful
    /// Register/KeepAlive was *sent* plus the TTL (the registry set its expiry after it
    /// received the call, so no later). `None` while unregistered or after `NOT_FOUND`.
    ///
    /// A process whose authority depends on its lease (a shop primary) must stop acting
    /// on it before this instant: after it, the registry may have expired the lease and
    /// handed the role to someone else.
    pub fn lease_validity(&self) -> watch::Receiver<Option<Instant>> {
        self.valid_until_rx.clone()
    }

    /// Waits until the first registration succeeded or `timeout` passed.
    pub async fn wait_registered(&mut self, timeout: Duration) -> bool {
        tokio::time::timeout(timeout, self.lease_rx.wait_for(Option::is_some))
            .await
            .is_ok_and(|r| r.is_ok())
    }

    /// Removes the registration (best effort, bounded) and stops the task.
    pub async fn deregister(mut self) {
        self.stop.cancel();
        if let Some(task) = self.task.take() {
            if let Err(err) = task.await {
                tracing::error!(%err, "lease keeper task failed");
            }
        }
    }
}

impl Drop for LeaseKeeper {
    fn drop(&mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }
}

/// What the keep-alive task publishes about its lease.
struct LeaseState {
    lease_tx: watch::Sender<Option<String>>,
    valid_until_tx: watch::Sender<Option<Instant>>,
    accepted_tx: watch::Sender<HashMap<String, String>>,
    rejected_tx: watch::Sender<Option<Rejection>>,
}

impl LeaseState {
    fn accepted(&self, metadata: HashMap<String, String>) {
        self.accepted_tx.send_replace(metadata);
    }

    fn rejected(&self, service: &str, metadata: HashMap<String, String>, status: &tonic::Status) {
        tracing::warn!(%service, ?metadata, message = status.message(), "the registry refused this metadata");
        self.rejected_tx.send_replace(Some(Rejection {
            metadata,
            message: status.message().to_owned(),
        }));
    }

    fn renewed(&self, sent: Instant, ttl: Duration) {
        self.valid_until_tx.send_replace(Some(sent + ttl));
    }

    fn lost(&self) {
        self.lease_tx.send_replace(None);
        self.valid_until_tx.send_replace(None);
    }
}

async fn keep_alive_loop(
    registries: Registries,
    registration: Registration,
    mut metadata_rx: watch::Receiver<HashMap<String, String>>,
    state: LeaseState,
    stop: CancellationToken,
) {
    let renew_every = registration.ttl / 3;
    // Registering backs off as every registry client does; a holder retries KeepAlive at
    // least as often as it renews: when a cut-off registry comes back it gives every lease
    // one fresh grace period, and a holder still sleeping off a long backoff would let its
    // own lease lapse in it.
    let mut register_backoff = RETRY.backoff();
    let mut keep_alive_backoff = RETRY.capped_at(renew_every).backoff();
    let mut retry_in = Duration::ZERO;
    let mut lease: Option<String> = None;
    // After a KeepAlive failed without an answer (timeout, transport error) the next one
    // goes out after a backoff, not a full renewal period, and carries that call's metadata
    // again: the registry may or may not have it, and a claim must end accepted or
    // refused, never silently dropped.
    let mut retry_soon = false;
    let mut unconfirmed: Option<HashMap<String, String>> = None;
    // The last KeepAlive went unanswered and the next goes to another registry.
    let mut moved_on = false;
    let mut hops = Hops::new(registries.len());
    loop {
        let Some(lease_id) = lease.clone() else {
            let metadata = metadata_rx.borrow_and_update().clone();
            let request = RegisterRequest {
                service: registration.service.clone(),
                address: registration.address.clone(),
                metadata: metadata.clone(),
                ttl_ms: u64::try_from(registration.ttl.as_millis()).unwrap_or(u64::MAX),
            };
            let sent = Instant::now();
            let (index, _, mut client) = registries.current();
            let result = tokio::select! {
                r = tokio::time::timeout(CALL_TIMEOUT, client.register(registration.request(request))) => r,
                () = stop.cancelled() => return,
            };
            let moved = match &result {
                Ok(Err(status)) if stopped_answering(status) => {
                    hops.failed(registries.failed(index))
                }
                Err(_) => hops.failed(registries.failed(index)),
                _ => {
                    hops.answered();
                    false
                }
            };
            match result {
                Ok(Ok(reply)) => {
                    let lease_id = reply.into_inner().lease_id;
                    tracing::info!(service = %registration.service, address = %registration.address, lease = %lease_id, "registered");
                    lease = Some(lease_id.clone());
                    state.lease_tx.send_replace(Some(lease_id));
                    state.renewed(sent, registration.ttl);
                    state.accepted(metadata);
                    register_backoff.reset();
                    keep_alive_backoff.reset();
                }
                Ok(Err(status)) => {
                    if status.code() == Code::FailedPrecondition {
                        state.rejected(&registration.service, metadata, &status);
                    }
                    tracing::warn!(service = %registration.service, %status, "register failed; retrying");
                    if !moved && wait_or_stop(register_backoff.next_delay(), &stop).await {
                        return;
                    }
                }
                Err(_) => {
                    tracing::warn!(service = %registration.service, "register timed out; retrying");
                    if !moved && wait_or_stop(register_backoff.next_delay(), &stop).await {
                        return;
                    }
                }
            }
            continue;
        };

        // Right after moving to another registry the retry goes out at once.
        let wait = if retry_soon && moved_on {
            Duration::ZERO
        } else if retry_soon {
            retry_in
        } else {
            renew_every
        };
        let metadata = tokio::select! {
            () = tokio::time::sleep(wait) => unconfirmed.take(),
            changed = metadata_rx.changed() => match changed {
                // Newer metadata supersedes an unconfirmed one.
                Ok(()) => {
                    unconfirmed = None;
                    Some(metadata_rx.borrow_and_update().clone())
                }
                Err(_) => unconfirmed.take(),
            },
            () = stop.cancelled() => {
                let request = DeregisterRequest { lease_id: lease_id.clone() };
                let (_, _, mut client) = registries.current();
                match tokio::time::timeout(CALL_TIMEOUT, client.deregister(registration.request(request))).await {
                    Ok(Ok(_)) => tracing::info!(service = %registration.service, lease = %lease_id, "deregistered"),
                    Ok(Err(status)) => tracing::warn!(%status, "deregister failed"),
                    Err(_) => tracing::warn!("deregister timed out"),
                }
                return;
            }
        };
        let request = KeepAliveRequest {
            lease_id: lease_id.clone(),
            metadata: metadata.clone().map(|entries| Metadata { entries }),
        };
        let sent = Instant::now();
        let (index, _, mut client) = registries.current();
        let result = tokio::time::timeout(
            CALL_TIMEOUT,
            client.keep_alive(registration.request(request)),
        )
        .await;
        moved_on = match &result {
            Ok(Err(status)) if stopped_answering(status) => hops.failed(registries.failed(index)),
            Err(_) => hops.failed(registries.failed(index)),
            _ => {
                hops.answered();
                false
            }
        };
        match result {
            Ok(Ok(_)) => {
                retry_soon = false;
                register_backoff.reset();
                keep_alive_backoff.reset();
                state.renewed(sent, registration.ttl);
                if let Some(metadata) = metadata {
                    state.accepted(metadata);
                }
            }
            // Refused metadata is not sent again (the registry keeps the previous one): a
            // refused claim must be replaced by a new one, never retried as it was.
            Ok(Err(status)) if status.code() == Code::FailedPrecondition => {
                retry_soon = false;
                if let Some(metadata) = metadata {
                    state.rejected(&registration.service, metadata, &status);
                }
            }
            Ok(Err(status)) if status.code() == Code::NotFound => {
                tracing::info!(service = %registration.service, "lease unknown to the registry (restart or expiry); registering again");
                lease = None;
                retry_soon = false;
                state.lost();
            }
            Ok(Err(status)) => {
                tracing::warn!(service = %registration.service, %status, "keep-alive failed");
                unconfirmed = metadata;
                retry_soon = true;
                retry_in = keep_alive_backoff.next_delay();
            }
            Err(_) => {
                tracing::warn!(service = %registration.service, "keep-alive timed out");
                unconfirmed = metadata;
                retry_soon = true;
                retry_in = keep_alive_backoff.next_delay();
            }
        }
    }
}

/// Sleeps for `delay`; true when asked to stop meanwhile.
async fn wait_or_stop(delay: Duration, stop: &CancellationToken) -> bool {
    tokio::select! {
        () = tokio::time::sleep(delay) => false,
        () = stop.cancelled() => true,
    }
}

/// Follows one service's instance set; the task stops when this is dropped.
pub struct ServiceWatch {
    snapshots_rx: watch::Receiver<WatchSnapshot>,
    task: JoinHandle<()>,
}

/// How long a Watch stream may go without an answered ping before it counts as broken:
/// well under the ¾ of a lease TTL (default 2 s) a registry needs to go silent before it
/// can expire anyone's lease, so the stream is always known dead before such news could
/// arrive on it.
pub const WATCH_LIVENESS: Duration = Duration::from_millis(400);

/// One instance set and the Watch stream it came from.
#[derive(Clone, Debug, Default)]
pub struct WatchSnapshot {
    /// Counts the Watch streams opened so far (0 before the first). A new stream may be a
    /// new registry that has not heard from every live process yet (a restart forgets all
    /// leases until their next KeepAlive), so "X is not registered" means "X is gone"
    /// only when X was seen earlier on the same stream.
    pub stream: u64,
    /// The instance set.
    pub instances: Vec<Instance>,
}

impl ServiceWatch {
    /// Starts watching `service` at the registry at `registry_addr` (or a list: module
    /// docs, "Several registries"). A registry that stops answering pings for
    /// [`WATCH_LIVENESS`] ends the stream (a new one opens when one answers), so a snapshot
    /// never carries news a registry queued while cut off.
    pub fn spawn(registry_addr: &str, service: &str) -> Result<Self, tonic::transport::Error> {
        let registries = Registries::connect_watching(registry_addr)?;
        let (snapshots_tx, snapshots_rx) = watch::channel(WatchSnapshot::default());
        let task = tokio::spawn(watch_loop(registries, service.to_owned(), snapshots_tx));
        Ok(Self { snapshots_rx, task })
    }

    /// A receiver of the latest instance set (empty until the registry first answers)
    /// with the stream it came from.
    pub fn subscribe(&self) -> watch::Receiver<WatchSnapshot> {
        self.snapshots_rx.clone()
    }

    /// The latest instance set.
    pub fn current(&self) -> Vec<Instance> {
        self.snapshots_rx.borrow().instances.clone()
    }
}

impl Drop for ServiceWatch {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn watch_loop(
    registries: Registries,
    service: String,
    snapshots_tx: watch::Sender<WatchSnapshot>,
) {
    let mut backoff = RETRY.backoff();
    let mut stream_count = 0u64;
    let mut hops = Hops::new(registries.len());
    loop {
        let request = WatchRequest {
            service: service.clone(),
        };
        let (index, _, mut client) = registries.current();
        let mut moved = false;
        match client.watch(request).await {
            Ok(response) => {
                stream_count += 1;
                let mut stream = response.into_inner();
                loop {
                    match stream.message().await {
                        Ok(Some(update)) => {
                            backoff.reset();
                            hops.answered();
                            tracing::debug!(%service, instances = update.instances.len(), revision = update.revision, "instance set changed");
                            snapshots_tx.send_replace(WatchSnapshot {
                                stream: stream_count,
                                instances: update.instances,
                            });
                        }
                        Ok(None) => {
                            tracing::info!(%service, "watch stream ended; reopening");
                            break;
                        }
                        Err(status) => {
                            tracing::warn!(%service, %status, "watch stream failed; reopening");
                            moved =
                                hops.failed(stopped_answering(&status) && registries.failed(index));
                            break;
                        }
                    }
                }
            }
            Err(status) => {
                tracing::debug!(%service, %status, "cannot open watch; retrying");
                moved = hops.failed(stopped_answering(&status) && registries.failed(index));
            }
        }
        if snapshots_tx.is_closed() {
            return;
        }
        if moved {
            continue;
        }
        backoff.wait().await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A registry list splits on commas, trims spaces and drops empty entries.
    #[test]
    fn registry_addrs_table() {
        let cases: &[(&str, &[&str])] = &[
            ("127.0.0.1:1", &["127.0.0.1:1"]),
            ("127.0.0.1:1,127.0.0.1:2", &["127.0.0.1:1", "127.0.0.1:2"]),
            (" a:1 , b:2 ,", &["a:1", "b:2"]),
            ("", &[]),
        ];
        for (list, want) in cases {
            assert_eq!(registry_addrs(list), *want, "{list:?}");
        }
    }

    /// A retry goes out at once to each other registry, and backs off once every one of
    /// them failed in a row; an answer starts the count again; one registry always backs off.
    #[test]
    fn hops_back_off_after_a_full_round() {
        let mut hops = Hops::new(2);
        assert!(hops.failed(true), "first move: retry at once");
        assert!(!hops.failed(true), "both failed in a row: back off");
        assert!(hops.failed(true));
        hops.answered();
        assert!(hops.failed(true));
        assert!(!hops.failed(false), "no move, no hurry");
        let mut alone = Hops::new(1);
        assert!(!alone.failed(true));
    }

    /// `failed` moves on from the registry that failed only, so that two callers noticing
    /// the same failure move once, not twice.
    #[tokio::test]
    async fn failed_moves_once_per_failure() {
        let registries = Registries::connect("127.0.0.1:1,127.0.0.1:2,127.0.0.1:3").expect("list");
        assert_eq!(registries.len(), 3);
        assert_eq!(registries.current().1, "127.0.0.1:1");
        assert!(registries.failed(0));
        assert!(registries.failed(0), "a second report of the same failure");
        assert_eq!(registries.current().1, "127.0.0.1:2");
        registries.failed(1);
        registries.failed(2);
        assert_eq!(registries.current().1, "127.0.0.1:1", "round and round");
    }
}
