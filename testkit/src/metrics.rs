//! Scraping a real `/metrics` page in tests: serve the process's page on a free port, `GET`
//! it over HTTP/1.1, and parse it strictly with `prometheus-parse`.

use std::net::SocketAddr;

use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// The process's metrics page served on 127.0.0.1:0 until the returned sender is dropped.
pub async fn serve() -> (SocketAddr, tokio::sync::oneshot::Sender<()>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind metrics listener");
    let addr = listener.local_addr().expect("metrics addr");
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(concord::metrics::serve(listener, async move {
        let _ = stop_rx.await;
    }));
    (addr, stop_tx)
}

/// `GET path` on `addr`; panics unless the reply is a 200 in the Prometheus text format.
pub async fn scrape_path(addr: SocketAddr, path: &str) -> String {
    let mut stream = tokio::net::TcpStream::connect(addr)
        .await
        .expect("connect to metrics");
    let request = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await.expect("write");
    let mut reply = String::new();
    stream.read_to_string(&mut reply).await.expect("read");
    let (head, body) = reply.split_once("\r\n\r\n").expect("an HTTP reply");
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert!(
        head.to_ascii_lowercase()
            .contains("content-type: text/plain; version=0.0.4"),
        "{head}"
    );
    body.to_owned()
}

/// `GET /metrics` on `addr`, parsed.
pub async fn scrape(addr: SocketAddr) -> Page {
    Page::parse(&scrape_path(addr, concord::metrics::METRICS_PATH).await)
}

/// A parsed page and its text (for failure messages).
pub struct Page {
    /// The page as served.
    pub text: String,
    /// Its samples.
    pub scrape: prometheus_parse::Scrape,
}

impl Page {
    /// Parses `text`, panicking on malformed exposition.
    pub fn parse(text: &str) -> Page {
        let scrape = prometheus_parse::Scrape::parse(text.lines().map(|l| Ok(l.to_owned())))
            .unwrap_or_else(|err| panic!("unparseable metrics page: {err}\n{text}"));
        Page {
            text: text.to_owned(),
            scrape,
        }
    }

    /// The value of the sample `metric` whose labels include all of `labels`; panics if
    /// there is none.
    pub fn value(&self, metric: &str, labels: &[(&str, &str)]) -> f64 {
        self.maybe_value(metric, labels)
            .unwrap_or_else(|| panic!("no sample {metric} {labels:?} on the page:\n{}", self.text))
    }

    /// [`Page::value`], or `None` when absent.
    pub fn maybe_value(&self, metric: &str, labels: &[(&str, &str)]) -> Option<f64> {
        self.scrape
            .samples
            .iter()
            .find(|s| s.metric == metric && labels.iter().all(|(k, v)| s.labels.get(k) == Some(*v)))
            .map(|s| match &s.value {
                prometheus_parse::Value::Counter(v)
                | prometheus_parse::Value::Gauge(v)
                | prometheus_parse::Value::Untyped(v) => *v,
                prometheus_parse::Value::Histogram(buckets) => {
                    buckets.last().map_or(0.0, |b| b.count)
                }
                prometheus_parse::Value::Summary(_) => f64::NAN,
            })
    }

    /// Every sample of `metric`, with its labels.
    pub fn samples(&self, metric: &str) -> Vec<&prometheus_parse::Sample> {
        self.scrape
            .samples
            .iter()
            .filter(|s| s.metric == metric)
            .collect()
    }
}
