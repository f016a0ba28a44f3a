//! The one place errors become HTTP responses.

use axum::{
    Json,
    response::{IntoResponse, Response},
};
use tern_proto::{ErrorCode, error_code_of};

/// An error answered to an HTTP client: `{"error": {"code", "message"}}`
/// with the status of its code. Internal details never reach the body.
#[derive(Debug)]
pub struct ApiError {
    pub code: ErrorCode,
    pub message: String,
}

impl ApiError {
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        Self { code, message: message.into() }
    }

    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::BadRequest, message)
    }
}

impl From<tonic::Status> for ApiError {
    fn from(status: tonic::Status) -> Self {
        let code = error_code_of(&status);
        let message = match code {
            // Statuses that did not come from a Tern service may carry
            // transport details; show the code's generic text instead.
            ErrorCode::Internal => "internal error".to_string(),
            ErrorCode::Unavailable => "a service is unavailable, retry".to_string(),
            _ => status.message().to_string(),
        };
        if code == ErrorCode::Internal {
            tracing::error!(grpc_code = ?status.code(), "internal error from a service");
        }
        Self { code, message }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body =
            serde_json::json!({ "error": { "code": self.code.as_str(), "message": self.message } });
        (self.code.http_status(), Json(body)).into_response()
    }
}
