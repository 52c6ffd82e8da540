//! Shared harness for tests that run the real `concord` binary as child processes.
//!
//! [`Process::spawn`] starts `concord <args…>`, reads its stdout until the
//! `concord <role> listening on <addr>` line (bounded in time, no sleeping), and returns the
//! bound address; dropping the handle kills the process (SIGKILL) and reaps it.

#![allow(dead_code)]

pub mod netns;

use std::{
    io::{BufRead, BufReader},
    net::SocketAddr,
    process::{Child, Command, Stdio},
    sync::mpsc,
    time::Duration,
};

/// How long a process may take to announce its address.
pub const START_TIMEOUT: Duration = Duration::from_secs(30);

/// A running `concord` process.
pub struct Process {
    child: Child,
    /// The address it announced.
    pub addr: SocketAddr,
    /// Further stdout lines, as they come.
    pub lines: mpsc::Receiver<String>,
}

impl Process {
    /// Starts `concord args…` and waits for its listening line.
    pub fn spawn(args: &[&str]) -> Process {
        Self::spawn_with_env(args, &[])
    }

    /// Like [`Process::spawn`], with extra environment variables.
    pub fn spawn_with_env(args: &[&str], env: &[(&str, &str)]) -> Process {
        let mut command = command(args);
        command.envs(env.iter().copied());
        Self::spawn_command(command, args)
    }

    /// Starts `command` (a `concord` invocation with `args`, perhaps wrapped) and waits
    /// for its listening line.
    pub fn spawn_command(mut command: Command, args: &[&str]) -> Process {
        let mut child = command
            .stdout(Stdio::piped())
            .spawn()
            .expect("spawn concord");
        let lines = follow_stdout(&mut child);
        let deadline = std::time::Instant::now() + START_TIMEOUT;
        loop {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            match lines.recv_timeout(left) {
                Ok(line) => {
                    if let Some(addr) = concord::config::parse_listening_line(&line) {
                        return Process { child, addr, lines };
                    }
                }
                Err(err) => {
                    let _ = child.kill();
                    panic!("concord {args:?} did not announce its address: {err}");
                }
            }
        }
    }

