//! Access tokens (HS256 JWT) and refresh tokens (random, stored hashed).

use crate::JwtSettings;
use jsonwebtoken::{Algorithm, EncodingKey, Header, encode};
use rand::RngCore;
use sha2::{Digest, Sha256};
use tern_runtime::access::{Access, AccessVerifier, Claims};
use tern_runtime::clock::{now_ms, now_secs};

/// Signs and checks access tokens.
pub struct TokenKeys {
    encoding: EncodingKey,
    verifier: AccessVerifier,
    issuer: String,
    audience: String,
    pub access_ttl: u64,
    pub refresh_ttl: u64,
}

impl TokenKeys {
    pub fn new(settings: &JwtSettings) -> Result<Self, jsonwebtoken::errors::Error> {
        Ok(Self {
            encoding: EncodingKey::from_secret(settings.key.secret.expose().as_bytes())?,
            verifier: AccessVerifier::new(&settings.key)?,
            issuer: settings.key.issuer.clone(),
            audience: settings.key.audience.clone(),
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

    /// The subject and times of a valid access token (not yet checked
    /// against the user's revocation watermark).
    pub fn verify_access(&self, token: &str) -> Option<Access> {
        self.verifier.verify(token)
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
    use tern_runtime::{Secret, access::TokenKey};

    fn keys(secret: &str) -> TokenKeys {
        let key = TokenKey { secret: Secret::new(secret), ..Default::default() };
        TokenKeys::new(&JwtSettings { key, ..Default::default() }).unwrap()
    }

    #[test]
    fn round_trip() {
        let k = keys("0123456789abcdef0123456789abcdef");
        let token = k.issue_access(42);
        assert_eq!(k.verify_access(&token).map(|a| a.user_id), Some(42));
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
        let key = TokenKey {
            secret: Secret::new("0123456789abcdef0123456789abcdef"),
            ..Default::default()
        };
        let mut settings = JwtSettings { key, ..Default::default() };
        settings.access_ttl_secs = 0;
        let k = TokenKeys::new(&settings).unwrap();
        let token = k.issue_access(1);
        std::thread::sleep(std::time::Duration::from_millis(1100));
        assert!(k.verify_access(&token).is_none());
    }
}
