//! `StripeGateway` over Stripe's API through async-stripe: its typed requests build every
//! call and its models read every answer, so a field Stripe renames or retypes fails here,
//! loudly, instead of being read as a default. The same client serves Stripe, stripe-sim
//! and (where its objects parse) localstripe. `transport` carries the requests.
//!
//! Retries are the callers' (the API answers 503 and the reconciler polls again, with the
//! same idempotency key): every request is sent once, with a per-attempt timeout.

mod events;
mod reporting;
mod transport;
mod views;

use std::collections::HashMap;
use std::fmt;
use std::time::Duration;

use paystream_core::CaptureMethod;
use paystream_core::gateway::{
    GatewayError, IntentEventPage, IntentPage, IntentView, NewIntent, NewRefund, RefundPage,
    RefundView, StripeGateway,
};
use stripe_client_core::{IdempotencyKey, RequestStrategy, StripeRequest};
use stripe_core::payment_intent::{
    CancelPaymentIntent, CancelPaymentIntentCancellationReason, CapturePaymentIntent,
    CreatePaymentIntent, ListPaymentIntent, RetrievePaymentIntent, SearchPaymentIntent,
};
use stripe_core::refund::{CreateRefund, CreateRefundReason, ListRefund, RetrieveRefund};
use stripe_shared::PaymentIntentCaptureMethod;
use stripe_types::{Currency, RangeBoundsTs, RangeQueryTs};

pub use events::EventPage;
use transport::{CallError, Transport};
pub use views::{UntypedObject, intent_from_json, refund_from_json};

/// The Stripe API version every request is written for, sent as `Stripe-Version` (it is
/// the async-stripe release's own, checked below): request and response shapes
/// never follow an account's default version. Webhook shapes follow the endpoint's own
/// `api_version`: create the endpoint with this one.
pub const STRIPE_VERSION: &str = "2026-09-30.endive";

/// Where and how to reach Stripe; every service that calls Stripe reads this.
#[derive(Clone, serde::Deserialize)]
pub struct StripeConfig {
    pub api_base: String,
    pub secret_key: String,
    #[serde(default = "default_timeout_ms")]
    pub timeout_ms: u64,
}

fn default_timeout_ms() -> u64 {
    5_000
}

impl fmt::Debug for StripeConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StripeConfig")
            .field("api_base", &self.api_base)
            .field("secret_key", &"<redacted>")
            .field("timeout_ms", &self.timeout_ms)
            .finish()
    }
}

impl StripeConfig {
    pub fn gateway(&self) -> Result<StripeApi, GatewayError> {
        StripeApi::new(
            &self.api_base,
            &self.secret_key,
            Duration::from_millis(self.timeout_ms),
        )
    }
}

/// The production gateway. The secret key never reaches logs (see `Transport`'s Debug).
#[derive(Clone, Debug)]
pub struct StripeApi {
    client: Transport,
}

impl StripeApi {
    /// `base` is `https://api.stripe.com` or a stand-in's address.
    pub fn new(base: &str, secret_key: &str, timeout: Duration) -> Result<Self, GatewayError> {
        Ok(StripeApi {
            client: Transport::new(base, secret_key, timeout)?,
        })
    }

    /// Sends a read, once.
    async fn send<R>(&self, req: R) -> Result<R::Output, GatewayError>
    where
        R: StripeRequest,
        R::Output: miniserde::Deserialize,
    {
        req.customize()
            .send(&self.client)
            .await
            .map_err(|CallError(e)| e)
    }

    /// Sends a request that creates or changes something, once, under our idempotency key.
    async fn send_keyed<R>(&self, req: R, key: &str) -> Result<R::Output, GatewayError>
    where
        R: StripeRequest,
        R::Output: miniserde::Deserialize,
    {
        req.customize()
            .request_strategy(once_with(key)?)
            .send(&self.client)
            .await
            .map_err(|CallError(e)| e)
    }
}

/// How a request is sent: once, with our idempotency key when it has one.
fn once_with(key: &str) -> Result<RequestStrategy, GatewayError> {
    IdempotencyKey::new(key)
        .map(RequestStrategy::Idempotent)
        .map_err(|e| GatewayError::Rejected {
            status: 400,
            code: "idempotency_key_invalid".into(),
            message: e.to_string(),
        })
}

fn created_between(gte: i64, lt: i64) -> RangeQueryTs {
    RangeQueryTs::Bounds(RangeBoundsTs {
        gte: Some(gte),
        lt: Some(lt),
        ..Default::default()
    })
}

