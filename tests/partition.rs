//! Network partitions between real hosts, under a 16-writer load.
//!
//! Every process runs on its own "host" (a network namespace, [`concord_testkit::netns`]): the
//! registry (or three etcd members and two registries on them), shop `alpha` (the first
//! primary) and shop `beta` (its replica). The test
//! process plays the clients from outside. Links are cut with silent packet drops while
//! every process keeps running — the case a kill -9 test cannot reach: a primary that is
//! alive but cut off, a registry that disappears and comes back.
//!
//! The promise checked in every case: **no acknowledged write is lost and two shops never
//! acknowledge at once.** Each acknowledgement carries the term that accepted it
//! (`WriteInfo.term`); the clients record when it arrived and from which host. An ack of
//! an older term arriving after an ack of a newer one means two primaries accepted writes
//! in overlapping windows (split brain). Each case prints acknowledged writes, lost writes
//! and the longest pause between two acknowledgements.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use concord::pb::registry::v1::registry_client::RegistryClient;
use concord::pb::registry::v1::ResolveRequest;
use concord::pb::shop::v1 as pb;
use concord::pb::shop::v1::replication_client::ReplicationClient;
use concord::pb::shop::v1::shop_client::ShopClient;
use concord_testkit::eventually;
use concord_testkit::netns;
use concord_testkit::netns::Network;
use concord_testkit::process::Process;
use concord_testkit::shop;
use concord_testkit::shop::product;
use futures::StreamExt;
use tonic::transport::Channel;
use tonic::Code;

const ADMIN: &str = "partition-test-admin";
const WRITERS: usize = 16;
/// The shops' lease TTL (the default): a primary cut off from the registry stops
/// accepting writes within ¾ of it.
const TTL: Duration = Duration::from_secs(2);
/// Scheduling slack on a loaded 2-core machine for the "stops within ¾ TTL" check.
const SLACK: Duration = Duration::from_millis(500);
/// A client call that gets no answer within this is given up (the host may be cut off).
const CALL_TIMEOUT: Duration = Duration::from_secs(1);
/// Longest wait for anything that should happen (start-up, promotion, rejoin).
const WAIT: Duration = Duration::from_secs(30);

fn channel(addr: &str) -> Channel {
    concord::grpc::lazy_channel(addr).expect("channel")
}

fn admin<T>(message: T) -> tonic::Request<T> {
    let mut request = shop::with_bearer(message, ADMIN);
    request.set_timeout(CALL_TIMEOUT);
    request
}

/// Registry, two shops, and where things are.
struct Cluster {
    // Field order = drop order: processes die before their namespaces go.
    alpha: Process,
    beta: Process,
    registries: Vec<Process>,
    /// etcd members and their data (etcd control plane only).
    _etcd: (Vec<netns::RawProcess>, Option<tempfile::TempDir>),
    /// The host of the etcd member the registries dial first (etcd control plane only).
    etcd_dialled: Option<String>,
    net: Network,
    dirs: (tempfile::TempDir, tempfile::TempDir),
}

/// Where the registry keeps its state.
#[derive(Clone, Copy, PartialEq)]
enum ControlPlane {
    /// One `concord registry` in memory, on host `registry` (the embedded default).
    Memory,
    /// A 3-member etcd cluster on hosts `etcd1..3` and two `concord registry --etcd` on
    /// hosts `reg1`, `reg2`; every shop is given both registries. The registries list the
    /// member in the given role first, so they talk to it until it fails them.
    Etcd(EtcdRole),
}

/// An etcd member's role in its cluster.
#[derive(Clone, Copy, PartialEq, Debug)]
enum EtcdRole {
    Leader,
    Follower,
}

impl Cluster {
    /// Starts the registry, `alpha` (primary, `mode`, refuses sync writes without its
    /// replica) and `beta` (replica of alpha; once promoted it degrades to local-only
    /// rather than refusing, so writes can go on while alpha is away). `None` when this
    /// machine cannot make namespaces (see [`Network::create`]).
    async fn start(mode: &str) -> Option<Cluster> {
        Self::start_with(mode, ControlPlane::Memory).await
    }

