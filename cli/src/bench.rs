//! `concord bench`: a closed-loop load generator with HdrHistogram percentiles.
//!
//! `C` workers each send one request, wait for the answer, record its latency and send the
//! next, for `S` seconds (after a short warm-up that is not recorded). Requests are spread
//! over several HTTP/2 connections (one per 8 workers, at most 16), because one connection
//! serialises on its writer and would measure the client, not the server. Failures are
//! counted by gRPC code and never recorded as latencies.
//!
//! Client threads, the way pgbench has them (`-j`): the connections are dealt over a few OS
//! threads (one per CPU at most, never more than connections), and each thread runs its
//! connections and their workers on its own single-threaded tokio runtime. A call then
//! never leaves its thread: the worker, tonic's channel buffer and hyper's connection task
//! hand over to each other by polling, not by waking a thread on another CPU (a futex and
//! an inter-processor interrupt per hand-over on a multi-threaded runtime, measured in
//! docs/BENCHMARKS.md "The gRPC floor"). At one worker the client is one thread, like
//! pgbench at `-c 1`.
//!
//! Targets: `predict` (Predictor.Predict with rotating Iris rows, against a node or the
//! aggregator), `shop-create` (CreateProduct) and `shop-order` (AddCartItem, then a timed
//! PlaceOrder per iteration, one customer account per worker, signed up before the clock
//! starts; every call carries its session token, so the session check is measured too).
//! Two floors for the write figures: `--operation get` (GetProduct of one product, the
//! cheapest shop read) and `--operation health` (grpc.health.v1 Check, no shop code at
//! all): what a unary gRPC round trip costs on this machine before any storage work.

use std::{
    collections::BTreeMap,
    future::Future,
    sync::Arc,
    time::{Duration, Instant},
};

use concord::pb::{
    predict::v1::{predictor_client::PredictorClient, Policy, PredictRequest},
    shop::v1::{
        shop_client::ShopClient, AddCartItemRequest, CreateProductRequest, GetProductRequest,
        PlaceOrderRequest, SignUpRequest,
    },
};
use hdrhistogram::Histogram;
use tonic::transport::Channel;
use tonic_health::pb::{health_client::HealthClient, HealthCheckRequest};

/// Flags of `concord bench`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// What to load.
    #[command(subcommand)]
    pub target: Target,
}

/// Load shapes.
#[derive(Debug, clap::Subcommand)]
pub enum Target {
    /// Predictor.Predict against a node or the aggregator.
    Predict {
        #[command(flatten)]
        load: Load,
        /// Consensus policy (aggregator only): mean, trust or stake.
        #[arg(long, default_value = "stake")]
        policy: String,
    },
    /// Shop writes (product creation, order placement) and their floors (a read, a health
    /// check).
    Shop {
        #[command(flatten)]
        load: Load,
        /// create (CreateProduct), order (AddCartItem + timed PlaceOrder), get (GetProduct
        /// of one product) or health (grpc.health.v1 Check of the Shop service).
        #[arg(long, default_value = "create")]
        operation: String,
        /// Admin token for product creation (default: the one `concord up` stored under
        /// `--data-dir`, see `concord token admin`).
        #[arg(long, env = "CONCORD_ADMIN_TOKEN", hide_env_values = true)]
        admin_token: Option<String>,
        /// The cluster's data directory, read for the admin token when none is given.
        #[arg(long, env = "CONCORD_DATA_DIR", default_value = "./data")]
        data_dir: std::path::PathBuf,
    },
}

/// Common load flags.
#[derive(Debug, Clone, clap::Args)]
pub struct Load {
    /// Server to load, host:port.
    #[arg(long)]
    pub target: String,
    /// Concurrent closed-loop workers.
    #[arg(long, default_value_t = 64)]
    pub concurrency: usize,
    /// Measured duration (after a 1 s warm-up), e.g. 10s.
    #[arg(long, default_value = "10s", value_parser = concord::config::parse_duration)]
    pub duration: Duration,
    /// HTTP/2 connections the workers share (default: one per 8 workers, at most 16).
    #[arg(long)]
    pub connections: Option<usize>,
    /// Client threads, each with its own single-threaded runtime and its share of the
    /// connections (default: one per CPU, at most one per connection).
    #[arg(long)]
    pub threads: Option<usize>,
}