impl StripeGateway for StripeApi {
    async fn create_intent(&self, req: &NewIntent<'_>) -> Result<IntentView, GatewayError> {
        let currency: Currency = req
            .money
            .currency()
            .code()
            .parse()
            .unwrap_or_else(|never| match never {});
        let mut create = CreatePaymentIntent::new(req.money.amount(), currency).metadata(
            HashMap::from([("payment_id".to_owned(), req.payment_id.to_owned())]),
        );
        // Sent only when manual: Stripe's default depends on the API version
        // (`automatic` or `automatic_async`, both capture at once), and peers such as
        // localstripe know no other.
        if req.capture_method == CaptureMethod::Manual {
            create = create.capture_method(PaymentIntentCaptureMethod::Manual);
        }
        if let Some(d) = req.description {
            create = create.description(d);
        }
        if let Some(e) = req.receipt_email {
            create = create.receipt_email(e);
        }
        let intent = self.send_keyed(create, req.idempotency_key).await?;
        Ok(views::intent(intent))
    }

    async fn retrieve_intent(&self, id: &str) -> Result<IntentView, GatewayError> {
        let intent = self.send(RetrievePaymentIntent::new(id)).await?;
        Ok(views::intent(intent))
    }

    async fn cancel_intent(
        &self,
        id: &str,
        reason: Option<&str>,
        idempotency_key: &str,
    ) -> Result<IntentView, GatewayError> {
        let mut cancel = CancelPaymentIntent::new(id);
        if let Some(r) = reason {
            cancel = cancel.cancellation_reason(
                r.parse::<CancelPaymentIntentCancellationReason>()
                    .unwrap_or_else(|never| match never {}),
            );
        }
        let intent = self.send_keyed(cancel, idempotency_key).await?;
        Ok(views::intent(intent))
    }

    async fn list_intents(
        &self,
        created_gte: i64,
        created_lt: i64,
        starting_after: Option<&str>,
    ) -> Result<IntentPage, GatewayError> {
        let mut list = ListPaymentIntent::new()
            .created(created_between(created_gte, created_lt))
            .limit(100);
        if let Some(after) = starting_after {
            list = list.starting_after(after);
        }
        let page = self.send(list).await?;
        Ok(IntentPage {
            data: page.data.into_iter().map(views::intent).collect(),
            has_more: page.has_more,
        })
    }

    async fn intent_events(
        &self,
        types: &[&str],
        created_gte: i64,
        starting_after: Option<&str>,
    ) -> Result<IntentEventPage, GatewayError> {
        self.intent_event_page(types, created_gte, starting_after)
            .await
    }

    async fn find_by_payment_id(
        &self,
        payment_id: &str,
    ) -> Result<Option<IntentView>, GatewayError> {
        // Stripe's search query language quotes values with single quotes.
        let query = format!(
            "metadata['payment_id']:'{}'",
            payment_id.replace('\'', "\\'")
        );
        let found = match self.send(SearchPaymentIntent::new(query)).await {
            Err(GatewayError::NotFound) => {
                return Err(GatewayError::Unsupported("payment intent search"));
            }
            other => other?,
        };
        // Oldest wins if a bug ever made two: it is the one a client could have paid.
        Ok(found
            .data
            .into_iter()
            .min_by_key(|i| i.created)
            .map(views::intent))
    }

    async fn capture_intent(
        &self,
        id: &str,
        amount: Option<i64>,
        idempotency_key: &str,
    ) -> Result<IntentView, GatewayError> {
        let mut capture = CapturePaymentIntent::new(id);
        if let Some(a) = amount {
            capture = capture.amount_to_capture(a);
        }
        let intent = self.send_keyed(capture, idempotency_key).await?;
        Ok(views::intent(intent))
    }

    async fn create_refund(&self, req: &NewRefund<'_>) -> Result<RefundView, GatewayError> {
        let mut create = CreateRefund::new()
            .payment_intent(req.payment_intent)
            .amount(req.amount)
            .metadata(HashMap::from([(
                "refund_id".to_owned(),
                req.refund_id.to_owned(),
            )]));
        if let Some(r) = req.reason {
            create = create.reason(
                r.as_str()
                    .parse::<CreateRefundReason>()
                    .unwrap_or_else(|never| match never {}),
            );
        }
        let refund = self.send_keyed(create, req.idempotency_key).await?;
        Ok(views::refund(refund))
    }

    async fn retrieve_refund(&self, id: &str) -> Result<RefundView, GatewayError> {
        let refund = self.send(RetrieveRefund::new(id)).await?;
        Ok(views::refund(refund))
    }

