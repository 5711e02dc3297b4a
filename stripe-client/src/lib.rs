//! `StripeGateway` over Stripe's HTTP API. Responses are read leniently (only the fields
//! Paystream uses, unknown ones ignored), so the same code talks to Stripe, stripe-sim
//! and localstripe, whose objects are incomplete.

use std::collections::HashMap;
use std::fmt;
use std::time::Duration;

use paystream_core::CaptureMethod;
use paystream_core::gateway::{
    GatewayError, IntentPage, IntentView, NewIntent, NewRefund, RefundPage, RefundView,
    StripeGateway,
};
use serde::Deserialize;

/// The Stripe API version every request is written for, sent as `Stripe-Version`: request
/// and response shapes then never follow an account's default version (which changes when
/// someone upgrades it in the dashboard). Webhook shapes follow the endpoint's own
/// `api_version`: create the endpoint with this one.
pub const STRIPE_VERSION: &str = "2026-09-30.endive";

#[derive(Clone)]
pub struct HttpStripe {
    http: reqwest::Client,
    /// Ends without a slash: `https://api.stripe.com`.
    base: String,
    secret_key: String,
}

/// The secret key never reaches logs.
impl fmt::Debug for HttpStripe {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HttpStripe")
            .field("base", &self.base)
            .field("secret_key", &"<redacted>")
            .finish()
    }
}

#[derive(Deserialize)]
struct IntentJson {
    id: String,
    status: String,
    amount: i64,
    currency: String,
    #[serde(default)]
    metadata: HashMap<String, String>,
    client_secret: Option<String>,
    last_payment_error: Option<ErrorJson>,
    #[serde(default)]
    created: i64,
    #[serde(default)]
    amount_capturable: i64,
    #[serde(default)]
    amount_received: i64,
}

#[derive(Deserialize)]
struct RefundJson {
    id: String,
    status: String,
    amount: i64,
    currency: String,
    payment_intent: Option<String>,
    #[serde(default)]
    metadata: HashMap<String, String>,
    failure_reason: Option<String>,
    #[serde(default)]
    created: i64,
}

impl From<RefundJson> for RefundView {
    fn from(j: RefundJson) -> Self {
        RefundView {
            id: j.id,
            stripe_status: j.status,
            amount: j.amount,
            currency: j.currency,
            payment_intent: j.payment_intent,
            refund_id: j.metadata.get("refund_id").cloned(),
            failure_reason: j.failure_reason,
            created: j.created,
        }
    }
}

#[derive(Deserialize)]
struct RefundListJson {
    data: Vec<RefundJson>,
    #[serde(default)]
    has_more: bool,
}

#[derive(Deserialize)]
struct ErrorJson {
    #[serde(rename = "type")]
    kind: Option<String>,
    code: Option<String>,
    message: Option<String>,
    decline_code: Option<String>,
}

#[derive(Deserialize)]
struct ErrorEnvelope {
    error: ErrorJson,
}

#[derive(Deserialize)]
struct SearchJson {
    data: Vec<IntentJson>,
    #[serde(default)]
    has_more: bool,
}

impl From<IntentJson> for IntentView {
    fn from(j: IntentJson) -> Self {
        IntentView {
            id: j.id,
            stripe_status: j.status,
            amount: j.amount,
            currency: j.currency,
            payment_id: j.metadata.get("payment_id").cloned(),
            client_secret: j.client_secret,
            last_error: j.last_payment_error.map(|e| {
                let code = e.decline_code.or(e.code).unwrap_or_else(|| "error".into());
                format!("{code}: {}", e.message.unwrap_or_default())
            }),
            created: j.created,
            amount_capturable: j.amount_capturable,
            amount_received: j.amount_received,
        }
    }
}

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

impl std::fmt::Debug for StripeConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StripeConfig")
            .field("api_base", &self.api_base)
            .field("secret_key", &"<redacted>")
            .field("timeout_ms", &self.timeout_ms)
            .finish()
    }
}

impl StripeConfig {
    pub fn gateway(&self) -> Result<HttpStripe, GatewayError> {
        HttpStripe::new(
            &self.api_base,
            &self.secret_key,
            Duration::from_millis(self.timeout_ms),
        )
    }
}

impl HttpStripe {
    pub fn new(base: &str, secret_key: &str, timeout: Duration) -> Result<Self, GatewayError> {
        let http = reqwest::Client::builder()
            .timeout(timeout)
            .build()
            .map_err(|e| GatewayError::Unavailable(format!("http client: {e}")))?;
        Ok(HttpStripe {
            http,
            base: base.trim_end_matches('/').to_owned(),
            secret_key: secret_key.to_owned(),
        })
    }