impl Load {
    /// How the workers are dealt over connections and threads.
    fn plan(&self) -> anyhow::Result<Plan> {
        anyhow::ensure!(self.concurrency > 0, "concurrency must be at least 1");
        let connections = self
            .connections
            .unwrap_or_else(|| self.concurrency.div_ceil(8).clamp(1, 16));
        anyhow::ensure!(connections > 0, "connections must be at least 1");
        let cpus = std::thread::available_parallelism().map_or(1, usize::from);
        let threads = self.threads.unwrap_or(cpus);
        anyhow::ensure!(threads > 0, "threads must be at least 1");
        Ok(Plan {
            workers: self.concurrency,
            connections: connections.min(self.concurrency),
            threads: threads.min(connections).min(self.concurrency),
        })
    }
}

/// Workers dealt round-robin over connections, connections round-robin over threads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Plan {
    workers: usize,
    connections: usize,
    threads: usize,
}

impl Plan {
    /// The connection worker `worker` sends on.
    fn connection_of(&self, worker: usize) -> usize {
        worker % self.connections
    }

    /// The thread that runs connection `connection` (and so every worker on it).
    fn thread_of(&self, connection: usize) -> usize {
        connection % self.threads
    }

    /// The connections thread `thread` runs.
    fn connections_of(&self, thread: usize) -> impl Iterator<Item = usize> + '_ {
        (0..self.connections).filter(move |&c| self.thread_of(c) == thread)
    }

    /// The workers thread `thread` runs.
    fn workers_of(&self, thread: usize) -> impl Iterator<Item = usize> + '_ {
        (0..self.workers).filter(move |&w| self.thread_of(self.connection_of(w)) == thread)
    }
}

/// Outcome of one run.
struct Report {
    latencies: Histogram<u64>,
    failures: BTreeMap<String, u64>,
    elapsed: Duration,
}

impl Report {
    fn print(&self, what: &str, load: &Load) {
        let ok = self.latencies.len();
        let secs = self.elapsed.as_secs_f64();
        let us = |q: f64| self.latencies.value_at_quantile(q) as f64 / 1000.0;
        println!(
            "{what} against {} — concurrency {}, {:.1} s",
            load.target, load.concurrency, secs
        );
        println!(
            "  ok {ok}  throughput {:.0}/s  failures {}",
            ok as f64 / secs,
            self.failures.values().sum::<u64>()
        );
        println!(
            "  latency ms: p50 {:.3}  p90 {:.3}  p99 {:.3}  p99.9 {:.3}  max {:.3}",
            us(0.50),
            us(0.90),
            us(0.99),
            us(0.999),
            self.latencies.max() as f64 / 1000.0
        );
        for (code, count) in &self.failures {
            println!("  failed with {code}: {count}");
        }
    }
}

