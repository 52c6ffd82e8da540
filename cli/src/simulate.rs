//! `concord simulate`: the consensus policies against liars, on a real cluster.
//!
//! Starts a registry, the five default nodes (the last `--faulty` of them with
//! `--faulty-behaviour`, colluding `inverted` by default) and, for each policy, a fresh
//! aggregator with a fresh ledger — all in this process but talking gRPC over loopback,
//! exactly as in `concord up`. The run has its own random cluster secret and oracle token;
//! on each fresh ledger every node first stakes
//! [`DEFAULT_INITIAL_STAKE`](concord_aggregator::policy::DEFAULT_INITIAL_STAKE) for itself
//! with its credential, as `concord node --initial-stake` does (nothing is minted for a
//! new node). Each round sends one hold-out row (the shared 30 % no node
//! trained on; reshuffled every pass) to the aggregator, reports the true label to the
//! oracle (`ReportOutcome`), and records every node's stake and trust.
//!
//! Prints, per policy, the accuracy overall and over the last `--window` rounds and every
//! node's final trust and stake; writes an SVG chart of stake and trust over the rounds.
//! `--check` turns the issue's acceptance criteria into the exit code.

use std::{
    collections::BTreeMap,
    future::Future,
    net::SocketAddr,
    path::{Path, PathBuf},
    time::Duration,
};

use anyhow::Context;
use concord::identity::{ClusterSecret, Principal};
use concord::pb::{
    predict::v1::{predictor_client::PredictorClient, Policy as PbPolicy, PredictRequest},
    stake::v1::{
        staking_client::StakingClient, ListAccountsRequest, ReportOutcomeRequest, StakeRequest,
    },
};
use concord_aggregator::{
    policy::{Policy, DEFAULT_INITIAL_STAKE},
    staking::StakingAuth,
    AggregatorConfig,
};
use concord_node::{Behaviour, Iris};
use plotters::prelude::*;
use rand::{seq::SliceRandom, SeedableRng};
use tokio::{net::TcpListener, sync::oneshot, task::JoinHandle};

/// Flags of `concord simulate`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Faulty nodes among the five (the last ones).
    #[arg(long, default_value_t = 3)]
    pub faulty: usize,
    /// Behaviour of the faulty nodes: inverted (colluding), random or slow:<ms>.
    #[arg(long, default_value = "inverted")]
    pub faulty_behaviour: Behaviour,
    /// Rounds per policy.
    #[arg(long, default_value_t = 300)]
    pub rounds: usize,
    /// Accuracy is also reported over the last this-many rounds.
    #[arg(long, default_value_t = 100)]
    pub window: usize,
    /// Policies to play, comma-separated.
    #[arg(long, default_value = "mean,trust,stake", value_delimiter = ',')]
    pub policies: Vec<Policy>,
    /// Seed of the row order.
    #[arg(long, default_value_t = 7)]
    pub seed: u64,
    /// Where to write the SVG chart.
    #[arg(long, default_value = "./data/simulate.svg")]
    pub chart: PathBuf,
    /// Exit non-zero unless: mean accuracy < 0.5, stake accuracy over the window >= 0.90,
    /// every faulty node's final stake under 20 % of its start (meant for --faulty 3), or,
    /// with no faulty node, stake no worse than mean.
    #[arg(long)]
    pub check: bool,
}

/// One policy's run.
struct PolicyRun {
    policy: Policy,
    correct: Vec<bool>,
    /// node id → (stake, trust) after each round.
    history: BTreeMap<String, Vec<(u64, f64)>>,
    failures: usize,
}

impl PolicyRun {
    fn accuracy(&self, last: usize) -> f64 {
        let tail = &self.correct[self.correct.len().saturating_sub(last)..];
        if tail.is_empty() {
            return 0.0;
        }
        tail.iter().filter(|c| **c).count() as f64 / tail.len() as f64
    }
}

/// A server running in this process, stopped by dropping the sender.
struct InProcess {
    addr: SocketAddr,
    _stop_tx: oneshot::Sender<()>,
    task: JoinHandle<()>,
}

