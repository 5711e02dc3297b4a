//! Clients and customers: each payment's script run against the stack's API (through
//! nginx, as a client would) and against Stripe (as the customer's browser would, with the
//! client secret the client was handed), then its captures and refunds. Every API answer
//! is kept for the checks.

use std::future::Future;
use std::pin::Pin;
use std::sync::Mutex;
use std::task::Poll;
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use uuid::Uuid;

use crate::check::{Answer, NamedRefund, Told, ToldCapture};
use crate::plan::{Cancel, Capture, Customer, PaymentScript, RefundRequest};

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

/// The same for captures and refunds, whose 409s are mostly final answers
/// (`payment_not_capturable`, `payment_not_refundable`).
fn retry_money(r: &Reply) -> bool {
    match r.status {
        409 => r.body["error"]["code"] == "idempotency_key_in_use",
        s => matches!(s, 0 | 429 | 502 | 503 | 504),
    }
}

/// Runs futures of one kind at once, their outputs in their order.
async fn join_all<F: Future>(futs: Vec<F>) -> Vec<F::Output> {
    let mut futs: Vec<Pin<Box<F>>> = futs.into_iter().map(Box::pin).collect();
    let mut out: Vec<Option<F::Output>> = futs.iter().map(|_| None).collect();
    std::future::poll_fn(|cx| {
        let mut pending = false;
        for (f, o) in futs.iter_mut().zip(out.iter_mut()) {
            if o.is_none() {
                match f.as_mut().poll(cx) {
                    Poll::Ready(v) => *o = Some(v),
                    Poll::Pending => pending = true,
                }
            }
        }
        if pending {
            Poll::Pending
        } else {
            Poll::Ready(())
        }
    })
    .await;
    out.into_iter().flatten().collect()
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

    async fn customer(&self, pi: &str, c: Customer, card: &str) {
        match c {
            Customer::Pay => self.confirm(pi, card).await,
            Customer::DeclineThenPay => {
                self.confirm(pi, "pm_card_chargeDeclined").await;
                self.confirm(pi, card).await;
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
            let card = if s.refund_fail_card {
                "pm_card_refundFail"
            } else {
                "pm_card_visa"
            };
            self.customer(&pi, s.customer, card).await;
        }
        if let (Some(Cancel::AfterPaying), Some(id)) = (s.cancel, told.payment_id) {
            self.cancel(id, &mut told).await;
        }
        let Some(id) = told.payment_id else {
            return told;
        };
        if let Some(c) = s.capture {
            self.capture(id, s, c, &mut told).await;
        }
        if let Some(plan) = &s.refunds {
            // Refunds are for succeeded payments: the client waits for its payment first
            // (a while for one whose customer pays, a moment for one who does not).
            let limit = if s.pays() { 30 } else { 3 };
            self.wait_for(id, Duration::from_secs(limit), |p| p["status"] != "pending")
                .await;
            for round in &plan.rounds {
                let sent = join_all(
                    round
                        .iter()
                        .map(|q| self.refund(id, &told.key, *q))
                        .collect(),
                )
                .await;
                for (key, named) in sent {
                    told.refunds.entry(key).or_default().extend(named);
                }
            }
        }
        told
    }

    /// Reads the payment until `done` says so or `limit` passes.
    async fn wait_for(&self, id: Uuid, limit: Duration, done: impl Fn(&Value) -> bool) {
        let started = Instant::now();
        while started.elapsed() < limit {
            let req = self
                .http
                .get(format!("{}/v1/payments/{id}", self.api))
                .bearer_auth(&self.api_key);
            let r = self.send("get", req).await;
            if r.status == 200 && done(&r.body) {
                return;
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }

    /// Captures a manual payment as its plan says, once its customer authorized it (or
    /// gave up, or the wait ran out: then the capture is refused).
    async fn capture(&self, id: Uuid, s: &PaymentScript, c: Capture, told: &mut Told) {
        if c == Capture::Never {
            return;
        }
        let limit = Duration::from_secs(if s.pays() { 20 } else { 2 });
        self.wait_for(id, limit, |p| {
            p["status"] != "pending" || p["stripe_status"] == "requires_capture"
        })
        .await;
        let key = |k: u8| format!("{}-capture-{k}", told.key);
        let captured = match c {
            Capture::Full => self.capture_once(id, &key(0), None).await,
            Capture::Partial(a) => self.capture_once(id, &key(0), Some(a)).await,
            Capture::TwiceSameKey(a) => {
                let (k, l) = (key(0), key(0));
                let (mut one, two) =
                    tokio::join!(self.capture_once(id, &k, a), self.capture_once(id, &l, a));
                one.extend(two);
                one
            }
            Capture::TwiceNewKey(a) => {
                let mut one = self.capture_once(id, &key(0), a).await;
                one.extend(self.capture_once(id, &key(1), None).await);
                one
            }
            Capture::OverThenFull => {
                let mut one = self.capture_once(id, &key(0), Some(s.amount + 1)).await;
                one.extend(self.capture_once(id, &key(1), None).await);
                one
            }
            Capture::Never => Vec::new(),
        };
        told.captures.extend(captured);
    }

    /// One capture request, retried with its key while the answer says "try again";
    /// what each 200 said was captured.
    async fn capture_once(&self, id: Uuid, key: &str, amount: Option<i64>) -> Vec<ToldCapture> {
        let body = match amount {
            Some(a) => json!({"amount_to_capture": a}),
            None => json!({}),
        };
        let mut told = Vec::new();
        for attempt in 0..12 {
            let req = self
                .http
                .post(format!("{}/v1/payments/{id}/capture", self.api))
                .bearer_auth(&self.api_key)
                .header("Idempotency-Key", key)
                .json(&body);
            let r = self.send("capture", req).await;
            if r.status == 200
                && let Some(captured) = r.body["amount_captured"].as_i64()
            {
                told.push(ToldCapture {
                    requested: amount,
                    captured,
                });
            }
            if !retry_money(&r) {
                break;
            }
            tokio::time::sleep(Duration::from_millis(250 * (attempt + 1))).await;
        }
        told
    }

    /// One refund request, retried with its key while the answer says "try again"; a 202
    /// (recorded, Stripe unavailable) is left to the reconciler. Returns its key and the
    /// refunds its answers named.
    async fn refund(
        &self,
        id: Uuid,
        payment_key: &str,
        q: RefundRequest,
    ) -> (String, Vec<NamedRefund>) {
        let key = format!("{payment_key}-refund-{}", q.key);
        let mut body = json!({});
        if let Some(a) = q.amount {
            body["amount"] = json!(a);
        }
        if let Some(r) = q.reason {
            body["reason"] = json!(r);
        }
        let mut named = Vec::new();
        for attempt in 0..12 {
            let req = self
                .http
                .post(format!("{}/v1/payments/{id}/refunds", self.api))
                .bearer_auth(&self.api_key)
                .header("Idempotency-Key", &key)
                .json(&body);
            let r = self.send("refund", req).await;
            if let Some(n) = named_refund(&r, q.amount) {
                named.push(n);
            }
            if !retry_money(&r) {
                break;
            }
            tokio::time::sleep(Duration::from_millis(250 * (attempt + 1))).await;
        }
        (key, named)
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
    let mut body = json!({"amount": s.amount, "currency": s.currency, "description": format!("chaos payment {}", s.n)});
    if s.capture.is_some() {
        body["capture_method"] = json!("manual");
    }
    body
}

/// The refund an answer names: the body itself (201, or 200 for a final one resumed), or
/// its `refund` (202 `processor_unavailable`, 422 `processor_rejected`).
fn named_refund(r: &Reply, requested: Option<i64>) -> Option<NamedRefund> {
    let refund = match r.status {
        200 | 201 => &r.body,
        _ => &r.body["refund"],
    };
    Some(NamedRefund {
        id: refund["id"]
            .as_str()
            .and_then(|s| Uuid::parse_str(s).ok())?,
        amount: refund["amount"].as_i64()?,
        requested,
    })
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

    #[test]
    fn a_refund_is_named_by_every_answer_that_carries_one() {
        let id = Uuid::now_v7();
        let reply = |status, body| Reply { status, body };
        let named = |r: &Reply| named_refund(r, Some(5)).map(|n| (n.id, n.amount));
        assert_eq!(
            named(&reply(
                201,
                json!({"id": id, "amount": 5, "status": "pending"})
            )),
            Some((id, 5))
        );
        assert_eq!(
            named(&reply(
                202,
                json!({"error": {"code": "processor_unavailable"}, "refund": {"id": id, "amount": 5}})
            )),
            Some((id, 5))
        );
        assert_eq!(
            named(&reply(
                422,
                json!({"error": {"code": "refund_exceeds_remaining"}, "payment": {"id": Uuid::now_v7(), "amount": 9}})
            )),
            None,
            "a payment is not a refund"
        );
        assert_eq!(named(&reply(0, Value::Null)), None);
    }

    #[tokio::test]
    async fn join_all_runs_them_at_once_and_keeps_their_order() {
        // Each waits for the other two: run one after another, they would never finish.
        let barrier = tokio::sync::Barrier::new(3);
        let out = tokio::time::timeout(
            Duration::from_secs(5),
            join_all(
                [3, 1, 2]
                    .into_iter()
                    .map(|n| {
                        let barrier = &barrier;
                        async move {
                            barrier.wait().await;
                            n
                        }
                    })
                    .collect(),
            ),
        )
        .await;
        assert_eq!(out.ok(), Some(vec![3, 1, 2]));
    }
}