    async fn start_with(mode: &str, plane: ControlPlane) -> Option<Cluster> {
        let (net, etcd, registries, etcd_dialled) = match plane {
            ControlPlane::Memory => {
                let net = Network::create(&["registry", "alpha", "beta", "gateway"])?;
                let registry = net.spawn(
                    "registry",
                    &["registry", "--listen", &net.listen("registry")],
                    &[],
                );
                (net, (Vec::new(), None), vec![registry], None)
            }
            ControlPlane::Etcd(dial_first) => {
                let etcd_binary = concord_testkit::etcd::etcd_binary()?;
                let net = Network::create(&[
                    "etcd1",
                    "etcd2",
                    "etcd3",
                    "reg1",
                    "reg2",
                    "alpha",
                    "beta",
                    "node1",
                    "node2",
                    "node3",
                    "aggregator",
                    "gateway",
                ])?;
                // Fixed etcd ports are safe here: each member has its own namespace and
                // address, which no other test shares.
                let members: Vec<concord::etcd::LocalMember> = (1..=3)
                    .map(|i| {
                        let ip = net.host(&format!("etcd{i}")).ip;
                        concord::etcd::LocalMember {
                            name: format!("m{i}"),
                            client: std::net::SocketAddr::from((ip, 2379)),
                            peer: std::net::SocketAddr::from((ip, 2380)),
                        }
                    })
                    .collect();
                let data = tempdir();
                let etcd: Vec<_> = members
                    .iter()
                    .enumerate()
                    .map(|(i, m)| {
                        let args = concord::etcd::local_member_args(
                            m,
                            &members,
                            &data.path().join(&m.name),
                        );
                        net.spawn_raw(&format!("etcd{}", i + 1), &etcd_binary, &args)
                    })
                    .collect();
                let leader = etcd_leader(&members).await;
                let first = match dial_first {
                    EtcdRole::Leader => leader,
                    EtcdRole::Follower => (leader + 1) % members.len(),
                };
                let endpoints = (0..members.len())
                    .map(|i| members[(first + i) % members.len()].client.to_string())
                    .collect::<Vec<_>>()
                    .join(",");
                let registries = ["reg1", "reg2"]
                    .iter()
                    .map(|host| {
                        net.spawn(
                            host,
                            &[
                                "registry",
                                "--listen",
                                &net.listen(host),
                                "--etcd",
                                &endpoints,
                            ],
                            &[],
                        )
                    })
                    .collect();
                (
                    net,
                    (etcd, Some(data)),
                    registries,
                    Some(format!("etcd{}", first + 1)),
                )
            }
        };
        let registry_addr = registries
            .iter()
            .map(|r: &Process| r.addr.to_string())
            .collect::<Vec<_>>()
            .join(",");
        let dirs = (tempdir(), tempdir());
        let credential = concord_testkit::credential(concord::identity::Principal::Shop).encode();
        let shop_args = |host: &str, dir: &tempfile::TempDir, loss: &str| -> Vec<String> {
            [
                "shop",
                "--listen",
                &net.listen(host),
                "--data-dir",
                dir.path().to_str().expect("utf-8 temp path"),
                "--admin-token",
                ADMIN,
                "--registry",
                &registry_addr,
                "--replication",
                mode,
                "--on-replica-loss",
                loss,
                "--credential",
                &credential,
            ]
            .map(String::from)
            .to_vec()
        };
        let alpha_args = shop_args("alpha", &dirs.0, "fail");
        let alpha = net.spawn("alpha", &strs(&alpha_args), &[]);
        let mut beta_args = shop_args("beta", &dirs.1, "degrade");
        beta_args.extend(
            [
                "--replica-of",
                &alpha.addr.to_string(),
                "--replica-id",
                "beta",
            ]
            .map(String::from),
        );
        let beta = net.spawn("beta", &strs(&beta_args), &[]);
        let cluster = Cluster {
            alpha,
            beta,
            registries,
            _etcd: etcd,
            etcd_dialled,
            net,
            dirs,
        };
        cluster.wait_paired().await;
        Some(cluster)
    }

    /// The registry list the shops were given (`a` or `a,b`).
    fn registry(&self) -> String {
        self.registries
            .iter()
            .map(|r| r.addr.to_string())
            .collect::<Vec<_>>()
            .join(",")
    }

    fn alpha(&self) -> String {
        self.alpha.addr.to_string()
    }

    fn beta(&self) -> String {
        self.beta.addr.to_string()
    }

    /// Waits until beta streams from alpha and the registry lists alpha as primary.
    async fn wait_paired(&self) {
        let (alpha, beta) = (self.alpha(), self.beta());
        let paired = eventually(WAIT, || async {
            let replicating = status(&beta).await.is_some_and(|s| {
                s.role == pb::Role::Replica as i32 && s.primary_address == alpha && s.caught_up
            });
            replicating && primary(&self.registry()).await.map(|p| p.0) == Some(alpha.clone())
        })
        .await;
        assert!(paired, "alpha and beta did not pair up");
    }

    /// Waits until `replica` follows `primary` and has applied all of it (writes stopped).
    async fn wait_converged(&self, primary: &str, replica: &str) {
        let converged = eventually(WAIT, || async {
            let (Some(p), Some(r)) = (status(primary).await, status(replica).await) else {
                return false;
            };
            r.role == pb::Role::Replica as i32
                && r.primary_address == primary
                && p.role == pb::Role::Primary as i32
                && r.last_lsn == p.last_lsn
        })
        .await;
        assert!(converged, "{replica} did not converge on {primary}");
    }

    /// Stops both shops and compares their data (`Store::digest` of each directory).
    async fn assert_same_data(mut self) {
        self.alpha.terminate(Duration::from_secs(10));
        self.beta.terminate(Duration::from_secs(10));
        let digest = |dir: std::path::PathBuf| {
            tokio::task::spawn_blocking(move || {
                concord_shop::Store::open(&concord_shop::StoreConfig::new(dir))
                    .expect("open a stopped shop's store")
                    .digest()
                    .expect("digest")
            })
        };
        let a = digest(self.dirs.0.path().to_owned())
            .await
            .expect("digest task");
        let b = digest(self.dirs.1.path().to_owned())
            .await
            .expect("digest task");
        assert_eq!(a, b, "alpha and beta hold different data after the heal");
    }
}

fn tempdir() -> tempfile::TempDir {
    tempfile::tempdir().expect("tempdir")
}

fn strs(args: &[String]) -> Vec<&str> {
    args.iter().map(String::as_str).collect()
}

