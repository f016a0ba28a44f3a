//! Offline errors and their one mapping to `tonic::Status`.

use tern_proto::{ErrorCode, Failure, ServiceError};

/// Everything that can go wrong in the offline service.
#[derive(Debug, thiserror::Error)]
pub enum OfflineError {
    /// Input breaks a rule.
    #[error("{0}")]
    Invalid(&'static str),
    /// The user has no cursor in this conversation: not a member.
    #[error("not a member of this conversation")]
    NotMember,
    /// The database failed.
    #[error("database: {0}")]
    Db(#[from] sea_orm::DbErr),
    /// The message service failed.
    #[error("dependency: {0}")]
    Peer(#[from] tonic::Status),
}

impl ServiceError for OfflineError {
    const SERVICE: &'static str = "offline";

    fn failure(&self) -> Failure<'_> {
        match self {
            OfflineError::Invalid(_) => Failure::Refused(ErrorCode::BadRequest),
            OfflineError::NotMember => Failure::Refused(ErrorCode::Forbidden),
            OfflineError::Db(error) => Failure::Storage(error),
            OfflineError::Peer(status) => Failure::Dependency(status),
        }
    }
}

impl From<OfflineError> for tonic::Status {
    fn from(error: OfflineError) -> Self {
        error.into_status()
    }
}
