//! Test harness: a simulator on an ephemeral port and a webhook receiver that records
//! what it gets and answers with a scripted status.
#![allow(dead_code)]

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use serde_json::{Value, json};
use stripe_sim::{Sim, SimConfig};

pub const KEY: &str = "sk_test_paystream";

pub struct TestSim {
    pub sim: Sim,
    pub base: String,
    pub http: reqwest::Client,
}

pub async fn start() -> TestSim {
    start_with(SimConfig {
        seed: 7,
        ..SimConfig::default()
    })
    .await
}

pub async fn start_with(cfg: SimConfig) -> TestSim {
    let (sim, base) = stripe_sim::spawn(cfg).await.unwrap();
    TestSim {
        sim,
        base,
        http: reqwest::Client::new(),
    }
}

impl TestSim {
    pub async fn post(
        &self,
        path: &str,
        form: &[(&str, &str)],
        idem: Option<&str>,
    ) -> (u16, HeaderMap, Value) {
        let mut req = self
            .http
            .post(format!("{}{path}", self.base))
            .bearer_auth(KEY)
            .form(form);
        if let Some(k) = idem {
            req = req.header("Idempotency-Key", k);
        }
        let res = req.send().await.unwrap();
        let (status, headers) = (res.status().as_u16(), convert(res.headers()));
        (status, headers, res.json().await.unwrap())
    }

    pub async fn get(&self, path: &str) -> (u16, Value) {
        let res = self
            .http
            .get(format!("{}{path}", self.base))
            .bearer_auth(KEY)
            .send()
            .await
            .unwrap();
        (res.status().as_u16(), res.json().await.unwrap())
    }

    /// Polls `GET path` until `done` holds (the delivery loop applies simulated time in
    /// the background) or 5 s pass; returns the last answer.
    pub async fn get_until(&self, path: &str, done: impl Fn(&Value) -> bool) -> Value {
        let mut last = Value::Null;
        for _ in 0..250 {
            last = self.get(path).await.1;
            if done(&last) {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        last
    }

    pub async fn delete(&self, path: &str) -> (u16, Value) {
        let res = self
            .http
            .delete(format!("{}{path}", self.base))
            .bearer_auth(KEY)
            .send()
            .await
            .unwrap();
        (res.status().as_u16(), res.json().await.unwrap())
    }

    /// The events of one type, newest first.
    pub async fn events(&self, kind: &str) -> Vec<Value> {
        let (status, v) = self.get(&format!("/v1/events?type={kind}&limit=100")).await;
        assert_eq!(status, 200, "{v}");
        v["data"].as_array().unwrap().clone()
    }

    /// Sets world fields, keeping the others.
    pub async fn world(&self, changes: Value) {
        let mut world = self
            .control(reqwest::Method::GET, "/_sim/world", Value::Null)
            .await;
        for (k, v) in changes.as_object().unwrap() {
            world[k] = v.clone();
        }
        self.control(reqwest::Method::PUT, "/_sim/world", world)
            .await;
    }

    /// A confirmed intent: `succeeded`, or `requires_capture` when `manual`.
    pub async fn paid(&self, amount: &str, pm: &str, manual: bool) -> Value {
        let mut form = vec![
            ("amount", amount),
            ("currency", "usd"),
            ("payment_method", pm),
            ("confirm", "true"),
        ];
        if manual {
            form.push(("capture_method", "manual"));
        }
        let (status, _, body) = self.post("/v1/payment_intents", &form, None).await;
        assert_eq!(status, 200, "{body}");
        body
    }

    pub async fn control(&self, method: reqwest::Method, path: &str, body: Value) -> Value {
        let res = self
            .http
            .request(method, format!("{}{path}", self.base))
            .json(&body)
            .send()
            .await
            .unwrap();
        assert!(res.status().is_success(), "{path}: {}", res.status());
        res.json().await.unwrap()
    }

    pub async fn faults(&self, f: Value) {
        self.control(reqwest::Method::PUT, "/_sim/faults", f).await;
    }

    pub async fn advance(&self, seconds: i64) {
        self.control(
            reqwest::Method::POST,
            "/_sim/clock/advance",
            json!({"seconds": seconds}),
        )
        .await;
    }

    pub async fn create(&self, amount: &str, pm: Option<&str>) -> Value {
        let mut form = vec![("amount", amount), ("currency", "usd")];
        if let Some(pm) = pm {
            form.push(("payment_method", pm));
        }
        let (status, _, body) = self.post("/v1/payment_intents", &form, None).await;
        assert_eq!(status, 200, "{body}");
        body
    }

    pub async fn deliveries(&self) -> Vec<Value> {
        let (_, v) = (
            0,
            self.control(reqwest::Method::GET, "/_sim/deliveries", Value::Null)
                .await,
        );
        v["data"].as_array().unwrap().clone()
    }
}

fn convert(h: &reqwest::header::HeaderMap) -> HeaderMap {
    let mut out = HeaderMap::new();
    for (k, v) in h {
        out.insert(
            k.as_str().parse::<axum::http::HeaderName>().unwrap(),
            v.as_bytes().try_into().unwrap(),
        );
    }
    out
}

/// A webhook receiver: records (signature header, body) and fails the first
/// `fail_first` deliveries with 500.
#[derive(Clone, Default)]
pub struct Receiver {
    pub got: Arc<Mutex<Vec<(String, String)>>>,
    pub fail_first: Arc<AtomicUsize>,
}

impl Receiver {
    pub async fn start(fail_first: usize) -> (Receiver, String) {
        let r = Receiver::default();
        r.fail_first.store(fail_first, Ordering::SeqCst);
        let app = axum::Router::new()
            .route("/hook", axum::routing::post(receive))
            .with_state(r.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/hook", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        (r, url)
    }

    pub fn received(&self) -> Vec<(String, String)> {
        self.got.lock().unwrap().clone()
    }

    /// Waits until `n` deliveries arrived (or 10 s passed).
    pub async fn wait_for(&self, n: usize) -> Vec<(String, String)> {
        for _ in 0..500 {
            if self.got.lock().unwrap().len() >= n {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        self.received()
    }
}

async fn receive(State(r): State<Receiver>, headers: HeaderMap, body: Bytes) -> StatusCode {
    let sig = headers
        .get("stripe-signature")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_owned();
    let failing = r.fail_first.load(Ordering::SeqCst);
    if failing > 0 {
        r.fail_first.store(failing - 1, Ordering::SeqCst);
        return StatusCode::INTERNAL_SERVER_ERROR;
    }
    r.got
        .lock()
        .unwrap()
        .push((sig, String::from_utf8(body.to_vec()).unwrap()));
    StatusCode::OK
}
