//! Offline errors and their one mapping to `tonic::Status`.

use tern_proto::ErrorCode;

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

impl From<OfflineError> for tonic::Status {
    fn from(error: OfflineError) -> Self {
        match error {
            OfflineError::Invalid(why) => ErrorCode::BadRequest.status(why),
            OfflineError::NotMember => {
                ErrorCode::Forbidden.status("not a member of this conversation")
            }
            OfflineError::Db(error) => {
                metrics::counter!("tern_db_errors_total", "service" => "offline").increment(1);
                tracing::error!(%error, "offline database error");
                ErrorCode::Unavailable.status("storage unavailable, retry")
            }
            OfflineError::Peer(status) => {
                tracing::warn!(grpc_code = ?status.code(), "offline: a dependency answered with an error");
                tern_proto::relay(&status)
            }
        }
    }
}
