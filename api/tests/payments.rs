//! The payment API against the real primary (from the local stack) and an in-process
//! stripe-sim whose faults each test controls.

mod common;

use std::time::Duration;

use common::{STRIPE_KEY, idem, serve_api, spawn_app, spawn_app_with, within};
use paystream_api::config::RateLimitConfig;
use paystream_db::keys::{self, Role};
use paystream_testkit::Stack;
use reqwest::StatusCode;
use serde_json::{Value, json};
use uuid::Uuid;

#[tokio::test]
async fn create_returns_a_pending_payment_with_its_payment_intent() {
    let app = spawn_app().await;
    let body = json!({"amount": 1250, "currency": "usd", "description": "tea", "customer_email": "a@example.com", "metadata": {"order": "7"}});
    let key = idem();
    let (status, headers, p) = app.create(&key, &body).await;
    assert_eq!(status, StatusCode::CREATED, "{p}");
    assert!(headers.get("idempotent-replayed").is_none());
    assert_eq!(p["status"], "pending");
    assert_eq!(
        (p["amount"].as_i64(), p["currency"].as_str()),
        (Some(1250), Some("usd"))
    );
    assert_eq!(p["idempotency_key"], key.as_str());
    assert_eq!(p["metadata"]["order"], "7");
    let pi = p["stripe_payment_intent_id"]
        .as_str()
        .expect("PaymentIntent id");
    assert!(
        p["client_secret"]
            .as_str()
            .is_some_and(|s| s.starts_with(pi))
    );
    let id = p["id"].as_str().unwrap();
    assert_eq!(Uuid::parse_str(id).unwrap().get_version_num(), 7);
    assert_eq!(
        app.intents_for(id).await,
        1,
        "the PaymentIntent carries metadata.payment_id"
    );

    let (status, read) = app.get(&format!("/v1/payments/{id}")).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(read["stripe_payment_intent_id"], pi);
    assert_eq!(
        read["client_secret"],
        Value::Null,
        "the client secret is only in the creation response"
    );
    // The answer was stored by the statement that linked the intent, with the row's
    // `updated_at` written in by the database: the same as a read of the row renders.
    let mut created = p.clone();
    created["client_secret"] = Value::Null;
    assert_eq!(read, created);
    let (_, events) = app.get(&format!("/v1/payments/{id}/events")).await;
    assert_eq!(events["data"][0]["to_status"], "pending");
    assert_eq!(events["data"][0]["source"], "api");
}

