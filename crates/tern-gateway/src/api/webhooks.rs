//! `/api/admin/webhooks/…`: parked webhook events, behind the admin token.
//! Each producing service keeps its own outbox; these routes ask every one
//! of them and merge the answers.

use super::{AdminErrors, admin::Admin, body};
use crate::{
    AppState,
    error::{ApiError, ErrorBody},
};
use axum::{
    Json,
    body::Bytes,
    extract::{Query, State, rejection::QueryRejection},
};
use serde::{Deserialize, Serialize};
use tern_proto::pb::webhook::{EventRef, ListParkedRequest, RetryParkedRequest};
use utoipa::{IntoParams, ToSchema};

/// Most events listed, and retried, per call.
const MAX: usize = 1000;

#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ParkedQuery {
    /// At most this many events (default 100, at most 1,000).
    limit: Option<u32>,
}

/// Where a parked event is: what a retry names.
#[derive(Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ParkedRef {
    /// The producing service's outbox: `auth`, `group` or `message`.
    outbox: String,
    /// The event's row in that outbox.
    id: i64,
}

#[derive(Serialize, ToSchema)]
pub struct ParkedView {
    outbox: String,
    id: i64,
    /// The event's id, as in its body and the `Tern-Event-Id` header.
    event_id: String,
    event_type: String,
    /// The endpoint it was for.
    endpoint: String,
    attempts: u32,
    /// The last failure: an HTTP status, a timeout or a network error.
    last_error: String,
    created_at_ms: i64,
    /// The event as sent (the JSON body).
    event: serde_json::Value,
}

#[derive(Serialize, ToSchema)]
pub struct Parked {
    /// Oldest first.
    events: Vec<ParkedView>,
}

/// Webhook events that failed every attempt and were parked.
///
/// A parked event is kept but no longer sent, and no longer holds back the
/// events behind it; a retry puts it back in line.
#[utoipa::path(
    get,
    path = "/api/admin/webhooks/parked",
    tag = "admin",
    security(("admin_token" = [])),
    params(ParkedQuery),
    responses(
        (status = 200, body = Parked, description = "The parked events, oldest first"),
        (status = 400, body = ErrorBody, description = "`bad_request`: `limit` is not a number"),
        (status = 404, body = ErrorBody,
            description = "`not_found`: the admin API is off on this node"),
        AdminErrors,
    ),
)]
pub async fn parked(
    State(state): State<AppState>,
    _admin: Admin,
    query: Result<Query<ParkedQuery>, QueryRejection>,
) -> Result<Json<Parked>, ApiError> {
    let Query(ParkedQuery { limit }) =
        query.map_err(|e| ApiError::bad_request(format!("invalid query: {e}")))?;
    let limit = limit.unwrap_or(100).clamp(1, MAX as u32);
    let mut events = Vec::new();
    for client in &state.services.webhooks {
        let answer = client.clone().list_parked(ListParkedRequest { limit }).await?;
        for parked in answer.into_inner().events {
            let EventRef { outbox, id } = parked.r#ref.unwrap_or_default();
            events.push(ParkedView {
                outbox,
                id,
                event_id: parked.event_id,
                event_type: parked.event_type,
                endpoint: parked.endpoint,
                attempts: parked.attempts,
                last_error: parked.last_error,
                created_at_ms: parked.created_at_ms,
                event: serde_json::from_str(&parked.body).unwrap_or(serde_json::Value::Null),
            });
        }
    }
    events.sort_by_key(|e| e.created_at_ms);
    events.truncate(limit as usize);
    Ok(Json(Parked { events }))
}

/// Parked events to put back in line.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Retry {
    /// At most 1,000, as `GET /api/admin/webhooks/parked` lists them.
    events: Vec<ParkedRef>,
}

#[derive(Serialize, ToSchema)]
pub struct Retried {
    /// How many of them were parked and are now due again.
    retried: u32,
}

/// Sends parked webhook events again.
///
/// Their attempts start over and they are due at once. Events that are not
/// parked (already retried, or unknown) are ignored.
#[utoipa::path(
    post,
    path = "/api/admin/webhooks/retry",
    tag = "admin",
    security(("admin_token" = [])),
    request_body = Retry,
    responses(
        (status = 200, body = Retried, description = "How many were put back in line"),
        (status = 400, body = ErrorBody,
            description = "`bad_request`: not JSON of this shape, or more than 1,000 events"),
        (status = 404, body = ErrorBody,
            description = "`not_found`: the admin API is off on this node"),
        AdminErrors,
    ),
)]
pub async fn retry(
    State(state): State<AppState>,
    _admin: Admin,
    bytes: Bytes,
) -> Result<Json<Retried>, ApiError> {
    let Retry { events } = body(&bytes)?;
    if events.len() > MAX {
        return Err(ApiError::bad_request("retry at most 1000 events at a time"));
    }
    let events: Vec<EventRef> =
        events.into_iter().map(|r| EventRef { outbox: r.outbox, id: r.id }).collect();
    let mut retried = 0;
    for client in &state.services.webhooks {
        let request = RetryParkedRequest { events: events.clone() };
        retried += client.clone().retry_parked(request).await?.into_inner().retried;
    }
    Ok(Json(Retried { retried }))
}
