//! Concord's shop: products, carts and orders in sled, every write logged in a WAL under
//! a log sequence number (LSN), made durable by group commit, and shipped to a replica.
//!
//! A request walks through:
//! 1. `service` (tonic) converts the request (`convert`), checks the admin token for
//!    product mutations and asks `replication` whether this process takes writes;
//! 2. the domain (`catalog`, `cart`, `order`) validates the input (`validate`, `keys`)
//!    *before* touching storage and returns the write as a `WriteOp`, which `shop` queues
//!    (reads run on the blocking pool);
//! 3. the first queued writer to get the commit lock (the leader) takes everything queued
//!    as ONE batch of the `store`'s write path: each
//!    write runs against the trees plus the batch's pending changes and records its
//!    puts/deletes as one `wal` entry under the next gap-free LSN (one that fails is rolled
//!    back to its savepoint without touching the others);
//! 4. the batch's entries are appended to the WAL segment files (`segments`) with ONE
//!    `fdatasync` (group commit; the WAL is the log of record), then applied to the sled
//!    trees (flushed in the background: a checkpoint) and published to the shipper, and
//!    only then does the writer reply;
//! 5. `replication` completes it per mode (sync waits for the replica's ack) and the reply
//!    carries `WriteInfo { lsn, replicated, degraded, term }`.
//!
//! Failure behaviour: a rejected request changes nothing; a crash loses no acknowledged
//! write and never leaves half an order (start-up replays the WAL above sled's checkpoint;
//! a torn record at the WAL's tail was never acknowledged and is dropped, a corrupt one
//! before it stops start-up). See each
//! module's docs for its invariants; `replication` states what each mode promises, the
//! failover timing, the split-brain fence and the WAL trimming rule. Non-goals:
//! multi-replica quorums.
//!
//! Observability: `metrics` puts role, term, LSNs, lag and the WAL sync histograms on the
//! process's Prometheus page, read at scrape time from `GetReplicationStatus`'s source.

mod account;
mod cart;
mod catalog;
pub mod codec;
mod convert;
mod error;
mod keys;
pub mod metrics;
mod order;
mod password;
mod replication;
mod segments;
mod service;
mod session;
mod shop;
mod store;
mod throttle;
mod validate;
mod wal;

use std::future::Future;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use concord::pb::shop::v1::replication_server::ReplicationServer;
use concord::pb::shop::v1::shop_server::ShopServer;
use tokio::net::TcpListener;
use tokio_util::{sync::CancellationToken, task::TaskTracker};

pub use account::Account;
pub use cart::{CartItem, CartLine, CartView, StoredCart};
pub use catalog::{NewProduct, Product, ProductPage, ProductPatch, ProductQuery};
pub use convert::PRIMARY_HINT_HEADER;
pub use error::{Result, ShopError};
pub use keys::{OrderId, ProductId, UserId};
pub use order::{Order, OrderLine, OrderPage, OrderStatus, Placed};
pub use password::{Password, MAX_CONCURRENT_HASHES};
pub use replication::{
    OnReplicaLoss, ReplicationConfig, ReplicationMode, Replicator, Role, DEFAULT_SYNC_TIMEOUT,
};
pub use segments::{Recovered, SegmentLog, DEFAULT_SEGMENT_BYTES};
pub use service::{APPLIED_LSN_HEADER, DURABLE_LSN_HEADER};
pub use session::{Sessions, DEFAULT_SESSION_TTL, MIN_SESSION_KEY_BYTES};
pub use shop::Shop;
pub use store::{
    Applied, Committed, GroupCommitStats, Store, StoreConfig, Written, DEFAULT_LINGER,
    ID_TERM_STRIDE, WAL_DIR,
};
pub use validate::{
    DEFAULT_CURRENCY, DEFAULT_PAGE_SIZE, MAX_CART_LINES, MAX_DESCRIPTION_CHARS, MAX_FILTER_CHARS,
    MAX_IDEMPOTENCY_KEY_BYTES, MAX_LINE_QUANTITY, MAX_NAME_CHARS, MAX_PAGE_SIZE,
    MAX_PASSWORD_CHARS, MAX_PRICE_MINOR, MAX_REPLICA_ID_CHARS, MAX_SCAN_PER_PAGE, MAX_STOCK,
    MAX_USERNAME_BYTES, MAX_USER_ID_BYTES, MIN_PASSWORD_CHARS, MIN_USERNAME_BYTES,
};
pub use wal::{Lsn, Mutation, TreeName, WalEntry};

