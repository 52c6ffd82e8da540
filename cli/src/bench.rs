//! `concord bench`: a closed-loop load generator with HdrHistogram percentiles.
//!
//! `C` workers each send one request, wait for the answer, record its latency and send the
//! next, for `S` seconds (after a short warm-up that is not recorded). Requests are spread
//! over several HTTP/2 connections (one per 8 workers, at most 16), because one connection
//! serialises on its writer and would measure the client, not the server. Failures are
//! counted by gRPC code and never recorded as latencies.
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

/// Runs the benchmark.
pub async fn run(args: Args) -> anyhow::Result<()> {
    match args.target {
        Target::Predict { load, policy } => {
            let policy = match policy.as_str() {
                "mean" => Policy::Mean,
                "trust" => Policy::Trust,
                "stake" => Policy::Stake,
                other => anyhow::bail!("unknown policy {other:?}: use mean, trust or stake"),
            };
            let channels = channels(&load)?;
            let report = drive(&load, |worker| {
                let client = PredictorClient::new(channels[worker % channels.len()].clone());
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
            })
            .await;
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
            let channels = channels(&load)?;
            let token = Arc::new(admin_token);
            match operation.as_str() {
                "create" => {
                    let report = drive(&load, |worker| {
                        let client = ShopClient::new(channels[worker % channels.len()].clone());
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
                    })
                    .await;
                    report.print("shop create-product", &load);
                }
                "order" => {
                    let product_id = create_bench_product(&channels[0], &token).await?;
                    let run = std::process::id();
                    let sessions = sign_up_bench_users(&channels[0], run, load.concurrency).await?;
                    let report = drive(&load, |worker| {
                        let client = ShopClient::new(channels[worker % channels.len()].clone());
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
                    })
                    .await;
                    report.print("shop add-to-cart + place-order", &load);
                }
                "get" => {
                    let product_id = create_bench_product(&channels[0], &token).await?;
                    let report = drive(&load, |worker| {
                        let client = ShopClient::new(channels[worker % channels.len()].clone());
                        let id = product_id.clone();
                        move || {
                            let mut client = client.clone();
                            let request = GetProductRequest { id: id.clone() };
                            async move { client.get_product(request).await.map(|_| ()) }
                        }
                    })
                    .await;
                    report.print("shop get-product", &load);
                }
                "health" => {
                    let report = drive(&load, |worker| {
                        let client = HealthClient::new(channels[worker % channels.len()].clone());
                        move || {
                            let mut client = client.clone();
                            let request = HealthCheckRequest {
                                service: "concord.shop.v1.Shop".into(),
                            };
                            async move { client.check(request).await.map(|_| ()) }
                        }
                    })
                    .await;
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

fn channels(load: &Load) -> anyhow::Result<Vec<Channel>> {
    anyhow::ensure!(load.concurrency > 0, "concurrency must be at least 1");
    let connections = load.concurrency.div_ceil(8).clamp(1, 16);
    (0..connections)
        .map(|_| Ok(concord::grpc::lazy_channel(&load.target)?))
        .collect()
}

/// Runs `load.concurrency` closed-loop workers; `make_worker(i)` builds worker i's
/// request factory.
async fn drive<W, F, Fut>(load: &Load, mut make_worker: W) -> Report
where
    W: FnMut(usize) -> F,
    F: FnMut() -> Fut + Send + 'static,
    Fut: Future<Output = Result<(), tonic::Status>> + Send,
{
    const WARM_UP: Duration = Duration::from_secs(1);
    let start = Instant::now();
    let measure_from = start + WARM_UP;
    let stop_at = measure_from + load.duration;
    let mut workers = Vec::with_capacity(load.concurrency);
    for worker in 0..load.concurrency {
        let mut next_request = make_worker(worker);
        workers.push(tokio::spawn(async move {
            let mut latencies =
                Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).expect("valid bounds");
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
        }));
    }
    let mut report = Report {
        latencies: Histogram::new_with_bounds(1, 60_000_000, 3).expect("valid bounds"),
        failures: BTreeMap::new(),
        elapsed: Duration::ZERO,
    };
    for worker in workers {
        match worker.await {
            Ok((latencies, failures)) => {
                if let Err(err) = report.latencies.add(&latencies) {
                    tracing::error!(%err, "cannot merge histograms");
                }
                for (code, count) in failures {
                    *report.failures.entry(code).or_default() += count;
                }
            }
            Err(err) => tracing::error!(%err, "bench worker failed"),
        }
    }
    report.elapsed = Instant::now()
        .saturating_duration_since(measure_from)
        .min(load.duration + Duration::from_secs(60));
    report
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
