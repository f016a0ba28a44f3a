//! Auth errors and their one mapping to `tonic::Status`.

use tern_proto::{ErrorCode, Failure, ServiceError};

/// Everything that can go wrong in the auth service.
#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    /// Input breaks a rule; the text says which.
    #[error("{0}")]
    Invalid(&'static str),
    /// The username is taken.
    #[error("username already taken")]
    UsernameTaken,
    /// Wrong username or password, or a bad token.
    #[error("invalid credentials")]
    BadCredentials,
    /// No such user.
    #[error("no such user")]
    UnknownUser,
    /// An operator banned the user.
    #[error("this account is banned")]
    Banned,
    /// The database failed.
    #[error("database: {0}")]
    Db(#[from] sea_orm::DbErr),
    /// The bus could not carry a logout to the gateways.
    #[error("bus: {0}")]
    Unavailable(String),
    /// A blocking task (bcrypt) died.
    #[error("worker: {0}")]
    Worker(String),
}

impl ServiceError for AuthError {
    const SERVICE: &'static str = "auth";

    fn failure(&self) -> Failure<'_> {
        match self {
            AuthError::Invalid(_) => Failure::Refused(ErrorCode::BadRequest),
            AuthError::UsernameTaken => Failure::Refused(ErrorCode::Conflict),
            AuthError::BadCredentials => Failure::Refused(ErrorCode::Unauthenticated),
            AuthError::UnknownUser => Failure::Refused(ErrorCode::UnknownUser),
            AuthError::Banned => Failure::Refused(ErrorCode::Forbidden),
            AuthError::Db(error) => Failure::Storage(error),
            AuthError::Unavailable(error) => Failure::Unavailable("bus", error),
            AuthError::Worker(error) => Failure::Internal(error),
        }
    }
}

impl From<AuthError> for tonic::Status {
    fn from(error: AuthError) -> Self {
        error.into_status()
    }
}
