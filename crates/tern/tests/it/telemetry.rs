//! Observability: Prometheus metrics after traffic, and one OpenTelemetry
//! trace across the gateway, the message service and its storage.

use crate::common;

use common::{Server, cluster::Cluster};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
    trace_service_server::{TraceService, TraceServiceServer},
};
use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

#[tokio::test]
async fn metrics_expose_the_named_series_after_traffic() {
    let s = Server::start().await;
    let (alice, bob) = (s.user("alice").await, s.user("bob").await);
    let mut a = s.connect(&alice).await;
    let mut b = s.connect(&bob).await;
    a.send_to(bob.id, "measured", "m1").await;
    assert_eq!(b.recv().await["content"]["text"], "measured");

    let text = s.http.get(s.url("/metrics")).send().await.unwrap().text().await.unwrap();
    for series in [
        "tern_gateway_connections 2",
        "tern_gateway_messages_in_total 1",
        "tern_gateway_messages_out_total 1",
        "tern_gateway_send_ack_seconds_bucket",
        "tern_gateway_ack_deliver_seconds_bucket",
        "tern_gateway_offline_backlog_messages_count 2",
        // Two sessions' listings, in one call or two.
        "tern_gateway_sync_listing_batch_size_sum 2",
        "tern_message_store_seconds_bucket",
        // Sizes get count buckets, not the latency ones.
        "tern_message_store_batch_size_bucket{le=\"1\"} 1",
        "tern_messages_stored_total 1",
    ] {
        assert!(text.contains(series), "missing {series:?} in:\n{text}");
    }
    // `/stats` shows the same counts: each is bumped once, for both.
    let (status, stats) = s.get("/stats", None).await;
    assert_eq!(status, 200, "{stats}");
    for (field, series) in [
        ("connections", "tern_gateway_connections"),
        ("connections_total", "tern_gateway_connections_total"),
        ("messages_in", "tern_gateway_messages_in_total"),
        ("messages_out", "tern_gateway_messages_out_total"),
        ("bus_events", "tern_gateway_bus_events_total"),
    ] {
        let line = format!("{series} {}\n", stats[field]);
        assert!(text.contains(&line), "/stats {field} = {} but /metrics:\n{text}", stats[field]);
    }
}

/// A received span: service name, trace id, span id, parent span id, name.
type SpanRecord = (String, Vec<u8>, Vec<u8>, Vec<u8>, String);

/// An OTLP trace receiver: the real protocol, keeping what it is sent.
#[derive(Clone, Default)]
struct Receiver {
    spans: Arc<Mutex<Vec<SpanRecord>>>,
}

#[tonic::async_trait]
impl TraceService for Receiver {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        let mut spans = self.spans.lock().unwrap();
        for resource_spans in request.into_inner().resource_spans {
            let service = resource_spans
                .resource
                .iter()
                .flat_map(|r| &r.attributes)
                .find(|kv| kv.key == "service.name")
                .and_then(|kv| kv.value.as_ref())
                .and_then(|v| match &v.value {
                    Some(
                        opentelemetry_proto::tonic::common::v1::any_value::Value::StringValue(s),
                    ) => Some(s.clone()),
                    _ => None,
                })
                .unwrap_or_default();
            for scope in resource_spans.scope_spans {
                for span in scope.spans {
                    spans.push((
                        service.clone(),
                        span.trace_id,
                        span.span_id,
                        span.parent_span_id,
                        span.name,
                    ));
                }
            }
        }
        Ok(tonic::Response::new(ExportTraceServiceResponse { partial_success: None }))
    }
}

#[tokio::test]
async fn one_trace_spans_gateway_message_service_and_storage() {
    let receiver = Receiver::default();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let endpoint = format!("http://{}", listener.local_addr().unwrap());
    let server = TraceServiceServer::new(receiver.clone());
    tokio::spawn(async move {
        tonic::transport::Server::builder()
            .add_service(server)
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener))
            .await
    });

    let c = Cluster::start_with(
        1,
        &[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint.as_str()),
            ("OTEL_BSP_SCHEDULE_DELAY", "100"),
            ("RUST_LOG", "info"),
        ],
    )
    .await;
    let (a, b) = (c.user("a").await, c.user("b").await);
    let mut ca = c.connect(0, &a).await;
    let mut cb = c.connect(0, &b).await;
    ca.send_to(b.id, "traced", "t1").await;
    assert_eq!(cb.recv().await["content"]["text"], "traced");

    // Find a ws.send span of the gateway whose trace also holds the message
    // service's server span (its child) and the storage span.
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let spans = receiver.spans.lock().unwrap().clone();
        let by_id: HashMap<&Vec<u8>, &SpanRecord> = spans.iter().map(|s| (&s.2, s)).collect();
        let found =
            spans.iter().filter(|s| s.0 == "tern-gateway" && s.4 == "ws.send").any(|send| {
                let in_trace: Vec<_> = spans.iter().filter(|s| s.1 == send.1).collect();
                let server = in_trace.iter().find(|s| {
                    s.0 == "tern-message"
                        && s.4 == "grpc"
                        && by_id.get(&s.3).is_some_and(|p| p.0 == "tern-gateway")
                });
                let storage =
                    in_trace.iter().any(|s| s.0 == "tern-message" && s.4 == "store.append");
                server.is_some() && storage
            });
        if found {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no trace spanning gateway and message service; got {spans:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}