#[tokio::test]
async fn a_repeat_replays_and_a_different_body_is_refused() {
    let app = spawn_app().await;
    let key = idem();
    let body = json!({"amount": 900, "currency": "eur"});
    let (s1, _, first) = app.create(&key, &body).await;
    // Same content, other field order: the same request.
    let (s2, h2, second) = app
        .create(&key, &json!({"currency": "eur", "amount": 900}))
        .await;
    assert_eq!((s1, s2), (StatusCode::CREATED, StatusCode::CREATED));
    assert_eq!(first, second);
    assert_eq!(h2["idempotent-replayed"], "true");
    let (s3, _, err) = app
        .create(&key, &json!({"amount": 901, "currency": "eur"}))
        .await;
    assert_eq!(s3, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(err["error"]["code"], "idempotency_key_reused");
    assert_eq!(app.rows_for_key(&key).await, 1);
}

#[tokio::test]
async fn fifty_concurrent_identical_requests_make_one_payment_and_one_intent() {
    let app = spawn_app().await;
    let key = idem();
    let body = json!({"amount": 4200, "currency": "gbp"});
    let mut set = tokio::task::JoinSet::new();
    for _ in 0..50 {
        let (http, url, api_key, key, body) = (
            app.http.clone(),
            format!("{}/v1/payments", app.base),
            app.key.clone(),
            key.clone(),
            body.clone(),
        );
        set.spawn(async move {
            let res = http
                .post(url)
                .bearer_auth(api_key)
                .header("Idempotency-Key", key)
                .json(&body)
                .send()
                .await
                .unwrap();
            (res.status(), res.json::<Value>().await.unwrap())
        });
    }
    let results: Vec<(StatusCode, Value)> = set.join_all().await;
    let created: Vec<&Value> = results
        .iter()
        .filter(|r| r.0 == StatusCode::CREATED)
        .map(|r| &r.1)
        .collect();
    assert!(!created.is_empty());
    assert!(
        results
            .iter()
            .all(|r| r.0 == StatusCode::CREATED || r.0 == StatusCode::CONFLICT),
        "{:?}",
        results.iter().map(|r| r.0).collect::<Vec<_>>()
    );
    for r in results.iter().filter(|r| r.0 == StatusCode::CONFLICT) {
        assert_eq!(r.1["error"]["code"], "idempotency_key_in_use");
    }
    let id = created[0]["id"].as_str().unwrap();
    assert!(
        created.iter().all(|c| c["id"] == id),
        "every success names the same payment"
    );
    assert_eq!(app.rows_for_key(&key).await, 1, "exactly one payment row");
    assert_eq!(app.intents_for(id).await, 1, "exactly one PaymentIntent");
}

#[tokio::test]
async fn stripe_down_leaves_the_payment_pending_and_a_retry_completes_it() {
    let app = spawn_app().await;
    app.faults(json!({"api_error_rate": 1.0})).await;
    let key = idem();
    let body = json!({"amount": 1500, "currency": "usd"});
    let (status, _, res) = app.create(&key, &body).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{res}");
    assert_eq!(res["error"]["code"], "processor_unavailable");
    assert_eq!(res["payment"]["status"], "pending");
    assert_eq!(res["payment"]["stripe_payment_intent_id"], Value::Null);
    assert_eq!(res["payment"]["client_secret"], Value::Null);
    let id = res["payment"]["id"].as_str().unwrap().to_owned();

    app.faults(json!({})).await;
    let (status, headers, done) = app.create(&key, &body).await;
    assert_eq!(status, StatusCode::CREATED, "{done}");
    assert!(
        headers.get("idempotent-replayed").is_none(),
        "an unfinished first attempt is resumed, not replayed"
    );
    assert_eq!(done["id"], id.as_str());
    assert!(done["client_secret"].as_str().is_some());
    assert_eq!(app.rows_for_key(&key).await, 1);
    assert_eq!(app.intents_for(&id).await, 1);
}

#[tokio::test]
async fn a_stripe_refusal_fails_the_payment_with_the_reason() {
    let app = spawn_app().await;
    // Below Stripe's minimum charge for USD (50 cents): Stripe answers 400 amount_too_small.
    let key = idem();
    let (status, _, res) = app
        .create(&key, &json!({"amount": 10, "currency": "usd"}))
        .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{res}");
    assert_eq!(res["error"]["code"], "processor_rejected");
    assert_eq!(res["payment"]["status"], "failed");
    assert!(
        res["payment"]["last_error"]
            .as_str()
            .unwrap()
            .starts_with("amount_too_small")
    );
    assert_eq!(res["payment"]["resolution_source"], "api");
    let id = res["payment"]["id"].as_str().unwrap();
    let (_, events) = app.get(&format!("/v1/payments/{id}/events")).await;
    let steps: Vec<(&str, &str)> = events["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            (
                e["to_status"].as_str().unwrap(),
                e["source"].as_str().unwrap(),
            )
        })
        .collect();
    assert_eq!(steps, [("pending", "api"), ("failed", "api")]);
    let (status, _, replay) = app
        .create(&key, &json!({"amount": 10, "currency": "usd"}))
        .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(replay, res);
}

