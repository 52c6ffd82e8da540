//! Drives the UI in headless Chromium (fantoccini over chromedriver) against a real
//! cluster on loopback: registry, gateway, a shop primary with an async replica, the five
//! default prediction nodes and the aggregator. The journey: admin form, sign-up, cart, checkout,
//! order history with the stock decremented, order status, prediction with five vote rows,
//! outcome report, ledger chart, then the shop primary is killed (no deregistration) and the
//! cluster panel must show the replica promoted to primary at term 2.
//!
//! Needs `chromedriver` and `chromium` (Debian: `apt-get install chromium chromium-driver`);
//! `CHROMEDRIVER` overrides the driver path. `scripts/test.sh` installs both; without a
//! driver the test fails, unless `CONCORD_SKIP_BROWSER=1` says to skip it on purpose.
//! A screenshot of the final page (or of the page at the failure) is always written to
//! `<target dir>/test-output/browser/final.png`; `CONCORD_UI_SCREENSHOT=/path.png` writes a
//! second copy there.

use std::{
    path::{Path, PathBuf},
    process::Stdio,
    time::Duration,
};

use anyhow::{bail, Context, Result};
use concord_testkit::gateway::*;
use fantoccini::{Client, ClientBuilder, Locator};
use tokio::process::{Child, Command};

/// How long one UI condition may take to become true.
const UI_DEADLINE: Duration = Duration::from_secs(15);
/// Height the browser window adds around the page, for a full-page screenshot.
const WINDOW_CHROME_PX: u32 = 200;
/// Prediction nodes started: the whole default fleet.
const NODES: usize = 5;
/// Stock of the product the admin creates.
const STOCK: u32 = 5;
/// Units ordered: the product list must then show `STOCK - QTY`.
const QTY: u32 = 2;

/// Where the final screenshot goes: `test-output/browser` under the workspace target dir
/// (`CARGO_TARGET_DIR` when set, relative to the workspace root if relative).
fn output_dir() -> PathBuf {
    let workspace = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let target = match std::env::var_os("CARGO_TARGET_DIR") {
        Some(dir) => workspace.join(dir),
        None => workspace.join("target"),
    };
    target.join("test-output").join("browser")
}

/// Saves a screenshot of the current page to `final.png` in [`output_dir`] (and to
/// `CONCORD_UI_SCREENSHOT` when set); returns the path.
async fn save_screenshot(client: &Client) -> Result<PathBuf> {
    // Grow the window to the page's height so the shot holds the whole page, cluster
    // panel included (WebDriver screenshots only cover the viewport).
    let height = client
        .execute("return document.documentElement.scrollHeight;", vec![])
        .await?
        .as_u64()
        .context("page height")?;
    let (width, _) = client.get_window_size().await?;
    client
        .set_window_size(width as u32, height as u32 + WINDOW_CHROME_PX)
        .await?;
    let png = client.screenshot().await?;
    let dir = output_dir();
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let path = dir.join("final.png");
    std::fs::write(&path, &png).with_context(|| format!("writing {}", path.display()))?;
    if let Some(extra) = std::env::var_os("CONCORD_UI_SCREENSHOT") {
        std::fs::write(&extra, &png)?;
    }
    Ok(path)
}

fn chromedriver_path() -> Option<PathBuf> {
    if let Some(path) = std::env::var_os("CHROMEDRIVER") {
        return Some(PathBuf::from(path));
    }
    ["/usr/bin/chromedriver", "/usr/local/bin/chromedriver"]
        .iter()
        .map(PathBuf::from)
        .find(|p| p.exists())
}

/// A chromedriver child process, killed on drop.
struct Chromedriver {
    url: String,
    _child: Child,
}

