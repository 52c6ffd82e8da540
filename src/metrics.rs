//! Prometheus metrics: one registry per process and one way to serve it.
//!
//! Why one process-wide registry: a process runs one role, and every layer of it (the gRPC
//! layer every server gets from [`crate::grpc::router`], the role's domain metrics) adds
//! its families to the same page, the way Go's `prometheus.DefaultRegisterer` works. Names
//! all start with `concord_`. The exposition is `prometheus-client`'s Prometheus text
//! format (0.0.4), never written by hand.
//!
//! Two kinds of metrics:
//! - **events** (requests, latencies, slashes) are counters and histograms updated where
//!   they happen; each family is registered once per process ([`register`]);
//! - **state** (a shop's LSNs, a node's stake, a registry's leases) is read at scrape time
//!   by a [`Collector`] over the accessors the component already has, so no counter has to
//!   be threaded through its logic and the page can never disagree with the component's
//!   own status reply. A collector holds a `Weak` reference: a stopped component (tests
//!   start and stop many in one process) simply stops reporting.
//!
//! Caveat: two live instances of the same role in one process (in-process tests only)
//! report their state families twice; a scraper keeps one. Production runs one per process.
//!
//! Exposure: [`serve`] answers `GET /metrics` (nothing else) on its own listener, the
//! `--metrics-addr` of every gRPC role (like etcd's `--listen-metrics-urls`); the gateway
//! serves the same page on its HTTP port. The page reveals no secret but does reveal
//! topology and load (node ids, LSNs, stakes): bind it to loopback or a monitoring network.

use std::{
    future::Future,
    sync::{Mutex, OnceLock},
};

pub use prometheus_client;
use prometheus_client::{
    collector::Collector,
    encoding::{prometheus_text, EncodeLabelSet, EncodeMetric},
    metrics::{family::Family, histogram::Histogram},
    registry::{Metric, Registry, Unit},
};
use tokio::net::TcpListener;

/// Prefix of every metric name.
pub const PREFIX: &str = "concord";
/// The path the page is served on.
pub const METRICS_PATH: &str = "/metrics";
/// `Content-Type` of the page (Prometheus text format 0.0.4).
pub const CONTENT_TYPE: &str = prometheus_text::CONTENT_TYPE;

/// Bucket bounds, in seconds, for request and call latencies: 100 µs to about 6.5 s.
pub fn latency_buckets() -> impl Iterator<Item = f64> {
    prometheus_client::metrics::histogram::exponential_buckets(0.0001, 2.0, 17)
}

/// A family of latency histograms (seconds, [`latency_buckets`]) keyed by `L`: every
/// latency family of every process is built here, so they share one bucket layout.
pub fn latency_family<L>() -> Family<L, Histogram>
where
    L: Clone + std::hash::Hash + Eq,
{
    Family::new_with_constructor(|| Histogram::new(latency_buckets()))
}

fn registry() -> &'static Mutex<Registry> {
    static REGISTRY: OnceLock<Mutex<Registry>> = OnceLock::new();
    REGISTRY.get_or_init(|| Mutex::new(Registry::with_prefix(PREFIX)))
}

fn lock() -> std::sync::MutexGuard<'static, Registry> {
    // Registering and encoding cannot leave the registry half-changed; a panic elsewhere
    // while it was held does not make it unusable.
    registry().lock().unwrap_or_else(|p| p.into_inner())
}

/// Adds an event metric (counter, histogram, family) to the process's page, as
/// `concord_<name>`. Call it once per family per process (hold the metric in a `OnceLock`).
///
/// `help` may end in a full stop or not: the encoder adds one.
pub fn register(name: &str, help: &str, metric: impl Metric) {
    lock().register(name, help.trim_end_matches('.'), metric);
}

/// [`register`] with a unit suffix (`_seconds`, `_bytes`).
pub fn register_with_unit(name: &str, help: &str, unit: Unit, metric: impl Metric) {
    lock().register_with_unit(name, help.trim_end_matches('.'), unit, metric);
}

/// Adds a collector that reads state at every scrape (see the module doc).
pub fn register_collector(collector: Box<dyn Collector>) {
    lock().register_collector(collector);
}

/// The whole page, as a scrape returns it.
pub fn encode() -> String {
    let mut page = String::new();
    if let Err(err) = prometheus_text::encode(&mut page, &lock()) {
        tracing::error!(%err, "encoding the metrics page failed");
    }
    page
}

