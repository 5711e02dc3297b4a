//! `StripeGateway` over Stripe's API through async-stripe: its typed requests build every
//! call and its models read every answer, so a field Stripe renames or retypes fails here,
//! loudly, instead of being read as a default. The same client serves Stripe, stripe-sim
//! and (where its objects parse) localstripe.
//!
//! Retries are the callers' (the API answers 503 and the reconciler polls again, with the
//! same idempotency key): every request is sent once, with a per-attempt timeout.

mod events;
mod views;

use std::collections::HashMap;
use std::fmt;
use std::time::Duration;

use paystream_core::CaptureMethod;
use paystream_core::gateway::{
    GatewayError, IntentPage, IntentView, NewIntent, NewRefund, RefundPage, RefundView,
    StripeGateway,
};
use stripe::{Client, ClientBuilder, IdempotencyKey, RequestStrategy, StripeError, StripeRequest};
use stripe_core::payment_intent::{
    CancelPaymentIntent, CancelPaymentIntentCancellationReason, CapturePaymentIntent,
    CreatePaymentIntent, ListPaymentIntent, RetrievePaymentIntent, SearchPaymentIntent,
};
use stripe_core::refund::{CreateRefund, CreateRefundReason, ListRefund, RetrieveRefund};
use stripe_shared::{ApiErrorsType, PaymentIntentCaptureMethod};
use stripe_types::{Currency, RangeBoundsTs, RangeQueryTs};

pub use events::EventPage;
pub use views::{UntypedObject, intent_from_json, refund_from_json};

/// The Stripe API version every request is written for, sent as `Stripe-Version` by
/// async-stripe (it is the release's own, checked below): request and response shapes
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

/// The production gateway.
#[derive(Clone)]
pub struct StripeApi {
    client: Client,
    base: String,
}

/// The secret key never reaches logs (async-stripe marks its header sensitive too).
impl fmt::Debug for StripeApi {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StripeApi")
            .field("base", &self.base)
            .field("secret_key", &"<redacted>")
            .finish()
    }
}

impl StripeApi {
    /// `base` is `https://api.stripe.com` or a stand-in's address.
    pub fn new(base: &str, secret_key: &str, timeout: Duration) -> Result<Self, GatewayError> {
        let base = base.trim_end_matches('/').to_owned();
        let client = ClientBuilder::new(secret_key)
            .url(format!("{base}/"))
            .timeout(timeout)
            .request_strategy(RequestStrategy::Once)
            .app_info(
                "paystream",
                Some(env!("CARGO_PKG_VERSION").to_owned()),
                None,
            )
            .build()
            .map_err(|e| GatewayError::Unavailable(format!("stripe client: {}", redact(&e))))?;
        Ok(StripeApi { client, base })
    }

