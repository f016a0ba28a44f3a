//! Access tokens (HS256 JWT) and refresh tokens (random, stored hashed).

use crate::{
    JwtSettings,
    store::{now_ms, now_secs},
};
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation, decode, encode};
use rand::RngCore;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// What an access token says.
#[derive(Debug, Serialize, Deserialize)]
struct Claims {
    /// The user id, as text (RFC 7519 wants a string).
    sub: String,
    iss: String,
    aud: String,
    iat: i64,
    nbf: i64,
    exp: i64,
    /// Token kind; only `access` is accepted where an access token is expected.
    typ: String,
    /// Issue time in milliseconds, so a logout can refuse exactly the tokens
    /// issued before it (`iat` has only second precision). Tokens without
    /// it count from the start of their `iat` second.
    #[serde(default)]
    iat_ms: i64,
    /// Unique id, so two tokens issued in the same second differ.
    jti: String,
}

/// Signs and checks access tokens.
pub struct TokenKeys {
    encoding: EncodingKey,
    decoding: DecodingKey,
    validation: Validation,
    issuer: String,
    audience: String,
    pub access_ttl: u64,
    pub refresh_ttl: u64,
}

impl TokenKeys {
    pub fn new(settings: &JwtSettings) -> Result<Self, jsonwebtoken::errors::Error> {
        let secret = settings.secret.expose().as_bytes();
        // Pin the algorithm: a token claiming `none` or RS256 is refused.
        let mut validation = Validation::new(Algorithm::HS256);
        validation.set_issuer(&[&settings.issuer]);
        validation.set_audience(&[&settings.audience]);
        validation.set_required_spec_claims(&["exp", "nbf", "iss", "aud", "sub"]);
        validation.validate_nbf = true;
        // No leeway: the gateway closes sockets at `exp` exactly, and a token
        // accepted after it would be kicked at once.
        validation.leeway = 0;
        Ok(Self {
            encoding: EncodingKey::from_secret(secret)?,
            decoding: DecodingKey::from_secret(secret)?,
            validation,
            issuer: settings.issuer.clone(),
            audience: settings.audience.clone(),
            access_ttl: settings.access_ttl_secs,
            refresh_ttl: settings.refresh_ttl_secs,
        })
    }

    /// A fresh access token for `user_id`.
    pub fn issue_access(&self, user_id: u64) -> String {
        let now = now_secs();
        let claims = Claims {
            sub: user_id.to_string(),
            iss: self.issuer.clone(),
            aud: self.audience.clone(),
            iat: now,
            nbf: now,
            exp: now + self.access_ttl as i64,
            typ: "access".into(),
            iat_ms: now_ms(),
            jti: uuid::Uuid::now_v7().to_string(),
        };
        encode(&Header::new(Algorithm::HS256), &claims, &self.encoding)
            .expect("HS256 signing with an in-memory key cannot fail")
    }

    /// The user id, expiry (Unix s) and issue time (Unix ms) of a valid
    /// access token.
    pub fn verify_access(&self, token: &str) -> Option<(u64, i64, i64)> {
        let data = decode::<Claims>(token, &self.decoding, &self.validation).ok()?;
        if data.claims.typ != "access" {
            return None;
        }
        let issued_ms =
            if data.claims.iat_ms > 0 { data.claims.iat_ms } else { data.claims.iat * 1000 };
        Some((data.claims.sub.parse().ok()?, data.claims.exp, issued_ms))
    }
}

/// A new refresh token: the value for the client and the hash to store.
pub fn new_refresh_token() -> (String, String) {
    let mut bytes = [0u8; 32];
    rand::rng().fill_bytes(&mut bytes);
    let token = hex::encode(bytes);
    let hash = hash_refresh_token(&token);
    (token, hash)
}

/// Refresh tokens are stored as SHA-256 hashes: a leaked table grants nothing.
pub fn hash_refresh_token(token: &str) -> String {
    hex::encode(Sha256::digest(token.as_bytes()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use tern_runtime::Secret;

    fn keys(secret: &str) -> TokenKeys {
        TokenKeys::new(&JwtSettings { secret: Secret::new(secret), ..Default::default() }).unwrap()
    }

    #[test]
    fn round_trip() {
        let k = keys("0123456789abcdef0123456789abcdef");
        let token = k.issue_access(42);
        assert_eq!(k.verify_access(&token).map(|(u, _, _)| u), Some(42));
    }

    #[test]
    fn foreign_or_tampered_tokens_fail() {
        let k = keys("0123456789abcdef0123456789abcdef");
        let other = keys("fedcba9876543210fedcba9876543210");
        assert!(k.verify_access(&other.issue_access(42)).is_none());
        let mut token = k.issue_access(42);
        token.push('x');
        assert!(k.verify_access(&token).is_none());
        assert!(k.verify_access("not.a.jwt").is_none());
    }

    #[test]
    fn expired_tokens_fail() {
        let mut settings = JwtSettings {
            secret: Secret::new("0123456789abcdef0123456789abcdef"),
            ..Default::default()
        };
        settings.access_ttl_secs = 0;
        let mut k = TokenKeys::new(&settings).unwrap();
        k.validation.leeway = 0;
        let token = k.issue_access(1);
        std::thread::sleep(std::time::Duration::from_millis(1100));
        assert!(k.verify_access(&token).is_none());
    }
}
