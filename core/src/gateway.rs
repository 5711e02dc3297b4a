//! The Stripe gateway: the few PaymentIntent operations Paystream needs, as a trait, so
//! the domain never depends on an HTTP client and tests can run against any Stripe
//! (the real one, stripe-sim, localstripe).

use std::future::Future;

use crate::money::Money;
use crate::refund::{CaptureMethod, RefundReason, RefundStatus};
use crate::status::PaymentStatus;

/// The Stripe idempotency key of a payment's PaymentIntent, derived from our payment id:
/// the API, a cancel and the reconciler (creating one the API never managed to) send the
/// same key, so within Stripe's key lifetime (24 h) there is never a second intent for one
/// payment. Past it, whoever creates an intent for a payment without one searches Stripe
/// first (by then the search index has long had the first intent).
pub fn intent_key(payment_id: &impl std::fmt::Display) -> String {
    format!("paystream-create-{payment_id}")
}

/// The Stripe idempotency key of a refund, derived from our refund id: the API and the
/// reconciler (sending a refund the API never managed to) can never make two at Stripe.
pub fn refund_key(refund_id: &impl std::fmt::Display) -> String {
    format!("paystream-refund-{refund_id}")
}

/// A fresh Stripe idempotency key for one cancel attempt. Cancelling twice is harmless
/// (Stripe refuses the second, and we read the intent instead), while a fixed key would
/// replay a first refusal (the intent was `processing` then) for 24 hours.
pub fn attempt_key(
    what: &str,
    payment_id: &impl std::fmt::Display,
    attempt: &impl std::fmt::Display,
) -> String {
    format!("paystream-{what}-{payment_id}-{attempt}")
}

/// The event types a webhook endpoint of ours is subscribed to: those whose object is a
/// PaymentIntent or a refund, which can change a payment or a refund of ours.
/// `payment_intent.created` is left out: it says what the intent was when the API made it,
/// which the API stores from Stripe's answer, so it can change nothing (the receiver
/// acknowledges one without a write, should an endpoint subscribed to `*` send it), and
/// delivering one per payment costs both Stripe's side and ours a request. `charge.*`
/// events carry the charge, whose refunded total names no refund of ours, except
/// `charge.refund.updated`, which carries the refund. Stripe recommends subscribing only
/// to what an integration reads; an event type not listed here is never delivered, and
/// never listed as undelivered for the catch-up either.
pub const WEBHOOK_EVENTS: &[&str] = &[
    "payment_intent.amount_capturable_updated",
    "payment_intent.canceled",
    "payment_intent.partially_funded",
    "payment_intent.payment_failed",
    "payment_intent.processing",
    "payment_intent.requires_action",
    "payment_intent.succeeded",
    "refund.created",
    "refund.updated",
    "refund.failed",
    "charge.refund.updated",
];

/// A PaymentIntent to create for one of our payments.
#[derive(Debug, Clone)]
pub struct NewIntent<'a> {
    /// Our payment id, stored as `metadata.payment_id` so the intent can be found again.
    pub payment_id: &'a str,
    pub money: Money,
    pub description: Option<&'a str>,
    pub receipt_email: Option<&'a str>,
    pub capture_method: CaptureMethod,
    /// Sent as Stripe's `Idempotency-Key`: a retry can never create a second intent.
    pub idempotency_key: &'a str,
}

/// What Paystream reads of a PaymentIntent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IntentView {
    pub id: String,
    /// Stripe's own status (`requires_payment_method`, ..., `succeeded`, `canceled`).
    pub stripe_status: String,
    pub amount: i64,
    pub currency: String,
    pub payment_id: Option<String>,
    pub client_secret: Option<String>,
    pub last_error: Option<String>,
    pub created: i64,
    /// What a manual-capture intent holds and may still capture (`requires_capture`).
    pub amount_capturable: i64,
    /// What Stripe took: the amount, or less after a partial capture.
    pub amount_received: i64,
}

impl IntentView {
    /// Our status for it; `None` for a status this code does not know (never guessed).
    pub fn status(&self) -> Option<PaymentStatus> {
        PaymentStatus::from_stripe(&self.stripe_status)
    }
}

/// A refund to create at Stripe for one of our refunds.
#[derive(Debug, Clone)]
pub struct NewRefund<'a> {
    /// Our refund id, stored as `metadata.refund_id` so the refund can be found again.
    pub refund_id: &'a str,
    pub payment_intent: &'a str,
    pub amount: i64,
    pub reason: Option<RefundReason>,
    /// `refund_key(refund_id)`: a retry can never refund twice.
    pub idempotency_key: &'a str,
}

