//! A small process supervisor in the spirit of PM2: it runs each child, restarts it when it
//! dies, and stops them all in order.
//!
//! Restart policy: after a crash the child is restarted after a backoff that starts at
//! [`RestartPolicy::initial_backoff`] and doubles up to [`RestartPolicy::max_backoff`]. A
//! child that ran for at least [`RestartPolicy::stable_after`] is considered healthy again:
//! its backoff and crash count reset. After [`RestartPolicy::max_fast_crashes`] crashes in a
//! row that each came before `stable_after`, the child is marked `errored` and left down
//! (a crash loop is a bug to look at, not something to hammer).
//!
//! Shutdown has two steps. [`Supervised::hold_restarts`] first: from then on a child that
//! exits stays down. Ctrl-C in a terminal signals the whole process group, so every child
//! exits by itself at about the moment the launcher starts stopping them in order; without
//! this step each supervisor would take that exit for a crash and restart the child after
//! its backoff, and the ordered stop would then wait for freshly started processes (a
//! node training its model, a replica reconnecting) before the launcher could exit.
//! [`Supervised::stop`] then stops a child that is still running (SIGTERM, then SIGKILL).
//!
//! Operators' orders ([`Control`]: kill, freeze/thaw, stop/start, restart with new
//! arguments) reach a child through [`Controller`], a channel into the child's own
//! supervising task: that task alone spawns, signals and re-specs its process, so an order
//! never races the restart loop (a kill is then just a crash, restarted with the usual
//! backoff; a child stopped by order stays down until started). `concord up` serves them
//! over HTTP (`crate::up_admin`).
//!
//! Each child's stdout and stderr are read line by line and echoed on the supervisor's
//! stderr, prefixed with the child's name; the line `concord <role> listening on <addr>`
//! marks the child ready. [`ChildrenCollector`] puts every child's state and restarts on
//! the launcher's metrics page (`concord up --metrics-addr`). Children die with the supervisor (PR_SET_PDEATHSIG on Linux), so a
//! killed launcher leaves no orphans behind.

use concord::retry::RetryPolicy;
use std::{
    net::SocketAddr,
    path::PathBuf,
    process::Stdio,
    time::{Duration, Instant},
};

use tokio::{
    io::{AsyncBufReadExt, AsyncRead, BufReader},
    process::{Child, Command},
    sync::{mpsc, oneshot, watch},
    task::JoinHandle,
};

/// When to restart and when to give up.
#[derive(Clone, Copy, Debug)]
pub struct RestartPolicy {
    /// Wait before the first restart after a crash.
    pub initial_backoff: Duration,
    /// Longest wait between restarts.
    pub max_backoff: Duration,
    /// A child up this long is healthy again: backoff and crash count reset.
    pub stable_after: Duration,
    /// Crashes in a row, each before `stable_after`, after which the child is left down.
    pub max_fast_crashes: u32,
    /// How long a stopping child gets after SIGTERM before SIGKILL.
    pub stop_timeout: Duration,
}

impl Default for RestartPolicy {
    fn default() -> Self {
        Self {
            initial_backoff: Duration::from_millis(100),
            max_backoff: Duration::from_secs(10),
            stable_after: Duration::from_secs(15),
            max_fast_crashes: 8,
            stop_timeout: Duration::from_secs(5),
        }
    }
}

/// One child to run: `program args…`.
#[derive(Clone, Debug)]
pub struct ChildSpec {
    /// Unique name, e.g. "node-3".
    pub name: String,
    /// Role, for the table (registry, node, aggregator, shop, gateway).
    pub role: String,
    /// Program to run (the `concord` binary itself).
    pub program: PathBuf,
    /// Its arguments.
    pub args: Vec<String>,
    /// Environment variables set for it (secrets and credentials travel here, not in
    /// `args`, which every local user can read in `ps`).
    pub env: Vec<(String, String)>,
}

/// Variables that carry a secret: a child gets only those its spec names, never one
/// inherited from the launcher's environment (a node must not learn the cluster secret).
pub const SECRET_ENV_VARS: [&str; 5] = [
    "CONCORD_CLUSTER_SECRET",
    "CONCORD_ADMIN_TOKEN",
    "CONCORD_ORACLE_TOKEN",
    "CONCORD_SESSION_KEY",
    "CONCORD_CREDENTIAL",
];

