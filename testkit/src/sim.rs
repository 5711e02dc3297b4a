//! A test's own Stripe: an in-process stripe-sim with its rate limits off, plus payments
//! made against it and the real primary the way the API makes them (pending row, then
//! PaymentIntent with `metadata.payment_id`, then the intent id attached).

use std::time::Duration;

use paystream_core::gateway::{NewIntent, NewRefund, StripeGateway, intent_key, refund_key};
use paystream_core::{CaptureMethod, ClientId, PaymentId, PaymentStatus, RefundId};
use paystream_core::{Currency, Money};
use paystream_db::Primary;
use paystream_db::keys;
use paystream_db::payments::{self, NewPayment, Observation, Source};
use paystream_db::refunds::{self, RefundObservation, Scope};
use paystream_stripe::StripeApi;
use serde_json::{Value, json};
use sqlx::PgPool;
use uuid::Uuid;

/// Refunds as tests request them: committed the API's way, then sent as the API sends.
pub use paystream_db::refunds::BeginRefund;

/// Any `sk_test_` key opens an ephemeral stripe-sim.
pub const SIM_KEY: &str = "sk_test_paystream_tests";

pub struct SimWorld {
    /// For the tests' own SQL (what they assert reads the tables themselves).
    pub db: PgPool,
    /// The same database as the services see it.
    pub primary: Primary,
    /// stripe-sim's base URL.
    pub sim: String,
    pub http: reqwest::Client,
    pub stripe: StripeApi,
    _sim: stripe_sim::Sim,
}

impl SimWorld {
    pub async fn start(db: PgPool) -> SimWorld {
        let (sim_handle, sim) = stripe_sim::spawn_ephemeral().await.expect("stripe-sim");
        let http = reqwest::Client::new();
        let mut world: Value = http
            .get(format!("{sim}/_sim/world"))
            .send()
            .await
            .and_then(|r| r.error_for_status())
            .expect("GET /_sim/world")
            .json()
            .await
            .expect("world json");
        // Tests make hundreds of calls a second; Stripe's own limits are tested elsewhere.
        world["per_endpoint_rate"] = json!(0);
        world["global_rate"] = json!(0);
        http.put(format!("{sim}/_sim/world"))
            .json(&world)
            .send()
            .await
            .and_then(|r| r.error_for_status())
            .expect("PUT /_sim/world");
        let stripe = StripeApi::new(&sim, SIM_KEY, Duration::from_secs(5)).expect("client");
        SimWorld {
            primary: Primary::from_pool(db.clone()),
            db,
            sim,
            http,
            stripe,
            _sim: sim_handle,
        }
    }

    async fn control(&self, method: reqwest::Method, path: &str, body: &Value) -> Value {
        let res = self
            .http
            .request(method, format!("{}{path}", self.sim))
            .json(body)
            .send()
            .await
            .unwrap_or_else(|e| panic!("{path}: {e}"));
        assert!(res.status().is_success(), "{path}: {}", res.status());
        res.json().await.unwrap_or(Value::Null)
    }

    pub async fn set_faults(&self, faults: Value) {
        self.control(reqwest::Method::PUT, "/_sim/faults", &faults)
            .await;
    }

    pub async fn add_webhook_endpoint(&self, url: &str, secret: &str) {
        self.control(
            reqwest::Method::POST,
            "/_sim/webhook_endpoints",
            // Subscribed as a production endpoint is: the tests that converge through
            // webhooks and the catch-up also prove the list misses no event they need.
            &json!({"url": url, "secret": secret,
                    "enabled_events": paystream_core::gateway::WEBHOOK_EVENTS}),
        )
        .await;
    }

    /// A pending payment with its PaymentIntent, as the API makes them.
    pub async fn payment(&self) -> (Uuid, String) {
        self.payment_with(CaptureMethod::Automatic).await
    }

    /// The same, captured as `capture` says.
    pub async fn payment_with(&self, capture: CaptureMethod) -> (Uuid, String) {
        let id = Uuid::now_v7();
        self.insert_pending_with(id, capture).await;
        let pi = self.intent_with(id, capture).await;
        payments::attach_intent(
            &self.primary,
            PaymentId::from_uuid(id),
            &pi,
            "requires_payment_method",
        )
        .await
        .expect("attach intent");
        (id, pi)
    }

    /// A pending row, as the API commits it before calling Stripe.
    pub async fn insert_pending(&self, id: Uuid) {
        self.insert_pending_with(id, CaptureMethod::Automatic).await
    }

    async fn insert_pending_with(&self, id: Uuid, capture: CaptureMethod) {
        let key = format!("test-{id}");
        let new = NewPayment {
            client_id: ClientId::generate(),
            idempotency_key: &key,
            money: money(),
            description: None,
            customer_email: None,
            metadata: &json!({}),
            capture_method: capture,
        };
        payments::create_pending(&self.primary, PaymentId::from_uuid(id), &new)
            .await
            .expect("insert pending");
    }

    /// The PaymentIntent the API would create for `id` (same idempotency key).
    pub async fn intent_for(&self, id: Uuid) -> String {
        self.intent_with(id, CaptureMethod::Automatic).await
    }

    async fn intent_with(&self, id: Uuid, capture: CaptureMethod) -> String {
        let req = NewIntent {
            payment_id: &id.to_string(),
            money: money(),
            description: None,
            receipt_email: None,
            capture_method: capture,
            idempotency_key: &intent_key(&id),
        };
        self.stripe
            .create_intent(&req)
            .await
            .expect("create intent")
            .id
    }

