//! Logs and traces shared by every binary and test.
//!
//! **Logs:** `RUST_LOG` decides what is shown (default `info`); output goes to stderr so
//! stdout stays free for announcements that scripts parse (the bound address).
//!
//! **Traces:** every process keeps W3C trace context (`traceparent`), so one request that
//! crosses gateway → aggregator → nodes is one trace. A server's request span
//! ([`crate::grpc`]'s, the gateway's) continues the caller's `traceparent`
//! ([`continue_trace`]); a client call made inside a span carries it on ([`inject`]). Spans
//! of Concord's own crates (targets `concord*`, any level) become OpenTelemetry spans;
//! events stay log lines. With an OTLP endpoint ([`init_with_otlp`], `--otlp-endpoint` or
//! `OTEL_EXPORTER_OTLP_ENDPOINT`) finished spans are batched and exported over OTLP/HTTP
//! (protobuf, `<endpoint>/v1/traces`); without one, a caller's context still propagates (so
//! a process that exports sees its callers' trace ids) and nothing leaves the process. The request
//! ids (`x-request-id`) stay as they were; a trace id is additional.
//!
//! Sampling: parent-based — a caller's decision (the `traceparent` flags) is obeyed; a
//! trace that starts here is sampled when this process exports; in a process that exports
//! nothing, a call that brings no trace starts none (logs-only spans, below). Failure: an unreachable collector costs dropped spans (the exporter's queue
//! is bounded, 2048 spans) and a log line, never a failed request. OTLP runs over plain
//! HTTP: point it at a collector on loopback or a trusted network.
//!
//! **Spans for logs only:** a span whose target ends in [`LOGS_ONLY`] never becomes an
//! OpenTelemetry span; it exists only when `RUST_LOG` shows it. A server's request span
//! takes that form when this process exports nothing and the caller sent no trace context
//! ([`wants_trace`]): then there is no trace to continue or export, and with the default
//! log level the span is disabled, so such a call pays nothing for tracing (measured in
//! docs/BENCHMARKS.md, "The gRPC floor").

use std::{
    io::IsTerminal,
    sync::atomic::{AtomicBool, Ordering},
};

use opentelemetry::{
    propagation::{Extractor, Injector, TextMapPropagator},
    trace::{TraceContextExt, TracerProvider as _},
};
use opentelemetry_sdk::{propagation::TraceContextPropagator, trace::SdkTracerProvider, Resource};
use tracing_opentelemetry::OpenTelemetrySpanExt;
use tracing_subscriber::{filter::filter_fn, layer::SubscriberExt, EnvFilter, Layer};

/// HTTP header and gRPC metadata key of the W3C trace context.
pub const TRACEPARENT: &str = "traceparent";
/// Path OTLP/HTTP receivers take traces on, appended to the configured endpoint.
pub const OTLP_TRACES_PATH: &str = "/v1/traces";
/// Target suffix of spans that serve log lines only, never traces (module doc).
pub const LOGS_ONLY: &str = "::logs";

/// Whether this process exports spans (an OTLP endpoint was configured).
static EXPORTING: AtomicBool = AtomicBool::new(false);

/// Whether a request carrying `headers` needs an OpenTelemetry span: this process exports
/// spans, or the caller sent a trace context that calls made on its behalf must carry on.
pub fn wants_trace(headers: &http::HeaderMap) -> bool {
    EXPORTING.load(Ordering::Relaxed) || headers.contains_key(TRACEPARENT)
}

/// Whether a span opened now belongs in a trace: this process exports spans, or the
/// current span is part of a trace (a caller's). Otherwise a span for logs only will do
/// ([`LOGS_ONLY`]), and calls made under it carry no `traceparent`.
pub fn in_trace() -> bool {
    EXPORTING.load(Ordering::Relaxed)
        || tracing::Span::current()
            .context()
            .span()
            .span_context()
            .is_valid()
}

/// Why tracing could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum TelemetryError {
    /// The OTLP endpoint or exporter settings are unusable.
    #[error("OTLP exporter for {endpoint:?}: {reason}")]
    Exporter {
        /// The endpoint as given.
        endpoint: String,
        /// The exporter's complaint.
        reason: String,
    },
}

