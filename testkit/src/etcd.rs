//! A real etcd cluster for tests: `etcd` processes on 127.0.0.1 with free ports and data in
//! a tempdir, killed (SIGKILL) when the guard drops.
//!
//! Without an `etcd` binary the tests that need one skip with a message, except in CI
//! (`CI=true`), where its absence is a failure (scripts/test.sh installs Debian's
//! `etcd-server`).

use std::{
    net::SocketAddr,
    process::{Child, Command, Stdio},
    time::Duration,
};

use concord::etcd::{local_member_args, Etcd, LocalMember};

/// How long a new cluster may take to answer.
const READY_TIMEOUT: Duration = Duration::from_secs(20);

/// The etcd binary (`$CONCORD_ETCD` or `etcd`) if it runs; `None` with a message when it
/// does not, outside CI; a panic in CI (`CI=true`).
pub fn etcd_binary() -> Option<String> {
    let binary = std::env::var("CONCORD_ETCD").unwrap_or_else(|_| "etcd".to_owned());
    let runs = Command::new(&binary)
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|status| status.success());
    if runs {
        return Some(binary);
    }
    let ci = std::env::var("CI").is_ok_and(|v| v == "true");
    assert!(
        !ci,
        "`{binary}` is missing in CI: install Debian's etcd-server"
    );
    eprintln!("SKIPPED: no `{binary}` binary (apt-get install etcd-server) — not in CI");
    None
}

/// A running etcd cluster; every member is killed on drop.
pub struct EtcdCluster {
    members: Vec<LocalMember>,
    children: Vec<Option<Child>>,
    _dir: tempfile::TempDir,
}

impl EtcdCluster {
    /// Starts a cluster of `size` members and waits until it answers; `None` (with a
    /// message) when there is no `etcd` binary outside CI.
    pub async fn start(size: usize) -> Option<Self> {
        let binary = etcd_binary()?;
        let dir = tempfile::tempdir().expect("tempdir");
        let mut members = Vec::with_capacity(size);
        for i in 0..size {
            members.push(LocalMember {
                name: format!("m{i}"),
                client: crate::free_addr().await,
                peer: crate::free_addr().await,
            });
        }
        let mut children = Vec::with_capacity(size);
        for member in &members {
            let data = dir.path().join(&member.name);
            let child = Command::new(&binary)
                .args(local_member_args(member, &members, &data))
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("spawn etcd");
            children.push(Some(child));
        }
        let cluster = Self {
            members,
            children,
            _dir: dir,
        };
        let etcd = cluster.client();
        let deadline = tokio::time::Instant::now() + READY_TIMEOUT;
        while etcd.range_prefix(b"/").await.is_err() {
            assert!(
                tokio::time::Instant::now() < deadline,
                "etcd did not answer within {READY_TIMEOUT:?}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        Some(cluster)
    }

    /// Every member's client address.
    pub fn endpoints(&self) -> Vec<String> {
        self.members.iter().map(|m| m.client.to_string()).collect()
    }

    /// Member `i`'s client address.
    pub fn endpoint(&self, i: usize) -> SocketAddr {
        self.members[i].client
    }

    /// A client of every member.
    pub fn client(&self) -> Etcd {
        Etcd::connect(&self.endpoints()).expect("endpoints")
    }

    /// Kills member `i` with SIGKILL and reaps it.
    pub fn kill(&mut self, i: usize) {
        if let Some(mut child) = self.children[i].take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Freezes member `i` (SIGSTOP): its connections stay open and nothing answers, as
    /// when it is cut off from the network.
    pub fn freeze(&self, i: usize) {
        self.signal(i, nix::sys::signal::Signal::SIGSTOP);
    }

    /// Lets a frozen member `i` go on (SIGCONT).
    pub fn thaw(&self, i: usize) {
        self.signal(i, nix::sys::signal::Signal::SIGCONT);
    }

    fn signal(&self, i: usize, signal: nix::sys::signal::Signal) {
        if let Some(child) = &self.children[i] {
            let pid = nix::unistd::Pid::from_raw(i32::try_from(child.id()).expect("pid"));
            nix::sys::signal::kill(pid, signal).expect("signal etcd");
        }
    }
}

impl Drop for EtcdCluster {
    fn drop(&mut self) {
        for i in 0..self.children.len() {
            self.kill(i);
        }
    }
}
