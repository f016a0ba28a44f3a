//! `/api/admin/…`: what operators do to users, behind the admin token
//! (`TERN__GATEWAY__ADMIN_TOKEN`), never a user's access token.

use super::{
    AdminErrors, body, parse_id,
    users::{UsersQuery, parse_ids, presence_unavailable},
};
use crate::{
    AppState,
    error::{ApiError, ErrorBody},
    ws::bearer,
};
use axum::{
    Json,
    body::Bytes,
    extract::{FromRequestParts, Path, Query, State, rejection::QueryRejection},
    http::{StatusCode, request::Parts},
};
use serde::{Deserialize, Serialize};
use tern_proto::{
    ErrorCode,
    pb::{
        auth::{RevokeUserRequest, SetBannedRequest},
        message::{MessageKind, RecallRequest, SendRequest, send_request::Target},
    },
};
use utoipa::ToSchema;

/// A request that carries the admin token.
pub struct Admin;

impl FromRequestParts<AppState> for Admin {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        let expected = &state.settings.admin_token;
        if expected.is_empty() {
            // Off: the routes look as if they did not exist.
            return Err(ApiError::new(ErrorCode::NotFound, "the admin API is off on this node"));
        }
        let token = bearer(&parts.headers)
            .ok_or_else(|| ApiError::new(ErrorCode::Unauthenticated, "missing admin token"))?;
        if !tern_runtime::credential::same(token.as_bytes(), expected.expose().as_bytes()) {
            return Err(ApiError::new(ErrorCode::Unauthenticated, "invalid admin token"));
        }
        Ok(Admin)
    }
}

#[derive(Serialize, ToSchema)]
pub struct BanView {
    user_id: u64,
    banned: bool,
    /// When the ban started (Unix ms); absent when not banned.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(nullable = false)]
    banned_at_ms: Option<i64>,
}

/// Bans or unbans through the auth service.
async fn set_banned(state: &AppState, raw_id: &str, banned: bool) -> Result<BanView, ApiError> {
    let user_id = parse_id(raw_id)?;
    let request = SetBannedRequest { user_id, banned };
    let answer = state.services.auth.clone().set_banned(request).await?.into_inner();
    let banned_at_ms = (answer.banned_at_ms != 0).then_some(answer.banned_at_ms);
    Ok(BanView { user_id, banned, banned_at_ms })
}

/// Bans a user.
///
/// The user's sessions are closed (type 100) on every node, their tokens
/// stop working, and login is refused with `forbidden` until the ban is
/// lifted. Banning twice changes nothing.
#[utoipa::path(
    post,
    path = "/api/admin/users/{user_id}/ban",
    tag = "admin",
    security(("admin_token" = [])),
    params(("user_id" = u64, Path, description = "The user")),
    responses(
        (status = 200, body = BanView, description = "The user is banned"),
        (status = 400, body = ErrorBody,
            description = "`bad_request`: the user id is not a number"),
        (status = 404, body = ErrorBody,
            description = "`unknown_user`: no such user; `not_found`: the admin API is off"),
        AdminErrors,
    ),
)]
pub async fn ban(
    State(state): State<AppState>,
    _admin: Admin,
    Path(user_id): Path<String>,
) -> Result<Json<BanView>, ApiError> {
    Ok(Json(set_banned(&state, &user_id, true).await?))
}

/// Lifts a ban; the user may log in again.
#[utoipa::path(
    delete,
    path = "/api/admin/users/{user_id}/ban",
    tag = "admin",
    security(("admin_token" = [])),
    params(("user_id" = u64, Path, description = "The user")),
    responses(
        (status = 200, body = BanView, description = "The user is not banned"),
        (status = 400, body = ErrorBody,
            description = "`bad_request`: the user id is not a number"),
        (status = 404, body = ErrorBody,
            description = "`unknown_user`: no such user; `not_found`: the admin API is off"),
        AdminErrors,
    ),
)]
pub async fn unban(
    State(state): State<AppState>,
    _admin: Admin,
    Path(user_id): Path<String>,
) -> Result<Json<BanView>, ApiError> {
    Ok(Json(set_banned(&state, &user_id, false).await?))
}

