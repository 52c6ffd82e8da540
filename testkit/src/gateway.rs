//! The web gateway's test cluster: an in-process registry and gateway on `127.0.0.1:0`
//! ([`Harness`], with an HTTP client), a fake aggregator (Predictor + Staking answering from
//! fixed data, counting its open `WatchEvents` streams), the real shop or consensus behind
//! it when a test needs them, and the HTTP helpers (error bodies, SSE frames, sign-up
//! through the JSON API). Every server is a [`Running`]: stopped through a oneshot and
//! joined.

use std::{
    collections::HashMap,
    pin::Pin,
    sync::{
        atomic::{AtomicUsize, Ordering},
        Arc,
    },
    time::Duration,
};

use anyhow::{bail, Context, Result};
use concord::{
    discovery::{LeaseKeeper, Registration},
    identity::Principal,
    pb::{
        predict::v1::{
            predictor_server::{Predictor, PredictorServer},
            GetModelInfoRequest, GetModelInfoResponse, NodeVote, PredictBatchRequest,
            PredictBatchResponse, PredictRequest, PredictResponse,
        },
        stake::v1::{
            staking_server::{Staking, StakingServer},
            Account, Event, GetAccountRequest, GetAccountResponse, ListAccountsRequest,
            ListAccountsResponse, ListEventsRequest, ListEventsResponse, ReportOutcomeRequest,
            ReportOutcomeResponse, StakeRequest, StakeResponse, Totals, UnstakeRequest,
            UnstakeResponse, VerifyLedgerRequest, VerifyLedgerResponse, WatchEventsRequest,
            WatchEventsResponse,
        },
    },
};
use concord_web_gateway::{error::ErrorBody, Config};
use futures::{Stream, StreamExt};

pub use crate::cluster::Consensus;
pub use crate::Running;
use tonic::{Request, Response, Status};

/// How long a test waits for something eventually true (registration, watch propagation).
pub const DEADLINE: Duration = Duration::from_secs(10);
/// The oracle token the fake aggregator accepts.
pub const ORACLE: &str = "test-oracle";

/// Registry + gateway, both on port 0.
pub struct Harness {
    pub registry: Running<tonic::transport::Error>,
    pub gateway: Running<concord_web_gateway::Error>,
    pub http: reqwest::Client,
}

impl Harness {
    pub async fn start() -> Result<Self> {
        let registry = crate::registry().await;
        let gateway = start_gateway(&registry.addr.to_string()).await?;
        Ok(Self {
            registry,
            gateway,
            http: reqwest::Client::new(),
        })
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.gateway.addr)
    }

    pub fn registry_addr(&self) -> String {
        self.registry.addr.to_string()
    }

    pub async fn get(&self, path: &str) -> Result<reqwest::Response> {
        Ok(self.http.get(self.url(path)).send().await?)
    }

    /// Registers `address` under `service` and waits until the registry holds it, with
    /// the credential the registry wants for that service (a `predictor` as node
    /// `node_id`, default `test-node`, which is added to the metadata).
    pub async fn register(
        &self,
        service: &str,
        address: &str,
        metadata: &[(&str, &str)],
    ) -> Result<LeaseKeeper> {
        let mut metadata: HashMap<String, String> = metadata
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        // A role's own service is registered by that role; any other by a node (under
        // its `node_id`), as the registry requires.
        let principal = Principal::for_service(service).unwrap_or_else(|| {
            Principal::Node(
                metadata
                    .entry("node_id".into())
                    .or_insert_with(|| "test-node".into())
                    .clone(),
            )
        });
        let mut keeper = LeaseKeeper::spawn(
            &self.registry_addr(),
            Registration {
                service: service.into(),
                address: address.into(),
                metadata,
                ttl: Duration::from_secs(5),
                credential: Some(crate::credential(principal)),
            },
        )?;
        if !keeper.wait_registered(DEADLINE).await {
            bail!("{service} at {address} did not register");
        }
        Ok(keeper)
    }

    pub async fn stop(self) -> Result<()> {
        self.gateway.stop().await;
        self.registry.stop().await;
        Ok(())
    }
}

