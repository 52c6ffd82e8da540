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
//! Every policy gets fresh node processes too, so a `sleeper:<n>`'s count of answers
//! starts from zero for each (the start-up probe that waits for the fleet is one answer).
//!
//! Adaptive liars (`--faulty-behaviour`, see node/src/behaviour.rs): `intermittent:<p>`
//! and `sleeper:<n>` run inside the node processes. `sybil` is inverted, and this harness
//! plays the attacker behind it: after a round in which a sybil's id is ejected, it
//! withdraws what is left (`Unstake`, with that id's credential) into the attacker's
//! wallet, stops the node and starts it again as `<id>-sybil<k>` with a credential for the new
//! id (we assume the attacker got a second identity admitted: the harness holds the
//! cluster secret, an attacker would need its operator). The new id answers the next
//! round with no account — no weight — and the round after that stakes `min(wallet,
//! 1000)` from the wallet, which starts with [`SYBIL_BUDGET`] tokens beyond the first
//! deposit; below the minimum stake it stays weightless. Nothing is minted for it.
//!
//! Prints, per policy, the accuracy overall and over the last `--window` rounds and every
//! node's final trust and stake; writes an SVG chart of stake and trust over the rounds
//! (a sybil's new ids are new lines that start where they entered). `--check` turns the
//! issue's acceptance criteria into the exit code (see [`Args::check`]).
//!
//! Accuracy ceiling on real data: two hold-out rows fool all five default models and
//! a third fools node-1 and node-2, the honest pair when three nodes lie. The honest nodes
//! alone score about 0.933 on the hold-out, below the synthetic targets (0.97, 0.95),
//! which `concord_aggregator::simulation` meets with independent 95 % honest nodes. So
//! `--check` asks the stake policy for `min(target, honest nodes alone)` over the window:
//! whatever the honest nodes could do without the liars, the liars must not take away.

use std::{
    collections::BTreeMap,
    future::Future,
    net::SocketAddr,
    path::{Path, PathBuf},
    time::Duration,
};

use anyhow::Context;
use concord::identity::{ClusterSecret, Principal};
use concord::pb::stake::v1::UnstakeRequest;
use concord::pb::{
    predict::v1::{predictor_client::PredictorClient, Policy as PbPolicy, PredictRequest},
    stake::v1::{
        staking_client::StakingClient, ListAccountsRequest, ReportOutcomeRequest, StakeRequest,
    },
};
use concord_aggregator::{
    policy::{Policy, ScoringParams, DEFAULT_INITIAL_STAKE},
    staking::StakingAuth,
    AggregatorConfig,
};
use concord_node::{Behaviour, Iris, Node, NodeConfig};
use plotters::prelude::*;
use rand::{seq::SliceRandom, SeedableRng};
use tokio::{net::TcpListener, sync::oneshot, task::JoinHandle};

/// Flags of `concord simulate`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Faulty nodes among the five (the last ones).
    #[arg(long, default_value_t = 3)]
    pub faulty: usize,
    /// Behaviour of the faulty nodes: inverted (colluding), random, slow:<ms>, or the
    /// adaptive liars intermittent:<p> (colluding on the same requests), sleeper:<n>
    /// (honest for n answers, then inverted) and sybil (back under a new id once ejected).
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
    /// Exit non-zero unless the stake policy meets the scenario's targets (meant for
    /// --faulty 3; "honest" = what the honest nodes alone score on the same rows):
    /// inverted/random/slow: mean < 0.5, stake >= min(0.90, honest) over the window, every
    /// liar under 20 % of its start; intermittent: stake >= min(0.97, honest), every liar
    /// under 20 %; sleeper: every sleeper loses >= 80 % of its peak stake within 50 rounds
    /// of the peak, stake >= min(0.95, honest); sybil: no new id has weight before it
    /// staked, stake >= min(0.95, honest). With no faulty node: stake no worse than mean.
    #[arg(long)]
    pub check: bool,
}

