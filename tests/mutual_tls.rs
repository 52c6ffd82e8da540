//! Mutual TLS over real processes: `concord certs`, then a registry, two nodes and the
//! aggregator with `--tls-*` on 127.0.0.1; who gets through the handshake and who does not;
//! grpcurl with `-cacert/-cert/-key`; the plaintext rule for non-loopback addresses.

use std::{path::Path, process::Command, time::Duration};

use concord::{
    identity::Principal,
    pb::predict::v1::{predictor_client::PredictorClient, Policy, PredictRequest},
    tls::{Tls, TlsFiles},
};
use concord_testkit::process::{command, grpcurl, Process};
use concord_testkit::shop;
use tonic::transport::{Certificate, ClientTlsConfig};
use tonic_health::pb::{health_client::HealthClient, HealthCheckRequest};

/// Runs `concord certs --out <dir> --nodes 2`.
fn make_certs(dir: &Path) {
    let status = command(&[
        "certs",
        "--out",
        dir.to_str().expect("utf-8"),
        "--nodes",
        "2",
    ])
    .stdout(std::process::Stdio::null())
    .status()
    .expect("run concord certs");
    assert!(status.success(), "concord certs failed");
}

/// `principal`'s files under `dir` (as `concord certs` names them).
fn files(dir: &Path, principal: &Principal) -> TlsFiles {
    let stem = match principal {
        Principal::Node(id) => format!("node.{id}"),
        other => other.name(),
    };
    TlsFiles {
        cert: dir.join(format!("{stem}.pem")),
        key: dir.join(format!("{stem}.key")),
        ca: dir.join("ca.pem"),
    }
}

/// The `--tls-*` flags for `principal`.
fn tls_flags(dir: &Path, principal: &Principal) -> Vec<String> {
    let files = files(dir, principal);
    [
        ("--tls-cert", files.cert),
        ("--tls-key", files.key),
        ("--tls-ca", files.ca),
    ]
    .into_iter()
    .flat_map(|(flag, path)| [flag.to_owned(), path.display().to_string()])
    .collect()
}

fn spawn(args: &[&str], dir: &Path, principal: &Principal) -> Process {
    let flags = tls_flags(dir, principal);
    let mut all: Vec<&str> = args.to_vec();
    all.extend(flags.iter().map(String::as_str));
    Process::spawn(&all)
}

/// A client config for `principal`'s certificate, expecting the server `server`.
fn client(dir: &Path, principal: &Principal, server: Option<&Principal>) -> ClientTlsConfig {
    Tls::load(&files(dir, principal))
        .expect("load client TLS")
        .client_config(server)
}

fn predict_request() -> PredictRequest {
    PredictRequest {
        features: vec![6.3, 3.3, 6.0, 2.5],
        policy: Policy::Mean as i32,
    }
}

/// A health check through `tls` (plaintext with `None`).
async fn health(addr: &str, tls: Option<ClientTlsConfig>) -> Result<(), tonic::Status> {
    let channel = concord::grpc::lazy_channel_with_tls(addr, tls).expect("channel");
    HealthClient::new(channel)
        .check(HealthCheckRequest::default())
        .await
        .map(|_| ())
}

