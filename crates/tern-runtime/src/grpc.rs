//! Serving a gRPC service, and the channel type clients use.
//!
//! [`GrpcChannel`] hides whether a service is reached over the network
//! ([`remote`]) or called in the same process ([`in_process`]): the
//! generated clients are the same either way, so service code cannot tell
//! the embedded mode from the distributed one.

use std::{
    convert::Infallible,
    sync::{Arc, OnceLock},
};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tonic::{body::Body, server::NamedService, transport::Server};
use tower::{BoxError, Service, ServiceExt, util::BoxCloneSyncService};

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

/// A channel that calls a generated server directly, without a socket. The
/// request is still encoded and decoded as protobuf, so behaviour matches
/// the remote path.
pub fn in_process<S>(server: S) -> GrpcChannel
where
    S: Service<http::Request<Body>, Response = http::Response<Body>, Error = Infallible>
        + Clone
        + Send
        + Sync
        + 'static,
    S::Future: Send + 'static,
{
    // The trace context crosses this boundary exactly as it would a socket:
    // written into the request's metadata, then read back into a server span.
    BoxCloneSyncService::new(tower::service_fn(move |mut request: http::Request<Body>| {
        crate::telemetry::inject(request.headers_mut());
        let span = crate::telemetry::server_span(&request);
        let server = server.clone();
        async move {
            use tracing::Instrument;
            server
                .oneshot(request)
                .instrument(span)
                .await
                .map_err(|never: Infallible| match never {})
        }
    }))
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

/// Serves `service` with `grpc.health.v1` and server reflection on
/// `listener` until `shutdown` fires. Every call but health checks must
/// carry the service `token`. Then health turns NOT_SERVING at once,
/// the server keeps answering for `drain` (so load balancers and Kubernetes
/// take it out of rotation without failing calls), and finally it stops
/// accepting and lets in-flight calls finish.
pub async fn serve<S>(
    service: S,
    descriptor_set: &'static [u8],
    listener: TcpListener,
    shutdown: CancellationToken,
    drain: std::time::Duration,
    token: &crate::Secret,
) -> Result<(), tonic::transport::Error>
where
    S: Service<http::Request<Body>, Response = http::Response<Body>, Error = Infallible>
        + NamedService
        + Clone
        + Send
        + Sync
        + 'static,
    S::Future: Send + 'static,
{
    let (reporter, health) = tonic_health::server::health_reporter();
    reporter.set_serving::<S>().await;
    let reflection = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(descriptor_set)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1()
        .expect("the descriptor set is compiled into the binary and valid");
    // Small gRPC frames must not wait for the peer's delayed ACK.
    let incoming = tonic::transport::server::TcpIncoming::from(listener).with_nodelay(Some(true));
    tracing::info!(service = S::NAME, "gRPC serving");
    Server::builder()
        .layer(crate::credential::RequireToken::new(token))
        .trace_fn(crate::telemetry::server_span)
        .add_service(health)
        .add_service(reflection)
        .add_service(service)
        .serve_with_incoming_shutdown(incoming, async move {
            shutdown.cancelled().await;
            reporter.set_not_serving::<S>().await;
            tracing::info!(service = S::NAME, ?drain, "draining");
            tokio::time::sleep(drain).await;
        })
        .await
}

/// A channel whose target is supplied later, for services that call each
/// other in one process (message → group → offline → message): every
/// server can be built with its clients before the others exist.
pub fn late_bound() -> (GrpcChannel, LateBinder) {
    let slot = Arc::new(OnceLock::new());
    (BoxCloneSyncService::new(LateBound { slot: slot.clone() }), LateBinder { slot })
}

/// Supplies the target of a [`late_bound`] channel.
pub struct LateBinder {
    slot: Arc<OnceLock<GrpcChannel>>,
}

impl LateBinder {
    /// Points the channel at `target`. Later calls are ignored.
    pub fn bind(self, target: GrpcChannel) {
        let _ = self.slot.set(target);
    }
}

#[derive(Clone)]
struct LateBound {
    slot: Arc<OnceLock<GrpcChannel>>,
}

impl Service<http::Request<Body>> for LateBound {
    type Response = http::Response<Body>;
    type Error = TransportError;
    type Future = futures::future::BoxFuture<'static, Result<Self::Response, Self::Error>>;

    fn poll_ready(
        &mut self,
        _cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), Self::Error>> {
        std::task::Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: http::Request<Body>) -> Self::Future {
        let target = self.slot.get().cloned();
        Box::pin(async move {
            let Some(target) = target else {
                return Err(TransportError("service not started yet".into()));
            };
            target.oneshot(request).await
        })
    }
}
