//! API errors: an HTTP status, a stable machine-readable code, and a message, sent as
//! `{"error": {"code": "...", "message": "..."}}`.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;

use crate::tensors::TensorError;

/// An error answered to a client.
#[derive(Debug, Clone)]
pub struct ApiError {
    /// HTTP status.
    pub status: StatusCode,
    /// Stable code (see the README's API section).
    pub code: &'static str,
    /// Human-readable detail.
    pub message: String,
}

impl ApiError {
    /// An error with a status, code and message.
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> ApiError {
        ApiError {
            status,
            code,
            message: message.into(),
        }
    }
    /// 400.
    pub fn bad_request(code: &'static str, m: impl Into<String>) -> ApiError {
        Self::new(StatusCode::BAD_REQUEST, code, m)
    }
    /// 404.
    pub fn not_found(code: &'static str, m: impl Into<String>) -> ApiError {
        Self::new(StatusCode::NOT_FOUND, code, m)
    }
    /// 422.
    pub fn unprocessable(code: &'static str, m: impl Into<String>) -> ApiError {
        Self::new(StatusCode::UNPROCESSABLE_ENTITY, code, m)
    }
    /// 413.
    pub fn too_large(m: impl Into<String>) -> ApiError {
        Self::new(StatusCode::PAYLOAD_TOO_LARGE, "too_large", m)
    }
    /// 500 (the detail is logged; the client gets a generic message plus the detail).
    pub fn internal(m: impl Into<String>) -> ApiError {
        let m = m.into();
        tracing::error!(error = %m, "internal error");
        Self::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", m)
    }
}

impl From<TensorError> for ApiError {
    fn from(e: TensorError) -> Self {
        match e {
            TensorError::Malformed(m) => ApiError::bad_request("malformed_request", m),
            TensorError::TooLarge(m) => ApiError::too_large(m),
            TensorError::Unprocessable(m) => ApiError::unprocessable("unsupported_tensor", m),
        }
    }
}

impl From<verity_store::StoreError> for ApiError {
    fn from(e: verity_store::StoreError) -> Self {
        use verity_store::StoreError as S;
        match e {
            S::VersionTaken { .. } => {
                Self::new(StatusCode::CONFLICT, "version_taken", e.to_string())
            }
            S::NameOwned { .. } => Self::new(StatusCode::FORBIDDEN, "name_owned", e.to_string()),
            S::Mismatch(_) => Self::unprocessable("model_id_mismatch", e.to_string()),
            other => Self::internal(other.to_string()),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = serde_json::json!({"error": {"code": self.code, "message": self.message}});
        (self.status, Json(body)).into_response()
    }
}