/// What Paystream reads of a Stripe refund.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RefundView {
    pub id: String,
    /// Stripe's status: `pending`, `requires_action`, `succeeded`, `failed`, `canceled`.
    pub stripe_status: String,
    pub amount: i64,
    pub currency: String,
    pub payment_intent: Option<String>,
    /// Our refund id, from `metadata.refund_id`.
    pub refund_id: Option<String>,
    pub failure_reason: Option<String>,
    pub created: i64,
}

impl RefundView {
    /// Our status for it; `None` for a status this code does not know (never guessed).
    pub fn status(&self) -> Option<RefundStatus> {
        RefundStatus::from_stripe(&self.stripe_status)
    }
}

/// A page of Stripe's refund list.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RefundPage {
    pub data: Vec<RefundView>,
    pub has_more: bool,
}

/// A page of Stripe's intent list.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IntentPage {
    pub data: Vec<IntentView>,
    pub has_more: bool,
}

/// A PaymentIntent event from Stripe's event list: the intent as it was when the event
/// happened.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IntentEvent {
    pub id: String,
    /// Unix seconds.
    pub created: i64,
    pub intent: IntentView,
}

/// A page of Stripe's event list, newest first.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IntentEventPage {
    /// The events whose intent could be read.
    pub data: Vec<IntentEvent>,
    pub has_more: bool,
    /// The page's last event, read or not: where the next page starts.
    pub last: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum GatewayError {
    /// Stripe refused the request for good (4xx): retrying the same request is useless.
    #[error("stripe rejected the request ({status} {code}): {message}")]
    Rejected {
        status: u16,
        code: String,
        message: String,
    },
    #[error("the payment intent does not exist at stripe")]
    NotFound,
    /// 429: slow down, then retry.
    #[error("stripe rate limit hit")]
    RateLimited,
    /// 409: the same idempotency key is still being processed; retry later.
    #[error("a request with the same idempotency key is in flight")]
    InFlight,
    /// 5xx, timeout, connection failure: the outcome is unknown; retry with the same key.
    #[error("stripe unavailable: {0}")]
    Unavailable(String),
    /// The Stripe peer lacks the endpoint (e.g. localstripe has no search).
    #[error("not supported by this stripe: {0}")]
    Unsupported(&'static str),
    /// 401/403: Stripe refused our own credentials. A configuration fault: never the
    /// customer's, never a final outcome, never stored for replay.
    #[error("stripe refused our credentials ({status}): check the secret key")]
    Misconfigured { status: u16 },
    /// Stripe refused an idempotency key we had used with other parameters: our fault,
    /// not the customer's (the same request can never succeed with that key).
    #[error("stripe refused a reused idempotency key")]
    KeyReused,
}

impl GatewayError {
    pub fn is_retryable(&self) -> bool {
        matches!(
            self,
            Self::RateLimited | Self::InFlight | Self::Unavailable(_)
        )
    }

    /// A short label for metrics and logs (a bounded set).
    pub fn label(&self) -> &'static str {
        match self {
            Self::Rejected { .. } => "rejected",
            Self::NotFound => "not_found",
            Self::RateLimited => "rate_limited",
            Self::InFlight => "in_flight",
            Self::Unavailable(_) => "unavailable",
            Self::Unsupported(_) => "unsupported",
            Self::Misconfigured { .. } => "misconfigured",
            Self::KeyReused => "key_reused",
        }
    }
}

/// `Send` futures, so callers can spawn them on a multi-threaded runtime.
pub trait StripeGateway: Send + Sync {
    fn create_intent(
        &self,
        req: &NewIntent<'_>,
    ) -> impl Future<Output = Result<IntentView, GatewayError>> + Send;

    fn retrieve_intent(
        &self,
        id: &str,
    ) -> impl Future<Output = Result<IntentView, GatewayError>> + Send;

    /// `reason` is one of Stripe's cancellation reasons (`abandoned`, `requested_by_customer`, ...).
    fn cancel_intent(
        &self,
        id: &str,
        reason: Option<&str>,
        idempotency_key: &str,
    ) -> impl Future<Output = Result<IntentView, GatewayError>> + Send;

    /// One page (up to 100, newest first) of the intents created in
    /// `[created_gte, created_lt)` (unix seconds), after `starting_after`.
    fn list_intents(
        &self,
        created_gte: i64,
        created_lt: i64,
        starting_after: Option<&str>,
    ) -> impl Future<Output = Result<IntentPage, GatewayError>> + Send;

    /// One page (up to 100, newest first) of the PaymentIntent events of `types` (Stripe's
    /// event names, e.g. `payment_intent.succeeded`) created at or after `created_gte`
    /// (unix seconds), after `starting_after`: what changed, for any number of intents,
    /// in one call.
    fn intent_events(
        &self,
        types: &[&str],
        created_gte: i64,
        starting_after: Option<&str>,
    ) -> impl Future<Output = Result<IntentEventPage, GatewayError>> + Send;

