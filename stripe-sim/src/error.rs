//! Stripe's error shape: `{"error": {"type", "code", "message", "param", ...}}`.

use axum::Json;
use axum::http::{HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

#[derive(Debug, Clone)]
pub struct StripeError {
    pub status: StatusCode,
    pub kind: &'static str,
    pub code: Option<&'static str>,
    pub message: String,
    pub param: Option<String>,
    /// Extra fields Stripe adds to some errors (decline_code, payment_intent, ...).
    pub extra: Value,
    /// Whether Stripe would store this response under the request's idempotency key:
    /// only responses of an endpoint that began executing are stored.
    pub executed: bool,
    pub should_retry: Option<bool>,
}

impl StripeError {
    pub fn invalid(message: impl Into<String>, param: Option<&str>) -> Self {
        StripeError {
            status: StatusCode::BAD_REQUEST,
            kind: "invalid_request_error",
            code: Some("parameter_invalid"),
            message: message.into(),
            param: param.map(str::to_owned),
            extra: Value::Null,
            executed: false,
            should_retry: None,
        }
    }

    pub fn missing(param: &str) -> Self {
        StripeError {
            code: Some("parameter_missing"),
            ..Self::invalid(format!("Missing required param: {param}."), Some(param))
        }
    }

    pub fn no_such(what: &str, id: &str, param: Option<&str>) -> Self {
        StripeError {
            status: StatusCode::NOT_FOUND,
            code: Some("resource_missing"),
            ..Self::invalid(format!("No such {what}: '{id}'"), param)
        }
    }

    pub fn unexpected_state(message: String, pi: Value) -> Self {
        StripeError {
            code: Some("payment_intent_unexpected_state"),
            extra: json!({"payment_intent": pi}),
            executed: true,
            ..Self::invalid(message, None)
        }
    }

    pub fn unauthorized(message: impl Into<String>) -> Self {
        StripeError {
            status: StatusCode::UNAUTHORIZED,
            code: None,
            ..Self::invalid(message, None)
        }
    }

    pub fn rate_limited() -> Self {
        StripeError {
            status: StatusCode::TOO_MANY_REQUESTS,
            code: Some("rate_limit"),
            should_retry: Some(true),
            ..Self::invalid(
                "Request rate limit exceeded. Learn more about rate limits here https://stripe.com/docs/rate-limits.",
                None,
            )
        }
    }

    /// Stripe's 500: the request may or may not have run, and is safe to retry.
    pub fn api_error(message: impl Into<String>) -> Self {
        StripeError {
            status: StatusCode::INTERNAL_SERVER_ERROR,
            kind: "api_error",
            code: None,
            should_retry: Some(true),
            ..Self::invalid(message, None)
        }
    }

    pub fn unrecognized_url(method: &str, path: &str) -> Self {
        StripeError {
            status: StatusCode::NOT_FOUND,
            code: None,
            ..Self::invalid(
                format!("Unrecognized request URL ({method}: {path})."),
                None,
            )
        }
    }

    /// A missing object named by a parameter (not by the URL) is a 400 at Stripe.
    pub fn in_param(mut self) -> Self {
        self.status = StatusCode::BAD_REQUEST;
        self
    }

    pub fn with_code(mut self, code: &'static str) -> Self {
        self.code = Some(code);
        self
    }

    pub fn body(&self) -> Value {
        let mut err = json!({
            "type": self.kind,
            "message": self.message,
        });
        if let Some(c) = self.code {
            err["code"] = json!(c);
            err["doc_url"] = json!(format!(
                "https://stripe.com/docs/error-codes/{}",
                c.replace('_', "-")
            ));
        }
        if let Some(p) = &self.param {
            err["param"] = json!(p);
        }
        if let Value::Object(extra) = &self.extra {
            for (k, v) in extra {
                err[k] = v.clone();
            }
        }
        json!({ "error": err })
    }
}

impl IntoResponse for StripeError {
    fn into_response(self) -> Response {
        let mut res = (self.status, Json(self.body())).into_response();
        if let Some(retry) = self.should_retry {
            res.headers_mut().insert(
                "stripe-should-retry",
                HeaderValue::from_static(if retry { "true" } else { "false" }),
            );
        }
        res
    }
}
