//! `/v1/payments`: create (idempotent), read, list, history, cancel.

use std::collections::HashMap;
use std::time::Instant;

use axum::Json;
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{Extension, Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use chrono::{DateTime, Utc};
use paystream_core::gateway::{
    GatewayError, IntentView, NewIntent, StripeGateway, attempt_key, intent_key,
};
use paystream_core::{CaptureMethod, Currency, Money, PaymentStatus};
use paystream_core::{ClientId, PaymentId};
use paystream_db::idempotency::{self, Begin, Claim, Lease, Take};
use paystream_db::keys::Principal;
use paystream_db::payments::{
    self, Attached, ListFilter, NewPayment, Observation, Payment, Source,
};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use uuid::Uuid;

use crate::AppState;
use crate::error::ApiError;
use crate::validation;

/// A payment as clients see it.
#[derive(Debug, serde::Serialize, utoipa::ToSchema)]
pub struct PaymentView {
    pub id: Uuid,
    /// `pending`, `succeeded`, `failed` or `canceled`.
    pub status: String,
    /// Integer minor units of `currency`.
    pub amount: i64,
    /// ISO 4217, lower case.
    pub currency: String,
    pub idempotency_key: String,
    pub stripe_payment_intent_id: Option<String>,
    /// Stripe's own PaymentIntent status, finer than ours.
    pub stripe_status: Option<String>,
    /// Only in the response that created the PaymentIntent.
    pub client_secret: Option<String>,
    pub description: Option<String>,
    pub customer_email: Option<String>,
    #[schema(value_type = Object)]
    pub metadata: Value,
    pub last_error: Option<String>,
    /// Who resolved it: `api`, `webhook`, `poll`, `expiry` or `operator`.
    pub resolution_source: Option<String>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    pub resolved_at: Option<DateTime<Utc>>,
    // The three below are absent from replays of answers stored before they existed
    // (a replay is the first answer, byte for byte): not required.
    /// `automatic` or `manual` (held at Stripe's `requires_capture` until captured).
    #[schema(required = false)]
    pub capture_method: String,
    /// What Stripe took: 0 until it succeeded, then the amount or a partial capture.
    #[schema(required = false)]
    pub amount_captured: i64,
    /// The sum of its succeeded refunds.
    #[schema(required = false)]
    pub amount_refunded: i64,
}

pub(crate) fn payment_json(p: &Payment, client_secret: Option<&str>) -> Value {
    let view = PaymentView {
        id: p.id.as_uuid(),
        status: p.status.as_str().to_owned(),
        amount: p.amount,
        currency: p.currency.clone(),
        idempotency_key: p.idempotency_key.clone(),
        stripe_payment_intent_id: p.stripe_payment_intent_id.clone(),
        stripe_status: p.stripe_status.clone(),
        client_secret: client_secret.map(str::to_owned),
        description: p.description.clone(),
        customer_email: p.customer_email.clone(),
        metadata: p.metadata.clone(),
        last_error: p.last_error.clone(),
        resolution_source: p.resolution_source.map(|s| s.as_str().to_owned()),
        created_at: p.created_at,
        updated_at: p.updated_at,
        resolved_at: p.resolved_at,
        capture_method: p.capture_method.as_str().to_owned(),
        amount_captured: p.captured(),
        amount_refunded: p.amount_refunded,
    };
    serde_json::to_value(view).unwrap_or(Value::Null)
}

#[utoipa::path(post, path = "/v1/payments", tag = "payments",
    request_body = crate::validation::CreatePayment,
    params(("Idempotency-Key" = String, Header, min_length = 1, max_length = 255, pattern = "^[\\x20-\\x7E]+$",
        description = "1 to 255 printable ASCII characters; a retry with the same key and body replays the first final answer")),
    responses(
        (status = 200, description = "The payment was already final (canceled, expired or failed) when this retry ran: no PaymentIntent was made and no client secret is given", body = PaymentView),
        (status = 201, description = "Created, with its PaymentIntent and client secret", body = PaymentView),
        (status = 202, description = "`processor_unavailable`: recorded, but Stripe was unavailable (or refused our credentials); retry with the same key", body = crate::openapi::ErrorBody),
        (status = 400, description = "Invalid request (see `error.code`)", body = crate::openapi::ErrorBody),
        (status = 409, description = "`idempotency_key_in_use`: a request with this key is running; `payment_conflict`", body = crate::openapi::ErrorBody),
        (status = 422, description = "`idempotency_key_reused` (same key, other body) or `processor_rejected` (Stripe refused the payment, e.g. below its minimum amount: the payment is `failed`)", body = crate::openapi::ErrorBody),
    ),
    security(("bearer" = [])))]
