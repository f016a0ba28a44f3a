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
//!
//! The same broadcast spares the first check of a user new to the node: a
//! token issued after the node started listening (less [`CLOCK_SKEW_MS`])
//! can only have been revoked by a logout the node heard, so it needs no
//! watermark from the auth service. And once listening, the node asks the
//! auth service once for every revocation that can still refuse an
//! unexpired token (`ListRevocations`, [`Tokens::learn_revocations`]):
//! with those, every unexpired token is checked without a call. Clients
//! reconnecting to another node after theirs failed, or to a node that
//! has just started, cost no call and no storage read.

use crate::error::ApiError;
use backon::{ExponentialBuilder, Retryable};
use quick_cache::sync::Cache;
use std::{
    collections::HashMap,
    sync::{
        Mutex,
        atomic::{AtomicI64, AtomicU64, Ordering::SeqCst},
    },
    time::Duration,
};
use tern_proto::{
    ErrorCode,
    clients::AuthClient,
    pb::auth::{ListRevocationsRequest, VerifyTokenRequest},
};
use tern_runtime::clock::now_ms;
use tern_runtime::{
    access::{AccessVerifier, TokenKey},
    grpc::GrpcChannel,
};

/// Users whose revocation watermark a node keeps (16 bytes each plus the
/// cache's overhead); past it the least recently used are asked for again.
pub const WATERMARK_CACHE_USERS: usize = 200_000;

/// How far the auth service's clock may be ahead of or behind this node's.
pub const CLOCK_SKEW_MS: i64 = 5_000;

