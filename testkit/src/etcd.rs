//! A real etcd cluster for tests: `etcd` processes on 127.0.0.1 with free ports and data in
//! a tempdir, killed (SIGKILL) when the guard drops.
//!
//! [`EtcdCluster::start_tls`] starts one that serves only TLS and requires client
//! certificates of a CA made for it (rcgen, in the tempdir), as a secured production etcd.
//!
//! Without an `etcd` binary the tests that need one skip with a message, except in CI
//! (`CI=true`), where its absence is a failure (scripts/test.sh installs Debian's
//! `etcd-server`).

use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::Duration,
};

use concord::etcd::{local_member_args_with, Etcd, EtcdSecurity, EtcdTls, LocalMember, MemberTls};
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    SanType,
};

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

/// The PEM files of a TLS cluster ([`EtcdCluster::start_tls`]).
#[derive(Clone, Debug)]
pub struct EtcdPki {
    /// The CA of the members' and clients' certificates.
    pub ca: PathBuf,
    /// A client certificate the members accept, and its key.
    pub client_cert: PathBuf,
    /// See `client_cert`.
    pub client_key: PathBuf,
    /// A client certificate of ANOTHER CA (the members refuse it), and its key.
    pub stranger_cert: PathBuf,
    /// See `stranger_cert`.
    pub stranger_key: PathBuf,
}

impl EtcdPki {
    /// Makes a CA, a member certificate (server and client use, naming 127.0.0.1), a
    /// client certificate, and a client certificate of another CA, under `dir`.
    fn create(dir: &Path) -> (Self, MemberTls) {
        let ca = new_ca("etcd test CA");
        let other = new_ca("another CA");
        let write = |name: &str, pem: &str| {
            let path = dir.join(name);
            std::fs::write(&path, pem).expect("write PEM");
            path
        };
        let member = issue(&ca, "etcd-member", true);
        let client = issue(&ca, "concord-registry", false);
        let stranger = issue(&other, "concord-registry", false);
        let ca_path = write("ca.pem", &ca.1);
        let member_tls = MemberTls {
            cert: write("member.pem", &member.0),
            key: write("member.key", &member.1),
            ca: ca_path.clone(),
        };
        let pki = Self {
            ca: ca_path,
            client_cert: write("client.pem", &client.0),
            client_key: write("client.key", &client.1),
            stranger_cert: write("stranger.pem", &stranger.0),
            stranger_key: write("stranger.key", &stranger.1),
        };
        (pki, member_tls)
    }

    /// TLS with the accepted client certificate.
    pub fn security(&self) -> EtcdSecurity {
        EtcdSecurity {
            tls: Some(
                EtcdTls::load(&self.ca, Some((&self.client_cert, &self.client_key)))
                    .expect("etcd TLS"),
            ),
            auth: None,
        }
    }
}

/// A CA: its issuer and certificate PEM.
fn new_ca(name: &str) -> (Issuer<'static, KeyPair>, String) {
    let key = KeyPair::generate().expect("key");
    let mut params = CertificateParams::new(Vec::<String>::new()).expect("params");
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.distinguished_name.push(DnType::CommonName, name);
    let pem = params.self_signed(&key).expect("self-signed").pem();
    (Issuer::new(params, key), pem)
}

/// A certificate (client use; also server use naming 127.0.0.1 when `server`) and its
/// key, PEM.
fn issue(ca: &(Issuer<'static, KeyPair>, String), name: &str, server: bool) -> (String, String) {
    let key = KeyPair::generate().expect("key");
    let mut params = CertificateParams::new(Vec::<String>::new()).expect("params");
    params.distinguished_name.push(DnType::CommonName, name);
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
    if server {
        params.subject_alt_names = vec![
            SanType::IpAddress([127, 0, 0, 1].into()),
            SanType::DnsName("localhost".try_into().expect("ia5")),
        ];
        params
            .extended_key_usages
            .push(ExtendedKeyUsagePurpose::ServerAuth);
    }
    let cert = params.signed_by(&key, &ca.0).expect("sign");
    (cert.pem(), key.serialize_pem())
}

/// A running etcd cluster; every member is killed on drop.
pub struct EtcdCluster {
    members: Vec<LocalMember>,
    children: Vec<Option<Child>>,
    security: EtcdSecurity,
    pki: Option<EtcdPki>,
    _dir: tempfile::TempDir,
}

impl EtcdCluster {
    /// Starts a cluster of `size` members and waits until it answers; `None` (with a
    /// message) when there is no `etcd` binary outside CI.
    pub async fn start(size: usize) -> Option<Self> {
        Self::start_with(size, false).await
    }

    /// The same, serving TLS only and requiring client certificates of its own CA on
    /// client and peer links ([`EtcdCluster::pki`]).
    pub async fn start_tls(size: usize) -> Option<Self> {
        Self::start_with(size, true).await
    }

    async fn start_with(size: usize, tls: bool) -> Option<Self> {
        let binary = etcd_binary()?;
        let dir = tempfile::tempdir().expect("tempdir");
        let (pki, member_tls) = match tls {
            true => {
                let (pki, member_tls) = EtcdPki::create(dir.path());
                (Some(pki), Some(member_tls))
            }
            false => (None, None),
        };
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
                .args(local_member_args_with(
                    member,
                    &members,
                    &data,
                    member_tls.as_ref(),
                    None,
                ))
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("spawn etcd");
            children.push(Some(child));
        }
        let cluster = Self {
            members,
            children,
            security: pki.as_ref().map(EtcdPki::security).unwrap_or_default(),
            pki,
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

    /// A client of every member (with the accepted client certificate on a TLS cluster).
    pub fn client(&self) -> Etcd {
        Etcd::connect_with(&self.endpoints(), &self.security).expect("endpoints")
    }

    /// What a client needs to be accepted: nothing, or on a TLS cluster the CA and the
    /// accepted client certificate.
    pub fn security(&self) -> EtcdSecurity {
        self.security.clone()
    }

    /// Turns on etcd's authentication (plaintext clusters): adds the user `root` with
    /// `password` and the role `root`, then enables auth. From then on a client needs that
    /// user ([`concord::etcd::EtcdAuth`]).
    pub async fn enable_auth(&self, password: &str) {
        use concord::etcd::pb::etcdserverpb::{
            auth_client::AuthClient, AuthEnableRequest, AuthUserAddRequest,
            AuthUserGrantRoleRequest,
        };
        let channel =
            tonic::transport::Channel::from_shared(format!("http://{}", self.endpoint(0)))
                .expect("url")
                .connect()
                .await
                .expect("connect to etcd");
        let mut auth = AuthClient::new(channel);
        auth.user_add(AuthUserAddRequest {
            name: "root".into(),
            password: password.into(),
        })
        .await
        .expect("add root");
        auth.user_grant_role(AuthUserGrantRoleRequest {
            user: "root".into(),
            role: "root".into(),
        })
        .await
        .expect("grant root");
        auth.auth_enable(AuthEnableRequest {})
            .await
            .expect("enable auth");
    }

    /// A TLS cluster's PEM files.
    pub fn pki(&self) -> Option<&EtcdPki> {
        self.pki.as_ref()
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
