//! The HTTP API (DESIGN.md §5). Handlers translate JSON to gRPC calls and
//! back; every error goes through [`ApiError`].

use crate::{AppState, error::ApiError, ws::bearer};
use axum::{
    Json,
    body::Bytes,
    extract::{FromRequestParts, Path, Query, State, rejection::QueryRejection},
    http::{StatusCode, request::Parts},
    response::IntoResponse,
};
use serde::{Deserialize, de::DeserializeOwned};
use serde_json::{Value, json};
use std::time::Duration;
use tern_proto::{
    ErrorCode, conversation, error_code_of,
    pb::{
        auth::{
            FindUserRequest, GetUsersRequest, LoginRequest, LogoutRequest, RefreshRequest,
            RegisterRequest, TokenPair, VerifyTokenRequest,
        },
        group::{
            AddMembersRequest, CreateGroupRequest, GetGroupRequest, Group, JoinGroupRequest,
            LeaveGroupRequest, ListUserGroupsRequest, RemoveMemberRequest,
        },
        message::GetConversationStatesRequest,
        offline::{ListBacklogRequest, PullRequest},
    },
};
use tokio::time::timeout;

/// Parses a JSON body into `T`, answering 400 with our error shape (axum's
/// own `Json` rejection would answer 415/422 in plain text).
fn body<T: DeserializeOwned>(bytes: &Bytes) -> Result<T, ApiError> {
    serde_json::from_slice(bytes)
        .map_err(|e| ApiError::bad_request(format!("invalid JSON body: {e}")))
}

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

#[derive(Deserialize)]
struct Credentials {
    username: String,
    password: String,
}

pub async fn register(
    State(state): State<AppState>,
    bytes: Bytes,
) -> Result<impl IntoResponse, ApiError> {
    let Credentials { username, password } = body(&bytes)?;
    let user = state
        .services
        .auth
        .clone()
        .register(RegisterRequest { username, password })
        .await?
        .into_inner()
        .user
        .unwrap_or_default();
    Ok((StatusCode::CREATED, Json(json!({ "user_id": user.user_id, "username": user.username }))))
}

fn token_body(pair: TokenPair) -> Json<Value> {
    let user = pair.user.unwrap_or_default();
    Json(json!({
        "token": pair.access_token,
        "user_id": user.user_id,
        "username": user.username,
        "refresh_token": pair.refresh_token,
        "expires_in": pair.expires_in,
    }))
}

pub async fn login(
    State(state): State<AppState>,
    axum::Extension(ClientIp(ip)): axum::Extension<ClientIp>,
    bytes: Bytes,
) -> Result<Json<Value>, ApiError> {
    let Credentials { username, password } = body(&bytes)?;
    if !state.limits.login(&username, ip) {
        return Err(ApiError::new(
            ErrorCode::RateLimited,
            "too many login attempts; wait a minute",
        ));
    }
    let pair =
        state.services.auth.clone().login(LoginRequest { username, password }).await?.into_inner();
    Ok(token_body(pair))
}

#[derive(Deserialize)]
struct RefreshBody {
    refresh_token: String,
}

pub async fn refresh(State(state): State<AppState>, bytes: Bytes) -> Result<Json<Value>, ApiError> {
    let RefreshBody { refresh_token } = body(&bytes)?;
    let pair =
        state.services.auth.clone().refresh(RefreshRequest { refresh_token }).await?.into_inner();
    Ok(token_body(pair))
}

/// `POST /api/logout` `{refresh_token}`: ends the login. The user's access
/// tokens issued so far stop working and their open sockets are closed
/// (type 100) on every node.
pub async fn logout(
    State(state): State<AppState>,
    Caller(user_id): Caller,
    bytes: Bytes,
) -> Result<Json<Value>, ApiError> {
    let RefreshBody { refresh_token } = body(&bytes)?;
    state.services.auth.clone().logout(LogoutRequest { refresh_token, user_id }).await?;
    let reason = "logged out".to_string();
    if let Some(session) = state.registry.get(user_id) {
        session.kick(reason.clone());
    }
    if let Ok(nodes) = state.services.presence.locate(&[user_id]).await {
        for node in nodes.into_keys().filter(|n| *n != state.settings.node_id) {
            let kick =
                tern_bus::Kick { user_id, keep_session_id: String::new(), reason: reason.clone() };
            let event = tern_bus::BusEvent { event: Some(tern_bus::Event::Kick(kick)) };
            let _ = state.services.bus.publish(&node, event).await;
        }
    }
    Ok(Json(json!({ "status": "logged out" })))
}

/// `GET /api/users/{username}`: find someone to start a chat with.
pub async fn find_user(
    State(state): State<AppState>,
    _caller: Caller,
    Path(username): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let user =
        state.services.auth.clone().find_user(FindUserRequest { username }).await?.into_inner();
    Ok(Json(json!({ "user_id": user.user_id, "username": user.username })))
}

fn group_body(group: Group) -> Json<Value> {
    Json(json!({
        "group_id": group.group_id,
        "name": group.name,
        "owner_id": group.owner_id,
        "member_ids": group.member_ids,
    }))
}

