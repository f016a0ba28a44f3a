//! What every standalone service binary shares: its gRPC address, metrics
//! listener, drain time and service credential, and the start-up steps on
//! them.

use crate::{Secret, settings::EXIT_BAD_CONFIG};
use serde::{Deserialize, Serialize};
use std::time::Duration;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

/// Settings common to the services, flattened into each binary's own
/// (`TERN__GRPC_ADDR`, `TERN__METRICS_ADDR`, `TERN__DRAIN_SECS`,
/// `TERN__SERVICE_TOKEN`).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default)]
pub struct ServiceBase {
    /// Address the gRPC server binds.
    pub grpc_addr: String,
    /// Where `/metrics` (Prometheus) is served; unset means not at all.
    pub metrics_addr: Option<String>,
    /// Seconds between turning NOT_SERVING and stopping, on SIGTERM.
    pub drain_secs: u64,
    /// The shared credential every call to and from the services carries.
    pub service_token: Secret,
}

impl ServiceBase {
    /// Defaults for a service listening on `port`.
    pub fn on_port(port: u16) -> Self {
        Self {
            grpc_addr: format!("0.0.0.0:{port}"),
            metrics_addr: None,
            drain_secs: 5,
            service_token: Secret::default(),
        }
    }

    /// Checks the credential (exiting with 64 when unusable, before binding
    /// anything), binds the gRPC listener, starts `/metrics` and the
    /// shutdown signal.
    pub async fn start(&self) -> std::io::Result<Started> {
        if let Err(why) = crate::credential::validate(&self.service_token) {
            eprintln!("TERN__SERVICE_TOKEN: {why}");
            std::process::exit(EXIT_BAD_CONFIG);
        }
        let listener = crate::net::listen(&self.grpc_addr).await?;
        let shutdown = crate::shutdown::on_signal();
        if let Some(addr) = &self.metrics_addr {
            let metrics = TcpListener::bind(addr).await?;
            tokio::spawn(crate::grpc::serve_metrics(metrics, shutdown.clone()));
        }
        Ok(Started {
            listener,
            shutdown,
            drain: Duration::from_secs(self.drain_secs),
            token: self.service_token.clone(),
        })
    }
}

impl Default for ServiceBase {
    fn default() -> Self {
        Self::on_port(50051)
    }
}

/// A service ready to serve: what [`crate::grpc::serve_all`] needs.
pub struct Started {
    pub listener: TcpListener,
    pub shutdown: CancellationToken,
    pub drain: Duration,
    pub token: Secret,
}

impl Started {
    /// Serves `service` until the shutdown signal.
    pub async fn serve<S>(
        self,
        service: S,
        descriptor_set: &'static [u8],
    ) -> Result<(), tonic::transport::Error>
    where
        S: tower::Service<
                http::Request<tonic::body::Body>,
                Response = http::Response<tonic::body::Body>,
                Error = std::convert::Infallible,
            > + tonic::server::NamedService
            + Clone
            + Send
            + Sync
            + 'static,
        S::Future: Send + 'static,
    {
        let routes = tonic::service::Routes::new(service);
        self.serve_routes(routes, &[S::NAME], descriptor_set).await
    }

    /// Serves `routes`, the services named `names`, until the shutdown
    /// signal.
    pub async fn serve_routes(
        self,
        routes: tonic::service::Routes,
        names: &[&'static str],
        descriptor_set: &'static [u8],
    ) -> Result<(), tonic::transport::Error> {
        crate::grpc::serve_all(
            routes,
            names,
            descriptor_set,
            self.listener,
            self.shutdown,
            self.drain,
            &self.token,
        )
        .await
    }
}
