//! The one place errors become HTTP responses, and the one place a
//! service's error becomes what a client reads (on HTTP and on sockets).

use axum::{
    Json,
    response::{IntoResponse, Response},
};
use serde::Serialize;
use tern_proto::{ErrorCode, error_code_of};
use utoipa::{
    ToSchema,
    openapi::{ObjectBuilder, RefOr, Schema, Type},
};

/// An error answered to an HTTP client: `{"error": {"code", "message"}}`
/// with the status of its code. Internal details never reach the body.
#[derive(Debug)]
pub struct ApiError {
    pub code: ErrorCode,
    pub message: String,
}

/// The device id a request names (`?device=`), empty for the default
/// device; `bad_request` when it is malformed.
pub fn device(query: Option<String>) -> Result<String, ApiError> {
    let device = query.unwrap_or_default();
    match tern_proto::device::is_valid(&device) {
        true => Ok(device),
        false => Err(ApiError::bad_request(tern_proto::device::RULE)),
    }
}

impl ApiError {
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        Self { code, message: message.into() }
    }

    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::BadRequest, message)
    }
}

/// What a client is told of a service's error with `code`: the service's
/// own `message` for a refusal; for an internal error (whose text may carry
/// transport details) and an unavailable service, the code's generic text.
pub fn client_message(code: ErrorCode, message: &str) -> String {
    match code {
        ErrorCode::Internal => "internal error".to_string(),
        ErrorCode::Unavailable => {
            "a service is unavailable; retry (a send with the same client_msg_id)".to_string()
        }
        _ => message.to_string(),
    }
}

/// A service's error status as its code and the text a client reads;
/// internal errors are logged here.
pub fn from_status(status: &tonic::Status) -> (ErrorCode, String) {
    let code = error_code_of(status);
    if code == ErrorCode::Internal {
        tracing::error!(grpc_code = ?status.code(), "internal error from a service");
    }
    (code, client_message(code, status.message()))
}

impl From<tonic::Status> for ApiError {
    fn from(status: tonic::Status) -> Self {
        let (code, message) = from_status(&status);
        Self { code, message }
    }
}

/// The body of every error answer of the HTTP API.
#[derive(Serialize, ToSchema)]
pub struct ErrorBody {
    error: ErrorDetail,
}

/// What went wrong.
#[derive(Serialize, ToSchema)]
pub struct ErrorDetail {
    /// A stable error code: branch on it, never on the message.
    #[schema(schema_with = error_code_schema)]
    code: &'static str,
    /// What went wrong, for people.
    message: String,
}

impl ErrorBody {
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        Self { error: ErrorDetail { code: code.as_str(), message: message.into() } }
    }
}

/// Every code of [`ErrorCode::ALL`], as the document's enum.
fn error_code_schema() -> impl Into<RefOr<Schema>> {
    ObjectBuilder::new()
        .schema_type(Type::String)
        .enum_values(Some(ErrorCode::ALL.map(ErrorCode::as_str)))
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.code.http_status(), Json(ErrorBody::new(self.code, self.message))).into_response()
    }
}
