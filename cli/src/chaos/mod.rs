//! `concord chaos`: prove, on a real cluster, that the promises hold while parts fail.
//!
//! 1. **Cluster** (`cluster.rs`): start one (`concord up --auto-ports` in a temporary
//!    directory) or target a running one (`--target-data-dir`, or `--supervisor` +
//!    tokens + `--registry`).
//! 2. **Workload** (`workload.rs`): writers create products and place orders on the
//!    registry's primary, predictors ask the aggregator and report true labels, samplers
//!    read roles, lag and stakes — all recorded in a **history** (`history.rs`).
//! 3. **Faults** (`faults.rs`) from a schedule or a seed, applied through `concord up`'s
//!    supervisor admin API (`admin.rs`): kill -9 or stop the primary, freeze the
//!    replica, kill a node, turn a node liar and back, restart the registry.
//! 4. **Check** (`observe.rs` reads the cluster afterwards through its public APIs,
//!    `checker.rs` judges): acknowledged writes survive, orders exactly once, stock
//!    conserved, one primary per term, the ledger verifies, liars lose stake.
//! 5. **Report** (`report.rs`): a verdict table on stdout and `report.html`.
//!
//! Exit status: 0 when every invariant held (or was not exercised), non-zero on any
//! violation or when the run itself could not be carried out. Non-goals: network
//! partitions (they need namespaces: `tests/partition.rs`), mutual TLS towards the
//! cluster, and performance numbers (the load is steady on purpose).

mod admin;
mod checker;
mod cluster;
mod faults;
mod history;
mod observe;
mod probe;
mod report;
mod workload;

use std::path::PathBuf;
use std::time::{Duration, Instant};

use checker::Outcome;

/// Flags of `concord chaos`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// How long the workload runs.
    #[arg(long, default_value = "30s", value_parser = concord::config::parse_duration)]
    pub duration: Duration,
    /// Fault schedule: `<fault>@<start>[:<length>]`, comma-separated. Faults:
    /// kill-primary, stop-primary (default 4s), freeze-replica (default 3s),
    /// freeze-primary (default 4s), kill-node,
    /// liar-node (default 6s), restart-registry. E.g.
    /// `kill-primary@5s,freeze-replica@12s:3s`.
    #[arg(long, env = "CONCORD_CHAOS_FAULTS")]
    pub faults: Option<String>,
    /// Draw this many faults at random from the menu instead (with --seed).
    #[arg(long, default_value_t = 0)]
    pub random_faults: usize,
    /// Seed for random faults and for the choice of node to hit.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Replication of a started cluster's shops: sync or async.
    #[arg(long, default_value = "sync")]
    pub replication: String,
    /// Prediction nodes of a started cluster.
    #[arg(long, default_value_t = 3)]
    pub nodes: usize,
    /// Concurrent writers (one customer each).
    #[arg(long, default_value_t = 4)]
    pub writers: usize,
    /// Writes per second, all writers together.
    #[arg(long, default_value_t = 40.0)]
    pub write_rate: f64,
    /// Concurrent predictors.
    #[arg(long, default_value_t = 2)]
    pub predictors: usize,
    /// Predictions per second, all predictors together.
    #[arg(long, default_value_t = 10.0)]
    pub predict_rate: f64,
    /// Where to write the HTML report.
    #[arg(long, default_value = "report.html")]
    pub report: PathBuf,
    /// Also save the recorded history as JSON here.
    #[arg(long)]
    pub history: Option<PathBuf>,
    /// Keep a started cluster's data directory (its path is printed).
    #[arg(long)]
    pub keep_data: bool,
    /// Target the running cluster of this `concord up --data-dir` instead of starting one
    /// (needs --registry unless it is the default).
    #[arg(long)]
    pub target_data_dir: Option<PathBuf>,
    /// Target a running cluster through this supervisor admin API (needs --admin-token,
    /// --oracle-token and --registry).
    #[arg(long, conflicts_with = "target_data_dir")]
    pub supervisor: Option<String>,
    /// Admin token of the targeted cluster.
    #[arg(long, env = "CONCORD_ADMIN_TOKEN", hide_env_values = true)]
    pub admin_token: Option<String>,
    /// Oracle token of the targeted cluster.
    #[arg(long, env = "CONCORD_ORACLE_TOKEN", hide_env_values = true)]
    pub oracle_token: Option<String>,
    /// Registry of the targeted cluster.
    #[arg(long, default_value = concord::config::DEFAULT_REGISTRY_ADDR)]
    pub registry: String,
}

/// Runs chaos; an error (non-zero exit) on any violated invariant.
pub async fn run(args: Args) -> anyhow::Result<()> {
    let schedule = match (&args.faults, args.random_faults) {
        (Some(_), n) if n > 0 => anyhow::bail!("give --faults or --random-faults, not both"),
        (Some(text), _) => {
            faults::parse_schedule(text).map_err(|e| anyhow::anyhow!("--faults: {e}"))?
        }
        (None, n) => faults::random_schedule(n, args.seed, args.duration),
    };
    anyhow::ensure!(
        matches!(args.replication.as_str(), "sync" | "async"),
        "--replication must be sync or async (chaos needs a replica)"
    );
    let cluster = match (&args.target_data_dir, &args.supervisor) {
        (Some(dir), _) => cluster::Cluster::in_data_dir(dir, &args.registry)?,
        (None, Some(addr)) => {
            let (Some(admin), Some(oracle)) = (&args.admin_token, &args.oracle_token) else {
                anyhow::bail!("--supervisor needs --admin-token and --oracle-token");
            };
            cluster::Cluster::at(
                &args.registry,
                addr,
                workload::Tokens {
                    admin: admin.clone(),
                    oracle: oracle.clone(),
                },
            )
        }
        (None, None) => {
            println!(
                "chaos: starting a cluster ({} replication, {} nodes)",
                args.replication, args.nodes
            );
            cluster::Cluster::start(&cluster::StartOptions {
                nodes: args.nodes,
                replication: args.replication.clone(),
                keep_data: args.keep_data,
            })
            .await?
        }
    };
    let result = run_against(&args, schedule, &cluster).await;
    cluster.stop().await;
    result
}