async fn status(addr: &str) -> Option<pb::GetReplicationStatusResponse> {
    let mut request = tonic::Request::new(pb::GetReplicationStatusRequest {});
    request.set_timeout(CALL_TIMEOUT);
    tokio::time::timeout(
        CALL_TIMEOUT,
        ReplicationClient::new(channel(addr)).get_replication_status(request),
    )
    .await
    .ok()?
    .ok()
    .map(tonic::Response::into_inner)
}

/// The registered primary with the highest term: (address, term), from the first
/// registry in the list `registries` that answers.
async fn primary(registries: &str) -> Option<(String, u64)> {
    for registry in registries.split(',') {
        let mut request = tonic::Request::new(ResolveRequest {
            service: "shop".into(),
        });
        request.set_timeout(CALL_TIMEOUT);
        let Ok(Ok(reply)) = tokio::time::timeout(
            CALL_TIMEOUT,
            RegistryClient::new(channel(registry)).resolve(request),
        )
        .await
        else {
            continue;
        };
        return reply
            .into_inner()
            .instances
            .into_iter()
            .filter_map(|i| {
                let term = concord::claim::PrimaryClaim::primary_term_of(&i.metadata)?;
                Some((i.address, term))
            })
            .max_by_key(|(_, term)| *term);
    }
    None
}

/// One acknowledged CreateProduct.
#[derive(Clone, Debug)]
struct Ack {
    host: String,
    term: u64,
    id: String,
    name: String,
    at: Instant,
}