/// Tokens a sybil attacker holds beyond its first deposit, to stake its new ids with.
pub const SYBIL_BUDGET: u64 = 2 * DEFAULT_INITIAL_STAKE;
/// Rounds after its peak within which a sleeper must have lost 80 % of its stake.
pub const SLEEPER_GRACE_ROUNDS: usize = 50;

/// One policy's run.
struct PolicyRun {
    policy: Policy,
    correct: Vec<bool>,
    /// node id → (round, stake, trust) after each round it had an account.
    history: BTreeMap<String, Vec<(usize, u64, f64)>>,
    failures: usize,
    /// Sybil ids that had a positive weight in a round before they staked: (id, round).
    weighed_unstaked: Vec<(String, usize)>,
    /// Rounds a sybil's new id played without an account.
    unstaked_rounds: usize,
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

/// A node process of the run and what its attacker (if any) holds.
struct Slot {
    config: NodeConfig,
    process: InProcess,
    /// Tokens outside the ledger (sybils only).
    wallet: u64,
    /// Comebacks so far (sybils only).
    comebacks: usize,
    /// The current id came back this round and stakes before the next.
    stake_next: bool,
}

async fn start_node(config: NodeConfig) -> anyhow::Result<InProcess> {
    InProcess::start(config.node_id.clone(), move |listener, stop_rx| {
        concord_node::serve(config, listener, async {
            let _ = stop_rx.await;
        })
    })
    .await
}

/// Stakes `amount` for `node_id` with its credential.
async fn stake(
    staking: &mut StakingClient<tonic::transport::Channel>,
    secret: &ClusterSecret,
    node_id: &str,
    amount: u64,
) -> anyhow::Result<()> {
    let mut request = tonic::Request::new(StakeRequest {
        node_id: node_id.to_string(),
        amount,
        only_if_new: false,
    });
    secret
        .issue(Principal::Node(node_id.to_string()))
        .attach(&mut request);
    staking
        .stake(request)
        .await
        .with_context(|| format!("{node_id} stakes {amount}"))?;
    Ok(())
}

/// Per round, whether the honest nodes alone (the plain mean of their answers) are right:
/// the ceiling the liars must not push the stake policy below.
fn honest_reference(honest: &[NodeConfig], order: &[usize]) -> anyhow::Result<Vec<bool>> {
    let nodes = honest
        .iter()
        .map(|c| Node::new(c.clone()))
        .collect::<Result<Vec<_>, _>>()?;
    let iris = Iris::get();
    order
        .iter()
        .map(|&row| {
            let sample = iris.features().row(row).to_vec();
            let mut sum = [0.0; concord_node::NUM_CLASSES];
            for node in &nodes {
                for (s, p) in sum.iter_mut().zip(node.predict(&sample)?.probabilities) {
                    *s += p;
                }
            }
            Ok(!nodes.is_empty() && concord_node::argmax(&sum) == iris.labels()[row])
        })
        .collect()
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

    let honest = fleet.len() - args.faulty;
    let mut behaviours = BTreeMap::new();
    let fleet: Vec<NodeConfig> = fleet
        .into_iter()
        .enumerate()
        .map(|(i, mut config)| {
            if i >= honest {
                config.behaviour = args.faulty_behaviour;
            }
            behaviours.insert(config.node_id.clone(), config.behaviour);
            config.registry = Some(registry_addr.clone());
            config.credential = Some(secret.issue(Principal::Node(config.node_id.clone())));
            config
        })
        .collect();

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
    let reference = honest_reference(&fleet[..honest], &order)?;
    let min_stake = ScoringParams::default().min_stake;

    let mut runs = Vec::new();
    for policy in &args.policies {
        let mut slots = Vec::new();
        for config in &fleet {
            slots.push(Slot {
                process: start_node(config.clone()).await?,
                config: config.clone(),
                wallet: SYBIL_BUDGET,
                comebacks: 0,
                stake_next: false,
            });
        }
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
        for slot in &slots {
            stake(
                &mut staking,
                &secret,
                &slot.config.node_id,
                DEFAULT_INITIAL_STAKE,
            )
            .await?;
        }
        wait_for_nodes(&mut predictor, slots.len()).await?;

        let mut run = PolicyRun {
            policy: *policy,
            correct: Vec::with_capacity(args.rounds),
            history: BTreeMap::new(),
            failures: 0,
            weighed_unstaked: Vec::new(),
            unstaked_rounds: 0,
        };
        let mut ejected: BTreeMap<String, bool> = BTreeMap::new();
        for (round, &row) in order.iter().enumerate() {
            play_sybils(
                &mut slots,
                &ejected,
                &mut staking,
                &mut predictor,
                &secret,
                min_stake,
            )
            .await?;
            let truth = labels[row];
            let request = PredictRequest {
                features: features.row(row).to_vec(),
                policy: pb_policy(*policy) as i32,
            };
            match predictor.predict(request).await {
                Ok(reply) => {
                    let reply = reply.into_inner();
                    run.correct.push(reply.label as usize == truth);
                    for slot in slots.iter().filter(|s| s.stake_next) {
                        run.unstaked_rounds += 1;
                        let weighed = reply
                            .votes
                            .iter()
                            .any(|v| v.node_id == slot.config.node_id && v.weight > 0.0);
                        if weighed {
                            run.weighed_unstaked
                                .push((slot.config.node_id.clone(), round));
                        }
                    }
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
                ejected.insert(account.node_id.clone(), account.ejected);
                run.history.entry(account.node_id).or_default().push((
                    round,
                    account.stake,
                    account.trust,
                ));
            }
        }
        aggregator.stop().await;
        for slot in slots {
            slot.process.stop().await;
        }
        runs.push(run);
    }
    registry.stop().await;

    print_report(&args, &runs, &behaviours, &reference);
    if let Some(dir) = args.chart.parent() {
        std::fs::create_dir_all(dir)?;
    }
    draw_chart(&args.chart, &runs, &args.faulty_behaviour)?;
    println!("chart: {}", args.chart.display());
    if args.check {
        check(&args, &runs, &behaviours, &reference)?;
        println!("acceptance check passed");
    }
    Ok(())
}

/// The sybil attacker's move before a round (see the module doc): stake the id that came
/// back last round from the wallet; bring an ejected id back under a new one.
async fn play_sybils(
    slots: &mut [Slot],
    ejected: &BTreeMap<String, bool>,
    staking: &mut StakingClient<tonic::transport::Channel>,
    predictor: &mut PredictorClient<tonic::transport::Channel>,
    secret: &ClusterSecret,
    min_stake: u64,
) -> anyhow::Result<()> {
    let mut restarted = false;
    for slot in slots.iter_mut() {
        if slot.config.behaviour != Behaviour::Sybil {
            continue;
        }
        let id = slot.config.node_id.clone();
        if slot.stake_next {
            slot.stake_next = false;
            let amount = slot.wallet.min(DEFAULT_INITIAL_STAKE);
            if amount >= min_stake {
                slot.wallet -= amount;
                stake(staking, secret, &id, amount).await?;
                tracing::info!(node = %id, amount, wallet = slot.wallet, "sybil staked its new id");
            }
            continue;
        }
        if ejected.get(&id) != Some(&true) {
            continue;
        }
        let account = staking
            .get_account(concord::pb::stake::v1::GetAccountRequest {
                node_id: id.clone(),
            })
            .await
            .context("GetAccount")?
            .into_inner()
            .account;
        let left = account.map_or(0, |a| a.stake);
        if left > 0 {
            let mut request = tonic::Request::new(UnstakeRequest {
                node_id: id.clone(),
                amount: left,
            });
            secret
                .issue(Principal::Node(id.clone()))
                .attach(&mut request);
            staking
                .unstake(request)
                .await
                .with_context(|| format!("{id} withdraws {left}"))?;
            slot.wallet += left;
        }
        slot.comebacks += 1;
        let base = base_id(&id).to_string();
        let new_id = format!("{base}-sybil{}", slot.comebacks);
        let mut config = slot.config.clone();
        config.node_id = new_id.clone();
        config.credential = Some(secret.issue(Principal::Node(new_id.clone())));
        let process = start_node(config.clone()).await?;
        let old = std::mem::replace(&mut slot.process, process);
        old.stop().await;
        slot.config = config;
        slot.stake_next = true;
        restarted = true;
        tracing::info!(old = %id, new = %new_id, wallet = slot.wallet, "sybil came back under a new id");
    }
    if restarted {
        wait_for_nodes(predictor, slots.len()).await?;
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

/// Share of `rounds` (their last `window`) that are true.
fn window_share(rounds: &[bool], window: usize) -> f64 {
    let tail = &rounds[rounds.len().saturating_sub(window)..];
    if tail.is_empty() {
        return 0.0;
    }
    tail.iter().filter(|c| **c).count() as f64 / tail.len() as f64
}

fn print_report(
    args: &Args,
    runs: &[PolicyRun],
    behaviours: &BTreeMap<String, Behaviour>,
    reference: &[bool],
) {
    println!(
        "\nconcord simulate: 5 nodes, {} faulty ({}), {} rounds per policy, hold-out rows shuffled (seed {})",
        args.faulty, args.faulty_behaviour, args.rounds, args.seed
    );
    println!(
        "honest nodes alone: accuracy {:.3} overall, {:.3} over the last {} rounds",
        window_share(reference, reference.len()),
        window_share(reference, args.window),
        args.window.min(reference.len())
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
            "  {:<14} {:<16} {:>7} {:>8} {:>9} {:>6} {:>13}",
            "NODE", "BEHAVIOUR", "TRUST", "STAKE", "OF START", "PEAK", "-80% IN ROUNDS"
        );
        for (node, history) in &run.history {
            let Some(last) = history.last() else {
                continue;
            };
            let behaviour = behaviours
                .get(base_id(node))
                .map(ToString::to_string)
                .unwrap_or_default();
            let peak = history.iter().map(|h| h.1).max().unwrap_or(0);
            println!(
                "  {:<14} {:<16} {:>7.3} {:>8} {:>8.1}% {:>6} {:>13}",
                node,
                behaviour,
                last.2,
                last.1,
                start_share(history),
                peak,
                rounds_to_lose_most(history).map_or("-".to_string(), |r| r.to_string())
            );
        }
        if run.unstaked_rounds > 0 {
            println!(
                "  sybil: {} rounds played by new ids before they staked, {} of them with weight",
                run.unstaked_rounds,
                run.weighed_unstaked.len()
            );
        }
    }
}

/// The node id a sybil started with (`node-5-sybil2` → `node-5`).
fn base_id(node: &str) -> &str {
    node.split("-sybil").next().unwrap_or(node)
}

/// Final stake as a percentage of the stake every node started with (its own deposit).
fn start_share(history: &[(usize, u64, f64)]) -> f64 {
    let start = DEFAULT_INITIAL_STAKE as f64;
    history.last().map_or(0.0, |l| l.1 as f64 / start * 100.0)
}

/// Rounds from a node's peak stake until it holds at most 20 % of that peak (`None`: never).
fn rounds_to_lose_most(history: &[(usize, u64, f64)]) -> Option<usize> {
    let (peak_at, peak) = history
        .iter()
        .map(|h| (h.0, h.1))
        .max_by_key(|&(round, stake)| (stake, std::cmp::Reverse(round)))?;
    history
        .iter()
        .find(|h| h.0 > peak_at && h.1 as f64 <= 0.2 * peak as f64)
        .map(|h| h.0 - peak_at)
}

fn check(
    args: &Args,
    runs: &[PolicyRun],
    behaviours: &BTreeMap<String, Behaviour>,
    reference: &[bool],
) -> anyhow::Result<()> {
    let find = |p: Policy| runs.iter().find(|r| r.policy == p);
    let Some(stake) = find(Policy::Stake) else {
        anyhow::bail!("--check needs the stake policy");
    };
    if args.faulty == 0 {
        let Some(mean) = find(Policy::Mean) else {
            anyhow::bail!("--check without faulty nodes needs the mean policy");
        };
        anyhow::ensure!(
            stake.accuracy(args.window) >= mean.accuracy(args.window),
            "with no faulty node, stake ({:.3}) is worse than mean ({:.3})",
            stake.accuracy(args.window),
            mean.accuracy(args.window)
        );
        return Ok(());
    }
    let honest = window_share(reference, args.window);
    let target = match args.faulty_behaviour {
        Behaviour::Intermittent(_) => 0.97,
        Behaviour::Sleeper(_) | Behaviour::Sybil => 0.95,
        _ => 0.90,
    };
    let want = f64::min(target, honest);
    anyhow::ensure!(
        stake.accuracy(args.window) >= want,
        "stake accuracy over the last {} rounds is {:.3} < {want:.3} (target {target}, honest nodes alone {honest:.3})",
        args.window,
        stake.accuracy(args.window)
    );
    let liars = behaviours
        .iter()
        .filter(|(_, b)| **b != Behaviour::Honest)
        .map(|(node, _)| node);
    match args.faulty_behaviour {
        Behaviour::Sleeper(_) => {
            for node in liars {
                let history = stake.history.get(node).map_or(&[][..], |h| &h[..]);
                let lost = rounds_to_lose_most(history);
                anyhow::ensure!(
                    lost.is_some_and(|r| r <= SLEEPER_GRACE_ROUNDS),
                    "sleeper {node} did not lose 80 % of its peak stake within {SLEEPER_GRACE_ROUNDS} rounds ({lost:?})"
                );
            }
        }
        Behaviour::Sybil => {
            anyhow::ensure!(
                stake.unstaked_rounds > 0,
                "no sybil came back under a new id"
            );
            anyhow::ensure!(
                stake.weighed_unstaked.is_empty(),
                "sybil ids had weight before they staked: {:?}",
                stake.weighed_unstaked
            );
        }
        other => {
            if !matches!(other, Behaviour::Intermittent(_)) {
                let Some(mean) = find(Policy::Mean) else {
                    anyhow::bail!("--check needs the mean policy");
                };
                anyhow::ensure!(
                    mean.accuracy(mean.correct.len()) < 0.5,
                    "mean accuracy {:.3} is not below 0.5",
                    mean.accuracy(mean.correct.len())
                );
            }
            for node in liars {
                let share = stake.history.get(node).map_or(0.0, |h| start_share(h));
                anyhow::ensure!(
                    share < 20.0,
                    "faulty {node} still holds {share:.1}% of its starting stake"
                );
            }
        }
    }
    Ok(())
}

fn draw_chart(path: &Path, runs: &[PolicyRun], behaviour: &Behaviour) -> anyhow::Result<()> {
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
            .flat_map(|h| h.iter().map(|(_, s, _)| *s))
            .max()
            .unwrap_or(1)
            .max(1);
        let mut stake_chart = ChartBuilder::on(&rows[2 * i])
            .caption(
                format!("{} — stake ({behaviour} liars)", run.policy),
                ("sans-serif", 18),
            )
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
                    history.iter().map(|(r, s, _)| (*r, *s)),
                    color,
                ))?
                .label(node.clone())
                .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 15, y)], color));
            trust_chart.draw_series(LineSeries::new(
                history.iter().map(|(r, _, t)| (*r, *t)),
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
