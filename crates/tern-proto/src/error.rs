//! The stable error codes clients and backends see.
//!
//! Services attach the code to a `tonic::Status` (metadata `tern-error-code`);
//! the gateway reads it back and maps it to an HTTP status or a type 3 frame.
//! One list, so a code means the same thing at every hop.

use tonic::{Code, Status};

const METADATA_KEY: &str = "tern-error-code";

/// A stable, documented error code. The string form is part of the public
/// protocol: never rename one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ErrorCode {
    /// The request is malformed or a field breaks its rules.
    BadRequest,
    /// A frame was not valid JSON or not a JSON object.
    MalformedFrame,
    /// The frame's `type` is missing or unknown.
    UnknownType,
    /// A required field is missing or has the wrong JSON type.
    MissingField,
    /// The message body is over the size limit.
    TooLarge,
    /// A file's content type is not allowed, or its bytes are not what
    /// it was declared as.
    UnsupportedType,
    /// No valid credentials.
    Unauthenticated,
    /// Authenticated, but not allowed to do this.
    Forbidden,
    /// The sender is not a member of the group.
    NotMember,
    /// No such user.
    UnknownUser,
    /// No such group.
    UnknownGroup,
    /// Some other thing does not exist.
    NotFound,
    /// The thing already exists (a username, say).
    Conflict,
    /// Too many requests; slow down and retry.
    RateLimited,
    /// A dependency is down or saturated; retry (sends: with the same client_msg_id).
    Unavailable,
    /// A bug on our side; details are in the server log, never in the answer.
    Internal,
}

impl ErrorCode {
    /// Every code, for tests and documentation.
    pub const ALL: [ErrorCode; 16] = [
        Self::BadRequest,
        Self::MalformedFrame,
        Self::UnknownType,
        Self::MissingField,
        Self::TooLarge,
        Self::UnsupportedType,
        Self::Unauthenticated,
        Self::Forbidden,
        Self::NotMember,
        Self::UnknownUser,
        Self::UnknownGroup,
        Self::NotFound,
        Self::Conflict,
        Self::RateLimited,
        Self::Unavailable,
        Self::Internal,
    ];

    /// The wire form, e.g. `not_member`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::BadRequest => "bad_request",
            Self::MalformedFrame => "malformed_frame",
            Self::UnknownType => "unknown_type",
            Self::MissingField => "missing_field",
            Self::TooLarge => "too_large",
            Self::UnsupportedType => "unsupported_type",
            Self::Unauthenticated => "unauthenticated",
            Self::Forbidden => "forbidden",
            Self::NotMember => "not_member",
            Self::UnknownUser => "unknown_user",
            Self::UnknownGroup => "unknown_group",
            Self::NotFound => "not_found",
            Self::Conflict => "conflict",
            Self::RateLimited => "rate_limited",
            Self::Unavailable => "unavailable",
            Self::Internal => "internal",
        }
    }

    /// Parses the wire form.
    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|c| c.as_str() == s)
    }

    /// The gRPC status code this maps to.
    pub fn grpc_code(self) -> Code {
        match self {
            Self::BadRequest
            | Self::MalformedFrame
            | Self::UnknownType
            | Self::MissingField
            | Self::UnsupportedType => Code::InvalidArgument,
            Self::TooLarge => Code::OutOfRange,
            Self::Unauthenticated => Code::Unauthenticated,
            Self::Forbidden | Self::NotMember => Code::PermissionDenied,
            Self::UnknownUser | Self::UnknownGroup | Self::NotFound => Code::NotFound,
            Self::Conflict => Code::AlreadyExists,
            Self::RateLimited => Code::ResourceExhausted,
            Self::Unavailable => Code::Unavailable,
            Self::Internal => Code::Internal,
        }
    }

    /// The HTTP status this maps to.
    pub fn http_status(self) -> http::StatusCode {
        use http::StatusCode as S;
        match self {
            Self::BadRequest | Self::MalformedFrame | Self::UnknownType | Self::MissingField => {
                S::BAD_REQUEST
            }
            Self::TooLarge => S::PAYLOAD_TOO_LARGE,
            Self::UnsupportedType => S::UNSUPPORTED_MEDIA_TYPE,
            Self::Unauthenticated => S::UNAUTHORIZED,
            Self::Forbidden | Self::NotMember => S::FORBIDDEN,
            Self::UnknownUser | Self::UnknownGroup | Self::NotFound => S::NOT_FOUND,
            Self::Conflict => S::CONFLICT,
            Self::RateLimited => S::TOO_MANY_REQUESTS,
            Self::Unavailable => S::SERVICE_UNAVAILABLE,
            Self::Internal => S::INTERNAL_SERVER_ERROR,
        }
    }

    /// Whether a client should retry the same request unchanged.
    pub fn retryable(self) -> bool {
        matches!(self, Self::Unavailable | Self::RateLimited)
    }

    /// A `Status` carrying this code; `message` must be safe to show a client.
    pub fn status(self, message: impl Into<String>) -> Status {
        let mut status = Status::new(self.grpc_code(), message);
        status
            .metadata_mut()
            .insert(METADATA_KEY, tonic::metadata::MetadataValue::from_static(self.as_str()));
        status
    }
}