/// Runs the benchmark on its own threads (no shared runtime: module doc).
pub fn run(args: Args) -> anyhow::Result<()> {
    // Sign-ups and the bench product, before the clock starts.
    let setup = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    match args.target {
        Target::Predict { load, policy } => {
            let policy = match policy.as_str() {
                "mean" => Policy::Mean,
                "trust" => Policy::Trust,
                "stake" => Policy::Stake,
                other => anyhow::bail!("unknown policy {other:?}: use mean, trust or stake"),
            };
            let report = drive(&load, |worker, channel| {
                let client = PredictorClient::new(channel);
                let mut i = worker;
                move || {
                    i = i.wrapping_add(1);
                    let features = IRIS_SAMPLE[i % IRIS_SAMPLE.len()].to_vec();
                    let mut client = client.clone();
                    async move {
                        client
                            .predict(PredictRequest {
                                features,
                                policy: policy as i32,
                            })
                            .await
                            .map(|_| ())
                    }
                }
            })?;
            report.print("predict", &load);
        }
        Target::Shop {
            load,
            operation,
            admin_token,
            data_dir,
        } => {
            let admin_token = match admin_token {
                Some(token) => token,
                None => {
                    concord::secrets::Secrets::load(&data_dir)
                        .map_err(|err| {
                            anyhow::anyhow!(
                                "no --admin-token and no stored secrets in {} ({err})",
                                concord::secrets::dir(&data_dir).display()
                            )
                        })?
                        .admin_token
                }
            };
            load.plan()?;
            let token = Arc::new(admin_token);
            match operation.as_str() {
                "create" => {
                    let report = drive(&load, |worker, channel| {
                        let client = ShopClient::new(channel);
                        let token = token.clone();
                        let mut i = 0u64;
                        move || {
                            i += 1;
                            let mut request = tonic::Request::new(CreateProductRequest {
                                name: format!("bench product {worker}-{i}"),
                                description: "created by concord bench".into(),
                                price_minor: 1999,
                                currency: "EUR".into(),
                                stock: 1_000_000,
                            });
                            concord::auth::attach_bearer(&mut request, &token);
                            let mut client = client.clone();
                            async move { client.create_product(request).await.map(|_| ()) }
                        }
                    })?;
                    report.print("shop create-product", &load);
                }
                "order" => {
                    let run = std::process::id();
                    let (product_id, sessions) = setup.block_on(async {
                        let channel = concord::grpc::lazy_channel(&load.target)?;
                        let product_id = create_bench_product(&channel, &token).await?;
                        let sessions = sign_up_bench_users(&channel, run, load.concurrency).await?;
                        anyhow::Ok((product_id, sessions))
                    })?;
                    let report = drive(&load, |worker, channel| {
                        let client = ShopClient::new(channel);
                        let product_id = product_id.clone();
                        let session = sessions[worker].clone();
                        let mut i = 0u64;
                        move || {
                            i += 1;
                            let mut client = client.clone();
                            let key = format!("bench-{run}-{worker}-{i}");
                            let mut add = tonic::Request::new(AddCartItemRequest {
                                user_id: String::new(),
                                product_id: product_id.clone(),
                                quantity: 1,
                            });
                            concord::auth::attach_bearer(&mut add, &session);
                            let mut place = tonic::Request::new(PlaceOrderRequest {
                                user_id: String::new(),
                                idempotency_key: key,
                            });
                            concord::auth::attach_bearer(&mut place, &session);
                            async move {
                                client.add_cart_item(add).await?;
                                client.place_order(place).await.map(|_| ())
                            }
                        }
                    })?;
                    report.print("shop add-to-cart + place-order", &load);
                }
                "get" => {
                    let product_id = setup.block_on(async {
                        let channel = concord::grpc::lazy_channel(&load.target)?;
                        create_bench_product(&channel, &token).await
                    })?;
                    let report = drive(&load, |_worker, channel| {
                        let client = ShopClient::new(channel);
                        let id = product_id.clone();
                        move || {
                            let mut client = client.clone();
                            let request = GetProductRequest { id: id.clone() };
                            async move { client.get_product(request).await.map(|_| ()) }
                        }
                    })?;
                    report.print("shop get-product", &load);
                }
                "health" => {
                    let report = drive(&load, |_worker, channel| {
                        let client = HealthClient::new(channel);
                        move || {
                            let mut client = client.clone();
                            let request = HealthCheckRequest {
                                service: "concord.shop.v1.Shop".into(),
                            };
                            async move { client.check(request).await.map(|_| ()) }
                        }
                    })?;
                    report.print("grpc health check", &load);
                }
                other => anyhow::bail!(
                    "unknown shop operation {other:?}: use create, order, get or health"
                ),
            }
        }
    }
    Ok(())
}

async fn create_bench_product(channel: &Channel, token: &str) -> anyhow::Result<String> {
    let mut request = tonic::Request::new(CreateProductRequest {
        name: "bench stock".into(),
        description: "stock for concord bench shop --operation order".into(),
        price_minor: 500,
        currency: "EUR".into(),
        stock: 1_000_000_000,
    });
    concord::auth::attach_bearer(&mut request, token);
    let product = ShopClient::new(channel.clone())
        .create_product(request)
        .await?
        .into_inner()
        .product
        .ok_or_else(|| anyhow::anyhow!("CreateProduct returned no product"))?;
    Ok(product.id)
}

/// Signs up one customer per worker (concurrently; the shop bounds the hashing) and
/// returns their session tokens, in worker order.
async fn sign_up_bench_users(
    channel: &Channel,
    run: u32,
    workers: usize,
) -> anyhow::Result<Vec<String>> {
    let password = concord::secrets::random_token();
    let sign_ups = (0..workers).map(|worker| {
        let mut client = ShopClient::new(channel.clone());
        let request = SignUpRequest {
            username: format!("bench-{run}-{worker}"),
            password: password.clone(),
        };
        async move {
            let reply = client.sign_up(request).await?.into_inner();
            reply
                .session
                .map(|s| s.token)
                .ok_or_else(|| anyhow::anyhow!("SignUp returned no session"))
        }
    });
    futures::future::try_join_all(sign_ups).await
}