pub async fn start_gateway(registry_addr: &str) -> Result<Running<concord_web_gateway::Error>> {
    let config = Config {
        registry_addr: registry_addr.to_owned(),
        body_limit_bytes: 1024,
        cluster_refresh: Duration::from_millis(200),
        credential: Some(crate::credential(Principal::Gateway)),
        ..Config::default()
    };
    Ok(
        Running::spawn(|listener, shutdown| concord_web_gateway::serve(config, listener, shutdown))
            .await,
    )
}

/// Reads a JSON error body and checks its status and code.
pub async fn expect_error(
    response: reqwest::Response,
    status: u16,
    code: &str,
) -> Result<ErrorBody> {
    assert_eq!(response.status().as_u16(), status, "status");
    let body: ErrorBody = response.json().await.context("error body is JSON")?;
    assert_eq!(body.code, code, "code; message: {}", body.message);
    assert!(!body.message.is_empty(), "error message must say why");
    Ok(body)
}

// ------------------------------------------------------------------ fake aggregator

/// A Predictor + Staking that answers from fixed data.
#[derive(Clone)]
pub struct FakeAggregator {
    pub name: String,
    /// Number of `WatchEvents` streams currently open (to see them released).
    pub watchers: Arc<AtomicUsize>,
}

/// Decrements a counter when dropped, i.e. when the stream holding it is released.
struct CountGuard(Arc<AtomicUsize>);

impl Drop for CountGuard {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

#[tonic::async_trait]
impl Predictor for FakeAggregator {
    async fn predict(
        &self,
        request: Request<PredictRequest>,
    ) -> Result<Response<PredictResponse>, Status> {
        let request = request.into_inner();
        if request.features.len() != 4 {
            return Err(Status::invalid_argument("need exactly four features"));
        }
        Ok(Response::new(PredictResponse {
            label: 2,
            class_name: "virginica".into(),
            probabilities: vec![0.0, 0.25, 0.75],
            node_id: "aggregator".into(),
            model: self.name.clone(),
            request_id: "req-1".into(),
            policy: request.policy,
            votes: vec![NodeVote {
                node_id: "node-1".into(),
                status: 1,
                label: 2,
                trust: 0.5,
                stake: 100,
                weight: 1.0,
                ..Default::default()
            }],
            answered: 1,
            asked: 1,
        }))
    }

    async fn predict_batch(
        &self,
        _: Request<PredictBatchRequest>,
    ) -> Result<Response<PredictBatchResponse>, Status> {
        Err(Status::unimplemented("fake"))
    }

    async fn get_model_info(
        &self,
        _: Request<GetModelInfoRequest>,
    ) -> Result<Response<GetModelInfoResponse>, Status> {
        Err(Status::unimplemented("fake"))
    }
}

pub fn ledger_event(seq: u64) -> Event {
    Event {
        seq,
        node_id: "node-1".into(),
        kind: 1,
        amount: 100,
        stake_after: 100 + seq,
        trust_after: 0.5,
        ..Default::default()
    }
}

#[tonic::async_trait]
impl Staking for FakeAggregator {
    async fn stake(&self, _: Request<StakeRequest>) -> Result<Response<StakeResponse>, Status> {
        Err(Status::unimplemented("fake"))
    }

    async fn unstake(
        &self,
        _: Request<UnstakeRequest>,
    ) -> Result<Response<UnstakeResponse>, Status> {
        Err(Status::unimplemented("fake"))
    }

    async fn get_account(
        &self,
        request: Request<GetAccountRequest>,
    ) -> Result<Response<GetAccountResponse>, Status> {
        // Echo the request id so tests can see it was forwarded.
        let request_id = request
            .metadata()
            .get("x-request-id")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("none")
            .to_owned();
        Err(Status::not_found(format!(
            "no such node (request {request_id})"
        )))
    }

    async fn list_accounts(
        &self,
        _: Request<ListAccountsRequest>,
    ) -> Result<Response<ListAccountsResponse>, Status> {
        Ok(Response::new(ListAccountsResponse {
            accounts: vec![Account {
                node_id: "node-1".into(),
                stake: 103,
                trust: 0.5,
                last_event_seq: 3,
                ..Default::default()
            }],
            totals: Some(Totals {
                staked: 103,
                minted: 103,
                events: 3,
                ..Default::default()
            }),
        }))
    }