impl std::fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The Tern code a `Status` carries, or the closest one for statuses that
/// did not come from a Tern service (transport failures, timeouts).
pub fn error_code_of(status: &Status) -> ErrorCode {
    if let Some(code) =
        status.metadata().get(METADATA_KEY).and_then(|v| v.to_str().ok()).and_then(ErrorCode::parse)
    {
        return code;
    }
    match status.code() {
        Code::InvalidArgument | Code::OutOfRange => ErrorCode::BadRequest,
        Code::Unauthenticated => ErrorCode::Unauthenticated,
        Code::PermissionDenied => ErrorCode::Forbidden,
        Code::NotFound => ErrorCode::NotFound,
        Code::AlreadyExists => ErrorCode::Conflict,
        Code::ResourceExhausted => ErrorCode::RateLimited,
        // Tern services mark their own failures with a code (above), so a
        // bare `unknown` or `internal` comes from the transport: a
        // connection that dropped mid-call (a service was killed, say).
        // Retrying can fix that, so it is `unavailable`, not a bug.
        Code::Unavailable
        | Code::DeadlineExceeded
        | Code::Aborted
        | Code::Cancelled
        | Code::Unknown
        | Code::Internal => ErrorCode::Unavailable,
        _ => ErrorCode::Internal,
    }
}

/// What a service answers when a service it called failed with `status`.
/// A client's mistake (unknown user, bad input, ...) passes through with
/// its code and message; a failure of the dependency itself becomes
/// `unavailable`, so the client retries without learning internals.
pub fn relay(status: &Status) -> Status {
    let code = error_code_of(status);
    match code {
        ErrorCode::Unavailable | ErrorCode::Internal => {
            ErrorCode::Unavailable.status("a dependency is unavailable, retry")
        }
        _ => code.status(status.message()),
    }
}