/// The clients: 16 writers that follow the registry's primary.
struct Load {
    acks: Arc<Mutex<Vec<Ack>>>,
    unexpected: Arc<Mutex<Vec<String>>>,
    stop: Arc<AtomicBool>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Load {
    fn start(registry: String, first_primary: String) -> Load {
        let target = Arc::new(RwLock::new(first_primary));
        let stop = Arc::new(AtomicBool::new(false));
        let acks = Arc::new(Mutex::new(Vec::new()));
        let unexpected = Arc::new(Mutex::new(Vec::new()));
        let mut tasks = vec![tokio::spawn(follow_primary(
            registry,
            Arc::clone(&target),
            Arc::clone(&stop),
        ))];
        for w in 0..WRITERS {
            tasks.push(tokio::spawn(writer(
                w,
                Arc::clone(&target),
                Arc::clone(&acks),
                Arc::clone(&unexpected),
                Arc::clone(&stop),
            )));
        }
        Load {
            acks,
            unexpected,
            stop,
            tasks,
        }
    }

    fn acked(&self) -> usize {
        self.acks.lock().expect("acks").len()
    }

    async fn finish(self) -> Vec<Ack> {
        self.stop.store(true, Ordering::Relaxed);
        for task in self.tasks {
            tokio::time::timeout(WAIT, task)
                .await
                .expect("a writer did not stop")
                .expect("writer");
        }
        let unexpected = self.unexpected.lock().expect("errors");
        assert!(unexpected.is_empty(), "unexpected errors: {unexpected:?}");
        let mut acks = std::mem::take(&mut *self.acks.lock().expect("acks"));
        acks.sort_by_key(|a| a.at);
        acks
    }
}

impl Load {
    /// [`Load::start`] plus one writer pinned to each of `shops` whatever the registry
    /// says: a shop that still acknowledges after the switch (an old primary in split
    /// brain) is then caught by [`verify`] (two hosts in one term, or an older term acked
    /// after a newer one), which writers that follow the registry alone would never try.
    fn start_pinned(registry: String, first_primary: String, shops: &[String]) -> Load {
        let mut load = Load::start(registry, first_primary);
        for (i, shop) in shops.iter().enumerate() {
            load.tasks.push(tokio::spawn(writer(
                WRITERS + i,
                Arc::new(RwLock::new(shop.clone())),
                Arc::clone(&load.acks),
                Arc::clone(&load.unexpected),
                Arc::clone(&load.stop),
            )));
        }
        load
    }
}

/// Keeps `target` on the registry's current primary (when the registry answers).
async fn follow_primary(registry: String, target: Arc<RwLock<String>>, stop: Arc<AtomicBool>) {
    while !stop.load(Ordering::Relaxed) {
        if let Some((addr, _)) = primary(&registry).await {
            *target.write().expect("target") = addr;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn writer(
    w: usize,
    target: Arc<RwLock<String>>,
    acks: Arc<Mutex<Vec<Ack>>>,
    unexpected: Arc<Mutex<Vec<String>>>,
    stop: Arc<AtomicBool>,
) {
    let mut clients: std::collections::HashMap<String, ShopClient<Channel>> = Default::default();
    for i in 0u64.. {
        if stop.load(Ordering::Relaxed) {
            return;
        }
        let host = target.read().expect("target").clone();
        let client = clients
            .entry(host.clone())
            .or_insert_with(|| ShopClient::new(channel(&host)));
        let name = format!("w{w}-{i}");
        let reply = tokio::time::timeout(
            CALL_TIMEOUT,
            client.create_product(admin(product(&name, 1))),
        )
        .await;
        match reply {
            Ok(Ok(reply)) => {
                let reply = reply.into_inner();
                let id = reply.product.expect("product").id;
                let term = reply.write.expect("write info").term;
                acks.lock().expect("acks").push(Ack {
                    host,
                    term,
                    id,
                    name,
                    at: Instant::now(),
                });
            }
            Ok(Err(s))
                if matches!(
                    s.code(),
                    Code::Unavailable
                        | Code::Unknown
                        | Code::Cancelled
                        | Code::DeadlineExceeded
                        | Code::FailedPrecondition
                ) =>
            {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            Ok(Err(s)) => unexpected.lock().expect("errors").push(format!("{s:?}")),
            Err(_elapsed) => {}
        }
    }
}

/// What a case saw.
struct Verdict {
    acked: usize,
    lost: usize,
    /// Longest gap between two acknowledgements after `from`.
    pause: Duration,
}

/// Checks the promise over `acks` against the data on `final_primary`: nothing lost, one
/// host per term, and no ack of an older term after an ack of a newer one.
async fn verify(acks: &[Ack], final_primary: &str, from: Instant) -> Verdict {
    let mut host_of_term = std::collections::HashMap::new();
    let mut newest_term = 0;
    for ack in acks {
        let host = host_of_term
            .entry(ack.term)
            .or_insert_with(|| ack.host.clone());
        assert_eq!(
            *host, ack.host,
            "two hosts acknowledged writes in term {}",
            ack.term
        );
        assert!(
            ack.term >= newest_term,
            "split brain: {} acknowledged in term {} after a term-{newest_term} acknowledgement",
            ack.host,
            ack.term
        );
        newest_term = ack.term;
    }
    let client = ShopClient::new(channel(final_primary));
    let lost: Vec<&Ack> = futures::stream::iter(acks)
        .map(|ack| {
            let mut c = client.clone();
            async move {
                let found = c
                    .get_product(pb::GetProductRequest { id: ack.id.clone() })
                    .await
                    .is_ok_and(|r| r.into_inner().product.is_some_and(|p| p.name == ack.name));
                (!found).then_some(ack)
            }
        })
        .buffer_unordered(16)
        .filter_map(|m| async move { m })
        .collect()
        .await;
    let pause = acks
        .iter()
        .filter(|a| a.at >= from)
        .map(|a| a.at)
        .fold((from, Duration::ZERO), |(prev, gap), at| {
            (at, gap.max(at.duration_since(prev)))
        })
        .1;
    Verdict {
        acked: acks.len(),
        lost: lost.len(),
        pause,
    }
}

/// Lets the load run until it has acknowledged `more` further writes.
async fn run_for(load: &Load, more: usize) {
    let target = load.acked() + more;
    assert!(
        eventually(WAIT, || async { load.acked() >= target }).await,
        "the load stalled at {} acknowledged writes",
        load.acked()
    );
}

/// Cuts the primary off with `cut` under load (`what` names the case in the output):
/// beta must be promoted, alpha must rejoin as beta's replica after the heal, nothing
/// acknowledged may be lost, and both must end with the same data. Returns when alpha's
/// last acknowledgement arrived, counted from the start of the cut.
async fn primary_failover(what: &str, cut: impl FnOnce(&Network)) -> Option<Option<Duration>> {
    let cluster = Cluster::start("sync").await?;
    let registry = cluster.registry();
    let load = Load::start_pinned(
        registry.clone(),
        cluster.alpha(),
        &[cluster.alpha(), cluster.beta()],
    );
    run_for(&load, 500).await;
    let cut_at = Instant::now();
    cut(&cluster.net);
    let promoted = eventually(WAIT, || async {
        primary(&registry)
            .await
            .is_some_and(|(addr, term)| addr == cluster.beta() && term >= 2)
    })
    .await;
    assert!(promoted, "beta was not promoted while alpha was {what}");
    run_for(&load, 300).await;
    cluster.net.heal();
    assert!(
        eventually(WAIT, || async {
            status(&cluster.alpha()).await.is_some_and(|s| {
                s.role == pb::Role::Replica as i32 && s.primary_address == cluster.beta()
            })
        })
        .await,
        "alpha did not rejoin as beta's replica after the heal"
    );
    run_for(&load, 200).await;
    let acks = load.finish().await;
    let last_alpha = acks
        .iter()
        .rev()
        .find(|a| a.host == cluster.alpha())
        .map(|a| a.at.saturating_duration_since(cut_at));
    let verdict = verify(&acks, &cluster.beta(), cut_at).await;
    eprintln!(
        "primary {what}: {} acknowledged, {} lost, pause {} ms, alpha's last ack {:?} after the cut",
        verdict.acked,
        verdict.lost,
        verdict.pause.as_millis(),
        last_alpha
    );
    assert_eq!(verdict.lost, 0, "acknowledged writes lost");
    cluster
        .wait_converged(&cluster.beta(), &cluster.alpha())
        .await;
    cluster.assert_same_data().await;
    Some(last_alpha)
}

/// The primary cut off from everything (registry, replica, clients) for longer than its
/// lease: it stops acknowledging, beta is promoted, nothing acknowledged is lost, and after
/// the heal alpha rejoins as beta's replica with the same data.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn primary_cut_off_from_everything() {
    primary_failover("cut off from everything", |net| net.isolate("alpha")).await;
}

/// The primary cut off from the registry only (it still reaches its replica and the
/// clients): it stops acknowledging within ¾ TTL, beta is promoted only after that, never
/// two shops acknowledging at once, nothing lost, alpha rejoins after the heal.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn primary_cut_off_from_the_registry_only() {
    let Some(last_alpha) = primary_failover("cut off from the registry", |net| {
        net.cut("alpha", "registry")
    })
    .await
    else {
        return;
    };
    let limit = TTL * 3 / 4 + SLACK;
    assert!(
        last_alpha.is_some_and(|d| d <= limit),
        "alpha acknowledged {last_alpha:?} after losing the registry (limit {limit:?})"
    );
}

/// The registry cut off from everyone for `outage` while the primary and its replica stay
/// connected: nobody is promoted, nothing acknowledged is lost, never two shops
/// acknowledging; prints the write pause.
async fn registry_outage(mode: &str, outage: Duration) {
    control_plane_outage(mode, ControlPlane::Memory, Cut::Host("registry"), outage).await;
}

/// What a control-plane outage cuts off.
#[derive(Clone, Copy)]
enum Cut {
    /// This host.
    Host(&'static str),
    /// The etcd member the registries dial first.
    DialledEtcdMember,
    /// Both registries from both shops (they still reach etcd, the shops each other).
    RegistriesFromShops,
}

/// The index of the etcd leader among `members`, read from each member's own
/// `etcd_server_is_leader` metric once the cluster has elected one.
async fn etcd_leader(members: &[concord::etcd::LocalMember]) -> usize {
    let deadline = Instant::now() + WAIT;
    while Instant::now() < deadline {
        for (i, member) in members.iter().enumerate() {
            if etcd_metrics(member.client)
                .await
                .is_some_and(|m| m.lines().any(|l| l == "etcd_server_is_leader 1"))
            {
                return i;
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("the etcd cluster elected no leader within {WAIT:?}");
}

/// An etcd member's Prometheus metrics, or `None` if it does not answer (yet).
async fn etcd_metrics(addr: std::net::SocketAddr) -> Option<String> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let exchange = async {
        let mut stream = tokio::net::TcpStream::connect(addr).await.ok()?;
        let request = format!("GET /metrics HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
        stream.write_all(request.as_bytes()).await.ok()?;
        let mut response = Vec::new();
        stream.read_to_end(&mut response).await.ok()?;
        Some(String::from_utf8_lossy(&response).into_owned())
    };
    tokio::time::timeout(CALL_TIMEOUT, exchange).await.ok()?
}

/// `cut` (a host of the control plane `plane` cut off from everyone, or the registries cut
/// off from the shops) for `outage` while the primary and its replica stay connected: the
/// checks of [`registry_outage`].
async fn control_plane_outage(mode: &str, plane: ControlPlane, cut: Cut, outage: Duration) {
    let Some(cluster) = Cluster::start_with(mode, plane).await else {
        return;
    };
    let host = match cut {
        Cut::Host(host) => Some(host),
        Cut::DialledEtcdMember => Some(
            cluster
                .etcd_dialled
                .as_deref()
                .expect("an etcd control plane"),
        ),
        Cut::RegistriesFromShops => None,
    };
    let what = host.map_or_else(
        || "both registries cut off from the shops".to_owned(),
        |host| format!("{host} cut off"),
    );
    let registry = cluster.registry();
    let term = status(&cluster.alpha()).await.expect("alpha's status").term;
    let load = Load::start_pinned(
        registry.clone(),
        cluster.alpha(),
        &[cluster.alpha(), cluster.beta()],
    );
    run_for(&load, 500).await;
    let cut_at = Instant::now();
    match host {
        Some(host) => cluster.net.isolate(host),
        None => {
            for registry_host in ["reg1", "reg2"] {
                for shop in ["alpha", "beta"] {
                    cluster.net.cut(registry_host, shop);
                }
            }
        }
    }
    tokio::time::sleep(outage).await;
    cluster.net.heal();
    // Give a late decision (a promotion after the heal) time to show itself, under load:
    // with the registries cut from the shops, every lease must first be renewed again.
    tokio::time::sleep(if host.is_some() { TTL * 2 } else { TTL * 3 }).await;
    run_for(&load, 300).await;
    let acks = load.finish().await;
    let verdict = verify(&acks, &cluster.alpha(), cut_at).await;
    let (alpha, beta) = (
        status(&cluster.alpha()).await,
        status(&cluster.beta()).await,
    );
    eprintln!(
        "{what} for {outage:?} ({mode}): {} acknowledged, {} lost, pause {} ms, terms alpha {:?} beta {:?}",
        verdict.acked,
        verdict.lost,
        verdict.pause.as_millis(),
        alpha.as_ref().map(|s| (s.role, s.term)),
        beta.as_ref().map(|s| (s.role, s.term)),
    );
    assert!(
        alpha.is_some_and(|s| s.role == pb::Role::Primary as i32 && s.term == term)
            && beta.is_some_and(|s| s.role == pb::Role::Replica as i32),
        "a registry outage changed the primary although alpha never failed"
    );
    assert_eq!(verdict.lost, 0, "acknowledged writes lost");
    cluster
        .wait_converged(&cluster.alpha(), &cluster.beta())
        .await;
    cluster.assert_same_data().await;
}

/// Registry unreachable for 5 s, sync mode: no promotion, no loss (issue 15's split brain).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn registry_outage_5s_sync() {
    registry_outage("sync", Duration::from_secs(5)).await;
}

/// Registry unreachable for 5 s, async mode: no promotion, so no loss even without the
/// replica's ack.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn registry_outage_5s_async() {
    registry_outage("async", Duration::from_secs(5)).await;
}

/// Registry unreachable for 30 s (many lease TTLs), sync mode.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn registry_outage_30s_sync() {
    registry_outage("sync", Duration::from_secs(30)).await;
}

/// Registry unreachable for 30 s, async mode.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn registry_outage_30s_async() {
    registry_outage("async", Duration::from_secs(30)).await;
}

/// The etcd leader (of 3 members), which both registries talk to, cut off for 5 s: the
/// other two elect a new leader (which gives every lease a fresh TTL) and the registries
/// move to them; writes go on, no failover, nothing lost; prints the write pause.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn etcd_leader_outage_5s() {
    control_plane_outage(
        "sync",
        ControlPlane::Etcd(EtcdRole::Leader),
        Cut::DialledEtcdMember,
        Duration::from_secs(5),
    )
    .await;
}

/// An etcd follower which both registries talk to, cut off for 5 s: the leader keeps
/// counting the leases down, so the registries must move to another member well within a
/// TTL (a 2 s attempt timeout let every lease lapse and promoted the replica in CI).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn etcd_follower_outage_5s() {
    control_plane_outage(
        "sync",
        ControlPlane::Etcd(EtcdRole::Follower),
        Cut::DialledEtcdMember,
        Duration::from_secs(5),
    )
    .await;
}

/// One of two registries (on etcd) cut off for 5 s: the shops move to the other and keep
/// their leases, so there is no failover and (the goal) no write pause.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn one_registry_outage_5s_on_etcd() {
    control_plane_outage(
        "sync",
        ControlPlane::Etcd(EtcdRole::Leader),
        Cut::Host("reg1"),
        Duration::from_secs(5),
    )
    .await;
}