pub async fn create(
    State(s): State<AppState>,
    Extension(who): Extension<Principal>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let body = body_bytes(body)?;
    let key =
        validation::idempotency_key(headers.get("idempotency-key").map(HeaderValue::as_bytes))?;
    let valid = validation::create_payment(&body, s.max_amount)?;
    // The request's identity for idempotency: its validated content, canonically encoded
    // (field order and whitespace do not make two requests different).
    let request_hash =
        Sha256::digest(serde_json::to_vec(&valid.request).unwrap_or_default()).to_vec();
    let metadata = serde_json::to_value(&valid.request.metadata).unwrap_or_else(|_| json!({}));
    let new = NewPayment {
        client_id: who.client_id,
        idempotency_key: &key,
        money: valid.money,
        description: valid.request.description.as_deref(),
        customer_email: valid.request.customer_email.as_deref(),
        metadata: &metadata,
        capture_method: valid.request.capture_method,
    };
    let recording = Instant::now();
    let begun = idempotency::begin(&s.db, &new, &request_hash, s.lease).await;
    create_phase(&s, "record", recording.elapsed());
    let (payment, lease, fresh) = match begun? {
        Begin::Created(p, lease) => (p, lease, true),
        Begin::Resume(p, lease) => (p, lease, false),
        Begin::Replay { status, body } => return Ok(replayed(status, body)),
        Begin::Mismatch => return Err(key_reused()),
        Begin::InFlight => return Err(key_in_use()),
    };
    tracing::Span::current().record("payment_id", tracing::field::display(payment.id));
    tracing::info!(payment_id = %payment.id, client_id = %who.client_id, fresh, "payment pending; finding its PaymentIntent");
    match finish_create(&s, payment, fresh, &lease).await? {
        Finish::Stored(status, body) => Ok((status, Json(body)).into_response()),
        Finish::Final(status, body) => {
            idempotency::complete(&s.db, &lease, status.as_u16(), &body).await?;
            Ok((status, Json(body)).into_response())
        }
        Finish::Unfinished(err) => {
            // Unknown outcome (timeout, 5xx, 429, our own Stripe settings): the payment
            // stays pending and the key is released without a stored response, so a retry
            // with the same key resumes it, and the reconciler finishes it if nobody retries.
            idempotency::release(&s.db, &lease).await?;
            Ok((err.status, Json(err.body())).into_response())
        }
    }
}

/// A request's body, or the error that says why it could not be read.
pub(crate) fn body_bytes(body: Result<Bytes, BytesRejection>) -> Result<Bytes, ApiError> {
    body.map_err(|e| {
        if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
            ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                "body_too_large",
                format!("bodies are limited to {} bytes", crate::BODY_LIMIT),
            )
        } else {
            ApiError::bad_request("invalid_body", e.body_text())
        }
    })
}

/// The stored first answer to a repeated request.
pub(crate) fn replayed(status: u16, body: Value) -> Response {
    let status = StatusCode::from_u16(status).unwrap_or(StatusCode::OK);
    let mut res = (status, Json(body)).into_response();
    res.headers_mut()
        .insert("idempotent-replayed", HeaderValue::from_static("true"));
    res
}

pub(crate) fn key_reused() -> ApiError {
    ApiError::new(
        StatusCode::UNPROCESSABLE_ENTITY,
        "idempotency_key_reused",
        "this Idempotency-Key was used with a different request",
    )
}

pub(crate) fn key_in_use() -> ApiError {
    ApiError::new(
        StatusCode::CONFLICT,
        "idempotency_key_in_use",
        "a request with this Idempotency-Key is in progress; retry later",
    )
}

/// How a create request ends: a final answer, stored for replay, or an unfinished one
/// (the key is released so a retry resumes the payment).
enum Finish {
    Final(StatusCode, Value),
    /// Final, and already stored for the key by the write that made it.
    Stored(StatusCode, Value),
    Unfinished(ApiError),
}