/// A registry, two nodes and the aggregator over mutual TLS: a prediction is answered by
/// both nodes; a plaintext client, a client without a certificate, one from another CA
/// and one expecting another server principal are all refused at the handshake.
#[tokio::test(flavor = "multi_thread")]
async fn cluster_over_mutual_tls() {
    let pki = tempfile::tempdir().expect("tempdir");
    let dir = pki.path().join("certs");
    make_certs(&dir);
    let registry = spawn(
        &["registry", "--listen", "127.0.0.1:0"],
        &dir,
        &Principal::Registry,
    );
    let registry_addr = registry.addr.to_string();
    let _nodes: Vec<Process> = (1..=2)
        .map(|n| {
            let id = format!("node-{n}");
            spawn(
                &[
                    "node",
                    "--listen",
                    "127.0.0.1:0",
                    "--id",
                    &id,
                    "--preset",
                    &n.to_string(),
                    "--registry",
                    &registry_addr,
                ],
                &dir,
                &Principal::Node(id.clone()),
            )
        })
        .collect();
    let data = tempfile::tempdir().expect("tempdir");
    let ledger = data.path().join("ledger");
    let aggregator = spawn(
        &[
            "aggregator",
            "--listen",
            "127.0.0.1:0",
            "--registry",
            &registry_addr,
            "--min-answers",
            "2",
            "--ledger-path",
            ledger.to_str().expect("utf-8"),
        ],
        &dir,
        &Principal::Aggregator,
    );
    let addr = aggregator.addr.to_string();

    // A gateway's certificate, expecting the aggregator: both nodes answer.
    let tls = client(&dir, &Principal::Gateway, Some(&Principal::Aggregator));
    let channel = concord::grpc::lazy_channel_with_tls(&addr, Some(tls)).expect("channel");
    let mut predictor = PredictorClient::new(channel);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        match predictor.predict(predict_request()).await {
            Ok(reply) if reply.get_ref().answered == 2 => break,
            other => assert!(
                tokio::time::Instant::now() < deadline,
                "no prediction with both nodes over mutual TLS: {other:?}"
            ),
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    let other_pki = tempfile::tempdir().expect("tempdir");
    make_certs(other_pki.path());
    let ca_only = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(
            std::fs::read(dir.join("ca.pem")).expect("ca"),
        ))
        .domain_name("aggregator.concord");
    let cases = [
        ("plaintext", None),
        ("no client certificate", Some(ca_only)),
        (
            "a certificate of another CA",
            Some(client(
                other_pki.path(),
                &Principal::Gateway,
                Some(&Principal::Aggregator),
            )),
        ),
        (
            "expecting the registry at the aggregator's address",
            Some(client(
                &dir,
                &Principal::Gateway,
                Some(&Principal::Registry),
            )),
        ),
    ];
    for (case, tls) in cases {
        let refused = health(&addr, tls).await.expect_err(case);
        // A transport failure, never an answer from the server (whose code varies:
        // plaintext meeting TLS breaks HTTP/2 framing, a refused handshake is UNAVAILABLE).
        assert!(
            std::error::Error::source(&refused)
                .is_some_and(|source| source.is::<tonic::transport::Error>()),
            "{case}: refused before any RPC, got {refused:?}"
        );
    }
    let by_address = client(&dir, &Principal::Shop, None);
    health(&addr, Some(by_address))
        .await
        .expect("any cluster certificate, verifying the address");
}

/// grpcurl with `-cacert -cert -key` (no `-plaintext`) calls Health; without a client
/// certificate, or expecting another server name, it is refused.
#[test]
fn grpcurl_over_mutual_tls() {
    if Command::new(grpcurl()).arg("-version").output().is_err() {
        eprintln!("note: grpcurl not found (set $GRPCURL); skipping the grpcurl TLS check");
        return;
    }
    let pki = tempfile::tempdir().expect("tempdir");
    let dir = pki.path().join("certs");
    make_certs(&dir);
    let registry = spawn(
        &["registry", "--listen", "127.0.0.1:0"],
        &dir,
        &Principal::Registry,
    );
    let gateway = files(&dir, &Principal::Gateway);
    let path = |p: &Path| p.display().to_string();
    let (ca, cert, key) = (path(&gateway.ca), path(&gateway.cert), path(&gateway.key));
    let addr = registry.addr.to_string();
    let call = |extra: &[&str]| {
        let mut args = vec!["-cacert", &ca];
        args.extend_from_slice(extra);
        args.extend([addr.as_str(), "grpc.health.v1.Health/Check"]);
        Command::new(grpcurl())
            .args(&args)
            .output()
            .expect("run grpcurl")
    };
    for (case, extra, ok) in [
        ("by address", vec!["-cert", &cert, "-key", &key], true),
        (
            "as registry.concord",
            vec![
                "-cert",
                &cert,
                "-key",
                &key,
                "-servername",
                "registry.concord",
            ],
            true,
        ),
        (
            "as shop.concord",
            vec!["-cert", &cert, "-key", &key, "-servername", "shop.concord"],
            false,
        ),
        ("without a client certificate", vec![], false),
    ] {
        let output = call(&extra);
        let stdout = String::from_utf8_lossy(&output.stdout);
        assert_eq!(
            output.status.success() && stdout.contains("SERVING"),
            ok,
            "{case}: {stdout} {}",
            String::from_utf8_lossy(&output.stderr)
        );
    }
}

/// Without TLS flags, listening beyond loopback or dialling a non-loopback registry is
/// refused with what to do; `--insecure` allows it.
#[test]
fn plaintext_beyond_loopback_needs_insecure() {
    for args in [
        vec!["registry", "--listen", "0.0.0.0:0"],
        vec![
            "node",
            "--listen",
            "127.0.0.1:0",
            "--registry",
            "192.0.2.1:50050",
        ],
    ] {
        let output = command(&args).output().expect("run concord");
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(!output.status.success(), "{args:?} started");
        assert!(
            stderr.contains("--tls-cert") && stderr.contains("--insecure"),
            "{args:?}: {stderr}"
        );
    }
    let mut insecure = Process::spawn(&["registry", "--listen", "0.0.0.0:0", "--insecure"]);
    insecure.kill9();
}