#[derive(Serialize, ToSchema)]
pub struct Revoked {
    user_id: u64,
    /// The user's access tokens issued before this (Unix ms) are refused.
    tokens_valid_after_ms: i64,
}

/// Ends every login of a user.
///
/// All their refresh tokens, the access tokens issued so far, and their
/// open sessions on every node; they may log in again.
#[utoipa::path(
    post,
    path = "/api/admin/users/{user_id}/revoke",
    tag = "admin",
    security(("admin_token" = [])),
    params(("user_id" = u64, Path, description = "The user")),
    responses(
        (status = 200, body = Revoked, description = "Every login of the user has ended"),
        (status = 400, body = ErrorBody,
            description = "`bad_request`: the user id is not a number"),
        (status = 404, body = ErrorBody,
            description = "`unknown_user`: no such user; `not_found`: the admin API is off"),
        AdminErrors,
    ),
)]
pub async fn revoke(
    State(state): State<AppState>,
    _admin: Admin,
    Path(user_id): Path<String>,
) -> Result<Json<Revoked>, ApiError> {
    let user_id = parse_id(&user_id)?;
    let answer =
        state.services.auth.clone().revoke_user(RevokeUserRequest { user_id }).await?.into_inner();
    Ok(Json(Revoked { user_id, tokens_valid_after_ms: answer.tokens_valid_after_ms }))
}

#[derive(Serialize, ToSchema)]
pub struct OnlineView {
    user_id: u64,
    /// The gateway nodes holding a session of the user.
    nodes: Vec<String>,
}

#[derive(Serialize, ToSchema)]
pub struct Online {
    online: Vec<OnlineView>,
}

/// Which of these users are online, and on which nodes.
///
/// Users who are not online are left out.
#[utoipa::path(
    get,
    path = "/api/admin/online",
    tag = "admin",
    security(("admin_token" = [])),
    params(UsersQuery),
    responses(
        (status = 200, body = Online, description = "The users with an open session"),
        (status = 400, body = ErrorBody,
            description = "`bad_request`: `ids` is missing, not numbers, or more than 1,000"),
        (status = 404, body = ErrorBody,
            description = "`not_found`: the admin API is off on this node"),
        AdminErrors,
    ),
)]
pub async fn online(
    State(state): State<AppState>,
    _admin: Admin,
    query: Result<Query<UsersQuery>, QueryRejection>,
) -> Result<Json<Online>, ApiError> {
    let ids = parse_ids(query)?;
    let located = state.services.presence.locate(&ids).await.map_err(presence_unavailable)?;
    let online = ids
        .into_iter()
        .filter_map(|user_id| {
            let mut nodes: Vec<String> = located
                .iter()
                .filter(|(_, users)| users.contains(&user_id))
                .map(|(node, _)| node.clone())
                .collect();
            nodes.sort_unstable();
            (!nodes.is_empty()).then_some(OnlineView { user_id, nodes })
        })
        .collect();
    Ok(Json(Online { online }))
}

/// A system message, to one user (`to`) or to a group (`group_id`): give
/// exactly one of them.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SystemMessage {
    /// The user it goes to, in their 1:1 conversation with user 0.
    #[schema(nullable = false)]
    to: Option<u64>,
    /// The group it goes to.
    #[schema(nullable = false)]
    group_id: Option<u64>,
    /// Any JSON, as a client's message.
    content: serde_json::Value,
    /// Makes a retry safe, as a client's send.
    #[serde(default)]
    client_msg_id: String,
}

#[derive(Serialize, ToSchema)]
pub struct SystemSent {
    message_id: String,
    conversation_id: String,
    seq: u64,
    timestamp: i64,
    duplicate: bool,
}