/// Where a child is in its life.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ChildState {
    /// Spawned, not yet announced its address.
    Starting,
    /// Announced its address.
    Running,
    /// Died; waiting to restart.
    Backoff,
    /// Crashed too often; left down.
    Errored,
    /// Stopped on request.
    Stopped,
    /// Stopped with SIGSTOP on request (still there, answers nothing) until thawed.
    Frozen,
}

impl ChildState {
    /// The state's name in the admin API and logs.
    pub fn as_str(self) -> &'static str {
        match self {
            ChildState::Starting => "starting",
            ChildState::Running => "running",
            ChildState::Backoff => "backoff",
            ChildState::Errored => "errored",
            ChildState::Stopped => "stopped",
            ChildState::Frozen => "frozen",
        }
    }
}

/// A child's state as the supervisor sees it.
#[derive(Clone, Debug)]
pub struct ChildStatus {
    /// Current state.
    pub state: ChildState,
    /// Process id while it runs.
    pub pid: Option<u32>,
    /// Address it announced.
    pub address: Option<SocketAddr>,
    /// Restarts so far.
    pub restarts: u32,
    /// Whether the current process announced its address (a thawed child goes back to
    /// `Running` only if it had).
    pub announced: bool,
}

/// What the owner wants from a child's supervisor; only ever moves forward.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Phase {
    /// Keep the child running: restart it when it dies.
    Run,
    /// Shutting down: leave the child running, but do not restart it once it exits.
    HoldRestarts,
    /// Stop the child now.
    Stop,
}

/// An operator's order for one child, carried out by the child's own supervising task
/// (so it never races that task's restart loop).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Control {
    /// SIGKILL the running process; it is restarted as after any crash.
    Kill,
    /// SIGSTOP the running process.
    Freeze,
    /// SIGCONT a frozen process.
    Thaw,
    /// Stop the process (SIGTERM, then SIGKILL) and keep it down until [`Control::Start`].
    Stop,
    /// Start a child that was stopped (or gave up as errored) again.
    Start,
    /// Replace the child's arguments and restart it now with them (a child held down
    /// keeps them for its next start).
    Restart(Vec<String>),
}

impl Control {
    /// The action's name in the admin API, logs and metrics.
    pub fn action(&self) -> &'static str {
        match self {
            Control::Kill => "kill",
            Control::Freeze => "freeze",
            Control::Thaw => "thaw",
            Control::Stop => "stop",
            Control::Start => "start",
            Control::Restart(_) => "restart",
        }
    }
}

/// Why an order was refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ControlError {
    /// The order needs a running process and there is none.
    #[error("{child} has no running process (state {state}); start it first")]
    NotRunning {
        /// The child.
        child: String,
        /// Its state.
        state: &'static str,
    },
    /// The child is already where the order would put it.
    #[error("{child} is already {state}")]
    Already {
        /// The child.
        child: String,
        /// Its state.
        state: &'static str,
    },
    /// The supervisor has ended (the launcher is shutting down).
    #[error("{child}'s supervisor has ended (shutting down)")]
    Gone {
        /// The child.
        child: String,
    },
}

struct Order {
    control: Control,
    reply: oneshot::Sender<Result<(), ControlError>>,
}

/// A cloneable handle that reads a child's state and spec and gives it orders (the
/// admin API holds one per child).
#[derive(Clone)]
pub struct Controller {
    /// The child's name.
    pub name: String,
    /// Its role.
    pub role: String,
    status_rx: watch::Receiver<ChildStatus>,
    spec_rx: watch::Receiver<ChildSpec>,
    orders: mpsc::Sender<Order>,
}

impl Controller {
    /// The latest status.
    pub fn status(&self) -> ChildStatus {
        self.status_rx.borrow().clone()
    }

    /// The spec the child runs with now (or will at its next start).
    pub fn spec(&self) -> ChildSpec {
        self.spec_rx.borrow().clone()
    }

    /// Gives the order and waits until the supervising task carried it out.
    pub async fn send(&self, control: Control) -> Result<(), ControlError> {
        let gone = || ControlError::Gone {
            child: self.name.clone(),
        };
        let (reply, answer) = oneshot::channel();
        self.orders
            .send(Order { control, reply })
            .await
            .map_err(|_| gone())?;
        answer.await.map_err(|_| gone())?
    }
}