/// The Stripe side of a create, outside any transaction (the pending row and the key are
/// committed). Keeps I1 and I2 (docs/invariants.md): a payment that is already final gets
/// nothing new, and the client secret handed out is always that of the payment's one
/// intent.
async fn finish_create(
    s: &AppState,
    payment: Payment,
    fresh: bool,
    lease: &Lease,
) -> Result<Finish, ApiError> {
    if payment.status.is_final() {
        // Canceled, expired or failed while the key was free: replay the outcome, never
        // a new PaymentIntent (Stripe may have forgotten the create key by now).
        return Ok(Finish::Final(StatusCode::OK, payment_json(&payment, None)));
    }
    let pid = payment.id.to_string();
    let started = Instant::now();
    let (operation, intent) = match &payment.stripe_payment_intent_id {
        Some(pi) => ("retrieve_intent", s.stripe.retrieve_intent(pi).await),
        None if fresh => ("create_intent", create_intent(s, &payment).await),
        // An earlier attempt may have made the intent and died before storing it: find it
        // first, since Stripe forgets the create key after 24 hours.
        None => match s.stripe.find_by_payment_id(&pid).await {
            Ok(Some(pi)) => ("search_intent", Ok(pi)),
            Ok(None) | Err(GatewayError::Unsupported(_)) => {
                ("create_intent", create_intent(s, &payment).await)
            }
            Err(e) => ("search_intent", Err(e)),
        },
    };
    let stripe_took = started.elapsed();
    let outcome = match &intent {
        Ok(_) if operation == "create_intent" => "created",
        Ok(_) => "ok",
        Err(e) => e.label(),
    };
    s.metrics.inc(
        "stripe_calls_total",
        "Stripe calls by operation and outcome",
        &[("operation", operation), ("outcome", outcome)],
    );
    tracing::info!(
        payment_id = %payment.id,
        operation,
        outcome,
        intent = intent.as_ref().map(|pi| pi.id.as_str()).unwrap_or_default(),
        // Its share of the request's own `latency_us`.
        latency_us = u64::try_from(stripe_took.as_micros()).unwrap_or(u64::MAX),
        "stripe call"
    );
    create_phase(s, "stripe", stripe_took);
    match intent {
        Ok(pi) => {
            let storing = Instant::now();
            let adopted = adopt(s, payment, pi, lease).await;
            create_phase(s, "store", storing.elapsed());
            adopted
        }
        Err(GatewayError::Rejected {
            status,
            code,
            message,
        }) if payment.stripe_payment_intent_id.is_none() => {
            // Stripe refused to create it (e.g. below its minimum amount): the customer's
            // request can never succeed, and no intent exists.
            tracing::warn!(payment_id = %payment.id, stripe_status = status, code = %code, "Stripe rejected the PaymentIntent");
            let reason = format!("{code}: {message}");
            let obs =
                Observation::without_intent(PaymentStatus::Failed, Some(&reason), Source::Api);
            let failed = payments::apply_status(&s.db, payment.id, &obs)
                .await?
                .payment()
                .unwrap_or(payment);
            if failed.status != PaymentStatus::Failed {
                return Ok(Finish::Final(StatusCode::OK, payment_json(&failed, None)));
            }
            let err = ApiError::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "processor_rejected",
                format!("the payment processor refused the payment: {reason}"),
            )
            .with_payment(payment_json(&failed, None));
            Ok(Finish::Final(err.status, err.body()))
        }
        Err(e) => {
            if matches!(e, GatewayError::Misconfigured { .. }) {
                tracing::error!(payment_id = %payment.id, error = %e, "Stripe refused our credentials; payment left pending");
            } else {
                tracing::warn!(payment_id = %payment.id, error = %e, "Stripe unavailable; payment left pending");
            }
            Ok(Finish::Unfinished(
                ApiError::new(StatusCode::ACCEPTED, "processor_unavailable", "the payment is recorded but the payment processor is unavailable; retry with the same Idempotency-Key or poll the payment")
                    .with_payment(payment_json(&payment, None)),
            ))
        }
    }
}

/// Where a create's time goes, for the single-client latency budget: `record` (the key
/// and the pending row, one commit), `stripe` (the PaymentIntent call), `store` (the
/// intent and the stored answer, one commit). The rest of `http_request_duration_seconds`
/// is the request's own work (auth, validation, JSON).
fn create_phase(s: &AppState, phase: &'static str, took: std::time::Duration) {
    s.metrics.observe(
        "payment_create_phase_seconds",
        "Time spent by POST /v1/payments in each of its phases: record, stripe, store",
        &[("phase", phase)],
        took,
    );
}

