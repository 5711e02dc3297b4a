//! Clients and customers: each payment's script run against the stack's API (through
//! nginx, as a client would) and against Stripe (as the customer's browser would, with the
//! client secret the client was handed). Every API answer is kept for the checks.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use uuid::Uuid;

use crate::check::{Answer, Told};
use crate::plan::{Cancel, Customer, PaymentScript};

pub struct Client {
    pub http: reqwest::Client,
    /// nginx's HTTP address.
    pub api: String,
    pub api_key: String,
    /// stripe-sim's address and the account's secret key (the customer's side).
    pub sim: String,
    pub sim_key: String,
    pub started: Instant,
    answers: Mutex<Vec<Answer>>,
}

struct Reply {
    status: u16,
    body: Value,
}

/// Answers a client retries by itself (the same request, the same key).
fn transient(status: u16) -> bool {
    matches!(status, 0 | 409 | 429 | 502 | 503 | 504)
}

impl Client {
    pub fn new(api: &str, api_key: &str, sim: &str, sim_key: &str) -> Client {
        Client {
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(20))
                .build()
                .unwrap_or_default(),
            api: api.trim_end_matches('/').to_owned(),
            api_key: api_key.to_owned(),
            sim: sim.trim_end_matches('/').to_owned(),
            sim_key: sim_key.to_owned(),
            started: Instant::now(),
            answers: Mutex::new(Vec::new()),
        }
    }

    pub fn answers(&self) -> Vec<Answer> {
        self.answers
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    fn ms(&self) -> u64 {
        u64::try_from(self.started.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    async fn send(&self, what: &'static str, req: reqwest::RequestBuilder) -> Reply {
        let at_ms = self.ms();
        let (status, body) = match req.send().await {
            Ok(res) => {
                let status = res.status().as_u16();
                (status, res.json::<Value>().await.unwrap_or(Value::Null))
            }
            Err(_) => (0, Value::Null),
        };
        let code = body["error"]["code"].as_str().map(str::to_owned);
        self.answers
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(Answer {
                at_ms,
                status,
                code,
                what,
            });
        Reply { status, body }
    }

    async fn create_once(&self, key: &str, body: &Value) -> Reply {
        let req = self
            .http
            .post(format!("{}/v1/payments", self.api))
            .bearer_auth(&self.api_key)
            .header("Idempotency-Key", key)
            .json(body);
        self.send("create", req).await
    }

    /// A create, retried as a client would while the answer says "try again".
    async fn create(&self, body: &Value, told: &mut Told) {
        for attempt in 0..12 {
            let r = self.create_once(&told.key, body).await;
            learn(told, &r);
            // 202: recorded, Stripe unavailable; the answer says to retry with the key.
            if !(transient(r.status) || r.status == 202) {
                return;
            }
            tokio::time::sleep(Duration::from_millis(250 * (attempt + 1))).await;
        }
    }

    async fn cancel(&self, id: Uuid, told: &mut Told) {
        for attempt in 0..10 {
            let req = self
                .http
                .post(format!("{}/v1/payments/{id}/cancel", self.api))
                .bearer_auth(&self.api_key);
            let r = self.send("cancel", req).await;
            if r.status == 200 && r.body["status"] == "canceled" {
                told.canceled = true;
            }
            if !transient(r.status) {
                return;
            }
            tokio::time::sleep(Duration::from_millis(200 * (attempt + 1))).await;
        }
    }

    /// The customer at Stripe; Stripe's own faults are retried like Stripe.js would.
    async fn stripe(&self, path: &str, form: &[(&str, &str)]) {
        for attempt in 0..6 {
            let res = self
                .http
                .post(format!("{}{path}", self.sim))
                .bearer_auth(&self.sim_key)
                .form(form)
                .send()
                .await;
            match res.map(|r| r.status().as_u16()) {
                Ok(s) if s < 429 || (s > 429 && s < 500) => return,
                _ => tokio::time::sleep(Duration::from_millis(200 * (attempt + 1))).await,
            }
        }
    }

    async fn confirm(&self, pi: &str, pm: &str) {
        self.stripe(
            &format!("/v1/payment_intents/{pi}/confirm"),
            &[("payment_method", pm)],
        )
        .await;
    }

    async fn authenticate(&self, pi: &str, outcome: &str) {
        for _ in 0..6 {
            let res = self
                .http
                .post(format!(
                    "{}/_sim/payment_intents/{pi}/authenticate",
                    self.sim
                ))
                .json(&json!({"outcome": outcome}))
                .send()
                .await;
            if res.is_ok() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    async fn customer(&self, pi: &str, c: Customer) {
        match c {
            Customer::Pay => self.confirm(pi, "pm_card_visa").await,
            Customer::DeclineThenPay => {
                self.confirm(pi, "pm_card_chargeDeclined").await;
                self.confirm(pi, "pm_card_visa").await;
            }
            Customer::Decline => self.confirm(pi, "pm_card_chargeDeclined").await,
            Customer::ThreeDs => {
                self.confirm(pi, "pm_card_threeDSecure2Required").await;
                self.authenticate(pi, "succeed").await;
            }
            Customer::ThreeDsFail => {
                self.confirm(pi, "pm_card_threeDSecure2Required").await;
                self.authenticate(pi, "fail").await;
            }
            Customer::Processing => self.confirm(pi, "pm_sim_processing").await,
            Customer::Abandon => {}
        }
    }

    /// Runs one payment's script; what the client was told comes back.
    pub async fn run(&self, seed: u64, s: &PaymentScript) -> Told {
        let mut told = Told {
            key: key(seed, s.n),
            ..Told::default()
        };
        let body = body(s);
        self.create(&body, &mut told).await;
        for _ in 0..s.retries {
            self.create(&body, &mut told).await;
        }
        match (s.cancel, told.payment_id) {
            (Some(Cancel::BeforePaying), Some(id)) => self.cancel(id, &mut told).await,
            (Some(Cancel::RacingRetry), Some(id)) => {
                let mut racing = told.clone();
                let (_, ()) =
                    tokio::join!(self.create(&body, &mut racing), self.cancel(id, &mut told));
                told.secrets_for.extend(racing.secrets_for);
            }
            _ => {}
        }
        // The customer can pay only what the client was handed the secret of.
        if let Some(pi) = told.secrets_for.iter().next().cloned() {
            self.customer(&pi, s.customer).await;
        }
        if let (Some(Cancel::AfterPaying), Some(id)) = (s.cancel, told.payment_id) {
            self.cancel(id, &mut told).await;
        }
        told
    }

    /// The same create again, long after (Stripe has forgotten its key by now).
    pub async fn late_retry(&self, s: &PaymentScript, told: &mut Told) {
        self.create(&body(s), told).await;
    }
}

pub fn key(seed: u64, n: usize) -> String {
    format!("chaos-{seed}-{n}")
}

fn body(s: &PaymentScript) -> Value {
    json!({"amount": s.amount, "currency": s.currency, "description": format!("chaos payment {}", s.n)})
}

/// What an answer tells the client: its payment id, and a client secret (whose intent id
/// is the part before `_secret_`).
fn learn(told: &mut Told, r: &Reply) {
    let payment = if r.body["payment"].is_object() {
        &r.body["payment"]
    } else {
        &r.body
    };
    if let Some(id) = payment["id"].as_str().and_then(|s| Uuid::parse_str(s).ok()) {
        told.payment_id.get_or_insert(id);
    }
    if let Some(secret) = payment["client_secret"].as_str()
        && let Some((pi, _)) = secret.split_once("_secret_")
    {
        told.secrets_for.insert(pi.to_owned());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_client_learns_its_payment_and_secrets_from_every_shape_of_answer() {
        let id = Uuid::now_v7();
        let mut told = Told::default();
        learn(
            &mut told,
            &Reply {
                status: 202,
                body: json!({"error": {"code": "processor_unavailable"}, "payment": {"id": id, "client_secret": null}}),
            },
        );
        assert_eq!((told.payment_id, told.secrets_for.len()), (Some(id), 0));
        learn(
            &mut told,
            &Reply {
                status: 201,
                body: json!({"id": id, "client_secret": "pi_abc_secret_xyz"}),
            },
        );
        assert_eq!(told.secrets_for.iter().collect::<Vec<_>>(), ["pi_abc"]);
        learn(
            &mut told,
            &Reply {
                status: 0,
                body: Value::Null,
            },
        );
        assert_eq!(told.payment_id, Some(id));
    }
}
