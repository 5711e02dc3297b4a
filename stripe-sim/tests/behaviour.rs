//! The simulator behaves as Stripe does: status paths, idempotency, pagination, errors,
//! rate limits, webhook retries, and fault injection (deterministic under a seed).

mod common;

use common::{KEY, Receiver};
use serde_json::{Value, json};
use stripe_webhook::Webhook;

fn id(v: &Value) -> String {
    v["id"].as_str().expect("id").to_owned()
}

#[tokio::test]
async fn every_status_path() {
    let t = common::start().await;
    let confirm = |pi: String, pm: &'static str| {
        let t = &t;
        async move {
            t.post(
                &format!("/v1/payment_intents/{pi}/confirm"),
                &[("payment_method", pm)],
                None,
            )
            .await
        }
    };

    // Succeeds.
    let pi = id(&t.create("1000", None).await);
    let (s, _, v) = confirm(pi.clone(), "pm_card_visa").await;
    assert_eq!((s, v["status"].as_str()), (200, Some("succeeded")));

    // Declines (402), stays open, then a retry with another card succeeds.
    let pi = id(&t.create("1000", None).await);
    let (s, _, v) = confirm(pi.clone(), "pm_card_chargeDeclined").await;
    assert_eq!(s, 402);
    assert_eq!(v["error"]["type"], "card_error");
    assert_eq!(v["error"]["code"], "card_declined");
    assert_eq!(
        v["error"]["payment_intent"]["status"],
        "requires_payment_method"
    );
    assert_eq!(
        v["error"]["payment_intent"]["last_payment_error"]["decline_code"],
        "generic_decline"
    );
    let (s, _, v) = confirm(pi.clone(), "pm_card_visa").await;
    assert_eq!((s, v["status"].as_str()), (200, Some("succeeded")));
    assert_eq!(v["last_payment_error"], Value::Null);

    // 3D Secure: requires_action, then the customer passes or fails the challenge.
    for (outcome, expected) in [
        ("succeed", "succeeded"),
        ("fail", "requires_payment_method"),
    ] {
        let pi = id(&t.create("1000", None).await);
        let (_, _, v) = confirm(pi.clone(), "pm_card_threeDSecure2Required").await;
        assert_eq!(v["status"], "requires_action");
        let v = t
            .control(
                reqwest::Method::POST,
                &format!("/_sim/payment_intents/{pi}/authenticate"),
                json!({"outcome": outcome}),
            )
            .await;
        assert_eq!(v["status"], expected);
    }

    // Processing for the configured (simulated) time, then succeeded.
    let pi = id(&t.create("1000", None).await);
    let (_, _, v) = confirm(pi.clone(), "pm_sim_processing").await;
    assert_eq!(v["status"], "processing");
    let (_, v) = t.get(&format!("/v1/payment_intents/{pi}")).await;
    assert_eq!(v["status"], "processing");
    t.advance(6).await;
    let mut status = String::new();
    for _ in 0..50 {
        status = t.get(&format!("/v1/payment_intents/{pi}")).await.1["status"]
            .as_str()
            .unwrap()
            .to_owned();
        if status == "succeeded" {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    assert_eq!(status, "succeeded");
    // A processing intent cannot be canceled; a succeeded one neither.
    let (s, _, v) = t
        .post(&format!("/v1/payment_intents/{pi}/cancel"), &[], None)
        .await;
    assert_eq!(s, 400);
    assert_eq!(v["error"]["code"], "payment_intent_unexpected_state");

    // Cancel from requires_payment_method, with a reason; a second confirm is refused.
    let pi = id(&t.create("1000", None).await);
    let (s, _, v) = t
        .post(
            &format!("/v1/payment_intents/{pi}/cancel"),
            &[("cancellation_reason", "abandoned")],
            None,
        )
        .await;
    assert_eq!(
        (s, v["status"].as_str(), v["cancellation_reason"].as_str()),
        (200, Some("canceled"), Some("abandoned"))
    );
    let (s, _, _) = confirm(pi, "pm_card_visa").await;
    assert_eq!(s, 400);

    // The next N confirms of a payment method decline, then it works again.
    t.control(
        reqwest::Method::POST,
        "/_sim/payment_methods/pm_card_visa/decline_next",
        json!({"count": 1}),
    )
    .await;
    let pi = id(&t.create("1000", None).await);
    assert_eq!(confirm(pi.clone(), "pm_card_visa").await.0, 402);
    assert_eq!(confirm(pi, "pm_card_visa").await.0, 200);
}

#[tokio::test]
async fn idempotency_replays_rejects_reuse_and_blocks_concurrency() {
    let t = common::start().await;
    let form = [
        ("amount", "1500"),
        ("currency", "usd"),
        ("metadata[payment_id]", "p-1"),
    ];
    let (s1, h1, b1) = t.post("/v1/payment_intents", &form, Some("key-1")).await;
    let (s2, h2, b2) = t.post("/v1/payment_intents", &form, Some("key-1")).await;
    assert_eq!((s1, s2), (200, 200));
    assert_eq!(b1, b2, "a repeat replays the first response");
    let first = id(&b1);
    assert!(h1.get("idempotent-replayed").is_none());
    assert_eq!(h2["idempotent-replayed"], "true");
    let (_, list) = t.get("/v1/payment_intents?limit=100").await;
    assert_eq!(
        list["data"].as_array().unwrap().len(),
        1,
        "only one PaymentIntent exists"
    );

    let (s, _, v) = t
        .post(
            "/v1/payment_intents",
            &[("amount", "1600"), ("currency", "usd")],
            Some("key-1"),
        )
        .await;
    assert_eq!(s, 400);
    assert_eq!(v["error"]["type"], "idempotency_error");

    // An executed error (a decline) is stored and replayed, status and body.
    let decline = [
        ("amount", "1500"),
        ("currency", "usd"),
        ("payment_method", "pm_card_chargeDeclined"),
        ("confirm", "true"),
    ];
    let (s1, _, b1) = t.post("/v1/payment_intents", &decline, Some("key-2")).await;
    let (s2, h2, b2) = t.post("/v1/payment_intents", &decline, Some("key-2")).await;
    assert_eq!((s1, s2), (402, 402));
    assert_eq!(b1, b2);
    assert_eq!(h2["idempotent-replayed"], "true");

    // A validation error is not stored: the same key works once the request is right.
    let (s, _, _) = t
        .post("/v1/payment_intents", &[("currency", "usd")], Some("key-3"))
        .await;
    assert_eq!(s, 400);
    let (s, _, _) = t
        .post(
            "/v1/payment_intents",
            &[("amount", "1500"), ("currency", "usd")],
            Some("key-3"),
        )
        .await;
    assert_eq!(s, 200);

    // Concurrent requests with one key: one runs, the others get 409 while it is in flight.
    t.faults(json!({"api_latency_ms": 300})).await;
    let form = [("amount", "2500"), ("currency", "usd")];
    let (a, b, c) = tokio::join!(
        t.post("/v1/payment_intents", &form, Some("key-4")),
        t.post("/v1/payment_intents", &form, Some("key-4")),
        t.post("/v1/payment_intents", &form, Some("key-4")),
    );
    let mut statuses = [a.0, b.0, c.0];
    statuses.sort();
    assert_eq!(statuses, [200, 409, 409]);
    let conflict = [a, b, c].into_iter().find(|r| r.0 == 409).unwrap();
    assert_eq!(conflict.2["error"]["code"], "idempotency_key_in_use");

    // Keys are scoped to the API key.
    let other = t
        .http
        .post(format!("{}/v1/payment_intents", t.base))
        .bearer_auth("sk_test_someone_else")
        .header("Idempotency-Key", "key-1")
        .form(&[("amount", "9999"), ("currency", "usd")])
        .send()
        .await
        .unwrap();
    assert_eq!(other.status(), 200);
    assert!(other.headers().get("idempotent-replayed").is_none());

    // Stripe prunes keys after 24 hours: the same key then makes a second intent.
    let form = [
        ("amount", "1500"),
        ("currency", "usd"),
        ("metadata[payment_id]", "p-1"),
    ];
    t.advance(23 * 3600).await;
    let (_, h, replayed) = t.post("/v1/payment_intents", &form, Some("key-1")).await;
    assert_eq!(
        (h["idempotent-replayed"].to_str().unwrap(), id(&replayed)),
        ("true", first.clone())
    );
    t.advance(3600).await;
    let (s, h, fresh) = t.post("/v1/payment_intents", &form, Some("key-1")).await;
    assert_eq!(s, 200);
    assert!(
        h.get("idempotent-replayed").is_none(),
        "a key older than 24 h is new again"
    );
    assert_ne!(id(&fresh), first);
}

#[tokio::test]
async fn lists_are_newest_first_with_cursors_and_filters() {
    let t = common::start().await;
    let mut ids = Vec::new();
    for i in 0..5 {
        let amount = (1000 + i).to_string();
        let (_, _, v) = t
            .post(
                "/v1/payment_intents",
                &[
                    ("amount", amount.as_str()),
                    ("currency", "usd"),
                    ("metadata[n]", &i.to_string()),
                ],
                None,
            )
            .await;
        ids.push(id(&v));
    }
    let newest_first: Vec<String> = ids.iter().rev().cloned().collect();
    let page = |v: &Value| {
        v["data"]
            .as_array()
            .unwrap()
            .iter()
            .map(id)
            .collect::<Vec<_>>()
    };

    let (_, v) = t.get("/v1/payment_intents?limit=2").await;
    assert_eq!(page(&v), newest_first[..2]);
    assert_eq!(v["has_more"], true);
    let (_, v) = t
        .get(&format!(
            "/v1/payment_intents?limit=2&starting_after={}",
            newest_first[1]
        ))
        .await;
    assert_eq!(page(&v), newest_first[2..4]);
    let (_, v) = t
        .get(&format!(
            "/v1/payment_intents?limit=10&starting_after={}",
            newest_first[3]
        ))
        .await;
    assert_eq!(page(&v), newest_first[4..]);
    assert_eq!(v["has_more"], false);
    let (_, v) = t
        .get(&format!(
            "/v1/payment_intents?limit=2&ending_before={}",
            newest_first[4]
        ))
        .await;
    assert_eq!(page(&v), newest_first[2..4]);
    let now = v["data"][0]["created"].as_i64().unwrap();
    let (_, v) = t
        .get(&format!("/v1/payment_intents?created[gt]={now}"))
        .await;
    assert_eq!(page(&v), Vec::<String>::new());
    let (_, v) = t
        .get(&format!("/v1/payment_intents?created[lte]={now}&limit=100"))
        .await;
    assert_eq!(page(&v).len(), 5);

    let (_, v) = t
        .get("/v1/payment_intents/search?query=metadata%5B%27n%27%5D%3A%273%27")
        .await;
    assert_eq!(page(&v), [ids[3].clone()]);
    let (s, v) = t.get("/v1/payment_intents/search?query=amount%3E5").await;
    assert_eq!(s, 400, "{v}");

    let (_, v) = t
        .get("/v1/events?type=payment_intent.created&limit=100")
        .await;
    assert_eq!(v["data"].as_array().unwrap().len(), 5);
    assert_eq!(
        v["data"][0]["data"]["object"]["id"],
        newest_first[0].as_str()
    );
    let first_event = id(&v["data"][0]);
    let (s, e) = t.get(&format!("/v1/events/{first_event}")).await;
    assert_eq!(
        (s, e["type"].as_str()),
        (200, Some("payment_intent.created"))
    );
}

#[tokio::test]
async fn bad_requests_get_stripes_error_shape() {
    let t = common::start().await;
    type Case<'a> = (&'a [(&'a str, &'a str)], u16, &'a str, Option<&'a str>);
    let cases: [Case; 5] = [
        (
            &[("currency", "usd")],
            400,
            "parameter_missing",
            Some("amount"),
        ),
        (
            &[("amount", "100"), ("currency", "xyz")],
            400,
            "parameter_invalid",
            Some("currency"),
        ),
        (
            &[("amount", "10"), ("currency", "usd")],
            400,
            "amount_too_small",
            Some("amount"),
        ),
        (
            &[("amount", "abc"), ("currency", "usd")],
            400,
            "parameter_invalid",
            Some("amount"),
        ),
        (
            &[
                ("amount", "100"),
                ("currency", "usd"),
                ("payment_method", "pm_nope"),
            ],
            400,
            "resource_missing",
            Some("payment_method"),
        ),
    ];
    for (form, status, code, param) in cases {
        let (s, _, v) = t.post("/v1/payment_intents", form, None).await;
        assert_eq!(s, status, "{form:?}: {v}");
        assert_eq!(v["error"]["type"], "invalid_request_error");
        assert_eq!(v["error"]["code"].as_str(), Some(code), "{form:?}");
        assert_eq!(v["error"]["param"].as_str(), param);
    }
    let (s, v) = t.get("/v1/payment_intents/pi_missing").await;
    assert_eq!(
        (s, v["error"]["code"].as_str()),
        (404, Some("resource_missing"))
    );
    let (s, v) = t.get("/v1/nothing_here").await;
    assert_eq!(s, 404, "{v}");
    let res = t
        .http
        .get(format!("{}/v1/payment_intents", t.base))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 401);
    let res = t
        .http
        .get(format!("{}/v1/payment_intents", t.base))
        .bearer_auth("pk_live_x")
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 401);
    assert!(res.text().await.unwrap().contains("Invalid API Key"));
    let (_, list) = t.get("/v1/payment_intents").await;
    assert_eq!(
        list["data"].as_array().unwrap().len(),
        0,
        "no bad request created anything"
    );
}

