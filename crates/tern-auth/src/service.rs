//! The `tern.auth.v1.AuthService` implementation.

use crate::{
    AuthError, Settings,
    store::{Store, users},
    tokens::{TokenKeys, hash_refresh_token, new_refresh_token},
};
use std::sync::Arc;
use tern_bus::{Bus, BusEvent, Event, Revoked};
use tern_proto::pb::auth::{
    FindUserRequest, GetUsersRequest, GetUsersResponse, ListRevocationsRequest,
    ListRevocationsResponse, LoginRequest, LogoutRequest, LogoutResponse, RecordPresenceRequest,
    RecordPresenceResponse, RefreshRequest, RegisterRequest, RegisterResponse, Revocation,
    RevokeUserRequest, RevokeUserResponse, SetBannedRequest, SetBannedResponse, TokenPair, User,
    VerifyTokenRequest, VerifyTokenResponse, auth_service_server::AuthService,
};
use tern_runtime::clock::{now_ms, now_secs};
use tonic::{Request, Response, Status};

/// Most ids one `GetUsers` call may ask for.
const MAX_LOOKUP: usize = 10_000;
/// bcrypt reads at most 72 bytes; longer passwords are refused rather than
/// silently truncated.
const MAX_PASSWORD_BYTES: usize = 72;
const MIN_PASSWORD_BYTES: usize = 8;
const MAX_USERNAME_CHARS: usize = 32;

/// The auth service.
#[derive(Clone)]
pub struct Auth {
    store: Store,
    keys: Arc<TokenKeys>,
    bcrypt_cost: u32,
    /// A hash to verify against when the username does not exist, so a
    /// failed login takes as long whether or not the user exists.
    dummy_hash: Arc<String>,
    /// Where a logout is announced to every gateway node, so the ones that
    /// check tokens themselves drop what they cached of the user.
    bus: Arc<dyn Bus>,
    /// The admin API of the webhook outbox.
    webhooks: tern_webhook::Admin,
}

impl Auth {
    pub(crate) fn new(
        db: sea_orm::DatabaseConnection,
        settings: &Settings,
        bus: Arc<dyn Bus>,
        outbox: tern_webhook::Outbox,
    ) -> anyhow::Result<Self> {
        let cost = settings.bcrypt_cost;
        Ok(Self {
            webhooks: outbox.admin(db.clone()),
            store: Store::new(db, outbox),
            keys: Arc::new(TokenKeys::new(&settings.jwt)?),
            bcrypt_cost: cost,
            dummy_hash: Arc::new(bcrypt::hash("tern-dummy-password", cost)?),
            bus,
        })
    }

    /// A new token pair; `family` ties the refresh token to its login (a new
    /// one for a login, the old one's for a refresh).
    async fn issue_pair(
        &self,
        user: &users::Model,
        family: String,
    ) -> Result<TokenPair, AuthError> {
        let (refresh_token, hash) = new_refresh_token();
        let expires = now_secs() + self.keys.refresh_ttl as i64;
        self.store.store_refresh(hash, user.id, expires, family).await?;
        Ok(TokenPair {
            access_token: self.keys.issue_access(user.id as u64),
            expires_in: self.keys.access_ttl,
            refresh_token,
            user: Some(to_pb(user)),
        })
    }
}

fn to_pb(user: &users::Model) -> User {
    User { user_id: user.id as u64, username: user.username.clone() }
}

fn validate_username(username: &str) -> Result<(), AuthError> {
    let chars = username.chars().count();
    if chars == 0 || chars > MAX_USERNAME_CHARS {
        return Err(AuthError::Invalid("username must be 1 to 32 characters"));
    }
    if !username.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.')) {
        return Err(AuthError::Invalid("username may only use letters, digits, '_', '-' and '.'"));
    }
    Ok(())
}

fn validate_password(password: &str) -> Result<(), AuthError> {
    if password.len() < MIN_PASSWORD_BYTES {
        return Err(AuthError::Invalid("password must be at least 8 bytes"));
    }
    if password.len() > MAX_PASSWORD_BYTES {
        return Err(AuthError::Invalid("password must be at most 72 bytes"));
    }
    Ok(())
}

/// Runs bcrypt on the blocking pool: a hash takes tens to hundreds of
/// milliseconds and must not stall the async workers.
async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> T + Send + 'static,
) -> Result<T, AuthError> {
    tokio::task::spawn_blocking(f).await.map_err(|e| AuthError::Worker(e.to_string()))
}

#[tonic::async_trait]
impl AuthService for Auth {
    async fn register(
        &self,
        request: Request<RegisterRequest>,
    ) -> Result<Response<RegisterResponse>, Status> {
        let RegisterRequest { username, password } = request.into_inner();
        validate_username(&username)?;
        validate_password(&password)?;
        if self.store.user_by_name(&username).await?.is_some() {
            return Err(AuthError::UsernameTaken.into());
        }
        let cost = self.bcrypt_cost;
        let hash = blocking(move || bcrypt::hash(password, cost))
            .await?
            .map_err(|e| AuthError::Worker(e.to_string()))?;
        let user = self.store.create_user(&username, hash).await?;
        tracing::info!(user_id = user.id, "user registered");
        Ok(Response::new(RegisterResponse { user: Some(to_pb(&user)) }))
    }

