//! Stripe's `Idempotency-Key` on POSTs, scoped to the API key: the first response of an
//! endpoint that began executing is stored and replayed (status and body, with
//! `Idempotent-Replayed: true`); the key with other parameters is a 400; a request while
//! the first is running is a 409. Keys are pruned 24 hours (simulated) after their first
//! response. Responses that never reached an endpoint's logic (validation errors, 429s,
//! injected 500s) are not stored, so the key can be used again.

use std::collections::HashMap;
use std::collections::hash_map::Entry;

use axum::body::{Body, Bytes, to_bytes};
use axum::extract::{Request, State};
use axum::http::{HeaderValue, Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use super::auth::ApiKey;
use crate::Sim;
use crate::error::StripeError;
use crate::form::Params;

/// How long Stripe keeps an idempotency key (simulated time).
pub const KEY_TTL_MS: i64 = 24 * 3_600_000;

/// Set on a response by an endpoint that began executing: Stripe stores only those.
#[derive(Debug, Clone, Copy)]
pub struct Executed;

/// (API key, idempotency key).
type Scoped = (String, String);

/// A stored first response.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stored {
    status: StatusCode,
    body: Bytes,
}

impl Stored {
    fn replay(self) -> Response {
        let mut res = (
            self.status,
            [(header::CONTENT_TYPE, "application/json")],
            self.body,
        )
            .into_response();
        res.headers_mut()
            .insert("idempotent-replayed", HeaderValue::from_static("true"));
        res
    }
}

#[derive(Debug, Clone)]
enum Key {
    InFlight,
    Done {
        fingerprint: String,
        response: Stored,
        at_ms: i64,
    },
}

/// What a request holding a key does.
#[derive(Debug, PartialEq, Eq)]
pub enum Begin {
    /// The key is now in flight: run the endpoint, then `finish`.
    Run,
    Replay(Stored),
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum KeyError {
    #[error("Idempotency-Key must be 1 to 255 characters")]
    BadLength,
    #[error(
        "There is currently another in-progress request using this Idempotency Key. Try again later."
    )]
    InUse,
    #[error(
        "Keys for idempotent requests can only be used with the same parameters they were first used with. Try using a key other than '{0}' if you meant to execute a different request."
    )]
    Reused(String),
}

impl From<KeyError> for StripeError {
    fn from(e: KeyError) -> Self {
        let message = e.to_string();
        match e {
            KeyError::BadLength => StripeError::invalid(message, None),
            KeyError::InUse => StripeError {
                status: StatusCode::CONFLICT,
                kind: "idempotency_error",
                code: Some("idempotency_key_in_use"),
                ..StripeError::invalid(message, None)
            },
            KeyError::Reused(_) => StripeError {
                kind: "idempotency_error",
                code: Some("idempotency_key_reused"),
                ..StripeError::invalid(message, None)
            },
        }
    }
}

#[derive(Debug, Default)]
pub struct IdempotencyStore {
    keys: HashMap<Scoped, Key>,
}

impl IdempotencyStore {
    pub fn begin(
        &mut self,
        key: &Scoped,
        fingerprint: &str,
        now_ms: i64,
    ) -> Result<Begin, KeyError> {
        if let Some(Key::Done { at_ms, .. }) = self.keys.get(key)
            && now_ms - *at_ms >= KEY_TTL_MS
        {
            // Pruned, as Stripe does after 24 hours: the key is new again.
            self.keys.remove(key);
        }
        match self.keys.entry(key.clone()) {
            Entry::Occupied(e) => match e.get() {
                Key::InFlight => Err(KeyError::InUse),
                Key::Done {
                    fingerprint: first,
                    response,
                    ..
                } => {
                    if first != fingerprint {
                        return Err(KeyError::Reused(key.1.clone()));
                    }
                    Ok(Begin::Replay(response.clone()))
                }
            },
            Entry::Vacant(v) => {
                v.insert(Key::InFlight);
                Ok(Begin::Run)
            }
        }
    }

    /// Ends a `Run`: stores the response if there is one to store, else frees the key.
    pub fn finish(
        &mut self,
        key: Scoped,
        fingerprint: String,
        response: Option<Stored>,
        now_ms: i64,
    ) {
        match response {
            Some(response) => {
                self.keys.insert(
                    key,
                    Key::Done {
                        fingerprint,
                        response,
                        at_ms: now_ms,
                    },
                );
            }
            None => {
                self.keys.remove(&key);
            }
        }
    }

    pub fn clear(&mut self) {
        self.keys.clear();
    }
}

