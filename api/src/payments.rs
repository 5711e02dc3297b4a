//! `/v1/payments`: create (idempotent), read, list, history, cancel.

use std::collections::HashMap;

use axum::Json;
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{Extension, Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use chrono::{DateTime, Utc};
use paystream_core::PaymentStatus;
use paystream_core::gateway::{GatewayError, NewIntent, StripeGateway, intent_key};
use paystream_db::idempotency::{self, Begin};
use paystream_db::keys::Principal;
use paystream_db::payments::{self, Applied, ListFilter, NewPayment, Observation, Payment, Source};
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
}

fn payment_json(p: &Payment, client_secret: Option<&str>) -> Value {
    let view = PaymentView {
        id: p.id,
        status: p.status.clone(),
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
        resolution_source: p.resolution_source.clone(),
        created_at: p.created_at,
        updated_at: p.updated_at,
        resolved_at: p.resolved_at,
    };
    serde_json::to_value(view).unwrap_or(Value::Null)
}

#[utoipa::path(post, path = "/v1/payments", tag = "payments",
    request_body = crate::validation::CreatePayment,
    params(("Idempotency-Key" = String, Header, description = "1-255 printable ASCII; a retry with the same key and body replays the first response")),
    responses(
        (status = 201, description = "Created, with its PaymentIntent", body = PaymentView),
        (status = 202, description = "Recorded, but Stripe was unavailable (`processor_unavailable`); retry with the same key", body = crate::openapi::ErrorBody),
        (status = 400, description = "Invalid request (see `error.code`)", body = crate::openapi::ErrorBody),
        (status = 401, description = "Missing or invalid API key", body = crate::openapi::ErrorBody),
        (status = 409, description = "`idempotency_key_in_use`", body = crate::openapi::ErrorBody),
        (status = 413, description = "`body_too_large`", body = crate::openapi::ErrorBody),
        (status = 422, description = "`idempotency_key_reused` or `processor_rejected`", body = crate::openapi::ErrorBody),
        (status = 429, description = "`rate_limited`, see Retry-After", body = crate::openapi::ErrorBody),
    ),
    security(("bearer" = [])))]
pub async fn create(
    State(s): State<AppState>,
    Extension(who): Extension<Principal>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let body = body.map_err(|e| {
        if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
            ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                "body_too_large",
                format!("bodies are limited to {} bytes", crate::BODY_LIMIT),
            )
        } else {
            ApiError::bad_request("invalid_body", e.body_text())
        }
    })?;
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
    };
    let payment = match idempotency::begin(&s.db, &new, &request_hash, s.lease).await? {
        Begin::Created(p) | Begin::Resume(p) => p,
        Begin::Replay { status, body } => {
            let status = StatusCode::from_u16(status).unwrap_or(StatusCode::OK);
            let mut res = (status, Json(body)).into_response();
            res.headers_mut()
                .insert("idempotent-replayed", HeaderValue::from_static("true"));
            return Ok(res);
        }
        Begin::Mismatch => {
            return Err(ApiError::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "idempotency_key_reused",
                "this Idempotency-Key was used with a different request",
            ));
        }
        Begin::InFlight => {
            return Err(ApiError::new(
                StatusCode::CONFLICT,
                "idempotency_key_in_use",
                "a request with this Idempotency-Key is in progress; retry later",
            ));
        }
    };
    tracing::info!(payment_id = %payment.id, client_id = %who.client_id, "payment pending; creating its PaymentIntent");
    // Outside any transaction: the pending row and the key are already committed.
    let intent = s
        .stripe
        .create_intent(&NewIntent {
            payment_id: &payment.id.to_string(),
            money: valid.money,
            description: payment.description.as_deref(),
            receipt_email: payment.customer_email.as_deref(),
            idempotency_key: &intent_key(&payment.id),
        })
        .await;
    let outcome = match &intent {
        Ok(_) => "created",
        Err(GatewayError::Rejected { .. }) => "rejected",
        Err(GatewayError::RateLimited) => "rate_limited",
        Err(_) => "unavailable",
    };
    s.metrics.inc(
        "stripe_calls_total",
        "Stripe calls by operation and outcome",
        &[("operation", "create_intent"), ("outcome", outcome)],
    );
    let (status, body) = match intent {
        Ok(pi) => {
            let updated =
                payments::attach_intent(&s.db, payment.id, &pi.id, &pi.stripe_status).await?;
            let Some(updated) = updated else {
                tracing::error!(payment_id = %payment.id, intent = %pi.id, "payment already has another PaymentIntent");
                return Err(ApiError::new(
                    StatusCode::CONFLICT,
                    "payment_conflict",
                    "the payment is linked to another PaymentIntent",
                ));
            };
            (
                StatusCode::CREATED,
                payment_json(&updated, pi.client_secret.as_deref()),
            )
        }
        Err(GatewayError::Rejected {
            status,
            code,
            message,
        }) => {
            tracing::warn!(payment_id = %payment.id, stripe_status = status, code = %code, "Stripe rejected the PaymentIntent");
            let reason = format!("{code}: {message}");
            let obs = Observation {
                status: PaymentStatus::Failed,
                stripe_status: None,
                error: Some(&reason),
                source: Source::Api,
                detail: None,
            };
            let failed = match payments::apply_status(&s.db, payment.id, &obs).await? {
                Applied::Changed(p) | Applied::Unchanged(p) | Applied::Conflict(p) => p,
                Applied::NotFound => payment,
            };
            let err = ApiError::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "processor_rejected",
                format!("the payment processor refused the payment: {reason}"),
            )
            .with_payment(payment_json(&failed, None));
            (err.status, err.body())
        }
        Err(e) => {
            // Unknown outcome (timeout, 5xx, 429): the payment stays pending, the key is
            // released without a stored response, so a retry with the same key resumes it,
            // and the reconciler finishes it with the same Stripe key if nobody retries.
            tracing::warn!(payment_id = %payment.id, error = %e, "Stripe unavailable; payment left pending");
            idempotency::release(&s.db, who.client_id, &key).await?;
            let err = ApiError::new(StatusCode::ACCEPTED, "processor_unavailable", "the payment is recorded but the payment processor is unavailable; retry with the same Idempotency-Key or poll the payment")
                .with_payment(payment_json(&payment, None));
            return Ok((err.status, Json(err.body())).into_response());
        }
    };
    idempotency::complete(&s.db, who.client_id, &key, status.as_u16(), &body).await?;
    Ok((status, Json(body)).into_response())
}