/// A supervised child.
pub struct Supervised {
    /// What runs (as first started: name and role never change; see
    /// [`Controller::spec`] for the current arguments).
    pub spec: ChildSpec,
    status_rx: watch::Receiver<ChildStatus>,
    spec_rx: watch::Receiver<ChildSpec>,
    orders: mpsc::Sender<Order>,
    phase_tx: watch::Sender<Phase>,
    task: JoinHandle<()>,
}

impl Supervised {
    /// Starts supervising `spec`.
    pub fn start(spec: ChildSpec, policy: RestartPolicy) -> Self {
        let (status_tx, status_rx) = watch::channel(ChildStatus {
            state: ChildState::Starting,
            pid: None,
            address: None,
            restarts: 0,
            announced: false,
        });
        let (phase_tx, phase_rx) = watch::channel(Phase::Run);
        let (spec_tx, spec_rx) = watch::channel(spec.clone());
        let (orders, orders_rx) = mpsc::channel(8);
        let task = tokio::spawn(
            ChildTask {
                spec: spec.clone(),
                policy,
                status_tx,
                spec_tx,
                phase_rx,
                orders: orders_rx,
            }
            .run(),
        );
        Self {
            spec,
            status_rx,
            spec_rx,
            orders,
            phase_tx,
            task,
        }
    }

    /// A handle for giving the child orders.
    pub fn controller(&self) -> Controller {
        Controller {
            name: self.spec.name.clone(),
            role: self.spec.role.clone(),
            status_rx: self.status_rx.clone(),
            spec_rx: self.spec_rx.clone(),
            orders: self.orders.clone(),
        }
    }

    /// A receiver that sees every status change.
    pub fn status_receiver(&self) -> watch::Receiver<ChildStatus> {
        self.status_rx.clone()
    }

    /// The latest status.
    pub fn status(&self) -> ChildStatus {
        self.status_rx.borrow().clone()
    }

    /// Waits until the child announced its address, or `timeout` passed.
    pub async fn wait_running(&self, timeout: Duration) -> anyhow::Result<SocketAddr> {
        let mut status_rx = self.status_rx.clone();
        let status = tokio::time::timeout(
            timeout,
            status_rx
                .wait_for(|s| s.state == ChildState::Running || s.state == ChildState::Errored),
        )
        .await
        .map_err(|_| anyhow::anyhow!("{} did not start within {timeout:?}", self.spec.name))??
        .clone();
        match (status.state, status.address) {
            (ChildState::Running, Some(addr)) => Ok(addr),
            _ => anyhow::bail!("{} failed to start (see its log above)", self.spec.name),
        }
    }

    /// Never restarts the child again: once it exits (by itself, or by [`stop`](Self::stop))
    /// it stays `Stopped`. Call it on every child before stopping any of them.
    pub fn hold_restarts(&self) {
        self.phase_tx
            .send_if_modified(|phase| advance(phase, Phase::HoldRestarts));
    }

    /// Stops the child (SIGTERM, then SIGKILL after the policy's timeout) and waits.
    pub async fn stop(self) {
        self.phase_tx
            .send_if_modified(|phase| advance(phase, Phase::Stop));
        if let Err(err) = self.task.await {
            tracing::error!(child = %self.spec.name, %err, "supervisor task failed");
        }
    }
}

/// Moves `phase` forward to `to` (never back); true when it changed.
fn advance(phase: &mut Phase, to: Phase) -> bool {
    if *phase < to {
        *phase = to;
        true
    } else {
        false
    }
}

/// How a run of the process ended.
enum RunEnd {
    /// It exited by itself (or by an admin's SIGKILL): a crash, unless shutting down.
    Exited(std::io::Result<std::process::ExitStatus>),
    /// The owner stopped it (shutdown): the task ends.
    Shutdown,
    /// An admin stopped it: keep it down until started.
    Held,
    /// An admin changed its arguments: start it again at once.
    Respawn,
}

/// Where the child goes after waiting while down.
enum Wake {
    /// Start the process (again).
    Start,
    /// The task ends (shutdown).
    Shutdown,
}

/// One child's supervising task: the only place its process is spawned, signalled and
/// its spec changed, so orders and crash handling never race.
struct ChildTask {
    spec: ChildSpec,
    policy: RestartPolicy,
    status_tx: watch::Sender<ChildStatus>,
    spec_tx: watch::Sender<ChildSpec>,
    phase_rx: watch::Receiver<Phase>,
    orders: mpsc::Receiver<Order>,
}

