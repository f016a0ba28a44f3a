//! `/api/users?ids=…`, `/api/users/{username}` and `/api/presence?ids=…`.

use super::{Caller, ServiceErrors, accounts::UserView};
use crate::{
    AppState,
    error::{ApiError, ErrorBody},
};
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
use utoipa::{IntoParams, ToSchema};

#[derive(Serialize, ToSchema)]
pub struct Users {
    users: Vec<UserView>,
}

/// Finds a user by name, to start a chat with.
#[utoipa::path(
    get,
    path = "/api/users/{username}",
    tag = "users",
    security(("access_token" = [])),
    params(("username" = String, Path, description = "The exact username")),
    responses(
        (status = 200, body = UserView, description = "The user"),
        (status = 401, body = ErrorBody, description = "`unauthenticated`: no valid access token"),
        (status = 404, body = ErrorBody, description = "`unknown_user`: no user has this name"),
        ServiceErrors,
    ),
)]
pub async fn find_user(
    State(state): State<AppState>,
    _caller: Caller,
    Path(username): Path<String>,
) -> Result<Json<UserView>, ApiError> {
    let user =
        state.services.auth.clone().find_user(FindUserRequest { username }).await?.into_inner();
    Ok(Json(UserView { user_id: user.user_id, username: user.username }))
}

#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct UsersQuery {
    /// User ids, comma separated (`1,2,3`); at most 1,000.
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

/// Usernames for user ids.
///
/// Unknown ids are left out.
#[utoipa::path(
    get,
    path = "/api/users",
    tag = "users",
    security(("access_token" = [])),
    params(UsersQuery),
    responses(
        (status = 200, body = Users, description = "The users found"),
        (status = 400, body = ErrorBody,
            description = "`bad_request`: `ids` is missing, not numbers, or more than 1,000"),
        (status = 401, body = ErrorBody, description = "`unauthenticated`: no valid access token"),
        ServiceErrors,
    ),
)]
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

#[derive(Serialize, ToSchema)]
pub struct PresenceView {
    user_id: u64,
    online: bool,
    /// Unix milliseconds; only when offline, and only when known.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(nullable = false)]
    last_seen: Option<i64>,
}

#[derive(Serialize, ToSchema)]
pub struct PresenceList {
    presence: Vec<PresenceView>,
    /// Asked-for users who share no conversation with the caller: their
    /// presence is not the caller's to see.
    hidden: Vec<u64>,
}

/// Who of a contact list is online, and when the others were last seen.
///
/// Only for users who share a conversation with the caller: the others'
/// presence is not the caller's to see, and they are listed in `hidden`.
#[utoipa::path(
    get,
    path = "/api/presence",
    tag = "users",
    security(("access_token" = [])),
    params(UsersQuery),
    responses(
        (status = 200, body = PresenceList,
            description = "Presence of the users the caller may see"),
        (status = 400, body = ErrorBody,
            description = "`bad_request`: `ids` is missing, not numbers, or more than 1,000"),
        (status = 401, body = ErrorBody, description = "`unauthenticated`: no valid access token"),
        ServiceErrors,
    ),
)]
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
