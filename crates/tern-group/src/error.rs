//! Group errors and their one mapping to `tonic::Status`.

use tern_proto::{ErrorCode, Failure, ServiceError};

/// Everything that can go wrong in the group service.
#[derive(Debug, thiserror::Error)]
pub enum GroupError {
    /// Input breaks a rule.
    #[error("{0}")]
    Invalid(String),
    /// No such group.
    #[error("no such group")]
    UnknownGroup,
    /// Some user ids do not exist.
    #[error("unknown user ids: {0:?}")]
    UnknownUsers(Vec<u64>),
    /// Only the owner may do this.
    #[error("only the group's owner can manage its members")]
    NotOwner,
    /// The owner tried to leave.
    #[error("the owner cannot leave the group")]
    OwnerCannotLeave,
    /// The database failed.
    #[error("database: {0}")]
    Db(#[from] sea_orm::DbErr),
    /// A service group depends on failed.
    #[error("dependency: {0}")]
    Peer(#[from] tonic::Status),
}

impl ServiceError for GroupError {
    const SERVICE: &'static str = "group";

    fn failure(&self) -> Failure<'_> {
        match self {
            GroupError::Invalid(_) => Failure::Refused(ErrorCode::BadRequest),
            GroupError::UnknownGroup => Failure::Refused(ErrorCode::UnknownGroup),
            GroupError::UnknownUsers(_) => Failure::Refused(ErrorCode::UnknownUser),
            GroupError::NotOwner | GroupError::OwnerCannotLeave => {
                Failure::Refused(ErrorCode::Forbidden)
            }
            GroupError::Db(error) => Failure::Storage(error),
            GroupError::Peer(status) => Failure::Dependency(status),
        }
    }
}

impl From<GroupError> for tonic::Status {
    fn from(error: GroupError) -> Self {
        error.into_status()
    }
}