impl ChildTask {
    async fn run(mut self) {
        let mut backoff =
            RetryPolicy::new(self.policy.initial_backoff, self.policy.max_backoff).backoff();
        let mut fast_crashes = 0u32;
        let mut restarts = 0u32;
        loop {
            let started = Instant::now();
            let mut child = match spawn(&self.spec) {
                Ok(child) => child,
                Err(err) => {
                    tracing::error!(child = %self.spec.name, %err, "cannot spawn");
                    match self.wait_down(ChildState::Errored).await {
                        Wake::Start => {
                            backoff.reset();
                            fast_crashes = 0;
                            restarts += 1;
                            continue;
                        }
                        Wake::Shutdown => return,
                    }
                }
            };
            let pid = child.id();
            self.status_tx.send_modify(|s| {
                s.state = ChildState::Starting;
                s.pid = pid;
                s.restarts = restarts;
                s.announced = false;
            });
            let name = &self.spec.name;
            let pumps = [
                child
                    .stdout
                    .take()
                    .map(|out| tokio::spawn(pump(name.clone(), out, Some(self.status_tx.clone())))),
                child
                    .stderr
                    .take()
                    .map(|err| tokio::spawn(pump(name.clone(), err, None))),
            ];

            let end = self.watch_process(&mut child).await;
            for pump in pumps.into_iter().flatten() {
                let _ = pump.await;
            }
            let exit = match end {
                RunEnd::Shutdown => return,
                RunEnd::Held => match self.wait_down(ChildState::Stopped).await {
                    Wake::Start => {
                        backoff.reset();
                        fast_crashes = 0;
                        restarts += 1;
                        continue;
                    }
                    Wake::Shutdown => return,
                },
                RunEnd::Respawn => {
                    restarts += 1;
                    continue;
                }
                RunEnd::Exited(exit) => exit,
            };
            let ran = started.elapsed();
            if *self.phase_rx.borrow() >= Phase::HoldRestarts {
                // Shutting down (e.g. Ctrl-C reached the whole process group): this exit is
                // final, not a crash.
                match exit {
                    Ok(status) => {
                        tracing::info!(child = %self.spec.name, pid, %status, "exited during shutdown; not restarted")
                    }
                    Err(err) => {
                        tracing::error!(child = %self.spec.name, %err, "cannot wait for child")
                    }
                }
                self.status_tx.send_modify(|s| {
                    s.state = ChildState::Stopped;
                    s.pid = None;
                });
                return;
            }
            match exit {
                Ok(status) => {
                    tracing::warn!(child = %self.spec.name, pid, %status, ran_ms = ran.as_millis() as u64, "child exited")
                }
                Err(err) => tracing::error!(child = %self.spec.name, %err, "cannot wait for child"),
            }
            if ran >= self.policy.stable_after {
                backoff.reset();
                fast_crashes = 0;
            } else {
                fast_crashes += 1;
            }
            if fast_crashes >= self.policy.max_fast_crashes {
                tracing::error!(child = %self.spec.name, fast_crashes, "crashing in a loop; giving up (errored)");
                match self.wait_down(ChildState::Errored).await {
                    Wake::Start => {
                        backoff.reset();
                        fast_crashes = 0;
                        restarts += 1;
                        continue;
                    }
                    Wake::Shutdown => return,
                }
            }
            self.status_tx.send_modify(|s| {
                s.state = ChildState::Backoff;
                s.pid = None;
            });
            let delay = backoff.next_delay();
            tracing::info!(child = %self.spec.name, backoff_ms = delay.as_millis() as u64, "restarting after backoff");
            let sleep = tokio::time::sleep(delay);
            tokio::pin!(sleep);
            loop {
                tokio::select! {
                    () = &mut sleep => break,
                    () = reached(&mut self.phase_rx, Phase::HoldRestarts) => {
                        self.status_tx.send_modify(|s| s.state = ChildState::Stopped);
                        return;
                    }
                    Some(order) = self.orders.recv() => {
                        if order.control == Control::Stop {
                            let _ = order.reply.send(Ok(()));
                            self.log_order(&Control::Stop);
                            match self.wait_down(ChildState::Stopped).await {
                                Wake::Start => {
                                    backoff.reset();
                                    fast_crashes = 0;
                                    break;
                                }
                                Wake::Shutdown => return,
                            }
                        }
                        self.answer_while_down(order, ChildState::Backoff);
                    }
                }
            }
            restarts += 1;
        }
    }

