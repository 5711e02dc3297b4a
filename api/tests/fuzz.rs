//! I5 against the running stack's own processes (api-1, the webhook service, the operator
//! routes): random methods, paths, headers, bodies and query strings. Every request gets
//! an answer (a panic drops the connection), none is a 5xx, and `/metrics` stays bounded
//! (its labels come from fixed sets, never from the request).

use std::collections::{BTreeMap, HashSet};

use paystream_testkit::Stack;
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use reqwest::Method;
use reqwest::header::{HeaderMap, HeaderName, HeaderValue};
use uuid::Uuid;

const SEED: u64 = 20_261_201;
const REQUESTS: usize = 1_500;

const METHODS: [&str; 8] = [
    "GET", "POST", "PUT", "DELETE", "PATCH", "HEAD", "OPTIONS", "TRACE",
];

fn token(rng: &mut StdRng, len: std::ops::Range<usize>) -> String {
    const CHARS: &[u8] =
        b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_.~!$&'*+";
    let n = rng.gen_range(len);
    (0..n)
        .map(|_| CHARS[rng.gen_range(0..CHARS.len())] as char)
        .collect()
}

/// Header values from the whole range a client may send: visible ASCII, spaces, obs-text.
fn header_value(rng: &mut StdRng) -> HeaderValue {
    let n = rng.gen_range(0..80);
    let bytes: Vec<u8> = (0..n)
        .map(|_| match rng.gen_range(0..10) {
            0 => rng.gen_range(0x80..=0xff),
            1 => b' ',
            _ => rng.gen_range(0x21..=0x7e),
        })
        .collect();
    HeaderValue::from_bytes(&bytes).unwrap_or(HeaderValue::from_static("x"))
}

fn path(rng: &mut StdRng, id: &str) -> String {
    let known = [
        "/v1/payments".to_owned(),
        format!("/v1/payments/{id}"),
        format!("/v1/payments/{}", Uuid::now_v7()),
        format!("/v1/payments/{id}/cancel"),
        format!("/v1/payments/{id}/events"),
        format!("/v1/payments/{}/cancel", token(rng, 0..40)),
        format!("/v1/payments/{id}/capture"),
        format!("/v1/payments/{id}/refunds"),
        format!("/v1/refunds/{}", Uuid::now_v7()),
        format!("/v1/refunds/{}", token(rng, 0..40)),
        "/v1/reports/reconciliation".to_owned(),
        format!("/v1/reports/reconciliation/runs/{}", token(rng, 0..40)),
        "/v1/analytics/summary".to_owned(),
        "/v1/analytics/timeseries".to_owned(),
        "/openapi.json".to_owned(),
        "/docs".to_owned(),
        "/health/ready".to_owned(),
        format!("/{}", token(rng, 0..30)),
        format!("/v1/{}/{}", token(rng, 1..10), token(rng, 0..10)),
    ];
    let mut p = known[rng.gen_range(0..known.len())].clone();
    if rng.gen_bool(0.6) {
        let keys = [
            "since",
            "until",
            "format",
            "from",
            "to",
            "currency",
            "bucket",
            "metric",
            "status",
            "limit",
            "starting_after",
            "created_gte",
            "created_lt",
            "on_lag",
            "stuck_after",
        ];
        let pairs: Vec<String> = (0..rng.gen_range(1..5))
            .map(|_| {
                let k = if rng.gen_bool(0.8) {
                    keys.choose(rng).unwrap().to_string()
                } else {
                    token(rng, 0..8)
                };
                let v = match rng.gen_range(0..6) {
                    0 => String::new(),
                    1 => "24h".into(),
                    2 => "%00%ff%fe".into(),
                    3 => i64::MIN.to_string(),
                    4 => "2026-13-45T99:99:99Z".into(),
                    _ => token(rng, 0..30),
                };
                format!("{k}={v}")
            })
            .collect();
        p.push('?');
        p.push_str(&pairs.join("&"));
    }
    p
}