    /// Confirms with a test payment method; a decline (402) is a normal answer.
    pub async fn confirm(&self, pi: &str, pm: &str) {
        let res = self
            .http
            .post(format!("{}/v1/payment_intents/{pi}/confirm", self.sim))
            .bearer_auth(SIM_KEY)
            .form(&[("payment_method", pm)])
            .send()
            .await
            .expect("confirm");
        assert!(
            matches!(res.status().as_u16(), 200 | 402),
            "confirm {pi} with {pm}: {}",
            res.status()
        );
    }

    /// A payment the customer paid with `pm`, succeeded in our database (as a webhook
    /// would have made it).
    pub async fn paid(&self, pm: &str) -> (PaymentId, String) {
        let (id, pi) = self.payment().await;
        self.confirm(&pi, pm).await;
        let view = self
            .stripe
            .retrieve_intent(&pi)
            .await
            .expect("retrieve intent");
        assert_eq!(view.status(), Some(PaymentStatus::Succeeded), "{pm}");
        let id = PaymentId::from_uuid(id);
        payments::apply_status(
            &self.primary,
            id,
            &Observation::of_intent(PaymentStatus::Succeeded, &view, Source::Webhook),
        )
        .await
        .expect("apply succeeded");
        (id, pi)
    }

    /// An operator of the test's own: refunds are requested by a real API client.
    pub async fn operator(&self) -> ClientId {
        keys::create(
            &self.primary,
            &format!("ops-{}", Uuid::now_v7()),
            keys::Role::Operator,
        )
        .await
        .expect("operator key")
        .0
    }

    /// Commits a refund the API's way (its key and its amount reserved together).
    pub async fn begin_refund(&self, by: ClientId, payment: PaymentId, amount: i64) -> BeginRefund {
        let key = format!("test-{}", Uuid::now_v7());
        refunds::begin(
            &self.primary,
            &refunds::NewRefund {
                payment_id: payment,
                requested_by: by,
                scope: Scope::Any,
                idempotency_key: &key,
                amount: Some(amount),
                reason: None,
                metadata: &json!({}),
            },
            key.as_bytes(),
            Duration::from_secs(30),
        )
        .await
        .expect("begin refund")
    }

    /// A refund committed the API's way, then sent to Stripe as the API sends it, unless
    /// `send` is false (the API died before reaching Stripe).
    pub async fn refund(&self, payment: PaymentId, pi: &str, amount: i64, send: bool) -> RefundId {
        let by = self.operator().await;
        let BeginRefund::Created(r, _) = self.begin_refund(by, payment, amount).await else {
            panic!("refund of {amount} refused")
        };
        if send {
            let view = self
                .stripe
                .create_refund(&NewRefund {
                    refund_id: &r.id.to_string(),
                    payment_intent: pi,
                    amount,
                    reason: None,
                    idempotency_key: &refund_key(&r.id),
                })
                .await
                .expect("create refund");
            let status = view.status().expect("a known refund status");
            let obs = RefundObservation::of_stripe(status, &view, Source::Api);
            refunds::apply_status(&self.primary, r.id, &obs)
                .await
                .expect("apply refund");
        }
        r.id
    }

    /// Changes some of stripe-sim's world settings (`refund_ms`, ...).
    pub async fn set_world(&self, patch: Value) {
        let mut w = self
            .control(reqwest::Method::GET, "/_sim/world", &Value::Null)
            .await;
        for (k, v) in patch.as_object().into_iter().flatten() {
            w[k] = v.clone();
        }
        self.control(reqwest::Method::PUT, "/_sim/world", &w).await;
    }

    /// Our status of a refund.
    pub async fn refund_status(&self, id: RefundId) -> String {
        sqlx::query_scalar("SELECT status FROM refunds WHERE id = $1")
            .bind(id.as_uuid())
            .fetch_one(&self.db)
            .await
            .expect("refund row")
    }

    /// Moves stripe-sim's clock forward (refunds complete or fail, authorizations expire,
    /// webhook retries come due).
    pub async fn advance_clock(&self, seconds: i64) {
        self.control(
            reqwest::Method::POST,
            "/_sim/clock/advance",
            &json!({"seconds": seconds}),
        )
        .await;
    }

    /// The customer's 3D Secure answer: `succeed` or `fail`.
    pub async fn authenticate(&self, pi: &str, outcome: &str) {
        self.control(
            reqwest::Method::POST,
            &format!("/_sim/payment_intents/{pi}/authenticate"),
            &json!({"outcome": outcome}),
        )
        .await;
    }

    pub async fn stripe_status(&self, pi: &str) -> String {
        self.stripe
            .retrieve_intent(pi)
            .await
            .expect("retrieve intent")
            .stripe_status
    }

    /// Our status and linked PaymentIntent.
    pub async fn ours(&self, id: Uuid) -> (String, Option<String>) {
        sqlx::query_as("SELECT status, stripe_payment_intent_id FROM payments WHERE id = $1")
            .bind(id)
            .fetch_one(&self.db)
            .await
            .expect("payment row")
    }

    /// Every webhook delivery stripe-sim made or dropped.
    pub async fn deliveries(&self) -> Vec<Value> {
        let v: Value = self
            .http
            .get(format!("{}/_sim/deliveries", self.sim))
            .send()
            .await
            .expect("deliveries")
            .json()
            .await
            .expect("deliveries json");
        v["data"].as_array().cloned().unwrap_or_default()
    }
}

fn money() -> Money {
    Money::new(2000, Currency::parse("usd").expect("usd"), 1_000_000).expect("money")
}
