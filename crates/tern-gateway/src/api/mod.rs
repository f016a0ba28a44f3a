//! The HTTP API (docs/protocol.md, *HTTP API*), one module per resource: `accounts`
//! (register, login, refresh, logout), `users`, `groups`, `conversations`
//! (list with unread counts, history), `attachments` (uploads, downloads)
//! `node` (health, readiness, stats) and `admin` (operators: bans,
//! revocation, who is online). Handlers translate JSON to gRPC calls and back; every answer is
//! a typed body (`Serialize` structs in its module) and every error goes
//! through [`ApiError`].
//!
//! Each handler carries its `#[utoipa::path]` (method, path, parameters,
//! body, answers) and each body type derives `ToSchema`: `openapi` builds
//! the OpenAPI document from them.

mod accounts;
mod admin;
mod attachments;
mod conversations;
mod groups;
mod node;
mod openapi;
mod users;
mod webhooks;

pub use accounts::{login, logout, refresh, register};
pub use admin::{ban, online, recall, revoke, system_message, unban};
pub use attachments::{
    UrlSigner, complete_upload, create_upload, get_attachment, get_content, put_content,
};
pub use conversations::{conversations, history, reads};
pub use groups::{
    add_members, create_group, group_members, join_group, leave_group, list_groups, remove_member,
};
pub use node::{health, metrics, ready, stats};
pub use openapi::{document as openapi_document, json as openapi_json};
pub use users::{find_user, presence, users};
pub use webhooks::{parked as parked_webhooks, retry as retry_webhooks};

use crate::{
    AppState,
    error::{ApiError, ErrorBody},
    ws::bearer,
};
use axum::{
    Json,
    body::Bytes,
    extract::{FromRequestParts, State},
    http::{StatusCode, request::Parts},
    response::IntoResponse,
};
use serde::de::DeserializeOwned;
use tern_proto::ErrorCode;
use utoipa::IntoResponses;

/// Parses a JSON body into `T`, answering 400 with our error shape (axum's
/// own `Json` rejection would answer 415/422 in plain text).
fn body<T: DeserializeOwned>(bytes: &Bytes) -> Result<T, ApiError> {
    serde_json::from_slice(bytes)
        .map_err(|e| ApiError::bad_request(format!("invalid JSON body: {e}")))
}

/// The answers, besides its own, of every route that calls a service.
#[derive(IntoResponses)]
#[expect(dead_code, reason = "described in the OpenAPI document; ApiError builds these bodies")]
pub enum ServiceErrors {
    /// `rate_limited`: too many requests from this address; slow down.
    #[response(status = 429)]
    RateLimited(ErrorBody),
    /// `internal`: a fault on the server's side; the details are in its log.
    #[response(status = 500)]
    Internal(ErrorBody),
    /// `unavailable`: a service is down or saturated; retry.
    #[response(status = 503)]
    Unavailable(ErrorBody),
}

/// The answers, besides its own, of every admin route.
#[derive(IntoResponses)]
#[expect(dead_code, reason = "described in the OpenAPI document; ApiError builds these bodies")]
pub enum AdminErrors {
    /// `unauthenticated`: no admin token, or a wrong one.
    #[response(status = 401)]
    Unauthenticated(ErrorBody),
    /// `rate_limited`: too many requests from this address; slow down.
    #[response(status = 429)]
    RateLimited(ErrorBody),
    /// `internal`: a fault on the server's side; the details are in its log.
    #[response(status = 500)]
    Internal(ErrorBody),
    /// `unavailable`: a service is down or saturated; retry.
    #[response(status = 503)]
    Unavailable(ErrorBody),
}

/// `rate_limited`: too many requests from this address; slow down.
#[derive(IntoResponses)]
#[response(status = 429)]
#[expect(dead_code, reason = "described in the OpenAPI document; ApiError builds this body")]
pub struct RateLimited(ErrorBody);

/// The client's address: the peer, or the last `X-Forwarded-For` entry when
/// the gateway is configured to trust its load balancer.
#[derive(Clone, Copy, Debug)]
pub struct ClientIp(pub std::net::IpAddr);

/// Middleware on every route: works out the client IP (kept in the
/// request's extensions for handlers) and applies the per-IP rate limit.
pub async fn client_ip_and_rate(
    State(state): State<AppState>,
    mut request: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    let peer = request
        .extensions()
        .get::<axum::extract::ConnectInfo<std::net::SocketAddr>>()
        .map(|c| c.0.ip())
        .unwrap_or(std::net::IpAddr::from([127, 0, 0, 1]));
    let forwarded = state.settings.limits.trust_forwarded_for.then(|| {
        request
            .headers()
            .get("x-forwarded-for")
            .and_then(|v| v.to_str().ok())
            // The last entry is the one the trusted proxy itself added;
            // earlier ones are whatever the client sent.
            .and_then(|v| v.rsplit(',').next())
            .and_then(|ip| ip.trim().parse().ok())
    });
    let ip = forwarded.flatten().unwrap_or(peer);
    // Probes and scrapes are never limited: a busy node must not fail them.
    let probe = matches!(request.uri().path(), "/health" | "/ready" | "/metrics");
    if !probe && !state.limits.http(ip) {
        return ApiError::new(ErrorCode::RateLimited, "too many requests; slow down")
            .into_response();
    }
    request.extensions_mut().insert(ClientIp(ip));
    next.run(request).await
}

/// The authenticated caller of a route.
pub struct Caller(pub u64);

impl FromRequestParts<AppState> for Caller {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        let token = bearer(&parts.headers)
            .ok_or_else(|| ApiError::new(ErrorCode::Unauthenticated, "missing bearer token"))?;
        let verified = state.tokens.verify(&state.services.auth, token).await?;
        Ok(Caller(verified.user_id))
    }
}

/// A numeric id from the path.
fn parse_id(raw: &str) -> Result<u64, ApiError> {
    raw.parse().map_err(|_| ApiError::bad_request("the id in the path must be a number"))
}

/// 405 with the usual error body (its code is `bad_request`: the client
/// used the route wrongly).
pub async fn method_not_allowed() -> impl IntoResponse {
    let body = ErrorBody::new(ErrorCode::BadRequest, "method not allowed on this route");
    (StatusCode::METHOD_NOT_ALLOWED, Json(body))
}

pub async fn not_found() -> ApiError {
    ApiError::new(ErrorCode::NotFound, "no such route")
}