/// Name the shop registers under in the registry.
pub const SERVICE_NAME: &str = concord::identity::SHOP_SERVICE;

/// Longest start-up wait for the first registration (writes need the lease).
const REGISTER_WAIT: Duration = Duration::from_secs(1);
/// The registry's grace, in lease TTLs: every live primary has renewed within it, so a
/// shop set that stayed empty that long has no live primary (`failover.rs`).
const REGISTRY_GRACE_TTLS: u32 = 2;
/// How often the registry metadata (role, term) is compared with the process's own and
/// republished when it differs.
const METADATA_REFRESH: Duration = Duration::from_secs(1);
/// How often the Shop service's health (readiness) follows the role and catch-up state.
const READINESS_INTERVAL: Duration = Duration::from_millis(200);

/// Settings of one shop process (primary or replica).
#[derive(Debug, Clone)]
pub struct Config {
    /// Directory of the sled database.
    pub data_dir: PathBuf,
    /// Bearer token for product mutations and Promote.
    pub admin_token: String,
    /// Key session tokens are signed with (HS256), shared by both shops so sessions
    /// survive failover; `None` = a random key per process start (logged: sessions then
    /// die with the process and are refused by its peer).
    pub session_key: Option<String>,
    /// How long a session token is accepted after sign-in.
    pub session_ttl: Duration,
    /// Registry to register with (and watch, for failover); `None` = standalone.
    pub registry_addr: Option<String>,
    /// Address published in the registry; defaults to the listener's address.
    pub advertise_addr: Option<String>,
    /// Registry lease TTL (failover notices a dead primary within it).
    pub lease_ttl: Duration,
    /// Credential this process proves its identity with (registry, peers).
    pub credential: Option<concord::identity::Credential>,
    /// Group-commit linger (see `group_commit`).
    pub commit_linger: Duration,
    /// Role, mode and peer.
    pub replication: ReplicationConfig,
}

impl Config {
    /// Defaults for a standalone primary storing in `data_dir`.
    pub fn new(data_dir: impl Into<PathBuf>) -> Self {
        Self {
            data_dir: data_dir.into(),
            // Random: nobody can administer a shop whose token was not configured.
            admin_token: concord::secrets::random_token(),
            session_key: None,
            session_ttl: DEFAULT_SESSION_TTL,
            registry_addr: None,
            advertise_addr: None,
            lease_ttl: concord::config::DEFAULT_LEASE_TTL,
            credential: None,
            commit_linger: DEFAULT_LINGER,
            replication: ReplicationConfig::default(),
        }
    }
}

impl Config {
    /// Checks the settings before anything is opened; a bad one is `InvalidArgument`.
    pub fn validate(&self) -> Result<()> {
        if self.admin_token.trim().is_empty() {
            return Err(ShopError::invalid("the admin token must not be empty"));
        }
        if let Some(key) = &self.session_key {
            if key.len() < MIN_SESSION_KEY_BYTES {
                return Err(ShopError::invalid(format!(
                    "the session key must be at least {MIN_SESSION_KEY_BYTES} bytes"
                )));
            }
        }
        if self.session_ttl.is_zero() {
            return Err(ShopError::invalid("the session TTL must be positive"));
        }
        if self.data_dir.as_os_str().is_empty() {
            return Err(ShopError::invalid("the data directory must be set"));
        }
        if self.lease_ttl.is_zero() {
            return Err(ShopError::invalid("the lease TTL must be positive"));
        }
        if self.replication.sync_timeout.is_zero() {
            return Err(ShopError::invalid("the sync timeout must be positive"));
        }
        if self.replication.wal_retain == Some(0) {
            return Err(ShopError::invalid(
                "the WAL retention must keep at least 1 entry",
            ));
        }
        if let Some(primary) = &self.replication.primary_addr {
            if primary.trim().is_empty() {
                return Err(ShopError::invalid(
                    "the primary address of a replica must not be empty",
                ));
            }
        }
        // Without a credential a shop can neither register (the registry refuses anonymous
        // registrations) nor prove itself to a replication peer: fail now, not silently.
        if self.credential.is_none() {
            let needs = if self.registry_addr.is_some() {
                Some("registers with a registry")
            } else if self.replication.primary_addr.is_some() {
                Some("follows a primary")
            } else if self.replication.mode != ReplicationMode::None {
                Some("expects a replica")
            } else {
                None
            };
            if let Some(needs) = needs {
                return Err(ShopError::invalid(format!(
                    "this shop {needs}, so it needs its credential (--credential / \
                     CONCORD_CREDENTIAL; `concord up` hands it one)"
                )));
            }
        }
        Ok(())
    }
}

