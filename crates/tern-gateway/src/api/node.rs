//! `/health`, `/ready`, `/stats` and `/metrics`.

use super::RateLimited;
use crate::{
    AppState,
    error::{ApiError, ErrorBody},
};
use axum::{Json, extract::State};
use serde::Serialize;
use std::time::Duration;
use tern_proto::{
    ErrorCode, error_code_of,
    pb::{
        auth::VerifyTokenRequest, group::GetGroupRequest, message::GetConversationStatesRequest,
        offline::ListBacklogRequest,
    },
};
use tokio::time::timeout;
use utoipa::ToSchema;

#[derive(Serialize, ToSchema)]
pub struct Status {
    #[schema(examples("ok", "ready"))]
    status: &'static str,
}

/// Liveness: the process answers.
#[utoipa::path(
    get,
    path = "/health",
    tag = "node",
    responses((status = 200, description = "Alive", body = Status)),
)]
pub async fn health() -> Json<Status> {
    Json(Status { status: "ok" })
}

/// Readiness: the node is not draining and every dependency answers.
///
/// The four services (each probed with a cheap call that touches its
/// database) and the bus/presence store. A client error such as "no such
/// group" counts as an answer; only `unavailable` (or no answer within
/// 2 s) does not.
#[utoipa::path(
    get,
    path = "/ready",
    tag = "node",
    responses(
        (status = 200, body = Status, description = "Ready"),
        (status = 503, body = ErrorBody,
            description = "`unavailable`: draining, or the dependencies it names are unreachable"),
    ),
)]
pub async fn ready(State(state): State<AppState>) -> Result<Json<Status>, ApiError> {
    if state.draining.is_cancelled() {
        return Err(ApiError::new(ErrorCode::Unavailable, "draining"));
    }
    let s = &state.services;
    let answered = |r: Result<(), tonic::Status>| match r {
        Ok(()) => true,
        Err(status) => error_code_of(&status) != ErrorCode::Unavailable,
    };
    let within = Duration::from_secs(2);
    let probes = tokio::join!(
        timeout(within, async {
            let r = s
                .auth
                .clone()
                .verify_token(VerifyTokenRequest { access_token: String::new() })
                .await;
            answered(r.map(|_| ()))
        }),
        timeout(within, async {
            answered(s.group.clone().get_group(GetGroupRequest { group_id: 0 }).await.map(|_| ()))
        }),
        timeout(within, async {
            let request = GetConversationStatesRequest {
                conversation_ids: vec!["dm:0:1".into()],
                ..Default::default()
            };
            answered(s.message.clone().get_conversation_states(request).await.map(|_| ()))
        }),
        timeout(within, async {
            answered(
                s.offline
                    .clone()
                    .list_backlog(ListBacklogRequest { user_id: 0, ..Default::default() })
                    .await
                    .map(|_| ()),
            )
        }),
        timeout(within, async { s.presence.ping().await.is_ok() }),
    );
    let names = ["auth", "group", "message", "offline", "bus"];
    let results = [probes.0, probes.1, probes.2, probes.3, probes.4];
    let down: Vec<&str> = names
        .iter()
        .zip(results)
        .filter(|(_, ok)| !matches!(ok, Ok(true)))
        .map(|(n, _)| *n)
        .collect();
    if down.is_empty() {
        Ok(Json(Status { status: "ready" }))
    } else {
        Err(ApiError::new(
            ErrorCode::Unavailable,
            format!("not ready: {} unreachable", down.join(", ")),
        ))
    }
}

/// This node's live figures.
#[utoipa::path(
    get,
    path = "/stats",
    tag = "node",
    responses(
        (status = 200, body = crate::stats::StatsView, description = "The node's counters"),
        RateLimited,
    ),
)]
pub async fn stats(State(state): State<AppState>) -> Json<crate::stats::StatsView> {
    Json(state.stats.view(&state.settings.node_id))
}

/// The process's metrics, for Prometheus.
#[utoipa::path(
    get,
    path = "/metrics",
    tag = "node",
    responses(
        (status = 200, body = String, content_type = "text/plain",
            description = "The Prometheus text exposition format"),
    ),
)]
pub async fn metrics() -> String {
    tern_runtime::telemetry::metrics()
}