/// One worker's results.
type WorkerResult = (Histogram<u64>, BTreeMap<String, u64>);

/// Runs `load.concurrency` closed-loop workers on [`Load::plan`]'s threads;
/// `make_worker(i, channel)` builds worker i's request factory on its thread, sending on
/// `channel`.
fn drive<W, F, Fut>(load: &Load, make_worker: W) -> anyhow::Result<Report>
where
    W: Fn(usize, Channel) -> F + Sync,
    F: FnMut() -> Fut + Send + 'static,
    Fut: Future<Output = Result<(), tonic::Status>> + Send + 'static,
{
    const WARM_UP: Duration = Duration::from_secs(1);
    let plan = load.plan()?;
    let start = Instant::now();
    let measure_from = start + WARM_UP;
    let stop_at = measure_from + load.duration;
    let per_thread = std::thread::scope(|scope| {
        let threads: Vec<_> = (0..plan.threads)
            .map(|thread| {
                let make_worker = &make_worker;
                std::thread::Builder::new()
                    .name(format!("bench-{thread}"))
                    .spawn_scoped(scope, move || {
                        run_thread(
                            &plan,
                            thread,
                            &load.target,
                            make_worker,
                            measure_from,
                            stop_at,
                        )
                    })
            })
            .collect::<Result<_, _>>()?;
        threads
            .into_iter()
            .map(|thread| {
                thread
                    .join()
                    .map_err(|_| anyhow::anyhow!("a bench thread panicked"))?
            })
            .collect::<anyhow::Result<Vec<Vec<WorkerResult>>>>()
    })?;
    let mut report = Report {
        latencies: Histogram::new_with_bounds(1, 60_000_000, 3).expect("valid bounds"),
        failures: BTreeMap::new(),
        elapsed: Duration::ZERO,
    };
    for (latencies, failures) in per_thread.into_iter().flatten() {
        report.latencies.add(&latencies)?;
        for (code, count) in failures {
            *report.failures.entry(code).or_default() += count;
        }
    }
    report.elapsed = Instant::now()
        .saturating_duration_since(measure_from)
        .min(load.duration + Duration::from_secs(60));
    Ok(report)
}

/// One client thread: its connections and their workers on a single-threaded runtime.
fn run_thread<W, F, Fut>(
    plan: &Plan,
    thread: usize,
    target: &str,
    make_worker: &W,
    measure_from: Instant,
    stop_at: Instant,
) -> anyhow::Result<Vec<WorkerResult>>
where
    W: Fn(usize, Channel) -> F,
    F: FnMut() -> Fut + Send + 'static,
    Fut: Future<Output = Result<(), tonic::Status>> + Send + 'static,
{
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async {
        // Channels are made inside the runtime that drives them (tonic spawns the
        // connection's tasks where it is made).
        let channels = plan
            .connections_of(thread)
            .map(|c| Ok((c, concord::grpc::lazy_channel(target)?)))
            .collect::<anyhow::Result<BTreeMap<_, _>>>()?;
        let workers: Vec<_> = plan
            .workers_of(thread)
            .map(|worker| {
                let channel = channels[&plan.connection_of(worker)].clone();
                let next_request = make_worker(worker, channel);
                tokio::spawn(run_worker(next_request, measure_from, stop_at))
            })
            .collect();
        let mut results = Vec::with_capacity(workers.len());
        for worker in workers {
            results.push(worker.await?);
        }
        Ok(results)
    })
}

