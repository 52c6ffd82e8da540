//! One consensus request is one trace across processes: a `traceparent` sent to the
//! gateway arrives, through the aggregator, at every node, and every process exports its
//! spans over OTLP/HTTP to a collector — here a real in-test HTTP server on port 0 that
//! decodes the OTLP protobuf exports the processes send it.

use std::{
    collections::HashMap,
    net::SocketAddr,
    process::Stdio,
    sync::{Arc, Mutex},
    time::Duration,
};

use axum::{body::Bytes, extract::State, routing::post, Router};
use concord_testkit::process::{command, follow_stdout, wait_for_line};
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use prost::Message;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// The traces the test starts: the W3C example trace id with the attempt number in its
/// last four hex digits.
const TRACE_PREFIX: &str = "4bf92f3577b34da6a3ce929d0e0e";
/// The caller's span id.
const PARENT_SPAN: &str = "00f067aa0ba902b7";

/// The trace id of attempt `n`.
fn trace_id(n: u16) -> String {
    format!("{TRACE_PREFIX}{n:04x}")
}

/// One exported span: the exporting service, the span's name and its trace id (hex).
#[derive(Debug, Clone)]
struct Exported {
    service: String,
    name: String,
    trace_id: String,
}

type Received = Arc<Mutex<Vec<Exported>>>;

/// The collector: decodes each `POST /v1/traces` body as an `ExportTraceServiceRequest`.
async fn receive(State(received): State<Received>, body: Bytes) -> &'static str {
    let Ok(export) = ExportTraceServiceRequest::decode(body) else {
        return "";
    };
    let mut received = received.lock().expect("collector lock");
    for resource_spans in export.resource_spans {
        let service = resource_spans
            .resource
            .iter()
            .flat_map(|r| &r.attributes)
            .find(|kv| kv.key == "service.name")
            .and_then(|kv| kv.value.as_ref())
            .map(|v| format!("{:?}", v.value))
            .unwrap_or_default();
        for scope in resource_spans.scope_spans {
            for span in scope.spans {
                received.push(Exported {
                    service: service.clone(),
                    name: span.name,
                    trace_id: hex(&span.trace_id),
                });
            }
        }
    }
    ""
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Sends SIGTERM to the launcher with this pid when dropped.
struct KillOnDrop(u32);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = std::process::Command::new("kill")
            .args(["-TERM", &self.0.to_string()])
            .status();
    }
}

/// Parses `concord up: gateway (gateway) pid <pid> running on <addr>`.
fn gateway_line(line: &str) -> Option<SocketAddr> {
    line.strip_prefix("concord up: gateway (gateway) pid ")?
        .split_once(" running on ")?
        .1
        .trim()
        .parse()
        .ok()
}

/// `GET path` on the gateway with a `traceparent` header of trace `trace`; the status code.
async fn get_with_traceparent(addr: SocketAddr, path: &str, trace: &str) -> u16 {
    let mut stream = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let request = format!(
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\ntraceparent: 00-{trace}-{PARENT_SPAN}-01\r\n\
         Connection: close\r\n\r\n"
    );
    stream.write_all(request.as_bytes()).await.expect("write");
    let mut reply = String::new();
    stream.read_to_string(&mut reply).await.expect("read");
    reply
        .split(' ')
        .nth(1)
        .and_then(|code| code.parse().ok())
        .unwrap_or(0)
}

/// A consensus request sent to the gateway with a `traceparent` yields, in that one trace,
/// the gateway's span, the aggregator's server span and one `node_call` span per node, and
/// every node's own server span: the context crossed gateway → aggregator → nodes.
#[tokio::test(flavor = "multi_thread")]
async fn one_request_one_trace_across_processes() {
    let received: Received = Arc::default();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind collector");
    let collector = listener.local_addr().expect("collector addr");
    let app = Router::new()
        .route("/v1/traces", post(receive))
        .with_state(received.clone());
    tokio::spawn(async move { axum::serve(listener, app).await });

    let data = tempfile::tempdir().expect("tempdir");
    let mut up = command(&[
        "up",
        "--auto-ports",
        "--nodes",
        "3",
        "--replication",
        "none",
        "--data-dir",
        data.path().to_str().expect("utf-8 path"),
        "--otlp-endpoint",
        &format!("http://{collector}"),
    ])
    .env("OTEL_BSP_SCHEDULE_DELAY", "100")
    .stdout(Stdio::piped())
    .spawn()
    .expect("spawn concord up");
    let lines = follow_stdout(&mut up);
    // Stops the launcher (and so its children) even if an assertion below fails.
    let guard = KillOnDrop(up.id());
    let gateway =
        wait_for_line(&lines, Duration::from_secs(90), gateway_line).expect("gateway running");

    // The nodes register and stake after start-up, so an early request may reach fewer
    // than three nodes, or none. Each attempt is its own trace; one answered request must
    // come out whole: the gateway's span, the aggregator's, and a `node_call` and a node
    // span for each of the three nodes, all under that one trace id.
    let path = "/api/predict?sepal_length=5.1&sepal_width=3.5&petal_length=1.4&petal_width=0.2";
    let in_trace = |received: &[Exported], trace: &str, service: &str, name: &str| {
        received
            .iter()
            .filter(|s| s.trace_id == trace && s.service.contains(service) && s.name == name)
            .count()
    };
    let mut answered = Vec::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(90);
    for attempt in 0u16.. {
        let trace = trace_id(attempt);
        if get_with_traceparent(gateway, path, &trace).await == 200 {
            answered.push(trace);
        }
        // Give the exporters (100 ms batches) time to deliver.
        tokio::time::sleep(Duration::from_millis(500)).await;
        let spans = received.lock().expect("collector lock").clone();
        let whole = answered.iter().any(|trace| {
            in_trace(&spans, trace, "concord-gateway", "http") >= 1
                && in_trace(&spans, trace, "concord-aggregator", "grpc") >= 1
                && in_trace(&spans, trace, "concord-aggregator", "node_call") >= 3
                && in_trace(&spans, trace, "concord-node", "grpc") >= 3
        });
        if whole {
            break;
        }
        if tokio::time::Instant::now() > deadline {
            let mut by_trace: HashMap<String, Vec<String>> = HashMap::new();
            for s in &spans {
                by_trace
                    .entry(format!("{} {}", s.trace_id, s.service))
                    .or_default()
                    .push(s.name.clone());
            }
            panic!("no answered request came out as one whole trace (answered: {answered:?}); exported: {by_trace:#?}");
        }
    }

    drop(guard);
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while up.try_wait().expect("wait").is_none() {
        assert!(std::time::Instant::now() < deadline, "up did not stop");
        std::thread::sleep(Duration::from_millis(50));
    }
}
