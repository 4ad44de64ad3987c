//! OpenTelemetry traces over OTLP/gRPC (`opentelemetry-otlp` with tonic), off unless
//! `otlp_endpoint` is set. When on, every RPC gets a server span named after its method
//! (`gatekeeper.v1.KeyService/GetWorkerKey`), with the OpenTelemetry RPC attributes
//! (`rpc.system`, `rpc.method`, `rpc.grpc.status_code`) and its parent taken from the request's
//! W3C `traceparent` header; refusals (PERMISSION_DENIED, NOT_FOUND, …) are answers, not errors,
//! so only the server-side failure codes mark a span as an error. Work inside a request (issuing
//! a key) and work of the node's own (applying Raft entries, forwarding writes, dealing,
//! unsealing, committing chain blocks) gets its own spans. When off, nothing is created.

use opentelemetry::propagation::{Extractor, TextMapPropagator};
use std::sync::atomic::{AtomicBool, Ordering};

static ON: AtomicBool = AtomicBool::new(false);

/// Whether traces are exported (spans are only made then).
pub fn enabled() -> bool {
    ON.load(Ordering::Relaxed)
}

/// The tracer provider exporting to `endpoint` (`http://host:4317`), batched; must be called
/// inside the tokio runtime. Spans carry `service.name = gatekeeper` and the node id.
pub fn provider(
    endpoint: &str,
    node_id: u64,
) -> anyhow::Result<opentelemetry_sdk::trace::SdkTracerProvider> {
    use opentelemetry_otlp::WithExportConfig;
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_tonic()
        .with_endpoint(endpoint)
        .with_timeout(std::time::Duration::from_secs(5))
        .build()
        .map_err(|e| anyhow::anyhow!("OTLP exporter for {endpoint}: {e}"))?;
    let resource = opentelemetry_sdk::Resource::builder_empty()
        .with_service_name("gatekeeper")
        .with_attribute(opentelemetry::KeyValue::new(
            "service.instance.id",
            node_id.to_string(),
        ))
        .build();
    let provider = opentelemetry_sdk::trace::SdkTracerProvider::builder()
        .with_batch_exporter(exporter)
        .with_resource(resource)
        .build();
    ON.store(true, Ordering::Relaxed);
    gatekeeper_raft::telemetry::set_traces(true);
    gatekeeper_raft::telemetry::set_context_injector(inject_current);
    Ok(provider)
}

/// Writes the current span's trace context into outgoing gRPC metadata (W3C `traceparent`).
fn inject_current(metadata: &mut tonic::metadata::MetadataMap) {
    use opentelemetry::propagation::{Injector, TextMapPropagator};
    use tracing_opentelemetry::OpenTelemetrySpanExt;
    struct Metadata<'a>(&'a mut tonic::metadata::MetadataMap);
    impl Injector for Metadata<'_> {
        fn set(&mut self, key: &str, value: String) {
            if let (Ok(k), Ok(v)) = (
                tonic::metadata::MetadataKey::from_bytes(key.as_bytes()),
                value.parse(),
            ) {
                self.0.insert(k, v);
            }
        }
    }
    let cx = tracing::Span::current().context();
    opentelemetry_sdk::propagation::TraceContextPropagator::new()
        .inject_context(&cx, &mut Metadata(metadata));
}

/// Reads W3C trace context from gRPC request headers.
struct HeaderExtractor<'a>(&'a http::HeaderMap);

impl Extractor for HeaderExtractor<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).and_then(|v| v.to_str().ok())
    }

    fn keys(&self) -> Vec<&str> {
        self.0.keys().map(|k| k.as_str()).collect()
    }
}

/// The server span of one RPC (`method` as the metrics label it: `package.Service/Method` or
/// `_OTHER`), its parent read from `headers`. `Span::none()` when traces are off.
pub fn server_span(method: &str, headers: &http::HeaderMap) -> tracing::Span {
    if !enabled() {
        return tracing::Span::none();
    }
    use tracing_opentelemetry::OpenTelemetrySpanExt;
    let span = tracing::info_span!(
        "rpc",
        otel.name = %method,
        otel.kind = "server",
        rpc.system = "grpc",
        rpc.method = %method,
        rpc.grpc.status_code = tracing::field::Empty,
        otel.status_code = tracing::field::Empty,
    );
    let parent = opentelemetry_sdk::propagation::TraceContextPropagator::new()
        .extract(&HeaderExtractor(headers));
    let _ = span.set_parent(parent);
    span
}

/// Whether a gRPC status code is the server's failure (OpenTelemetry's RPC conventions): the
/// rest are answers — a refusal is not an error of the server.
pub fn is_server_error(code: i32) -> bool {
    matches!(code, 2 | 4 | 12 | 13 | 14 | 15)
}

/// Records an RPC's status code on its server span.
pub fn record_status(span: &tracing::Span, code: i32) {
    span.record("rpc.grpc.status_code", code);
    if is_server_error(code) {
        span.record("otel.status_code", "ERROR");
    }
}

/// An internal span named `name` when traces are on, else `Span::none()`.
#[macro_export]
macro_rules! trace_span {
    ($name:expr $(, $($fields:tt)*)?) => {
        if $crate::traces::enabled() {
            tracing::info_span!($name $(, $($fields)*)?)
        } else {
            tracing::Span::none()
        }
    };
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_server_failures_are_errors() {
        for code in [2, 4, 12, 13, 14, 15] {
            assert!(is_server_error(code), "{code}");
        }
        // OK, CANCELLED, INVALID_ARGUMENT, NOT_FOUND, ALREADY_EXISTS, PERMISSION_DENIED,
        // RESOURCE_EXHAUSTED, FAILED_PRECONDITION, ABORTED, OUT_OF_RANGE, UNAUTHENTICATED.
        for code in [0, 1, 3, 5, 6, 7, 8, 9, 10, 11, 16] {
            assert!(!is_server_error(code), "{code}");
        }
    }

    #[test]
    fn traceparent_is_read_from_the_headers() {
        let mut h = http::HeaderMap::new();
        h.insert(
            "traceparent",
            http::HeaderValue::from_static(
                "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
            ),
        );
        use opentelemetry::trace::TraceContextExt;
        let cx = opentelemetry_sdk::propagation::TraceContextPropagator::new()
            .extract(&HeaderExtractor(&h));
        let sc = cx.span().span_context().clone();
        assert_eq!(
            sc.trace_id().to_string(),
            "0af7651916cd43dd8448eb211c80319c"
        );
        assert_eq!(sc.span_id().to_string(), "b7ad6b7169203331");
        assert!(sc.is_remote());
    }
}