/// One of two registries (on etcd) cut off for 5 s in async mode.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn one_registry_outage_5s_on_etcd_async() {
    control_plane_outage(
        "async",
        ControlPlane::Etcd(EtcdRole::Leader),
        Cut::Host("reg1"),
        Duration::from_secs(5),
    )
    .await;
}

/// An HTTP response: status, headers (lower-case names) and body.
struct HttpResponse {
    status: u16,
    headers: Vec<(String, String)>,
    body: String,
}

impl HttpResponse {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {:?}", self.body))
    }
}

/// One HTTP/1.1 exchange with the gateway (the test has no HTTP client crate; the
/// gateway's HTTP is plain): `extra` header lines end in `\r\n`.
async fn http(
    addr: std::net::SocketAddr,
    method: &str,
    path: &str,
    extra: &str,
    body: &str,
) -> HttpResponse {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let exchange = async {
        let mut stream = tokio::net::TcpStream::connect(addr).await.ok()?;
        let request = format!(
            "{method} {path} HTTP/1.1\r\nHost: {addr}\r\n{extra}\
             Content-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        );
        stream.write_all(request.as_bytes()).await.ok()?;
        let mut response = Vec::new();
        stream.read_to_end(&mut response).await.ok()?;
        Some(String::from_utf8_lossy(&response).into_owned())
    };
    let response = tokio::time::timeout(WAIT, exchange)
        .await
        .expect("the gateway did not answer in time")
        .expect("HTTP exchange with the gateway failed");
    let (head, body) = response.split_once("\r\n\r\n").unwrap_or((&response, ""));
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("not an HTTP response: {response:?}"));
    let headers = head
        .lines()
        .skip(1)
        .filter_map(|l| {
            let (name, value) = l.split_once(':')?;
            Some((name.trim().to_ascii_lowercase(), value.trim().to_owned()))
        })
        .collect();
    HttpResponse {
        status,
        headers,
        body: body.to_owned(),
    }
}