/// Logouts a node keeps while listening; past it the node starts over as
/// if its bus connection had dropped (see [`Tokens::forget_all`]).
const MAX_HEARD: usize = 1_000_000;

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
    /// User → Unix ms before which the user's tokens are revoked, as the
    /// auth service answered (or a logout since).
    watermarks: Cache<u64, i64>,
    /// Every logout heard on the bus since the node started listening,
    /// and the revocations the auth service listed then: user → watermark.
    /// Never evicted, so it speaks for every user. Its lock also
    /// serializes writes to `watermarks` (each compares, then inserts).
    heard: Mutex<HashMap<u64, i64>>,
    /// Unix ms (the auth service's clock, as tokens carry it): a token
    /// issued at or after this can only be refused by a watermark in
    /// `heard` (`i64::MAX`: not listening yet).
    trusted_from_ms: AtomicI64,
    /// Bumped each time the node starts listening again, so a revocation
    /// list asked for before a reset is not applied after it.
    generation: AtomicU64,
    /// Bumped by every revocation and reset, so an answer the auth service
    /// gave before one of them is not cached over it.
    epoch: AtomicU64,
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
            heard: Mutex::default(),
            trusted_from_ms: AtomicI64::new(i64::MAX),
            generation: AtomicU64::new(0),
            epoch: AtomicU64::new(0),
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
        // Read before `heard`: a list taken in between has its watermarks
        // in `heard` before it lowers this.
        let trusted_from = self.trusted_from_ms.load(SeqCst);
        let heard = self.heard.lock().expect("heard lock poisoned").get(&access.user_id).copied();
        let watermark = match self.watermarks.get(&access.user_id) {
            Some(watermark) => watermark,
            // Issued while this node was listening, or covered by the list
            // it asked for then: any logout that refuses it is in `heard`.
            None if access.issued_at_ms >= trusted_from => heard.unwrap_or(i64::MIN),
            None => {
                let epoch = self.epoch.load(SeqCst);
                // The auth service reads the user (it may not exist any
                // more) and applies the watermark itself.
                let (_, watermark) = ask(auth, token).await?;
                self.remember(access.user_id, watermark, epoch);
                watermark
            }
        };
        if access.issued_at_ms < watermark.max(heard.unwrap_or(i64::MIN)) {
            return Err(refused());
        }
        Ok(Verified { user_id: access.user_id, expires_at: access.expires_at })
    }

    /// The node's bus subscription is up: from now on it hears every
    /// logout. Returns the generation [`Tokens::covered`] takes.
    pub fn listening(&self) -> u64 {
        self.trusted_from_ms.store(now_ms().saturating_add(CLOCK_SKEW_MS), SeqCst);
        self.generation.fetch_add(1, SeqCst) + 1
    }

    /// Asks the auth service for the revocations that can still refuse an
    /// unexpired token, once the node is listening (see the module's
    /// documentation), retrying until it answers or the node starts
    /// listening again. Until then tokens issued before the node started
    /// listening are checked by a call, as without the list.
    pub async fn learn_revocations(&self, auth: &AuthClient<GrpcChannel>) {
        if self.verifier.is_none() {
            return;
        }
        let generation = self.generation.load(SeqCst);
        let ask = || async { auth.clone().list_revocations(ListRevocationsRequest {}).await };
        let backoff = ExponentialBuilder::default()
            .with_min_delay(Duration::from_millis(100))
            .with_max_delay(Duration::from_secs(5))
            .without_max_times()
            .with_jitter();
        let answer = ask
            .retry(backoff)
            .when(|_| self.generation.load(SeqCst) == generation)
            .notify(|status, _| {
                tracing::warn!(%status, "revocations not listed yet; older tokens are checked by a call")
            })
            .await;
        let Ok(list) = answer else { return };
        let list = list.into_inner();
        let revocations = list.revocations.iter().map(|r| (r.user_id, r.tokens_valid_after_ms));
        if self.covered(generation, list.covers_since_ms, revocations) {
            tracing::debug!(revocations = list.revocations.len(), "revocations learned");
        }
    }

    /// Takes the auth service's list, asked for at `generation`: every
    /// token issued from `covers_since_ms` on is refused only by these
    /// watermarks or by a logout heard since. Not applied (false) when the
    /// node started listening again in between, or when the list would
    /// pass the bound of what `heard` keeps.
    fn covered(
        &self,
        generation: u64,
        covers_since_ms: i64,
        revocations: impl ExactSizeIterator<Item = (u64, i64)>,
    ) -> bool {
        let mut heard = self.heard.lock().expect("heard lock poisoned");
        if generation != self.generation.load(SeqCst) || heard.len() + revocations.len() > MAX_HEARD
        {
            return false;
        }
        for (user_id, valid_after_ms) in revocations {
            let kept = heard.entry(user_id).or_insert(valid_after_ms);
            *kept = (*kept).max(valid_after_ms);
        }
        self.trusted_from_ms.fetch_min(covers_since_ms, SeqCst);
        true
    }

    /// A logout (from the bus): the user's tokens issued before
    /// `valid_after_ms` are refused from now on.
    pub fn revoked(&self, user_id: u64, valid_after_ms: i64) {
        let mut heard = self.heard.lock().expect("heard lock poisoned");
        if heard.len() >= MAX_HEARD {
            // The node starts over; the auth service answers for this
            // logout from now on.
            self.reset(&mut heard);
            return;
        }
        let kept = heard.entry(user_id).or_insert(valid_after_ms);
        *kept = (*kept).max(valid_after_ms);
        self.epoch.fetch_add(1, SeqCst);
        self.raise(user_id, valid_after_ms);
    }

    /// The bus connection was lost (and is back) and a logout may have been
    /// missed: every watermark is asked for again, and only tokens issued
    /// from now on are trusted without asking.
    pub fn forget_all(&self) {
        self.reset(&mut self.heard.lock().expect("heard lock poisoned"));
    }

    fn reset(&self, heard: &mut HashMap<u64, i64>) {
        self.epoch.fetch_add(1, SeqCst);
        self.watermarks.clear();
        heard.clear();
        self.listening();
    }

    /// Caches the auth service's answer, read at `epoch`, unless a
    /// revocation or reset came since.
    fn remember(&self, user_id: u64, watermark: i64, read_at: u64) {
        let _heard = self.heard.lock().expect("heard lock poisoned");
        if read_at == self.epoch.load(SeqCst) {
            self.raise(user_id, watermark);
        }
    }

    /// Keeps the higher of the cached and the given watermark; called with
    /// `heard` locked.
    fn raise(&self, user_id: u64, watermark: i64) {
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
    use tern_proto::{clients::Local, pb::auth::auth_service_server::AuthService};
    use tern_runtime::access::Claims;

    const SECRET: &str = "0123456789abcdef0123456789abcdef";

    fn tokens() -> Tokens {
        let key = TokenKey { secret: tern_runtime::Secret::new(SECRET), ..Default::default() };
        Tokens::new(&key).unwrap()
    }

    /// An access token for `user` issued at `iat_ms`.
    fn token(user: u64, iat_ms: i64) -> String {
        let key = TokenKey::default();
        let now = tern_runtime::clock::now_secs();
        let claims = Claims {
            sub: user.to_string(),
            iss: key.issuer,
            aud: key.audience,
            iat: now,
            nbf: now,
            exp: now + 60,
            typ: "access".into(),
            iat_ms,
            jti: "test".into(),
        };
        let signing = jsonwebtoken::EncodingKey::from_secret(SECRET.as_bytes()).unwrap();
        jsonwebtoken::encode(&jsonwebtoken::Header::default(), &claims, &signing).unwrap()
    }

    /// An auth service that answers nothing: a check that asks it fails
    /// with `unavailable`.
    fn no_auth() -> AuthClient<GrpcChannel> {
        AuthClient::Local(Local::<dyn AuthService>::unbound())
    }

    #[tokio::test]
    async fn tokens_issued_while_listening_need_no_call_until_revoked() {
        let t = tokens();
        let now = now_ms();
        let (old, new) = (token(7, now - 60_000), token(7, now + CLOCK_SKEW_MS + 1));
        // Not listening yet: every first check asks the auth service.
        let asked = t.verify(&no_auth(), &new).await.unwrap_err();
        assert_eq!(asked.code, ErrorCode::Unavailable);
        t.listening();
        assert_eq!(t.verify(&no_auth(), &new).await.unwrap().user_id, 7);
        // Issued before the node listened: it may have missed the logout.
        assert_eq!(t.verify(&no_auth(), &old).await.unwrap_err().code, ErrorCode::Unavailable);
        // A logout heard after the token was issued refuses it.
        t.revoked(7, now + CLOCK_SKEW_MS + 2);
        assert_eq!(t.verify(&no_auth(), &new).await.unwrap_err().code, ErrorCode::Unauthenticated);
        // Forged or foreign tokens never get as far as a call.
        let forged = format!("{new}x");
        assert_eq!(
            t.verify(&no_auth(), &forged).await.unwrap_err().code,
            ErrorCode::Unauthenticated
        );
    }

    #[tokio::test]
    async fn the_listed_revocations_cover_tokens_issued_before_the_node_listened() {
        let t = tokens();
        let now = now_ms();
        let generation = t.listening();
        let (revoked, kept) = (token(7, now - 2_000), token(8, now - 2_000));
        // Issued before the node listened: without the list, each asks.
        assert_eq!(t.verify(&no_auth(), &kept).await.unwrap_err().code, ErrorCode::Unavailable);
        // The list covers the last 10 s: 7 logged out a second ago.
        assert!(t.covered(generation, now - 10_000, [(7, now - 1_000)].into_iter()));
        assert_eq!(t.verify(&no_auth(), &kept).await.unwrap().user_id, 8);
        assert_eq!(
            t.verify(&no_auth(), &revoked).await.unwrap_err().code,
            ErrorCode::Unauthenticated
        );
        // Older than what the list covers: asked for, as before.
        let older = token(8, now - 20_000);
        assert_eq!(t.verify(&no_auth(), &older).await.unwrap_err().code, ErrorCode::Unavailable);
    }

    #[tokio::test]
    async fn a_list_asked_for_before_the_bus_was_lost_is_not_applied() {
        let t = tokens();
        let now = now_ms();
        let generation = t.listening();
        t.forget_all();
        assert!(!t.covered(generation, now - 10_000, std::iter::empty()));
        let kept = token(8, now - 2_000);
        assert_eq!(t.verify(&no_auth(), &kept).await.unwrap_err().code, ErrorCode::Unavailable);
    }

    #[test]
    fn a_revocation_is_never_lowered() {
        let t = tokens();
        t.revoked(7, 2_000);
        t.remember(7, 1_000, t.epoch.load(SeqCst));
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
        t.remember(7, 0, read_at);
        assert_eq!(t.watermarks.get(&7), None);
        // Read after it, the answer is kept.
        t.remember(7, 0, t.epoch.load(SeqCst));
        assert_eq!(t.watermarks.get(&7), Some(0));
    }

    #[test]
    fn a_lost_bus_forgets_every_watermark() {
        let t = tokens();
        t.revoked(7, 2_000);
        let read_at = t.epoch.load(SeqCst);
        t.forget_all();
        assert_eq!(t.watermarks.get(&7), None);
        t.remember(9, 0, read_at);
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