pub async fn layer(State(sim): State<Sim>, req: Request, next: Next) -> Response {
    let header = req
        .headers()
        .get("idempotency-key")
        .and_then(|v| v.to_str().ok());
    let (Some(key), &Method::POST) = (header, req.method()) else {
        return next.run(req).await;
    };
    if key.is_empty() || key.len() > 255 {
        return StripeError::from(KeyError::BadLength).into_response();
    }
    let (Some(ApiKey(api_key)), Some(params)) = (
        req.extensions().get::<ApiKey>(),
        req.extensions().get::<Params>(),
    ) else {
        return StripeError::api_error(
            "stripe-sim: the idempotency layer runs behind the auth and params layers",
        )
        .into_response();
    };
    let scoped = (api_key.clone(), key.to_owned());
    let fingerprint = format!(
        "{} {}?{}",
        req.method(),
        req.uri().path(),
        params.fingerprint()
    );
    let begun = sim
        .idempotency()
        .begin(&scoped, &fingerprint, sim.inner.clock.now_ms());
    match begun {
        Err(e) => return StripeError::from(e).into_response(),
        Ok(Begin::Replay(stored)) => return stored.replay(),
        Ok(Begin::Run) => {}
    }
    let res = next.run(req).await;
    let (res, stored) = if res.extensions().get::<Executed>().is_some() {
        let (parts, body) = res.into_parts();
        match to_bytes(body, usize::MAX).await {
            Ok(body) => {
                let stored = Stored {
                    status: parts.status,
                    body: body.clone(),
                };
                (Response::from_parts(parts, Body::from(body)), Some(stored))
            }
            Err(_) => (
                StripeError::api_error("stripe-sim could not buffer the response").into_response(),
                None,
            ),
        }
    } else {
        (res, None)
    };
    sim.idempotency()
        .finish(scoped, fingerprint, stored, sim.inner.clock.now_ms());
    res
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(k: &str) -> Scoped {
        ("sk_test_a".into(), k.into())
    }

    fn stored(status: u16, body: &'static str) -> Stored {
        Stored {
            status: StatusCode::from_u16(status).unwrap(),
            body: Bytes::from_static(body.as_bytes()),
        }
    }

    #[test]
    fn a_stored_response_replays_for_the_same_request_only() {
        let mut s = IdempotencyStore::default();
        assert_eq!(s.begin(&key("k"), "POST /a?x=1", 0), Ok(Begin::Run));
        assert_eq!(s.begin(&key("k"), "POST /a?x=1", 0), Err(KeyError::InUse));
        s.finish(key("k"), "POST /a?x=1".into(), Some(stored(402, "{}")), 0);
        assert_eq!(
            s.begin(&key("k"), "POST /a?x=1", 1),
            Ok(Begin::Replay(stored(402, "{}")))
        );
        assert_eq!(
            s.begin(&key("k"), "POST /a?x=2", 1),
            Err(KeyError::Reused("k".into()))
        );
        assert_eq!(
            s.begin(&("sk_test_b".into(), "k".into()), "POST /a?x=2", 1),
            Ok(Begin::Run),
            "keys are scoped to the API key"
        );
    }

    #[test]
    fn an_unstored_outcome_frees_the_key_and_keys_expire_after_a_day() {
        let mut s = IdempotencyStore::default();
        assert_eq!(s.begin(&key("k"), "f", 0), Ok(Begin::Run));
        s.finish(key("k"), "f".into(), None, 0);
        assert_eq!(s.begin(&key("k"), "g", 0), Ok(Begin::Run));
        s.finish(key("k"), "g".into(), Some(stored(200, "1")), 10);
        assert!(matches!(
            s.begin(&key("k"), "g", 10 + KEY_TTL_MS - 1),
            Ok(Begin::Replay(_))
        ));
        assert_eq!(s.begin(&key("k"), "other", 10 + KEY_TTL_MS), Ok(Begin::Run));
    }

    #[test]
    fn key_errors_have_stripes_shape() {
        let e = StripeError::from(KeyError::InUse);
        assert_eq!(e.status, StatusCode::CONFLICT);
        assert_eq!(e.body()["error"]["code"], "idempotency_key_in_use");
        let e = StripeError::from(KeyError::Reused("abc".into()));
        assert_eq!(e.status, StatusCode::BAD_REQUEST);
        assert_eq!(e.body()["error"]["type"], "idempotency_error");
        assert!(e.message.contains("other than 'abc'"));
    }
}
