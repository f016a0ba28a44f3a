//! Access tokens as every holder of the signing key reads them: the claims
//! the auth service signs (HS256 JWT), and their check. The auth service
//! issues them; a gateway given the same key checks them itself, so a
//! connect costs no call (see `tern-gateway`'s `tokens` module for the
//! revocation watermarks that complete the check).

use crate::Secret;
use jsonwebtoken::{Algorithm, DecodingKey, Validation, decode};
use serde::{Deserialize, Serialize};

/// Which key signs access tokens and which `iss`/`aud` they carry
/// (`TERN__AUTH__JWT__*` on the auth service; the same three on a gateway
/// that checks tokens itself).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default)]
pub struct TokenKey {
    /// HS256 key, at least 32 bytes.
    pub secret: Secret,
    /// `iss` claim written and required.
    pub issuer: String,
    /// `aud` claim written and required.
    pub audience: String,
}

impl Default for TokenKey {
    fn default() -> Self {
        Self { secret: Secret::default(), issuer: "tern".into(), audience: "tern-clients".into() }
    }
}

/// What an access token says.
#[derive(Debug, Serialize, Deserialize)]
pub struct Claims {
    /// The user id, as text (RFC 7519 wants a string).
    pub sub: String,
    pub iss: String,
    pub aud: String,
    pub iat: i64,
    pub nbf: i64,
    pub exp: i64,
    /// Token kind; only `access` is accepted where an access token is expected.
    pub typ: String,
    /// Issue time in milliseconds, so a logout can refuse exactly the tokens
    /// issued before it (`iat` has only second precision). Tokens without
    /// it count from the start of their `iat` second.
    #[serde(default)]
    pub iat_ms: i64,
    /// Unique id, so two tokens issued in the same second differ.
    pub jti: String,
}

/// A valid access token's subject and times.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Access {
    pub user_id: u64,
    /// Unix seconds.
    pub expires_at: i64,
    /// Unix milliseconds; a logout refuses tokens issued before it.
    pub issued_at_ms: i64,
}

/// Checks signature, algorithm, issuer, audience, `nbf` and `exp` (no
/// leeway: gateways close sockets at `exp` exactly).
pub struct AccessVerifier {
    decoding: DecodingKey,
    validation: Validation,
}

impl AccessVerifier {
    pub fn new(key: &TokenKey) -> Result<Self, jsonwebtoken::errors::Error> {
        // Pin the algorithm: a token claiming `none` or RS256 is refused.
        let mut validation = Validation::new(Algorithm::HS256);
        validation.set_issuer(&[&key.issuer]);
        validation.set_audience(&[&key.audience]);
        validation.set_required_spec_claims(&["exp", "nbf", "iss", "aud", "sub"]);
        validation.validate_nbf = true;
        validation.leeway = 0;
        Ok(Self { decoding: DecodingKey::from_secret(key.secret.expose().as_bytes())?, validation })
    }

    /// The token's subject and times, if it is a valid access token. It may
    /// still have been revoked by a logout: compare `issued_at_ms` with the
    /// user's watermark.
    pub fn verify(&self, token: &str) -> Option<Access> {
        let claims = decode::<Claims>(token, &self.decoding, &self.validation).ok()?.claims;
        if claims.typ != "access" {
            return None;
        }
        let issued_at_ms = if claims.iat_ms > 0 { claims.iat_ms } else { claims.iat * 1000 };
        Some(Access { user_id: claims.sub.parse().ok()?, expires_at: claims.exp, issued_at_ms })
    }
}
