//! Access tokens checked at the gateway. With the signing key
//! (`TERN__GATEWAY__JWT__*`; the embedded server passes the auth service's)
//! a token's signature and times are checked here in microseconds, and the
//! only state the check needs, the user's revocation watermark (a logout
//! refuses the tokens issued before it), is cached per user. So a connect
//! or an API call of a user seen before costs no call to the auth service
//! and no storage read. Without the key every check asks the auth service.
//!
//! The cache stays right because the auth service broadcasts every logout
//! on the bus ([`Tokens::revoked`]) and fails the logout when it cannot;
//! a node whose bus connection dropped may have missed one, so it forgets
//! every watermark when the connection comes back ([`Tokens::forget_all`]).

use crate::error::ApiError;
use quick_cache::sync::Cache;
use std::sync::{
    Mutex,
    atomic::{AtomicU64, Ordering::SeqCst},
};
use tern_proto::{ErrorCode, clients::AuthClient, pb::auth::VerifyTokenRequest};
use tern_runtime::{
    access::{AccessVerifier, TokenKey},
    grpc::GrpcChannel,
};

/// Users whose revocation watermark a node keeps (16 bytes each plus the
/// cache's overhead); past it the least recently used are asked for again.
pub const WATERMARK_CACHE_USERS: usize = 200_000;

/// Who a valid token belongs to.
#[derive(Debug, Clone, Copy)]
pub struct Verified {
    pub user_id: u64,
    /// Unix seconds; the session is closed then.
    pub expires_at: i64,
}

/// Checks access tokens for one gateway node.
pub struct Tokens {
    /// `None`: no key configured, every check asks the auth service.
    verifier: Option<AccessVerifier>,
    /// User → Unix ms before which the user's tokens are revoked.
    watermarks: Cache<u64, i64>,
    /// Bumped by every revocation and reset, so an answer the auth service
    /// gave before one of them is not cached over it.
    epoch: AtomicU64,
    /// Serializes writes to `watermarks` (each compares, then inserts).
    writing: Mutex<()>,
}

impl Tokens {
    pub fn new(key: &TokenKey) -> anyhow::Result<Self> {
        let verifier = match key.secret.expose().len() {
            0 => None,
            n if n < 32 => anyhow::bail!("gateway jwt.secret must be at least 32 bytes"),
            _ => Some(AccessVerifier::new(key)?),
        };
        Ok(Self {
            verifier,
            watermarks: Cache::new(WATERMARK_CACHE_USERS),
            epoch: AtomicU64::new(0),
            writing: Mutex::new(()),
        })
    }

    /// Whether tokens are checked here (a key is configured).
    pub fn checks_locally(&self) -> bool {
        self.verifier.is_some()
    }

    /// The token's user and expiry, or `unauthenticated` for a malformed,
    /// forged, expired or revoked token.
    pub async fn verify(
        &self,
        auth: &AuthClient<GrpcChannel>,
        token: &str,
    ) -> Result<Verified, ApiError> {
        let Some(verifier) = &self.verifier else {
            return ask(auth, token).await.map(|(verified, _)| verified);
        };
        let access = verifier.verify(token).ok_or_else(refused)?;
        let watermark = match self.watermarks.get(&access.user_id) {
            Some(watermark) => watermark,
            None => {
                let epoch = self.epoch.load(SeqCst);
                // The auth service reads the user (it may not exist any
                // more) and applies the watermark itself.
                let (_, watermark) = ask(auth, token).await?;
                self.remember(access.user_id, watermark, Some(epoch));
                watermark
            }
        };
        if access.issued_at_ms < watermark {
            return Err(refused());
        }
        Ok(Verified { user_id: access.user_id, expires_at: access.expires_at })
    }

    /// A logout (from the bus): the user's tokens issued before
    /// `valid_after_ms` are refused from now on.
    pub fn revoked(&self, user_id: u64, valid_after_ms: i64) {
        self.remember(user_id, valid_after_ms, None);
    }

    /// The bus connection was lost and a logout may have been missed.
    pub fn forget_all(&self) {
        let _writing = self.writing.lock().expect("watermark lock poisoned");
        self.epoch.fetch_add(1, SeqCst);
        self.watermarks.clear();
    }

    /// Keeps the higher of the cached and the given watermark. An answer
    /// read at `epoch` is dropped if a revocation or reset came since.
    fn remember(&self, user_id: u64, watermark: i64, read_at: Option<u64>) {
        let _writing = self.writing.lock().expect("watermark lock poisoned");
        match read_at {
            Some(epoch) if epoch != self.epoch.load(SeqCst) => return,
            Some(_) => {}
            None => {
                self.epoch.fetch_add(1, SeqCst);
            }
        }
        let kept = self.watermarks.get(&user_id).map_or(watermark, |w| w.max(watermark));
        self.watermarks.insert(user_id, kept);
    }
}

fn refused() -> ApiError {
    ApiError::new(ErrorCode::Unauthenticated, "invalid credentials")
}

/// The auth service's check: the user and expiry, and the watermark.
async fn ask(auth: &AuthClient<GrpcChannel>, token: &str) -> Result<(Verified, i64), ApiError> {
    let answer = auth
        .clone()
        .verify_token(VerifyTokenRequest { access_token: token.to_string() })
        .await?
        .into_inner();
    let verified = Verified { user_id: answer.user_id, expires_at: answer.expires_at };
    Ok((verified, answer.tokens_valid_after_ms))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tokens() -> Tokens {
        let key = TokenKey {
            secret: tern_runtime::Secret::new("0123456789abcdef0123456789abcdef"),
            ..Default::default()
        };
        Tokens::new(&key).unwrap()
    }

    #[test]
    fn a_revocation_is_never_lowered() {
        let t = tokens();
        t.revoked(7, 2_000);
        t.remember(7, 1_000, Some(t.epoch.load(SeqCst)));
        assert_eq!(t.watermarks.get(&7), Some(2_000));
        t.revoked(7, 1_500);
        assert_eq!(t.watermarks.get(&7), Some(2_000));
    }

    #[test]
    fn an_answer_read_before_a_revocation_is_not_cached() {
        let t = tokens();
        let read_at = t.epoch.load(SeqCst);
        // A logout of another user arrives while the answer is in flight.
        t.revoked(8, 5_000);
        t.remember(7, 0, Some(read_at));
        assert_eq!(t.watermarks.get(&7), None);
        // Read after it, the answer is kept.
        t.remember(7, 0, Some(t.epoch.load(SeqCst)));
        assert_eq!(t.watermarks.get(&7), Some(0));
    }

    #[test]
    fn a_lost_bus_forgets_every_watermark() {
        let t = tokens();
        t.revoked(7, 2_000);
        let read_at = t.epoch.load(SeqCst);
        t.forget_all();
        assert_eq!(t.watermarks.get(&7), None);
        t.remember(9, 0, Some(read_at));
        assert_eq!(t.watermarks.get(&9), None);
    }

    #[test]
    fn a_short_key_is_refused_and_no_key_asks_the_auth_service() {
        let short = TokenKey { secret: tern_runtime::Secret::new("short"), ..Default::default() };
        assert!(Tokens::new(&short).is_err());
        assert!(!Tokens::new(&TokenKey::default()).unwrap().checks_locally());
        assert!(tokens().checks_locally());
    }
}
