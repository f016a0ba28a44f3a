//! Message errors and their one mapping to `tonic::Status`.

use tern_proto::{ErrorCode, Failure, ServiceError};

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
    /// No message at that seq.
    #[error("no such message")]
    NoSuchMessage,
    /// Not the user's message to change, or too late.
    #[error("{0}")]
    Forbidden(&'static str),
    /// The message was recalled: there is nothing left to change.
    #[error("the message was recalled")]
    Recalled,
    /// No such attachment, or its message was recalled.
    #[error("no such attachment")]
    NoSuchAttachment,
    /// An attachment's bytes are not there yet, or not checked.
    #[error("{0}")]
    Unfinished(&'static str),
    /// Uploading to an attachment that is already complete.
    #[error("that upload is already complete")]
    Completed,
    /// An upload's bytes are not what was declared.
    #[error("{0}")]
    Mismatch(String),
    /// A content type that is not allowed, or bytes of another type.
    #[error("{0}")]
    Unsupported(String),
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

impl ServiceError for MessageError {
    const SERVICE: &'static str = "message";

    fn failure(&self) -> Failure<'_> {
        match self {
            MessageError::Invalid(_) => Failure::Refused(ErrorCode::BadRequest),
            MessageError::TooLarge => Failure::Refused(ErrorCode::TooLarge),
            MessageError::UnknownUser => Failure::Refused(ErrorCode::UnknownUser),
            MessageError::UnknownGroup => Failure::Refused(ErrorCode::UnknownGroup),
            MessageError::NotMember => Failure::Refused(ErrorCode::NotMember),
            MessageError::NoSuchMessage => Failure::Refused(ErrorCode::NotFound),
            MessageError::Forbidden(_) => Failure::Refused(ErrorCode::Forbidden),
            MessageError::Recalled => Failure::Refused(ErrorCode::Conflict),
            MessageError::NoSuchAttachment | MessageError::Unfinished(_) => {
                Failure::Refused(ErrorCode::NotFound)
            }
            MessageError::Completed => Failure::Refused(ErrorCode::Conflict),
            MessageError::Mismatch(_) => Failure::Refused(ErrorCode::BadRequest),
            MessageError::Unsupported(_) => Failure::Refused(ErrorCode::UnsupportedType),
            MessageError::Db(error) => Failure::Storage(error),
            MessageError::Peer(status) => Failure::Dependency(status),
        }
    }
}

impl From<MessageError> for tonic::Status {
    fn from(error: MessageError) -> Self {
        error.into_status()
    }
}
