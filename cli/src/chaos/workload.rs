//! The workload: writers that create products and place orders on whichever shop the
//! registry says is primary (following `x-concord-primary` hints on FAILED_PRECONDITION),
//! predictors that ask the aggregator for consensus and report the true label as the
//! oracle (so liars are slashed), and samplers that read the registry, the primary's
//! replication lag and the nodes' stakes. Each writer and predictor runs at a steady rate
//! (`rate / workers` per second each): at most one call in flight per worker, so the
//! concurrency is bounded by the number of workers, and a stalled cluster slows the load
//! instead of piling it up. Every acknowledged write goes into the history with its
//! `WriteInfo`; every failure too.

use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use concord::pb::predict::v1::{
    predictor_client::PredictorClient, Policy, PredictRequest, VoteStatus,
};
use concord::pb::shop::v1 as pb;
use concord::pb::shop::v1::shop_client::ShopClient;
use concord::pb::stake::v1::{
    staking_client::StakingClient, ListAccountsRequest, ReportOutcomeRequest,
};
use tonic::Code;

use super::history::{
    Failure, PredictionAck, PrimaryStatus, Recorder, Sample, StakeSample, WriteAck, Written,
};
use super::probe::Probe;

/// A client call without an answer within this is counted as failed (not acknowledged).
pub const CALL_TIMEOUT: Duration = Duration::from_secs(2);
/// How often the registry and the primary's lag are sampled.
const SAMPLE_INTERVAL: Duration = Duration::from_millis(250);
/// How often stakes are read.
const STAKE_INTERVAL: Duration = Duration::from_millis(500);
/// Products orders are placed for.
const STOCK_PRODUCTS: usize = 3;
/// Their initial stock: more than a run can order.
const INITIAL_STOCK: i64 = 1_000_000;
/// Longest wait for a primary at set-up.
const SETUP_WAIT: Duration = Duration::from_secs(60);

/// How hard to push.
#[derive(Clone, Debug)]
pub struct LoadShape {
    /// Concurrent writers (each one customer).
    pub writers: usize,
    /// Writes per second, all writers together.
    pub write_rate: f64,
    /// Concurrent predictors.
    pub predictors: usize,
    /// Predictions per second, all predictors together.
    pub predict_rate: f64,
}

/// Credentials the workload uses.
#[derive(Clone)]
pub struct Tokens {
    /// Admin token: products, and reading every order.
    pub admin: String,
    /// Oracle token: ReportOutcome.
    pub oracle: String,
}

/// The customers and stock made at set-up.
#[derive(Clone)]
pub struct Setup {
    /// A prefix unique to this run, so names never collide with an earlier run's.
    pub run: String,
    /// Session token of each writer's customer.
    pub sessions: Vec<String>,
    /// Stock product ids.
    pub stock: Vec<String>,
    /// Their initial stock.
    pub initial_stock: i64,
}

/// Attaches `authorization: Bearer <token>` and the call timeout.
pub fn bearer<T>(message: T, token: &str) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    concord::auth::attach_bearer(&mut request, token);
    request.set_timeout(CALL_TIMEOUT);
    request
}