/// `POST path` with the bearer `token`: (status, `Retry-After` if any).
async fn http_post(
    addr: std::net::SocketAddr,
    path: &str,
    token: &str,
    body: &str,
) -> (u16, Option<String>) {
    let response = http(
        addr,
        "POST",
        path,
        &format!("Authorization: Bearer {token}\r\n"),
        body,
    )
    .await;
    let retry_after = response.header("retry-after").map(str::to_owned);
    (response.status, retry_after)
}

/// Every role on its own host — three etcd members, two registries, three prediction
/// nodes, the aggregator, both shops and the gateway — with plaintext gRPC across hosts
/// (`--insecure`): a prediction and a sync order (sign-up, cart, checkout) work through
/// the gateway, and the order was on the replica's disk before the reply.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn every_role_on_its_own_host() {
    let Some(cluster) = Cluster::start_with("sync", ControlPlane::Etcd(EtcdRole::Leader)).await
    else {
        return;
    };
    let registry = cluster.registry();
    let net = &cluster.net;
    let _nodes: Vec<Process> = (1..=3)
        .map(|n| {
            let host = format!("node{n}");
            let id = format!("node-{n}");
            net.spawn(
                &host,
                &[
                    "node",
                    "--listen",
                    &net.listen(&host),
                    "--id",
                    &id,
                    "--preset",
                    &n.to_string(),
                    "--registry",
                    &registry,
                    "--initial-stake",
                    "1000",
                ],
                &[],
            )
        })
        .collect();
    let ledger = tempdir();
    let _aggregator = net.spawn(
        "aggregator",
        &[
            "aggregator",
            "--listen",
            &net.listen("aggregator"),
            "--registry",
            &registry,
            "--min-answers",
            "2",
            "--ledger-path",
            ledger.path().join("ledger").to_str().expect("utf-8 path"),
            "--cluster-secret",
            concord_testkit::CLUSTER_SECRET,
        ],
        &[],
    );
    let gateway = net.spawn(
        "gateway",
        &[
            "gateway",
            "--listen",
            &net.listen("gateway"),
            "--registry",
            &registry,
        ],
        &[],
    );
    let predict = "/api/predict?sepal_length=5.1&sepal_width=3.5&petal_length=1.4&petal_width=0.2";
    let predicted = eventually(WAIT, || async {
        let r = http(gateway.addr, "GET", predict, "", "").await;
        r.status == 200 && r.json()["answered"].as_u64() == Some(3)
    })
    .await;
    assert!(
        predicted,
        "no prediction with all three nodes across the hosts"
    );

    let product = http(
        gateway.addr,
        "POST",
        "/api/products",
        &format!("Authorization: Bearer {ADMIN}\r\n"),
        r#"{"name":"across hosts","price_minor":100,"currency":"EUR","stock":5}"#,
    )
    .await;
    assert_eq!(product.status, 201, "{}", product.body);
    let product_id = product.json()["product"]["id"]
        .as_str()
        .expect("product id")
        .to_owned();
    let signup = http(
        gateway.addr,
        "POST",
        "/api/signup",
        "",
        r#"{"username":"hostuser","password":"correct horse battery"}"#,
    )
    .await;
    assert_eq!(signup.status, 201, "{}", signup.body);
    let cookie = signup
        .header("set-cookie")
        .and_then(|c| c.split(';').next())
        .expect("a session cookie")
        .to_owned();
    let session = format!("Cookie: {cookie}\r\n");
    let added = http(
        gateway.addr,
        "POST",
        "/api/carts/me/items",
        &session,
        &format!(r#"{{"product_id":"{product_id}","quantity":2}}"#),
    )
    .await;
    assert!(
        added.status < 300,
        "add to cart: {} {}",
        added.status,
        added.body
    );
    let order = http(
        gateway.addr,
        "POST",
        "/api/orders",
        &format!("{session}Idempotency-Key: across-hosts-1\r\n"),
        "{}",
    )
    .await;
    assert_eq!(order.status, 201, "{}", order.body);
    let write = &order.json()["write"];
    assert_eq!(
        write["replicated"], true,
        "a sync order not on the replica: {write}"
    );
}

