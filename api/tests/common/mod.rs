//! What the API's test files share: the real router on an ephemeral port over the real
//! primary, a stripe-sim of its own, and a fresh client key (zero-to-production's
//! `spawn_app`).
#![allow(dead_code)]

use std::time::Duration;

use paystream_api::auth::KeyGate;
use paystream_api::config::RateLimitConfig;
use paystream_api::ratelimit::RateLimiter;
use paystream_api::{AppState, router};
use paystream_db::keys::{self, Role};
use paystream_db::{Primary, Replica};
use paystream_stripe::StripeApi;
use paystream_testkit::Stack;
use reqwest::StatusCode;
use serde_json::{Value, json};
use sqlx::PgPool;
use std::sync::Arc;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

pub struct TestApp {
    pub base: String,
    pub key: String,
    /// For the tests' own SQL.
    pub db: PgPool,
    /// The same database as the API sees it.
    pub primary: Primary,
    pub stripe_base: String,
    pub http: reqwest::Client,
    /// The instance's key gate, subscribed to key changes.
    pub gate: Arc<KeyGate>,
}

pub const STRIPE_KEY: &str = "sk_test_api_tests";

/// The API's router on an ephemeral port, over `db` and the stripe-sim at `stripe_base`.
pub async fn serve_api(
    db: impl Into<Primary>,
    stripe_base: &str,
    limit: RateLimitConfig,
) -> String {
    serve_api_with_key(db, stripe_base, limit, STRIPE_KEY).await
}

/// The same with another Stripe secret key (one Stripe may refuse).
pub async fn serve_api_with_key(
    db: impl Into<Primary>,
    stripe_base: &str,
    limit: RateLimitConfig,
    stripe_key: &str,
) -> String {
    serve(db, stripe_base, limit, stripe_key).await.0
}

/// The same, with the instance's key gate, once it hears key changes.
pub async fn serve_api_gated(
    db: impl Into<Primary>,
    stripe_base: &str,
    limit: RateLimitConfig,
    stripe_key: &str,
) -> (String, Arc<KeyGate>) {
    let (base, gate) = serve(db, stripe_base, limit, stripe_key).await;
    within(
        Duration::from_secs(10),
        "the key gate never subscribed to key changes",
        || gate.is_subscribed(),
    )
    .await;
    (base, gate)
}

