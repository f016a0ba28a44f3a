//! `/api/users?ids=…` and `/api/users/{username}`.

use super::{Caller, accounts::UserView};
use crate::{AppState, error::ApiError};
use axum::{
    Json,
    extract::{Path, Query, State, rejection::QueryRejection},
};
use serde::{Deserialize, Serialize};
use tern_proto::pb::auth::{FindUserRequest, GetUsersRequest};

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

/// `GET /api/users?ids=1,2,3`: usernames for ids (unknown ids are left out).
pub async fn users(
    State(state): State<AppState>,
    _caller: Caller,
    query: Result<Query<UsersQuery>, QueryRejection>,
) -> Result<Json<Users>, ApiError> {
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
    let users =
        users.into_iter().map(|u| UserView { user_id: u.user_id, username: u.username }).collect();
    Ok(Json(Users { users }))
}