    async fn login(&self, request: Request<LoginRequest>) -> Result<Response<TokenPair>, Status> {
        let LoginRequest { username, password } = request.into_inner();
        if username.is_empty()
            || password.is_empty()
            || password.len() > MAX_PASSWORD_BYTES
            || username.len() > 256
        {
            return Err(AuthError::Invalid(
                "username and password are required; password at most 72 bytes",
            )
            .into());
        }
        let user = self.store.user_by_name(&username).await?;
        let hash = match &user {
            Some(user) => user.password_hash.clone(),
            None => self.dummy_hash.as_str().to_string(),
        };
        let valid = blocking(move || bcrypt::verify(password, &hash).unwrap_or(false)).await?;
        match user {
            Some(user) if valid && user.banned_at_ms.is_some() => Err(AuthError::Banned.into()),
            Some(user) if valid => {
                let family = uuid::Uuid::now_v7().to_string();
                let pair = self.issue_pair(&user, family.clone()).await?;
                // A ban that landed while this login ran may have ended
                // every login before this one's tokens existed: look again.
                if self
                    .store
                    .users_by_ids(&[user.id])
                    .await?
                    .iter()
                    .any(|u| u.banned_at_ms.is_some())
                {
                    self.store.revoke_family(&family).await?;
                    return Err(AuthError::Banned.into());
                }
                Ok(Response::new(pair))
            }
            _ => Err(AuthError::BadCredentials.into()),
        }
    }

    async fn refresh(
        &self,
        request: Request<RefreshRequest>,
    ) -> Result<Response<TokenPair>, Status> {
        let token = request.into_inner().refresh_token;
        let hash = hash_refresh_token(&token);
        let row = self.store.refresh_row(&hash).await?.ok_or(AuthError::BadCredentials)?;
        if row.expires_at <= now_secs() {
            return Err(AuthError::BadCredentials.into());
        }
        // A spent token coming back means two parties hold it: end the
        // whole login, so the thief's newer tokens die with the owner's.
        if row.revoked || !self.store.spend_refresh(&hash).await? {
            tracing::warn!(user_id = row.user_id, "refresh token reused; revoking its login");
            self.store.revoke_family(&row.family).await?;
            return Err(AuthError::BadCredentials.into());
        }
        let user = self
            .store
            .users_by_ids(&[row.user_id])
            .await?
            .pop()
            .ok_or(AuthError::BadCredentials)?;
        if user.banned_at_ms.is_some() {
            return Err(AuthError::Banned.into());
        }
        Ok(Response::new(self.issue_pair(&user, row.family).await?))
    }

    async fn logout(
        &self,
        request: Request<LogoutRequest>,
    ) -> Result<Response<LogoutResponse>, Status> {
        let LogoutRequest { refresh_token, user_id } = request.into_inner();
        let row = self
            .store
            .refresh_row(&hash_refresh_token(&refresh_token))
            .await?
            .filter(|row| row.user_id as u64 == user_id)
            .ok_or(AuthError::BadCredentials)?;
        self.store.revoke_family(&row.family).await?;
        self.revoke_access(row.user_id).await?;
        tracing::info!(user_id, "logged out");
        Ok(Response::new(LogoutResponse {}))
    }

    async fn verify_token(
        &self,
        request: Request<VerifyTokenRequest>,
    ) -> Result<Response<VerifyTokenResponse>, Status> {
        let token = request.into_inner().access_token;
        let access = self.keys.verify_access(&token).ok_or(AuthError::BadCredentials)?;
        // Logout refuses every access token issued before it.
        let user = self
            .store
            .users_by_ids(&[access.user_id as i64])
            .await?
            .pop()
            .ok_or(AuthError::BadCredentials)?;
        if access.issued_at_ms < user.tokens_valid_after {
            return Err(AuthError::BadCredentials.into());
        }
        Ok(Response::new(VerifyTokenResponse {
            user_id: access.user_id,
            expires_at: access.expires_at,
            tokens_valid_after_ms: user.tokens_valid_after,
        }))
    }

    async fn get_users(
        &self,
        request: Request<GetUsersRequest>,
    ) -> Result<Response<GetUsersResponse>, Status> {
        let ids = request.into_inner().user_ids;
        if ids.len() > MAX_LOOKUP {
            return Err(AuthError::Invalid("at most 10000 ids per call").into());
        }
        let ids: Vec<i64> = ids.into_iter().filter_map(|id| i64::try_from(id).ok()).collect();
        let users = self.store.users_by_ids(&ids).await?;
        Ok(Response::new(GetUsersResponse { users: users.iter().map(to_pb).collect() }))
    }