/// The PaymentIntent of a payment, with the payment's own create key (so every attempt,
/// the API's, a cancel's or the reconciler's, gets the same one from Stripe).
async fn create_intent(s: &AppState, p: &Payment) -> Result<IntentView, GatewayError> {
    let money = Money::new(
        p.amount,
        Currency::parse(&p.currency)
            .map_err(|e| GatewayError::Unavailable(format!("stored currency: {e}")))?,
        i64::MAX,
    )
    .map_err(|e| GatewayError::Unavailable(format!("stored amount: {e}")))?;
    s.stripe
        .create_intent(&NewIntent {
            payment_id: &p.id.to_string(),
            money,
            description: p.description.as_deref(),
            receipt_email: p.customer_email.as_deref(),
            capture_method: p.capture_method,
            idempotency_key: &intent_key(&p.id),
        })
        .await
}

/// Makes `pi` the payment's intent, if the payment still takes one, and answers with it.
/// An intent still open at Stripe is linked and its answer stored in one commit.
async fn adopt(
    s: &AppState,
    payment: Payment,
    pi: IntentView,
    lease: &Lease,
) -> Result<Finish, ApiError> {
    let stripe_final = pi.status().filter(|st| st.is_final());
    let secret = pi.client_secret.as_deref();
    let (attached, answered) =
        idempotency::attach_and_complete(&s.db, lease, &payment, &pi.id, &pi.stripe_status, |p| {
            stripe_final
                .is_none()
                .then(|| (StatusCode::CREATED.as_u16(), payment_json(p, secret)))
        })
        .await?;
    match attached {
        Attached::Attached(p) => match (stripe_final, answered) {
            (None, Some((_, body))) => Ok(Finish::Stored(StatusCode::CREATED, body)),
            // Already over at Stripe (canceled there, or paid): record it, no secret.
            (Some(status), _) => {
                let p = observe(s, p.id, status, &pi).await?;
                Ok(Finish::Final(StatusCode::OK, payment_json(&p, None)))
            }
            (None, None) => Ok(Finish::Final(StatusCode::CREATED, payment_json(&p, secret))),
        },
        Attached::Refused(p) => {
            if p.stripe_payment_intent_id.as_deref() != Some(pi.id.as_str()) {
                // A stray: the payment went final without it, or holds another one. It
                // must never be paid: cancel it at Stripe, never hand out its secret.
                cancel_stray(s, p.id, &pi).await;
            }
            if p.status.is_final() {
                return Ok(Finish::Final(StatusCode::OK, payment_json(&p, None)));
            }
            tracing::error!(payment_id = %p.id, intent = %pi.id, "payment is linked to another PaymentIntent");
            Ok(Finish::Unfinished(ApiError::new(
                StatusCode::CONFLICT,
                "payment_conflict",
                "the payment is linked to another PaymentIntent",
            )))
        }
        Attached::NotFound => Err(ApiError::not_found()),
    }
}

/// Applies what Stripe says of the payment's intent (source `api`).
async fn observe(
    s: &AppState,
    id: PaymentId,
    status: PaymentStatus,
    pi: &IntentView,
) -> Result<Payment, ApiError> {
    payments::apply_status(&s.db, id, &Observation::of_intent(status, pi, Source::Api))
        .await?
        .payment()
        .ok_or_else(ApiError::not_found)
}

/// Best effort: a stray that stays open is still never paid (nobody has its secret), and
/// the report lists it as `orphan_at_stripe`.
async fn cancel_stray(s: &AppState, payment_id: PaymentId, pi: &IntentView) {
    if pi.status().is_some_and(|st| st.is_final()) {
        return;
    }
    let key = attempt_key("stray", &payment_id, &Uuid::now_v7());
    match s
        .stripe
        .cancel_intent(&pi.id, Some("abandoned"), &key)
        .await
    {
        Ok(_) => {
            tracing::warn!(payment_id = %payment_id, intent = %pi.id, "stray PaymentIntent canceled at Stripe")
        }
        Err(e) => {
            tracing::error!(payment_id = %payment_id, intent = %pi.id, error = %e, "could not cancel a stray PaymentIntent")
        }
    }
}