    pub(crate) fn client(&self) -> &Client {
        &self.client
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
            .map_err(gateway_error)
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

/// Stripe's answer, in the gateway's terms. async-stripe drops `Stripe-Should-Retry`, so a
/// 5xx is always worth a retry here (with the same key, which makes it harmless).
pub(crate) fn gateway_error(e: StripeError) -> GatewayError {
    match e {
        StripeError::Stripe(err, status) => match status {
            // Stripe's message would carry our (masked) key: it is neither logged nor
            // passed on, and the fault is ours, not the customer's.
            401 | 403 => GatewayError::Misconfigured { status },
            404 => GatewayError::NotFound,
            429 => GatewayError::RateLimited,
            409 => GatewayError::InFlight,
            500..=599 => GatewayError::Unavailable(format!("stripe answered {status}")),
            _ if err.type_ == ApiErrorsType::IdempotencyError => GatewayError::KeyReused,
            _ => GatewayError::Rejected {
                status,
                code: err
                    .code
                    .as_ref()
                    .map(|c| c.as_str().to_owned())
                    .unwrap_or_default(),
                message: err.message.unwrap_or_default(),
            },
        },
        StripeError::Timeout => GatewayError::Unavailable("timeout".into()),
        StripeError::ClientError(_) => GatewayError::Unavailable("connection failed".into()),
        // An answer async-stripe's models cannot read: a 5xx page from a proxy, or an
        // object of another shape. The outcome is unknown, so it is retried like one.
        StripeError::JSONDeserialize(what) => {
            GatewayError::Unavailable(format!("unreadable stripe answer: {what}"))
        }
        StripeError::ConfigError(what) => GatewayError::Unavailable(format!("config: {what}")),
    }
}

/// async-stripe's errors never hold the key, but a configuration error quotes what it
/// could not use: only its kind is kept.
fn redact(e: &StripeError) -> &'static str {
    match e {
        StripeError::ConfigError(_) => "invalid configuration (base url or key)",
        _ => "could not be built",
    }
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
        let intent = RetrievePaymentIntent::new(id)
            .send(&self.client)
            .await
            .map_err(gateway_error)?;
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
        let page = list.send(&self.client).await.map_err(gateway_error)?;
        Ok(IntentPage {
            data: page.data.into_iter().map(views::intent).collect(),
            has_more: page.has_more,
        })
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
        let found = match SearchPaymentIntent::new(query).send(&self.client).await {
            Err(e) => match gateway_error(e) {
                GatewayError::NotFound => {
                    return Err(GatewayError::Unsupported("payment intent search"));
                }
                other => return Err(other),
            },
            Ok(found) => found,
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
        let refund = RetrieveRefund::new(id)
            .send(&self.client)
            .await
            .map_err(gateway_error)?;
        Ok(views::refund(refund))
    }

    async fn list_refunds(&self, payment_intent: &str) -> Result<Vec<RefundView>, GatewayError> {
        let mut out: Vec<RefundView> = Vec::new();
        loop {
            let mut list = ListRefund::new().payment_intent(payment_intent).limit(100);
            if let Some(last) = out.last() {
                list = list.starting_after(last.id.as_str());
            }
            let page = list.send(&self.client).await.map_err(gateway_error)?;
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
        let page = list.send(&self.client).await.map_err(gateway_error)?;
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

    fn api_error(type_: &str, code: Option<&str>) -> Box<stripe_shared::ApiErrors> {
        let code = code
            .map(|c| format!(r#","code":"{c}""#))
            .unwrap_or_default();
        let json = format!(r#"{{"type":"{type_}","message":"m"{code}}}"#);
        Box::new(miniserde::json::from_str(&json).expect("an ApiErrors"))
    }

    #[test]
    fn stripe_answers_map_to_the_gateway_verdicts() {
        let cases: Vec<(StripeError, GatewayError)> = vec![
            (
                StripeError::Stripe(api_error("invalid_request_error", None), 401),
                GatewayError::Misconfigured { status: 401 },
            ),
            (
                StripeError::Stripe(
                    api_error("invalid_request_error", Some("resource_missing")),
                    404,
                ),
                GatewayError::NotFound,
            ),
            (
                StripeError::Stripe(api_error("invalid_request_error", Some("rate_limit")), 429),
                GatewayError::RateLimited,
            ),
            (
                StripeError::Stripe(
                    api_error("idempotency_error", Some("idempotency_key_in_use")),
                    409,
                ),
                GatewayError::InFlight,
            ),
            (
                StripeError::Stripe(api_error("idempotency_error", None), 400),
                GatewayError::KeyReused,
            ),
            (
                StripeError::Stripe(api_error("api_error", None), 502),
                GatewayError::Unavailable("stripe answered 502".into()),
            ),
            (
                StripeError::Stripe(api_error("card_error", Some("amount_too_small")), 400),
                GatewayError::Rejected {
                    status: 400,
                    code: "amount_too_small".into(),
                    message: "m".into(),
                },
            ),
            (
                StripeError::Timeout,
                GatewayError::Unavailable("timeout".into()),
            ),
            (
                StripeError::ClientError("refused".into()),
                GatewayError::Unavailable("connection failed".into()),
            ),
        ];
        for (stripe, ours) in cases {
            let shown = format!("{stripe}");
            assert_eq!(gateway_error(stripe), ours, "{shown}");
        }
        assert!(matches!(
            gateway_error(StripeError::JSONDeserialize("x".into())),
            GatewayError::Unavailable(_)
        ));
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
