//! `concord up`: the whole cluster on one machine, as supervised child processes of this
//! same binary.
//!
//! Start order: the registry first (everyone else registers with it), then every other
//! role at once. Stop order is the reverse. Addresses follow DESIGN.md's port plan, or, with
//! `--auto-ports`, free ports picked at start-up (tests, or two clusters side by side); a
//! restarted child gets the same address it had, so peers never need to be told.
//!
//! Every child that (re)starts and announces its address prints one line on stdout:
//! `concord up: <name> (<role>) pid <pid> running on <addr>` — scripts and tests follow it.

use std::{net::SocketAddr, path::PathBuf, time::Duration};

use crate::supervisor::{ChildSpec, ChildState, RestartPolicy, Supervised};

/// Flags of `concord up`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Directory for every process's data (sub-directories per process).
    #[arg(long, env = "CONCORD_DATA_DIR", default_value = "./data")]
    pub data_dir: PathBuf,
    /// Pick free ports instead of DESIGN.md's defaults (50050…, 8080).
    #[arg(long, env = "CONCORD_AUTO_PORTS")]
    pub auto_ports: bool,
    /// How long each child may take to announce its address.
    #[arg(long, default_value = "30s", value_parser = parse_duration)]
    pub start_timeout: Duration,
}

/// Parses `250ms`, `3s` or `2m`.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let (number, unit) = text
        .find(|c: char| !c.is_ascii_digit())
        .map(|i| text.split_at(i))
        .unwrap_or((text, "s"));
    let value: u64 = number
        .parse()
        .map_err(|_| format!("{text:?} is not a duration like 250ms, 3s or 2m"))?;
    match unit {
        "ms" => Ok(Duration::from_millis(value)),
        "s" => Ok(Duration::from_secs(value)),
        "m" => Ok(Duration::from_secs(value * 60)),
        _ => Err(format!("{text:?}: unit must be ms, s or m")),
    }
}

/// Picks addresses: DESIGN.md's defaults, or free loopback ports.
struct PortPlan {
    auto: bool,
}

impl PortPlan {
    fn addr(&self, default: &str) -> anyhow::Result<SocketAddr> {
        let default: SocketAddr = default.parse()?;
        if !self.auto {
            return Ok(default);
        }
        // Bind port 0, read the port, release it: the child binds it a moment later.
        let probe = std::net::TcpListener::bind((default.ip(), 0))?;
        Ok(probe.local_addr()?)
    }
}

/// Runs the cluster until Ctrl-C or SIGTERM.
pub async fn run(args: Args) -> anyhow::Result<()> {
    let shutdown = concord::shutdown::signal();
    std::fs::create_dir_all(&args.data_dir)?;
    let program = std::env::current_exe()?;
    let ports = PortPlan {
        auto: args.auto_ports,
    };
    let policy = RestartPolicy::default();

    let registry_addr = ports.addr(concord::config::DEFAULT_REGISTRY_ADDR)?;
    let tiers: Vec<Vec<ChildSpec>> = vec![vec![ChildSpec {
        name: "registry".into(),
        role: "registry".into(),
        program: program.clone(),
        args: vec![
            "registry".into(),
            "--listen".into(),
            registry_addr.to_string(),
        ],
    }]];

    let mut running: Vec<Supervised> = Vec::new();
    for tier in tiers {
        let started: Vec<Supervised> = tier
            .into_iter()
            .map(|spec| Supervised::start(spec, policy))
            .collect();
        for child in &started {
            if let Err(err) = child.wait_running(args.start_timeout).await {
                tracing::error!(%err, "start-up failed; stopping the cluster");
                running.extend(started);
                stop_all(running).await;
                return Err(err);
            }
        }
        running.extend(started);
    }
    print_table(&running, registry_addr);

    let announcer = tokio::spawn(announce_restarts(
        running
            .iter()
            .map(|c| (c.spec.clone(), c.status_receiver()))
            .collect(),
    ));
    shutdown.await;
    announcer.abort();
    stop_all(running).await;
    Ok(())
}

/// Stops children in reverse start order.
async fn stop_all(mut running: Vec<Supervised>) {
    while let Some(child) = running.pop() {
        tracing::info!(child = %child.spec.name, "stopping");
        child.stop().await;
    }
}

fn print_table(running: &[Supervised], registry_addr: SocketAddr) {
    println!();
    println!(
        "{:<14} {:<11} {:<22} {:>8}",
        "NAME", "ROLE", "ADDRESS", "PID"
    );
    for child in running {
        let status = child.status();
        println!(
            "{:<14} {:<11} {:<22} {:>8}",
            child.spec.name,
            child.spec.role,
            status.address.map(|a| a.to_string()).unwrap_or_default(),
            status.pid.map(|p| p.to_string()).unwrap_or_default()
        );
    }
    println!();
    println!("cluster up; registry at {registry_addr}. `concord status --registry {registry_addr}` lists live instances. Ctrl-C stops everything.");
    for child in running {
        announce(&child.spec, &child.status());
    }
}

fn announce(spec: &ChildSpec, status: &crate::supervisor::ChildStatus) {
    if let (ChildState::Running, Some(pid), Some(addr)) =
        (&status.state, status.pid, status.address)
    {
        println!(
            "concord up: {} ({}) pid {pid} running on {addr}",
            spec.name, spec.role
        );
    }
}

/// Prints a line every time a child comes back after a restart, or gives up.
async fn announce_restarts(
    children: Vec<(
        ChildSpec,
        tokio::sync::watch::Receiver<crate::supervisor::ChildStatus>,
    )>,
) {
    let mut tasks = Vec::new();
    for (spec, mut status_rx) in children {
        tasks.push(tokio::spawn(async move {
            let mut last = status_rx.borrow_and_update().clone();
            while status_rx.changed().await.is_ok() {
                let status = status_rx.borrow_and_update().clone();
                if status.state != last.state || status.pid != last.pid {
                    match status.state {
                        ChildState::Running => announce(&spec, &status),
                        ChildState::Errored => {
                            println!("concord up: {} errored; left down", spec.name)
                        }
                        _ => {}
                    }
                }
                last = status;
            }
        }));
    }
    for task in tasks {
        let _ = task.await;
    }
}
