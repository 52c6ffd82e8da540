//! `concord up --control-plane etcd`: a real 3-member etcd cluster, two registries and the
//! whole cluster as supervised processes; `kill -9` of one registry costs no lease and no
//! failover. Skipped with a message when there is no `etcd` binary, except in CI.

use std::{
    collections::HashMap,
    net::SocketAddr,
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use concord::pb::registry::v1::{registry_client::RegistryClient, Instance, ResolveRequest};
use concord_testkit::process::{command, follow_stdout, wait_for_line, KillOnDrop};

/// Parses `concord up: <name> (<role>) pid <pid> running on <addr>`.
fn running_line(line: &str) -> Option<(String, u32, SocketAddr)> {
    let rest = line.strip_prefix("concord up: ")?;
    let (name, rest) = rest.split_once(" (")?;
    let (_, rest) = rest.split_once(") pid ")?;
    let (pid, addr) = rest.split_once(" running on ")?;
    Some((
        name.to_owned(),
        pid.parse().ok()?,
        addr.trim().parse().ok()?,
    ))
}

/// The shop instances `registry` lists, by address.
async fn shops(registry: SocketAddr) -> Option<HashMap<String, Instance>> {
    let channel = concord::grpc::lazy_channel(&registry.to_string()).ok()?;
    let reply = tokio::time::timeout(
        Duration::from_secs(2),
        RegistryClient::new(channel).resolve(ResolveRequest {
            service: "shop".into(),
        }),
    )
    .await
    .ok()?
    .ok()?;
    Some(
        reply
            .into_inner()
            .instances
            .into_iter()
            .map(|i| (i.address.clone(), i))
            .collect(),
    )
}

/// The address and term of the one shop registered as primary.
fn primary(shops: &HashMap<String, Instance>) -> Option<(String, String)> {
    let mut primaries = shops
        .values()
        .filter(|i| i.metadata.get("role").map(String::as_str) == Some("primary"));
    let found = primaries.next()?;
    assert!(primaries.next().is_none(), "two primaries: {shops:?}");
    Some((found.address.clone(), found.metadata.get("term")?.clone()))
}

/// The body of `GET <url>` (plain HTTP), or `None` if nothing answers within 5 s.
async fn http_get(url: &str) -> Option<String> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let rest = url.strip_prefix("http://")?;
    let (addr, path) = rest.split_once('/')?;
    let exchange = async {
        let mut stream = tokio::net::TcpStream::connect(addr).await.ok()?;
        let request = format!("GET /{path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
        stream.write_all(request.as_bytes()).await.ok()?;
        let mut response = Vec::new();
        stream.read_to_end(&mut response).await.ok()?;
        Some(String::from_utf8_lossy(&response).into_owned())
    };
    tokio::time::timeout(Duration::from_secs(5), exchange)
        .await
        .ok()?
}

/// Issue 15: the etcd `concord up` starts is secured (TLS only, client certificates of the
/// development CA required): a plaintext client and a TLS client without a certificate are
/// refused, the members' certificate is accepted; the registries and the members serve
/// Prometheus metrics, each listed in a `metrics at` line.
async fn check_secured_etcd_and_metrics(
    data: &std::path::Path,
    etcd: SocketAddr,
    lines: &std::sync::mpsc::Receiver<String>,
) {
    use concord::etcd::{Etcd, EtcdSecurity, EtcdTls};
    let certs = data.join("certs");
    let endpoint = [etcd.to_string()];
    let plaintext = Etcd::connect(&endpoint).expect("endpoint");
    assert!(
        plaintext.range_prefix(b"/").await.is_err(),
        "plaintext accepted"
    );
    let anonymous = EtcdSecurity {
        tls: Some(EtcdTls::load(&certs.join("ca.pem"), None).expect("CA")),
        auth: None,
    };
    let anonymous = Etcd::connect_with(&endpoint, &anonymous).expect("endpoint");
    assert!(
        anonymous.range_prefix(b"/").await.is_err(),
        "a client without a certificate accepted"
    );
    let registry = EtcdSecurity {
        tls: Some(
            EtcdTls::load(
                &certs.join("ca.pem"),
                Some((&certs.join("registry.pem"), &certs.join("registry.key"))),
            )
            .expect("registry certificate"),
        ),
        auth: None,
    };
    Etcd::connect_with(&endpoint, &registry)
        .expect("endpoint")
        .range_prefix(b"/")
        .await
        .expect("the registry's certificate is accepted");

    let mut urls = HashMap::new();
    while !["registry-1", "registry-2", "etcd-1"]
        .iter()
        .all(|name| urls.contains_key(*name))
    {
        let found = wait_for_line(lines, Duration::from_secs(10), |line| {
            let rest = line.strip_prefix("concord up: ")?;
            let (name, url) = rest.split_once(" metrics at ")?;
            Some((name.to_owned(), url.trim().to_owned()))
        })
        .expect("a metrics line for every registry and etcd member");
        urls.insert(found.0, found.1);
    }
    for (name, family) in [
        ("registry-1", "registry_leases"),
        ("registry-2", "registry_leases"),
        ("etcd-1", "etcd_server_has_leader"),
    ] {
        let page = http_get(&urls[name])
            .await
            .unwrap_or_else(|| panic!("{name}'s metrics at {} do not answer", urls[name]));
        assert!(page.contains(family), "{name}: no {family} in its metrics");
    }
}

/// kill -9 of the registry every process registered through first: the shops keep their
/// leases (same registration, never missing from the other registry's view), the primary
/// and its term stay, and the supervisor brings the registry back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn up_on_etcd_loses_no_lease_and_fails_nothing_over_when_a_registry_dies() {
    if concord_testkit::etcd::etcd_binary().is_none() {
        return;
    }
    let data = tempfile::tempdir().expect("tempdir");
    let mut up = command(&[
        "up",
        "--auto-ports",
        "--control-plane",
        "etcd",
        "--nodes",
        "1",
        "--replication",
        "async",
        "--data-dir",
        data.path().to_str().expect("utf-8 path"),
    ])
    .stdout(Stdio::piped())
    .spawn()
    .expect("spawn concord up");
    let lines = follow_stdout(&mut up);
    let mut up = KillOnDrop(up);
    let mut running = HashMap::new();
    let deadline = Instant::now() + Duration::from_secs(120);
    while !["etcd-3", "registry-1", "registry-2", "shop-1", "shop-2"]
        .iter()
        .all(|name| running.contains_key(*name))
    {
        let left = deadline.saturating_duration_since(Instant::now());
        let line = lines.recv_timeout(left).expect("cluster up in time");
        if let Some((name, pid, addr)) = running_line(&line) {
            running.insert(name, (pid, addr));
        }
    }
    check_secured_etcd_and_metrics(data.path(), running["etcd-1"].1, &lines).await;
    let (registry1_pid, _) = running["registry-1"];
    let (_, registry2) = running["registry-2"];

    // Both shops registered, one primary.
    let settle_by = Instant::now() + Duration::from_secs(30);
    let before = loop {
        match shops(registry2).await {
            Some(found) if found.len() == 2 && primary(&found).is_some() => break found,
            _ => {
                assert!(
                    Instant::now() < settle_by,
                    "the shops never registered with a primary"
                );
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    };
    let primary_before = primary(&before).expect("primary");

    let killed = Command::new("kill")
        .args(["-9", &registry1_pid.to_string()])
        .status()
        .expect("kill");
    assert!(killed.success());
    let since = Instant::now();
    // Three shop TTLs (2 s each): same registrations, same primary and term, throughout.
    while since.elapsed() < Duration::from_secs(6) {
        let now = shops(registry2).await.expect("registry-2 answers");
        for (address, instance) in &before {
            let current = now.get(address).unwrap_or_else(|| {
                panic!("{address} vanished {:?} after the kill", since.elapsed())
            });
            assert_eq!(
                current.registered_at_unix_ms, instance.registered_at_unix_ms,
                "{address} registered again (lease lost)"
            );
        }
        assert_eq!(
            primary(&now),
            Some(primary_before.clone()),
            "a failover happened"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let restarted = wait_for_line(&lines, Duration::from_secs(20), |line| {
        running_line(line).filter(|(name, _, _)| name == "registry-1")
    });
    assert!(
        restarted.is_some(),
        "the supervisor restarts the killed registry"
    );

    let _ = Command::new("kill")
        .args(["-TERM", &up.id().to_string()])
        .status();
    let deadline = Instant::now() + Duration::from_secs(30);
    while up.try_wait().expect("wait").is_none() {
        assert!(Instant::now() < deadline, "up did not stop");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