#[tokio::test]
async fn bad_input_is_a_4xx_with_a_stable_code_and_writes_nothing() {
    let app = spawn_app().await;
    let before: i64 = sqlx::query_scalar("SELECT count(*) FROM payments")
        .fetch_one(&app.db)
        .await
        .unwrap();
    let cases: Vec<(Value, &str)> = vec![
        (json!({"amount": 0, "currency": "usd"}), "amount_invalid"),
        (json!({"amount": 12.5, "currency": "usd"}), "invalid_body"),
        (
            json!({"amount": 2_000_000, "currency": "usd"}),
            "amount_too_large",
        ),
        (
            json!({"amount": 100, "currency": "USD"}),
            "currency_invalid",
        ),
        (
            json!({"amount": 100, "currency": "xyz"}),
            "currency_unsupported",
        ),
        (
            json!({"amount": 100, "currency": "usd", "extra": 1}),
            "invalid_body",
        ),
        (
            json!({"amount": 100, "currency": "usd", "customer_email": "nope"}),
            "customer_email_invalid",
        ),
    ];
    for (body, code) in cases {
        let (status, _, res) = app.create(&idem(), &body).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{body}: {res}");
        assert_eq!(res["error"]["code"], code, "{body}");
    }
    let raw = |idem: Option<&str>, body: &'static str| {
        let mut req = app
            .http
            .post(format!("{}/v1/payments", app.base))
            .bearer_auth(&app.key)
            .body(body);
        if let Some(k) = idem {
            req = req.header("Idempotency-Key", k);
        }
        req.send()
    };
    let res = raw(None, r#"{"amount":100,"currency":"usd"}"#)
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::BAD_REQUEST);
    assert_eq!(
        res.json::<Value>().await.unwrap()["error"]["code"],
        "idempotency_key_missing"
    );
    let long = "k".repeat(256);
    let res = app
        .http
        .post(format!("{}/v1/payments", app.base))
        .bearer_auth(&app.key)
        .header("Idempotency-Key", long)
        .body("{}")
        .send()
        .await
        .unwrap();
    assert_eq!(
        res.json::<Value>().await.unwrap()["error"]["code"],
        "idempotency_key_invalid"
    );
    let res = raw(Some("k-json"), "{not json").await.unwrap();
    assert_eq!(
        res.json::<Value>().await.unwrap()["error"]["code"],
        "invalid_body"
    );
    let huge = format!(
        r#"{{"amount":100,"currency":"usd","description":"{}"}}"#,
        "x".repeat(70_000)
    );
    let res = app
        .http
        .post(format!("{}/v1/payments", app.base))
        .bearer_auth(&app.key)
        .header("Idempotency-Key", "k-huge")
        .body(huge)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::PAYLOAD_TOO_LARGE);
    assert_eq!(
        res.json::<Value>().await.unwrap()["error"]["code"],
        "body_too_large"
    );
    let (status, res) = app.get("/v1/payments?colour=red").await;
    assert_eq!(
        (status, res["error"]["code"].as_str()),
        (StatusCode::BAD_REQUEST, Some("invalid_query"))
    );
    let (status, _) = app.get("/v1/payments?limit=1000").await;
    assert_eq!(status, StatusCode::BAD_REQUEST);

    let after: i64 = sqlx::query_scalar("SELECT count(*) FROM payments")
        .fetch_one(&app.db)
        .await
        .unwrap();
    // Other tests run concurrently on the same database: count only this client's rows.
    let mine: i64 = sqlx::query_scalar("SELECT count(*) FROM idempotency_keys k JOIN api_keys a ON a.client_id = k.client_id WHERE a.key_prefix = $1")
        .bind(app.key.chars().take(16).collect::<String>())
        .fetch_one(&app.db)
        .await
        .unwrap();
    assert_eq!(mine, 0, "no bad request wrote anything");
    assert!(after >= before);
}