    /// Waits for the process to exit while carrying out orders.
    async fn watch_process(&mut self, child: &mut tokio::process::Child) -> RunEnd {
        let mut frozen = false;
        loop {
            tokio::select! {
                exit = child.wait() => return RunEnd::Exited(exit),
                () = reached(&mut self.phase_rx, Phase::Stop) => {
                    terminate(&self.spec.name, child, self.policy.stop_timeout).await;
                    self.status_tx.send_modify(|s| { s.state = ChildState::Stopped; s.pid = None; });
                    return RunEnd::Shutdown;
                }
                Some(order) = self.orders.recv() => {
                    let result = match &order.control {
                        Control::Kill => {
                            // Even a frozen process dies of SIGKILL; wait() sees the crash.
                            child.start_kill().map_err(|err| {
                                tracing::error!(child = %self.spec.name, %err, "SIGKILL failed");
                                self.not_running()
                            })
                        }
                        Control::Freeze if frozen => Err(self.already(ChildState::Frozen)),
                        Control::Freeze => signal(child, nix::sys::signal::Signal::SIGSTOP)
                            .map(|()| {
                                frozen = true;
                                self.status_tx.send_modify(|s| s.state = ChildState::Frozen);
                            })
                            .map_err(|()| self.not_running()),
                        Control::Thaw if !frozen => Err(self.already(self.status_tx.borrow().state)),
                        Control::Thaw => signal(child, nix::sys::signal::Signal::SIGCONT)
                            .map(|()| {
                                frozen = false;
                                self.status_tx.send_modify(|s| {
                                    s.state = if s.announced { ChildState::Running } else { ChildState::Starting };
                                });
                            })
                            .map_err(|()| self.not_running()),
                        Control::Start => Err(self.already(self.status_tx.borrow().state)),
                        Control::Stop | Control::Restart(_) => Ok(()),
                    };
                    match (&order.control, result) {
                        (Control::Stop, _) => {
                            self.log_order(&order.control);
                            terminate(&self.spec.name, child, self.policy.stop_timeout).await;
                            self.status_tx.send_modify(|s| { s.state = ChildState::Stopped; s.pid = None; });
                            let _ = order.reply.send(Ok(()));
                            return RunEnd::Held;
                        }
                        (Control::Restart(args), _) => {
                            self.log_order(&order.control);
                            self.set_args(args.clone());
                            terminate(&self.spec.name, child, self.policy.stop_timeout).await;
                            let _ = order.reply.send(Ok(()));
                            return RunEnd::Respawn;
                        }
                        (control, result) => {
                            if result.is_ok() {
                                self.log_order(control);
                            }
                            let _ = order.reply.send(result);
                        }
                    }
                }
            }
        }
    }

    /// Waits while the child is down in `state` (stopped by an admin, or errored) until it
    /// is started again or the launcher shuts down; answers orders meanwhile.
    async fn wait_down(&mut self, state: ChildState) -> Wake {
        self.status_tx.send_modify(|s| {
            s.state = state;
            s.pid = None;
        });
        loop {
            tokio::select! {
                () = reached(&mut self.phase_rx, Phase::HoldRestarts) => {
                    if state != ChildState::Errored {
                        self.status_tx.send_modify(|s| s.state = ChildState::Stopped);
                    }
                    return Wake::Shutdown;
                }
                order = self.orders.recv() => {
                    let Some(order) = order else {
                        // Every handle is gone: only a shutdown can come now.
                        reached(&mut self.phase_rx, Phase::HoldRestarts).await;
                        return Wake::Shutdown;
                    };
                    if order.control == Control::Start {
                        self.log_order(&order.control);
                        let _ = order.reply.send(Ok(()));
                        return Wake::Start;
                    }
                    self.answer_while_down(order, state);
                }
            }
        }
    }

    /// Answers an order that finds no process: new arguments are kept for the next
    /// start; anything else is refused.
    fn answer_while_down(&mut self, order: Order, state: ChildState) {
        let result = match order.control {
            Control::Restart(ref args) => {
                self.log_order(&order.control);
                self.set_args(args.clone());
                Ok(())
            }
            Control::Stop if state == ChildState::Stopped => Err(self.already(state)),
            Control::Start if state == ChildState::Backoff => Err(self.already(state)),
            _ => Err(self.not_running()),
        };
        let _ = order.reply.send(result);
    }