#[tokio::test]
async fn rate_limits_answer_429_with_should_retry() {
    let t = common::start().await;
    let mut world = t
        .control(reqwest::Method::GET, "/_sim/world", Value::Null)
        .await;
    world["per_endpoint_rate"] = json!(5);
    t.control(reqwest::Method::PUT, "/_sim/world", world).await;
    let mut statuses = Vec::new();
    for _ in 0..8 {
        let res = t
            .http
            .get(format!("{}/v1/payment_intents", t.base))
            .bearer_auth(KEY)
            .send()
            .await
            .unwrap();
        if res.status() == 429 {
            assert_eq!(res.headers()["stripe-should-retry"], "true");
            let v: Value = res.json().await.unwrap();
            assert_eq!(v["error"]["code"], "rate_limit");
            statuses.push(429);
        } else {
            statuses.push(res.status().as_u16());
        }
    }
    assert_eq!(
        statuses.iter().filter(|s| **s == 200).count(),
        5,
        "{statuses:?}"
    );
    // Another endpoint has its own budget.
    let (s, _, _) = t
        .post(
            "/v1/payment_intents",
            &[("amount", "100"), ("currency", "usd")],
            None,
        )
        .await;
    assert_eq!(s, 200);
}

#[tokio::test]
async fn failed_deliveries_are_retried_until_the_horizon() {
    let t = common::start().await;
    let (rx, url) = Receiver::start(2).await;
    t.control(
        reqwest::Method::POST,
        "/_sim/webhook_endpoints",
        json!({"url": url, "secret": "whsec_r", "enabled_events": ["payment_intent.created"]}),
    )
    .await;
    let pi = id(&t.create("1000", None).await);
    // Attempt 1 fails at once; retries wait 5 s, then 10 s of simulated time.
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    assert!(rx.received().is_empty());
    t.advance(6).await;
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    assert!(rx.received().is_empty(), "attempt 2 also fails");
    t.advance(11).await;
    let got = rx.wait_for(1).await;
    assert_eq!(got.len(), 1);
    assert!(got[0].1.contains(&pi));
    let d = t.deliveries().await;
    assert_eq!(
        (d[0]["state"].as_str(), d[0]["attempt"].as_u64()),
        (Some("delivered"), Some(3))
    );
    let (_, events) = t.get("/v1/events?delivery_success=true").await;
    assert_eq!(events["data"].as_array().unwrap().len(), 1);
    assert_eq!(events["data"][0]["pending_webhooks"], 0);

    // An endpoint that never answers 2xx is given up after the horizon (3 days).
    rx.fail_first
        .store(usize::MAX, std::sync::atomic::Ordering::SeqCst);
    let pi2 = id(&t.create("1000", None).await);
    for _ in 0..80 {
        t.advance(3600).await;
        tokio::time::sleep(std::time::Duration::from_millis(30)).await;
    }
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    let d = t.deliveries().await;
    assert_eq!(d[1]["state"], "failed", "{}", d[1]);
    let (_, pending) = t.get("/v1/events?delivery_success=false").await;
    let pending = pending["data"].as_array().unwrap();
    assert_eq!(pending.len(), 1);
    assert_eq!(pending[0]["data"]["object"]["id"], pi2.as_str());
    assert_eq!(pending[0]["pending_webhooks"], 1);
}