/// The gateway cut off from the primary but not from the replica: writes through it get
/// 503 with `Retry-After` (try again soon), never a success from the replica, and they
/// succeed again after the heal.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn gateway_cut_off_from_the_primary() {
    let Some(cluster) = Cluster::start("sync").await else {
        return;
    };
    let registry = cluster.registry();
    let gateway = cluster.net.spawn(
        "gateway",
        &[
            "gateway",
            "--listen",
            &cluster.net.listen("gateway"),
            "--registry",
            &registry,
        ],
        &[],
    );
    let body =
        |name: &str| format!(r#"{{"name":"{name}","price_minor":100,"currency":"EUR","stock":1}}"#);
    let ready = eventually(WAIT, || async {
        http_post(gateway.addr, "/api/products", ADMIN, &body("before"))
            .await
            .0
            == 201
    })
    .await;
    assert!(
        ready,
        "the gateway never created a product through the primary"
    );
    cluster.net.cut("gateway", "alpha");
    let mut refused = 0;
    for i in 0..5 {
        let (status, retry_after) = http_post(
            gateway.addr,
            "/api/products",
            ADMIN,
            &body(&format!("during-{i}")),
        )
        .await;
        assert_eq!(
            status, 503,
            "write {i} through a gateway cut off from the primary"
        );
        assert!(retry_after.is_some(), "a 503 without Retry-After");
        refused += 1;
    }
    cluster.net.heal();
    let back = eventually(WAIT, || async {
        http_post(gateway.addr, "/api/products", ADMIN, &body("after"))
            .await
            .0
            == 201
    })
    .await;
    assert!(
        back,
        "writes through the gateway did not come back after the heal"
    );
    let replica = status(&cluster.beta()).await.expect("beta's status");
    assert_eq!(
        replica.role,
        pb::Role::Replica as i32,
        "beta must still be the replica"
    );
    eprintln!("gateway cut off from the primary: {refused} writes refused with 503 + Retry-After");
    drop(gateway);
}

/// Issue 15, gap 2: both registries (on etcd) cut off from both shops for `outage`, while
/// they still reach etcd and the shops still reach each other and the clients. Neither
/// registry hears a shop, so neither may let etcd expire them: no promotion, nothing
/// acknowledged lost, never two shops acknowledging; prints acknowledged, lost and pause.
async fn registries_cut_off_from_the_shops(mode: &str, outage: Duration) {
    control_plane_outage(
        mode,
        ControlPlane::Etcd(EtcdRole::Leader),
        Cut::RegistriesFromShops,
        outage,
    )
    .await;
}

/// Both registries (etcd) cut off from the shops for 5 s, sync mode.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn registries_cut_off_from_the_shops_5s_sync() {
    registries_cut_off_from_the_shops("sync", Duration::from_secs(5)).await;
}

