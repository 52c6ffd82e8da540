//! Drives the UI in headless Chromium (fantoccini over chromedriver) against a real
//! registry, gateway, shop, three prediction nodes and the aggregator: admin form, cart,
//! checkout, order status, prediction with votes, outcome report, ledger chart, and the cluster panel
//! turning a shop "down" live when it stops.
//!
//! Needs `chromedriver` and `chromium` (Debian: `apt-get install chromium chromium-driver`);
//! `CHROMEDRIVER` overrides the driver path. `scripts/test.sh` installs both; without a
//! driver the test fails, unless `CONCORD_SKIP_BROWSER=1` says to skip it on purpose. Set
//! `CONCORD_UI_SCREENSHOT=/path.png` to keep a screenshot of the page.

mod support;

use std::{path::PathBuf, process::Stdio, time::Duration};

use anyhow::{bail, Context, Result};
use fantoccini::{Client, ClientBuilder, Locator};
use support::*;
use tokio::process::{Child, Command};

/// How long one UI condition may take to become true.
const UI_DEADLINE: Duration = Duration::from_secs(15);

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
    let deadline = tokio::time::Instant::now() + UI_DEADLINE;
    loop {
        let found = client.find_all(Locator::Css(css)).await?.len();
        if found >= n {
            return Ok(());
        }
        if tokio::time::Instant::now() > deadline {
            bail!("{css}: {found} elements, wanted {n}");
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

/// The whole user journey through the UI.
async fn journey(client: &Client, h: &Harness, shop: TestShop) -> Result<()> {
    client.goto(&h.url("/")).await?;
    wait_text(client, "#live-status", |t| t == "live").await?;

    // Admin: a product created without a token fails inline; with the token it works.
    fill(client, "#pf-name", "Teapot").await?;
    fill(client, "#pf-price", "1250").await?;
    fill(client, "#pf-stock", "5").await?;
    click(client, "#pf-create").await?;
    wait_text(client, "#admin-error", |t| t.contains("unauthenticated")).await?;
    fill(client, "#admin-token", ADMIN).await?;
    click(client, "#pf-create").await?;
    wait_text(client, "#admin-result", |t| t.starts_with("Created p-")).await?;

    // Cart, checkout, order history and a status change.
    wait_count(client, "[data-testid=product-row]", 1).await?;
    click(client, "[data-testid=add-to-cart]").await?;
    wait_text(client, "#cart-total", |t| t == "12.50 EUR").await?;
    click(client, "#checkout").await?;
    wait_text(client, "#checkout-result", |t| t.contains("placed")).await?;
    wait_text(client, "[data-testid=order-status]", |t| t == "pending").await?;
    wait_text(client, "[data-testid=product-stock]", |t| t == "4").await?;
    click(client, "[data-testid=order-action][data-status=paid]").await?;
    wait_text(client, "[data-testid=order-status]", |t| t == "paid").await?;

    // Prediction with each node's vote, then the oracle's report.
    click(client, "#predict-submit").await?;
    wait_text(client, "#consensus-class", |t| t == "setosa").await?;
    wait_count(client, "[data-testid=vote-row]", 3).await?;
    fill(client, "#oracle-token", concord::config::DEV_ORACLE_TOKEN).await?;
    click(client, "[data-testid=report-label][data-label='0']").await?;
    wait_text(client, "#outcome-result", |t| {
        t.contains("Consensus was right")
    })
    .await?;

    // Ledger events (3 grants, 3 rewards) arrive over SSE and feed the chart and accounts.
    wait_count(client, "[data-testid=ledger-row]", 6).await?;
    wait_count(client, "[data-testid=legend-node]", 3).await?;
    wait_count(client, "[data-testid=account-row]", 3).await?;

    // Cluster panel: the shop is up and primary; when it stops, it turns down live.
    let shop_addr = shop.server.addr.to_string();
    wait_text(client, "#cluster-primary", |t| t == shop_addr).await?;
    wait_count(
        client,
        "[data-testid=instance-row][data-service=shop][data-state=up]",
        1,
    )
    .await?;
    if let Some(path) = std::env::var_os("CONCORD_UI_SCREENSHOT") {
        std::fs::write(path, client.screenshot().await?)?;
    }
    shop.stop().await?;
    wait_count(
        client,
        "[data-testid=instance-row][data-service=shop][data-state=down]",
        1,
    )
    .await?;
    wait_text(client, "#cluster-primary", |t| t == "none").await?;
    click(client, "#product-refresh").await?;
    wait_text(client, "#shop-error", |t| t.contains("unavailable")).await?;
    Ok(())
}

/// A user can shop, predict, report an outcome and watch the cluster from the browser.
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
    let shop = start_shop(&h.registry_addr()).await?;
    let consensus = start_consensus(&h.registry_addr(), 3).await?;
    assert_eq!(wait_until_served(&h, "/api/products").await?.status(), 200);
    let setosa = "/api/predict?sepal_length=5.1&sepal_width=3.5&petal_length=1.4&petal_width=0.2";
    let deadline = tokio::time::Instant::now() + UI_DEADLINE;
    loop {
        let body: serde_json::Value = h.get(setosa).await?.json().await?;
        if body["answered"].as_u64() == Some(3) {
            break;
        }
        if tokio::time::Instant::now() > deadline {
            bail!("the consensus never had three nodes: {body}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    let driver = Chromedriver::start(&driver_path).await?;
    let profile = tempfile::tempdir()?;
    let client = driver.client(profile.path()).await?;
    let outcome = journey(&client, &h, shop).await;
    if outcome.is_err() {
        if let Ok(png) = client.screenshot().await {
            let path = std::env::temp_dir().join("concord-ui-failure.png");
            let _ = std::fs::write(&path, png);
            tracing::error!(path = %path.display(), "UI journey failed; screenshot saved");
        }
    }
    client.close().await?;
    drop(driver);
    consensus.stop().await?;
    h.stop().await?;
    outcome
}
