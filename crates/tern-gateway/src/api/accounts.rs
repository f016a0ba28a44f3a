//! `/api/register`, `/api/login`, `/api/refresh`, `/api/logout`.

use super::{Caller, ClientIp, body};
use crate::{AppState, error::ApiError};
use axum::{Json, body::Bytes, extract::State, http::StatusCode, response::IntoResponse};
use serde::{Deserialize, Serialize};
use tern_proto::{
    ErrorCode,
    pb::auth::{LoginRequest, LogoutRequest, RefreshRequest, RegisterRequest, TokenPair},
};

#[derive(Deserialize)]
struct Credentials {
    username: String,
    password: String,
}

#[derive(Deserialize)]
struct RefreshBody {
    refresh_token: String,
}

/// A user as the API shows one.
#[derive(Serialize)]
pub struct UserView {
    pub user_id: u64,
    pub username: String,
}

/// The answer to a login or refresh.
#[derive(Serialize)]
pub struct Tokens {
    token: String,
    user_id: u64,
    username: String,
    refresh_token: String,
    expires_in: u64,
}

impl From<TokenPair> for Tokens {
    fn from(pair: TokenPair) -> Self {
        let user = pair.user.unwrap_or_default();
        Self {
            token: pair.access_token,
            user_id: user.user_id,
            username: user.username,
            refresh_token: pair.refresh_token,
            expires_in: pair.expires_in,
        }
    }
}

#[derive(Serialize)]
pub struct LoggedOut {
    status: &'static str,
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
    Ok((StatusCode::CREATED, Json(UserView { user_id: user.user_id, username: user.username })))
}

pub async fn login(
    State(state): State<AppState>,
    axum::Extension(ClientIp(ip)): axum::Extension<ClientIp>,
    bytes: Bytes,
) -> Result<Json<Tokens>, ApiError> {
    let Credentials { username, password } = body(&bytes)?;
    if !state.limits.login(&username, ip) {
        return Err(ApiError::new(
            ErrorCode::RateLimited,
            "too many login attempts; wait a minute",
        ));
    }
    let pair =
        state.services.auth.clone().login(LoginRequest { username, password }).await?.into_inner();
    Ok(Json(pair.into()))
}

pub async fn refresh(
    State(state): State<AppState>,
    bytes: Bytes,
) -> Result<Json<Tokens>, ApiError> {
    let RefreshBody { refresh_token } = body(&bytes)?;
    let pair =
        state.services.auth.clone().refresh(RefreshRequest { refresh_token }).await?.into_inner();
    Ok(Json(pair.into()))
}

/// `POST /api/logout` `{refresh_token}`: ends the login. The user's access
/// tokens issued so far stop working and their open sockets are closed
/// (type 100) on every node.
pub async fn logout(
    State(state): State<AppState>,
    Caller(user_id): Caller,
    bytes: Bytes,
) -> Result<Json<LoggedOut>, ApiError> {
    let RefreshBody { refresh_token } = body(&bytes)?;
    // The auth service broadcasts the logout; every node, this one too,
    // closes the user's socket when it hears it (`registry::dispatcher`).
    state.services.auth.clone().logout(LogoutRequest { refresh_token, user_id }).await?;
    Ok(Json(LoggedOut { status: "logged out" }))
}
