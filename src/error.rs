//! The error every failed call returns (SPEC §3), and its kinds.
//!
//! One enum serves handlers and callers alike: a handler returns
//! [`ServiceError::application`] for its own failures, and may pass on any error
//! it got from a nested call unchanged.

use serde::{Deserialize, Serialize};
use serde_json::Value;

/// The kind of a [`ServiceError`], as named in the HTTP API and the CLI.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum ErrorKind {
    /// No worker of that service exists anywhere in the cluster.
    NoSuchService,
    /// The payload does not fit the subject's message type, or the subject is unknown.
    BadRequest,
    /// A guard rejected the message.
    Rejected,
    /// No reply within the request's timeout.
    Timeout,
    /// The service's queue is at its high-water mark.
    Overloaded,
    /// The handler panicked (or its worker was killed) while holding the request.
    HandlerPanicked,
    /// Restarts exceeded the service's restart intensity; the service is down.
    ServiceFailed,
    /// The node holding the worker died or became unreachable.
    NodeDown,
    /// The handler returned its own error.
    Application,
}

impl ErrorKind {
    /// Every kind, in the order of SPEC §3.
    pub const ALL: [ErrorKind; 9] = [
        ErrorKind::NoSuchService,
        ErrorKind::BadRequest,
        ErrorKind::Rejected,
        ErrorKind::Timeout,
        ErrorKind::Overloaded,
        ErrorKind::HandlerPanicked,
        ErrorKind::ServiceFailed,
        ErrorKind::NodeDown,
        ErrorKind::Application,
    ];

    /// The HTTP status the API answers with for this kind.
    pub fn http_status(self) -> u16 {
        match self {
            ErrorKind::NoSuchService => 404,
            ErrorKind::BadRequest => 400,
            ErrorKind::Rejected => 403,
            ErrorKind::Timeout => 504,
            ErrorKind::Overloaded => 503,
            ErrorKind::HandlerPanicked => 500,
            ErrorKind::ServiceFailed => 503,
            ErrorKind::NodeDown => 502,
            ErrorKind::Application => 422,
        }
    }

    /// The kind's name, e.g. `"Timeout"`.
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorKind::NoSuchService => "NoSuchService",
            ErrorKind::BadRequest => "BadRequest",
            ErrorKind::Rejected => "Rejected",
            ErrorKind::Timeout => "Timeout",
            ErrorKind::Overloaded => "Overloaded",
            ErrorKind::HandlerPanicked => "HandlerPanicked",
            ErrorKind::ServiceFailed => "ServiceFailed",
            ErrorKind::NodeDown => "NodeDown",
            ErrorKind::Application => "Application",
        }
    }
}

impl std::fmt::Display for ErrorKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A failed call: its kind, a message for humans and, for [`ErrorKind::Application`],
/// the handler's own error as JSON.
#[derive(Debug, Clone, PartialEq, thiserror::Error, Serialize, Deserialize)]
#[error("{kind}: {message}")]
pub struct ServiceError {
    /// What went wrong, as a kind of SPEC §3.
    pub kind: ErrorKind,
    /// A readable explanation naming what is wrong.
    pub message: String,
    /// The handler's error value for [`ErrorKind::Application`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data: Option<Value>,
}

impl ServiceError {
    /// An error of `kind` with `message`.
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> Self {
        ServiceError {
            kind,
            message: message.into(),
            data: None,
        }
    }

    /// The handler's own error: `data` is kept as JSON for the caller.
    pub fn application(message: impl Into<String>, data: impl Serialize) -> Self {
        let data = serde_json::to_value(data).unwrap_or_else(|e| Value::String(e.to_string()));
        ServiceError {
            kind: ErrorKind::Application,
            message: message.into(),
            data: Some(data),
        }
    }

    /// `NoSuchService` with `message`.
    pub fn no_such_service(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::NoSuchService, message)
    }

    /// `BadRequest` with `message`.
    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::BadRequest, message)
    }

    /// `Rejected` with the guard's reason.
    pub fn rejected(reason: impl Into<String>) -> Self {
        Self::new(ErrorKind::Rejected, reason)
    }

    /// `Timeout` with `message`.
    pub fn timeout(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::Timeout, message)
    }

    /// `Overloaded` with `message`.
    pub fn overloaded(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::Overloaded, message)
    }

    /// `HandlerPanicked` with `message`.
    pub fn handler_panicked(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::HandlerPanicked, message)
    }

    /// `ServiceFailed` with `message`.
    pub fn service_failed(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::ServiceFailed, message)
    }

    /// The JSON body the HTTP API sends: `{"error":{"kind","message"[,"data"]}}`.
    pub fn to_body(&self) -> Value {
        let mut error = serde_json::json!({ "kind": self.kind, "message": self.message });
        if let Some(data) = &self.data {
            error["data"] = data.clone();
        }
        serde_json::json!({ "error": error })
    }
}