/// Retries `op` against the current primary until it succeeds or [`SETUP_WAIT`] passes.
async fn on_primary<T, F, Fut>(probe: &Probe, what: &str, mut op: F) -> anyhow::Result<T>
where
    F: FnMut(ShopClient<tonic::transport::Channel>) -> Fut,
    Fut: std::future::Future<Output = Result<T, tonic::Status>>,
{
    let deadline = Instant::now() + SETUP_WAIT;
    let mut last = String::from("no primary registered");
    while Instant::now() < deadline {
        if let Some((addr, _)) = probe.primary().await {
            match op(ShopClient::new(probe.channel(&addr)?)).await {
                Ok(value) => return Ok(value),
                Err(status) => last = format!("{addr}: {:?} {}", status.code(), status.message()),
            }
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    anyhow::bail!("set-up could not {what} within {SETUP_WAIT:?}: {last}")
}

/// Makes the stock products and one customer per writer.
pub async fn set_up(probe: &Probe, tokens: &Tokens, shape: &LoadShape) -> anyhow::Result<Setup> {
    let run = format!("chaos-{}", &concord::secrets::random_token()[..8]);
    let mut stock = Vec::new();
    for n in 0..STOCK_PRODUCTS {
        let request = pb::CreateProductRequest {
            name: format!("{run} stock {n}"),
            description: "stock for concord chaos orders".into(),
            price_minor: 250,
            currency: "EUR".into(),
            stock: INITIAL_STOCK,
        };
        let product = on_primary(probe, "create a stock product", |mut client| {
            let request = bearer(request.clone(), &tokens.admin);
            async move { client.create_product(request).await }
        })
        .await?
        .into_inner()
        .product
        .ok_or_else(|| anyhow::anyhow!("CreateProduct returned no product"))?;
        stock.push(product.id);
    }
    let password = concord::secrets::random_token();
    let mut sessions = Vec::new();
    for w in 0..shape.writers {
        let request = pb::SignUpRequest {
            username: format!("{run}-w{w}"),
            password: password.clone(),
        };
        let session = on_primary(probe, "sign up a customer", |mut client| {
            let request = request.clone();
            async move {
                let mut sign_up = tonic::Request::new(request.clone());
                sign_up.set_timeout(Duration::from_secs(10));
                match client.sign_up(sign_up).await {
                    Ok(reply) => Ok(reply.into_inner().session),
                    // A sign-up committed but not acknowledged before: sign in instead.
                    Err(s) if s.code() == Code::AlreadyExists => {
                        let sign_in = pb::SignInRequest {
                            username: request.username,
                            password: request.password,
                        };
                        Ok(client.sign_in(sign_in).await?.into_inner().session)
                    }
                    Err(s) => Err(s),
                }
            }
        })
        .await?
        .ok_or_else(|| anyhow::anyhow!("SignUp returned no session"))?;
        sessions.push(session.token);
    }
    Ok(Setup {
        run,
        sessions,
        stock,
        initial_stock: INITIAL_STOCK,
    })
}

/// Runs the workload until `until`; returns when every task has stopped.
pub async fn run(
    probe: Probe,
    tokens: Tokens,
    shape: LoadShape,
    setup: Setup,
    recorder: Recorder,
    until: Instant,
) {
    let target = Arc::new(RwLock::new(
        probe.primary().await.map(|(a, _)| a).unwrap_or_default(),
    ));
    let mut tasks = tokio::task::JoinSet::new();
    tasks.spawn(sample(
        probe.clone(),
        Arc::clone(&target),
        recorder.clone(),
        until,
    ));
    tasks.spawn(sample_stakes(probe.clone(), recorder.clone(), until));
    let write_period = period(shape.writers, shape.write_rate);
    for w in 0..shape.writers {
        let writer = Writer {
            w,
            probe: probe.clone(),
            target: Arc::clone(&target),
            recorder: recorder.clone(),
            admin: tokens.admin.clone(),
            setup: setup.clone(),
        };
        tasks.spawn(writer.run(write_period, until));
    }
    let predict_period = period(shape.predictors, shape.predict_rate);
    for p in 0..shape.predictors {
        tasks.spawn(predict(
            p,
            probe.clone(),
            tokens.oracle.clone(),
            recorder.clone(),
            predict_period,
            until,
        ));
    }
    while let Some(joined) = tasks.join_next().await {
        if let Err(err) = joined {
            tracing::error!(%err, "a workload task failed");
        }
    }
}

/// Time between two calls of one worker, so `workers` of them make `rate` per second.
fn period(workers: usize, rate: f64) -> Duration {
    if rate <= 0.0 {
        return Duration::from_secs(3600);
    }
    Duration::from_secs_f64(workers.max(1) as f64 / rate)
}

fn ticker(period: Duration) -> tokio::time::Interval {
    let mut ticker = tokio::time::interval(period);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    ticker
}

/// One customer writing.
struct Writer {
    w: usize,
    probe: Probe,
    target: Arc<RwLock<String>>,
    recorder: Recorder,
    admin: String,
    setup: Setup,
}

impl Writer {
    async fn run(self, period: Duration, until: Instant) {
        let mut ticker = ticker(period);
        for i in 0u64.. {
            ticker.tick().await;
            if Instant::now() >= until {
                return;
            }
            // Two products, then one order.
            match i % 3 {
                2 => self.order(i).await,
                _ => self.product(i).await,
            }
        }
    }

    fn client(&self) -> Option<(String, ShopClient<tonic::transport::Channel>)> {
        let host = self
            .target
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        let channel = self.probe.channel(&host).ok()?;
        Some((host, ShopClient::new(channel)))
    }

    async fn product(&self, i: u64) {
        let Some((host, mut client)) = self.client() else {
            return self.failed("product", None);
        };
        let name = format!("{}-w{}-{i}", self.setup.run, self.w);
        let request = bearer(
            pb::CreateProductRequest {
                name: name.clone(),
                description: String::new(),
                price_minor: 100,
                currency: "EUR".into(),
                stock: 1,
            },
            &self.admin,
        );
        let started = Instant::now();
        match client.create_product(request).await {
            Ok(reply) => {
                let reply = reply.into_inner();
                let (Some(product), Some(info)) = (reply.product, reply.write) else {
                    return self.failed("product", None);
                };
                self.acked(
                    started,
                    host,
                    info,
                    Written::Product {
                        id: product.id,
                        name,
                    },
                );
            }
            Err(status) => self.failed("product", Some(status)),
        }
    }

    async fn order(&self, i: u64) {
        let Some((host, mut client)) = self.client() else {
            return self.failed("order", None);
        };
        let session = &self.setup.sessions[self.w];
        let stock = &self.setup.stock;
        let add = bearer(
            pb::AddCartItemRequest {
                user_id: String::new(),
                product_id: stock[(i as usize / 3 + self.w) % stock.len()].clone(),
                quantity: 1,
            },
            session,
        );
        if let Err(status) = client.add_cart_item(add).await {
            return self.failed("cart", Some(status));
        }
        let key = format!("{}-w{}-o{i}", self.setup.run, self.w);
        let place = bearer(
            pb::PlaceOrderRequest {
                user_id: String::new(),
                idempotency_key: key.clone(),
            },
            session,
        );
        let started = Instant::now();
        match client.place_order(place).await {
            Ok(reply) => {
                let reply = reply.into_inner();
                let (Some(order), Some(info)) = (reply.order, reply.write) else {
                    return self.failed("order", None);
                };
                let what = Written::Order {
                    order_id: order.id,
                    key,
                    user: self.w,
                };
                self.acked(started, host, info, what);
            }
            Err(status) => self.failed("order", Some(status)),
        }
    }

    fn acked(&self, started: Instant, host: String, info: pb::WriteInfo, what: Written) {
        let ack = WriteAck {
            at_ms: self.recorder.now_ms(),
            latency_ms: started.elapsed().as_secs_f64() * 1000.0,
            host,
            term: info.term,
            lsn: info.lsn,
            replicated: info.replicated,
            what,
        };
        self.recorder.record(|h| h.writes.push(ack));
    }

    /// Records a failure and follows a primary hint, if the refusal carried one.
    fn failed(&self, op: &str, status: Option<tonic::Status>) {
        let error = match &status {
            Some(s) if s.code() == Code::DeadlineExceeded => "timeout".to_owned(),
            Some(s) => format!("{:?}", s.code()),
            None => "no shop".to_owned(),
        };
        let hint = status.as_ref().and_then(|s| {
            s.metadata()
                .get(concord_shop::PRIMARY_HINT_HEADER)
                .and_then(|v| v.to_str().ok())
                .filter(|v| !v.is_empty())
                .map(str::to_owned)
        });
        if let Some(primary) = hint {
            *self.target.write().unwrap_or_else(|e| e.into_inner()) = primary;
        }
        let failure = Failure {
            at_ms: self.recorder.now_ms(),
            op: op.to_owned(),
            error,
        };
        self.recorder.record(|h| h.failures.push(failure));
    }
}

/// Predicts Iris rows through the aggregator and reports each true label as the oracle.
async fn predict(
    p: usize,
    probe: Probe,
    oracle: String,
    recorder: Recorder,
    period: Duration,
    until: Instant,
) {
    let iris = concord_node::Iris::get();
    let mut aggregator: Option<String> = None;
    let mut ticker = ticker(period);
    for i in 0usize.. {
        ticker.tick().await;
        if Instant::now() >= until {
            return;
        }
        if aggregator.is_none() {
            aggregator = probe.aggregator().await;
        }
        let Some(addr) = aggregator.clone() else {
            continue;
        };
        let Ok(channel) = probe.channel(&addr) else {
            continue;
        };
        let row = (i * 7 + p * 13) % iris.len();
        let truth = iris.labels()[row];
        let mut request = tonic::Request::new(PredictRequest {
            features: iris.features().row(row).to_vec(),
            policy: Policy::Stake as i32,
        });
        request.set_timeout(CALL_TIMEOUT);
        let started = Instant::now();
        let reply = match PredictorClient::new(channel.clone()).predict(request).await {
            Ok(reply) => reply.into_inner(),
            Err(_) => {
                aggregator = None;
                continue;
            }
        };
        let latency_ms = started.elapsed().as_secs_f64() * 1000.0;
        let wrong = reply
            .votes
            .iter()
            .filter(|v| v.status == VoteStatus::Answered as i32 && v.label as usize != truth)
            .map(|v| v.node_id.clone())
            .collect();
        let ack = PredictionAck {
            at_ms: recorder.now_ms(),
            latency_ms,
            wrong,
        };
        recorder.record(|h| h.predictions.push(ack));
        let report = bearer(
            ReportOutcomeRequest {
                request_id: reply.request_id,
                true_label: truth as u32,
            },
            &oracle,
        );
        if let Err(status) = StakingClient::new(channel).report_outcome(report).await {
            tracing::debug!(%status, "ReportOutcome failed");
        }
    }
}

/// Samples the registry's primaries and the primary's lag; keeps `target` on the primary.
async fn sample(probe: Probe, target: Arc<RwLock<String>>, recorder: Recorder, until: Instant) {
    let mut ticker = ticker(SAMPLE_INTERVAL);
    let mut last_seen = String::new();
    while Instant::now() < until {
        ticker.tick().await;
        let at_ms = recorder.now_ms();
        let Some(primaries) = probe.primaries().await else {
            continue;
        };
        let primary = primaries.iter().max_by_key(|(_, t)| *t).cloned();
        let mut status = None;
        if let Some((addr, _)) = &primary {
            // Only a change of the registry's answer moves the writers: a hint they
            // followed since is newer than a stale registry view.
            if *addr != last_seen {
                last_seen = addr.clone();
                *target.write().unwrap_or_else(|e| e.into_inner()) = addr.clone();
            }
            status = probe
                .replication_status(addr)
                .await
                .filter(|s| s.role == pb::Role::Primary as i32)
                .map(|s| PrimaryStatus {
                    addr: addr.clone(),
                    term: s.term,
                    replica_acked_lsn: s.replica_acked_lsn,
                    lag_entries: s.lag_entries,
                    lag_ms: s.lag_ms,
                });
        }
        let sample = Sample {
            at_ms,
            primaries,
            status,
        };
        recorder.record(|h| h.samples.push(sample));
    }
}

/// Samples every node's stake from the aggregator's ledger.
async fn sample_stakes(probe: Probe, recorder: Recorder, until: Instant) {
    let mut ticker = ticker(STAKE_INTERVAL);
    let mut aggregator: Option<String> = None;
    while Instant::now() < until {
        ticker.tick().await;
        if aggregator.is_none() {
            aggregator = probe.aggregator().await;
        }
        let Some(channel) = aggregator.as_deref().and_then(|a| probe.channel(a).ok()) else {
            continue;
        };
        let mut request = tonic::Request::new(ListAccountsRequest {});
        request.set_timeout(CALL_TIMEOUT);
        let Ok(reply) = StakingClient::new(channel).list_accounts(request).await else {
            aggregator = None;
            continue;
        };
        let at_ms = recorder.now_ms();
        let samples: Vec<StakeSample> = reply
            .into_inner()
            .accounts
            .into_iter()
            .map(|a| StakeSample {
                at_ms,
                node: a.node_id,
                stake: a.stake,
            })
            .collect();
        recorder.record(|h| h.stakes.extend(samples));
    }
}
