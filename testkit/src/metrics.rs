//! Scraping a real `/metrics` page in tests: serve the process's page on a free port, `GET`
//! it over HTTP/1.1, and parse it strictly ([`Page::parse`](crate::metrics::Page::parse):
//! the format's grammar, including braces and escapes in label values, which
//! `prometheus-parse` mishandles).

use std::{collections::BTreeMap, net::SocketAddr};

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

/// One sample line of a page.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    /// Metric name as written (`…_total`, `…_bucket`, …).
    pub name: String,
    /// Its labels.
    pub labels: BTreeMap<String, String>,
    /// Its value.
    pub value: f64,
}

/// A parsed page and its text (for failure messages).
pub struct Page {
    /// The page as served.
    pub text: String,
    /// Every sample, in page order.
    pub samples: Vec<Sample>,
}

impl Page {
    /// Parses `text` strictly as the Prometheus text format (0.0.4): every line is a
    /// `# HELP`, a `# TYPE` with a known type, or a sample of a declared family with
    /// well-formed labels (quoted, escaped values) and a number; panics otherwise.
    pub fn parse(text: &str) -> Page {
        let mut families: BTreeMap<String, String> = BTreeMap::new();
        let mut samples = Vec::new();
        for (n, line) in text.lines().enumerate() {
            let fail = |why: &str| -> ! { panic!("line {}: {why}: {line:?}\n{text}", n + 1) };
            if line.is_empty() || line.starts_with("# HELP ") {
                continue;
            }
            if let Some(rest) = line.strip_prefix("# TYPE ") {
                let (name, kind) = rest.split_once(' ').unwrap_or_else(|| fail("TYPE"));
                if !["counter", "gauge", "histogram", "summary", "untyped"].contains(&kind) {
                    fail("unknown type");
                }
                if families.insert(name.to_owned(), kind.to_owned()).is_some() {
                    fail("family declared twice");
                }
                continue;
            }
            if line.starts_with('#') {
                fail("unknown comment");
            }
            let sample = parse_sample(line).unwrap_or_else(|why| fail(why));
            let declared = families.iter().any(|(family, kind)| {
                let suffixes: &[&str] = match kind.as_str() {
                    "histogram" => &["_bucket", "_sum", "_count"],
                    "summary" => &["", "_sum", "_count"],
                    _ => &[""],
                };
                suffixes
                    .iter()
                    .any(|suffix| sample.name == format!("{family}{suffix}"))
            });
            if !declared {
                fail("sample of an undeclared family");
            }
            samples.push(sample);
        }
        Page {
            text: text.to_owned(),
            samples,
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
        self.samples
            .iter()
            .find(|s| {
                s.name == metric
                    && labels
                        .iter()
                        .all(|(k, v)| s.labels.get(*k).map(String::as_str) == Some(*v))
            })
            .map(|s| s.value)
    }
}

/// `name{k="v",…} value`, strictly.
fn parse_sample(line: &str) -> Result<Sample, &'static str> {
    let name_end = line
        .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_' || c == ':'))
        .unwrap_or(line.len());
    let name = &line[..name_end];
    if name.is_empty() || name.starts_with(|c: char| c.is_ascii_digit()) {
        return Err("bad metric name");
    }
    let mut rest = &line[name_end..];
    let mut labels = BTreeMap::new();
    if let Some(mut inner) = rest.strip_prefix('{') {
        loop {
            if let Some(after) = inner.strip_prefix('}') {
                rest = after;
                break;
            }
            let (key, after) = inner.split_once("=\"").ok_or("label without =\"")?;
            if key.is_empty() || !key.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
                return Err("bad label name");
            }
            let mut value = String::new();
            let mut chars = after.char_indices();
            let end = loop {
                match chars.next().ok_or("unterminated label value")? {
                    (i, '"') => break i,
                    (_, '\\') => match chars.next().ok_or("dangling escape")?.1 {
                        'n' => value.push('\n'),
                        c @ ('\\' | '"') => value.push(c),
                        _ => return Err("bad escape"),
                    },
                    (_, c) => value.push(c),
                }
            };
            if labels.insert(key.to_owned(), value).is_some() {
                return Err("label repeated");
            }
            inner = &after[end + 1..];
            inner = inner.strip_prefix(',').unwrap_or(inner);
        }
    }
    let value_text = rest.strip_prefix(' ').ok_or("no space before the value")?;
    let value_text = value_text.split(' ').next().unwrap_or_default();
    let value = match value_text {
        "+Inf" => f64::INFINITY,
        "-Inf" => f64::NEG_INFINITY,
        "NaN" => f64::NAN,
        text => text.parse().map_err(|_| "value is not a number")?,
    };
    Ok(Sample {
        name: name.to_owned(),
        labels,
        value,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Label values may hold braces, commas, escaped quotes; malformed lines are refused.
    #[test]
    fn strict_sample_lines() {
        let page = Page::parse(
            "# HELP x_total X.\n# TYPE x_total counter\n\
             x_total{route=\"/a/{id}\",q=\"a,\\\"b\\\"\"} 3\n",
        );
        assert_eq!(
            page.value("x_total", &[("route", "/a/{id}"), ("q", "a,\"b\"")]),
            3.0
        );
        for bad in [
            "# TYPE x_total counter\nx_total{route=\"/a} 3\n",
            "# TYPE x_total counter\nx_total 3x\n",
            "x_total 3\n",
            "# TYPE x_total counter\nx_total{a=\"1\",a=\"2\"} 3\n",
        ] {
            assert!(
                std::panic::catch_unwind(|| Page::parse(bad)).is_err(),
                "{bad}"
            );
        }
    }
}
