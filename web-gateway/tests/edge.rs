//! The gateway's edge over real sockets: security headers on every kind of response, the
//! cross-site write rule, `405`s that name their methods, and the listener's defences
//! against slow (slowloris) and too many clients. Registry and gateway on `127.0.0.1:0`.

use std::time::{Duration, Instant};

use anyhow::{ensure, Context, Result};
use concord_testkit::gateway::*;
use concord_web_gateway::{
    edge::{self, Limits},
    Config,
};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpStream,
    task::JoinSet,
};

/// A registry and a gateway with `limits`, both on port 0.
async fn start(limits: Limits) -> Result<Harness> {
    let registry = concord_testkit::registry().await;
    let config = Config {
        registry_addr: registry.addr.to_string(),
        limits,
        ..Config::default()
    };
    let gateway =
        Running::spawn(|listener, shutdown| concord_web_gateway::serve(config, listener, shutdown))
            .await;
    Ok(Harness {
        registry,
        gateway,
        http: reqwest::Client::new(),
    })
}

/// Checks the four security headers on `response`, naming `what` on failure.
fn assert_security_headers(response: &reqwest::Response, what: &str) {
    let header = |name: &str| {
        response
            .headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_owned()
    };
    assert_eq!(
        header("content-security-policy"),
        edge::CONTENT_SECURITY_POLICY,
        "{what}"
    );
    assert!(
        header("content-security-policy").contains("frame-ancestors 'none'"),
        "{what}"
    );
    assert_eq!(header("x-frame-options"), "DENY", "{what}");
    assert_eq!(header("x-content-type-options"), "nosniff", "{what}");
    assert_eq!(header("referrer-policy"), "no-referrer", "{what}");
}

/// A static file, an API JSON reply, a 404, a 405 and a refused cross-site write all carry
/// the CSP, frame, nosniff and referrer headers.
#[tokio::test]
async fn every_response_carries_the_security_headers() -> Result<()> {
    let h = start(Limits::default()).await?;
    for path in ["/", "/script.js", "/style.css", "/hello"] {
        let response = h.get(path).await?;
        assert_eq!(response.status(), 200, "{path}");
        assert_security_headers(&response, path);
    }
    let response = h.get("/api/openapi.json").await?;
    assert_eq!(response.status(), 200);
    assert_security_headers(&response, "API JSON");
    let response = h.get("/no/such/page").await?;
    assert_security_headers(&response, "404");
    expect_error(response, 404, "no_route").await?;
    let response = h.http.delete(h.url("/hello")).send().await?;
    assert_security_headers(&response, "405");
    expect_error(response, 405, "method_not_allowed").await?;
    let response = h
        .http
        .post(h.url("/api/products"))
        .header("cookie", "session=x")
        .header("sec-fetch-site", "cross-site")
        .send()
        .await?;
    assert_security_headers(&response, "403");
    expect_error(response, 403, "permission_denied").await?;
    h.stop().await
}

/// A 405 names the allowed methods in its JSON message and in `Allow` (it once said
/// "allowed: )"), and quotes the path it echoes within the 64-character bound.
#[tokio::test]
async fn method_not_allowed_names_the_methods() -> Result<()> {
    let h = start(Limits::default()).await?;
    let response = h.http.delete(h.url("/hello")).send().await?;
    let allow = response
        .headers()
        .get("allow")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    assert!(allow.contains("GET") && allow.contains("HEAD"), "{allow}");
    let err = expect_error(response, 405, "method_not_allowed").await?;
    assert!(
        err.message.ends_with(&format!("allowed: {allow}")),
        "{}",
        err.message
    );
    assert!(err.message.contains("DELETE"), "{}", err.message);

    let response = h.http.put(h.url("/api/products")).send().await?;
    let err = expect_error(response, 405, "method_not_allowed").await?;
    assert!(
        err.message.contains("GET") && err.message.contains("POST"),
        "{}",
        err.message
    );
    h.stop().await
}