/// Both registries (etcd) cut off from the shops for 5 s, async mode (a promotion here
/// would lose acknowledged writes).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn registries_cut_off_from_the_shops_5s_async() {
    registries_cut_off_from_the_shops("async", Duration::from_secs(5)).await;
}

/// Both registries (etcd) cut off from the shops for 30 s, sync mode.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn registries_cut_off_from_the_shops_30s_sync() {
    registries_cut_off_from_the_shops("sync", Duration::from_secs(30)).await;
}

/// Both registries (etcd) cut off from the shops for 30 s, async mode.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn registries_cut_off_from_the_shops_30s_async() {
    registries_cut_off_from_the_shops("async", Duration::from_secs(30)).await;
}

/// A minority of etcd (the member the registries dial, 1 of 3) cut off for 30 s: the
/// registries move to the majority; no failover, nothing lost; prints the pause.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn etcd_minority_outage_30s() {
    control_plane_outage(
        "sync",
        ControlPlane::Etcd(EtcdRole::Leader),
        Cut::DialledEtcdMember,
        Duration::from_secs(30),
    )
    .await;
}

/// The etcd leader cut off for 5 s in async mode: no failover, so nothing lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn etcd_leader_outage_5s_async() {
    control_plane_outage(
        "async",
        ControlPlane::Etcd(EtcdRole::Leader),
        Cut::DialledEtcdMember,
        Duration::from_secs(5),
    )
    .await;
}

/// An etcd follower the registries dial cut off for 5 s in async mode.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn etcd_follower_outage_5s_async() {
    control_plane_outage(
        "async",
        ControlPlane::Etcd(EtcdRole::Follower),
        Cut::DialledEtcdMember,
        Duration::from_secs(5),
    )
    .await;
}

/// The gateway cut off from the primary but not the replica for 5 s, under the 16-writer
/// load (plus one writer pinned to each shop) and a writer through the gateway: every
/// gateway write is 201 or 503 + Retry-After, never acknowledged by the replica (each 201
/// carries the primary's term and is on the primary afterwards), no failover, nothing lost;
/// prints acknowledged, lost, pause and the gateway's 201/503 counts.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn gateway_cut_off_from_the_primary_under_load() {
    let Some(cluster) = Cluster::start("sync").await else {
        return;
    };
    let registry = cluster.registry();
    let gateway = cluster.net.spawn(
        "gateway",
        &[
            "gateway",
            "--listen",
            &cluster.net.listen("gateway"),
            "--registry",
            &registry,
        ],
        &[],
    );
    let term = status(&cluster.alpha()).await.expect("alpha's status").term;
    let load = Load::start_pinned(
        registry.clone(),
        cluster.alpha(),
        &[cluster.alpha(), cluster.beta()],
    );
    run_for(&load, 500).await;
    let body =
        |name: &str| format!(r#"{{"name":"{name}","price_minor":100,"currency":"EUR","stock":1}}"#);
    let auth = format!("Authorization: Bearer {ADMIN}\r\n");
    let gateway_write = |i: usize| {
        let (body, auth) = (body(&format!("gw-{i}")), auth.clone());
        async move { http(gateway.addr, "POST", "/api/products", &auth, &body).await }
    };
    let (mut created, mut refused) = (Vec::new(), 0usize);
    let cut_at = Instant::now();
    cluster.net.cut("gateway", "alpha");
    let mut i = 0;
    while cut_at.elapsed() < Duration::from_secs(5) {
        let response = gateway_write(i).await;
        i += 1;
        match response.status {
            201 => created.push(response.json()),
            503 => {
                assert!(
                    response.header("retry-after").is_some(),
                    "a 503 without Retry-After"
                );
                refused += 1;
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            other => panic!(
                "gateway write {i} during the cut: {other} {}",
                response.body
            ),
        }
    }
    cluster.net.heal();
    let healed = Instant::now();
    loop {
        let response = gateway_write(i).await;
        i += 1;
        if response.status == 201 {
            created.push(response.json());
            break;
        }
        assert!(
            healed.elapsed() < WAIT,
            "writes through the gateway did not come back after the heal"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    run_for(&load, 300).await;
    let acks = load.finish().await;
    let verdict = verify(&acks, &cluster.alpha(), cut_at).await;
    let mut alpha = ShopClient::new(channel(&cluster.alpha()));
    for reply in &created {
        assert_eq!(
            reply["write"]["term"].as_u64(),
            Some(term),
            "a gateway write acknowledged in another term: {reply}"
        );
        let id = reply["product"]["id"]
            .as_str()
            .expect("product id")
            .to_owned();
        assert!(
            alpha
                .get_product(pb::GetProductRequest { id })
                .await
                .is_ok_and(|r| r.into_inner().product.is_some()),
            "a gateway-acknowledged write is not on the primary: {reply}"
        );
    }
    let beta = status(&cluster.beta()).await.expect("beta's status");
    eprintln!(
        "gateway cut off from the primary for 5s (sync, 16 writers): {} acknowledged, {} lost, pause {} ms; through the gateway {} created, {refused} refused with 503 + Retry-After",
        verdict.acked,
        verdict.lost,
        verdict.pause.as_millis(),
        created.len(),
    );
    assert_eq!(
        beta.role,
        pb::Role::Replica as i32,
        "beta must still be the replica"
    );
    assert_eq!(verdict.lost, 0, "acknowledged writes lost");
    drop(gateway);
}