/// One closed-loop worker: a request, its answer, the next, until `stop_at`; only calls
/// sent from `measure_from` on are recorded.
async fn run_worker<F, Fut>(
    mut next_request: F,
    measure_from: Instant,
    stop_at: Instant,
) -> WorkerResult
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<(), tonic::Status>>,
{
    let mut latencies = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).expect("valid bounds");
    let mut failures: BTreeMap<String, u64> = BTreeMap::new();
    loop {
        let sent = Instant::now();
        if sent >= stop_at {
            break;
        }
        let result = next_request().await;
        if sent < measure_from {
            continue;
        }
        match result {
            Ok(()) => {
                let micros = u64::try_from(sent.elapsed().as_micros()).unwrap_or(u64::MAX);
                latencies.saturating_record(micros.max(1));
            }
            Err(status) => {
                *failures.entry(format!("{:?}", status.code())).or_default() += 1;
            }
        }
    }
    (latencies, failures)
}

/// A few Iris rows (one per class and some borderline ones) cycled by the predict bench.
const IRIS_SAMPLE: [[f64; 4]; 6] = [
    [5.1, 3.5, 1.4, 0.2],
    [7.0, 3.2, 4.7, 1.4],
    [6.3, 3.3, 6.0, 2.5],
    [5.9, 3.0, 5.1, 1.8],
    [6.0, 2.2, 5.0, 1.5],
    [4.9, 3.0, 1.4, 0.2],
];

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicU64, Ordering};

    use super::*;

    fn load(concurrency: usize, connections: Option<usize>, threads: Option<usize>) -> Load {
        Load {
            target: String::new(),
            concurrency,
            duration: Duration::from_millis(300),
            connections,
            threads,
        }
    }

    /// Workers are dealt over connections and connections over threads: every worker runs
    /// on exactly one thread, on a connection that thread owns; never more threads than
    /// connections, one thread for one worker (pgbench at `-c 1`).
    #[test]
    fn plan_deals_workers_over_connections_and_threads() {
        let cases = [
            // (concurrency, --connections, --threads) -> (connections, threads)
            ((1, None, Some(4)), (1, 1)),
            ((16, None, Some(2)), (2, 2)),
            ((16, None, Some(8)), (2, 2)),
            ((200, None, Some(2)), (16, 2)),
            ((3, Some(8), Some(8)), (3, 3)),
            ((16, Some(4), Some(3)), (4, 3)),
        ];
        for ((concurrency, connections, threads), want) in cases {
            let plan = load(concurrency, connections, threads)
                .plan()
                .expect("valid load");
            assert_eq!((plan.connections, plan.threads), want, "{plan:?}");
            let mut runs = vec![0; concurrency];
            for thread in 0..plan.threads {
                let owned: Vec<_> = plan.connections_of(thread).collect();
                for worker in plan.workers_of(thread) {
                    runs[worker] += 1;
                    assert!(owned.contains(&plan.connection_of(worker)), "{plan:?}");
                }
            }
            assert!(runs.iter().all(|&n| n == 1), "{plan:?}: {runs:?}");
        }
        for (concurrency, connections, threads) in
            [(0, None, None), (4, Some(0), None), (4, None, Some(0))]
        {
            assert!(load(concurrency, connections, threads).plan().is_err());
        }
    }

    /// A short run against a real health server on loopback, from two client threads:
    /// every worker's calls are answered and recorded, none fails.
    #[test]
    fn drive_loads_a_real_server_from_every_thread() {
        let server = tokio::runtime::Runtime::new().expect("server runtime");
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let addr = server.block_on(async {
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
                .await
                .expect("bind");
            let addr = listener.local_addr().expect("addr").to_string();
            let (router, _health) = concord::grpc::router(&[]);
            tokio::spawn(concord::grpc::serve(router, listener, async move {
                let _ = stop_rx.await;
            }));
            addr
        });
        let mut load = load(4, Some(2), Some(2));
        load.target = addr;
        let calls: Arc<Vec<AtomicU64>> = Arc::new((0..4).map(|_| AtomicU64::new(0)).collect());
        let report = drive(&load, |worker, channel| {
            let client = HealthClient::new(channel);
            let calls = Arc::clone(&calls);
            move || {
                calls[worker].fetch_add(1, Ordering::Relaxed);
                let mut client = client.clone();
                async move {
                    client
                        .check(HealthCheckRequest::default())
                        .await
                        .map(|_| ())
                }
            }
        })
        .expect("drive");
        let _ = stop_tx.send(());
        assert!(report.failures.is_empty(), "{:?}", report.failures);
        assert!(!report.latencies.is_empty());
        assert!(
            calls.iter().all(|n| n.load(Ordering::Relaxed) > 0),
            "{calls:?}"
        );
    }
}
