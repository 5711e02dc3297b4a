//! Refunds: `POST /v1/payments/{id}/refunds` (idempotent), `GET /v1/payments/{id}/refunds`,
//! `GET /v1/refunds/{id}`.
//!
//! As for payments, the pending refund (with its amount reserved: R1 in
//! `paystream_db::refunds`) is committed before Stripe is called, and Stripe is called
//! outside any transaction with a key derived from the refund's id (R2). Whatever the API
//! does not finish (Stripe down, the process killed), the reconciler does.

use std::collections::HashMap;

use axum::Json;
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{Extension, Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::Response;
use chrono::{DateTime, Utc};
use paystream_core::gateway::{
    GatewayError, NewRefund, RefundView, StripeGateway, find_refund, refund_key,
};
use paystream_core::{RefundId, RefundStatus};
use paystream_db::keys::{Principal, Role};
use paystream_db::payments::{self, Source};
use paystream_db::refunds::{self, BeginRefund, Refund, RefundObservation, Scope};
use serde_json::{Value, json};
use uuid::Uuid;

use crate::AppState;
use crate::error::ApiError;
use crate::payments::{answer_keyed, body_bytes, parse_id, payment_json, replayed, request_hash};
use crate::validation;

/// A refund as clients see it.
#[derive(Debug, serde::Serialize, utoipa::ToSchema)]
pub struct RefundObject {
    pub id: Uuid,
    pub payment_id: Uuid,
    /// Integer minor units of `currency`.
    pub amount: i64,
    pub currency: String,
    /// `pending`, `succeeded`, `failed` or `canceled`.
    pub status: String,
    /// `duplicate`, `fraudulent` or `requested_by_customer`.
    pub reason: Option<String>,
    #[schema(value_type = Object)]
    pub metadata: Value,
    pub stripe_refund_id: Option<String>,
    /// Stripe's own refund status.
    pub stripe_status: Option<String>,
    /// Why Stripe could not refund (e.g. `expired_or_canceled_card`).
    pub failure_reason: Option<String>,
    /// Who resolved it: `api`, `webhook` or `poll`.
    pub resolution_source: Option<String>,
    pub created_at: DateTime<Utc>,
    pub resolved_at: Option<DateTime<Utc>>,
}

pub fn refund_json(r: &Refund) -> Value {
    let view = RefundObject {
        id: r.id.as_uuid(),
        payment_id: r.payment_id.as_uuid(),
        amount: r.amount,
        currency: r.currency.clone(),
        status: r.status.as_str().to_owned(),
        reason: r.reason.map(|x| x.as_str().to_owned()),
        metadata: r.metadata.clone(),
        stripe_refund_id: r.stripe_refund_id.clone(),
        stripe_status: r.stripe_status.clone(),
        failure_reason: r.failure_reason.clone(),
        resolution_source: r.resolution_source.map(|x| x.as_str().to_owned()),
        created_at: r.created_at,
        resolved_at: r.resolved_at,
    };
    serde_json::to_value(view).unwrap_or(Value::Null)
}

/// Operators may refund and read any client's payment; clients only their own.
fn scope(who: &Principal) -> Scope {
    match who.role {
        Role::Operator => Scope::Any,
        _ => Scope::Own(who.client_id),
    }
}

fn refund_not_found() -> ApiError {
    ApiError::new(StatusCode::NOT_FOUND, "refund_not_found", "no such refund")
}

#[utoipa::path(post, path = "/v1/payments/{id}/refunds", tag = "refunds",
    request_body = crate::validation::CreateRefund,
    params(("id" = Uuid, Path, description = "Payment id (anything else is 404)"),
        ("Idempotency-Key" = String, Header, min_length = 1, max_length = 255, pattern = "^[\\x20-\\x7E]+$",
        description = "a retry with the same key and body replays the first final answer")),
    responses(
        (status = 201, description = "Sent to Stripe: `pending` (Stripe completes it later) or already `succeeded`", body = RefundObject),
        (status = 202, description = "`processor_unavailable`: recorded and its amount reserved, but Stripe was unavailable; retry with the same key (or let Paystream finish it)", body = crate::openapi::ErrorBody),
        (status = 400, description = "Invalid request (see `error.code`)", body = crate::openapi::ErrorBody),
        (status = 404, description = "`payment_not_found` (also another client's payment)", body = crate::openapi::ErrorBody),
        (status = 409, description = "`payment_not_refundable`: the payment has not succeeded; `idempotency_key_in_use`", body = crate::openapi::ErrorBody),
        (status = 422, description = "`refund_exceeds_remaining` (more than what is left to refund), `idempotency_key_reused`, `processor_rejected` (Stripe refused: the refund is `failed` and its amount free again)", body = crate::openapi::ErrorBody),
    ),
    security(("bearer" = [])))]