impl InProcess {
    async fn start<F, Fut, E>(name: String, serve: F) -> anyhow::Result<Self>
    where
        F: FnOnce(TcpListener, oneshot::Receiver<()>) -> Fut,
        Fut: Future<Output = Result<(), E>> + Send + 'static,
        E: std::fmt::Display,
    {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let (stop_tx, stop_rx) = oneshot::channel();
        let server = serve(listener, stop_rx);
        let task = tokio::spawn(async move {
            if let Err(err) = server.await {
                tracing::error!(%name, %err, "server failed");
            }
        });
        Ok(Self {
            addr,
            _stop_tx: stop_tx,
            task,
        })
    }

    async fn stop(self) {
        drop(self._stop_tx);
        let _ = self.task.await;
    }
}

/// Runs the simulation and prints the report.
pub async fn run(args: Args) -> anyhow::Result<()> {
    let fleet = concord_node::default_fleet();
    anyhow::ensure!(
        args.faulty <= fleet.len(),
        "--faulty must be at most {}",
        fleet.len()
    );
    anyhow::ensure!(args.rounds > 0, "--rounds must be at least 1");

    // A throwaway secret and oracle token: the simulation's processes all live in this one.
    let secret = ClusterSecret::new(concord::secrets::random_token())?;
    let oracle_token = concord::secrets::random_token();
    let registry_config = concord_registry::Config::new(secret.clone());
    let registry = InProcess::start("registry".into(), |listener, stop_rx| {
        concord_registry::serve(registry_config, listener, async {
            let _ = stop_rx.await;
        })
    })
    .await?;
    let registry_addr = registry.addr.to_string();

    let mut nodes = Vec::new();
    let mut behaviours = BTreeMap::new();
    let honest = fleet.len() - args.faulty;
    for (i, mut config) in fleet.into_iter().enumerate() {
        if i >= honest {
            config.behaviour = args.faulty_behaviour;
        }
        behaviours.insert(config.node_id.clone(), config.behaviour);
        config.registry = Some(registry_addr.clone());
        config.credential = Some(secret.issue(Principal::Node(config.node_id.clone())));
        nodes.push(
            InProcess::start(config.node_id.clone(), move |listener, stop_rx| {
                concord_node::serve(config, listener, async {
                    let _ = stop_rx.await;
                })
            })
            .await?,
        );
    }

    let iris = Iris::get();
    let holdout = iris.split(0).holdout;
    let features = iris.features();
    let labels = iris.labels();
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(args.seed);
    let mut order: Vec<usize> = Vec::with_capacity(args.rounds);
    while order.len() < args.rounds {
        let mut pass = holdout.clone();
        pass.shuffle(&mut rng);
        order.extend(pass);
    }
    order.truncate(args.rounds);

    let mut runs = Vec::new();
    for policy in &args.policies {
        let ledger_dir = tempfile::tempdir()?;
        let mut config = AggregatorConfig::with_ledger(
            registry_addr.clone(),
            ledger_dir.path().join("ledger"),
            StakingAuth {
                cluster_secret: secret.clone(),
                oracle_token: oracle_token.clone(),
            },
        );
        config.consensus.default_policy = *policy;
        config.credential = Some(secret.issue(Principal::Aggregator));
        let aggregator = InProcess::start("aggregator".into(), |listener, stop_rx| {
            concord_aggregator::serve(config, listener, async {
                let _ = stop_rx.await;
            })
        })
        .await?;
        let channel = concord::grpc::lazy_channel(&aggregator.addr.to_string())?;
        let mut predictor = PredictorClient::new(channel.clone());
        let mut staking = StakingClient::new(channel);
        for node_id in behaviours.keys() {
            let mut stake = tonic::Request::new(StakeRequest {
                node_id: node_id.clone(),
                amount: DEFAULT_INITIAL_STAKE,
                only_if_new: true,
            });
            secret
                .issue(Principal::Node(node_id.clone()))
                .attach(&mut stake);
            staking
                .stake(stake)
                .await
                .with_context(|| format!("{node_id} stakes {DEFAULT_INITIAL_STAKE}"))?;
        }
        wait_for_nodes(&mut predictor, behaviours.len()).await?;

        let mut run = PolicyRun {
            policy: *policy,
            correct: Vec::with_capacity(args.rounds),
            history: BTreeMap::new(),
            failures: 0,
        };
        for &row in &order {
            let truth = labels[row];
            let request = PredictRequest {
                features: features.row(row).to_vec(),
                policy: pb_policy(*policy) as i32,
            };
            match predictor.predict(request).await {
                Ok(reply) => {
                    let reply = reply.into_inner();
                    run.correct.push(reply.label as usize == truth);
                    let mut report = tonic::Request::new(ReportOutcomeRequest {
                        request_id: reply.request_id,
                        true_label: u32::try_from(truth)?,
                    });
                    concord::auth::attach_bearer(&mut report, &oracle_token);
                    staking
                        .report_outcome(report)
                        .await
                        .context("ReportOutcome")?;
                }
                Err(status) => {
                    tracing::warn!(%status, "consensus failed this round");
                    run.failures += 1;
                    run.correct.push(false);
                }
            }
            let accounts = staking
                .list_accounts(ListAccountsRequest {})
                .await
                .context("ListAccounts")?
                .into_inner()
                .accounts;
            for account in accounts {
                run.history
                    .entry(account.node_id)
                    .or_default()
                    .push((account.stake, account.trust));
            }
        }
        aggregator.stop().await;
        runs.push(run);
    }
    for node in nodes {
        node.stop().await;
    }
    registry.stop().await;

    print_report(&args, &runs, &behaviours);
    if let Some(dir) = args.chart.parent() {
        std::fs::create_dir_all(dir)?;
    }
    draw_chart(&args.chart, &runs)?;
    println!("chart: {}", args.chart.display());
    if args.check {
        check(&args, &runs, &behaviours)?;
        println!("acceptance check passed");
    }
    Ok(())
}