    async fn call(&self, req: reqwest::RequestBuilder) -> Result<reqwest::Response, GatewayError> {
        let res = req
            .bearer_auth(&self.secret_key)
            .header("Stripe-Version", STRIPE_VERSION)
            .send()
            .await
            .map_err(|e| {
                GatewayError::Unavailable(if e.is_timeout() {
                    "timeout".into()
                } else {
                    "connection failed".into()
                })
            })?;
        let status = res.status().as_u16();
        // Stripe's own verdict on retrying overrides the status code's usual meaning.
        let should_retry = res
            .headers()
            .get("stripe-should-retry")
            .and_then(|v| v.to_str().ok())
            .map(|v| v == "true");
        match (status, should_retry) {
            (200..=299, _) => Ok(res),
            // Stripe's message would carry our (masked) key: it is neither logged nor
            // passed on, and the fault is ours, not the customer's.
            (401 | 403, _) => Err(GatewayError::Misconfigured { status }),
            (404, _) => Err(GatewayError::NotFound),
            (429, _) => Err(GatewayError::RateLimited),
            (409 | 500..=599, Some(false)) => Err(GatewayError::Rejected {
                status,
                code: "should_not_retry".into(),
                message: format!("stripe answered {status} and asked not to retry"),
            }),
            (409, _) => Err(GatewayError::InFlight),
            (500..=599, _) | (_, Some(true)) => Err(GatewayError::Unavailable(format!(
                "stripe answered {status}"
            ))),
            _ => {
                let error = res.json::<ErrorEnvelope>().await.ok().map(|b| b.error);
                if error.as_ref().and_then(|e| e.kind.as_deref()) == Some("idempotency_error") {
                    return Err(GatewayError::KeyReused);
                }
                let (code, message) = error
                    .map(|e| (e.code.unwrap_or_default(), e.message.unwrap_or_default()))
                    .unwrap_or_default();
                Err(GatewayError::Rejected {
                    status,
                    code,
                    message,
                })
            }
        }
    }

    async fn intent(&self, req: reqwest::RequestBuilder) -> Result<IntentView, GatewayError> {
        let res = self.call(req).await?;
        let json: IntentJson = res
            .json()
            .await
            .map_err(|e| GatewayError::Unavailable(format!("unreadable PaymentIntent: {e}")))?;
        Ok(json.into())
    }

    async fn refund(&self, req: reqwest::RequestBuilder) -> Result<RefundView, GatewayError> {
        let res = self.call(req).await?;
        let json: RefundJson = res
            .json()
            .await
            .map_err(|e| GatewayError::Unavailable(format!("unreadable refund: {e}")))?;
        Ok(json.into())
    }

    fn url(&self, path: &str) -> String {
        format!("{}/v1{path}", self.base)
    }
}

impl StripeGateway for HttpStripe {
    async fn create_intent(&self, req: &NewIntent<'_>) -> Result<IntentView, GatewayError> {
        let amount = req.money.amount().to_string();
        let mut form = vec![
            ("amount", amount.as_str()),
            ("currency", req.money.currency().code()),
            ("metadata[payment_id]", req.payment_id),
        ];
        // Sent only when manual: Stripe's default depends on the API version
        // (`automatic` or `automatic_async`, both capture at once), and peers such as
        // localstripe know no other.
        if req.capture_method == CaptureMethod::Manual {
            form.push(("capture_method", req.capture_method.as_str()));
        }
        if let Some(d) = req.description {
            form.push(("description", d));
        }
        if let Some(e) = req.receipt_email {
            form.push(("receipt_email", e));
        }
        let http = self
            .http
            .post(self.url("/payment_intents"))
            .header("Idempotency-Key", req.idempotency_key)
            .form(&form);
        self.intent(http).await
    }

    async fn retrieve_intent(&self, id: &str) -> Result<IntentView, GatewayError> {
        self.intent(
            self.http
                .get(self.url(&format!("/payment_intents/{}", encode(id)))),
        )
        .await
    }

    async fn cancel_intent(
        &self,
        id: &str,
        reason: Option<&str>,
        idempotency_key: &str,
    ) -> Result<IntentView, GatewayError> {
        let form: Vec<(&str, &str)> = reason
            .map(|r| ("cancellation_reason", r))
            .into_iter()
            .collect();
        let req = self
            .http
            .post(self.url(&format!("/payment_intents/{}/cancel", encode(id))))
            .header("Idempotency-Key", idempotency_key)
            .form(&form);
        self.intent(req).await
    }

