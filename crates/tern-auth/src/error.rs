//! Auth errors and their one mapping to `tonic::Status`.

use tern_proto::ErrorCode;

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

impl From<AuthError> for tonic::Status {
    fn from(error: AuthError) -> Self {
        match error {
            AuthError::Invalid(why) => ErrorCode::BadRequest.status(why),
            AuthError::UsernameTaken => ErrorCode::Conflict.status("username already taken"),
            AuthError::BadCredentials => ErrorCode::Unauthenticated.status("invalid credentials"),
            AuthError::UnknownUser => ErrorCode::UnknownUser.status("no such user"),
            AuthError::Db(error) => {
                metrics::counter!("tern_db_errors_total", "service" => "auth").increment(1);
                tracing::error!(%error, "auth database error");
                ErrorCode::Unavailable.status("storage unavailable, retry")
            }
            AuthError::Unavailable(error) => {
                tracing::warn!(%error, "logout not announced");
                ErrorCode::Unavailable.status("bus unavailable, retry")
            }
            AuthError::Worker(error) => {
                tracing::error!(%error, "auth worker failed");
                ErrorCode::Internal.status("internal error")
            }
        }
    }
}