pub(crate) fn parse_id(raw: &str) -> Result<PaymentId, ApiError> {
    // A malformed id names no payment: 404, like an unknown one.
    let id: PaymentId = raw.parse().map_err(|_| ApiError::not_found())?;
    // Every line of this request names the payment (the request span's field).
    tracing::Span::current().record("payment_id", tracing::field::display(id));
    Ok(id)
}

#[utoipa::path(get, path = "/v1/payments/{id}", tag = "payments",
    params(("id" = Uuid, Path, description = "Payment id (anything else is 404)")),
    responses((status = 200, body = PaymentView), (status = 404, description = "`payment_not_found` (also another client's payment)", body = crate::openapi::ErrorBody)),
    security(("bearer" = [])))]
pub async fn get(
    State(s): State<AppState>,
    Extension(who): Extension<Principal>,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let id = parse_id(&id)?;
    let p = payments::get(&s.db, who.client_id, id)
        .await?
        .ok_or_else(ApiError::not_found)?;
    Ok(Json(payment_json(&p, None)))
}

#[utoipa::path(get, path = "/v1/payments/{id}/events", tag = "payments",
    params(("id" = Uuid, Path, description = "Payment id (anything else is 404)")),
    responses((status = 200, description = "Status history of the payment and its refunds, oldest first: `{data: [{from_status, to_status, source, detail, created_at}]}`; a refund's entries also carry its `refund_id`", body = Object), (status = 404, body = crate::openapi::ErrorBody)),
    security(("bearer" = [])))]
pub async fn events(
    State(s): State<AppState>,
    Extension(who): Extension<Principal>,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let id = parse_id(&id)?;
    let history = payments::history(&s.db, who.client_id, id)
        .await?
        .ok_or_else(ApiError::not_found)?;
    let refunds = paystream_db::refunds::history_of_payment(&s.db, id).await?;
    // One timeline: the payment's changes and its refunds' (which name their refund).
    let mut data: Vec<(DateTime<Utc>, Value)> = history
        .iter()
        .map(|h| (h.created_at, serde_json::to_value(h).unwrap_or(Value::Null)))
        .chain(
            refunds
                .iter()
                .map(|h| (h.created_at, serde_json::to_value(h).unwrap_or(Value::Null))),
        )
        .collect();
    data.sort_by_key(|(at, _)| *at);
    Ok(Json(
        json!({"data": data.into_iter().map(|(_, v)| v).collect::<Vec<_>>()}),
    ))
}

#[utoipa::path(get, path = "/v1/payments", tag = "payments",
    params(
        ("status" = Option<String>, Query, pattern = "^(pending|succeeded|failed|canceled)$", description = "pending, succeeded, failed or canceled"),
        ("created_gte" = Option<String>, Query, format = DateTime, description = "RFC 3339"),
        ("created_lt" = Option<String>, Query, format = DateTime, description = "RFC 3339"),
        ("limit" = Option<i64>, Query, minimum = 1, maximum = 100, description = "1 to 100, default 20"),
        ("starting_after" = Option<Uuid>, Query, description = "last id of the previous page"),
    ),
    responses((status = 200, description = "Newest first: `{data: [Payment], has_more}`", body = Object), (status = 400, description = "`invalid_query`", body = crate::openapi::ErrorBody)),
    security(("bearer" = [])))]
pub async fn list(
    State(s): State<AppState>,
    Extension(who): Extension<Principal>,
    Query(q): Query<HashMap<String, String>>,
) -> Result<Json<Value>, ApiError> {
    let mut f = ListFilter {
        limit: 20,
        ..ListFilter::default()
    };
    for (k, v) in &q {
        let bad = |what: &str| ApiError::bad_request("invalid_query", format!("{k}: {what}"));
        match k.as_str() {
            "status" => {
                f.status = Some(
                    v.parse()
                        .map_err(|_| bad("one of pending, succeeded, failed, canceled"))?,
                )
            }
            "created_gte" => {
                f.created_gte = Some(timestamp(v).ok_or_else(|| bad("an RFC 3339 timestamp"))?)
            }
            "created_lt" => {
                f.created_lt = Some(timestamp(v).ok_or_else(|| bad("an RFC 3339 timestamp"))?)
            }
            "starting_after" => {
                f.starting_after = Some(v.parse().map_err(|_| bad("a payment id"))?)
            }
            "limit" => {
                f.limit = v
                    .parse()
                    .ok()
                    .filter(|n| (1..=100).contains(n))
                    .ok_or_else(|| bad("an integer from 1 to 100"))?
            }
            _ => {
                return Err(ApiError::bad_request(
                    "invalid_query",
                    format!("unknown parameter {k}"),
                ));
            }
        }
    }
    let limit = f.limit;
    f.limit += 1;
    let mut rows = payments::list(&s.db, who.client_id, &f).await?;
    let has_more = rows.len() as i64 > limit;
    rows.truncate(limit as usize);
    Ok(Json(json!({
        "data": rows.iter().map(|p| payment_json(p, None)).collect::<Vec<_>>(),
        "has_more": has_more,
    })))
}

