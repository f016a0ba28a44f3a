//! The service credential: a shared token every internal gRPC call carries
//! (`authorization: Bearer <token>`), so only Tern's own processes and the
//! backends given the token can call the services. Health checks are exempt:
//! probes carry no credentials.

use crate::Secret;
use std::{
    convert::Infallible,
    sync::Arc,
    task::{Context, Poll},
};
use tonic::body::Body;
use tower::{Layer, Service};

/// Shortest token accepted.
pub const MIN_TOKEN_BYTES: usize = 32;

/// The `authorization` value for `token`.
pub fn header_value(token: &Secret) -> http::HeaderValue {
    let mut value = http::HeaderValue::from_str(&format!("Bearer {}", token.expose()))
        .expect("tokens are checked to be printable ASCII");
    value.set_sensitive(true);
    value
}

/// Checks that a configured service token is usable.
pub fn validate(token: &Secret) -> Result<(), String> {
    validate_named("service_token", token)
}

/// Checks that the bearer token configured as `name` is usable: at least
/// [`MIN_TOKEN_BYTES`] of printable ASCII.
pub fn validate_named(name: &str, token: &Secret) -> Result<(), String> {
    let t = token.expose();
    if t.len() < MIN_TOKEN_BYTES {
        return Err(format!("{name} must be at least {MIN_TOKEN_BYTES} bytes"));
    }
    if !t.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(format!("{name} must be printable ASCII without spaces"));
    }
    Ok(())
}

/// Refuses calls without the service token.
#[derive(Clone)]
pub struct RequireToken {
    expected: Arc<Vec<u8>>,
}

impl RequireToken {
    pub fn new(token: &Secret) -> Self {
        Self { expected: Arc::new(format!("Bearer {}", token.expose()).into_bytes()) }
    }
}

impl<S> Layer<S> for RequireToken {
    type Service = Guarded<S>;

    fn layer(&self, inner: S) -> Guarded<S> {
        Guarded { inner, expected: self.expected.clone() }
    }
}

/// A service behind [`RequireToken`].
#[derive(Clone)]
pub struct Guarded<S> {
    inner: S,
    expected: Arc<Vec<u8>>,
}

/// Compares without stopping at the first difference, so the time taken
/// does not reveal how much of a guess was right.
pub fn same(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

impl<S, B> Service<http::Request<B>> for Guarded<S>
where
    S: Service<http::Request<B>, Response = http::Response<Body>, Error = Infallible>,
    S::Future: Send + 'static,
{
    type Response = http::Response<Body>;
    type Error = Infallible;
    type Future = futures::future::Either<
        S::Future,
        std::future::Ready<Result<http::Response<Body>, Infallible>>,
    >;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        let exempt = request.uri().path().starts_with("/grpc.health.v1.Health/");
        let presented = request.headers().get(http::header::AUTHORIZATION).map(|v| v.as_bytes());
        if exempt || presented.is_some_and(|p| same(p, &self.expected)) {
            futures::future::Either::Left(self.inner.call(request))
        } else {
            let status = tonic::Status::unauthenticated("missing or wrong service credential");
            futures::future::Either::Right(std::future::ready(Ok(status.into_http())))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_must_be_long_and_plain() {
        assert!(validate(&Secret::new("x".repeat(32))).is_ok());
        assert!(validate(&Secret::new("x".repeat(31))).is_err());
        assert!(validate(&Secret::new(format!("{} ", "x".repeat(32)))).is_err());
    }

    #[test]
    fn comparison_is_exact() {
        assert!(same(b"abc", b"abc"));
        assert!(!same(b"abc", b"abd"));
        assert!(!same(b"abc", b"abcd"));
    }
}
