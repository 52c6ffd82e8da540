//! Real `concord` processes for the end-to-end tests in the root package's `tests/`.
//!
//! [`Process::spawn`] starts `concord <args…>`, reads its stdout until the
//! `concord <role> listening on <addr>` line (bounded in time, no sleeping), and returns the
//! bound address; dropping the handle kills the process (SIGKILL) and reaps it. Every role
//! gets its identity from [`crate::CLUSTER_SECRET`], like the in-process servers, so the
//! two kinds can be mixed in one test.
//!
//! Finding the binary: `CARGO_BIN_EXE_concord` exists only in the integration tests of the
//! package that defines the binary (`concord-cli`), and the root package's `tests/` are
//! not those. [`concord_binary`] therefore asks cargo itself, through `escargot`: once per
//! test binary it runs `cargo build --workspace --bin concord --test simulate` (the same
//! cargo, profile and target directory as the test run) and takes the binary's path from
//! cargo's JSON messages, so the binary is never stale, even for
//! `cargo test -p concord --test <file>`, which by itself builds no other package's binary.
//! `--workspace` plus one test target (`concord-cli`'s `simulate`) is deliberate: cargo
//! unifies features over the packages it selects and, when it builds a test, over their
//! dev-dependencies too, so this resolves features exactly as `cargo test --workspace`
//! (scripts/test.sh) does and finds that run's binary fresh, a no-op. A plain
//! `cargo build -p concord-cli` resolves fewer features (no `tokio/test-util`, say) and
//! would build the whole dependency tree a second time. A path guessed next to the test
//! executable (`target/debug/concord`) could be an old build, or missing.

use std::{
    io::{BufRead, BufReader},
    net::SocketAddr,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::{mpsc, OnceLock},
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

/// A child (typically `concord up`) killed when the guard is dropped, so a test that
/// fails half-way leaves no cluster running: `concord up`'s children die with it
/// (PR_SET_PDEATHSIG). Derefs to the [`Child`] for `id`, `try_wait`…
pub struct KillOnDrop(pub Child);

impl std::ops::Deref for KillOnDrop {
    type Target = Child;

    fn deref(&self) -> &Child {
        &self.0
    }
}

impl std::ops::DerefMut for KillOnDrop {
    fn deref_mut(&mut self) -> &mut Child {
        &mut self.0
    }
}

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The identity a role started with `args` needs: a `concord registry` gets
/// `CONCORD_CLUSTER_SECRET`, a node (by its `--id`, default node-1), shop, gateway or
/// aggregator its `CONCORD_CREDENTIAL`; anything else (`up`, `status`, …) nothing.
/// Explicit environment passed to [`Process::spawn_with_env`] still wins.
fn identity_env(args: &[&str]) -> Option<(&'static str, String)> {
    use concord::identity::Principal;
    let principal = match *args.first()? {
        "registry" => return Some(("CONCORD_CLUSTER_SECRET", crate::CLUSTER_SECRET.to_owned())),
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
    Some(("CONCORD_CREDENTIAL", crate::credential(principal).encode()))
}

/// `concord args…` with stderr inherited (shown by cargo test on failure), RUST_LOG quiet
/// unless set, and the role's identity (see `identity_env`).
pub fn command(args: &[&str]) -> Command {
    let mut command = Command::new(concord_binary());
    command.args(args).stdin(Stdio::null());
    if std::env::var_os("RUST_LOG").is_none() {
        command.env("RUST_LOG", "warn");
    }
    if let Some((key, value)) = identity_env(args) {
        command.env(key, value);
    }
    command
}

/// A test target of `concord-cli` built along with the binary, so that cargo resolves
/// features as in `cargo test --workspace` (module doc).
const FEATURE_TWIN_TEST: &str = "simulate";

/// The `concord` binary of this workspace, built by cargo if it is not up to date (once
/// per test binary; see the module doc for why not `CARGO_BIN_EXE_concord`).
pub fn concord_binary() -> &'static Path {
    static BINARY: OnceLock<PathBuf> = OnceLock::new();
    BINARY.get_or_init(|| {
        let manifest = Path::new(env!("CARGO_MANIFEST_DIR")).join("../Cargo.toml");
        // See the module doc for why these targets and `--workspace`.
        let built = escargot::CargoBuild::new()
            .manifest_path(&manifest)
            .arg("--workspace")
            .bin("concord")
            .test(FEATURE_TWIN_TEST)
            .current_release()
            .run()
            .unwrap_or_else(|err| {
                panic!("cargo build --workspace --bin concord --test {FEATURE_TWIN_TEST}: {err}")
            });
        built.path().to_owned()
    })
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
