//! The cluster under test: one `concord chaos` starts itself (`concord up` as a child
//! process of this same binary, in a temporary data directory, `--auto-ports`), or one
//! already running, found by its data directory (`supervisor-admin.addr` and the secrets)
//! or given by addresses and tokens. Either way, chaos knows only what an operator knows:
//! the registry, the supervisor's admin API and the tokens.
//!
//! A started cluster is stopped with SIGTERM (the launcher stops its children in order)
//! and SIGKILL after [`STOP_GRACE`]; its log goes to `<data-dir>/up.log`.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

use super::workload::Tokens;

/// How long the launcher may take to bring the cluster up.
const START_WAIT: Duration = Duration::from_secs(90);
/// How long the launcher gets to stop its children after SIGTERM.
const STOP_GRACE: Duration = Duration::from_secs(20);
/// How long after the registry line the admin API line may still come.
const ADMIN_GRACE: Duration = Duration::from_secs(5);
/// The file `concord up` writes its admin API address to.
pub const ADMIN_ADDR_FILE: &str = "supervisor-admin.addr";
/// The line prefix `concord up` announces its admin API with.
const ADMIN_LINE: &str = "concord up: supervisor admin API at ";
/// The line prefix `concord up` announces the registry with.
const REGISTRY_LINE: &str = "cluster up; registry at ";

/// Where the cluster is and how to act on it.
pub struct Cluster {
    /// Registry address (or comma-separated list).
    pub registry: String,
    /// The supervisor admin API (`ip:port` or URL); `None` when the launcher has none
    /// (then only a fault-free run is possible).
    pub admin_addr: Option<String>,
    /// Admin and oracle tokens.
    pub tokens: Tokens,
    owned: Option<Owned>,
}

/// A cluster this process started.
struct Owned {
    launcher: Child,
    data_dir: PathBuf,
    _temp: Option<tempfile::TempDir>,
}

/// How to start a cluster.
pub struct StartOptions {
    /// Prediction nodes.
    pub nodes: usize,
    /// Shop replication mode.
    pub replication: String,
    /// Keep the data directory after the run (its path is printed).
    pub keep_data: bool,
}