async fn run_against(
    args: &Args,
    schedule: Vec<faults::Fault>,
    cluster: &cluster::Cluster,
) -> anyhow::Result<()> {
    let admin = match &cluster.admin_addr {
        Some(addr) => {
            let admin = admin::SupervisorClient::new(addr, &cluster.tokens.admin);
            let children = admin.children().await?;
            println!(
                "chaos: supervisor admin API at {addr} with {} children; registry at {}",
                children.len(),
                cluster.registry
            );
            Some(admin)
        }
        None if schedule.is_empty() => {
            println!("chaos: no supervisor admin API: a run without faults");
            None
        }
        None => anyhow::bail!(
            "faults need `concord up`'s supervisor admin API, and this cluster announced none"
        ),
    };
    let probe = probe::Probe::new(&cluster.registry);
    let shape = workload::LoadShape {
        writers: args.writers.max(1),
        write_rate: args.write_rate,
        predictors: args.predictors,
        predict_rate: args.predict_rate,
    };
    let setup = workload::set_up(&probe, &cluster.tokens, &shape).await?;
    // The mode the primary really runs in (a targeted cluster may differ from --replication).
    let mode = match probe.primary().await {
        Some((addr, _)) => probe.replication_status(&addr).await.map(|s| s.mode),
        None => None,
    };
    let replication = match mode {
        Some(m) if m == concord::pb::shop::v1::ReplicationMode::Async as i32 => "async",
        Some(m) if m == concord::pb::shop::v1::ReplicationMode::None as i32 => "none",
        _ => args.replication.as_str(),
    };
    let recorder = history::Recorder::new(replication);
    recorder.record(|h| {
        h.stock = setup
            .stock
            .iter()
            .map(|id| history::StockItem {
                id: id.clone(),
                initial: setup.initial_stock,
            })
            .collect();
    });
    println!(
        "chaos: {} writers at {}/s, {} predictors at {}/s for {:?}; faults: {}",
        shape.writers,
        shape.write_rate,
        shape.predictors,
        shape.predict_rate,
        args.duration,
        match schedule.is_empty() {
            true => "none".to_owned(),
            false => schedule
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join(", "),
        }
    );
    let until = Instant::now() + args.duration;
    let injector = admin.map(|admin| {
        tokio::spawn(faults::inject(
            schedule,
            admin,
            probe.clone(),
            recorder.clone(),
            args.seed,
        ))
    });
    workload::run(
        probe.clone(),
        cluster.tokens.clone(),
        shape,
        setup.clone(),
        recorder.clone(),
        until,
    )
    .await;
    // Faults whose end lies past the workload are undone before checking.
    if let Some(Err(err)) = match injector {
        Some(injector) => Some(injector.await),
        None => None,
    } {
        tracing::error!(%err, "the fault injector failed");
    }
    let history = recorder.snapshot();
    let seen = match observe::settled_primary(&probe).await {
        Ok((primary, term)) => {
            println!("chaos: checking against the final primary {primary} (term {term})");
            let mut seen =
                observe::observe(&probe, &primary, &cluster.tokens, &setup, &history).await?;
            seen.final_primary = Ok((primary, term));
            seen
        }
        Err(err) => {
            println!("chaos: {err}");
            checker::Observations {
                final_primary: Err(err.to_string()),
                ledger: observe::verify_ledger(&probe).await,
                ..checker::Observations::default()
            }
        }
    };
    for error in &seen.errors {
        println!("chaos: warning: {error}");
    }
    let verdicts = checker::check(&history, &seen);
    let failovers = checker::failovers(&history);

    println!();
    println!("{:<30} {:<6} EVIDENCE", "INVARIANT", "RESULT");
    for v in &verdicts {
        let result = match v.outcome {
            Outcome::Pass => "PASS",
            Outcome::Fail => "FAIL",
            Outcome::Skip => "skip",
        };
        println!("{:<30} {result:<6} {}", v.invariant, v.detail);
    }
    for f in &failovers {
        println!(
            "failover {} at {:.1}s: term {} -> {}, RTO {}",
            f.fault,
            f.fault_at_ms as f64 / 1000.0,
            f.from_term,
            f.to_term.map_or("?".into(), |t| t.to_string()),
            f.rto_ms.map_or("none".into(), |ms| format!("{ms} ms"))
        );
    }
    let title = format!(
        "concord chaos — {} mode, seed {}",
        history.replication, args.seed
    );
    std::fs::write(
        &args.report,
        report::render(&history, &verdicts, &failovers, &title),
    )
    .map_err(|e| anyhow::anyhow!("cannot write {}: {e}", args.report.display()))?;
    println!("chaos: report in {}", args.report.display());
    if let Some(path) = &args.history {
        std::fs::write(path, serde_json::to_vec_pretty(&history)?)
            .map_err(|e| anyhow::anyhow!("cannot write {}: {e}", path.display()))?;
        println!("chaos: history in {}", path.display());
    }
    let violated: Vec<&str> = verdicts
        .iter()
        .filter(|v| v.outcome == Outcome::Fail)
        .map(|v| v.invariant)
        .collect();
    anyhow::ensure!(
        violated.is_empty(),
        "chaos: {} invariant(s) violated: {}",
        violated.len(),
        violated.join(", ")
    );
    println!("chaos: every invariant held");
    Ok(())
}