fn timestamp(v: &str) -> Option<DateTime<Utc>> {
    DateTime::parse_from_rfc3339(v)
        .ok()
        .map(|t| t.with_timezone(&Utc))
}

/// Cancels a pending payment: its PaymentIntent first, then our row. A payment that Stripe
/// already took stays (and becomes) succeeded. Runs under the payment's idempotency lease,
/// so a create of the same payment never runs beside it (I1, docs/invariants.md).
#[utoipa::path(post, path = "/v1/payments/{id}/cancel", tag = "payments",
    params(("id" = Uuid, Path, description = "Payment id (anything else is 404)")),
    responses(
        (status = 200, description = "Canceled (also when it already was)", body = PaymentView),
        (status = 404, description = "`payment_not_found` (also another client's payment)", body = crate::openapi::ErrorBody),
        (status = 409, description = "`payment_not_cancelable`: it is final, or Stripe already took it; `payment_in_progress`: a create of this payment is running, retry shortly", body = crate::openapi::ErrorBody),
        (status = 503, description = "`processor_unavailable` or `database_unavailable`: nothing changed, retry later", body = crate::openapi::ErrorBody),
    ),
    security(("bearer" = [])))]
pub async fn cancel(
    State(s): State<AppState>,
    Extension(who): Extension<Principal>,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let id = parse_id(&id)?;
    let p = payments::get(&s.db, who.client_id, id)
        .await?
        .ok_or_else(ApiError::not_found)?;
    if let Some(done) = cancel_answer(&p)? {
        return Ok(done);
    }
    let lease = match idempotency::take(&s.db, p.client_id, &p.idempotency_key, s.lease).await? {
        Take::InFlight => {
            return Err(ApiError::new(
                StatusCode::CONFLICT,
                "payment_in_progress",
                "a request for this payment is in progress; retry shortly",
            )
            .with_payment(payment_json(&p, None)));
        }
        Take::Held(lease) => Some(lease),
        Take::Completed => None,
    };
    let result = cancel_held(&s, who.client_id, id).await;
    if let Some(lease) = lease {
        idempotency::release(&s.db, &lease).await?;
    }
    result
}

/// The answer to a cancel of `p` when there is nothing to do at Stripe (it is canceled
/// already, or final otherwise); `None` while it is pending.
fn cancel_answer(p: &Payment) -> Result<Option<Json<Value>>, ApiError> {
    match p.status {
        PaymentStatus::Canceled => Ok(Some(Json(payment_json(p, None)))),
        PaymentStatus::Pending => Ok(None),
        other => Err(ApiError::new(
            StatusCode::CONFLICT,
            "payment_not_cancelable",
            format!("the payment is {other}"),
        )
        .with_payment(payment_json(p, None))),
    }
}