async fn wait_for_nodes(
    predictor: &mut PredictorClient<tonic::transport::Channel>,
    nodes: usize,
) -> anyhow::Result<()> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    loop {
        let probe = PredictRequest {
            features: vec![5.1, 3.5, 1.4, 0.2],
            policy: PbPolicy::Mean as i32,
        };
        if let Ok(reply) = predictor.predict(probe).await {
            if reply.into_inner().answered as usize == nodes {
                return Ok(());
            }
        }
        if tokio::time::Instant::now() > deadline {
            anyhow::bail!("the aggregator did not see {nodes} nodes within 15 s");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn pb_policy(policy: Policy) -> PbPolicy {
    match policy {
        Policy::Mean => PbPolicy::Mean,
        Policy::Trust => PbPolicy::Trust,
        Policy::Stake => PbPolicy::Stake,
    }
}

fn print_report(args: &Args, runs: &[PolicyRun], behaviours: &BTreeMap<String, Behaviour>) {
    println!(
        "\nconcord simulate: 5 nodes, {} faulty ({}), {} rounds per policy, hold-out rows shuffled (seed {})",
        args.faulty, args.faulty_behaviour, args.rounds, args.seed
    );
    for run in runs {
        println!(
            "\npolicy {:<6} accuracy {:.3} overall, {:.3} over the last {} rounds{}",
            run.policy.to_string(),
            run.accuracy(run.correct.len()),
            run.accuracy(args.window),
            args.window.min(run.correct.len()),
            if run.failures > 0 {
                format!(" ({} rounds without consensus)", run.failures)
            } else {
                String::new()
            }
        );
        println!(
            "  {:<8} {:<10} {:>7} {:>8} {:>9}",
            "NODE", "BEHAVIOUR", "TRUST", "STAKE", "OF START"
        );
        for (node, history) in &run.history {
            let (first, last) = (history.first(), history.last());
            if let (Some(first), Some(last)) = (first, last) {
                let behaviour = behaviours
                    .get(node)
                    .map(ToString::to_string)
                    .unwrap_or_default();
                println!(
                    "  {:<8} {:<10} {:>7.3} {:>8} {:>8.1}%",
                    node,
                    behaviour,
                    last.1,
                    last.0,
                    start_share(history)
                );
                let _ = first;
            }
        }
    }
}

/// Final stake as a percentage of the stake every node started with (its own deposit).
fn start_share(history: &[(u64, f64)]) -> f64 {
    let start = DEFAULT_INITIAL_STAKE as f64;
    history.last().map_or(0.0, |l| l.0 as f64 / start * 100.0)
}

fn check(
    args: &Args,
    runs: &[PolicyRun],
    behaviours: &BTreeMap<String, Behaviour>,
) -> anyhow::Result<()> {
    let find = |p: Policy| runs.iter().find(|r| r.policy == p);
    let (Some(mean), Some(stake)) = (find(Policy::Mean), find(Policy::Stake)) else {
        anyhow::bail!("--check needs the mean and stake policies");
    };
    if args.faulty == 0 {
        anyhow::ensure!(
            stake.accuracy(args.window) >= mean.accuracy(args.window),
            "with no faulty node, stake ({:.3}) is worse than mean ({:.3})",
            stake.accuracy(args.window),
            mean.accuracy(args.window)
        );
        return Ok(());
    }
    anyhow::ensure!(
        mean.accuracy(mean.correct.len()) < 0.5,
        "mean accuracy {:.3} is not below 0.5",
        mean.accuracy(mean.correct.len())
    );
    anyhow::ensure!(
        stake.accuracy(args.window) >= 0.90,
        "stake accuracy over the last {} rounds is {:.3} < 0.90",
        args.window,
        stake.accuracy(args.window)
    );
    for (node, behaviour) in behaviours {
        if *behaviour == Behaviour::Honest {
            continue;
        }
        let share = stake.history.get(node).map_or(0.0, |h| start_share(h));
        anyhow::ensure!(
            share < 20.0,
            "faulty {node} still holds {share:.1}% of its starting stake"
        );
    }
    Ok(())
}

fn draw_chart(path: &Path, runs: &[PolicyRun]) -> anyhow::Result<()> {
    let height = 320 * runs.len() as u32;
    let root = SVGBackend::new(path, (1200, height.max(320))).into_drawing_area();
    root.fill(&WHITE)?;
    let rows = root.split_evenly((runs.len().max(1), 2));
    let palette = [&BLUE, &GREEN, &MAGENTA, &RED, &BLACK, &CYAN];
    for (i, run) in runs.iter().enumerate() {
        let rounds = run.correct.len().max(1);
        let max_stake = run
            .history
            .values()
            .flat_map(|h| h.iter().map(|(s, _)| *s))
            .max()
            .unwrap_or(1)
            .max(1);
        let mut stake_chart = ChartBuilder::on(&rows[2 * i])
            .caption(format!("{} — stake", run.policy), ("sans-serif", 18))
            .margin(10)
            .x_label_area_size(30)
            .y_label_area_size(50)
            .build_cartesian_2d(0..rounds, 0..max_stake + max_stake / 10)?;
        stake_chart.configure_mesh().x_desc("round").draw()?;
        let mut trust_chart = ChartBuilder::on(&rows[2 * i + 1])
            .caption(format!("{} — trust", run.policy), ("sans-serif", 18))
            .margin(10)
            .x_label_area_size(30)
            .y_label_area_size(50)
            .build_cartesian_2d(0..rounds, 0.0..1.0)?;
        trust_chart.configure_mesh().x_desc("round").draw()?;
        for (n, (node, history)) in run.history.iter().enumerate() {
            let color = palette[n % palette.len()];
            stake_chart
                .draw_series(LineSeries::new(
                    history.iter().enumerate().map(|(r, (s, _))| (r, *s)),
                    color,
                ))?
                .label(node.clone())
                .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 15, y)], color));
            trust_chart.draw_series(LineSeries::new(
                history.iter().enumerate().map(|(r, (_, t))| (r, *t)),
                color,
            ))?;
        }
        stake_chart
            .configure_series_labels()
            .background_style(WHITE.mix(0.8))
            .border_style(BLACK)
            .draw()?;
    }
    root.present()?;
    Ok(())
}