/// Runs a fixed scenario under `seed` with faults on and returns what happened.
async fn faulty_run(seed: u64) -> (Vec<String>, Vec<(String, String, bool)>) {
    let t = common::start().await;
    t.control(reqwest::Method::POST, "/_sim/reset", json!({"seed": seed}))
        .await;
    let (_, url) = Receiver::start(0).await;
    t.control(
        reqwest::Method::POST,
        "/_sim/webhook_endpoints",
        json!({"url": url, "secret": "whsec_d"}),
    )
    .await;
    t.faults(json!({"webhook_drop_rate": 0.3, "webhook_duplicate_rate": 0.3, "webhook_reorder_window_ms": 50,
                    "webhook_stale_rate": 0.1, "webhook_bad_signature_rate": 0.1}))
        .await;
    let mut ids = Vec::new();
    for _ in 0..20 {
        ids.push(id(&t.create("1000", Some("pm_card_visa")).await));
    }
    let plan = t
        .deliveries()
        .await
        .iter()
        .map(|d| {
            (
                d["event_id"].as_str().unwrap().to_owned(),
                d["fault"].to_string(),
                d["state"] == "dropped",
            )
        })
        .collect();
    (ids, plan)
}

#[tokio::test]
async fn fault_injection_is_deterministic_under_a_seed() {
    let (ids_a, plan_a) = faulty_run(42).await;
    let (ids_b, plan_b) = faulty_run(42).await;
    let (ids_c, plan_c) = faulty_run(43).await;
    assert_eq!(ids_a, ids_b);
    assert_eq!(plan_a, plan_b, "same seed, same faults");
    assert_ne!(ids_a, ids_c);
    assert_ne!(plan_a, plan_c);
    // The rates do what they say (20 events, 30% dropped, 30% duplicated: loose bounds).
    let dropped_events: std::collections::HashSet<&String> =
        plan_a.iter().filter(|p| p.2).map(|p| &p.0).collect();
    assert!(
        (2..=12).contains(&dropped_events.len()),
        "{}",
        dropped_events.len()
    );
    assert!(plan_a.len() > 20 && plan_a.len() < 40, "{}", plan_a.len());
    assert!(plan_a.iter().any(|p| p.1.contains("stale_timestamp")));
    assert!(plan_a.iter().any(|p| p.1.contains("bad_signature")));
}