    fn set_args(&mut self, args: Vec<String>) {
        self.spec.args = args;
        self.spec_tx.send_replace(self.spec.clone());
    }

    fn log_order(&self, control: &Control) {
        tracing::info!(who = "admin", action = control.action(), child = %self.spec.name, "carrying out order");
    }

    fn not_running(&self) -> ControlError {
        ControlError::NotRunning {
            child: self.spec.name.clone(),
            state: self.status_tx.borrow().state.as_str(),
        }
    }

    fn already(&self, state: ChildState) -> ControlError {
        ControlError::Already {
            child: self.spec.name.clone(),
            state: state.as_str(),
        }
    }
}

/// Sends `signal` to the child's process; Err when it has already been reaped.
fn signal(child: &tokio::process::Child, signal: nix::sys::signal::Signal) -> Result<(), ()> {
    let pid = child.id().ok_or(())?;
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid as i32), signal).map_err(|_| ())
}

/// Resolves once the owner asked for `phase` or a later one (or the handle is gone).
async fn reached(phase_rx: &mut watch::Receiver<Phase>, phase: Phase) {
    let _ = phase_rx.wait_for(|current| *current >= phase).await;
}

fn spawn(spec: &ChildSpec) -> std::io::Result<Child> {
    let mut command = Command::new(&spec.program);
    for var in SECRET_ENV_VARS {
        command.env_remove(var);
    }
    command
        .args(&spec.args)
        .envs(spec.env.iter().map(|(k, v)| (k, v)))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    die_with_parent(&mut command);
    command.spawn()
}

/// Makes the child get SIGKILL when this process dies (Linux), so it is never orphaned.
#[cfg(target_os = "linux")]
#[allow(unsafe_code)]
pub(crate) fn die_with_parent(command: &mut Command) {
    // SAFETY: the closure runs in the forked child before exec and only calls prctl(2),
    // which is async-signal-safe; it touches no memory shared with the parent.
    unsafe {
        command.pre_exec(|| {
            nix::sys::prctl::set_pdeathsig(nix::sys::signal::Signal::SIGKILL)
                .map_err(std::io::Error::from)
        });
    }
}

/// Makes the child die with this process: a no-op off Linux.
#[cfg(not(target_os = "linux"))]
pub(crate) fn die_with_parent(_command: &mut Command) {}

/// Echoes a child's output, prefixed with its name; stdout also carries the ready line.
async fn pump(
    name: String,
    output: impl AsyncRead + Unpin,
    status_tx: Option<watch::Sender<ChildStatus>>,
) {
    let mut lines = BufReader::new(output).lines();
    while let Ok(Some(line)) = lines.next_line().await {
        if let (Some(status_tx), Some(addr)) = (
            status_tx.as_ref(),
            concord::config::parse_listening_line(&line),
        ) {
            status_tx.send_modify(|s| {
                // A frozen child stays frozen; thawing makes it Running (it announced).
                if s.state == ChildState::Starting {
                    s.state = ChildState::Running;
                }
                s.address = Some(addr);
                s.announced = true;
            });
        }
        eprintln!("[{name}] {line}");
    }
}

/// SIGTERM, then SIGKILL if the child is still there after `timeout`.
async fn terminate(name: &str, child: &mut Child, timeout: Duration) {
    if let Some(pid) = child.id() {
        let pid = nix::unistd::Pid::from_raw(pid as i32);
        if let Err(err) = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM) {
            tracing::warn!(child = name, %err, "SIGTERM failed");
        }
        // A frozen (SIGSTOPped) child only acts on the SIGTERM once continued.
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGCONT);
    }
    match tokio::time::timeout(timeout, child.wait()).await {
        Ok(Ok(status)) => tracing::info!(child = name, %status, "stopped"),
        Ok(Err(err)) => tracing::error!(child = name, %err, "cannot wait for child"),
        Err(_) => {
            tracing::warn!(child = name, "did not stop in time; killing");
            if let Err(err) = child.kill().await {
                tracing::error!(child = name, %err, "SIGKILL failed");
            }
        }
    }
}

