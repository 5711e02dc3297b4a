//! A test's own Stripe: an in-process stripe-sim with its rate limits off, plus payments
//! made against it and the real primary the way the API makes them (pending row, then
//! PaymentIntent with `metadata.payment_id`, then the intent id attached).

use std::time::Duration;

use paystream_core::gateway::{NewIntent, StripeGateway, intent_key};
use paystream_core::{ClientId, PaymentId};
use paystream_core::{Currency, Money};
use paystream_db::Primary;
use paystream_db::payments::{self, NewPayment};
use paystream_stripe::HttpStripe;
use serde_json::{Value, json};
use sqlx::PgPool;
use uuid::Uuid;

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
    pub stripe: HttpStripe,
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
        let stripe = HttpStripe::new(&sim, SIM_KEY, Duration::from_secs(5)).expect("client");
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
            &json!({"url": url, "secret": secret}),
        )
        .await;
    }

    /// A pending payment with its PaymentIntent, as the API makes them.
    pub async fn payment(&self) -> (Uuid, String) {
        let id = Uuid::now_v7();
        self.insert_pending(id).await;
        let pi = self.intent_for(id).await;
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
        let key = format!("test-{id}");
        let new = NewPayment {
            client_id: ClientId::generate(),
            idempotency_key: &key,
            money: money(),
            description: None,
            customer_email: None,
            metadata: &json!({}),
        };
        payments::create_pending(&self.primary, PaymentId::from_uuid(id), &new)
            .await
            .expect("insert pending");
    }

    /// The PaymentIntent the API would create for `id` (same idempotency key).
    pub async fn intent_for(&self, id: Uuid) -> String {
        let req = NewIntent {
            payment_id: &id.to_string(),
            money: money(),
            description: None,
            receipt_email: None,
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
