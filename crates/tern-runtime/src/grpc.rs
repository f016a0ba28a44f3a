//! Serving a gRPC service, and the channel type clients use.
//!
//! [`GrpcChannel`] is what every generated client in Tern runs on: a
//! channel to a service over the network ([`remote`]). Services in the same
//! process skip it and call each other's code (`tern_proto::clients`).

use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tonic::{body::Body, service::Routes, transport::Server};
use tonic_health::ServingStatus;
use tower::{BoxError, ServiceExt, util::BoxCloneSyncService};

/// What every generated gRPC client in Tern is built on.
pub type GrpcChannel =
    BoxCloneSyncService<http::Request<Body>, http::Response<Body>, TransportError>;

/// A call could not reach the service. A concrete type rather than
/// `BoxError`: with a boxed error, generated client calls inside
/// `async_trait` methods trip a higher-ranked lifetime limit of rustc.
#[derive(Debug, thiserror::Error)]
#[error(transparent)]
pub struct TransportError(BoxError);

/// A channel to a service at `url` (`http://host:port`) that presents the
/// service `token` on every call. Connects lazily and reconnects on its
/// own, so a service that starts later is picked up.
pub fn remote(url: &str, token: &crate::Secret) -> Result<GrpcChannel, tonic::transport::Error> {
    let channel = tonic::transport::Endpoint::from_shared(url.to_string())?
        .connect_timeout(std::time::Duration::from_secs(3))
        .tcp_nodelay(true)
        .connect_lazy();
    let credential = crate::credential::header_value(token);
    let channel = channel
        .map_request(move |mut request: http::Request<Body>| {
            request.headers_mut().insert(http::header::AUTHORIZATION, credential.clone());
            crate::telemetry::inject(request.headers_mut());
            request
        })
        .map_err(|e| TransportError(e.into()));
    Ok(BoxCloneSyncService::new(channel))
}

/// Serves `/metrics` (Prometheus text) on `listener` until `shutdown`.
pub async fn serve_metrics(
    listener: TcpListener,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    let app = axum::Router::new()
        .route("/metrics", axum::routing::get(|| async { crate::telemetry::metrics() }));
    axum::serve(listener, app).with_graceful_shutdown(shutdown.cancelled_owned()).await
}

/// Serves `routes`, the services named `names`, with `grpc.health.v1` and
/// server reflection on `listener` until `shutdown` fires. Every call but
/// health checks must carry the service `token`. Then health turns
/// NOT_SERVING at once, the server keeps answering for `drain` (so load
/// balancers and Kubernetes take it out of rotation without failing
/// calls), and finally it stops accepting and lets in-flight calls finish.
pub async fn serve_all(
    routes: Routes,
    names: &[&'static str],
    descriptor_set: &'static [u8],
    listener: TcpListener,
    shutdown: CancellationToken,
    drain: std::time::Duration,
    token: &crate::Secret,
) -> Result<(), tonic::transport::Error> {
    let (reporter, health) = tonic_health::server::health_reporter();
    for &name in names {
        reporter.set_service_status(name, ServingStatus::Serving).await;
    }
    let reflection = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(descriptor_set)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1()
        .expect("the descriptor set is compiled into the binary and valid");
    // Small gRPC frames must not wait for the peer's delayed ACK.
    let incoming = tonic::transport::server::TcpIncoming::from(listener).with_nodelay(Some(true));
    tracing::info!(services = ?names, "gRPC serving");
    let names = names.to_vec();
    Server::builder()
        .layer(crate::credential::RequireToken::new(token))
        .trace_fn(crate::telemetry::server_span)
        .add_routes(routes.add_service(health).add_service(reflection))
        .serve_with_incoming_shutdown(incoming, async move {
            shutdown.cancelled().await;
            for &name in &names {
                reporter.set_service_status(name, ServingStatus::NotServing).await;
            }
            tracing::info!(services = ?names, ?drain, "draining");
            tokio::time::sleep(drain).await;
        })
        .await
}