/// The launcher's Prometheus families, read from the supervisors at scrape time:
/// `up_child_running{child,role}` (1 while announced) and
/// `up_child_restarts_total{child,role}`.
pub struct ChildrenCollector {
    children: Vec<(ChildSpec, watch::Receiver<ChildStatus>)>,
}

impl std::fmt::Debug for ChildrenCollector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ChildrenCollector")
            .field("children", &self.children.len())
            .finish()
    }
}

impl ChildrenCollector {
    /// Puts `running`'s children on the process's metrics page.
    pub fn register(running: &[Supervised]) {
        concord::metrics::register_collector(Box::new(ChildrenCollector {
            children: running
                .iter()
                .map(|c| (c.spec.clone(), c.status_receiver()))
                .collect(),
        }));
    }
}

impl prometheus_client::collector::Collector for ChildrenCollector {
    fn encode(
        &self,
        mut encoder: prometheus_client::encoding::DescriptorEncoder,
    ) -> Result<(), std::fmt::Error> {
        let labels =
            |spec: &ChildSpec| vec![("child", spec.name.clone()), ("role", spec.role.clone())];
        let statuses: Vec<_> = self
            .children
            .iter()
            .map(|(spec, status_rx)| (spec, status_rx.borrow().clone()))
            .collect();
        let running: Vec<_> = statuses
            .iter()
            .map(|(spec, status)| {
                (
                    labels(spec),
                    f64::from(u8::from(status.state == ChildState::Running)),
                )
            })
            .collect();
        concord::metrics::encode_gauges(
            &mut encoder,
            "up_child_running",
            "1 while the child runs and has announced its address.",
            &running,
        )?;
        let restarts: Vec<_> = statuses
            .iter()
            .map(|(spec, status)| (labels(spec), u64::from(status.restarts)))
            .collect();
        concord::metrics::encode_counters(
            &mut encoder,
            "up_child_restarts",
            "Times the supervisor restarted the child.",
            &restarts,
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shell(name: &str, script: &str) -> ChildSpec {
        ChildSpec {
            name: name.into(),
            role: "test".into(),
            program: "/bin/sh".into(),
            args: vec!["-c".into(), script.into()],
            env: Vec::new(),
        }
    }

    fn fast_policy() -> RestartPolicy {
        RestartPolicy {
            initial_backoff: Duration::from_millis(10),
            max_backoff: Duration::from_millis(40),
            stable_after: Duration::from_secs(10),
            max_fast_crashes: 3,
            stop_timeout: Duration::from_secs(2),
        }
    }

    /// A child that keeps crashing right after start is restarted with backoff, then left
    /// down as errored after `max_fast_crashes` crashes in a row.
    #[tokio::test]
    async fn crash_loop_ends_in_errored() {
        let child = Supervised::start(shell("crasher", "exit 3"), fast_policy());
        let err = child
            .wait_running(Duration::from_secs(10))
            .await
            .expect_err("never announces");
        assert!(err.to_string().contains("failed to start"), "{err}");
        let status = child.status();
        assert_eq!(status.state, ChildState::Errored);
        assert_eq!(status.restarts, 2, "3 crashes = the first run + 2 restarts");
        child.stop().await;
    }

    /// A child that announces its address is Running at that address; a crash brings it
    /// back with a new pid; stop() ends it with SIGTERM.
    #[tokio::test]
    async fn announced_child_runs_restarts_and_stops() {
        let script = "echo 'concord test listening on 127.0.0.1:4242'; \
                      if [ -e \"$0.crashed\" ]; then exec sleep 30; fi; touch \"$0.crashed\"; exit 1";
        let dir = tempfile::tempdir().expect("tempdir");
        let mut spec = shell("flaky", script);
        spec.args
            .push(dir.path().join("marker").to_string_lossy().into_owned());
        let child = Supervised::start(spec, fast_policy());
        let addr = child
            .wait_running(Duration::from_secs(10))
            .await
            .expect("announced");
        assert_eq!(addr, "127.0.0.1:4242".parse::<SocketAddr>().expect("addr"));

        let mut status_rx = child.status_receiver();
        let restarted = tokio::time::timeout(
            Duration::from_secs(10),
            status_rx.wait_for(|s| s.restarts == 1 && s.state == ChildState::Running),
        )
        .await
        .expect("restarted in time")
        .expect("supervisor alive")
        .clone();
        let pid = restarted.pid.expect("running child has a pid");

        child.stop().await;
        let gone = !std::path::Path::new(&format!("/proc/{pid}")).exists()
            || std::fs::read_to_string(format!("/proc/{pid}/stat"))
                .map(|stat| stat.contains(") Z "))
                .unwrap_or(true);
        assert!(gone, "child {pid} still running after stop");
    }

    /// Once restarts are held (shutdown began), a child that exits by itself, as on a
    /// Ctrl-C that reached the whole process group, stays down instead of coming back
    /// after its backoff; stop() then returns at once.
    #[tokio::test]
    async fn held_child_that_exits_is_not_restarted() {
        let script = "echo 'concord test listening on 127.0.0.1:4242'; exec sleep 30";
        let child = Supervised::start(shell("held", script), fast_policy());
        child
            .wait_running(Duration::from_secs(10))
            .await
            .expect("announced");
        let pid = child.status().pid.expect("running child has a pid");
        child.hold_restarts();
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(pid as i32),
            nix::sys::signal::Signal::SIGINT,
        )
        .expect("signal the child");
        let mut status_rx = child.status_receiver();
        let status = tokio::time::timeout(
            Duration::from_secs(10),
            status_rx.wait_for(|s| s.state == ChildState::Stopped),
        )
        .await
        .expect("stopped in time")
        .expect("supervisor alive")
        .clone();
        assert_eq!((status.restarts, status.pid), (0, None));
        // Longer than the backoff: a restart would have happened by now.
        tokio::time::sleep(fast_policy().max_backoff * 3).await;
        let status = child.status();
        assert_eq!(status.state, ChildState::Stopped, "{status:?}");
        assert_eq!(status.restarts, 0);
        let started = Instant::now();
        child.stop().await;
        assert!(started.elapsed() < Duration::from_secs(1), "stop waited");
    }

    /// Orders through a Controller: stop holds the child down past its backoff and a
    /// second stop is refused; start brings it back; a restart with new arguments runs
    /// them at once (the spec shows them); kill is a crash that is restarted.
    #[tokio::test]
    async fn orders_stop_start_restart_and_kill() {
        let script = "echo 'concord test listening on 127.0.0.1:4242'; exec sleep 30";
        let child = Supervised::start(shell("ordered", script), fast_policy());
        child
            .wait_running(Duration::from_secs(10))
            .await
            .expect("announced");
        let control = child.controller();
        let mut status_rx = child.status_receiver();
        let running_with_new_pid = |old: Option<u32>| {
            move |s: &ChildStatus| s.state == ChildState::Running && s.pid.is_some() && s.pid != old
        };

        control.send(Control::Stop).await.expect("stop");
        assert_eq!(control.status().state, ChildState::Stopped);
        assert_eq!(control.status().pid, None);
        tokio::time::sleep(fast_policy().max_backoff * 3).await;
        assert_eq!(control.status().state, ChildState::Stopped, "held down");
        assert!(matches!(
            control.send(Control::Stop).await,
            Err(ControlError::Already { .. })
        ));
        assert!(matches!(
            control.send(Control::Kill).await,
            Err(ControlError::NotRunning { .. })
        ));

        control.send(Control::Start).await.expect("start");
        let started = tokio::time::timeout(
            Duration::from_secs(10),
            status_rx.wait_for(running_with_new_pid(None)),
        )
        .await
        .expect("started in time")
        .expect("supervisor alive")
        .clone();

        let mut args = control.spec().args;
        args[1] = "echo 'concord test listening on 127.0.0.1:4243'; exec sleep 30".into();
        control
            .send(Control::Restart(args.clone()))
            .await
            .expect("restart");
        assert_eq!(control.spec().args, args);
        let restarted = tokio::time::timeout(
            Duration::from_secs(10),
            status_rx.wait_for(|s| {
                running_with_new_pid(started.pid)(s)
                    && s.address == Some("127.0.0.1:4243".parse().expect("addr"))
            }),
        )
        .await
        .expect("restarted in time")
        .expect("supervisor alive")
        .clone();

        control.send(Control::Kill).await.expect("kill");
        let revived = tokio::time::timeout(
            Duration::from_secs(10),
            status_rx.wait_for(running_with_new_pid(restarted.pid)),
        )
        .await
        .expect("revived in time")
        .expect("supervisor alive")
        .clone();
        assert!(revived.restarts > restarted.restarts, "{revived:?}");
        child.stop().await;
    }
}