    async fn list_events(
        &self,
        _: Request<ListEventsRequest>,
    ) -> Result<Response<ListEventsResponse>, Status> {
        Err(Status::unimplemented("fake"))
    }

    type WatchEventsStream =
        Pin<Box<dyn Stream<Item = Result<WatchEventsResponse, Status>> + Send + 'static>>;

    async fn watch_events(
        &self,
        request: Request<WatchEventsRequest>,
    ) -> Result<Response<Self::WatchEventsStream>, Status> {
        let after = request.into_inner().after_seq;
        let events: Vec<_> = (1..=3)
            .filter(|seq| *seq > after)
            .map(|seq| {
                Ok(WatchEventsResponse {
                    event: Some(ledger_event(seq)),
                })
            })
            .collect();
        self.watchers.fetch_add(1, Ordering::SeqCst);
        let guard = CountGuard(self.watchers.clone());
        let stream = futures::stream::iter(events)
            .chain(futures::stream::pending())
            .map(move |item| {
                let _alive = &guard;
                item
            });
        Ok(Response::new(Box::pin(stream)))
    }

    async fn report_outcome(
        &self,
        request: Request<ReportOutcomeRequest>,
    ) -> Result<Response<ReportOutcomeResponse>, Status> {
        concord::auth::require_token(request.metadata(), ORACLE)?;
        if request.get_ref().request_id != "req-1" {
            return Err(Status::not_found("unknown request id"));
        }
        Ok(Response::new(ReportOutcomeResponse {
            already_reported: false,
            scores: vec![],
            consensus_correct: request.get_ref().true_label == 2,
        }))
    }