/// Sends a system message (from user 0).
///
/// To one user or to every member of a group, stored and delivered like
/// any other.
#[utoipa::path(
    post,
    path = "/api/admin/messages",
    tag = "admin",
    security(("admin_token" = [])),
    request_body = SystemMessage,
    responses(
        (status = 201, body = SystemSent, description = "Sent"),
        (status = 200, body = SystemSent,
            description = "Sent before with this `client_msg_id` (`duplicate` is true)"),
        (status = 400, body = ErrorBody,
            description = "`bad_request`: not JSON, an unknown field, or not exactly one of `to` \
                and `group_id`"),
        (status = 404, body = ErrorBody,
            description = "`unknown_user`, `unknown_group`; `not_found`: the admin API is off"),
        (status = 413, body = ErrorBody,
            description = "`too_large`: the content is over the size limit"),
        AdminErrors,
    ),
)]
pub async fn system_message(
    State(state): State<AppState>,
    _admin: Admin,
    bytes: Bytes,
) -> Result<(StatusCode, Json<SystemSent>), ApiError> {
    let SystemMessage { to, group_id, content, client_msg_id } = body(&bytes)?;
    let target = match (to, group_id) {
        (Some(to), None) => Target::ToUserId(to),
        (None, Some(group)) => Target::GroupId(group),
        _ => return Err(ApiError::bad_request("give exactly one of to and group_id")),
    };
    let request = SendRequest {
        sender_id: 0,
        client_msg_id,
        target: Some(target),
        content_json: content.to_string(),
        system: true,
        kind: MessageKind::Message as i32,
        device: String::new(),
    };
    let sent = state.services.message.clone().send(request).await?.into_inner();
    let message = sent.message.unwrap_or_default();
    let status = if sent.duplicate { StatusCode::OK } else { StatusCode::CREATED };
    Ok((
        status,
        Json(SystemSent {
            message_id: message.message_id,
            conversation_id: message.conversation_id,
            seq: message.seq,
            timestamp: message.created_at_ms,
            duplicate: sent.duplicate,
        }),
    ))
}

#[derive(Serialize, ToSchema)]
pub struct RecallView {
    /// The recall entry's id and place in the conversation.
    message_id: String,
    conversation_id: String,
    seq: u64,
    /// The message recalled.
    ref_seq: u64,
    duplicate: bool,
}

/// Recalls any message, whatever its age.
///
/// Its content is removed from storage and every member gets the recall
/// entry (from user 0).
#[utoipa::path(
    post,
    path = "/api/admin/conversations/{conversation_id}/messages/{seq}/recall",
    tag = "admin",
    security(("admin_token" = [])),
    params(
        ("conversation_id" = String, Path,
            description = "`dm:<lower user id>:<higher user id>` or `group:<group id>`"),
        ("seq" = u64, Path, description = "The message's place in the conversation"),
    ),
    responses(
        (status = 200, body = RecallView, description = "Recalled"),
        (status = 400, body = ErrorBody,
            description = "`bad_request`: a malformed conversation id or seq"),
        (status = 404, body = ErrorBody,
            description = "`not_found`: no such message, or the admin API is off on this node"),
        (status = 409, body = ErrorBody,
            description = "`conflict`: the message was recalled already"),
        AdminErrors,
    ),
)]
pub async fn recall(
    State(state): State<AppState>,
    _admin: Admin,
    Path((conversation_id, seq)): Path<(String, String)>,
) -> Result<Json<RecallView>, ApiError> {
    let seq = parse_id(&seq)?;
    let request = RecallRequest {
        user_id: 0,
        conversation_id,
        seq,
        client_msg_id: String::new(),
        device: String::new(),
        system: true,
    };
    let ack = state.services.message.clone().recall(request).await?.into_inner();
    Ok(Json(RecallView {
        message_id: ack.message_id,
        conversation_id: ack.conversation_id,
        seq: ack.seq,
        ref_seq: seq,
        duplicate: ack.duplicate,
    }))
}
