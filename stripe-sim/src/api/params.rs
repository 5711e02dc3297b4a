//! Reads the request's Stripe form parameters once, for both the idempotency fingerprint
//! and the endpoint: the query string of a GET or DELETE, the body otherwise.

use axum::body::{Body, to_bytes};
use axum::extract::Request;
use axum::http::{Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use crate::error::StripeError;
use crate::form::Params;

/// axum's default body limit, which the hand-written dispatcher inherited.
const MAX_BODY: usize = 2 * 1024 * 1024;

pub async fn parse(req: Request, next: Next) -> Response {
    let (parts, body) = req.into_parts();
    let params = if parts.method == Method::GET || parts.method == Method::DELETE {
        Params::parse(parts.uri.query().unwrap_or(""))
    } else {
        let Ok(bytes) = to_bytes(body, MAX_BODY).await else {
            return StripeError {
                status: StatusCode::PAYLOAD_TOO_LARGE,
                ..StripeError::invalid("Request body is too large or could not be read", None)
            }
            .into_response();
        };
        match std::str::from_utf8(&bytes) {
            Ok(b) => Params::parse(b),
            Err(_) => {
                return StripeError::invalid("Request body is not valid UTF-8", None)
                    .into_response();
            }
        }
    };
    let mut req = Request::from_parts(parts, Body::empty());
    req.extensions_mut().insert(params);
    next.run(req).await
}