    async fn find_user(&self, request: Request<FindUserRequest>) -> Result<Response<User>, Status> {
        let username = request.into_inner().username;
        let user = self.store.user_by_name(&username).await?.ok_or(AuthError::UnknownUser)?;
        Ok(Response::new(to_pb(&user)))
    }

    async fn revoke_user(
        &self,
        request: Request<RevokeUserRequest>,
    ) -> Result<Response<RevokeUserResponse>, Status> {
        let user_id = self.existing(request.into_inner().user_id).await?;
        let tokens_valid_after_ms = self.end_every_login(user_id).await?;
        tracing::info!(user_id, "every login revoked by an operator");
        Ok(Response::new(RevokeUserResponse { tokens_valid_after_ms }))
    }

    async fn set_banned(
        &self,
        request: Request<SetBannedRequest>,
    ) -> Result<Response<SetBannedResponse>, Status> {
        let SetBannedRequest { user_id, banned } = request.into_inner();
        let user_id = self.existing(user_id).await?;
        let banned_at_ms = banned.then(now_ms);
        // The ban is stored before the logins end, and a login looks for a
        // ban again once its tokens exist: one racing with the ban either
        // sees it or is ended with the rest.
        self.store.set_banned(user_id, banned_at_ms).await?;
        if banned {
            self.end_every_login(user_id).await?;
        }
        tracing::info!(user_id, banned, "ban changed by an operator");
        Ok(Response::new(SetBannedResponse { banned_at_ms: banned_at_ms.unwrap_or_default() }))
    }

    async fn record_presence(
        &self,
        request: Request<RecordPresenceRequest>,
    ) -> Result<Response<RecordPresenceResponse>, Status> {
        let RecordPresenceRequest { user_id, online, node_id, at_ms } = request.into_inner();
        self.store.record_presence(user_id, online, &node_id, at_ms).await?;
        Ok(Response::new(RecordPresenceResponse {}))
    }

    async fn list_revocations(
        &self,
        _: Request<ListRevocationsRequest>,
    ) -> Result<Response<ListRevocationsResponse>, Status> {
        // Every token issued before this has expired.
        let covers_since_ms = now_ms().saturating_sub(self.keys.access_ttl as i64 * 1000);
        let revocations = self
            .store
            .revoked_after(covers_since_ms)
            .await?
            .into_iter()
            .map(|(user_id, tokens_valid_after_ms)| Revocation {
                user_id: user_id as u64,
                tokens_valid_after_ms,
            })
            .collect();
        Ok(Response::new(ListRevocationsResponse { covers_since_ms, revocations }))
    }
}

impl Auth {
    /// The admin API of this service's webhook outbox.
    pub fn webhooks(&self) -> tern_webhook::Admin {
        self.webhooks.clone()
    }

    /// `user_id` as the store's key, when such a user exists.
    async fn existing(&self, user_id: u64) -> Result<i64, AuthError> {
        let id = i64::try_from(user_id).map_err(|_| AuthError::UnknownUser)?;
        match self.store.users_by_ids(&[id]).await?.is_empty() {
            true => Err(AuthError::UnknownUser),
            false => Ok(id),
        }
    }

    /// Ends every login of the user: all refresh tokens and the access
    /// tokens issued until now. Returns the new watermark.
    async fn end_every_login(&self, user_id: i64) -> Result<i64, AuthError> {
        self.store.revoke_all_refresh(user_id).await?;
        self.revoke_access(user_id).await
    }

    /// Refuses the user's access tokens issued until now and announces it
    /// to every gateway node, which closes the user's sockets. A gateway
    /// that missed this would accept the old tokens from its cache: the
    /// caller fails (and may be retried) unless the announcement went out.
    /// A node whose bus connection was down clears its cache when the
    /// connection comes back.
    async fn revoke_access(&self, user_id: i64) -> Result<i64, AuthError> {
        let valid_after_ms = self.store.revoke_access_tokens(user_id).await?;
        let revoked = Revoked { user_id: user_id as u64, valid_after_ms };
        self.bus
            .broadcast(BusEvent { event: Some(Event::Revoked(revoked)) })
            .await
            .map_err(|e| AuthError::Unavailable(e.to_string()))?;
        Ok(valid_after_ms)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn username_rules() {
        assert!(validate_username("alice_01.x-y").is_ok());
        assert!(validate_username("").is_err());
        assert!(validate_username(&"a".repeat(33)).is_err());
        assert!(validate_username("a b").is_err());
        assert!(validate_username("ünï").is_err());
    }

    #[test]
    fn password_rules() {
        assert!(validate_password("12345678").is_ok());
        assert!(validate_password("short").is_err());
        assert!(validate_password(&"p".repeat(72)).is_ok());
        assert!(validate_password(&"p".repeat(73)).is_err());
    }
}
