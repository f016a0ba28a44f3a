//! Message errors and their one mapping to `tonic::Status`.

use tern_proto::ErrorCode;

/// Everything that can go wrong in the message service.
#[derive(Debug, thiserror::Error)]
pub enum MessageError {
    /// Input breaks a rule.
    #[error("{0}")]
    Invalid(&'static str),
    /// Content over the limit.
    #[error("content is over the size limit")]
    TooLarge,
    /// The 1:1 recipient does not exist.
    #[error("no such user")]
    UnknownUser,
    /// The group does not exist.
    #[error("no such group")]
    UnknownGroup,
    /// The sender is not in the group.
    #[error("not a member of this group")]
    NotMember,
    /// The database failed; nothing was stored.
    #[error("database: {0}")]
    Db(#[from] sea_orm::DbErr),
    /// A service message depends on failed; nothing was stored.
    #[error("dependency: {0}")]
    Peer(#[from] tonic::Status),
}

impl MessageError {
    /// A final "no" to this send (as opposed to a failure to decide).
    pub fn is_refusal(&self) -> bool {
        matches!(self, Self::Invalid(_) | Self::UnknownUser | Self::UnknownGroup | Self::NotMember)
    }
}

impl From<MessageError> for tonic::Status {
    fn from(error: MessageError) -> Self {
        match error {
            MessageError::Invalid(why) => ErrorCode::BadRequest.status(why),
            MessageError::TooLarge => ErrorCode::TooLarge.status("content is over the size limit"),
            MessageError::UnknownUser => ErrorCode::UnknownUser.status("no such user"),
            MessageError::UnknownGroup => ErrorCode::UnknownGroup.status("no such group"),
            MessageError::NotMember => ErrorCode::NotMember.status("not a member of this group"),
            MessageError::Db(error) => {
                metrics::counter!("tern_db_errors_total", "service" => "message").increment(1);
                tracing::error!(%error, "message database error");
                ErrorCode::Unavailable.status("storage unavailable, message not stored; retry")
            }
            MessageError::Peer(status) => {
                tracing::warn!(grpc_code = ?status.code(), "message: a dependency answered with an error");
                tern_proto::relay(&status)
            }
        }
    }
}
