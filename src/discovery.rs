//! Registry clients: [`LeaseKeeper`] keeps one registration alive, [`ServiceWatch`] follows
//! one service's instance set.
//!
//! Both run as background tasks and survive registry restarts: a `KeepAlive` answered
//! `NOT_FOUND` (the registry forgot the lease) registers again at once, so a restarted
//! registry knows every live process again within one heartbeat; a broken `Watch` stream is
//! reopened with capped exponential backoff. While the registry is unreachable a watcher
//! keeps the last set it saw (stale but usable) rather than emptying it.

use std::{
    collections::HashMap,
    time::{Duration, Instant},
};

use tokio::{
    sync::{oneshot, watch},
    task::JoinHandle,
};
use tonic::{transport::Channel, Code};

use crate::pb::registry::v1::{
    registry_client::RegistryClient, DeregisterRequest, Instance, KeepAliveRequest, Metadata,
    RegisterRequest, WatchRequest,
};

/// Longest wait between two attempts to reach the registry.
pub const MAX_BACKOFF: Duration = Duration::from_secs(2);
/// First wait after a failed attempt.
pub const MIN_BACKOFF: Duration = Duration::from_millis(100);
/// Time limit of one Register/KeepAlive/Deregister call.
pub const CALL_TIMEOUT: Duration = Duration::from_secs(1);

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
    stop_tx: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<()>>,
    lease_rx: watch::Receiver<Option<String>>,
    valid_until_rx: watch::Receiver<Option<Instant>>,
    accepted_rx: watch::Receiver<HashMap<String, String>>,
    rejected_rx: watch::Receiver<Option<Rejection>>,
}

impl LeaseKeeper {
    /// Starts registering `registration` with the registry at `registry_addr`.
    pub fn spawn(
        registry_addr: &str,
        registration: Registration,
    ) -> Result<Self, tonic::transport::Error> {
        let channel =
            crate::grpc::lazy_channel_to(registry_addr, &crate::identity::Principal::Registry)?;
        let (metadata_tx, metadata_rx) = watch::channel(registration.metadata.clone());
        let (lease_tx, lease_rx) = watch::channel(None);
        let (valid_until_tx, valid_until_rx) = watch::channel(None);
        let (accepted_tx, accepted_rx) = watch::channel(HashMap::new());
        let (rejected_tx, rejected_rx) = watch::channel(None);
        let (stop_tx, stop_rx) = oneshot::channel();
        let task = tokio::spawn(keep_alive_loop(
            RegistryClient::new(channel),
            registration,
            metadata_rx,
            LeaseState {
                lease_tx,
                valid_until_tx,
                accepted_tx,
                rejected_tx,
            },
            stop_rx,
        ));
        Ok(Self {
            metadata_tx,
            stop_tx: Some(stop_tx),
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
        if let Some(stop_tx) = self.stop_tx.take() {
            let _ = stop_tx.send(());
        }
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
    mut client: RegistryClient<Channel>,
    registration: Registration,
    mut metadata_rx: watch::Receiver<HashMap<String, String>>,
    state: LeaseState,
    mut stop_rx: oneshot::Receiver<()>,
) {
    let renew_every = registration.ttl / 3;
    let mut backoff = MIN_BACKOFF;
    let mut lease: Option<String> = None;
    // After a KeepAlive failed without an answer (timeout, transport error) the next one
    // goes out after a backoff, not a full renewal period, and carries that call's metadata
    // again: the registry may or may not have it, and a claim must end accepted or
    // refused, never silently dropped.
    let mut retry_soon = false;
    let mut unconfirmed: Option<HashMap<String, String>> = None;
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
            let result = tokio::select! {
                r = tokio::time::timeout(CALL_TIMEOUT, client.register(registration.request(request))) => r,
                _ = &mut stop_rx => return,
            };
            match result {
                Ok(Ok(reply)) => {
                    let lease_id = reply.into_inner().lease_id;
                    tracing::info!(service = %registration.service, address = %registration.address, lease = %lease_id, "registered");
                    lease = Some(lease_id.clone());
                    state.lease_tx.send_replace(Some(lease_id));
                    state.renewed(sent, registration.ttl);
                    state.accepted(metadata);
                    backoff = MIN_BACKOFF;
                }
                Ok(Err(status)) => {
                    if status.code() == Code::FailedPrecondition {
                        state.rejected(&registration.service, metadata, &status);
                    }
                    tracing::warn!(service = %registration.service, %status, "register failed; retrying");
                    if wait_or_stop(backoff, &mut stop_rx).await {
                        return;
                    }
                    backoff = (backoff * 2).min(MAX_BACKOFF);
                }
                Err(_) => {
                    tracing::warn!(service = %registration.service, "register timed out; retrying");
                    if wait_or_stop(backoff, &mut stop_rx).await {
                        return;
                    }
                    backoff = (backoff * 2).min(MAX_BACKOFF);
                }
            }
            continue;
        };

        let wait = if retry_soon { backoff } else { renew_every };
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
            _ = &mut stop_rx => {
                let request = DeregisterRequest { lease_id: lease_id.clone() };
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
        match tokio::time::timeout(
            CALL_TIMEOUT,
            client.keep_alive(registration.request(request)),
        )
        .await
        {
            Ok(Ok(_)) => {
                retry_soon = false;
                backoff = MIN_BACKOFF;
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
                backoff = (backoff * 2).min(MAX_BACKOFF);
            }
            Err(_) => {
                tracing::warn!(service = %registration.service, "keep-alive timed out");
                unconfirmed = metadata;
                retry_soon = true;
                backoff = (backoff * 2).min(MAX_BACKOFF);
            }
        }
    }
}

/// Sleeps for `delay`; true when asked to stop meanwhile.
async fn wait_or_stop(delay: Duration, stop_rx: &mut oneshot::Receiver<()>) -> bool {
    tokio::select! {
        () = tokio::time::sleep(delay) => false,
        _ = stop_rx => true,
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
    /// Starts watching `service` at the registry at `registry_addr`. A registry that stops
    /// answering pings for [`WATCH_LIVENESS`] ends the stream (a new one opens when it is
    /// back), so a snapshot never carries news the registry queued while cut off.
    pub fn spawn(registry_addr: &str, service: &str) -> Result<Self, tonic::transport::Error> {
        let channel = crate::grpc::watch_channel_to(
            registry_addr,
            &crate::identity::Principal::Registry,
            WATCH_LIVENESS,
        )?;
        let (snapshots_tx, snapshots_rx) = watch::channel(WatchSnapshot::default());
        let task = tokio::spawn(watch_loop(
            RegistryClient::new(channel),
            service.to_owned(),
            snapshots_tx,
        ));
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
    mut client: RegistryClient<Channel>,
    service: String,
    snapshots_tx: watch::Sender<WatchSnapshot>,
) {
    let mut backoff = MIN_BACKOFF;
    let mut stream_count = 0u64;
    loop {
        let request = WatchRequest {
            service: service.clone(),
        };
        match client.watch(request).await {
            Ok(response) => {
                stream_count += 1;
                let mut stream = response.into_inner();
                loop {
                    match stream.message().await {
                        Ok(Some(update)) => {
                            backoff = MIN_BACKOFF;
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
                            break;
                        }
                    }
                }
            }
            Err(status) => tracing::debug!(%service, %status, "cannot open watch; retrying"),
        }
        if snapshots_tx.is_closed() {
            return;
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(MAX_BACKOFF);
    }
}