/// Waits until `done()`, checked every 5 ms; fails the test with `never` after `limit`.
pub async fn within(limit: Duration, never: &str, mut done: impl FnMut() -> bool) {
    let deadline = std::time::Instant::now() + limit;
    while !done() {
        assert!(std::time::Instant::now() < deadline, "{never}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// The router and its key gate's subscription (as `main` runs them), on an ephemeral port.
async fn serve(
    db: impl Into<Primary>,
    stripe_base: &str,
    limit: RateLimitConfig,
    stripe_key: &str,
) -> (String, Arc<KeyGate>) {
    let state = AppState {
        db: db.into(),
        stripe: Arc::new(StripeApi::new(stripe_base, stripe_key, Duration::from_secs(2)).unwrap()),
        max_amount: 1_000_000,
        lease: Duration::from_secs(30),
        limiter: Arc::new(RateLimiter::new(limit)),
        metrics: Arc::new(paystream_service::Metrics::default()),
        replica: Some(Replica::new(Stack::get().var("REPLICA_URL"), 2).unwrap()),
        analytics: paystream_analytics::Guard {
            max_lag: Duration::from_secs(10),
            on_lag: paystream_analytics::OnLag::Refuse,
        },
        keys: Arc::default(),
    };
    let gate = state.keys.clone();
    let (listening, primary, metrics) = (gate.clone(), state.db.clone(), state.metrics.clone());
    tokio::spawn(async move {
        listening
            .listen(&primary, &metrics, CancellationToken::new())
            .await
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, router(state)).await.unwrap() });
    (base, gate)
}

/// zero-to-production's spawn_app: the real router on an ephemeral port, a fresh client
/// and key, and its own stripe-sim.
pub async fn spawn_app_with(limit: RateLimitConfig) -> TestApp {
    let _ = tracing_subscriber::fmt()
        .with_test_writer()
        .with_env_filter("warn")
        .try_init();
    let stack = Stack::get();
    let db = stack.pool("DATABASE_URL").await;
    let (_sim, stripe_base) = stripe_sim::spawn_ephemeral().await.unwrap();

    let (base, gate) = serve_api_gated(db.clone(), &stripe_base, limit, STRIPE_KEY).await;
    let primary = Primary::from(db.clone());
    let (_, key) = keys::create(&primary, &format!("test-{}", Uuid::now_v7()), Role::Client)
        .await
        .unwrap();
    TestApp {
        base,
        key,
        db,
        primary,
        stripe_base,
        http: reqwest::Client::new(),
        gate,
    }
}

pub async fn spawn_app() -> TestApp {
    spawn_app_with(RateLimitConfig {
        per_second: 1000,
        burst: 1000,
    })
    .await
}

impl TestApp {
    /// A new client (or operator) named `name` plus a fresh suffix, and its key.
    pub async fn new_key(&self, name: &str, role: Role) -> (paystream_core::ClientId, String) {
        keys::create(&self.primary, &format!("{name}-{}", Uuid::now_v7()), role)
            .await
            .unwrap()
    }

    pub async fn create(
        &self,
        idem: &str,
        body: &Value,
    ) -> (StatusCode, reqwest::header::HeaderMap, Value) {
        let res = self
            .http
            .post(format!("{}/v1/payments", self.base))
            .bearer_auth(&self.key)
            .header("Idempotency-Key", idem)
            .json(body)
            .send()
            .await
            .unwrap();
        let (status, headers) = (res.status(), res.headers().clone());
        (status, headers, res.json().await.unwrap_or(Value::Null))
    }

    /// A GET as some other key (or none), for the auth tests.
    pub async fn get_as(&self, path: &str, key: Option<&str>) -> reqwest::Response {
        let mut req = self.http.get(format!("{}{path}", self.base));
        if let Some(k) = key {
            req = req.bearer_auth(k);
        }
        req.send().await.unwrap()
    }

    /// A request with this app's key: its status and JSON body.
    async fn keyed(&self, req: reqwest::RequestBuilder) -> (StatusCode, Value) {
        let res = req.bearer_auth(&self.key).send().await.unwrap();
        (res.status(), res.json().await.unwrap_or(Value::Null))
    }

    pub async fn get(&self, path: &str) -> (StatusCode, Value) {
        self.keyed(self.http.get(format!("{}{path}", self.base)))
            .await
    }

    pub async fn rows_for_key(&self, idem: &str) -> i64 {
        sqlx::query_scalar("SELECT count(*) FROM payments WHERE idempotency_key = $1 AND client_id = (SELECT client_id FROM idempotency_keys WHERE idempotency_key = $1 LIMIT 1)")
            .bind(idem)
            .fetch_one(&self.db)
            .await
            .unwrap()
    }

    pub async fn intents_for(&self, payment_id: &str) -> usize {
        self.intents_of(payment_id).await.len()
    }

    /// stripe-sim's own view of every intent carrying `payment_id`.
    pub async fn intents_of(&self, payment_id: &str) -> Vec<Value> {
        let res: Value = self
            .http
            .get(format!("{}/v1/payment_intents/search", self.stripe_base))
            .bearer_auth(STRIPE_KEY)
            .query(&[("query", format!("metadata['payment_id']:'{payment_id}'"))])
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        res["data"].as_array().cloned().unwrap_or_default()
    }

    pub async fn cancel(&self, id: &str) -> (StatusCode, Value) {
        self.keyed(
            self.http
                .post(format!("{}/v1/payments/{id}/cancel", self.base)),
        )
        .await
    }

    /// The customer at Stripe; returns Stripe's status code.
    pub async fn confirm(&self, pi: &str, pm: &str) -> u16 {
        self.http
            .post(format!(
                "{}/v1/payment_intents/{pi}/confirm",
                self.stripe_base
            ))
            .bearer_auth(STRIPE_KEY)
            .form(&[("payment_method", pm)])
            .send()
            .await
            .unwrap()
            .status()
            .as_u16()
    }

    /// Moves stripe-sim's clock (e.g. past its 24-hour idempotency key lifetime).
    pub async fn advance_stripe_clock(&self, seconds: i64) {
        let res = self
            .http
            .post(format!("{}/_sim/clock/advance", self.stripe_base))
            .json(&json!({"seconds": seconds}))
            .send()
            .await
            .unwrap();
        assert!(res.status().is_success());
    }

    pub async fn faults(&self, f: Value) {
        let res = self
            .http
            .put(format!("{}/_sim/faults", self.stripe_base))
            .json(&f)
            .send()
            .await
            .unwrap();
        assert!(res.status().is_success());
    }
}

pub fn idem() -> String {
    format!("test-{}", Uuid::now_v7())
}