/// The UI page has no inline script, event-handler or style attributes, so the CSP (no
/// `unsafe-inline`) does not break it.
#[tokio::test]
async fn ui_has_no_inline_script_or_style() -> Result<()> {
    let h = start(Limits::default()).await?;
    let html = h.get("/").await?.text().await?;
    for (at, _) in html.match_indices("<script") {
        let tag = &html[at..at + html[at..].find('>').context("unclosed tag")?];
        assert!(tag.contains(" src="), "inline script: {tag}");
    }
    assert!(!html.contains("style="), "inline style attribute");
    let lower = html.to_ascii_lowercase();
    for (at, _) in lower.match_indices(" on") {
        let name: String = lower[at + 1..]
            .chars()
            .take_while(|c| c.is_ascii_alphabetic())
            .collect();
        assert!(
            !lower[at + 1 + name.len()..].starts_with('='),
            "inline event handler {name}"
        );
    }
    let script = h.get("/script.js").await?.text().await?;
    assert!(
        !script.contains("style: `"),
        "style attribute set from a string"
    );
    h.stop().await
}

/// A write carrying a cookie from a foreign origin is refused with 403; the same write
/// from the gateway's own origin, and a bearer-token write without cookies, pass the guard
/// (they reach the handler, which answers 503: no shop is registered).
#[tokio::test]
async fn cross_site_writes_with_cookies_are_refused() -> Result<()> {
    let h = start(Limits::default()).await?;
    let own_origin = format!("http://{}", h.gateway.addr);
    let body = serde_json::json!({"name": "Tea", "price_minor": 100, "stock": 1});
    let post = |origin: Option<&str>, fetch_site: Option<&str>, cookie: bool| {
        let mut request = h.http.post(h.url("/api/products")).json(&body);
        if let Some(origin) = origin {
            request = request.header("origin", origin);
        }
        if let Some(site) = fetch_site {
            request = request.header("sec-fetch-site", site);
        }
        if cookie {
            request = request.header("cookie", "session=abc");
        } else {
            request = request.bearer_auth("admin-token");
        }
        request.send()
    };
    let refused = [
        (Some("http://evil.example"), None),
        (Some("http://evil.example"), Some("cross-site")),
        (Some(own_origin.as_str()), Some("same-site")),
        (None, Some("cross-site")),
        (Some("null"), None),
    ];
    for (origin, site) in refused {
        let response = post(origin, site, true).await?;
        let err = expect_error(response, 403, "permission_denied").await?;
        assert!(err.message.contains("Cross-Origin"), "{}", err.message);
    }
    let passed = [
        (Some(own_origin.as_str()), None, true),
        (Some(own_origin.as_str()), Some("same-origin"), true),
        (None, Some("same-origin"), true),
        (None, None, false),
    ];
    for (origin, site, cookie) in passed {
        let response = post(origin, site, cookie).await?;
        assert_eq!(
            response.status(),
            503,
            "{origin:?} {site:?} cookie={cookie}: {}",
            response.text().await?
        );
    }
    // Reads are never refused.
    let response = h
        .http
        .get(h.url("/hello"))
        .header("cookie", "session=abc")
        .header("origin", "http://evil.example")
        .send()
        .await?;
    assert_eq!(response.status(), 200);
    h.stop().await
}

/// Opens a connection that starts a request and drips one header byte every `every`;
/// returns how long the server took to close it (`None`: still open after `give_up`).
async fn drip(
    addr: std::net::SocketAddr,
    every: Duration,
    give_up: Duration,
) -> Result<Option<Duration>> {
    let started = Instant::now();
    let mut stream = TcpStream::connect(addr).await?;
    stream
        .write_all(b"GET /hello HTTP/1.1\r\nHost: x\r\n")
        .await?;
    let mut buf = [0u8; 512];
    let mut tick = tokio::time::interval(every);
    while started.elapsed() < give_up {
        tokio::select! {
            read = stream.read(&mut buf) => match read {
                Ok(0) | Err(_) => return Ok(Some(started.elapsed())),
                Ok(_) => {} // a 408 before the close; keep reading to the end
            },
            _ = tick.tick() => {
                if stream.write_all(b"x").await.is_err() {
                    return Ok(Some(started.elapsed()));
                }
            }
        }
    }
    Ok(None)
}