/// How a service's error type classifies one of its errors for
/// [`ServiceError::into_status`].
pub enum Failure<'a> {
    /// A final "no" to the request, with this code; the client reads the
    /// error's own text (its `Display`).
    Refused(ErrorCode),
    /// The service's database failed.
    Storage(&'a dyn std::fmt::Display),
    /// A service this one called answered with this error.
    Dependency(&'a Status),
    /// Something else the service needs is down (`what`, e.g. "bus").
    Unavailable(&'static str, &'a dyn std::fmt::Display),
    /// A fault of the service itself (a worker died).
    Internal(&'a dyn std::fmt::Display),
}

/// A service's error. Every service maps its errors to statuses through
/// [`ServiceError::into_status`], so a refusal's text is written once (in
/// the error's `Display`), and storage and dependency failures are
/// answered, logged and counted alike in every service.
pub trait ServiceError: std::fmt::Display + Sized {
    /// The service's name in logs and in `tern_db_errors_total{service}`.
    const SERVICE: &'static str;

    fn failure(&self) -> Failure<'_>;

    fn into_status(self) -> Status {
        let service = Self::SERVICE;
        match self.failure() {
            Failure::Refused(code) => code.status(self.to_string()),
            Failure::Storage(error) => {
                metrics::counter!("tern_db_errors_total", "service" => service).increment(1);
                tracing::error!(service, %error, "database error");
                ErrorCode::Unavailable.status("storage unavailable, retry")
            }
            Failure::Dependency(status) => {
                tracing::warn!(service, grpc_code = ?status.code(), "a dependency answered with an error");
                relay(status)
            }
            Failure::Unavailable(what, error) => {
                tracing::warn!(service, %error, "{what} unavailable");
                ErrorCode::Unavailable.status(format!("{what} unavailable, retry"))
            }
            Failure::Internal(error) => {
                tracing::error!(service, %error, "internal error");
                ErrorCode::Internal.status("internal error")
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A service's errors, each kind once.
    #[derive(Debug)]
    enum Sample {
        Refused,
        Storage,
        Dependency(Status),
        Down,
        Broken,
    }

    impl std::fmt::Display for Sample {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str(match self {
                Sample::Refused => "no such thing",
                _ => "secret detail",
            })
        }
    }

    impl ServiceError for Sample {
        const SERVICE: &'static str = "sample";

        fn failure(&self) -> Failure<'_> {
            match self {
                Sample::Refused => Failure::Refused(ErrorCode::NotFound),
                Sample::Storage => Failure::Storage(self),
                Sample::Dependency(status) => Failure::Dependency(status),
                Sample::Down => Failure::Unavailable("bus", self),
                Sample::Broken => Failure::Internal(self),
            }
        }
    }

    #[test]
    fn service_errors_become_statuses_alike_and_hide_details() {
        let answer = |error: Sample| {
            let status = error.into_status();
            (error_code_of(&status), status.message().to_string())
        };
        assert_eq!(answer(Sample::Refused), (ErrorCode::NotFound, "no such thing".into()));
        assert_eq!(
            answer(Sample::Storage),
            (ErrorCode::Unavailable, "storage unavailable, retry".into())
        );
        assert_eq!(answer(Sample::Down), (ErrorCode::Unavailable, "bus unavailable, retry".into()));
        assert_eq!(answer(Sample::Broken), (ErrorCode::Internal, "internal error".into()));
        // A dependency's refusal passes through; its failure does not.
        let refused = Sample::Dependency(ErrorCode::UnknownUser.status("no such user"));
        assert_eq!(answer(refused), (ErrorCode::UnknownUser, "no such user".into()));
        let failed = Sample::Dependency(Status::internal("stack trace"));
        assert_eq!(answer(failed).0, ErrorCode::Unavailable);
    }

    #[test]
    fn codes_survive_a_status_round_trip() {
        for code in ErrorCode::ALL {
            assert_eq!(error_code_of(&code.status("x")), code);
            assert_eq!(ErrorCode::parse(code.as_str()), Some(code));
        }
    }

    #[test]
    fn relayed_errors_keep_client_codes_and_hide_failures() {
        let relayed = relay(&ErrorCode::UnknownUser.status("no such user"));
        assert_eq!(error_code_of(&relayed), ErrorCode::UnknownUser);
        assert_eq!(relayed.message(), "no such user");
        let relayed = relay(&Status::internal("db password wrong at 10.0.0.3"));
        assert_eq!(error_code_of(&relayed), ErrorCode::Unavailable);
        assert!(!relayed.message().contains("10.0.0.3"));
    }

    #[test]
    fn foreign_statuses_map_by_grpc_code() {
        assert_eq!(error_code_of(&Status::unavailable("down")), ErrorCode::Unavailable);
        // A call cut off mid-flight (the peer was killed) is retryable.
        assert_eq!(error_code_of(&Status::unknown("transport error")), ErrorCode::Unavailable);
        assert_eq!(error_code_of(&Status::internal("h2 protocol error")), ErrorCode::Unavailable);
        assert_eq!(error_code_of(&Status::data_loss("?")), ErrorCode::Internal);
    }
}