/// Writes one gauge family with one series per `(labels, value)` from a collector.
pub fn encode_gauges<L: EncodeLabelSet>(
    encoder: &mut prometheus_client::encoding::DescriptorEncoder<'_>,
    name: &str,
    help: &str,
    series: &[(L, f64)],
) -> Result<(), std::fmt::Error> {
    use prometheus_client::metrics::gauge::ConstGauge;
    let mut family = encoder.encode_descriptor(
        name,
        help.trim_end_matches('.'),
        None,
        prometheus_client::metrics::MetricType::Gauge,
    )?;
    for (labels, value) in series {
        ConstGauge::new(*value).encode(family.encode_family(labels)?)?;
    }
    Ok(())
}

/// Writes one counter family with one series per `(labels, value)` from a collector (a
/// total the component keeps itself, such as the ledger's).
pub fn encode_counters<L: EncodeLabelSet>(
    encoder: &mut prometheus_client::encoding::DescriptorEncoder<'_>,
    name: &str,
    help: &str,
    series: &[(L, u64)],
) -> Result<(), std::fmt::Error> {
    use prometheus_client::metrics::counter::ConstCounter;
    let mut family = encoder.encode_descriptor(
        name,
        help.trim_end_matches('.'),
        None,
        prometheus_client::metrics::MetricType::Counter,
    )?;
    for (labels, value) in series {
        ConstCounter::new(*value).encode(family.encode_family(labels)?)?;
    }
    Ok(())
}

/// An axum router answering `GET /metrics` with the page; the gateway merges it into its
/// own router, [`serve`] serves it alone.
pub fn http_router<S: Clone + Send + Sync + 'static>() -> axum::Router<S> {
    axum::Router::new().route(METRICS_PATH, axum::routing::get(page))
}

/// The `GET /metrics` handler.
pub async fn page() -> impl axum::response::IntoResponse {
    (
        [(http::header::CONTENT_TYPE, CONTENT_TYPE)],
        tokio::task::spawn_blocking(encode)
            .await
            .unwrap_or_else(|err| {
                tracing::error!(%err, "metrics encoding task failed");
                String::new()
            }),
    )
}

/// Serves `GET /metrics` on `listener` until `shutdown` resolves.
pub async fn serve(
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let addr = listener.local_addr().ok();
    tracing::info!(?addr, "metrics served at {METRICS_PATH}");
    axum::serve(listener, http_router::<()>())
        .with_graceful_shutdown(shutdown)
        .await
}

#[cfg(test)]
mod tests {
    use super::*;
    use prometheus_client::metrics::counter::Counter;

    /// A registered counter appears on the served page under its prefixed name, and the
    /// page parses as the Prometheus text format.
    #[tokio::test]
    async fn serve_answers_get_metrics() {
        let counter: Counter = Counter::default();
        register("metrics_selftest", "Self-test counter.", counter.clone());
        counter.inc_by(3);
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let server = tokio::spawn(serve(listener, async move {
            let _ = stop_rx.await;
        }));
        let page = test::scrape(addr).await;
        let parsed = test::parse(&page);
        let sample = parsed
            .samples
            .iter()
            .find(|s| s.metric == "concord_metrics_selftest_total")
            .unwrap_or_else(|| panic!("no counter in {page}"));
        assert!(matches!(sample.value, prometheus_parse::Value::Counter(v) if v == 3.0));
        let _ = stop_tx.send(());
        server.await.expect("join").expect("serve");
    }
}

/// Helpers for tests that scrape a real server (this crate's and other crates').
#[cfg(test)]
pub mod test {
    use std::net::SocketAddr;

    /// `GET /metrics` over plain HTTP/1.1; panics on anything but a 200 with the
    /// Prometheus content type.
    pub async fn scrape(addr: SocketAddr) -> String {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut stream = tokio::net::TcpStream::connect(addr).await.expect("connect");
        stream
            .write_all(
                format!(
                    "GET {} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n",
                    super::METRICS_PATH
                )
                .as_bytes(),
            )
            .await
            .expect("write");
        let mut reply = String::new();
        stream.read_to_string(&mut reply).await.expect("read");
        let (head, body) = reply.split_once("\r\n\r\n").expect("HTTP reply");
        assert!(head.starts_with("HTTP/1.1 200"), "{head}");
        assert!(
            head.to_ascii_lowercase()
                .contains("text/plain; version=0.0.4"),
            "{head}"
        );
        body.to_owned()
    }

    /// Parses a page strictly enough to fail on malformed exposition.
    pub fn parse(page: &str) -> prometheus_parse::Scrape {
        prometheus_parse::Scrape::parse(page.lines().map(|l| Ok(l.to_owned())))
            .unwrap_or_else(|err| panic!("unparseable page: {err}\n{page}"))
    }
}