/// 500 slowloris connections dripping header bytes are all closed soon after the
/// header-read timeout, while a normal request made meanwhile still answers quickly.
#[tokio::test]
async fn slowloris_connections_are_closed_and_normal_requests_stay_fast() -> Result<()> {
    const DRIPPERS: usize = 500;
    let timeout = Duration::from_secs(1);
    let h = start(Limits {
        header_read_timeout: timeout,
        ..Limits::default()
    })
    .await?;
    let addr = h.gateway.addr;
    let mut drippers = JoinSet::new();
    for _ in 0..DRIPPERS {
        drippers.spawn(drip(
            addr,
            Duration::from_millis(100),
            Duration::from_secs(15),
        ));
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let started = Instant::now();
    let response = h.get("/hello").await?;
    let normal = started.elapsed();
    assert_eq!(response.status(), 200);
    assert!(
        normal < Duration::from_secs(1),
        "a normal request took {normal:?}"
    );

    let mut slowest = Duration::ZERO;
    let mut still_open = 0;
    while let Some(result) = drippers.join_next().await {
        match result?? {
            Some(closed_after) => slowest = slowest.max(closed_after),
            None => still_open += 1,
        }
    }
    ensure!(
        still_open == 0,
        "{still_open} of {DRIPPERS} drip connections still open"
    );
    assert!(
        slowest >= timeout && slowest < timeout * 8,
        "slowest drip connection closed after {slowest:?}"
    );
    tracing::info!(?normal, ?slowest, "slowloris");
    h.stop().await
}

/// With every connection slot held by a silent client, a new request waits for a slot,
/// which the header-read timeout frees; it then succeeds.
#[tokio::test]
async fn connection_limit_holds_and_frees_up() -> Result<()> {
    let timeout = Duration::from_millis(800);
    let h = start(Limits {
        header_read_timeout: timeout,
        max_connections: 4,
        ..Limits::default()
    })
    .await?;
    let mut silent = Vec::new();
    for _ in 0..4 {
        silent.push(TcpStream::connect(h.gateway.addr).await?);
    }
    // Let the server accept all four before the real request queues behind them.
    tokio::time::sleep(Duration::from_millis(100)).await;
    let started = Instant::now();
    let response = h.get("/hello").await?;
    let waited = started.elapsed();
    assert_eq!(response.status(), 200);
    assert!(
        waited >= timeout / 2 && waited < timeout * 5,
        "waited {waited:?} for a connection slot"
    );
    drop(silent);
    h.stop().await
}

/// A parser error that quotes the caller's input keeps at most 64 characters of it.
#[tokio::test]
async fn parser_errors_quote_at_most_64_characters() -> Result<()> {
    let h = start(Limits::default()).await?;
    let long = "a".repeat(500);
    let response = h
        .http
        .post(h.url("/api/products"))
        .json(&serde_json::json!({"name": "Tea", "price_minor": long, "stock": 1}))
        .send()
        .await?;
    let err = expect_error(response, 400, "invalid_argument").await?;
    assert!(err.message.contains(&"a".repeat(64)), "{}", err.message);
    assert!(!err.message.contains(&"a".repeat(65)), "{}", err.message);
    assert!(err.message.contains("(500 bytes)"), "{}", err.message);
    h.stop().await
}

/// A request whose body drips in slower than the body deadline fails with a 400 soon
/// after the deadline, instead of holding its connection.
#[tokio::test]
async fn slow_body_is_cut_at_the_deadline() -> Result<()> {
    let deadline = Duration::from_millis(800);
    let h = start(Limits {
        body_read_timeout: deadline,
        ..Limits::default()
    })
    .await?;
    let started = Instant::now();
    let mut stream = TcpStream::connect(h.gateway.addr).await?;
    stream
        .write_all(
            b"POST /api/products HTTP/1.1\r\nHost: x\r\ncontent-type: application/json\r\n\
              content-length: 1000\r\n\r\n{",
        )
        .await?;
    let mut reply = Vec::new();
    let mut buf = [0u8; 1024];
    let mut tick = tokio::time::interval(Duration::from_millis(100));
    loop {
        ensure!(
            started.elapsed() < Duration::from_secs(10),
            "no answer to a dripping body"
        );
        tokio::select! {
            read = stream.read(&mut buf) => match read? {
                0 => break,
                n => {
                    reply.extend_from_slice(&buf[..n]);
                    if reply.windows(4).any(|w| w == b"\r\n\r\n") {
                        break;
                    }
                }
            },
            _ = tick.tick() => {
                let _ = stream.write_all(b" ").await;
            }
        }
    }
    let answered = started.elapsed();
    let head = String::from_utf8_lossy(&reply);
    assert!(head.starts_with("HTTP/1.1 400"), "{head}");
    assert!(
        answered >= deadline && answered < deadline * 5,
        "answered after {answered:?}"
    );
    h.stop().await
}