pub async fn create(
    State(s): State<AppState>,
    Extension(who): Extension<Principal>,
    Path(id): Path<String>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let body = body_bytes(body)?;
    let payment_id = parse_id(&id)?;
    let key =
        validation::idempotency_key(headers.get("idempotency-key").map(HeaderValue::as_bytes))?;
    let valid = validation::create_refund(&body, s.max_amount)?;
    let request_hash = request_hash("refund", payment_id, &valid);
    let metadata = serde_json::to_value(&valid.metadata).unwrap_or_else(|_| json!({}));
    let new = refunds::NewRefund {
        payment_id,
        requested_by: who.client_id,
        scope: scope(&who),
        idempotency_key: &key,
        amount: valid.amount,
        reason: valid.reason,
        metadata: &metadata,
    };
    let (refund, lease, fresh) = match refunds::begin(&s.db, &new, &request_hash, s.lease).await? {
        BeginRefund::Created(r, lease) => (r, lease, true),
        BeginRefund::Resume(r, lease) => (r, lease, false),
        BeginRefund::Replay { status, body } => return Ok(replayed(status, body)),
        BeginRefund::Mismatch => return Err(crate::payments::key_reused()),
        BeginRefund::InFlight => return Err(crate::payments::key_in_use()),
        BeginRefund::PaymentNotFound => return Err(ApiError::not_found()),
        BeginRefund::NotRefundable(p) => {
            let why = if p.stripe_payment_intent_id.is_none() {
                "the payment has no PaymentIntent".to_owned()
            } else {
                format!(
                    "the payment is {}: only a succeeded payment can be refunded",
                    p.status
                )
            };
            return Err(
                ApiError::new(StatusCode::CONFLICT, "payment_not_refundable", why)
                    .with_payment(payment_json(&p, None)),
            );
        }
        BeginRefund::ExceedsRemaining { payment, remaining } => {
            return Err(ApiError::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "refund_exceeds_remaining",
                format!(
                    "{remaining} {} is left to refund on this payment",
                    payment.currency
                ),
            )
            .with_payment(payment_json(&payment, None)));
        }
    };
    tracing::Span::current().record("refund_id", tracing::field::display(refund.id));
    tracing::info!(refund_id = %refund.id, payment_id = %refund.payment_id, amount = refund.amount, fresh, "refund pending; sending it to Stripe");
    // Unfinished (Stripe unreachable): the refund stays pending with its amount reserved;
    // a retry with the same key resumes it, and the reconciler sends it if nobody does.
    answer_keyed(&s, &lease, send(&s, refund, fresh).await?).await
}

/// The Stripe side of a refund create, outside any transaction. `Ok`: a final answer to
/// store for the key; `Err`: an unfinished one (the key is released).
async fn send(
    s: &AppState,
    refund: Refund,
    fresh: bool,
) -> Result<Result<(StatusCode, Value), ApiError>, ApiError> {
    if refund.status.is_final() {
        return Ok(Ok((StatusCode::OK, refund_json(&refund))));
    }
    let payment = payments::by_id(&s.db, refund.payment_id)
        .await?
        .ok_or_else(ApiError::not_found)?;
    let Some(intent) = payment.stripe_payment_intent_id.as_deref() else {
        // `begin` refuses a payment without one; a row edited by hand is not refunded.
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            "payment_not_refundable",
            "the payment has no PaymentIntent",
        ));
    };
    let sent = match &refund.stripe_refund_id {
        Some(re) => s.stripe.retrieve_refund(re).await,
        None if fresh => create_at_stripe(s, &refund, intent).await,
        // An earlier attempt may have made it and died before storing its id: look first,
        // since Stripe forgets the create key after 24 hours.
        None => match find_refund(&*s.stripe, intent, &refund.id.to_string()).await {
            Ok(Some(found)) => Ok(found),
            Ok(None) => create_at_stripe(s, &refund, intent).await,
            Err(e) => Err(e),
        },
    };
    s.metrics.inc(
        "stripe_calls_total",
        "Stripe calls by operation and outcome",
        &[
            ("operation", "refund"),
            (
                "outcome",
                sent.as_ref().err().map_or("ok", GatewayError::label),
            ),
        ],
    );
    tracing::info!(
        payment_id = %refund.payment_id,
        refund_id = %refund.id,
        operation = "refund",
        outcome = sent.as_ref().err().map_or("ok", GatewayError::label),
        stripe_refund_id = sent.as_ref().map(|v| v.id.as_str()).unwrap_or_default(),
        "stripe call"
    );
    match sent {
        Ok(view) => {
            let Some(status) = view.status() else {
                tracing::warn!(refund_id = %refund.id, stripe_status = %view.stripe_status, "Stripe answered a refund status this version does not know; left pending");
                return Ok(Ok((StatusCode::CREATED, refund_json(&refund))));
            };
            let obs = RefundObservation::of_stripe(status, &view, Source::Api);
            let after = refunds::apply_status(&s.db, refund.id, &obs)
                .await?
                .refund()
                .unwrap_or(refund);
            Ok(Ok((StatusCode::CREATED, refund_json(&after))))
        }
        Err(GatewayError::Rejected { code, message, .. }) if refund.stripe_refund_id.is_none() => {
            // Stripe refused to make it (e.g. it thinks the charge is refunded already):
            // it can never succeed, and its amount is free again.
            tracing::warn!(refund_id = %refund.id, code = %code, "Stripe rejected the refund");
            let why = format!("{code}: {message}");
            let obs = RefundObservation::without_stripe(RefundStatus::Failed, &why, Source::Api);
            let after = refunds::apply_status(&s.db, refund.id, &obs)
                .await?
                .refund()
                .unwrap_or(refund);
            let err = ApiError::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "processor_rejected",
                format!("the payment processor refused the refund: {why}"),
            )
            .with_refund(refund_json(&after));
            Ok(Ok((err.status, err.body())))
        }
        Err(e) => {
            tracing::warn!(refund_id = %refund.id, error = %e, "Stripe unavailable; refund left pending");
            Ok(Err(ApiError::new(
                StatusCode::ACCEPTED,
                "processor_unavailable",
                "the refund is recorded but the payment processor is unavailable; retry with the same Idempotency-Key or poll the refund",
            )
            .with_refund(refund_json(&refund))))
        }
    }
}

