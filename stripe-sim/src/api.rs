//! The Stripe API surface under `/v1`. One dispatcher applies, in Stripe's order:
//! authentication, rate limits and injected faults, idempotency, then the endpoint.

use std::collections::hash_map::Entry;
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use serde_json::Value;

use crate::Sim;
use crate::error::StripeError;
use crate::form::Params;
use crate::state::{API_VERSION, Ctx};

/// A stored first response for an idempotency key.
#[derive(Debug, Clone)]
pub enum Idem {
    InFlight {
        fingerprint: String,
    },
    Done {
        fingerprint: String,
        status: StatusCode,
        body: Value,
        /// Simulated time of the first response: Stripe prunes keys after 24 hours.
        at_ms: i64,
    },
}

/// How long Stripe keeps an idempotency key (simulated time).
pub const IDEMPOTENCY_KEY_TTL_MS: i64 = 24 * 3_600_000;

pub async fn dispatch(
    State(sim): State<Sim>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let request_id = sim.next_request_id();
    let mut res = handle(&sim, &method, &uri, &headers, &body, &request_id).await;
    let h = res.headers_mut();
    h.insert(
        "request-id",
        HeaderValue::from_str(&request_id).unwrap_or(HeaderValue::from_static("req")),
    );
    h.insert("stripe-version", HeaderValue::from_static(API_VERSION));
    res
}

async fn handle(
    sim: &Sim,
    method: &Method,
    uri: &Uri,
    headers: &HeaderMap,
    body: &Bytes,
    request_id: &str,
) -> Response {
    let api_key = match authenticate(sim, headers) {
        Ok(k) => k,
        Err(e) => return e.into_response(),
    };
    let (faults, world) = {
        let st = sim.state();
        (st.faults.clone(), st.world.clone())
    };
    let shape = path_shape(method, uri.path());
    {
        let now = Instant::now();
        let mut limiter = sim.inner.limiter.lock().unwrap_or_else(|p| p.into_inner());
        let allowed = limiter.take("global", world.global_rate, now)
            && limiter.take(&shape, world.per_endpoint_rate, now);
        if !allowed {
            return rate_limited().into_response();
        }
    }
    {
        let mut st = sim.state();
        let rng_faults = st.faults.clone();
        if rng_faults.roll(&mut st.rng, rng_faults.api_rate_limit_rate) {
            return rate_limited().into_response();
        }
        if rng_faults.roll(&mut st.rng, rng_faults.api_error_rate) {
            return StripeError {
                status: StatusCode::INTERNAL_SERVER_ERROR,
                kind: "api_error",
                code: None,
                message: "An unknown error occurred (injected by stripe-sim).".into(),
                param: None,
                extra: Value::Null,
                executed: false,
                should_retry: Some(true),
            }
            .into_response();
        }
    }

    let params = if *method == Method::GET || *method == Method::DELETE {
        Params::parse(uri.query().unwrap_or(""))
    } else {
        match std::str::from_utf8(body) {
            Ok(b) => Params::parse(b),
            Err(_) => {
                return StripeError::invalid("Request body is not valid UTF-8", None)
                    .into_response();
            }
        }
    };
    let idem_key = headers
        .get("idempotency-key")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let scoped_key = match (&idem_key, *method == Method::POST) {
        (Some(k), true) => {
            if k.is_empty() || k.len() > 255 {
                return StripeError::invalid("Idempotency-Key must be 1 to 255 characters", None)
                    .into_response();
            }
            Some((api_key.clone(), k.clone()))
        }
        _ => None,
    };
    let fingerprint = format!("{} {}?{}", method, uri.path(), params.fingerprint());
    if let Some(key) = &scoped_key {
        let mut idem = sim.inner.idem.lock().unwrap_or_else(|p| p.into_inner());
        let now_ms = sim.inner.clock.now_ms();
        if let Some(Idem::Done { at_ms, .. }) = idem.get(key)
            && now_ms - *at_ms >= IDEMPOTENCY_KEY_TTL_MS
        {
            // Pruned, as Stripe does after 24 hours: the key is new again.
            idem.remove(key);
        }
        match idem.entry(key.clone()) {
            Entry::Occupied(e) => match e.get() {
                Idem::InFlight { .. } => {
                    return StripeError {
                        status: StatusCode::CONFLICT,
                        kind: "idempotency_error",
                        code: Some("idempotency_key_in_use"),
                        message: "There is currently another in-progress request using this Idempotency Key. Try again later.".into(),
                        ..StripeError::invalid("", None)
                    }
                    .into_response();
                }
                Idem::Done {
                    fingerprint: first,
                    status,
                    body,
                    ..
                } => {
                    if *first != fingerprint {
                        return StripeError {
                            kind: "idempotency_error",
                            code: Some("idempotency_key_reused"),
                            message: format!(
                                "Keys for idempotent requests can only be used with the same parameters they were first used with. Try using a key other than '{}' if you meant to execute a different request.",
                                key.1
                            ),
                            ..StripeError::invalid("", None)
                        }
                        .into_response();
                    }
                    let mut res = (*status, axum::Json(body.clone())).into_response();
                    res.headers_mut()
                        .insert("idempotent-replayed", HeaderValue::from_static("true"));
                    return res;
                }
            },
            Entry::Vacant(v) => {
                v.insert(Idem::InFlight {
                    fingerprint: fingerprint.clone(),
                });
            }
        }
    }

    // Latency stands for the endpoint's own processing time, so it runs while the
    // idempotency key is held: a concurrent retry then sees it in flight (409).
    if faults.api_latency_ms > 0 {
        tokio::time::sleep(Duration::from_millis(faults.api_latency_ms)).await;
    }
    let ctx = Ctx {
        request_id: Some(request_id.to_owned()),
        idempotency_key: idem_key,
        now_ms: sim.inner.clock.now_ms(),
    };
    let outcome = route(sim, method, uri.path(), &params, &ctx);
    sim.inner.wake.notify_one();
    let (status, body, store) = match outcome {
        Ok(v) => (StatusCode::OK, v, true),
        Err(e) => (e.status, e.body(), e.executed),
    };
    if let Some(key) = scoped_key {
        let mut idem = sim.inner.idem.lock().unwrap_or_else(|p| p.into_inner());
        if store {
            idem.insert(
                key,
                Idem::Done {
                    fingerprint,
                    status,
                    body: body.clone(),
                    at_ms: ctx.now_ms,
                },
            );
        } else {
            idem.remove(&key);
        }
    }
    (status, axum::Json(body)).into_response()
}

