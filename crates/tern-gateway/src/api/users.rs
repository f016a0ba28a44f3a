//! `/api/users?ids=…`, `/api/users/{username}` and `/api/presence?ids=…`.

use super::{Caller, accounts::UserView};
use crate::{AppState, error::ApiError};
use axum::{
    Json,
    extract::{Path, Query, State, rejection::QueryRejection},
};
use serde::{Deserialize, Serialize};
use tern_proto::{
    ErrorCode,
    pb::{
        auth::{FindUserRequest, GetUsersRequest},
        offline::SharedWithRequest,
    },
};

#[derive(Serialize)]
pub struct Users {
    users: Vec<UserView>,
}

/// `GET /api/users/{username}`: find someone to start a chat with.
pub async fn find_user(
    State(state): State<AppState>,
    _caller: Caller,
    Path(username): Path<String>,
) -> Result<Json<UserView>, ApiError> {
    let user =
        state.services.auth.clone().find_user(FindUserRequest { username }).await?.into_inner();
    Ok(Json(UserView { user_id: user.user_id, username: user.username }))
}

#[derive(Deserialize)]
pub struct UsersQuery {
    ids: String,
}

/// Ids from `?ids=1,2,3`, at most 1,000.
pub(super) fn parse_ids(
    query: Result<Query<UsersQuery>, QueryRejection>,
) -> Result<Vec<u64>, ApiError> {
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
    Ok(ids)
}

/// `GET /api/users?ids=1,2,3`: usernames for ids (unknown ids are left out).
pub async fn users(
    State(state): State<AppState>,
    _caller: Caller,
    query: Result<Query<UsersQuery>, QueryRejection>,
) -> Result<Json<Users>, ApiError> {
    let ids = parse_ids(query)?;
    let users = state
        .services
        .auth
        .clone()
        .get_users(GetUsersRequest { user_ids: ids })
        .await?
        .into_inner()
        .users;
    let users =
        users.into_iter().map(|u| UserView { user_id: u.user_id, username: u.username }).collect();
    Ok(Json(Users { users }))
}

#[derive(Serialize)]
pub struct PresenceView {
    user_id: u64,
    online: bool,
    /// Unix milliseconds; only when offline, and only when known.
    #[serde(skip_serializing_if = "Option::is_none")]
    last_seen: Option<i64>,
}

#[derive(Serialize)]
pub struct PresenceList {
    presence: Vec<PresenceView>,
    /// Asked-for users who share no conversation with the caller: their
    /// presence is not the caller's to see.
    hidden: Vec<u64>,
}

/// `GET /api/presence?ids=1,2,3`: who of a contact list is online, and when
/// the others were last seen, for users who share a conversation with the
/// caller.
pub async fn presence(
    State(state): State<AppState>,
    Caller(caller): Caller,
    query: Result<Query<UsersQuery>, QueryRejection>,
) -> Result<Json<PresenceList>, ApiError> {
    let ids = parse_ids(query)?;
    let request = SharedWithRequest { user_id: caller, candidates: ids.clone() };
    let visible = state.services.offline.clone().shared_with(request).await?.into_inner().user_ids;
    let hidden = ids.into_iter().filter(|id| !visible.contains(id)).collect();
    let presence = &state.services.presence;
    let online: std::collections::HashSet<u64> = presence
        .locate(&visible)
        .await
        .map_err(presence_unavailable)?
        .into_values()
        .flatten()
        .collect();
    let seen = presence.last_seen(&visible).await.map_err(presence_unavailable)?;
    let presence = visible
        .into_iter()
        .map(|user_id| {
            let online = online.contains(&user_id);
            let last_seen = if online { None } else { seen.get(&user_id).copied() };
            PresenceView { user_id, online, last_seen }
        })
        .collect();
    Ok(Json(PresenceList { presence, hidden }))
}

/// What a caller gets when presence cannot be read.
pub(super) fn presence_unavailable(_: tern_bus::BusError) -> ApiError {
    ApiError::new(ErrorCode::Unavailable, "presence unavailable, retry")
}