#[derive(Deserialize)]
struct NewGroup {
    name: String,
    #[serde(default)]
    member_ids: Vec<u64>,
}

pub async fn create_group(
    State(state): State<AppState>,
    Caller(owner_id): Caller,
    bytes: Bytes,
) -> Result<impl IntoResponse, ApiError> {
    let NewGroup { name, member_ids } = body(&bytes)?;
    let group = state
        .services
        .group
        .clone()
        .create_group(CreateGroupRequest { owner_id, name, member_ids })
        .await?
        .into_inner();
    Ok((StatusCode::CREATED, group_body(group)))
}

pub async fn list_groups(
    State(state): State<AppState>,
    Caller(user_id): Caller,
) -> Result<Json<Value>, ApiError> {
    let groups = state
        .services
        .group
        .clone()
        .list_user_groups(ListUserGroupsRequest { user_id })
        .await?
        .into_inner()
        .groups;
    let groups: Vec<Value> = groups
        .into_iter()
        .map(|g| json!({ "group_id": g.group_id, "name": g.name, "owner_id": g.owner_id }))
        .collect();
    Ok(Json(json!({ "groups": groups })))
}

pub async fn join_group(
    State(state): State<AppState>,
    Caller(user_id): Caller,
    Path(group_id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let group_id = parse_id(&group_id)?;
    let group = state
        .services
        .group
        .clone()
        .join_group(JoinGroupRequest { group_id, user_id })
        .await?
        .into_inner();
    Ok(group_body(group))
}

pub async fn leave_group(
    State(state): State<AppState>,
    Caller(user_id): Caller,
    Path(group_id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let group_id = parse_id(&group_id)?;
    let group = state
        .services
        .group
        .clone()
        .leave_group(LeaveGroupRequest { group_id, user_id })
        .await?
        .into_inner();
    Ok(group_body(group))
}

#[derive(Deserialize)]
struct NewMembers {
    member_ids: Vec<u64>,
}

/// `POST /api/groups/{id}/members` `{member_ids}`: the owner adds members.
pub async fn add_members(
    State(state): State<AppState>,
    Caller(actor_id): Caller,
    Path(group_id): Path<String>,
    bytes: Bytes,
) -> Result<Json<Value>, ApiError> {
    let group_id = parse_id(&group_id)?;
    let NewMembers { member_ids } = body(&bytes)?;
    let request = AddMembersRequest { group_id, user_ids: member_ids, actor_id };
    Ok(group_body(state.services.group.clone().add_members(request).await?.into_inner()))
}

/// `DELETE /api/groups/{id}/members/{user_id}`: the owner removes a member.
pub async fn remove_member(
    State(state): State<AppState>,
    Caller(actor_id): Caller,
    Path((group_id, user_id)): Path<(String, String)>,
) -> Result<Json<Value>, ApiError> {
    let (group_id, user_id) = (parse_id(&group_id)?, parse_id(&user_id)?);
    let request = RemoveMemberRequest { group_id, user_id, actor_id };
    Ok(group_body(state.services.group.clone().remove_member(request).await?.into_inner()))
}

/// Members are visible to members only.
pub async fn group_members(
    State(state): State<AppState>,
    Caller(user_id): Caller,
    Path(group_id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let group_id = parse_id(&group_id)?;
    let group =
        state.services.group.clone().get_group(GetGroupRequest { group_id }).await?.into_inner();
    if !group.member_ids.contains(&user_id) {
        return Err(ApiError::new(ErrorCode::NotMember, "only members can list a group's members"));
    }
    Ok(Json(json!({ "group_id": group.group_id, "member_ids": group.member_ids })))
}

/// `GET /api/conversations`: every conversation of the caller, newest
/// activity first, with unread counts and the latest message.
pub async fn conversations(
    State(state): State<AppState>,
    Caller(user_id): Caller,
) -> Result<Json<Value>, ApiError> {
    // Before the read: see `AckBuffer::of_user`.
    let buffered = state.acks.of_user(user_id);
    let backlog = state
        .services
        .offline
        .clone()
        .list_backlog(ListBacklogRequest { user_id, include_read: true })
        .await?
        .into_inner();
    let mut items = Vec::with_capacity(backlog.conversations.len());
    for b in backlog.conversations {
        // The latest message, for the list's preview line.
        let last = if b.latest_seq == 0 {
            None
        } else {
            let request = PullRequest {
                user_id,
                conversation_id: b.conversation_id.clone(),
                after_seq: Some(b.latest_seq - 1),
                limit: 1,
            };
            state.services.offline.clone().pull(request).await?.into_inner().messages.pop()
        };
        let (kind, peer) = match conversation::parse(&b.conversation_id) {
            Some(conversation::Kind::Direct(x, y)) => {
                ("direct", json!({ "user_id": if x == user_id { y } else { x } }))
            }
            Some(conversation::Kind::Group(g)) => ("group", json!({ "group_id": g })),
            None => continue,
        };
        // This node may hold a newer ack than storage (written behind).
        let acked = buffered.get(&b.conversation_id).copied().unwrap_or(0).max(b.acked_seq);
        let unread = b.latest_seq.saturating_sub(acked);
        let last_message = last.as_ref().map(|m| {
            serde_json::from_str::<Value>(&crate::protocol::delivered(m)).unwrap_or(Value::Null)
        });
        let mut item = json!({
            "conversation_id": b.conversation_id,
            "kind": kind,
            "acked_seq": acked,
            "latest_seq": b.latest_seq,
            "unread": unread,
            "last_message": last_message,
        });
        if let (Some(obj), Some(extra)) = (item.as_object_mut(), peer.as_object()) {
            obj.extend(extra.clone());
        }
        items.push(item);
    }
    items.sort_by_key(|i| std::cmp::Reverse(i["last_message"]["timestamp"].as_i64().unwrap_or(0)));
    Ok(Json(json!({ "conversations": items })))
}

#[derive(Deserialize)]
pub struct UsersQuery {
    ids: String,
}

/// `GET /api/users?ids=1,2,3`: usernames for ids (unknown ids are left out).
pub async fn users(
    State(state): State<AppState>,
    _caller: Caller,
    query: Result<Query<UsersQuery>, QueryRejection>,
) -> Result<Json<Value>, ApiError> {
    let Query(q) = query.map_err(|e| ApiError::bad_request(e.body_text()))?;
    let ids: Vec<u64> = q
        .ids
        .split(',')
        .filter(|s| !s.trim().is_empty())
        .map(|s| s.trim().parse().map_err(|_| ApiError::bad_request("ids must be numbers")))
        .collect::<Result<_, _>>()?;
    if ids.len() > 1000 {
        return Err(ApiError::bad_request("at most 1000 ids"));
    }
    let users = state
        .services
        .auth
        .clone()
        .get_users(GetUsersRequest { user_ids: ids })
        .await?
        .into_inner()
        .users;
    let users: Vec<Value> = users
        .into_iter()
        .map(|u| json!({ "user_id": u.user_id, "username": u.username }))
        .collect();
    Ok(Json(json!({ "users": users })))
}

#[derive(Deserialize)]
pub struct HistoryQuery {
    after_seq: Option<u64>,
    limit: Option<u32>,
}

/// `GET /api/conversations/{id}/messages`: history for members only.
pub async fn history(
    State(state): State<AppState>,
    Caller(user_id): Caller,
    Path(conversation_id): Path<String>,
    query: Result<Query<HistoryQuery>, QueryRejection>,
) -> Result<Json<Value>, ApiError> {
    let Query(q) = query.map_err(|e| ApiError::bad_request(e.body_text()))?;
    if conversation::parse(&conversation_id).is_none() {
        return Err(ApiError::bad_request("malformed conversation id"));
    }
    let page = state
        .services
        .offline
        .clone()
        .pull(PullRequest {
            user_id,
            conversation_id,
            after_seq: Some(q.after_seq.unwrap_or(0)),
            limit: q.limit.unwrap_or(0),
        })
        .await?
        .into_inner();
    let messages: Vec<Value> = page
        .messages
        .iter()
        .map(|m| serde_json::from_str(&crate::protocol::delivered(m)).unwrap_or(Value::Null))
        .collect();
    Ok(Json(
        json!({ "messages": messages, "acked_seq": page.acked_seq, "latest_seq": page.latest_seq }),
    ))
}

pub async fn health() -> Json<Value> {
    Json(json!({ "status": "ok" }))
}

/// Ready when the node is not draining and every dependency answers: the
/// four services (each probed with a cheap call that touches its database)
/// and the bus/presence store. A client error such as "no such group"
/// counts as an answer; only `unavailable` (or no answer within 2 s) does
/// not.
pub async fn ready(State(state): State<AppState>) -> Result<Json<Value>, ApiError> {
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
            let request = GetConversationStatesRequest { conversation_ids: vec!["dm:0:1".into()] };
            answered(s.message.clone().get_conversation_states(request).await.map(|_| ()))
        }),
        timeout(within, async {
            answered(
                s.offline
                    .clone()
                    .list_backlog(ListBacklogRequest { user_id: 0, include_read: false })
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
        Ok(Json(json!({ "status": "ready" })))
    } else {
        Err(ApiError::new(
            ErrorCode::Unavailable,
            format!("not ready: {} unreachable", down.join(", ")),
        ))
    }
}

pub async fn stats(State(state): State<AppState>) -> Json<crate::stats::StatsView> {
    Json(state.stats.view(&state.settings.node_id))
}

/// A numeric id from the path.
fn parse_id(raw: &str) -> Result<u64, ApiError> {
    raw.parse().map_err(|_| ApiError::bad_request("the id in the path must be a number"))
}

/// 405 with the usual error body (its code is `bad_request`: the client
/// used the route wrongly).
pub async fn method_not_allowed() -> impl IntoResponse {
    let body = json!({ "error": { "code": ErrorCode::BadRequest.as_str(), "message": "method not allowed on this route" } });
    (StatusCode::METHOD_NOT_ALLOWED, Json(body))
}

pub async fn not_found() -> ApiError {
    ApiError::new(ErrorCode::NotFound, "no such route")
}