#[tokio::test]
async fn keys_are_required_and_clients_only_see_their_own_payments() {
    let app = spawn_app().await;
    let (_, _, p) = app
        .create(&idem(), &json!({"amount": 700, "currency": "usd"}))
        .await;
    let path = format!("/v1/payments/{}", p["id"].as_str().unwrap());

    let res = app.get_as(&path, None).await;
    assert_eq!(res.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(
        res.json::<Value>().await.unwrap()["error"]["code"],
        "unauthorized"
    );
    assert_eq!(
        app.get_as(&path, Some("psk_client_wrong")).await.status(),
        StatusCode::UNAUTHORIZED
    );

    // spawn_app waits for the instance to subscribe, by when it has loaded the keys
    // active at its start: only the database's announcement can teach it a key made now.
    let (other_id, other) = app.new_key("other", Role::Client).await;
    // The database announces a new key: its first lookup skips the strangers' line. A
    // bound, not a measurement: milliseconds on any machine.
    within(
        Duration::from_secs(2),
        "the new key was never announced",
        || app.gate.expects(&other),
    )
    .await;
    let res = app.get_as(&path, Some(&other)).await;
    assert_eq!(
        res.status(),
        StatusCode::NOT_FOUND,
        "another client's payment is 404, not 403"
    );
    let list: Value = app
        .get_as("/v1/payments", Some(&other))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(list["data"].as_array().unwrap().len(), 0);

    // A prefix many keys share revokes none of them (every test makes client keys).
    let shared = keys::revoke(&app.primary, "psk_client_").await.unwrap_err();
    assert!(
        shared.to_string().contains("active keys start with"),
        "{shared}"
    );
    assert_eq!(
        app.get_as("/v1/payments", Some(&other)).await.status(),
        StatusCode::OK
    );
    // The instance remembers the key it checked, so the next request costs no lookup...
    assert!(app.gate.remembers(&other));
    let prefix: String = other.chars().take(16).collect();
    assert_eq!(keys::revoke(&app.primary, &prefix).await.unwrap(), other_id);
    // ...until the database announces its revocation, which the instance hears as it
    // commits. A bound, not a measurement: milliseconds on any machine.
    within(
        Duration::from_secs(2),
        "the revocation was never heard",
        || !app.gate.remembers(&other),
    )
    .await;
    let res = app.get_as("/v1/payments", Some(&other)).await;
    assert_eq!(
        res.status(),
        StatusCode::UNAUTHORIZED,
        "a revoked key is refused"
    );
    assert!(!app.gate.remembers(&other), "nor remembered again");
    let (status, _) = app.get("/v1/payments/not-a-uuid").await;
    assert_eq!(status, StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn lists_are_newest_first_filtered_and_paginated() {
    let app = spawn_app().await;
    let mut ids = Vec::new();
    for amount in [100, 200, 300] {
        let (_, _, p) = app
            .create(&idem(), &json!({"amount": amount, "currency": "usd"}))
            .await;
        ids.push(p["id"].as_str().unwrap().to_owned());
    }
    let (_, _, failed) = app
        .create(&idem(), &json!({"amount": 1, "currency": "usd"}))
        .await;
    let page = |v: &Value| {
        v["data"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| p["id"].as_str().unwrap().to_owned())
            .collect::<Vec<_>>()
    };
    let (_, first) = app.get("/v1/payments?status=pending&limit=2").await;
    assert_eq!(page(&first), [ids[2].clone(), ids[1].clone()]);
    assert_eq!(first["has_more"], true);
    let (_, second) = app
        .get(&format!(
            "/v1/payments?status=pending&limit=2&starting_after={}",
            ids[1]
        ))
        .await;
    assert_eq!(page(&second), [ids[0].clone()]);
    assert_eq!(second["has_more"], false);
    let (_, f) = app.get("/v1/payments?status=failed").await;
    assert_eq!(
        page(&f),
        [failed["payment"]["id"].as_str().unwrap().to_owned()]
    );
    let (_, none) = app
        .get("/v1/payments?created_lt=2000-01-01T00:00:00Z")
        .await;
    assert_eq!(page(&none).len(), 0);
}

#[tokio::test]
async fn cancel_cancels_the_intent_first_and_is_idempotent() {
    let app = spawn_app().await;
    let (_, _, p) = app
        .create(&idem(), &json!({"amount": 800, "currency": "usd"}))
        .await;
    let id = p["id"].as_str().unwrap();
    let (status, body) = app.cancel(id).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        (body["status"].as_str(), body["stripe_status"].as_str()),
        (Some("canceled"), Some("canceled"))
    );
    let (again, _) = app.cancel(id).await;
    assert_eq!(
        again,
        StatusCode::OK,
        "canceling a canceled payment is a no-op"
    );

    // A payment the customer already paid cannot be canceled; it becomes succeeded.
    let (_, _, paid) = app
        .create(&idem(), &json!({"amount": 800, "currency": "usd"}))
        .await;
    let pi = paid["stripe_payment_intent_id"].as_str().unwrap();
    assert_eq!(app.confirm(pi, "pm_card_visa").await, 200);
    let (status, body) = app.cancel(paid["id"].as_str().unwrap()).await;
    assert_eq!(status, StatusCode::CONFLICT);
    assert_eq!(body["error"]["code"], "payment_not_cancelable");
    assert_eq!(body["payment"]["status"], "succeeded");
}

#[tokio::test]
async fn each_key_is_rate_limited_with_retry_after() {
    let app = spawn_app_with(RateLimitConfig {
        per_second: 1,
        burst: 3,
    })
    .await;
    let mut statuses = Vec::new();
    for _ in 0..5 {
        let res = app.get_as("/v1/payments", Some(&app.key)).await;
        let status = res.status().as_u16();
        if res.status() == StatusCode::TOO_MANY_REQUESTS {
            assert!(res.headers().contains_key("retry-after"));
            assert_eq!(
                res.json::<Value>().await.unwrap()["error"]["code"],
                "rate_limited"
            );
        }
        statuses.push(status);
    }
    assert_eq!(statuses, [200, 200, 200, 429, 429]);
}

/// The stack's two API instances (and nginx in front of them) share one idempotency
/// store: the same key sent to both creates one payment.
#[tokio::test]
async fn two_instances_behind_nginx_share_idempotency() {
    let stack = Stack::get();
    let http = reqwest::Client::new();
    let key = idem();
    let body = json!({"amount": 2500, "currency": "usd"});
    let send = |base: String| {
        let (http, key, body) = (http.clone(), key.clone(), body.clone());
        let api_key = stack.var("PAYSTREAM_CLIENT_KEY").to_owned();
        async move {
            let res = http
                .post(format!("{base}/v1/payments"))
                .bearer_auth(api_key)
                .header("Idempotency-Key", key)
                .json(&body)
                .send()
                .await
                .unwrap();
            let served_by = res
                .headers()
                .get("x-served-by")
                .map(|v| v.to_str().unwrap().to_owned());
            (res.status(), served_by, res.json::<Value>().await.unwrap())
        }
    };
    let (a, b) = tokio::join!(
        send(stack.var("API_1_URL").to_owned()),
        send(stack.var("API_2_URL").to_owned())
    );
    assert_eq!(
        (a.1.as_deref(), b.1.as_deref()),
        (Some("api-1"), Some("api-2"))
    );
    let mut ids = Vec::new();
    for r in [&a, &b] {
        assert!(
            r.0 == StatusCode::CREATED || r.0 == StatusCode::CONFLICT,
            "{:?}",
            r
        );
        if r.0 == StatusCode::CREATED {
            ids.push(r.2["id"].as_str().unwrap().to_owned());
        }
    }
    // Through nginx, after both finished: a replay of the one payment.
    let c = send(stack.var("PAYSTREAM_API_URL").to_owned()).await;
    assert_eq!(c.0, StatusCode::CREATED, "{}", c.2);
    ids.push(c.2["id"].as_str().unwrap().to_owned());
    ids.dedup();
    assert_eq!(ids.len(), 1, "one payment across instances: {ids:?}");
    let db = stack.pool("DATABASE_URL").await;
    let rows: i64 = sqlx::query_scalar("SELECT count(*) FROM payments WHERE idempotency_key = $1")
        .bind(&key)
        .fetch_one(&db)
        .await
        .unwrap();
    assert_eq!(rows, 1);
}

/// A running instance counts requests by route and status, times them, counts Stripe
/// calls by outcome, times a create's phases, reports its pool, and echoes the request
/// id nginx gave it.
#[tokio::test]
async fn an_instance_exposes_prometheus_metrics_and_request_ids() {
    let stack = Stack::get();
    let http = reqwest::Client::new();
    let api1 = stack.var("API_1_URL");
    let res = http
        .post(format!("{api1}/v1/payments"))
        .bearer_auth(stack.var("PAYSTREAM_CLIENT_KEY"))
        .header("Idempotency-Key", idem())
        .header("X-Request-Id", "req-metrics-test-1")
        .json(&json!({"amount": 1500, "currency": "usd"}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::CREATED);
    assert_eq!(res.headers()["x-request-id"], "req-metrics-test-1");
    let text = http
        .get(format!("{api1}/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    for needle in [
        "http_requests_total{route=\"/v1/payments\",method=\"POST\",status=\"201\"}",
        "http_request_duration_seconds_bucket{le=\"+Inf\",route=\"/v1/payments\",method=\"POST\"}",
        "stripe_calls_total{operation=\"create_intent\",outcome=\"created\"}",
        "db_pool_connections ",
        // The instance hears key changes, so it remembers the keys it checked.
        "api_key_changes_subscribed 1",
    ] {
        assert!(text.contains(needle), "{needle} missing from:\n{text}");
    }
    // The create's phases, each timed at least once by the create above.
    for phase in ["record", "stripe", "store"] {
        let series = format!("payment_create_phase_seconds_count{{phase=\"{phase}\"}}");
        let count: u64 = paystream_testkit::sample(&text, &series);
        assert!(count >= 1, "{series} {count}");
    }
    // Keys never reach the metrics (nor, by the same code path, the logs).
    assert!(!text.contains(stack.var("PAYSTREAM_CLIENT_KEY")));
}

#[tokio::test]
async fn the_openapi_document_describes_every_route_and_docs_render_it() {
    let app = spawn_app().await;
    let spec: Value = app
        .http
        .get(format!("{}/openapi.json", app.base))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(
        spec["openapi"].as_str().unwrap().starts_with("3.1"),
        "{}",
        spec["openapi"]
    );
    let expected = [
        ("/v1/payments", "post"),
        ("/v1/payments", "get"),
        ("/v1/payments/{id}", "get"),
        ("/v1/payments/{id}/events", "get"),
        ("/v1/payments/{id}/cancel", "post"),
        ("/v1/payments/{id}/capture", "post"),
        ("/v1/payments/{id}/refunds", "post"),
        ("/v1/payments/{id}/refunds", "get"),
        ("/v1/refunds/{id}", "get"),
        ("/v1/reports/reconciliation", "get"),
        ("/v1/reports/reconciliation", "post"),
        ("/v1/reports/reconciliation/runs/{id}", "get"),
        ("/v1/analytics/summary", "get"),
        ("/v1/analytics/timeseries", "get"),
    ];
    for (path, method) in expected {
        let op = &spec["paths"][path][method];
        assert!(op.is_object(), "{method} {path} is not documented");
        assert!(
            op["responses"].as_object().is_some_and(|r| !r.is_empty()),
            "{method} {path} has no responses"
        );
    }
    let documented: usize = spec["paths"]
        .as_object()
        .unwrap()
        .values()
        .map(|v| v.as_object().unwrap().len())
        .sum();
    assert_eq!(
        documented,
        expected.len(),
        "every documented operation is a route and vice versa"
    );
    assert_eq!(
        spec["components"]["securitySchemes"]["bearer"]["scheme"],
        "bearer"
    );
    assert!(spec["components"]["schemas"]["PaymentView"]["properties"]["amount"].is_object());
    let docs = app
        .http
        .get(format!("{}/docs", app.base))
        .send()
        .await
        .unwrap();
    assert_eq!(docs.status(), StatusCode::OK);
    let html = docs.text().await.unwrap();
    assert!(
        html.contains("swagger-ui") && !html.contains("https://"),
        "the page must work offline"
    );
    // Every asset it loads is served here, and it reads this instance's contract.
    let init = app
        .http
        .get(format!("{}/docs/swagger-initializer.js", app.base))
        .send()
        .await
        .unwrap();
    assert_eq!(init.status(), StatusCode::OK);
    let init = init.text().await.unwrap();
    assert!(
        init.contains("/openapi.json") && !init.contains("https://"),
        "{init}"
    );
}

/// With the primary unreachable, requests get 503 `database_unavailable` (so clients and
/// nginx retry), never a 500, and nothing reaches Stripe.
#[tokio::test]
async fn a_dead_database_is_a_503_not_a_500() {
    let app = spawn_app().await;
    let limit = RateLimitConfig {
        per_second: 100,
        burst: 100,
    };
    let base = serve_api(
        paystream_testkit::unreachable_primary(),
        &app.stripe_base,
        limit,
    )
    .await;
    let res = app
        .http
        .post(format!("{base}/v1/payments"))
        .bearer_auth(&app.key)
        .header("Idempotency-Key", idem())
        .json(&json!({"amount": 1000, "currency": "usd"}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(
        res.json::<Value>().await.unwrap()["error"]["code"],
        "database_unavailable"
    );
    let intents: Value = app
        .http
        .get(format!("{}/v1/payment_intents", app.stripe_base))
        .bearer_auth(STRIPE_KEY)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(intents["data"].as_array().unwrap().len(), 0);
}

#[tokio::test]
async fn reconciliation_reports_are_for_operator_keys_only() {
    let app = spawn_app().await;
    let since = (chrono::Utc::now() - chrono::Duration::seconds(1))
        .to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
    let report = |key: &str, since: &str, format: &str| {
        app.http
            .get(format!("{}/v1/reports/reconciliation", app.base))
            .query(&[("since", since), ("format", format)])
            .bearer_auth(key)
            .send()
    };
    let res = report(&app.key, &since, "json").await.unwrap();
    assert_eq!(res.status(), 403);
    let body: Value = res.json().await.unwrap();
    assert_eq!(body["error"]["code"], "operator_only");

    let (_, operator) = app.new_key("op", Role::Operator).await;
    let res = report(&operator, &since, "json").await.unwrap();
    assert_eq!(res.status(), 200);
    assert!(res.headers().get("x-discrepancies").is_some());
    let body: Value = res.json().await.unwrap();
    assert!(body["counts"]["matched"].is_u64(), "{body}");
    assert!(body["data_as_of"].is_string(), "{body}");
    let res = report(&operator, &since, "html").await.unwrap();
    assert_eq!(res.status(), 200);
    assert!(
        res.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/html")
    );
    assert!(res.text().await.unwrap().starts_with("<!doctype html>"));
    for (since, format) in [("yesterday", "json"), ("40d", "json"), ("1h", "xml")] {
        let res = report(&operator, since, format).await.unwrap();
        assert_eq!(res.status(), 400, "{since} {format}");
        let body: Value = res.json().await.unwrap();
        assert_eq!(body["error"]["code"], "invalid_request", "{since} {format}");
    }
}

/// A report over HTTP runs in the background: the POST answers at once with where to
/// follow it; the run answers 202 while it works and then the report, which is a stored
/// run like the CLI's. Client keys can do neither.
#[tokio::test]
async fn a_report_run_starts_at_once_and_is_followed_to_its_stored_result() {
    let app = spawn_app().await;
    let (_, operator) = app.new_key("op", Role::Operator).await;
    let since = (chrono::Utc::now() - chrono::Duration::seconds(5))
        .to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
    let start = |key: &str, since: &str| {
        app.http
            .post(format!("{}/v1/reports/reconciliation", app.base))
            .query(&[("since", since)])
            .bearer_auth(key)
            .send()
    };
    let res = start(&app.key, &since).await.unwrap();
    assert_eq!(res.status(), 403, "client keys run no reports");
    let res = start(&operator, "yesterday").await.unwrap();
    assert_eq!(res.status(), 400);

    let began = std::time::Instant::now();
    let res = start(&operator, &since).await.unwrap();
    assert!(
        began.elapsed() < std::time::Duration::from_secs(2),
        "answered at once"
    );
    assert_eq!(res.status(), 202);
    let location = res.headers()["location"].to_str().unwrap().to_owned();
    let run: Value = res.json().await.unwrap();
    assert_eq!(run["status"], "running");
    assert!(
        location.ends_with(run["id"].as_str().unwrap()),
        "{location}"
    );

    let follow = |format: &str| {
        app.http
            .get(format!("{}{location}", app.base))
            .query(&[("format", format)])
            .bearer_auth(&operator)
            .send()
    };
    let done = loop {
        let res = follow("json").await.unwrap();
        match res.status().as_u16() {
            202 => {
                assert_eq!(res.headers()["retry-after"], "1");
                let body: Value = res.json().await.unwrap();
                assert!(body["progress"].is_i64(), "{body}");
            }
            200 => break res,
            other => panic!("{other}: {}", res.text().await.unwrap()),
        }
        assert!(
            began.elapsed() < std::time::Duration::from_secs(60),
            "the run did not finish"
        );
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    };
    assert!(done.headers().get("x-discrepancies").is_some());
    let stored: Uuid = done.headers()["x-report-run"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    let report: Value = done.json().await.unwrap();
    assert!(report["counts"]["matched"].is_u64(), "{report}");
    let kept: i64 = sqlx::query_scalar("SELECT count(*) FROM reconciliation_runs WHERE id = $1")
        .bind(stored)
        .fetch_one(&app.db)
        .await
        .unwrap();
    assert_eq!(kept, 1, "the result is a stored run");
    let html = follow("html").await.unwrap();
    assert_eq!(html.status(), 200);
    assert!(html.text().await.unwrap().starts_with("<!doctype html>"));
    let res = app
        .http
        .get(format!(
            "{}/v1/reports/reconciliation/runs/{}",
            app.base,
            Uuid::now_v7()
        ))
        .bearer_auth(&operator)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 404);
}