    async fn verify_ledger(
        &self,
        _: Request<VerifyLedgerRequest>,
    ) -> Result<Response<VerifyLedgerResponse>, Status> {
        Err(Status::unimplemented("fake"))
    }
}

/// Serves a fake aggregator on port 0.
pub async fn start_fake_aggregator(name: &str) -> Result<Running<tonic::transport::Error>> {
    Ok(start_fake_aggregator_counting(name).await?.0)
}

/// Like [`start_fake_aggregator`], also returning its open-`WatchEvents` counter.
pub async fn start_fake_aggregator_counting(
    name: &str,
) -> Result<(Running<tonic::transport::Error>, Arc<AtomicUsize>)> {
    let watchers = Arc::new(AtomicUsize::new(0));
    let fake = FakeAggregator {
        name: name.into(),
        watchers: watchers.clone(),
    };
    let (router, _health) = concord::grpc::router(&[
        concord::pb::predict::v1::predictor_server::SERVICE_NAME,
        concord::pb::stake::v1::staking_server::SERVICE_NAME,
    ]);
    let router = router
        .add_service(PredictorServer::new(fake.clone()))
        .add_service(StakingServer::new(fake));
    let server =
        Running::spawn(|listener, shutdown| concord::grpc::serve(router, listener, shutdown)).await;
    Ok((server, watchers))
}

/// An address nothing listens on: bound, then released.
pub async fn dead_address() -> Result<String> {
    Ok(crate::free_addr().await.to_string())
}

/// Polls `GET path` until it answers something other than a 503, or the deadline passes.
pub async fn wait_until_served(h: &Harness, path: &str) -> Result<reqwest::Response> {
    let deadline = tokio::time::Instant::now() + DEADLINE;
    loop {
        let response = h.get(path).await?;
        if response.status() != 503 || tokio::time::Instant::now() > deadline {
            return Ok(response);
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

pub use crate::shop::{replica_of, shop_credential, TestShop, ADMIN, PASSWORD, SESSION_KEY};

/// A signed-in customer: the account id and the `Cookie` header value to send.
pub struct Customer {
    /// `u-…`.
    pub user_id: String,
    /// `concord_session=<token>`.
    pub cookie: String,
}

/// The `name=value` part of a `Set-Cookie` header of `response`, for the session cookie.
pub fn session_cookie(response: &reqwest::Response) -> Option<String> {
    response
        .headers()
        .get_all("set-cookie")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .find(|v| v.starts_with("concord_session="))
        .and_then(|v| v.split(';').next())
        .map(str::to_owned)
}

/// Signs `username` up through `POST /api/signup`; the reply's cookie is the session.
pub async fn sign_up(h: &Harness, username: &str) -> Result<Customer> {
    let response = h
        .http
        .post(h.url("/api/signup"))
        .json(&serde_json::json!({"username": username, "password": PASSWORD}))
        .send()
        .await?;
    anyhow::ensure!(
        response.status() == 201,
        "sign-up answered {}",
        response.status()
    );
    let cookie = session_cookie(&response).context("no session cookie")?;
    let body: serde_json::Value = response.json().await?;
    Ok(Customer {
        user_id: body["account"]["user_id"]
            .as_str()
            .context("user id")?
            .to_owned(),
        cookie,
    })
}

/// Starts the real shop on port 0 as a standalone primary, registered at `registry_addr`.
pub async fn start_shop(registry_addr: &str) -> Result<TestShop> {
    start_shop_with(registry_addr, concord_shop::ReplicationConfig::default()).await
}

/// Starts the real shop on port 0 with `replication` (role, mode, peer), registered at
/// `registry_addr` with the short test lease.
pub async fn start_shop_with(
    registry_addr: &str,
    replication: concord_shop::ReplicationConfig,
) -> Result<TestShop> {
    let registry_addr = registry_addr.to_owned();
    Ok(crate::shop::start_in_tempdir(crate::local(), move |c| {
        c.registry_addr = Some(registry_addr);
        c.lease_ttl = crate::shop::LEASE_TTL;
        c.replication = replication;
    })
    .await)
}

/// Starts the real shop on `addr` (port 0: any free one) with `replication` and NO
/// registry: it neither registers nor fails over by itself, so the test decides what the
/// registry says about it (e.g. a stale `role=primary` lease, as during a failover).
pub async fn start_unregistered_shop(
    addr: std::net::SocketAddr,
    replication: concord_shop::ReplicationConfig,
) -> Result<TestShop> {
    Ok(crate::shop::start_in_tempdir(addr, move |c| {
        c.registry_addr = None;
        c.replication = replication;
    })
    .await)
}

/// `127.0.0.1:0`: bind any free loopback port.
pub fn any_port() -> std::net::SocketAddr {
    crate::local()
}

/// Starts `n` default-fleet nodes registered at `registry_addr` and an aggregator with a
/// fresh ledger, all on port 0, each node staked ([`Consensus::start`]).
pub async fn start_consensus(registry_addr: &str, n: usize) -> Result<Consensus> {
    let registry: std::net::SocketAddr = registry_addr.parse()?;
    let nodes = concord_node::default_fleet()
        .into_iter()
        .take(n)
        .map(|config| concord_node::NodeConfig {
            registry: Some(registry_addr.to_owned()),
            ..config
        })
        .collect();
    Ok(Consensus::start(registry, nodes, |_| {}).await)
}

/// Reads SSE frames from a response until `done` says stop; returns the (event, data, id) seen.
pub async fn read_sse(
    response: reqwest::Response,
    mut done: impl FnMut(&[(String, String, String)]) -> bool,
) -> Result<Vec<(String, String, String)>> {
    let mut stream = response.bytes_stream();
    let mut buffer = String::new();
    let mut seen = Vec::new();
    let deadline = tokio::time::Instant::now() + DEADLINE;
    while !done(&seen) {
        let chunk = tokio::time::timeout_at(deadline, stream.next())
            .await
            .context("no SSE data before the deadline")?;
        let Some(chunk) = chunk else { break };
        buffer.push_str(&String::from_utf8_lossy(&chunk?));
        while let Some(end) = buffer.find("\n\n") {
            let frame: String = buffer.drain(..end + 2).collect();
            let (mut event, mut data, mut id) = (String::new(), String::new(), String::new());
            for line in frame.lines() {
                if let Some(v) = line.strip_prefix("event:") {
                    event = v.trim().to_owned();
                } else if let Some(v) = line.strip_prefix("data:") {
                    data.push_str(v.trim());
                } else if let Some(v) = line.strip_prefix("id:") {
                    id = v.trim().to_owned();
                }
            }
            if !event.is_empty() {
                seen.push((event, data, id));
            }
        }
    }
    Ok(seen)
}