    async fn list_intents(
        &self,
        created_gte: i64,
        created_lt: i64,
        starting_after: Option<&str>,
    ) -> Result<IntentPage, GatewayError> {
        let mut query = vec![
            ("created[gte]", created_gte.to_string()),
            ("created[lt]", created_lt.to_string()),
            ("limit", "100".to_owned()),
        ];
        if let Some(after) = starting_after {
            query.push(("starting_after", after.to_owned()));
        }
        let res = self
            .call(self.http.get(self.url("/payment_intents")).query(&query))
            .await?;
        let json: SearchJson = res
            .json()
            .await
            .map_err(|e| GatewayError::Unavailable(format!("unreadable intent list: {e}")))?;
        Ok(IntentPage {
            data: json.data.into_iter().map(Into::into).collect(),
            has_more: json.has_more,
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
        let req = self
            .http
            .get(self.url("/payment_intents/search"))
            .query(&[("query", query)]);
        let res = match self.call(req).await {
            Err(GatewayError::NotFound) => {
                return Err(GatewayError::Unsupported("payment intent search"));
            }
            other => other?,
        };
        let json: SearchJson = res
            .json()
            .await
            .map_err(|e| GatewayError::Unavailable(format!("unreadable search result: {e}")))?;
        // Oldest wins if a bug ever made two: it is the one a client could have paid.
        Ok(json
            .data
            .into_iter()
            .min_by_key(|i| i.created)
            .map(Into::into))
    }

    async fn capture_intent(
        &self,
        id: &str,
        amount: Option<i64>,
        idempotency_key: &str,
    ) -> Result<IntentView, GatewayError> {
        let amount = amount.map(|a| a.to_string());
        let form: Vec<(&str, &str)> = amount
            .as_deref()
            .map(|a| ("amount_to_capture", a))
            .into_iter()
            .collect();
        let req = self
            .http
            .post(self.url(&format!("/payment_intents/{}/capture", encode(id))))
            .header("Idempotency-Key", idempotency_key)
            .form(&form);
        self.intent(req).await
    }

    async fn create_refund(&self, req: &NewRefund<'_>) -> Result<RefundView, GatewayError> {
        let amount = req.amount.to_string();
        let mut form = vec![
            ("payment_intent", req.payment_intent),
            ("amount", amount.as_str()),
            ("metadata[refund_id]", req.refund_id),
        ];
        if let Some(r) = req.reason {
            form.push(("reason", r.as_str()));
        }
        let http = self
            .http
            .post(self.url("/refunds"))
            .header("Idempotency-Key", req.idempotency_key)
            .form(&form);
        self.refund(http).await
    }

    async fn retrieve_refund(&self, id: &str) -> Result<RefundView, GatewayError> {
        self.refund(self.http.get(self.url(&format!("/refunds/{}", encode(id)))))
            .await
    }

    async fn list_refunds(&self, payment_intent: &str) -> Result<Vec<RefundView>, GatewayError> {
        let mut out: Vec<RefundView> = Vec::new();
        loop {
            let page = self
                .list_refunds_page(payment_intent, out.last().map(|r| r.id.as_str()))
                .await?;
            out.extend(page.data.into_iter().map(RefundView::from));
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
        let mut query = vec![
            ("created[gte]", created_gte.to_string()),
            ("created[lt]", created_lt.to_string()),
        ];
        if let Some(after) = starting_after {
            query.push(("starting_after", after.to_owned()));
        }
        let page = self.refund_list(query).await?;
        Ok(RefundPage {
            data: page.data.into_iter().map(Into::into).collect(),
            has_more: page.has_more,
        })
    }
}

impl HttpStripe {
    async fn list_refunds_page(
        &self,
        payment_intent: &str,
        starting_after: Option<&str>,
    ) -> Result<RefundListJson, GatewayError> {
        let mut query = vec![("payment_intent", payment_intent.to_owned())];
        if let Some(after) = starting_after {
            query.push(("starting_after", after.to_owned()));
        }
        self.refund_list(query).await
    }

    async fn refund_list(
        &self,
        mut query: Vec<(&str, String)>,
    ) -> Result<RefundListJson, GatewayError> {
        query.push(("limit", "100".to_owned()));
        let res = self
            .call(self.http.get(self.url("/refunds")).query(&query))
            .await?;
        res.json()
            .await
            .map_err(|e| GatewayError::Unavailable(format!("unreadable refund list: {e}")))
    }
}

fn encode(segment: &str) -> String {
    url::form_urlencoded::byte_serialize(segment.as_bytes()).collect()
}

#[cfg(test)]
mod tests {
    /// The version this client writes for is the one stripe-sim renders (its requests
    /// would be refused otherwise: stripe-sim's behaviour tests).
    #[test]
    fn pins_the_version_stripe_sim_renders() {
        assert_eq!(super::STRIPE_VERSION, stripe_sim::state::API_VERSION);
    }
}
