//! Running the aggregator: follow the fleet, open the ledger, serve, register, shut down.
//!
//! One port serves `concord.predict.v1.Predictor` (the consensus) and, when a ledger is
//! configured, `concord.stake.v1.Staking`, plus health and reflection. The aggregator
//! registers itself as service [`AGGREGATOR_SERVICE`] so the gateway can find it.
//!
//! Shutdown: when `shutdown` resolves, health turns NOT_SERVING, the registration is
//! removed, every task of the aggregator ([`Tasks`]: fleet follower, batchers, staking
//! streams) is cancelled, in-flight calls drain (bounded by
//! `concord::grpc::SHUTDOWN_GRACE`), and all those tasks are joined before `serve` returns.

use std::collections::HashMap;
use std::future::Future;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use concord::discovery::{LeaseKeeper, Registration};
use concord::pb::predict::v1::predictor_server::PredictorServer;
use tokio::net::TcpListener;

use crate::book::StakeBook;
use crate::consensus::{Aggregator, ConsensusConfig};
use crate::error::{Error, Result};
use crate::fanout::Fleet;
use crate::outcomes::{DEFAULT_CAPACITY, DEFAULT_TTL};
use crate::policy::ScoringParams;
use crate::service::AggregatorService;
use crate::staking::{StakingAuth, StakingService};
use crate::tasks::Tasks;

/// Registry service name of the aggregator.
pub const AGGREGATOR_SERVICE: &str = concord::identity::AGGREGATOR_SERVICE;

/// Everything one `concord aggregator` process needs.
#[derive(Debug, Clone)]
pub struct AggregatorConfig {
    /// Registry endpoint where the nodes are found and the aggregator registers.
    pub registry: String,
    /// Deadline, minimum answers, default policy, batch bound.
    pub consensus: ConsensusConfig,
    /// The stake ledger; `None` runs a `mean`-only aggregator without Staking.
    pub ledger: Option<LedgerConfig>,
    /// Address to register; `None` registers the listener's local address.
    pub advertise: Option<String>,
    /// Lease TTL requested from the registry.
    pub lease_ttl: Duration,
    /// Credential this process proves its identity with (registry, peers).
    pub credential: Option<concord::identity::Credential>,
}

/// Where and how the stake ledger runs.
#[derive(Debug, Clone)]
pub struct LedgerConfig {
    /// Directory of the sled database.
    pub path: PathBuf,
    /// Reward, slash, minimum stake, trust rate.
    pub params: ScoringParams,
    /// Cluster secret and oracle token.
    pub auth: StakingAuth,
    /// Requests remembered for `ReportOutcome`.
    pub recent_capacity: usize,
    /// How long a request can be scored.
    pub recent_ttl: Duration,
}

impl AggregatorConfig {
    /// A `mean`-only aggregator over the registry at `registry`, default knobs.
    pub fn mean_only(registry: impl Into<String>) -> Self {
        AggregatorConfig {
            registry: registry.into(),
            consensus: ConsensusConfig {
                default_policy: crate::policy::Policy::Mean,
                ..ConsensusConfig::default()
            },
            ledger: None,
            advertise: None,
            lease_ttl: concord::config::DEFAULT_LEASE_TTL,
            credential: None,
        }
    }

    /// The default knobs with a ledger at `path`, checking credentials and the oracle
    /// token against `auth`.
    pub fn with_ledger(
        registry: impl Into<String>,
        path: impl Into<PathBuf>,
        auth: StakingAuth,
    ) -> Self {
        AggregatorConfig {
            registry: registry.into(),
            consensus: ConsensusConfig::default(),
            ledger: Some(LedgerConfig {
                path: path.into(),
                params: ScoringParams::default(),
                auth,
                recent_capacity: DEFAULT_CAPACITY,
                recent_ttl: DEFAULT_TTL,
            }),
            advertise: None,
            lease_ttl: concord::config::DEFAULT_LEASE_TTL,
            credential: None,
        }
    }
}

/// Serves the aggregator on `listener` until `shutdown` resolves; see the module doc.
pub async fn serve(
    config: AggregatorConfig,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<()> {
    config.consensus.validate()?;
    let local_addr = listener
        .local_addr()
        .map_err(|e| Error::Unavailable(format!("listener has no local address: {e}")))?;
    let tasks = Tasks::new();
    let book = match &config.ledger {
        Some(ledger) => Some(
            StakeBook::open(
                &ledger.path,
                ledger.params,
                ledger.recent_capacity,
                ledger.recent_ttl,
            )
            .map_err(|e| {
                Error::Config(format!("cannot open the ledger at {:?}: {e}", ledger.path))
            })?,
        ),
        None => None,
    };
    let fleet = Fleet::follow(&config.registry, &tasks)?;
    let aggregator = Arc::new(Aggregator::new(
        fleet,
        book.clone(),
        config.consensus.clone(),
    )?);

    crate::metrics::LedgerCollector::register(&aggregator);

    // Staking runs only with a ledger; reflection must not list it otherwise.
    let staking = book.zip(config.ledger.as_ref());
    let mut served = vec![concord::pb::predict::v1::predictor_server::SERVICE_NAME];
    if staking.is_some() {
        served.push(concord::pb::stake::v1::staking_server::SERVICE_NAME);
    }
    let (router, health) = concord::grpc::router(&served);
    health
        .set_serving::<PredictorServer<AggregatorService>>()
        .await;
    let mut router = router.add_service(PredictorServer::new(AggregatorService::new(aggregator)));
    if let Some((book, ledger)) = staking {
        let staking = StakingService::new(book, ledger.auth.clone(), tasks.clone()).into_server();
        router = router.add_service(staking);
    }
    let keeper = LeaseKeeper::spawn(
        &config.registry,
        Registration {
            service: AGGREGATOR_SERVICE.to_owned(),
            address: concord_node::advertised_address(config.advertise.as_deref(), local_addr),
            metadata: HashMap::new(),
            ttl: config.lease_ttl,
            credential: config.credential.clone(),
        },
    )
    .map_err(|e| Error::Config(format!("bad registry address {:?}: {e}", config.registry)))?;
    tracing::info!(
        %local_addr,
        registry = %config.registry,
        policy = %config.consensus.default_policy,
        deadline_ms = config.consensus.deadline.as_millis() as u64,
        min_answers = config.consensus.min_answers,
        ledger = config.ledger.is_some(),
        "aggregator listening"
    );

    let stopping = tasks.clone();
    let stop = async move {
        shutdown.await;
        tracing::info!("aggregator shutting down");
        health
            .set_not_serving::<PredictorServer<AggregatorService>>()
            .await;
        stopping.cancel();
        keeper.deregister().await;
    };
    let served = concord::grpc::serve(router, listener, stop).await;
    tasks.join().await;
    served.map_err(|e| Error::Internal(format!("server failed: {e}")))
}