#[tokio::test]
async fn injected_deliveries_are_what_receivers_must_reject_or_dedupe() {
    let t = common::start().await;
    let (rx, url) = Receiver::start(0).await;
    let secret = "whsec_faults";
    t.control(
        reqwest::Method::POST,
        "/_sim/webhook_endpoints",
        json!({"url": url, "secret": secret, "enabled_events": ["payment_intent.created"]}),
    )
    .await;

    t.faults(json!({"webhook_duplicate_rate": 1.0})).await;
    t.create("1000", None).await;
    let got = rx.wait_for(2).await;
    assert_eq!(got.len(), 2);
    assert_eq!(got[0].1, got[1].1, "a duplicate carries the same event");

    t.faults(json!({"webhook_stale_rate": 1.0})).await;
    t.create("1000", None).await;
    let got = rx.wait_for(3).await;
    assert!(
        Webhook::construct_event(&got[2].1, &got[2].0, secret).is_err(),
        "stale timestamps must fail verification"
    );

    t.faults(json!({"webhook_bad_signature_rate": 1.0})).await;
    t.create("1000", None).await;
    let got = rx.wait_for(4).await;
    assert!(
        Webhook::construct_event(&got[3].1, &got[3].0, secret).is_err(),
        "bad signatures must fail verification"
    );

    t.faults(json!({"webhook_drop_rate": 1.0})).await;
    t.create("1000", None).await;
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    assert_eq!(rx.received().len(), 4, "a dropped delivery never arrives");

    // API faults: injected 500s and 429s say Stripe-Should-Retry and are not stored.
    t.faults(json!({"api_error_rate": 1.0})).await;
    let (s, h, v) = t
        .post(
            "/v1/payment_intents",
            &[("amount", "100"), ("currency", "usd")],
            Some("k-500"),
        )
        .await;
    assert_eq!((s, v["error"]["type"].as_str()), (500, Some("api_error")));
    assert_eq!(h["stripe-should-retry"], "true");
    t.faults(json!({})).await;
    let (s, h, _) = t
        .post(
            "/v1/payment_intents",
            &[("amount", "100"), ("currency", "usd")],
            Some("k-500"),
        )
        .await;
    assert_eq!(s, 200);
    assert!(h.get("idempotent-replayed").is_none());

    let res = t
        .http
        .put(format!("{}/_sim/faults", t.base))
        .json(&json!({"webhook_drop_rate": 2.0}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 400, "rates outside [0, 1] are refused");
}

#[tokio::test]
async fn a_secret_roll_signs_with_both_secrets() {
    let t = common::start().await;
    let (rx, url) = Receiver::start(0).await;
    let ep = t.control(reqwest::Method::POST, "/_sim/webhook_endpoints", json!({"url": url, "secret": "whsec_old", "enabled_events": ["payment_intent.created"]})).await;
    let rolled = t
        .control(
            reqwest::Method::POST,
            &format!("/_sim/webhook_endpoints/{}/roll_secret", id(&ep)),
            json!({"secret": "whsec_new"}),
        )
        .await;
    assert_eq!(rolled["secret"], "whsec_new");
    t.create("1000", None).await;
    let got = rx.wait_for(1).await;
    let (sig, body) = &got[0];
    assert_eq!(sig.matches("v1=").count(), 2, "{sig}");
    Webhook::construct_event(body, sig, "whsec_old")
        .expect("old secret still verifies during the roll");
    Webhook::construct_event(body, sig, "whsec_new").expect("new secret verifies");
}

fn refund_form<'a>(pi: &'a str, amount: Option<&'a str>) -> Vec<(&'a str, &'a str)> {
    let mut form = vec![("payment_intent", pi)];
    if let Some(a) = amount {
        form.push(("amount", a));
    }
    form
}