/// Keeps the trace pipeline alive; dropping it flushes the spans not yet exported (bounded
/// by the exporter's timeout), so `main` holds it until the very end.
#[must_use = "dropping the guard stops exporting traces"]
pub struct TelemetryGuard {
    provider: SdkTracerProvider,
}

impl Drop for TelemetryGuard {
    fn drop(&mut self) {
        if let Err(err) = self.provider.shutdown() {
            tracing::debug!(%err, "trace pipeline shutdown");
        }
    }
}

/// Installs the global subscriber once (logs and trace context, no export); later calls
/// (tests) are no-ops.
pub fn init() {
    // Without an exporter the provider holds nothing worth flushing.
    std::mem::forget(install(
        logs_filter("info"),
        provider("concord", None),
        false,
    ));
}

/// [`init`], exporting this process's spans to the OTLP/HTTP receiver at `endpoint`
/// (base URL, e.g. `http://127.0.0.1:4318`) under `service` (the role name), if one is
/// given. Must run before the async runtime starts (the exporter's HTTP client is blocking
/// and lives on the batch processor's own thread).
pub fn init_with_otlp(
    service: &str,
    endpoint: Option<&str>,
) -> Result<TelemetryGuard, TelemetryError> {
    let exporter = endpoint.map(otlp_exporter).transpose()?;
    let exporting = exporter.is_some();
    let guard = install(logs_filter("info"), provider(service, exporter), exporting);
    if let Some(endpoint) = endpoint {
        tracing::info!(%endpoint, service, "exporting traces over OTLP/HTTP");
    }
    Ok(guard)
}

/// Installs a subscriber for tests: quiet unless `RUST_LOG` says otherwise, captured per test.
pub fn init_for_tests() {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("warn"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_test_writer()
        .try_init();
}

fn logs_filter(default: &str) -> EnvFilter {
    EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default))
}

fn otlp_exporter(endpoint: &str) -> Result<opentelemetry_otlp::SpanExporter, TelemetryError> {
    use opentelemetry_otlp::WithExportConfig;
    let base = endpoint.trim_end_matches('/');
    let url = if base.ends_with(OTLP_TRACES_PATH) {
        base.to_owned()
    } else {
        format!("{base}{OTLP_TRACES_PATH}")
    };
    opentelemetry_otlp::SpanExporter::builder()
        .with_http()
        .with_endpoint(url)
        .build()
        .map_err(|err| TelemetryError::Exporter {
            endpoint: endpoint.to_owned(),
            reason: err.to_string(),
        })
}

fn provider(
    service: &str,
    exporter: Option<opentelemetry_otlp::SpanExporter>,
) -> SdkTracerProvider {
    let mut builder = SdkTracerProvider::builder()
        .with_resource(
            Resource::builder()
                .with_service_name(format!("concord-{service}"))
                .build(),
        )
        // New traces are sampled only where they can be exported; a caller's decision
        // (the `traceparent` flags) is always followed.
        .with_sampler(opentelemetry_sdk::trace::Sampler::ParentBased(Box::new(
            if exporter.is_some() {
                opentelemetry_sdk::trace::Sampler::AlwaysOn
            } else {
                opentelemetry_sdk::trace::Sampler::AlwaysOff
            },
        )));
    if let Some(exporter) = exporter {
        builder = builder.with_batch_exporter(exporter);
    }
    builder.build()
}

fn install(filter: EnvFilter, provider: SdkTracerProvider, exporting: bool) -> TelemetryGuard {
    if tracing::subscriber::set_global_default(subscriber(filter, &provider)).is_ok() {
        EXPORTING.store(exporting, Ordering::Relaxed);
    }
    TelemetryGuard { provider }
}

/// Logs (filtered by `filter`) plus Concord's own spans as OpenTelemetry spans of
/// `provider`.
fn subscriber(
    filter: EnvFilter,
    provider: &SdkTracerProvider,
) -> impl tracing::Subscriber + Send + Sync {
    let logs = tracing_subscriber::fmt::layer()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .with_target(true)
        .with_filter(filter);
    // Our own spans, whatever RUST_LOG shows: the trace must not depend on the log level.
    let traces = tracing_opentelemetry::layer()
        .with_tracer(provider.tracer("concord"))
        .with_filter(filter_fn(|meta| {
            meta.is_span()
                && meta.target().starts_with("concord")
                && !meta.target().ends_with(LOGS_ONLY)
        }));
    tracing_subscriber::registry().with(logs).with(traces)
}

