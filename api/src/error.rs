//! Every failure a client can see: an HTTP status and a stable machine-readable code.

use axum::Json;
use axum::http::{HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use paystream_db::DbError;
use serde_json::{Value, json};

#[derive(Debug, Clone)]
pub struct ApiError {
    pub status: StatusCode,
    pub code: &'static str,
    pub message: String,
    pub retry_after_secs: Option<u64>,
    /// The objects concerned, by name, when there are some (`payment`: e.g. a payment
    /// that failed at Stripe; `refund`).
    pub objects: Vec<(&'static str, Value)>,
}

impl ApiError {
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        ApiError {
            status,
            code,
            message: message.into(),
            retry_after_secs: None,
            objects: Vec::new(),
        }
    }

    pub fn bad_request(code: &'static str, message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, code, message)
    }

    pub fn not_found() -> Self {
        Self::new(
            StatusCode::NOT_FOUND,
            "payment_not_found",
            "no such payment",
        )
    }

    pub fn unauthorized() -> Self {
        Self::new(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "a valid API key is required: Authorization: Bearer <key>",
        )
    }

    pub fn with_payment(mut self, payment: Value) -> Self {
        self.objects.push(("payment", payment));
        self
    }

    pub fn with_refund(mut self, refund: Value) -> Self {
        self.objects.push(("refund", refund));
        self
    }

    pub fn body(&self) -> Value {
        let mut body = json!({"error": {"code": self.code, "message": self.message}});
        for (name, object) in &self.objects {
            body[*name] = object.clone();
        }
        body
    }
}

impl From<DbError> for ApiError {
    fn from(e: DbError) -> Self {
        // The database is down or failing: 503, so clients and nginx retry; the cause is
        // logged, never shown.
        tracing::error!(error = %e, "database failure");
        Self::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "database_unavailable",
            "the payment database is unavailable; retry later",
        )
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut res = (self.status, Json(self.body())).into_response();
        if let Some(s) = self.retry_after_secs {
            if let Ok(v) = HeaderValue::from_str(&s.to_string()) {
                res.headers_mut().insert("retry-after", v);
            }
        }
        if self.status == StatusCode::UNAUTHORIZED {
            res.headers_mut()
                .insert("www-authenticate", HeaderValue::from_static("Bearer"));
        }
        res
    }
}