async fn cancel_held(
    s: &AppState,
    client_id: ClientId,
    id: PaymentId,
) -> Result<Json<Value>, ApiError> {
    // Read again under the lease: a create may have finished meanwhile.
    let p = payments::get(&s.db, client_id, id)
        .await?
        .ok_or_else(ApiError::not_found)?;
    if let Some(done) = cancel_answer(&p)? {
        return Ok(done);
    }
    let intent_id = match &p.stripe_payment_intent_id {
        Some(i) => Some(i.clone()),
        // None recorded: the create key returns the intent an earlier attempt may have
        // made (search is eventually consistent, the key is not), or makes one to cancel,
        // so that no later attempt can make a chargeable one.
        None => match create_intent(s, &p).await {
            Ok(pi) => match payments::attach_intent(&s.db, id, &pi.id, &pi.stripe_status).await? {
                Attached::Attached(_) => Some(pi.id),
                Attached::Refused(now) => {
                    if now.status.is_final() {
                        cancel_stray(s, id, &pi).await;
                    }
                    if let Some(done) = cancel_answer(&now)? {
                        return Ok(done);
                    }
                    now.stripe_payment_intent_id
                }
                Attached::NotFound => return Err(ApiError::not_found()),
            },
            // Stripe refuses to create it: no intent exists for this payment.
            Err(GatewayError::Rejected { .. }) => None,
            Err(e) => return Err(unavailable(e)),
        },
    };
    let observed = match intent_id {
        None => None,
        Some(intent) => match s
            .stripe
            .cancel_intent(
                &intent,
                Some("requested_by_customer"),
                &attempt_key("cancel", &id, &Uuid::now_v7()),
            )
            .await
        {
            Ok(pi) => Some(pi),
            // Stripe refuses when the intent is already final (or processing): read it.
            Err(GatewayError::Rejected { .. }) => Some(
                s.stripe
                    .retrieve_intent(&intent)
                    .await
                    .map_err(unavailable)?,
            ),
            Err(e) => return Err(unavailable(e)),
        },
    };
    let obs = match &observed {
        None => Observation::without_intent(PaymentStatus::Canceled, None, Source::Api),
        Some(pi) => Observation::of_intent(
            pi.status().unwrap_or(PaymentStatus::Pending),
            pi,
            Source::Api,
        ),
    };
    let after = payments::apply_status(&s.db, id, &obs)
        .await?
        .payment()
        .ok_or_else(ApiError::not_found)?;
    if after.status != PaymentStatus::Canceled {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            "payment_not_cancelable",
            format!("the payment is {}", after.status),
        )
        .with_payment(payment_json(&after, None)));
    }
    Ok(Json(payment_json(&after, None)))
}

fn unavailable(e: GatewayError) -> ApiError {
    tracing::warn!(error = %e, "Stripe call failed");
    ApiError::new(
        StatusCode::SERVICE_UNAVAILABLE,
        "processor_unavailable",
        "the payment processor is unavailable; retry later",
    )
}

/// Captures a manual payment that Stripe holds at `requires_capture`: all of it, or part
/// (the rest is released to the customer). Idempotent by its own key; Stripe is called
/// with one key per payment, so two captures of one payment can never both take money.
#[utoipa::path(post, path = "/v1/payments/{id}/capture", tag = "payments",
    request_body = crate::validation::CapturePayment,
    params(("id" = Uuid, Path, description = "Payment id (anything else is 404)"),
        ("Idempotency-Key" = String, Header, min_length = 1, max_length = 255, pattern = "^[\\x20-\\x7E]+$",
        description = "a retry with the same key and body replays the first final answer")),
    responses(
        (status = 200, description = "Captured: `succeeded`, with `amount_captured`", body = PaymentView),
        (status = 400, description = "Invalid request (see `error.code`)", body = crate::openapi::ErrorBody),
        (status = 404, description = "`payment_not_found` (also another client's payment)", body = crate::openapi::ErrorBody),
        (status = 409, description = "`payment_not_capturable`: not a manual payment, not awaiting capture (not paid yet, already captured, canceled or its authorization expired); `idempotency_key_in_use`", body = crate::openapi::ErrorBody),
        (status = 422, description = "`capture_exceeds_authorized`: more than the payment's amount; `idempotency_key_reused`", body = crate::openapi::ErrorBody),
        (status = 503, description = "`processor_unavailable` or `database_unavailable`: retry with the same key", body = crate::openapi::ErrorBody),
    ),
    security(("bearer" = [])))]