    async fn list_refunds(&self, payment_intent: &str) -> Result<Vec<RefundView>, GatewayError> {
        let mut out: Vec<RefundView> = Vec::new();
        loop {
            let mut list = ListRefund::new().payment_intent(payment_intent).limit(100);
            if let Some(last) = out.last() {
                list = list.starting_after(last.id.as_str());
            }
            let page = self.send(list).await?;
            out.extend(page.data.into_iter().map(views::refund));
            // A charge has at most a few refunds; the bound stops a peer that loops.
            if !page.has_more || out.len() >= 10_000 {
                return Ok(out);
            }
        }
    }

    async fn list_refunds_created(
        &self,
        created_gte: i64,
        created_lt: i64,
        starting_after: Option<&str>,
    ) -> Result<RefundPage, GatewayError> {
        let mut list = ListRefund::new()
            .created(created_between(created_gte, created_lt))
            .limit(100);
        if let Some(after) = starting_after {
            list = list.starting_after(after);
        }
        let page = self.send(list).await?;
        Ok(RefundPage {
            data: page.data.into_iter().map(views::refund).collect(),
            has_more: page.has_more,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The version sent is async-stripe's own (its models are generated for it), and the
    /// one stripe-sim renders (its requests would be refused otherwise).
    #[test]
    fn pins_the_version_async_stripe_and_stripe_sim_speak() {
        assert_eq!(stripe_shared::version::VERSION.as_str(), STRIPE_VERSION);
        assert_eq!(STRIPE_VERSION, stripe_sim::state::API_VERSION);
    }

    fn error_body(type_: &str, code: Option<&str>) -> Vec<u8> {
        let code = code
            .map(|c| format!(r#","code":"{c}""#))
            .unwrap_or_default();
        format!(r#"{{"error":{{"type":"{type_}","message":"m"{code}}}}}"#).into_bytes()
    }

    #[test]
    fn stripe_answers_map_to_the_gateway_verdicts() {
        use transport::verdict;
        let invalid = error_body("invalid_request_error", Some("resource_missing"));
        let cases: Vec<(u16, Option<bool>, Vec<u8>, GatewayError)> = vec![
            (
                401,
                None,
                invalid.clone(),
                GatewayError::Misconfigured { status: 401 },
            ),
            (
                403,
                Some(true),
                invalid.clone(),
                GatewayError::Misconfigured { status: 403 },
            ),
            (404, None, invalid.clone(), GatewayError::NotFound),
            (
                429,
                Some(true),
                error_body("invalid_request_error", Some("rate_limit")),
                GatewayError::RateLimited,
            ),
            (
                409,
                None,
                error_body("idempotency_error", Some("idempotency_key_in_use")),
                GatewayError::InFlight,
            ),
            (
                400,
                None,
                error_body("idempotency_error", None),
                GatewayError::KeyReused,
            ),
            (
                502,
                None,
                b"<html>bad gateway</html>".to_vec(),
                GatewayError::Unavailable("stripe answered 502".into()),
            ),
            (
                400,
                None,
                error_body("card_error", Some("amount_too_small")),
                GatewayError::Rejected {
                    status: 400,
                    code: "amount_too_small".into(),
                    message: "m".into(),
                },
            ),
            (
                400,
                None,
                b"not json".to_vec(),
                GatewayError::Rejected {
                    status: 400,
                    code: String::new(),
                    message: "stripe answered 400".into(),
                },
            ),
            // Stripe's own verdict on retrying wins over the status code.
            (
                500,
                Some(false),
                error_body("api_error", None),
                GatewayError::Rejected {
                    status: 500,
                    code: "should_not_retry".into(),
                    message: "stripe answered 500 and asked not to retry".into(),
                },
            ),
            (
                409,
                Some(false),
                error_body("idempotency_error", None),
                GatewayError::Rejected {
                    status: 409,
                    code: "should_not_retry".into(),
                    message: "stripe answered 409 and asked not to retry".into(),
                },
            ),
            (
                400,
                Some(true),
                error_body("api_error", Some("lock_timeout")),
                GatewayError::Unavailable("stripe answered 400".into()),
            ),
        ];
        for (status, retry, body, ours) in cases {
            assert_eq!(
                verdict(status, retry, &body),
                ours,
                "{status} {retry:?} {}",
                String::from_utf8_lossy(&body)
            );
        }
    }

    #[test]
    fn a_key_stripe_would_refuse_is_refused_before_sending() {
        assert!(once_with("paystream-create-1").is_ok());
        assert!(matches!(
            once_with(&"k".repeat(300)),
            Err(GatewayError::Rejected { .. })
        ));
    }
}
