//! Group errors and their one mapping to `tonic::Status`.

use tern_proto::ErrorCode;

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

impl From<GroupError> for tonic::Status {
    fn from(error: GroupError) -> Self {
        match error {
            GroupError::Invalid(why) => ErrorCode::BadRequest.status(why),
            GroupError::UnknownGroup => ErrorCode::UnknownGroup.status("no such group"),
            GroupError::UnknownUsers(ids) => {
                ErrorCode::UnknownUser.status(format!("unknown user ids: {ids:?}"))
            }
            GroupError::NotOwner => {
                ErrorCode::Forbidden.status("only the group's owner can manage its members")
            }
            GroupError::OwnerCannotLeave => {
                ErrorCode::Forbidden.status("the owner cannot leave the group")
            }
            GroupError::Db(error) => {
                metrics::counter!("tern_db_errors_total", "service" => "group").increment(1);
                tracing::error!(%error, "group database error");
                ErrorCode::Unavailable.status("storage unavailable, retry")
            }
            GroupError::Peer(status) => {
                tracing::warn!(grpc_code = ?status.code(), "group: a dependency answered with an error");
                tern_proto::relay(&status)
            }
        }
    }
}