pub async fn capture(
    State(s): State<AppState>,
    Extension(who): Extension<Principal>,
    Path(id): Path<String>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let body = body_bytes(body)?;
    let id = parse_id(&id)?;
    let key =
        validation::idempotency_key(headers.get("idempotency-key").map(HeaderValue::as_bytes))?;
    let valid = validation::capture_payment(&body, s.max_amount)?;
    let p = payments::get(&s.db, who.client_id, id)
        .await?
        .ok_or_else(ApiError::not_found)?;
    if let Some(amount) = valid.amount_to_capture
        && amount > p.amount
    {
        return Err(ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "capture_exceeds_authorized",
            format!("at most {} {} can be captured", p.amount, p.currency),
        )
        .with_payment(payment_json(&p, None)));
    }
    let request_hash = request_hash("capture", id, &valid);
    let lease = match idempotency::claim(&s.db, who.client_id, &key, &request_hash, s.lease).await?
    {
        Claim::New(lease) | Claim::Resume { lease, .. } => lease,
        Claim::Replay { status, body } => return Ok(replayed(status, body)),
        Claim::Mismatch => return Err(key_reused()),
        Claim::InFlight => return Err(key_in_use()),
    };
    answer_keyed(
        &s,
        &lease,
        capture_held(&s, p, valid.amount_to_capture).await,
    )
    .await
}

/// A request's identity for its idempotency key: the endpoint, the payment it is about
/// and its validated content (a key names one request, whichever endpoint).
pub(crate) fn request_hash(
    endpoint: &str,
    payment: PaymentId,
    valid: &impl serde::Serialize,
) -> Vec<u8> {
    let mut hasher = Sha256::new();
    hasher.update(endpoint.as_bytes());
    hasher.update(b"\0");
    hasher.update(payment.to_string());
    hasher.update(b"\0");
    hasher.update(serde_json::to_vec(valid).unwrap_or_default());
    hasher.finalize().to_vec()
}

/// Ends a keyed request: a final answer is stored for its key and sent; an unfinished one
/// (`Err`: the outcome is unknown) frees the key for a retry to resume.
pub(crate) async fn answer_keyed(
    s: &AppState,
    lease: &idempotency::Lease,
    outcome: Result<(StatusCode, Value), ApiError>,
) -> Result<Response, ApiError> {
    match outcome {
        Ok((status, body)) => {
            idempotency::complete(&s.db, lease, status.as_u16(), &body).await?;
            Ok((status, Json(body)).into_response())
        }
        Err(unfinished) => {
            idempotency::release(&s.db, lease).await?;
            Err(unfinished)
        }
    }
}

/// The capture itself: a final answer (stored for the key), or an error that leaves the
/// key free for a retry.
async fn capture_held(
    s: &AppState,
    p: Payment,
    amount: Option<i64>,
) -> Result<(StatusCode, Value), ApiError> {
    let not_capturable = |p: &Payment, why: String| {
        let err = ApiError::new(StatusCode::CONFLICT, "payment_not_capturable", why)
            .with_payment(payment_json(p, None));
        (err.status, err.body())
    };
    if p.capture_method != CaptureMethod::Manual {
        return Ok(not_capturable(
            &p,
            "the payment is captured automatically".into(),
        ));
    }
    let Some(intent) = p.stripe_payment_intent_id.clone() else {
        return Ok(not_capturable(
            &p,
            format!("the payment is {} and was never sent to Stripe", p.status),
        ));
    };
    if p.status != PaymentStatus::Pending {
        return Ok(not_capturable(&p, format!("the payment is {}", p.status)));
    }
    let captured = s
        .stripe
        .capture_intent(&intent, amount, &format!("paystream-capture-{}", p.id))
        .await;
    tracing::info!(
        payment_id = %p.id,
        operation = "capture_intent",
        outcome = match &captured {
            Ok(_) => "ok",
            Err(e) => e.label(),
        },
        intent = %intent,
        amount_to_capture = amount,
        "stripe call"
    );
    let (pi, ours) = match captured {
        Ok(pi) => (pi, true),
        // Stripe refuses: not paid yet, already captured or canceled (an expired
        // authorization), or another capture of ours with other parameters won. What
        // the intent says now is recorded, and this capture answered as refused.
        Err(GatewayError::Rejected { .. } | GatewayError::KeyReused) => (
            s.stripe
                .retrieve_intent(&intent)
                .await
                .map_err(unavailable)?,
            false,
        ),
        Err(e) => return Err(unavailable(e)),
    };
    let after = match pi.status() {
        Some(status) => observe(s, p.id, status, &pi).await?,
        None => p,
    };
    if ours && after.status == PaymentStatus::Succeeded {
        return Ok((StatusCode::OK, payment_json(&after, None)));
    }
    let why = format!(
        "the payment is {} (Stripe: {}): only a payment awaiting capture can be captured",
        after.status, pi.stripe_status
    );
    Ok(not_capturable(&after, why))
}