fn parse_id(raw: &str) -> Result<Uuid, ApiError> {
    // A malformed id names no payment: 404, like an unknown one.
    Uuid::parse_str(raw).map_err(|_| ApiError::not_found())
}

#[utoipa::path(get, path = "/v1/payments/{id}", tag = "payments",
    params(("id" = Uuid, Path, description = "Payment id")),
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
    params(("id" = Uuid, Path, description = "Payment id")),
    responses((status = 200, description = "Status history, oldest first: `{data: [{from_status, to_status, source, detail, created_at}]}`", body = Object), (status = 404, body = crate::openapi::ErrorBody)),
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
    Ok(Json(json!({"data": history})))
}

#[utoipa::path(get, path = "/v1/payments", tag = "payments",
    params(
        ("status" = Option<String>, Query, description = "pending, succeeded, failed or canceled"),
        ("created_gte" = Option<String>, Query, description = "RFC 3339"),
        ("created_lt" = Option<String>, Query, description = "RFC 3339"),
        ("limit" = Option<i64>, Query, description = "1 to 100, default 20"),
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
                f.starting_after = Some(Uuid::parse_str(v).map_err(|_| bad("a payment id"))?)
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

/// Cancels a pending payment: its PaymentIntent first (idempotently), then our row. A
/// payment that Stripe already took stays (and becomes) succeeded.
#[utoipa::path(post, path = "/v1/payments/{id}/cancel", tag = "payments",
    params(("id" = Uuid, Path, description = "Payment id")),
    responses(
        (status = 200, description = "Canceled (also when it already was)", body = PaymentView),
        (status = 409, description = "`payment_not_cancelable`: it is final, or Stripe already took it", body = crate::openapi::ErrorBody),
        (status = 503, description = "`processor_unavailable`", body = crate::openapi::ErrorBody),
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
    match p.status()? {
        PaymentStatus::Canceled => return Ok(Json(payment_json(&p, None))),
        PaymentStatus::Pending => {}
        other => {
            return Err(ApiError::new(
                StatusCode::CONFLICT,
                "payment_not_cancelable",
                format!("the payment is {other}"),
            )
            .with_payment(payment_json(&p, None)));
        }
    }
    let intent_id = match &p.stripe_payment_intent_id {
        Some(i) => Some(i.clone()),
        None => s
            .stripe
            .find_by_payment_id(&id.to_string())
            .await
            .map_err(unavailable)?
            .map(|i| i.id),
    };
    let observed = match intent_id {
        None => None,
        Some(intent) => match s
            .stripe
            .cancel_intent(
                &intent,
                Some("requested_by_customer"),
                &format!("paystream-cancel-{id}"),
            )
            .await
        {
            Ok(pi) => Some(pi),
            // Stripe refuses when the intent is already final: read what it is.
            Err(GatewayError::Rejected { .. }) => Some(
                s.stripe
                    .retrieve_intent(&intent)
                    .await
                    .map_err(unavailable)?,
            ),
            Err(e) => return Err(unavailable(e)),
        },
    };
    let (status, stripe_status) = match &observed {
        None => (PaymentStatus::Canceled, None),
        Some(pi) => (
            pi.status().unwrap_or(PaymentStatus::Pending),
            Some(pi.stripe_status.as_str()),
        ),
    };
    let obs = Observation {
        status,
        stripe_status,
        error: None,
        source: Source::Api,
        detail: None,
    };
    let after = match payments::apply_status(&s.db, id, &obs).await? {
        Applied::Changed(p) | Applied::Unchanged(p) | Applied::Conflict(p) => p,
        Applied::NotFound => return Err(ApiError::not_found()),
    };
    if after.status()? != PaymentStatus::Canceled {
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