    /// The intent whose `metadata.payment_id` is ours, if Stripe has one.
    fn find_by_payment_id(
        &self,
        payment_id: &str,
    ) -> impl Future<Output = Result<Option<IntentView>, GatewayError>> + Send;

    /// Captures a `requires_capture` intent: all of it, or `amount` (the rest is released).
    fn capture_intent(
        &self,
        id: &str,
        amount: Option<i64>,
        idempotency_key: &str,
    ) -> impl Future<Output = Result<IntentView, GatewayError>> + Send;

    fn create_refund(
        &self,
        req: &NewRefund<'_>,
    ) -> impl Future<Output = Result<RefundView, GatewayError>> + Send;

    fn retrieve_refund(
        &self,
        id: &str,
    ) -> impl Future<Output = Result<RefundView, GatewayError>> + Send;

    /// Every refund of an intent (newest first), to find one whose id we never stored.
    fn list_refunds(
        &self,
        payment_intent: &str,
    ) -> impl Future<Output = Result<Vec<RefundView>, GatewayError>> + Send;

    /// One page (up to 100, newest first) of the refunds created in
    /// `[created_gte, created_lt)` (unix seconds), after `starting_after`.
    fn list_refunds_created(
        &self,
        created_gte: i64,
        created_lt: i64,
        starting_after: Option<&str>,
    ) -> impl Future<Output = Result<RefundPage, GatewayError>> + Send;
}

/// A report run of Stripe's Reporting API.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReportRun {
    pub id: String,
    /// `pending`, `succeeded` or `failed`.
    pub status: String,
    pub error: Option<String>,
    /// Where the result file's contents download from, once `succeeded`.
    pub file_url: Option<String>,
}

/// The interval a report type has data for (unix seconds).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReportAvailability {
    pub start: i64,
    pub end: i64,
}

/// Stripe's Reporting API: one itemized file of the balance changes of an interval,
/// for reconciling windows too large for per-object calls.
pub trait StripeReporting: Send + Sync {
    fn report_availability(
        &self,
        report_type: &str,
    ) -> impl Future<Output = Result<ReportAvailability, GatewayError>> + Send;

    /// Starts a run over `[interval_start, interval_end)` with `columns`.
    fn start_report_run(
        &self,
        report_type: &str,
        interval_start: i64,
        interval_end: i64,
        columns: &[&str],
    ) -> impl Future<Output = Result<ReportRun, GatewayError>> + Send;

    fn report_run(&self, id: &str) -> impl Future<Output = Result<ReportRun, GatewayError>> + Send;

    /// Writes the file at `url` (a run's result) to `to`, streamed: a month's report can be
    /// hundreds of megabytes. Returns its size in bytes.
    fn download_file(
        &self,
        url: &str,
        to: &std::path::Path,
    ) -> impl Future<Output = Result<u64, GatewayError>> + Send;
}

/// The Stripe refund made for our refund `refund_id` on `payment_intent`, if an earlier
/// attempt made one (and died before storing its id): found by the `metadata.refund_id`
/// every refund of ours carries.
pub async fn find_refund<G: StripeGateway>(
    stripe: &G,
    payment_intent: &str,
    refund_id: &str,
) -> Result<Option<RefundView>, GatewayError> {
    Ok(stripe
        .list_refunds(payment_intent)
        .await?
        .into_iter()
        .find(|r| r.refund_id.as_deref() == Some(refund_id)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_transient_failures_are_retryable() {
        assert!(GatewayError::RateLimited.is_retryable());
        assert!(GatewayError::InFlight.is_retryable());
        assert!(GatewayError::Unavailable("timeout".into()).is_retryable());
        assert!(!GatewayError::NotFound.is_retryable());
        assert!(!GatewayError::Unsupported("search").is_retryable());
        assert!(!GatewayError::Misconfigured { status: 401 }.is_retryable());
        assert!(!GatewayError::KeyReused.is_retryable());
        let rejected = GatewayError::Rejected {
            status: 400,
            code: "amount_too_small".into(),
            message: "x".into(),
        };
        assert!(!rejected.is_retryable());
    }

    #[test]
    fn view_maps_stripe_status_to_ours() {
        let mut v = IntentView {
            id: "pi_1".into(),
            stripe_status: "processing".into(),
            amount: 100,
            currency: "usd".into(),
            payment_id: None,
            client_secret: None,
            last_error: None,
            created: 0,
            amount_capturable: 0,
            amount_received: 0,
        };
        assert_eq!(v.status(), Some(PaymentStatus::Pending));
        v.stripe_status = "succeeded".into();
        assert_eq!(v.status(), Some(PaymentStatus::Succeeded));
        v.stripe_status = "something_new".into();
        assert_eq!(v.status(), None);
    }
}
