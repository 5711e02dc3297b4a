//! Authentication, first after the request id: Stripe answers 401 before looking at
//! limits or parameters. The accepted key scopes the request's idempotency key.

use axum::extract::{Request, State};
use axum::http::HeaderMap;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use crate::Sim;
use crate::error::StripeError;
use crate::state::API_VERSION;

/// A request may pin the API version it is written for (`Stripe-Version`); Stripe refuses
/// a version it does not know, and this stand-in renders one version only.
fn version(headers: &HeaderMap) -> Result<(), StripeError> {
    match headers.get("stripe-version") {
        None => Ok(()),
        Some(v) if v.as_bytes() == API_VERSION.as_bytes() => Ok(()),
        Some(v) => Err(StripeError::invalid(
            format!(
                "Invalid Stripe API version: {}",
                String::from_utf8_lossy(v.as_bytes())
            ),
            None,
        )),
    }
}

/// The secret key a request authenticated with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiKey(pub String);

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum AuthError {
    #[error(
        "You did not provide an API key. You need to provide your API key in the Authorization header, using Bearer auth (e.g. 'Authorization: Bearer YOUR_SECRET_KEY')."
    )]
    Missing,
    /// Stripe shows only the last four characters of a rejected key.
    #[error("Invalid API Key provided: sk_test_****{last4}")]
    Invalid { last4: String },
}

impl From<AuthError> for StripeError {
    fn from(e: AuthError) -> Self {
        StripeError::unauthorized(e.to_string())
    }
}

pub async fn authenticate(State(sim): State<Sim>, mut req: Request, next: Next) -> Response {
    match check(sim.inner.api_key.as_deref(), req.headers()) {
        Ok(key) => {
            if let Err(e) = version(req.headers()) {
                return e.into_response();
            }
            req.extensions_mut().insert(key);
            next.run(req).await
        }
        Err(e) => StripeError::from(e).into_response(),
    }
}

/// `expected`: the only key accepted; `None` accepts any test-mode secret key.
pub fn check(expected: Option<&str>, headers: &HeaderMap) -> Result<ApiKey, AuthError> {
    let key = headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .ok_or(AuthError::Missing)?;
    let accepted = match expected {
        Some(expected) => key == expected,
        None => key.starts_with("sk_test_"),
    };
    if !accepted {
        let skip = key.chars().count().saturating_sub(4);
        return Err(AuthError::Invalid {
            last4: key.chars().skip(skip).collect(),
        });
    }
    Ok(ApiKey(key.to_owned()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::body::{Body, to_bytes};
    use axum::http::StatusCode;
    use axum::middleware::from_fn_with_state;
    use axum::routing::get;
    use serde_json::Value;
    use tower::ServiceExt;

    fn headers(auth: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert("authorization", auth.parse().unwrap());
        h
    }

    #[test]
    fn accepts_test_keys_or_exactly_the_configured_one() {
        assert_eq!(
            check(None, &headers("Bearer sk_test_abc")),
            Ok(ApiKey("sk_test_abc".into()))
        );
        assert_eq!(check(None, &HeaderMap::new()), Err(AuthError::Missing));
        assert_eq!(
            check(None, &headers("Basic sk_test_abc")),
            Err(AuthError::Missing)
        );
        assert_eq!(
            check(None, &headers("Bearer pk_live_wxyz1234")),
            Err(AuthError::Invalid {
                last4: "1234".into()
            })
        );
        assert_eq!(
            check(Some("sk_test_a"), &headers("Bearer sk_test_b")),
            Err(AuthError::Invalid {
                last4: "st_b".into()
            })
        );
        assert_eq!(
            check(None, &headers("Bearer ab")),
            Err(AuthError::Invalid { last4: "ab".into() }),
            "a short key is shown whole"
        );
    }

    #[tokio::test]
    async fn the_layer_answers_a_missing_key_with_stripes_401() {
        let sim = Sim::new(crate::SimConfig::default());
        let app = axum::Router::new()
            .route("/", get(|| async { "reached" }))
            .layer(from_fn_with_state(sim.clone(), authenticate))
            .with_state(sim);
        let res = app
            .oneshot(Request::builder().uri("/").body(Body::empty()).unwrap())
            .await
            .unwrap();
        assert_eq!(res.status(), StatusCode::UNAUTHORIZED);
        let body: Value =
            serde_json::from_slice(&to_bytes(res.into_body(), usize::MAX).await.unwrap()).unwrap();
        assert_eq!(body["error"]["type"], "invalid_request_error");
        assert!(
            body["error"]["message"]
                .as_str()
                .is_some_and(|m| m.starts_with("You did not provide an API key.")),
            "{body}"
        );
        assert!(body["error"].get("code").is_none(), "{body}");
    }
}