fn authenticate(sim: &Sim, headers: &HeaderMap) -> Result<String, StripeError> {
    let unauthorized = |message: String| StripeError {
        status: StatusCode::UNAUTHORIZED,
        code: None,
        ..StripeError::invalid(message, None)
    };
    let key = headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .ok_or_else(|| unauthorized("You did not provide an API key. You need to provide your API key in the Authorization header, using Bearer auth (e.g. 'Authorization: Bearer YOUR_SECRET_KEY').".into()))?;
    let accepted = match &sim.inner.api_key {
        Some(expected) => key == expected,
        None => key.starts_with("sk_test_"),
    };
    if !accepted {
        let shown: String = key
            .chars()
            .rev()
            .take(4)
            .collect::<Vec<_>>()
            .into_iter()
            .rev()
            .collect();
        return Err(unauthorized(format!(
            "Invalid API Key provided: sk_test_****{shown}"
        )));
    }
    Ok(key.to_owned())
}

fn rate_limited() -> StripeError {
    StripeError {
        status: StatusCode::TOO_MANY_REQUESTS,
        kind: "invalid_request_error",
        code: Some("rate_limit"),
        message: "Request rate limit exceeded. Learn more about rate limits here https://stripe.com/docs/rate-limits.".into(),
        param: None,
        extra: Value::Null,
        executed: false,
        should_retry: Some(true),
    }
}

/// `POST /v1/payment_intents/pi_123/confirm` -> `POST /v1/payment_intents/:id/confirm`:
/// the unit Stripe's per-endpoint limits count.
fn path_shape(method: &Method, path: &str) -> String {
    let segments: Vec<&str> = path
        .split('/')
        .map(|s| match s.split_once('_') {
            Some((prefix, _)) if ["pi", "evt", "we", "ch"].contains(&prefix) => ":id",
            _ => s,
        })
        .collect();
    format!("{method} {}", segments.join("/"))
}

fn route(
    sim: &Sim,
    method: &Method,
    path: &str,
    p: &Params,
    ctx: &Ctx,
) -> Result<Value, StripeError> {
    let segments: Vec<&str> = path.trim_start_matches("/v1/").split('/').collect();
    let mut st = sim.state();
    match (method.as_str(), segments.as_slice()) {
        ("POST", ["payment_intents"]) => st.create_intent(p, ctx),
        ("GET", ["payment_intents"]) => st.list_intents(p),
        ("GET", ["payment_intents", "search"]) => st.search_intents(p),
        ("GET", ["payment_intents", id]) => st.retrieve(id),
        ("POST", ["payment_intents", id]) => st.update(id, p),
        ("POST", ["payment_intents", id, "confirm"]) => {
            st.confirm(id, p.string("payment_method"), ctx)
        }
        ("POST", ["payment_intents", id, "cancel"]) => st.cancel(id, p, ctx),
        ("POST", ["payment_intents", id, "capture"]) => st.capture(id, p, ctx),
        ("GET", ["events"]) => st.list_events(p),
        ("GET", ["events", id]) => st.event(id),
        ("POST", ["webhook_endpoints"]) => st.create_endpoint(p, ctx, None),
        ("GET", ["webhook_endpoints"]) => Ok(serde_json::json!({
            "object": "list",
            "data": st.endpoints.iter().map(|e| e.to_json(false)).collect::<Vec<_>>(),
            "has_more": false,
            "url": "/v1/webhook_endpoints",
        })),
        _ => Err(StripeError {
            status: StatusCode::NOT_FOUND,
            code: None,
            ..StripeError::invalid(
                format!("Unrecognized request URL ({method}: {path})."),
                None,
            )
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_collapse_into_endpoint_shapes() {
        assert_eq!(
            path_shape(&Method::POST, "/v1/payment_intents/pi_3QabcdefGHIJ/confirm"),
            "POST /v1/payment_intents/:id/confirm"
        );
        assert_eq!(
            path_shape(&Method::GET, "/v1/payment_intents"),
            "GET /v1/payment_intents"
        );
        assert_eq!(
            path_shape(&Method::GET, "/v1/payment_intents/pi_a1/x"),
            path_shape(&Method::GET, "/v1/payment_intents/pi_b2/x")
        );
    }
}