/// Makes `span` a child of the trace context in `headers` (a `traceparent` header), if
/// any; a missing or malformed header leaves `span` a new trace's root.
pub fn continue_trace(span: &tracing::Span, headers: &http::HeaderMap) {
    if !headers.contains_key(TRACEPARENT) {
        return;
    }
    let parent = TraceContextPropagator::new().extract(&HeaderExtractor(headers));
    if parent.span().span_context().is_valid() {
        let _ = span.set_parent(parent);
    }
}

/// The current span's trace context as a `traceparent` value, if it is in a trace.
pub fn current_traceparent() -> Option<String> {
    let context = tracing::Span::current().context();
    if !context.span().span_context().is_valid() {
        return None;
    }
    let mut carrier = TraceparentCarrier(None);
    TraceContextPropagator::new().inject_context(&context, &mut carrier);
    carrier.0
}

/// Adds `traceparent` to the metadata of an outgoing call (when given a valid value).
pub fn insert_traceparent(metadata: &mut tonic::metadata::MetadataMap, traceparent: Option<&str>) {
    if let Some(value) = traceparent.and_then(|v| v.parse().ok()) {
        metadata.insert(TRACEPARENT, value);
    }
}

/// Adds the current span's trace context to an outgoing call's metadata.
pub fn inject(metadata: &mut tonic::metadata::MetadataMap) {
    insert_traceparent(metadata, current_traceparent().as_deref());
}

/// The trace id (32 hex digits) in a `traceparent` value.
pub fn trace_id_of(traceparent: &str) -> Option<&str> {
    let mut parts = traceparent.split('-');
    let (_version, trace_id) = (parts.next()?, parts.next()?);
    (trace_id.len() == 32).then_some(trace_id)
}

struct HeaderExtractor<'a>(&'a http::HeaderMap);

impl Extractor for HeaderExtractor<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).and_then(|v| v.to_str().ok())
    }

    fn keys(&self) -> Vec<&str> {
        self.0.keys().map(http::HeaderName::as_str).collect()
    }
}

/// Receives only `traceparent` (trace state is not carried).
struct TraceparentCarrier(Option<String>);

impl Injector for TraceparentCarrier {
    fn set(&mut self, key: &str, value: String) {
        if key == TRACEPARENT {
            self.0 = Some(value);
        }
    }
}

/// Helpers for tests of code that makes spans.
#[cfg(test)]
pub mod test {
    /// The subscriber a process without an OTLP endpoint installs, with `logs` as its
    /// `RUST_LOG`, for [`tracing::subscriber::with_default`].
    pub fn subscriber(logs: &str) -> impl tracing::Subscriber + Send + Sync {
        super::subscriber(
            tracing_subscriber::EnvFilter::new(logs),
            &super::provider("test", None),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A span continued from a `traceparent` header hands the same trace id to the calls
    /// made inside it; a malformed header starts nothing.
    #[test]
    fn traceparent_round_trip() {
        init();
        let sent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        let mut headers = http::HeaderMap::new();
        headers.insert(TRACEPARENT, sent.parse().expect("header"));
        let span = tracing::debug_span!(target: "concord::test", "server");
        continue_trace(&span, &headers);
        let forwarded = span.in_scope(current_traceparent).expect("in a trace");
        assert_eq!(trace_id_of(&forwarded), trace_id_of(sent));
        assert_ne!(forwarded, sent, "a new span id for the child");

        headers.insert(TRACEPARENT, "00-zz-00-01".parse().expect("header"));
        let span = tracing::debug_span!(target: "concord::test", "server");
        continue_trace(&span, &headers);
        let fresh = span.in_scope(current_traceparent).expect("a root trace");
        assert_ne!(trace_id_of(&fresh), trace_id_of(sent));
    }
}
