//! `/api/admin/…`: what operators do to users, behind the admin token
//! (`TERN__GATEWAY__ADMIN_TOKEN`), never a user's access token.

use super::{
    body, parse_id,
    users::{UsersQuery, parse_ids, presence_unavailable},
};
use crate::{AppState, error::ApiError, ws::bearer};
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

#[derive(Serialize)]
pub struct BanView {
    user_id: u64,
    banned: bool,
    /// When the ban started (Unix ms); absent when not banned.
    #[serde(skip_serializing_if = "Option::is_none")]
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

/// `POST /api/admin/users/{user_id}/ban`: the user's sessions are closed
/// (type 100) on every node, their tokens stop working, and login is
/// refused with `forbidden` until the ban is lifted.
pub async fn ban(
    State(state): State<AppState>,
    _admin: Admin,
    Path(user_id): Path<String>,
) -> Result<Json<BanView>, ApiError> {
    Ok(Json(set_banned(&state, &user_id, true).await?))
}

/// `DELETE /api/admin/users/{user_id}/ban`: lifts a ban; the user logs in again.
pub async fn unban(
    State(state): State<AppState>,
    _admin: Admin,
    Path(user_id): Path<String>,
) -> Result<Json<BanView>, ApiError> {
    Ok(Json(set_banned(&state, &user_id, false).await?))
}

#[derive(Serialize)]
pub struct Revoked {
    user_id: u64,
    /// The user's access tokens issued before this (Unix ms) are refused.
    tokens_valid_after_ms: i64,
}

/// `POST /api/admin/users/{user_id}/revoke`: ends every login of the user
/// (all refresh tokens, the access tokens issued so far, open sessions on
/// every node); they may log in again.
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

#[derive(Serialize)]
pub struct OnlineView {
    user_id: u64,
    /// The gateway nodes holding a session of the user.
    nodes: Vec<String>,
}

#[derive(Serialize)]
pub struct Online {
    online: Vec<OnlineView>,
}

/// `GET /api/admin/online?ids=1,2,3`: which of these users are online, and
/// on which nodes (users who are not are left out).
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

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SystemMessage {
    to: Option<u64>,
    group_id: Option<u64>,
    content: serde_json::Value,
    /// Makes a retry safe, as a client's send.
    #[serde(default)]
    client_msg_id: String,
}

#[derive(Serialize)]
pub struct SystemSent {
    message_id: String,
    conversation_id: String,
    seq: u64,
    timestamp: i64,
    duplicate: bool,
}

/// `POST /api/admin/messages` `{to | group_id, content, client_msg_id?}`:
/// a system message (sender 0) to one user or to every member of a
/// group, stored and delivered like any other.
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

#[derive(Serialize)]
pub struct RecallView {
    /// The recall entry's id and place in the conversation.
    message_id: String,
    conversation_id: String,
    seq: u64,
    /// The message recalled.
    ref_seq: u64,
    duplicate: bool,
}

/// `POST /api/admin/conversations/{conversation_id}/messages/{seq}/recall`:
/// recalls any message, whatever its age: its content is removed from
/// storage and every member gets the recall entry (from user 0).
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