fn body(rng: &mut StdRng) -> Vec<u8> {
    let huge = "9".repeat(40);
    let shapes = [
        String::new(),
        r#"{"amount": 1250, "currency": "usd"}"#.to_owned(),
        format!(r#"{{"amount": {huge}, "currency": "usd"}}"#),
        r#"{"amount": -1, "currency": "usd", "metadata": {"a": "\u0000"}}"#.to_owned(),
        r#"{"amount": 100, "currency": "usd", "description": "a\u0000b"}"#.to_owned(),
        r#"{"amount": 1e3, "currency": "usd"}"#.to_owned(),
        r#"{"amount": 100, "currency": "usd", "customer_email": "\ud800@x.io"}"#.to_owned(),
        format!("{}1{}", "[".repeat(200), "]".repeat(200)),
        r#"{"id": "evt_1", "type": "payment_intent.succeeded", "data": {"object": {"id": "pi_1", "status": "succeeded"}}}"#.to_owned(),
        token(rng, 0..200),
    ];
    let mut b = shapes[rng.gen_range(0..shapes.len())].clone().into_bytes();
    if rng.gen_bool(0.15) {
        let n = rng.gen_range(0..64);
        b.extend((0..n).map(|_| rng.r#gen::<u8>()));
    }
    b
}

fn headers(rng: &mut StdRng, keys: &[&str]) -> HeaderMap {
    let mut h = HeaderMap::new();
    let auth = match rng.gen_range(0..6) {
        0 => None,
        1 | 2 => Some(format!("Bearer {}", keys.choose(rng).unwrap())),
        3 => Some(format!("Bearer psk_client_{}", token(rng, 0..40))),
        4 => Some(token(rng, 0..30)),
        _ => Some(format!("Bearer {}", token(rng, 0..300))),
    };
    if let Some(a) = auth.and_then(|a| HeaderValue::from_str(&a).ok()) {
        h.insert("authorization", a);
    }
    if rng.gen_bool(0.5) {
        h.insert("idempotency-key", header_value(rng));
    }
    if rng.gen_bool(0.5) {
        let ct = [
            "application/json",
            "text/plain",
            "application/x-www-form-urlencoded",
            "application/json; charset=latin1",
        ];
        h.insert(
            "content-type",
            HeaderValue::from_static(ct.choose(rng).unwrap()),
        );
    }
    if rng.gen_bool(0.5) {
        let sig = match rng.gen_range(0..4) {
            0 => HeaderValue::from_static("t=-9223372036854775808,v1=00"),
            1 => HeaderValue::from_static("t=9223372036854775807,v1=00,v1=zz"),
            2 => HeaderValue::from_static("t=,v1="),
            _ => header_value(rng),
        };
        h.insert("stripe-signature", sig);
    }
    for _ in 0..rng.gen_range(0..3) {
        if let Ok(name) = HeaderName::from_bytes(token(rng, 1..20).to_lowercase().as_bytes()) {
            h.insert(name, header_value(rng));
        }
    }
    if rng.gen_bool(0.2) {
        h.insert("x-request-id", header_value(rng));
    }
    h
}

async fn metrics(http: &reqwest::Client, base: &str) -> String {
    http.get(format!("{base}/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn random_requests_never_get_a_5xx_a_dropped_connection_or_new_metric_series() {
    let stack = Stack::get();
    let http = reqwest::Client::builder()
        .timeout(std::time::Duration::from_secs(5))
        .build()
        .unwrap();
    let (api, webhook) = (stack.var("API_1_URL"), stack.var("WEBHOOK_URL"));
    let keys = [
        stack.var("PAYSTREAM_CLIENT_KEY"),
        stack.var("PAYSTREAM_OPERATOR_KEY"),
    ];
    let before = metrics(&http, api).await.lines().count();
    let mut rng = StdRng::seed_from_u64(SEED);
    let id = Uuid::now_v7().to_string();
    let mut answers: BTreeMap<u16, usize> = BTreeMap::new();
    let mut failures = Vec::new();
    let mut invented = HashSet::new();
    let mut slow = 0;
    for n in 0..REQUESTS {
        let base = if n % 4 == 3 { webhook } else { api };
        let method = if rng.gen_bool(0.2) {
            let m = token(&mut rng, 1..12)
                .to_uppercase()
                .replace(|c: char| !c.is_ascii_alphabetic(), "X");
            invented.insert(m.clone());
            Method::from_bytes(m.as_bytes()).unwrap_or(Method::GET)
        } else {
            Method::from_bytes(METHODS.choose(&mut rng).unwrap().as_bytes()).unwrap()
        };
        let p = if base == webhook && rng.gen_bool(0.8) {
            "/webhook/stripe".to_owned()
        } else {
            path(&mut rng, &id)
        };
        let req = http
            .request(method.clone(), format!("{base}{p}"))
            .headers(headers(&mut rng, &keys))
            .body(body(&mut rng));
        match req.send().await {
            Ok(res) => {
                let status = res.status().as_u16();
                *answers.entry(status).or_default() += 1;
                if status >= 500 {
                    let text = res.text().await.unwrap_or_default();
                    failures.push(format!("#{n} {method} {base}{p}: {status} {text}"));
                }
            }
            // The synchronous report walks Stripe's list at its rate limit: on a busy stack
            // a whole day takes longer than this client waits (issue 19 makes runs
            // asynchronous). A slow answer is not a dropped one; only that route may be slow.
            Err(e) if e.is_timeout() && p.starts_with("/v1/reports/reconciliation") => slow += 1,
            Err(e) => failures.push(format!("#{n} {method} {base}{p}: no answer ({e})")),
        }
    }
    assert!(
        failures.is_empty(),
        "seed {SEED}: {} failures, e.g. {:?}\nanswers {answers:?}",
        failures.len(),
        &failures[..failures.len().min(10)]
    );
    let text = metrics(&http, api).await;
    let after = text.lines().count();
    for line in text.lines().filter(|l| l.starts_with("http_request")) {
        let method = line
            .split("method=\"")
            .nth(1)
            .and_then(|r| r.split('"').next())
            .unwrap_or("GET");
        assert!(
            METHODS.contains(&method) || method == "CONNECT" || method == "other",
            "{line}"
        );
    }
    assert!(invented.len() > 100, "the run invented methods");
    // Routes x methods x statuses, all from fixed sets: a few hundred lines at most,
    // however many methods were invented.
    assert!(
        after < before + 3_000,
        "metrics grew from {before} to {after} lines"
    );
    eprintln!("answers: {answers:?}, {slow} slow reports; /metrics {before} -> {after} lines");
}
