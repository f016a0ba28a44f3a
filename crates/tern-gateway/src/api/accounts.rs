//! `/api/register`, `/api/login`, `/api/refresh`, `/api/logout`.

use super::{Caller, ClientIp, ServiceErrors, body};
use crate::{
    AppState,
    error::{ApiError, ErrorBody},
};
use axum::{Json, body::Bytes, extract::State, http::StatusCode, response::IntoResponse};
use serde::{Deserialize, Serialize};
use tern_proto::{
    ErrorCode,
    pb::auth::{LoginRequest, LogoutRequest, RefreshRequest, RegisterRequest, TokenPair},
};
use utoipa::ToSchema;

/// A username and password.
#[derive(Deserialize, ToSchema)]
struct Credentials {
    /// 1–32 letters, digits, `_`, `-` or `.`.
    username: String,
    /// 8–72 bytes when registering.
    password: String,
}

#[derive(Deserialize, ToSchema)]
struct RefreshBody {
    refresh_token: String,
}

/// A user as the API shows one.
#[derive(Serialize, ToSchema)]
pub struct UserView {
    pub user_id: u64,
    pub username: String,
}

/// The answer to a login or refresh.
#[derive(Serialize, ToSchema)]
pub struct Tokens {
    /// The access token: `Authorization: Bearer <token>`, and `?token=` of
    /// the WebSocket.
    token: String,
    user_id: u64,
    username: String,
    /// Buys the next token pair, once.
    refresh_token: String,
    /// Seconds until the access token expires.
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

#[derive(Serialize, ToSchema)]
pub struct LoggedOut {
    #[schema(examples("logged out"))]
    status: &'static str,
}

/// Creates an account.
#[utoipa::path(
    post,
    path = "/api/register",
    tag = "accounts",
    request_body = Credentials,
    responses(
        (status = 201, body = UserView, description = "Registered"),
        (status = 400, body = ErrorBody,
            description = "`bad_request`: not JSON, or the username or password breaks its rules"),
        (status = 409, body = ErrorBody, description = "`conflict`: the username is taken"),
        ServiceErrors,
    ),
)]
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

/// Logs in: an access token and a refresh token.
#[utoipa::path(
    post,
    path = "/api/login",
    tag = "accounts",
    request_body = Credentials,
    responses(
        (status = 200, body = Tokens, description = "Logged in"),
        (status = 400, body = ErrorBody,
            description = "`bad_request`: not JSON, or a field is missing"),
        (status = 401, body = ErrorBody,
            description = "`unauthenticated`: wrong username or password"),
        (status = 403, body = ErrorBody, description = "`forbidden`: the account is banned"),
        ServiceErrors,
    ),
)]
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

/// A new token pair for a refresh token.
///
/// The refresh token is spent; presenting a spent one again ends that
/// login.
#[utoipa::path(
    post,
    path = "/api/refresh",
    tag = "accounts",
    request_body = RefreshBody,
    responses(
        (status = 200, body = Tokens, description = "A new token pair"),
        (status = 400, body = ErrorBody,
            description = "`bad_request`: not JSON, or `refresh_token` is missing"),
        (status = 401, body = ErrorBody,
            description = "`unauthenticated`: the refresh token is unknown, spent or expired"),
        (status = 403, body = ErrorBody, description = "`forbidden`: the account is banned"),
        ServiceErrors,
    ),
)]
pub async fn refresh(
    State(state): State<AppState>,
    bytes: Bytes,
) -> Result<Json<Tokens>, ApiError> {
    let RefreshBody { refresh_token } = body(&bytes)?;
    let pair =
        state.services.auth.clone().refresh(RefreshRequest { refresh_token }).await?.into_inner();
    Ok(Json(pair.into()))
}

/// Ends the login.
///
/// Its refresh tokens and the user's access tokens issued so far stop
/// working, and the user's open sockets are closed (type 100) on every
/// node.
#[utoipa::path(
    post,
    path = "/api/logout",
    tag = "accounts",
    security(("access_token" = [])),
    request_body = RefreshBody,
    responses(
        (status = 200, body = LoggedOut, description = "Logged out"),
        (status = 400, body = ErrorBody,
            description = "`bad_request`: not JSON, or `refresh_token` is missing"),
        (status = 401, body = ErrorBody,
            description = "`unauthenticated`: no valid access token, or the refresh token is not \
                the caller's"),
        ServiceErrors,
    ),
)]
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