impl Cluster {
    /// Starts `concord up` and waits until it has announced the registry and its admin API.
    pub async fn start(options: &StartOptions) -> anyhow::Result<Cluster> {
        let temp = tempfile::Builder::new()
            .prefix("concord-chaos-")
            .tempdir()?;
        let data_dir = temp.path().to_path_buf();
        let log = std::fs::File::create(data_dir.join("up.log"))?;
        let mut launcher = Command::new(std::env::current_exe()?)
            .args(["up", "--auto-ports", "--data-dir"])
            .arg(&data_dir)
            .args(["--nodes", &options.nodes.to_string()])
            .args(["--replication", &options.replication])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::from(log))
            .kill_on_drop(true)
            .spawn()?;
        let stdout = launcher
            .stdout
            .take()
            .ok_or_else(|| anyhow::anyhow!("no stdout of concord up"))?;
        let mut lines = BufReader::new(stdout).lines();
        let (mut registry, mut admin_addr) = (None, None);
        let announced = tokio::time::timeout(START_WAIT, async {
            while let Some(line) = lines.next_line().await? {
                tracing::debug!(line, "concord up");
                if let Some(rest) = line.strip_prefix(REGISTRY_LINE) {
                    registry = rest.split_once(". ").map(|(addr, _)| addr.to_owned());
                }
                if let Some(rest) = line.strip_prefix(ADMIN_LINE) {
                    admin_addr = Some(rest.trim().to_owned());
                }
                if registry.is_some() {
                    return Ok::<_, std::io::Error>(true);
                }
            }
            Ok(false)
        })
        .await;
        let owned = Owned {
            launcher,
            data_dir: data_dir.clone(),
            _temp: match options.keep_data {
                true => {
                    let _kept = temp.keep();
                    None
                }
                false => Some(temp),
            },
        };
        let failed = |owned: Owned, why: String| async move {
            let log = owned.data_dir.join("up.log");
            stop_launcher(owned).await;
            anyhow::anyhow!(
                "concord up did not start: {why} (its log: {})",
                log.display()
            )
        };
        match announced {
            Ok(Ok(true)) => {}
            Ok(Ok(false)) => return Err(failed(owned, "it exited".into()).await),
            Ok(Err(e)) => return Err(failed(owned, e.to_string()).await),
            Err(_) => {
                return Err(failed(owned, format!("nothing announced in {START_WAIT:?}")).await)
            }
        }
        // The admin API may be announced after the table; give it a moment.
        let grace = tokio::time::Instant::now() + ADMIN_GRACE;
        while admin_addr.is_none() && !data_dir.join(ADMIN_ADDR_FILE).exists() {
            match tokio::time::timeout_at(grace, lines.next_line()).await {
                Ok(Ok(Some(line))) => {
                    if let Some(rest) = line.strip_prefix(ADMIN_LINE) {
                        admin_addr = Some(rest.trim().to_owned());
                    }
                }
                _ => break,
            }
        }
        // Keep draining its stdout, or it blocks on a full pipe.
        tokio::spawn(async move {
            while let Ok(Some(line)) = lines.next_line().await {
                tracing::debug!(line, "concord up");
            }
        });
        let registry = registry.unwrap_or_default();
        let admin_addr = match admin_addr {
            Some(addr) => Some(addr),
            None => read_admin_addr(&data_dir).ok(),
        };
        let tokens = tokens_in(&data_dir)?;
        if options.keep_data {
            println!("chaos: cluster data kept in {}", data_dir.display());
        }
        Ok(Cluster {
            registry,
            admin_addr,
            tokens,
            owned: Some(owned),
        })
    }

    /// A running cluster, found by the data directory of its `concord up`.
    pub fn in_data_dir(data_dir: &Path, registry: &str) -> anyhow::Result<Cluster> {
        Ok(Cluster {
            registry: registry.to_owned(),
            admin_addr: Some(read_admin_addr(data_dir)?),
            tokens: tokens_in(data_dir)?,
            owned: None,
        })
    }

    /// A running cluster given by addresses and tokens.
    pub fn at(registry: &str, admin_addr: &str, tokens: Tokens) -> Cluster {
        Cluster {
            registry: registry.to_owned(),
            admin_addr: Some(admin_addr.to_owned()),
            tokens,
            owned: None,
        }
    }

    /// Stops the cluster if this process started it.
    pub async fn stop(self) {
        if let Some(owned) = self.owned {
            stop_launcher(owned).await;
        }
    }
}

fn read_admin_addr(data_dir: &Path) -> anyhow::Result<String> {
    let path = data_dir.join(ADMIN_ADDR_FILE);
    let addr = std::fs::read_to_string(&path).map_err(|e| {
        anyhow::anyhow!(
            "cannot read {}: {e} (is this `concord up` new enough to have the supervisor admin API?)",
            path.display()
        )
    })?;
    Ok(addr.trim().to_owned())
}

fn tokens_in(data_dir: &Path) -> anyhow::Result<Tokens> {
    let secrets = crate::roles::stored_secrets(data_dir)?;
    Ok(Tokens {
        admin: secrets.admin_token,
        oracle: secrets.oracle_token,
    })
}

async fn stop_launcher(mut owned: Owned) {
    if let Some(pid) = owned.launcher.id() {
        let pid = nix::unistd::Pid::from_raw(pid as i32);
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
    }
    if tokio::time::timeout(STOP_GRACE, owned.launcher.wait())
        .await
        .is_err()
    {
        tracing::warn!("concord up did not stop in {STOP_GRACE:?}; killing it");
        let _ = owned.launcher.kill().await;
    }
}