/// Opens the store in `config.data_dir` and serves `Shop` + `Replication` (plus health
/// and reflection) on `listener` until `shutdown` resolves; then stops the replication
/// tasks, deregisters, and closes the store (final flush).
pub async fn serve(
    config: Config,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<()> {
    config.validate()?;
    let local = listener
        .local_addr()
        .map_err(|e| ShopError::Unavailable(format!("listener has no address: {e}")))?;
    let address = config
        .advertise_addr
        .clone()
        .unwrap_or_else(|| local.to_string());
    let store_config = StoreConfig {
        linger: config.commit_linger,
        ..StoreConfig::new(config.data_dir.clone())
    };
    // The store counts as a task of `closing` until its last handle is dropped: shutdown
    // joins its close like any task (`close_store`).
    let closing = TaskTracker::new();
    let store = {
        let closing = closing.clone();
        let open = move || Store::open(&store_config).map(|store| store.closes_on(&closing));
        Arc::new(tokio::task::spawn_blocking(open).await??)
    };
    if config.credential.is_none() {
        tracing::warn!(
            "shop has no credential: it refuses every Replicate stream and follows no primary \
             (standalone only; set --credential / CONCORD_CREDENTIAL)"
        );
    }
    let role = fence(&config, &store, &address).await?;
    let fenced = role.is_fenced();
    let stop = CancellationToken::new();
    // Cancelled however `serve` ends, aborted (a crash in tests) included: no task may
    // outlive it and keep the lease alive.
    let _stop_on_drop = stop.clone().drop_guard();
    let replicator = Replicator::new(
        Arc::clone(&store),
        config.replication.clone(),
        role,
        address.clone(),
        config.credential.clone(),
        stop.clone(),
    );
    metrics::ShopCollector::register(&replicator, &store);
    replicator.spawn(replication::run_follower(Arc::clone(&replicator)));
    if let Some(retain) = config.replication.wal_retain {
        replicator.spawn(replication::run_wal_trimmer(
            Arc::clone(&replicator),
            retain,
        ));
    }

    let keeper = match &config.registry_addr {
        Some(registry) => {
            let registration = concord::discovery::Registration {
                service: SERVICE_NAME.to_string(),
                address: address.clone(),
                metadata: replicator.registry_metadata(),
                ttl: config.lease_ttl,
                credential: config.credential.clone(),
            };
            let mut keeper = concord::discovery::LeaseKeeper::spawn(registry, registration)
                .map_err(|e| ShopError::Unavailable(format!("registry {registry}: {e}")))?;
            replicator.guard_with_lease(
                keeper.lease_validity(),
                keeper.accepted_metadata(),
                config.lease_ttl / 4,
            );
            // Serve with the lease already held when the registry answers, so the first
            // writes are not refused by the lease guard; a registry that is down delays
            // start-up by at most this, and writes wait for the lease.
            if !keeper.wait_registered(REGISTER_WAIT).await {
                tracing::warn!(%registry, "not registered yet; writes wait for the lease");
            }
            replicator.spawn(replication::run_failover_watch(
                Arc::clone(&replicator),
                registry.clone(),
                SERVICE_NAME.to_string(),
                replication::KeeperFeed {
                    accepted: keeper.accepted_metadata(),
                    rejected: keeper.rejections(),
                },
                config.lease_ttl * REGISTRY_GRACE_TTLS,
            ));
            if fenced {
                replicator.spawn(replication::run_fence(
                    Arc::clone(&replicator),
                    registry.clone(),
                    SERVICE_NAME.to_string(),
                ));
            }
            Some(Arc::new(keeper))
        }
        None => None,
    };
    if let Some(keeper) = &keeper {
        // Republish role/term (or a pending claim) whenever they change (a replica's term
        // also moves with its primary's heartbeats, hence the tick as a backstop).
        let keeper = Arc::clone(keeper);
        let rep = Arc::clone(&replicator);
        let mut role_rx = replicator.subscribe_role();
        let mut claim_rx = replicator.subscribe_claim();
        let mut tick = tokio::time::interval(METADATA_REFRESH);
        let stop = stop.clone();
        replicator.spawn(async move {
            let mut published = rep.registry_metadata();
            loop {
                let forced = tokio::select! {
                    changed = role_rx.changed() => if changed.is_err() { return } else { true },
                    changed = claim_rx.changed() => if changed.is_err() { return } else { true },
                    _ = tick.tick() => false,
                    () = stop.cancelled() => return,
                };
                // The log position rides along (the registry orders claims by it), but a
                // moving LSN alone is not worth a registry change every tick: the tick
                // republishes only when the claim or the log's term moved.
                let metadata = rep.registry_metadata();
                if forced || replication::claim_or_log_term_moved(&published, &metadata) {
                    keeper.set_metadata(metadata.clone());
                    published = metadata;
                }
            }
        });
    }

    let (router, health) = concord::grpc::router(&[
        concord::pb::shop::v1::shop_server::SERVICE_NAME,
        concord::pb::shop::v1::replication_server::SERVICE_NAME,
    ]);
    // Readiness: the Shop service is SERVING only while this process is a primary or a
    // caught-up replica (`Replicator::ready`), so a Kubernetes readiness probe or any other
    // `grpc.health.v1` client keeps traffic off a replica still catching up. Replication
    // stays SERVING: its peer must reach it to catch up.
    {
        let rep = Arc::clone(&replicator);
        let stop = stop.clone();
        let health = health.clone();
        replicator.spawn(async move {
            let mut tick = tokio::time::interval(READINESS_INTERVAL);
            let mut ready = None;
            loop {
                let now = rep.ready();
                if ready != Some(now) {
                    ready = Some(now);
                    if now {
                        health
                            .set_serving::<ShopServer<service::ShopService>>()
                            .await;
                    } else {
                        health
                            .set_not_serving::<ShopServer<service::ShopService>>()
                            .await;
                    }
                    tracing::info!(ready = now, role = ?rep.role(), "shop readiness");
                }
                tokio::select! {
                    _ = tick.tick() => {}
                    () = stop.cancelled() => return,
                }
            }
        });
    }
    health
        .set_serving::<ReplicationServer<replication::ReplicationService>>()
        .await;
    let router = router
        .add_service(ShopServer::new(service::ShopService::new(
            Shop::with_linger(Arc::clone(&store), config.commit_linger)?,
            Arc::clone(&replicator),
            config.admin_token.clone(),
            sessions(&config)?,
        )))
        .add_service(ReplicationServer::new(
            replication::ReplicationService::new(
                Arc::clone(&replicator),
                config.admin_token.clone(),
            ),
        ));
    tracing::info!(%address, role = ?replicator.role(), term = store.term(), last_lsn = store.last_lsn()?, "shop serving");
    let served = concord::grpc::serve(router, listener, async move {
        shutdown.await;
        stop.cancel();
    })
    .await;
    replicator.join_tasks().await;
    if let Some(keeper) = keeper {
        match Arc::try_unwrap(keeper) {
            Ok(keeper) => keeper.deregister().await,
            Err(_) => tracing::warn!("lease keeper still shared at shutdown; not deregistered"),
        }
    }
    drop(replicator);
    close_store(store, closing).await;
    served.map_err(|e| ShopError::Unavailable(format!("gRPC server: {e}")))
}

/// The session signer of this process: the configured key, or a random one (logged).
fn sessions(config: &Config) -> Result<Sessions> {
    let key = match &config.session_key {
        Some(key) => key.clone(),
        None => {
            tracing::warn!(
                "no session key configured (--session-key / CONCORD_SESSION_KEY): using a \
                 random one, so sessions end when this shop stops and its peer refuses them \
                 after a failover"
            );
            concord::secrets::random_token()
        }
    };
    Sessions::new(key.as_bytes(), config.session_ttl)
}

/// The split-brain fence (see `replication`, "Fence"): a process configured as primary
/// with a registry asks the registry before taking any write. A registered primary with
/// a higher term than our stored one → start as its replica (adopting its term); no
/// answer → start fenced (refusing writes) and let `run_fence` retry; otherwise start as
/// primary (a claim: writes wait until the registry accepted it). A process configured as
/// a replica whose named primary is registered below its own stored term starts as a
/// primary of that term the same way (`told_primary_is_stale`). Returns the role to
/// start in.
async fn fence(config: &Config, store: &Arc<Store>, address: &str) -> Result<Role> {
    let mut role = Replicator::initial_role(&config.replication, store.term());
    let Some(registry) = &config.registry_addr else {
        return Ok(role);
    };
    if let Role::Replica { primary, term } = &role {
        // A replica restarted after it held a newer term than the primary its flags name
        // (the double stop): it must not follow that stale primary but (re)claim.
        if !replication::told_primary_is_stale(registry, SERVICE_NAME, address, primary, *term)
            .await
        {
            return Ok(role);
        }
        tracing::warn!(%primary, term, "the primary this shop was told to follow is behind its own term; claiming instead");
        role = Role::Primary { term: *term };
    }
    Ok(
        match replication::check_fence(registry, SERVICE_NAME, address, store.term()).await {
            replication::Fence::Clear => role,
            replication::Fence::Follow { primary, term } => {
                tracing::warn!(%primary, term, our_term = store.term(), "a newer primary is registered; starting as its replica");
                let s = Arc::clone(store);
                tokio::task::spawn_blocking(move || s.set_term(term)).await??;
                Role::Replica { primary, term }
            }
            replication::Fence::Unknown => {
                tracing::warn!(%registry, "registry unreachable; refusing writes until it answers");
                Role::Fenced { term: store.term() }
            }
        },
    )
}

/// Longest time shutdown waits for the last in-flight users of the store (replication
/// stream tasks winding down after the stop signal).
const STORE_CLOSE_WAIT: Duration = Duration::from_secs(5);

/// Drops this handle on the store and joins its close (final flush, flusher joined, sled
/// file lock released; `closing` holds the store as its one task), so the directory can
/// be reopened as soon as `serve` returns. Whoever holds the last handle (this, a
/// connection task still winding down, a blocking read) closes it; this only waits.
async fn close_store(store: Arc<Store>, closing: TaskTracker) {
    closing.close();
    // Dropping may be the last handle: the final checkpoint blocks.
    if let Err(e) = tokio::task::spawn_blocking(move || drop(store)).await {
        tracing::error!(error = %e, "closing the store failed");
    }
    match tokio::time::timeout(STORE_CLOSE_WAIT, closing.wait()).await {
        Ok(()) => tracing::info!("shop store closed"),
        Err(_) => {
            tracing::warn!("store still in use after shutdown; it closes when the last user ends")
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Startup validation rejects each bad setting and accepts the defaults.
    #[test]
    fn config_validation_table() {
        assert!(Config::new("/tmp/x").validate().is_ok());
        let credential = concord::identity::ClusterSecret::new("s")
            .expect("secret")
            .issue(concord::identity::Principal::Shop);
        let replicating = Config {
            registry_addr: Some("127.0.0.1:1".into()),
            credential: Some(credential),
            ..Config::new("/tmp/x")
        };
        assert!(replicating.validate().is_ok());
        type Break = Box<dyn Fn(&mut Config)>;
        let cases: Vec<(&str, Break)> = vec![
            ("empty token", Box::new(|c| c.admin_token = " ".into())),
            (
                "short session key",
                Box::new(|c| c.session_key = Some("short".into())),
            ),
            (
                "zero session TTL",
                Box::new(|c| c.session_ttl = Duration::ZERO),
            ),
            ("empty dir", Box::new(|c| c.data_dir = PathBuf::new())),
            ("zero ttl", Box::new(|c| c.lease_ttl = Duration::ZERO)),
            (
                "zero sync timeout",
                Box::new(|c| c.replication.sync_timeout = Duration::ZERO),
            ),
            (
                "zero WAL retention",
                Box::new(|c| c.replication.wal_retain = Some(0)),
            ),
            (
                "empty primary",
                Box::new(|c| c.replication.primary_addr = Some(String::new())),
            ),
            (
                "registry without credential",
                Box::new(|c| c.registry_addr = Some("127.0.0.1:1".into())),
            ),
            (
                "replica without credential",
                Box::new(|c| c.replication.primary_addr = Some("127.0.0.1:1".into())),
            ),
            (
                "sync primary without credential",
                Box::new(|c| c.replication.mode = ReplicationMode::Sync),
            ),
        ];
        for (label, breaks) in cases {
            let mut config = Config::new("/tmp/x");
            breaks(&mut config);
            assert!(
                matches!(config.validate(), Err(ShopError::InvalidArgument(_))),
                "{label}"
            );
        }
    }
}