async fn create_at_stripe(
    s: &AppState,
    r: &Refund,
    intent: &str,
) -> Result<RefundView, GatewayError> {
    s.stripe
        .create_refund(&NewRefund {
            refund_id: &r.id.to_string(),
            payment_intent: intent,
            amount: r.amount,
            reason: r.reason,
            idempotency_key: &refund_key(&r.id),
        })
        .await
}

#[utoipa::path(get, path = "/v1/payments/{id}/refunds", tag = "refunds",
    params(
        ("id" = Uuid, Path, description = "Payment id (anything else is 404)"),
        ("limit" = Option<i64>, Query, minimum = 1, maximum = 100, description = "1 to 100, default 20"),
        ("starting_after" = Option<Uuid>, Query, description = "last id of the previous page"),
    ),
    responses((status = 200, description = "Newest first: `{data: [Refund], has_more}`", body = Object),
        (status = 400, description = "`invalid_query`", body = crate::openapi::ErrorBody),
        (status = 404, description = "`payment_not_found`", body = crate::openapi::ErrorBody)),
    security(("bearer" = [])))]
pub async fn list(
    State(s): State<AppState>,
    Extension(who): Extension<Principal>,
    Path(id): Path<String>,
    Query(q): Query<HashMap<String, String>>,
) -> Result<Json<Value>, ApiError> {
    let payment_id = parse_id(&id)?;
    let mut limit = 20;
    let mut starting_after = None;
    for (k, v) in &q {
        let bad = |what: &str| ApiError::bad_request("invalid_query", format!("{k}: {what}"));
        match k.as_str() {
            "starting_after" => {
                starting_after = Some(v.parse::<RefundId>().map_err(|_| bad("a refund id"))?)
            }
            "limit" => {
                limit = v
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
    let mut rows = refunds::list(&s.db, payment_id, scope(&who), starting_after, limit + 1)
        .await?
        .ok_or_else(ApiError::not_found)?;
    let has_more = rows.len() as i64 > limit;
    rows.truncate(limit as usize);
    Ok(Json(json!({
        "data": rows.iter().map(refund_json).collect::<Vec<_>>(),
        "has_more": has_more,
    })))
}

#[utoipa::path(get, path = "/v1/refunds/{id}", tag = "refunds",
    params(("id" = Uuid, Path, description = "Refund id (anything else is 404)")),
    responses((status = 200, body = RefundObject), (status = 404, description = "`refund_not_found` (also another client's refund)", body = crate::openapi::ErrorBody)),
    security(("bearer" = [])))]
pub async fn get(
    State(s): State<AppState>,
    Extension(who): Extension<Principal>,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let id: RefundId = id.parse().map_err(|_| refund_not_found())?;
    tracing::Span::current().record("refund_id", tracing::field::display(id));
    let r = refunds::get(&s.db, id, scope(&who))
        .await?
        .ok_or_else(refund_not_found)?;
    tracing::Span::current().record("payment_id", tracing::field::display(r.payment_id));
    Ok(Json(refund_json(&r)))
}