#[tokio::test]
async fn refunds_full_and_partial_with_stripes_errors() {
    let t = common::start().await;
    let pi = t.paid("1000", "pm_card_visa", false).await;
    let (pi_id, ch) = (id(&pi), pi["latest_charge"].as_str().unwrap().to_owned());

    let form = [
        ("payment_intent", pi_id.as_str()),
        ("amount", "300"),
        ("reason", "requested_by_customer"),
        ("metadata[order]", "7"),
    ];
    let (s, _, r1) = t.post("/v1/refunds", &form, Some("refund-1")).await;
    assert_eq!(s, 200, "{r1}");
    assert!(id(&r1).starts_with("re_"));
    assert_eq!(
        (&r1["object"], &r1["amount"], &r1["status"], &r1["charge"]),
        (&json!("refund"), &json!(300), &json!("pending"), &json!(ch))
    );
    assert_eq!(r1["payment_intent"], pi_id.as_str());
    assert_eq!(r1["reason"], "requested_by_customer");
    assert_eq!(r1["metadata"], json!({"order": "7"}));
    assert_eq!(r1["payment_method"], pi["payment_method"]);
    // A replay of the same request is the same refund.
    let (_, h, again) = t.post("/v1/refunds", &form, Some("refund-1")).await;
    assert_eq!(again, r1);
    assert_eq!(h["idempotent-replayed"], "true");

    // Pending refunds count on the charge at once.
    let (_, charge) = t.get(&format!("/v1/charges/{ch}")).await;
    assert_eq!(
        (&charge["amount_refunded"], &charge["refunded"]),
        (&json!(300), &json!(false))
    );

    let (s, _, e) = t
        .post("/v1/refunds", &refund_form(&pi_id, Some("800")), None)
        .await;
    assert_eq!(s, 400);
    assert_eq!(e["error"]["type"], "invalid_request_error");
    assert_eq!(e["error"]["code"], "amount_too_large");
    assert_eq!(e["error"]["param"], "amount");
    assert_eq!(
        e["error"]["message"],
        "Refund amount ($8.00) is greater than unrefunded amount on charge ($7.00)"
    );

    // No amount: what remains.
    let (s, _, r2) = t
        .post("/v1/refunds", &refund_form(&pi_id, None), None)
        .await;
    assert_eq!((s, &r2["amount"]), (200, &json!(700)));
    let (_, charge) = t.get(&format!("/v1/charges/{ch}")).await;
    assert_eq!(
        (&charge["amount_refunded"], &charge["refunded"]),
        (&json!(1000), &json!(true))
    );
    let (s, _, e) = t
        .post("/v1/refunds", &refund_form(&pi_id, None), None)
        .await;
    assert_eq!(s, 400);
    assert_eq!(e["error"]["code"], "charge_already_refunded");
    assert_eq!(
        e["error"]["message"],
        format!("Charge {ch} has already been refunded.")
    );

    // By charge, as Stripe also takes it.
    let other = t.paid("2000", "pm_card_mastercard", false).await;
    let other_ch = other["latest_charge"].as_str().unwrap();
    let (s, _, r3) = t
        .post(
            "/v1/refunds",
            &[("charge", other_ch), ("amount", "50")],
            None,
        )
        .await;
    assert_eq!((s, &r3["payment_intent"]), (200, &other["id"]));

    // Lists: newest first, by intent, by charge, with cursors.
    let (_, v) = t.get(&format!("/v1/refunds?payment_intent={pi_id}")).await;
    let ids: Vec<String> = v["data"].as_array().unwrap().iter().map(id).collect();
    assert_eq!(ids, [id(&r2), id(&r1)]);
    let (_, v) = t.get(&format!("/v1/refunds?charge={other_ch}")).await;
    assert_eq!(v["data"].as_array().unwrap().len(), 1);
    let (_, v) = t.get("/v1/refunds?limit=1").await;
    assert_eq!((id(&v["data"][0]), &v["has_more"]), (id(&r3), &json!(true)));
    let (_, v) = t
        .get(&format!("/v1/refunds?limit=5&starting_after={}", id(&r3)))
        .await;
    assert_eq!(v["data"].as_array().unwrap().len(), 2);
    let (s, v) = t.get(&format!("/v1/refunds/{}", id(&r1))).await;
    assert_eq!((s, id(&v)), (200, id(&r1)));

    // The intent's charge, expanded with its refunds.
    let (_, v) = t
        .get(&format!(
            "/v1/payment_intents/{pi_id}?expand[]=latest_charge.refunds"
        ))
        .await;
    assert_eq!(v["latest_charge"]["id"], ch.as_str());
    let listed: Vec<String> = v["latest_charge"]["refunds"]["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(id)
        .collect();
    assert_eq!(listed, [id(&r2), id(&r1)]);
    let (_, v) = t.get(&format!("/v1/payment_intents/{pi_id}")).await;
    assert_eq!(v["latest_charge"], ch.as_str(), "an id unless expanded");

    // Metadata updates; nothing else may be updated; card refunds cannot be canceled.
    let path = format!("/v1/refunds/{}", id(&r1));
    let (s, _, v) = t.post(&path, &[("metadata[order]", "8")], None).await;
    assert_eq!((s, &v["metadata"]), (200, &json!({"order": "8"})));
    let (s, _, v) = t.post(&path, &[("amount", "1")], None).await;
    assert_eq!((s, &v["error"]["param"]), (400, &json!("amount")));
    let (s, _, v) = t.post(&format!("{path}/cancel"), &[], None).await;
    assert_eq!(
        (s, &v["error"]["type"]),
        (400, &json!("invalid_request_error"))
    );
}

#[tokio::test]
async fn refunds_of_what_cannot_be_refunded_are_refused() {
    let t = common::start().await;
    let open = id(&t.create("1000", None).await);
    let (s, _, e) = t.post("/v1/refunds", &refund_form(&open, None), None).await;
    assert_eq!(s, 400);
    assert_eq!(e["error"]["type"], "invalid_request_error");
    assert_eq!(
        e["error"]["message"],
        format!("This PaymentIntent ({open}) does not have a successful charge to refund.")
    );
    let (s, _, e) = t
        .post("/v1/refunds", &refund_form("pi_missing", None), None)
        .await;
    assert_eq!(s, 400);
    assert_eq!(
        (&e["error"]["code"], &e["error"]["param"]),
        (&json!("resource_missing"), &json!("payment_intent"))
    );
    let (s, _, e) = t.post("/v1/refunds", &[("amount", "5")], None).await;
    assert_eq!((s, &e["error"]["code"]), (400, &json!("parameter_missing")));
    let paid = id(&t.paid("1000", "pm_card_visa", false).await);
    for bad in [
        refund_form(&paid, Some("0")),
        vec![("payment_intent", paid.as_str()), ("reason", "because")],
    ] {
        let (s, _, e) = t.post("/v1/refunds", &bad, None).await;
        assert_eq!(s, 400, "{bad:?}: {e}");
    }
    let (s, v) = t.get("/v1/refunds/re_missing").await;
    assert_eq!((s, &v["error"]["code"]), (404, &json!("resource_missing")));
    let (_, v) = t.get("/v1/refunds").await;
    assert_eq!(v["data"], json!([]), "no refused request made a refund");
}

#[tokio::test]
async fn refunds_settle_on_the_simulated_clock() {
    let t = common::start().await;
    let pi = t.paid("1000", "pm_card_visa", false).await;
    let (_, _, r) = t
        .post(
            "/v1/refunds",
            &refund_form(pi["id"].as_str().unwrap(), None),
            None,
        )
        .await;
    assert_eq!(r["status"], "pending");
    assert_eq!(r["pending_reason"], "processing");
    let path = format!("/v1/refunds/{}", id(&r));
    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    assert_eq!(
        t.get(&path).await.1["status"],
        "pending",
        "real time does not settle it"
    );
    t.advance(3).await;
    let done = t.get_until(&path, |v| v["status"] == "succeeded").await;
    assert_eq!(done["status"], "succeeded");
    assert!(done.get("pending_reason").is_none());

    let created = t.events("refund.created").await;
    assert_eq!(created[0]["data"]["object"]["id"], id(&r).as_str());
    let refunded = t.events("charge.refunded").await;
    assert_eq!(refunded[0]["data"]["object"]["amount_refunded"], 1000);
    assert_eq!(
        refunded[0]["data"]["previous_attributes"],
        json!({"amount_refunded": 0, "refunded": false})
    );
    for kind in ["refund.updated", "charge.refund.updated"] {
        let updated = t.events(kind).await;
        assert_eq!(updated.len(), 1, "{kind}");
        assert_eq!(updated[0]["data"]["object"]["status"], "succeeded");
        let previous = &updated[0]["data"]["previous_attributes"];
        assert_eq!(previous["status"], "pending", "{kind}: {previous}");
        assert_eq!(previous["pending_reason"], "processing");
    }
    assert!(t.events("refund.failed").await.is_empty());

    // refund_ms = 0: card refunds succeed at once, as in Stripe's test mode.
    t.world(json!({"refund_ms": 0})).await;
    let pi = t.paid("1000", "pm_card_visa", false).await;
    let (_, _, r) = t
        .post(
            "/v1/refunds",
            &refund_form(pi["id"].as_str().unwrap(), None),
            None,
        )
        .await;
    assert_eq!(r["status"], "succeeded");
    // pm_card_pendingRefund stays pending whatever refund_ms says, until it comes due.
    t.world(json!({"refund_ms": 60_000})).await;
    let pi = t.paid("1000", "pm_card_pendingRefund", false).await;
    let (_, _, r) = t
        .post(
            "/v1/refunds",
            &refund_form(pi["id"].as_str().unwrap(), None),
            None,
        )
        .await;
    assert_eq!(r["status"], "pending");
    t.advance(61).await;
    let path = format!("/v1/refunds/{}", id(&r));
    assert_eq!(
        t.get_until(&path, |v| v["status"] == "succeeded").await["status"],
        "succeeded"
    );
}

#[tokio::test]
async fn a_refund_fail_card_refund_fails_later_and_gives_the_amount_back() {
    let t = common::start().await;
    let pi = t.paid("1500", "pm_card_refundFail", false).await;
    let (pi_id, ch) = (id(&pi), pi["latest_charge"].as_str().unwrap().to_owned());
    let (_, _, r) = t
        .post("/v1/refunds", &refund_form(&pi_id, None), None)
        .await;
    assert_eq!(
        r["status"], "succeeded",
        "it looks successful at first, as Stripe documents"
    );
    assert!(r.get("failure_reason").is_none());
    let charge_path = format!("/v1/charges/{ch}");
    assert_eq!(t.get(&charge_path).await.1["amount_refunded"], 1500);

    let path = format!("/v1/refunds/{}", id(&r));
    t.advance(24 * 3600).await;
    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    assert_eq!(t.get(&path).await.1["status"], "succeeded", "one day on");
    t.advance(24 * 3600).await;
    let failed = t.get_until(&path, |v| v["status"] == "failed").await;
    assert_eq!(failed["status"], "failed");
    assert_eq!(failed["failure_reason"], "expired_or_canceled_card");
    assert!(
        failed["failure_balance_transaction"]
            .as_str()
            .is_some_and(|s| s.starts_with("txn_"))
    );
    let charge = t.get(&charge_path).await.1;
    assert_eq!(
        (&charge["amount_refunded"], &charge["refunded"]),
        (&json!(0), &json!(false))
    );

    let failed_events = t.events("refund.failed").await;
    assert_eq!(failed_events.len(), 1);
    assert_eq!(failed_events[0]["data"]["object"]["status"], "failed");
    let updated = t.events("charge.refund.updated").await;
    assert_eq!(
        updated[0]["data"]["previous_attributes"],
        json!({"status": "succeeded", "failure_reason": null, "failure_balance_transaction": null})
    );
    // The amount is refundable again.
    let (s, _, again) = t
        .post("/v1/refunds", &refund_form(&pi_id, None), None)
        .await;
    assert_eq!((s, &again["amount"]), (200, &json!(1500)));
}

#[tokio::test]
async fn uncaptured_authorizations_are_canceled_after_seven_days() {
    let t = common::start().await;
    let pi = t.paid("2500", "pm_card_visa", true).await;
    let pi_id = id(&pi);
    assert_eq!(pi["status"], "requires_capture");
    let capturable = t.events("payment_intent.amount_capturable_updated").await;
    assert_eq!(capturable.len(), 1);
    assert_eq!(capturable[0]["data"]["object"]["amount_capturable"], 2500);
    let path = format!("/v1/payment_intents/{pi_id}");

    t.advance(7 * 24 * 3600 - 3600).await;
    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    assert_eq!(t.get(&path).await.1["status"], "requires_capture");
    t.advance(2 * 3600).await;
    let v = t.get_until(&path, |v| v["status"] == "canceled").await;
    assert_eq!(
        (
            &v["status"],
            &v["cancellation_reason"],
            &v["amount_capturable"]
        ),
        (&json!("canceled"), &json!("expired"), &json!(0)),
        "`expired` since 2025-03-31.basil (`automatic` before)"
    );
    let canceled = t.events("payment_intent.canceled").await;
    assert_eq!(
        canceled[0]["data"]["object"]["cancellation_reason"],
        "expired"
    );
    let expired = t.events("charge.expired").await;
    assert_eq!(expired.len(), 1);
    let charge = &expired[0]["data"]["object"];
    assert_eq!(
        (
            &charge["captured"],
            &charge["amount_captured"],
            &charge["refunded"],
            &charge["amount_refunded"]
        ),
        (&json!(false), &json!(0), &json!(false), &json!(0)),
        "an expiry is no refund since 2025-03-31.basil"
    );
    let (s, listed) = t.get(&format!("/v1/refunds?payment_intent={pi_id}")).await;
    assert_eq!((s, &listed["data"]), (200, &json!([])));
    assert!(t.events("charge.refunded").await.is_empty());
    assert!(t.events("charge.refund.updated").await.is_empty());

    let (s, _, e) = t.post(&format!("{path}/capture"), &[], None).await;
    assert_eq!(s, 400);
    assert_eq!(e["error"]["code"], "payment_intent_unexpected_state");
    assert!(
        e["error"]["message"]
            .as_str()
            .unwrap()
            .contains("because it has a status of canceled")
    );
    let (s, _, _) = t
        .post("/v1/refunds", &refund_form(&pi_id, None), None)
        .await;
    assert_eq!(s, 400, "nothing was captured, so nothing can be refunded");
}

/// Since API version 2025-03-31.basil (so in the version the sim renders), releasing what
/// an authorization holds (the rest of a partial capture, a cancel) makes no Refund: none
/// is listed, none is on the charge, `amount_refunded` stays 0 and no `charge.refunded`
/// or `charge.refund.updated` is sent.
#[tokio::test]
async fn a_partial_capture_limits_refunds_to_what_was_captured() {
    let t = common::start().await;
    let pi = t.paid("1000", "pm_card_visa", true).await;
    let (pi_id, ch) = (id(&pi), pi["latest_charge"].as_str().unwrap().to_owned());
    let (s, _, v) = t
        .post(
            &format!("/v1/payment_intents/{pi_id}/capture"),
            &[("amount_to_capture", "600")],
            None,
        )
        .await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(
        (&v["status"], &v["amount_received"], &v["amount_capturable"]),
        (&json!("succeeded"), &json!(600), &json!(0))
    );
    let (_, charge) = t.get(&format!("/v1/charges/{ch}?expand[]=refunds")).await;
    assert_eq!(
        (
            &charge["amount"],
            &charge["amount_captured"],
            &charge["amount_refunded"],
            &charge["captured"],
            &charge["refunded"]
        ),
        (
            &json!(1000),
            &json!(600),
            &json!(0),
            &json!(true),
            &json!(false)
        ),
        "the uncaptured rest is released, not refunded"
    );
    assert_eq!(charge["refunds"]["data"], json!([]));
    let (s, listed) = t.get(&format!("/v1/refunds?payment_intent={pi_id}")).await;
    assert_eq!((s, &listed["data"]), (200, &json!([])));
    let (_, listed) = t.get(&format!("/v1/refunds?charge={ch}")).await;
    assert_eq!(listed["data"], json!([]));
    assert!(t.events("charge.refunded").await.is_empty());
    assert!(t.events("charge.refund.updated").await.is_empty());
    let captured = t.events("charge.captured").await;
    assert_eq!(captured.len(), 1);
    assert_eq!(captured[0]["data"]["object"]["amount_captured"], 600);
    assert_eq!(captured[0]["data"]["object"]["amount_refunded"], 0);
    assert_eq!(
        captured[0]["data"]["previous_attributes"],
        json!({"amount_captured": 0, "balance_transaction": null, "captured": false}),
        "the capture is booked: the charge names its balance transaction"
    );

    let (s, _, e) = t
        .post("/v1/refunds", &refund_form(&pi_id, Some("700")), None)
        .await;
    assert_eq!((s, &e["error"]["code"]), (400, &json!("amount_too_large")));
    assert_eq!(
        e["error"]["message"],
        "Refund amount ($7.00) is greater than unrefunded amount on charge ($6.00)"
    );
    let (s, _, r) = t
        .post("/v1/refunds", &refund_form(&pi_id, None), None)
        .await;
    assert_eq!((s, &r["amount"]), (200, &json!(600)));
    let (_, charge) = t.get(&format!("/v1/charges/{ch}")).await;
    assert_eq!(
        (&charge["amount_refunded"], &charge["refunded"]),
        (&json!(600), &json!(true)),
        "all that was captured is refunded"
    );
    let (_, listed) = t.get(&format!("/v1/refunds?payment_intent={pi_id}")).await;
    assert_eq!(
        listed["data"].as_array().map(Vec::len),
        Some(1),
        "ours only"
    );

    // Canceling a held authorization releases it: no refund, the charge untouched.
    let held = t.paid("800", "pm_card_visa", true).await;
    let held_ch = held["latest_charge"].as_str().unwrap().to_owned();
    let (s, _, v) = t
        .post(
            &format!("/v1/payment_intents/{}/cancel", id(&held)),
            &[],
            None,
        )
        .await;
    assert_eq!((s, &v["status"]), (200, &json!("canceled")));
    let (_, charge) = t
        .get(&format!("/v1/charges/{held_ch}?expand[]=refunds"))
        .await;
    assert_eq!(
        (
            &charge["amount_captured"],
            &charge["amount_refunded"],
            &charge["captured"],
            &charge["refunded"],
            &charge["refunds"]["data"]
        ),
        (
            &json!(0),
            &json!(0),
            &json!(false),
            &json!(false),
            &json!([])
        )
    );
    let (_, listed) = t
        .get(&format!("/v1/refunds?payment_intent={}", id(&held)))
        .await;
    assert_eq!(listed["data"], json!([]));
    let refunded = t.events("charge.refunded").await;
    assert_eq!(
        refunded.len(),
        1,
        "only our refund of the captured charge: {refunded:?}"
    );
    assert_eq!(refunded[0]["data"]["object"]["id"], json!(ch));
    let canceled = t.events("payment_intent.canceled").await;
    assert_eq!(canceled[0]["data"]["object"]["id"], held["id"]);
}

#[tokio::test]
async fn test_tokens_attach_fresh_payment_methods_that_keep_their_card() {
    let t = common::start().await;
    let a = t.create("1000", Some("pm_card_visa")).await;
    let b = t.create("1000", Some("pm_card_visa")).await;
    let pm = a["payment_method"].as_str().unwrap().to_owned();
    assert!(pm.starts_with("pm_") && pm != "pm_card_visa", "{pm}");
    assert_ne!(a["payment_method"], b["payment_method"]);
    let (s, _, v) = t
        .post(
            &format!("/v1/payment_intents/{}/confirm", id(&a)),
            &[],
            None,
        )
        .await;
    assert_eq!(
        (s, &v["status"], &v["payment_method"]),
        (200, &json!("succeeded"), &json!(pm))
    );
    let charge = t
        .get(&format!(
            "/v1/charges/{}",
            v["latest_charge"].as_str().unwrap()
        ))
        .await
        .1;
    assert_eq!(charge["payment_method"], pm.as_str());

    // The id made from a token behaves as the token's card when used again.
    let again = t.paid("1000", &pm, false).await;
    assert_eq!(
        (&again["status"], &again["payment_method"]),
        (&json!("succeeded"), &json!(pm))
    );
    let declined = id(&t.create("1000", None).await);
    let (s, _, e) = t
        .post(
            &format!("/v1/payment_intents/{declined}/confirm"),
            &[("payment_method", "pm_card_chargeDeclined")],
            None,
        )
        .await;
    assert_eq!(s, 402);
    let attached = e["error"]["payment_intent"]["payment_method"]
        .as_str()
        .unwrap();
    assert!(attached.starts_with("pm_") && attached != "pm_card_chargeDeclined");
    assert_eq!(
        e["error"]["payment_intent"]["last_payment_error"]["payment_method"]["id"],
        attached
    );
    let (s, _, e) = t
        .post(
            &format!("/v1/payment_intents/{declined}/confirm"),
            &[("payment_method", attached)],
            None,
        )
        .await;
    assert_eq!((s, &e["error"]["code"]), (402, &json!("card_declined")));
}

/// Registers an endpoint through the Stripe API; returns it (with its secret).
async fn api_endpoint(t: &common::TestSim, url: &str, events: &[&str]) -> Value {
    let mut form = vec![("url", url)];
    form.extend(events.iter().map(|e| ("enabled_events[]", *e)));
    let (s, _, v) = t.post("/v1/webhook_endpoints", &form, None).await;
    assert_eq!(s, 200, "{v}");
    v
}

fn kinds(got: &[(String, String)]) -> Vec<String> {
    let mut k: Vec<String> = got
        .iter()
        .map(|(_, body)| {
            serde_json::from_str::<Value>(body).unwrap()["type"]
                .as_str()
                .unwrap()
                .to_owned()
        })
        .collect();
    k.sort();
    k
}

#[tokio::test]
async fn wildcard_endpoints_get_every_type_under_their_prefix() {
    let t = common::start().await;
    t.world(json!({"refund_ms": 0})).await;
    let (refunds_rx, refunds_url) = Receiver::start(0).await;
    let (pi_rx, pi_url) = Receiver::start(0).await;
    api_endpoint(&t, &refunds_url, &["refund.*"]).await;
    api_endpoint(&t, &pi_url, &["payment_intent.*", "charge.refund.updated"]).await;
    let pi = t.paid("1000", "pm_card_visa", false).await;
    t.post(
        "/v1/refunds",
        &refund_form(pi["id"].as_str().unwrap(), None),
        None,
    )
    .await;
    assert_eq!(kinds(&refunds_rx.wait_for(1).await), ["refund.created"]);
    assert_eq!(
        kinds(&pi_rx.wait_for(2).await),
        ["payment_intent.created", "payment_intent.succeeded"]
    );
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    assert_eq!(
        refunds_rx.received().len(),
        1,
        "no charge.refunded for refund.*"
    );
    assert_eq!(
        pi_rx.received().len(),
        2,
        "no charge.* for payment_intent.*"
    );

    let (s, _, e) = t
        .post(
            "/v1/webhook_endpoints",
            &[
                ("url", "http://127.0.0.1:9/x"),
                ("enabled_events[]", "Refund.Created"),
            ],
            None,
        )
        .await;
    assert_eq!((s, &e["error"]["param"]), (400, &json!("enabled_events")));
}

#[tokio::test]
async fn deleted_and_disabled_endpoints_get_nothing_more() {
    let t = common::start().await;
    let (live_rx, live_url) = Receiver::start(0).await;
    let (off_rx, off_url) = Receiver::start(0).await;
    let (gone_rx, gone_url) = Receiver::start(usize::MAX).await;
    api_endpoint(&t, &live_url, &["payment_intent.created"]).await;
    let off = api_endpoint(&t, &off_url, &["payment_intent.created"]).await;
    let gone = api_endpoint(&t, &gone_url, &["payment_intent.created"]).await;

    t.create("1000", None).await;
    live_rx.wait_for(1).await;
    off_rx.wait_for(1).await;
    // The failing endpoint has a retry pending; deleting it stops that retry.
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    let (s, v) = t
        .delete(&format!("/v1/webhook_endpoints/{}", id(&gone)))
        .await;
    assert_eq!(
        (s, v),
        (
            200,
            json!({"id": id(&gone), "object": "webhook_endpoint", "deleted": true})
        )
    );
    let (s, _) = t.get(&format!("/v1/webhook_endpoints/{}", id(&gone))).await;
    assert_eq!(s, 404);
    let (s, _, v) = t
        .post(
            &format!("/v1/webhook_endpoints/{}", id(&off)),
            &[("disabled", "true")],
            None,
        )
        .await;
    assert_eq!((s, &v["status"]), (200, &json!("disabled")));

    t.create("1000", None).await;
    live_rx.wait_for(2).await;
    t.advance(3600).await;
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    assert_eq!(
        off_rx.received().len(),
        1,
        "a disabled endpoint gets no new deliveries"
    );
    assert!(gone_rx.received().is_empty());
    let deliveries = t.deliveries().await;
    let to_gone: Vec<&Value> = deliveries
        .iter()
        .filter(|d| d["endpoint_id"] == id(&gone).as_str())
        .collect();
    assert_eq!(to_gone.len(), 1, "none queued after the delete");
    assert_eq!(to_gone[0]["state"], "canceled");
    assert_eq!(to_gone[0]["attempt"], 1, "its retry never ran");

    // Enabled again, it gets what happens from now on.
    let (_, _, v) = t
        .post(
            &format!("/v1/webhook_endpoints/{}", id(&off)),
            &[("disabled", "false"), ("url", off_url.as_str())],
            None,
        )
        .await;
    assert_eq!(v["status"], "enabled");
    t.create("1000", None).await;
    assert_eq!(off_rx.wait_for(2).await.len(), 2);
}

/// A request may pin the API version it is written for: the sim's own version is served,
/// any other is refused with Stripe's error, and no pin gets the sim's version.
#[tokio::test]
async fn a_pinned_stripe_version_is_served_or_refused() {
    let t = common::start().await;
    let get = |version: Option<&str>| {
        let mut req = t
            .http
            .get(format!("{}/v1/payment_intents", t.base))
            .bearer_auth(common::KEY);
        if let Some(v) = version {
            req = req.header("Stripe-Version", v);
        }
        req.send()
    };
    for pin in [None, Some(stripe_sim::state::API_VERSION)] {
        let res = get(pin).await.unwrap();
        assert_eq!(res.status(), 200, "{pin:?}");
        assert_eq!(
            res.headers()["stripe-version"],
            stripe_sim::state::API_VERSION
        );
    }
    let res = get(Some("1999-01-01")).await.unwrap();
    assert_eq!(res.status(), 400);
    let v: Value = res.json().await.unwrap();
    assert_eq!(v["error"]["type"], "invalid_request_error");
    assert_eq!(
        v["error"]["message"],
        "Invalid Stripe API version: 1999-01-01"
    );
}