/// A node's valid certificate cannot register another node id (the registry's
/// authorization of issue 13 item 1, which reads the certificate through
/// `identity::authenticate`).
#[tokio::test(flavor = "multi_thread")]
async fn a_node_certificate_cannot_register_another_node() {
    use concord::pb::registry::v1::{registry_client::RegistryClient, RegisterRequest};
    let pki = tempfile::tempdir().expect("tempdir");
    let dir = pki.path().join("certs");
    make_certs(&dir);
    let registry = spawn(
        &["registry", "--listen", "127.0.0.1:0"],
        &dir,
        &Principal::Registry,
    );
    let tls = client(
        &dir,
        &Principal::Node("node-1".into()),
        Some(&Principal::Registry),
    );
    let channel = concord::grpc::lazy_channel_with_tls(&registry.addr.to_string(), Some(tls))
        .expect("channel");
    let refused = RegistryClient::new(channel)
        .register(RegisterRequest {
            service: "predictor".into(),
            address: "127.0.0.1:1".into(),
            metadata: [("node_id".to_owned(), "node-2".to_owned())].into(),
            ttl_ms: 2000,
        })
        .await
        .expect_err("node-1's certificate registered node-2");
    assert_eq!(refused.code(), tonic::Code::PermissionDenied, "{refused:?}");
}

/// A sync shop pair and the gateway over mutual TLS: the replica follows the primary (which
/// proves it is a shop), a write is acknowledged as replicated, and the gateway reads it
/// back from a shop it reached over TLS.
#[tokio::test(flavor = "multi_thread")]
async fn shops_and_gateway_over_mutual_tls() {
    use concord::pb::shop::v1::shop_client::ShopClient;
    const ADMIN: &str = "tls-test-admin";
    let pki = tempfile::tempdir().expect("tempdir");
    let dir = pki.path().join("certs");
    make_certs(&dir);
    let registry = spawn(
        &["registry", "--listen", "127.0.0.1:0"],
        &dir,
        &Principal::Registry,
    );
    let registry_addr = registry.addr.to_string();
    let data = tempfile::tempdir().expect("tempdir");
    let shop_args = |name: &str| {
        vec![
            "shop".to_owned(),
            "--listen".into(),
            "127.0.0.1:0".into(),
            "--data-dir".into(),
            data.path().join(name).display().to_string(),
            "--admin-token".into(),
            ADMIN.into(),
            "--registry".into(),
            registry_addr.clone(),
            "--replication".into(),
            "sync".into(),
        ]
    };
    let primary_args = shop_args("primary");
    let primary = spawn(
        &primary_args.iter().map(String::as_str).collect::<Vec<_>>(),
        &dir,
        &Principal::Shop,
    );
    let mut replica_args = shop_args("replica");
    replica_args.extend([
        "--replica-of".into(),
        primary.addr.to_string(),
        "--replica-id".into(),
        "r1".into(),
    ]);
    let _replica = spawn(
        &replica_args.iter().map(String::as_str).collect::<Vec<_>>(),
        &dir,
        &Principal::Shop,
    );
    let gateway = spawn(
        &[
            "gateway",
            "--listen",
            "127.0.0.1:0",
            "--registry",
            &registry_addr,
        ],
        &dir,
        &Principal::Gateway,
    );

    let tls = client(&dir, &Principal::Gateway, Some(&Principal::Shop));
    let channel = concord::grpc::lazy_channel_with_tls(&primary.addr.to_string(), Some(tls))
        .expect("channel");
    let mut shop = ShopClient::new(channel);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let reply = shop
            .create_product(shop::with_bearer(shop::product("tls-widget", 1), ADMIN))
            .await;
        match reply {
            Ok(reply) if reply.get_ref().write.as_ref().is_some_and(|w| w.replicated) => break,
            other => assert!(
                tokio::time::Instant::now() < deadline,
                "no replicated write over mutual TLS: {other:?}"
            ),
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        let body = http_get(gateway.addr, "/api/products");
        if body.contains("tls-widget") {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the gateway never listed the product: {body}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// A plain HTTP/1.1 GET; the response as text (empty when the connection fails).
fn http_get(addr: std::net::SocketAddr, path: &str) -> String {
    use std::io::{Read, Write};
    let Ok(mut stream) = std::net::TcpStream::connect(addr) else {
        return String::new();
    };
    let request = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    let _ = stream.set_read_timeout(Some(Duration::from_secs(5)));
    if stream.write_all(request.as_bytes()).is_err() {
        return String::new();
    }
    let mut response = String::new();
    let _ = stream.read_to_string(&mut response);
    response
}