    /// Process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// SIGKILL, like a crash; waits until it is gone.
    pub fn kill9(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// SIGTERM and wait up to `timeout` for a clean exit; true when it exited cleanly.
    pub fn terminate(&mut self, timeout: Duration) -> bool {
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let deadline = std::time::Instant::now() + timeout;
        while std::time::Instant::now() < deadline {
            if let Ok(Some(status)) = self.child.try_wait() {
                return status.success();
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        false
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The cluster secret of the processes these tests start (a test value, never a real one).
pub const CLUSTER_SECRET: &str = "concord-cli-test-cluster-secret";

/// `principal`'s credential under [`CLUSTER_SECRET`].
pub fn credential(principal: concord::identity::Principal) -> concord::identity::Credential {
    concord::identity::ClusterSecret::new(CLUSTER_SECRET)
        .expect("the test secret is not empty")
        .issue(principal)
}

/// The identity a role started with `args` needs: a `concord registry` gets
/// `CONCORD_CLUSTER_SECRET`, a node (by its `--id`, default node-1), shop, gateway or
/// aggregator its `CONCORD_CREDENTIAL`; anything else (`up`, `status`, …) nothing.
/// Explicit environment passed to [`Process::spawn_with_env`] still wins.
fn identity_env(args: &[&str]) -> Option<(&'static str, String)> {
    use concord::identity::Principal;
    let principal = match *args.first()? {
        "registry" => return Some(("CONCORD_CLUSTER_SECRET", CLUSTER_SECRET.to_owned())),
        "node" => {
            let id = args
                .iter()
                .position(|a| *a == "--id")
                .and_then(|i| args.get(i + 1))
                .map_or("node-1", |id| *id);
            Principal::Node(id.to_owned())
        }
        // The roles named like the service they register (shop, gateway, aggregator).
        role => Principal::for_service(role)?,
    };
    Some(("CONCORD_CREDENTIAL", credential(principal).encode()))
}

/// `concord args…` with stderr inherited (shown by cargo test on failure), RUST_LOG quiet
/// unless set, and the role's identity ([`identity_env`]).
pub fn command(args: &[&str]) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_concord"));
    command.args(args).stdin(Stdio::null());
    if std::env::var_os("RUST_LOG").is_none() {
        command.env("RUST_LOG", "warn");
    }
    if let Some((key, value)) = identity_env(args) {
        command.env(key, value);
    }
    command
}

/// Streams a child's stdout lines through a channel (a thread reads them).
pub fn follow_stdout(child: &mut Child) -> mpsc::Receiver<String> {
    let stdout = child.stdout.take().expect("stdout piped");
    let (lines_tx, lines_rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if lines_tx.send(line).is_err() {
                break;
            }
        }
    });
    lines_rx
}

/// Waits for the next stdout line that satisfies `pick`, up to `timeout`.
pub fn wait_for_line<T>(
    lines: &mpsc::Receiver<String>,
    timeout: Duration,
    mut pick: impl FnMut(&str) -> Option<T>,
) -> Option<T> {
    let deadline = std::time::Instant::now() + timeout;
    loop {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        let line = lines.recv_timeout(left).ok()?;
        if let Some(found) = pick(&line) {
            return Some(found);
        }
    }
}

/// The grpcurl binary: `$GRPCURL`, or `grpcurl` on the PATH (scripts/test.sh installs it).
pub fn grpcurl() -> String {
    std::env::var("GRPCURL").unwrap_or_else(|_| "grpcurl".to_owned())
}

/// Runs `grpcurl -plaintext <flags…> <addr> <verb…>`; returns stdout, panicking with
/// stderr on failure.
pub fn run_grpcurl(addr: SocketAddr, flags: &[&str], verb: &[&str]) -> String {
    let output = Command::new(grpcurl())
        .args(["-plaintext", "-max-time", "10"])
        .args(flags)
        .arg(addr.to_string())
        .args(verb)
        .output()
        .unwrap_or_else(|err| {
            panic!("cannot run grpcurl ({err}); run scripts/test.sh, which installs it")
        });
    assert!(
        output.status.success(),
        "grpcurl {flags:?} {verb:?} failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// A request carrying `token` as its bearer (admin calls of the shop).
pub fn with_bearer<T>(message: T, token: &str) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    concord::auth::attach_bearer(&mut request, token);
    request
}

/// A product worth 1.00 EUR with `stock` units.
pub fn product(name: &str, stock: i64) -> concord::pb::shop::v1::CreateProductRequest {
    concord::pb::shop::v1::CreateProductRequest {
        name: name.into(),
        description: String::new(),
        price_minor: 100,
        currency: "EUR".into(),
        stock,
    }
}

/// A user's orders (first page of 10, newest first), read with `token` (the user's
/// session or the admin token); panics on an error status.
pub async fn orders_of(
    client: &mut concord::pb::shop::v1::shop_client::ShopClient<tonic::transport::Channel>,
    user: &str,
    token: &str,
) -> Vec<concord::pb::shop::v1::Order> {
    client
        .list_orders(with_bearer(
            concord::pb::shop::v1::ListOrdersRequest {
                user_id: user.to_string(),
                page_size: 10,
                page_token: String::new(),
            },
            token,
        ))
        .await
        .expect("list orders")
        .into_inner()
        .orders
}

/// Session key the test shops share (sessions survive their restarts and failovers).
pub const SESSION_KEY: &str = "cli-test-session-key-cli-test-session-key";

/// Signs up `username` and returns its (user id, session token), or the error status.
pub async fn sign_up(
    client: &mut concord::pb::shop::v1::shop_client::ShopClient<tonic::transport::Channel>,
    username: &str,
) -> Result<(String, String), tonic::Status> {
    let reply = client
        .sign_up(concord::pb::shop::v1::SignUpRequest {
            username: username.to_string(),
            password: "correct horse battery".into(),
        })
        .await?
        .into_inner();
    let user = reply.account.map(|a| a.user_id).unwrap_or_default();
    let token = reply.session.map(|s| s.token).unwrap_or_default();
    Ok((user, token))
}

/// Polls `check` every 20 ms until it holds (true) or `timeout` passes (false).
pub async fn eventually<F, Fut>(timeout: Duration, mut check: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = std::time::Instant::now() + timeout;
    while std::time::Instant::now() < deadline {
        if check().await {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    false
}
