//! Logs, traces and metrics.
//!
//! - Logs: `RUST_LOG` picks levels (default `info`); `TERN_LOG_FORMAT=json`
//!   switches to one JSON object per line.
//! - Traces: exported over OTLP/gRPC when `OTEL_EXPORTER_OTLP_ENDPOINT` is
//!   set (the standard OpenTelemetry variable), off otherwise. Spans obey
//!   the same `RUST_LOG` filter as logs. The W3C trace
//!   context travels in gRPC metadata ([`inject`], [`server_span`]), so one
//!   trace spans gateway, services and storage.
//! - Metrics: a Prometheus recorder for the `metrics` facade; [`metrics`]
//!   renders the exposition text for `/metrics`.

use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use opentelemetry::{global, propagation::Extractor, propagation::Injector, trace::TracerProvider};
use opentelemetry_sdk::{Resource, propagation::TraceContextPropagator, trace::SdkTracerProvider};
use std::sync::OnceLock;
use tracing_opentelemetry::OpenTelemetrySpanExt;
use tracing_subscriber::{EnvFilter, Layer, fmt, layer::SubscriberExt, util::SubscriberInitExt};

static METRICS: OnceLock<PrometheusHandle> = OnceLock::new();

/// Keeps the trace exporter alive; dropping it flushes pending spans.
#[must_use = "dropping the guard stops trace export"]
pub struct Telemetry {
    provider: Option<SdkTracerProvider>,
}

impl Drop for Telemetry {
    fn drop(&mut self) {
        if let Some(provider) = self.provider.take() {
            let _ = provider.shutdown();
        }
    }
}

/// Latency buckets in seconds, from 100 µs to 10 s.
const BUCKETS: &[f64] = &[
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
    10.0,
];

/// Count buckets for histograms of sizes (metric names ending `_size`).
const SIZE_BUCKETS: &[f64] = &[1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0, 1024.0];

/// Installs logging, tracing and the metrics recorder for `service`. Must
/// run inside the Tokio runtime. Later calls in the same process only
/// return an empty guard.
pub fn init(service: &'static str) -> Telemetry {
    METRICS.get_or_init(|| {
        let builder = PrometheusBuilder::new()
            .set_buckets(BUCKETS)
            .and_then(|b| b.set_buckets_for_metric(Matcher::Suffix("_size".into()), SIZE_BUCKETS))
            .expect("buckets are not empty");
        match builder.install_recorder() {
            Ok(handle) => handle,
            // Another recorder is installed (a test harness): keep a private
            // one so `/metrics` still renders.
            Err(_) => PrometheusBuilder::new().build_recorder().handle(),
        }
    });
    global::set_text_map_propagator(TraceContextPropagator::new());
    let provider = otlp_provider(service);
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let json = std::env::var("TERN_LOG_FORMAT").is_ok_and(|f| f == "json");
    let logs = if json { fmt::layer().json().boxed() } else { fmt::layer().boxed() };
    let traces =
        provider.as_ref().map(|p| tracing_opentelemetry::layer().with_tracer(p.tracer(service)));
    let installed = tracing_subscriber::registry().with(filter).with(logs).with(traces).try_init();
    if installed.is_err() {
        return Telemetry { provider: None };
    }
    tracing::info!(
        service,
        version = env!("CARGO_PKG_VERSION"),
        tracing = provider.is_some(),
        "starting"
    );
    if let Some(p) = &provider {
        global::set_tracer_provider(p.clone());
    }
    Telemetry { provider }
}

fn otlp_provider(service: &'static str) -> Option<SdkTracerProvider> {
    let endpoint = std::env::var("OTEL_EXPORTER_OTLP_ENDPOINT").ok().filter(|e| !e.is_empty())?;
    use opentelemetry_otlp::WithExportConfig;
    let exporter = match opentelemetry_otlp::SpanExporter::builder()
        .with_tonic()
        .with_endpoint(endpoint)
        .build()
    {
        Ok(exporter) => exporter,
        Err(error) => {
            eprintln!("traces disabled: {error}");
            return None;
        }
    };
    let processor =
        opentelemetry_sdk::trace::span_processor_with_async_runtime::BatchSpanProcessor::builder(
            exporter,
            opentelemetry_sdk::runtime::Tokio,
        )
        .build();
    Some(
        SdkTracerProvider::builder()
            .with_span_processor(processor)
            .with_resource(Resource::builder_empty().with_service_name(service).build())
            .build(),
    )
}

/// The Prometheus exposition text of every metric this process recorded.
pub fn metrics() -> String {
    METRICS.get().map(PrometheusHandle::render).unwrap_or_default()
}

struct HeaderInjector<'a>(&'a mut http::HeaderMap);

impl Injector for HeaderInjector<'_> {
    fn set(&mut self, key: &str, value: String) {
        if let (Ok(name), Ok(value)) =
            (http::HeaderName::from_bytes(key.as_bytes()), http::HeaderValue::from_str(&value))
        {
            self.0.insert(name, value);
        }
    }
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

/// Writes the current span's trace context into outgoing request headers.
pub fn inject(headers: &mut http::HeaderMap) {
    let context = tracing::Span::current().context();
    global::get_text_map_propagator(|p| p.inject_context(&context, &mut HeaderInjector(headers)));
}

/// A span for an incoming gRPC request, continuing the caller's trace.
pub fn server_span(request: &http::Request<impl Sized>) -> tracing::Span {
    let parent =
        global::get_text_map_propagator(|p| p.extract(&HeaderExtractor(request.headers())));
    let span = tracing::info_span!("grpc", rpc = %request.uri().path(), otel.kind = "server");
    let _ = span.set_parent(parent);
    span
}