impl Chromedriver {
    async fn start(path: &PathBuf) -> Result<Self> {
        // Ask the OS for a free port, release it, and hand it to chromedriver.
        let port = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await?
            .local_addr()?
            .port();
        let child = Command::new(path)
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("starting {}", path.display()))?;
        let deadline = tokio::time::Instant::now() + UI_DEADLINE;
        while tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .is_err()
        {
            if tokio::time::Instant::now() > deadline {
                bail!("chromedriver did not listen on port {port}");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Ok(Self {
            url: format!("http://127.0.0.1:{port}"),
            _child: child,
        })
    }

    async fn client(&self, profile_dir: &std::path::Path) -> Result<Client> {
        let mut caps = serde_json::Map::new();
        caps.insert(
            "goog:chromeOptions".into(),
            serde_json::json!({"args": [
                "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                "--window-size=1400,2200", format!("--user-data-dir={}", profile_dir.display()),
            ]}),
        );
        Ok(ClientBuilder::rustls()?
            .capabilities(caps)
            .connect(&self.url)
            .await?)
    }
}

/// Waits until the text of the first element matching `css` satisfies `ok`; returns it.
async fn wait_text(client: &Client, css: &str, ok: impl Fn(&str) -> bool) -> Result<String> {
    let deadline = tokio::time::Instant::now() + UI_DEADLINE;
    let mut last = String::new();
    loop {
        if let Ok(element) = client.find(Locator::Css(css)).await {
            if let Ok(text) = element.text().await {
                if ok(&text) {
                    return Ok(text);
                }
                last = text;
            }
        }
        if tokio::time::Instant::now() > deadline {
            bail!("{css}: condition not met in time; last text {last:?}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Waits until `css` matches at least `n` elements.
async fn wait_count(client: &Client, css: &str, n: usize) -> Result<()> {
    wait_count_where(client, css, |found| found >= n, &format!("at least {n}")).await
}

/// Waits until `css` matches exactly `n` elements.
async fn wait_exactly(client: &Client, css: &str, n: usize) -> Result<()> {
    wait_count_where(client, css, |found| found == n, &format!("exactly {n}")).await
}

/// Waits until the number of elements matching `css` satisfies `ok` (`wanted` says how,
/// for the error).
async fn wait_count_where(
    client: &Client,
    css: &str,
    ok: impl Fn(usize) -> bool,
    wanted: &str,
) -> Result<()> {
    let deadline = tokio::time::Instant::now() + UI_DEADLINE;
    loop {
        let found = client.find_all(Locator::Css(css)).await?.len();
        if ok(found) {
            return Ok(());
        }
        if tokio::time::Instant::now() > deadline {
            bail!("{css}: {found} elements, wanted {wanted}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn fill(client: &Client, css: &str, text: &str) -> Result<()> {
    let element = client.find(Locator::Css(css)).await?;
    element.clear().await?;
    element.send_keys(text).await?;
    Ok(())
}

async fn click(client: &Client, css: &str) -> Result<()> {
    client.find(Locator::Css(css)).await?.click().await?;
    Ok(())
}

/// The shop primary and its async replica, both registered.
struct ShopPair {
    primary: TestShop,
    replica: TestShop,
}

/// Starts a primary, waits until the gateway sees it, then a replica following it, and
/// waits until the registry lists both (the replica only promotes itself after having
/// seen a primary, so the order matters).
async fn start_shop_pair(h: &Harness) -> Result<ShopPair> {
    let primary = start_shop_with(
        &h.registry_addr(),
        concord_shop::ReplicationConfig {
            mode: concord_shop::ReplicationMode::Async,
            ..Default::default()
        },
    )
    .await?;
    let primary_addr = primary.addr.to_string();
    poll_json(h, "/api/cluster", |v| v["primary"] == primary_addr.as_str()).await?;
    let replica = start_shop_with(
        &h.registry_addr(),
        concord_shop::ReplicationConfig {
            mode: concord_shop::ReplicationMode::Async,
            primary_addr: Some(primary_addr),
            replica_id: "replica-1".into(),
            ..Default::default()
        },
    )
    .await?;
    poll_json(h, "/api/services/shop", |v| {
        v["instances"].as_array().map(Vec::len) == Some(2)
    })
    .await?;
    Ok(ShopPair { primary, replica })
}

/// Polls `GET path` until its JSON body satisfies `ok`.
async fn poll_json(
    h: &Harness,
    path: &str,
    ok: impl Fn(&serde_json::Value) -> bool,
) -> Result<serde_json::Value> {
    let deadline = tokio::time::Instant::now() + UI_DEADLINE;
    loop {
        let response = h.get(path).await?;
        let body: serde_json::Value = response.json().await.unwrap_or_default();
        if ok(&body) {
            return Ok(body);
        }
        if tokio::time::Instant::now() > deadline {
            bail!("GET {path}: condition not met in time; last body {body}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The whole user journey through the UI; `primary` is killed at the end.
async fn journey(
    client: &Client,
    h: &Harness,
    primary: TestShop,
    replica_addr: &str,
) -> Result<()> {
    client.goto(&h.url("/")).await?;
    wait_text(client, "#live-status", |t| t == "live").await?;

    // Admin: a product created without a token fails inline; with the token it works.
    fill(client, "#pf-name", "Teapot").await?;
    fill(client, "#pf-price", "1250").await?;
    fill(client, "#pf-stock", &STOCK.to_string()).await?;
    click(client, "#pf-create").await?;
    wait_text(client, "#admin-error", |t| t.contains("unauthenticated")).await?;
    fill(client, "#admin-token", ADMIN).await?;
    click(client, "#pf-create").await?;
    wait_text(client, "#admin-result", |t| t.starts_with("Created p-")).await?;

    // Without an account the cart refuses; sign up (the session is an HttpOnly cookie).
    wait_text(client, "#account-name", |t| t == "not signed in").await?;
    fill(client, "#username", "alice").await?;
    fill(client, "#password", "correct horse battery").await?;
    click(client, "#sign-up").await?;
    wait_text(client, "#account-name", |t| t == "alice").await?;
    let cookie_visible: serde_json::Value = client
        .execute(
            "return document.cookie.includes('concord_session');",
            vec![],
        )
        .await?;
    anyhow::ensure!(
        cookie_visible == false,
        "the session cookie must be HttpOnly"
    );

    // Cart: two units of it.
    wait_exactly(client, "[data-testid=product-row]", 1).await?;
    wait_text(client, "[data-testid=product-stock]", |t| {
        t == STOCK.to_string()
    })
    .await?;
    fill(client, "[data-testid=product-qty]", &QTY.to_string()).await?;
    click(client, "[data-testid=add-to-cart]").await?;
    wait_text(client, "#cart-total", |t| t == "25.00 EUR").await?;

    // Checkout: the order is in the history and the product list shows the stock reduced
    // by the ordered quantity.
    click(client, "#checkout").await?;
    wait_text(client, "#checkout-result", |t| t.contains("placed")).await?;
    wait_exactly(client, "[data-testid=order-row]", 1).await?;
    wait_text(client, "[data-testid=order-row]", |t| {
        t.contains(&format!("{QTY}× Teapot")) && t.contains("25.00 EUR")
    })
    .await?;
    wait_text(client, "[data-testid=order-status]", |t| t == "pending").await?;
    wait_text(client, "[data-testid=product-stock]", |t| {
        t == (STOCK - QTY).to_string()
    })
    .await?;
    wait_text(client, "#cart-total", |t| t == "0.00 EUR" || t == "0.00").await?;
    click(client, "[data-testid=order-action][data-status=paid]").await?;
    wait_text(client, "[data-testid=order-status]", |t| t == "paid").await?;

    // Prediction with one vote row per node, then the oracle's report.
    click(client, "#predict-submit").await?;
    wait_text(client, "#consensus-class", |t| t == "setosa").await?;
    wait_exactly(client, "[data-testid=vote-row]", NODES).await?;
    wait_text(client, "#consensus-answered", |t| {
        t.starts_with(&format!("{NODES}/{NODES} nodes answered"))
    })
    .await?;
    fill(client, "#oracle-token", concord_testkit::ORACLE_TOKEN).await?;
    click(client, "[data-testid=report-label][data-label='0']").await?;
    wait_text(client, "#outcome-result", |t| {
        t.contains("Consensus was right")
    })
    .await?;

    // Ledger events (a grant and a score per node) arrive over SSE and feed the chart and
    // the accounts.
    wait_exactly(client, "[data-testid=ledger-row]", 2 * NODES).await?;
    wait_exactly(client, "[data-testid=legend-node]", NODES).await?;
    wait_exactly(client, "[data-testid=account-row]", NODES).await?;

    // Cluster panel: the primary at term 1 and its replica, both up.
    let primary_addr = primary.addr.to_string();
    let primary_row = format!("[data-testid=shop-row][data-address='{primary_addr}']");
    let replica_row = format!("[data-testid=shop-row][data-address='{replica_addr}']");
    wait_text(client, "#cluster-primary", |t| t == primary_addr).await?;
    wait_text(client, "#cluster-term", |t| t == "1").await?;
    wait_count(
        client,
        &format!("{primary_row}[data-role=primary][data-term='1']"),
        1,
    )
    .await?;
    wait_count(client, &format!("{replica_row}[data-role=replica]"), 1).await?;
    wait_exactly(
        client,
        "[data-testid=instance-row][data-service=shop][data-state=up]",
        2,
    )
    .await?;

    // Kill the primary (no deregistration): once its lease expires the replica promotes
    // itself, and the panel shows it as primary at term 2 and the old one down.
    let primary_files = primary.abort();
    wait_text(client, "#cluster-primary", |t| t == replica_addr).await?;
    wait_text(client, "#cluster-term", |t| t == "2").await?;
    wait_count(
        client,
        &format!("{replica_row}[data-role=primary][data-term='2']"),
        1,
    )
    .await?;
    wait_exactly(client, "[data-testid=shop-row]", 1).await?;
    wait_count(
        client,
        &format!(
            "[data-testid=instance-row][data-service=shop][data-address='{primary_addr}'][data-state=down]"
        ),
        1,
    )
    .await?;
    wait_text(
        client,
        &format!("[data-testid=instance-row][data-service=shop][data-address='{replica_addr}'] [data-testid=instance-state]"),
        |t| t == "up · primary",
    )
    .await?;

    // The promoted replica serves the catalogue it replicated, stock included: mark the
    // rendered row, refresh, and read the row that replaced it.
    client
        .execute(
            "document.querySelector('[data-testid=product-row]').dataset.stale = '1';",
            vec![],
        )
        .await?;
    click(client, "#product-refresh").await?;
    wait_text(
        client,
        "[data-testid=product-row]:not([data-stale]) [data-testid=product-stock]",
        |t| t == (STOCK - QTY).to_string(),
    )
    .await?;
    wait_exactly(client, "#shop-error:not([hidden])", 0).await?;

    // The session survives the failover (both shops share the key) and sign-out ends it.
    client.refresh().await?;
    wait_text(client, "#account-name", |t| t == "alice").await?;
    wait_exactly(client, "[data-testid=order-row]", 1).await?;
    click(client, "#sign-out").await?;
    wait_text(client, "#account-name", |t| t == "not signed in").await?;
    wait_exactly(client, "[data-testid=order-row]", 0).await?;
    drop(primary_files);
    Ok(())
}

/// A user can shop, predict, report an outcome and watch a shop failover from the browser.
#[tokio::test]
async fn ui_journey_in_headless_chromium() -> Result<()> {
    let Some(driver_path) = chromedriver_path() else {
        if std::env::var_os("CONCORD_SKIP_BROWSER").is_some() {
            concord::telemetry::init_for_tests();
            tracing::warn!("chromedriver not found; browser test skipped (CONCORD_SKIP_BROWSER)");
            return Ok(());
        }
        bail!("chromedriver not found: run scripts/test.sh (it installs chromium and chromium-driver), or set CONCORD_SKIP_BROWSER=1");
    };
    let h = Harness::start().await?;
    let shops = start_shop_pair(&h).await?;
    let replica_addr = shops.replica.addr.to_string();
    let consensus = start_consensus(&h.registry_addr(), NODES).await?;
    assert_eq!(wait_until_served(&h, "/api/products").await?.status(), 200);
    let setosa = "/api/predict?sepal_length=5.1&sepal_width=3.5&petal_length=1.4&petal_width=0.2";
    poll_json(&h, setosa, |v| v["answered"].as_u64() == Some(NODES as u64))
        .await
        .context("the consensus never had all nodes")?;

    // The WebDriver client's rustls and our tonic's link two crypto providers into this
    // binary; pick ours before any TLS client exists.
    concord::tls::ensure_crypto_provider();
    let driver = Chromedriver::start(&driver_path).await?;
    let profile = tempfile::tempdir()?;
    let client = driver.client(profile.path()).await?;
    let outcome = journey(&client, &h, shops.primary, &replica_addr).await;
    // The final page, or the page where the journey failed.
    match save_screenshot(&client).await {
        Ok(path) => {
            tracing::info!(path = %path.display(), ok = outcome.is_ok(), "screenshot saved")
        }
        Err(err) => tracing::error!(error = %err, "screenshot not saved"),
    }
    client.close().await?;
    drop(driver);
    consensus.stop().await;
    shops.replica.stop().await;
    h.stop().await?;
    outcome
}

// ------------------------------------------------------------------ live controls

/// The `concord` binary for the live-controls test: `$CONCORD_BIN`, else `concord` in the
/// workspace target dir (built by `cargo test --workspace`, or `cargo build -p concord-cli`).
fn concord_bin() -> Result<PathBuf> {
    if let Some(path) = std::env::var_os("CONCORD_BIN") {
        return Ok(PathBuf::from(path));
    }
    let path = output_dir()
        .parent()
        .and_then(Path::parent)
        .context("target dir")?
        .join("debug")
        .join("concord");
    anyhow::ensure!(
        path.exists(),
        "{} not found: build it first (`cargo build -p concord-cli`) or set CONCORD_BIN",
        path.display()
    );
    Ok(path)
}

/// `concord up` with its gateway's address; killed (with its children) on drop.
struct Cluster {
    gateway: String,
    up: Child,
    _data: tempfile::TempDir,
}

/// Starts `concord up` (3 nodes, async replication) and waits for its gateway.
async fn start_cluster() -> Result<Cluster> {
    use tokio::io::{AsyncBufReadExt, BufReader};
    let data = tempfile::tempdir()?;
    let mut up = Command::new(concord_bin()?)
        .args([
            "up",
            "--auto-ports",
            "--nodes",
            "3",
            "--replication",
            "async",
        ])
        .arg("--data-dir")
        .arg(data.path())
        .env("CONCORD_ADMIN_TOKEN", ADMIN)
        .env("CONCORD_ORACLE_TOKEN", concord_testkit::ORACLE_TOKEN)
        .env(
            "RUST_LOG",
            std::env::var("RUST_LOG").unwrap_or_else(|_| "warn".into()),
        )
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .context("starting concord up")?;
    let mut lines = BufReader::new(up.stdout.take().context("stdout")?).lines();
    let gateway = tokio::time::timeout(Duration::from_secs(120), async {
        while let Some(line) = lines.next_line().await? {
            if let Some(rest) = line.strip_prefix("concord up: gateway (gateway) pid ") {
                if let Some((_, addr)) = rest.split_once(" running on ") {
                    return Ok(addr.trim().to_owned());
                }
            }
        }
        bail!("concord up ended before its gateway ran")
    })
    .await
    .context("gateway not running in time")??;
    // Keep draining stdout so the launcher never blocks on a full pipe.
    tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
    Ok(Cluster {
        gateway: format!("http://{gateway}"),
        up,
        _data: data,
    })
}

/// Writes a screenshot of the whole page at `width` px to `name` in [`output_dir`]
/// and checks it is a non-empty PNG.
async fn screenshot_at(client: &Client, width: u32, name: &str) -> Result<PathBuf> {
    client.set_window_size(width, 900).await?;
    let height = client
        .execute("return document.documentElement.scrollHeight;", vec![])
        .await?
        .as_u64()
        .context("page height")?;
    client
        .set_window_size(width, height as u32 + WINDOW_CHROME_PX)
        .await?;
    let png = client.screenshot().await?;
    anyhow::ensure!(
        png.len() > 1000 && png.starts_with(b"\x89PNG\r\n\x1a\n"),
        "{name}: not a PNG screenshot ({} bytes)",
        png.len()
    );
    let dir = output_dir();
    std::fs::create_dir_all(&dir)?;
    let path = dir.join(name);
    std::fs::write(&path, &png)?;
    Ok(path)
}

/// Polls a JavaScript expression until it returns true.
async fn wait_js(client: &Client, what: &str, script: &str, deadline: Duration) -> Result<()> {
    let until = tokio::time::Instant::now() + deadline;
    loop {
        if client.execute(script, vec![]).await? == serde_json::Value::Bool(true) {
            return Ok(());
        }
        if tokio::time::Instant::now() > until {
            bail!("{what}: not true in time ({script})");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// The live-controls journey against `concord up`.
async fn live_controls(client: &Client, gateway: &str) -> Result<()> {
    let http = reqwest::Client::new();
    // A product with no stock: the list must not offer it for the cart.
    let created = http
        .post(format!("{gateway}/api/products"))
        .bearer_auth(ADMIN)
        .json(&serde_json::json!({"name": "Sold out", "price_minor": 100, "currency": "EUR", "stock": 0}))
        .send()
        .await?;
    anyhow::ensure!(
        created.status().is_success(),
        "create product: {}",
        created.status()
    );
    // Scored traffic needs every node staked and answering.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        let reply: serde_json::Value = http
            .get(format!("{gateway}/api/predict?sepal_length=5.1&sepal_width=3.5&petal_length=1.4&petal_width=0.2&policy=stake"))
            .send()
            .await?
            .json()
            .await
            .unwrap_or_default();
        if reply["answered"].as_u64() == Some(3) {
            break;
        }
        anyhow::ensure!(
            tokio::time::Instant::now() < deadline,
            "nodes never all answered: {reply}"
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    }

    client.goto(gateway).await?;
    wait_text(client, "#live-status", |t| t == "live").await?;
    wait_count(
        client,
        "[data-testid=product-row] [data-testid=out-of-stock]",
        1,
    )
    .await?;
    wait_exactly(
        client,
        "[data-testid=product-row] [data-testid=add-to-cart]",
        0,
    )
    .await?;

    // Without the token the controls say why; with it the supervised processes appear.
    click(client, "#kill-primary").await?;
    wait_text(client, "#control-error", |t| t.contains("admin token")).await?;
    fill(client, "#admin-token", ADMIN).await?;
    fill(client, "#oracle-token", concord_testkit::ORACLE_TOKEN).await?;
    wait_count(client, "[data-testid=child-row]", 8).await?;
    wait_count(
        client,
        "[data-testid=child-row][data-role=node][data-behaviour=honest]",
        3,
    )
    .await?;

    // node-3 turns liar: it restarts inverted, and scored traffic slashes it.
    click(
        client,
        "[data-testid=child-row][data-name=node-3] [data-action=liar]",
    )
    .await?;
    wait_text(client, "#control-result", |t| {
        t.contains("behaviour inverted")
    })
    .await?;
    let liar =
        "[data-testid=child-row][data-name=node-3][data-behaviour=inverted][data-state=running]";
    wait_count(client, liar, 1).await?;
    click(client, "#traffic").await?;
    wait_js(
        client,
        "the liar loses stake",
        "const c = document.querySelector('[data-testid=account-row][data-node-id=node-3] [data-testid=account-stake]'); \
         return !!c && Number(c.textContent) < 1000;",
        Duration::from_secs(60),
    )
    .await?;
    wait_js(
        client,
        "accuracy charted per node, the liar's below 1",
        "return document.querySelectorAll('#accuracy-chart polyline').length >= 3 \
         && !!document.querySelector('#accuracy-chart polyline[data-name=node-3]');",
        UI_DEADLINE,
    )
    .await?;
    // The stake axis never repeats a label.
    wait_js(
        client,
        "distinct stake axis labels",
        "const t = [...document.querySelectorAll('#stake-chart text.tick')].map(e => e.textContent).filter(s => !s.startsWith('ledger')); \
         return t.length >= 2 && new Set(t).size === t.length;",
        UI_DEADLINE,
    )
    .await?;

    // Kill node-1: a new process, one restart.
    click(
        client,
        "[data-testid=child-row][data-name=node-1] [data-action=kill]",
    )
    .await?;
    wait_count(
        client,
        "[data-testid=child-row][data-name=node-1][data-restarts='1'][data-state=running]",
        1,
    )
    .await?;

    // Freeze the shop primary: the replica takes over at term 2, charted.
    let old_primary = wait_text(client, "#cluster-primary", |t| t != "none").await?;
    wait_text(client, "#cluster-term", |t| t == "1").await?;
    click(client, "#freeze-primary").await?;
    wait_count(
        client,
        "[data-testid=child-row][data-role=shop][data-state=frozen]",
        1,
    )
    .await?;
    wait_text(client, "#cluster-term", |t| t == "2").await?;
    wait_text(client, "#cluster-primary", |t| {
        t != old_primary && t != "none"
    })
    .await?;
    wait_count(client, "#lag-chart polyline", 1).await?;
    wait_count(client, "#term-chart polyline", 1).await?;

    // The liar turns honest again.
    click(
        client,
        "[data-testid=child-row][data-name=node-3] [data-action=honest]",
    )
    .await?;
    wait_count(
        client,
        "[data-testid=child-row][data-name=node-3][data-behaviour=honest]",
        1,
    )
    .await?;
    click(client, "#traffic").await?;

    let desktop = screenshot_at(client, 1400, "desktop.png").await?;
    let phone = screenshot_at(client, 390, "phone.png").await?;
    let overflow = client
        .execute(
            "return [document.documentElement.scrollWidth, window.innerWidth];",
            vec![],
        )
        .await?;
    let (scroll, inner) = (overflow[0].as_u64(), overflow[1].as_u64());
    anyhow::ensure!(
        scroll.is_some() && scroll <= inner,
        "the page overflows sideways at phone width: scrollWidth {scroll:?} > innerWidth {inner:?}"
    );
    tracing::info!(desktop = %desktop.display(), phone = %phone.display(), "screenshots saved");
    Ok(())
}

/// From the browser, with the admin token, a user turns a node liar (and watches its
/// stake and accuracy fall), kills a node, freezes the shop primary (and watches the
/// failover: term, roles, lag), against a real `concord up`; the page fits a phone's width.
#[tokio::test]
async fn live_controls_in_headless_chromium() -> Result<()> {
    let Some(driver_path) = chromedriver_path() else {
        if std::env::var_os("CONCORD_SKIP_BROWSER").is_some() {
            return Ok(());
        }
        bail!("chromedriver not found: run scripts/test.sh (it installs chromium and chromium-driver), or set CONCORD_SKIP_BROWSER=1");
    };
    let mut cluster = start_cluster().await?;
    concord::tls::ensure_crypto_provider();
    let driver = Chromedriver::start(&driver_path).await?;
    let profile = tempfile::tempdir()?;
    let client = driver.client(profile.path()).await?;
    let outcome = live_controls(&client, &cluster.gateway).await;
    if outcome.is_err() {
        let _ = screenshot_at(&client, 1400, "live-controls-failure.png").await;
    }
    client.close().await?;
    drop(driver);
    let _ = cluster.up.kill().await;
    outcome
}
