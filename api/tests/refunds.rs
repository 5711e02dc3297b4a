//! Refunds and manual capture through the API: the real router over the real primary and
//! a stripe-sim of the test's own.

use std::collections::HashSet;
use std::time::Duration;

use paystream_api::config::RateLimitConfig;
use paystream_core::PaymentStatus;
use paystream_core::gateway::StripeGateway;
use paystream_db::keys::Role;
use paystream_db::payments::{self, Observation, Source};
use paystream_stripe::StripeApi;
use reqwest::StatusCode;
use serde_json::{Value, json};
use uuid::Uuid;

mod common;

use common::{STRIPE_KEY, TestApp, idem, serve_api, spawn_app};

impl TestApp {
    async fn post(
        &self,
        path: &str,
        key: &str,
        body: &Value,
    ) -> (StatusCode, reqwest::header::HeaderMap, Value) {
        self.post_as(&self.base, &self.key, path, key, body).await
    }

    async fn post_as(
        &self,
        base: &str,
        api_key: &str,
        path: &str,
        key: &str,
        body: &Value,
    ) -> (StatusCode, reqwest::header::HeaderMap, Value) {
        let res = self
            .http
            .post(format!("{base}{path}"))
            .bearer_auth(api_key)
            .header("Idempotency-Key", key)
            .json(body)
            .send()
            .await
            .unwrap();
        let (status, headers) = (res.status(), res.headers().clone());
        (status, headers, res.json().await.unwrap_or(Value::Null))
    }

    fn gateway(&self) -> StripeApi {
        StripeApi::new(&self.stripe_base, STRIPE_KEY, Duration::from_secs(5)).unwrap()
    }

    /// Stripe's refunds complete at once (as in Stripe's test mode), and no rate limit.
    async fn instant_refunds(&self) {
        let mut w: Value = self
            .http
            .get(format!("{}/_sim/world", self.stripe_base))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        w["refund_ms"] = json!(0);
        w["per_endpoint_rate"] = json!(0);
        w["global_rate"] = json!(0);
        let res = self
            .http
            .put(format!("{}/_sim/world", self.stripe_base))
            .json(&w)
            .send()
            .await
            .unwrap();
        assert!(res.status().is_success());
    }

    /// A payment of `amount` the customer paid with `pm`; for an automatic payment, what
    /// Stripe says is applied as a webhook would (this API has no webhook receiver).
    async fn paid(&self, amount: i64, capture: &str, pm: &str) -> Value {
        let (status, _, p) = self
            .create(
                &idem(),
                &json!({"amount": amount, "currency": "usd", "capture_method": capture}),
            )
            .await;
        assert_eq!(status, StatusCode::CREATED, "{p}");
        let pi = p["stripe_payment_intent_id"].as_str().unwrap().to_owned();
        assert_eq!(self.confirm(&pi, pm).await, 200);
        let view = self.gateway().retrieve_intent(&pi).await.unwrap();
        let id = PaymentId(p["id"].as_str().unwrap());
        payments::apply_status(
            &self.primary,
            id.typed(),
            &Observation::of_intent(view.status().unwrap(), &view, Source::Webhook),
        )
        .await
        .unwrap();
        self.get(&format!("/v1/payments/{}", id.0)).await.1
    }

    async fn refund(
        &self,
        payment: &Value,
        body: &Value,
    ) -> (StatusCode, reqwest::header::HeaderMap, Value) {
        self.post(
            &format!("/v1/payments/{}/refunds", payment["id"].as_str().unwrap()),
            &idem(),
            body,
        )
        .await
    }
}

struct PaymentId<'a>(&'a str);

impl PaymentId<'_> {
    fn typed(&self) -> paystream_core::PaymentId {
        self.0.parse().unwrap()
    }
}

fn code(body: &Value) -> &str {
    body["error"]["code"].as_str().unwrap_or("")
}

#[tokio::test]
async fn full_and_partial_refunds_up_to_what_was_captured() {
    let app = spawn_app().await;
    app.instant_refunds().await;
    let p = app.paid(1000, "automatic", "pm_card_visa").await;
    assert_eq!(
        (
            p["status"].as_str(),
            p["amount_captured"].as_i64(),
            p["amount_refunded"].as_i64()
        ),
        (Some("succeeded"), Some(1000), Some(0))
    );
    let (status, _, r1) = app
        .refund(&p, &json!({"amount": 300, "reason": "requested_by_customer", "metadata": {"ticket": "42"}}))
        .await;
    assert_eq!(status, StatusCode::CREATED, "{r1}");
    assert_eq!(r1["status"], "succeeded");
    assert_eq!(r1["amount"], 300);
    assert_eq!(r1["currency"], "usd");
    assert_eq!(r1["reason"], "requested_by_customer");
    assert_eq!(r1["metadata"]["ticket"], "42");
    assert!(r1["stripe_refund_id"].as_str().unwrap().starts_with("re_"));
    assert!(r1["resolved_at"].is_string());

    let (status, _, over) = app.refund(&p, &json!({"amount": 701})).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{over}");
    assert_eq!(code(&over), "refund_exceeds_remaining");
    // The rest, by default.
    let (status, _, r2) = app.refund(&p, &json!({})).await;
    assert_eq!(status, StatusCode::CREATED, "{r2}");
    assert_eq!(r2["amount"], 700);
    let (status, _, none_left) = app.refund(&p, &json!({})).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(code(&none_left), "refund_exceeds_remaining");

    let id = p["id"].as_str().unwrap();
    let (_, after) = app.get(&format!("/v1/payments/{id}")).await;
    assert_eq!(after["amount_refunded"], 1000);
    let (_, list) = app.get(&format!("/v1/payments/{id}/refunds?limit=1")).await;
    assert_eq!(list["data"].as_array().unwrap().len(), 1);
    assert_eq!(list["has_more"], true);
    assert_eq!(list["data"][0]["id"], r2["id"], "newest first");
    let (_, page2) = app
        .get(&format!(
            "/v1/payments/{id}/refunds?limit=1&starting_after={}",
            r2["id"].as_str().unwrap()
        ))
        .await;
    assert_eq!(page2["data"][0]["id"], r1["id"]);
    assert_eq!(page2["has_more"], false);
    let (status, one) = app
        .get(&format!("/v1/refunds/{}", r1["id"].as_str().unwrap()))
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(one["id"], r1["id"]);
    // The refunds are in the payment's history.
    let (_, history) = app.get(&format!("/v1/payments/{id}/events")).await;
    let refund_entries: HashSet<&str> = history["data"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|e| e["refund_id"].as_str())
        .collect();
    assert_eq!(refund_entries.len(), 2, "{history}");
    // At Stripe: the same two refunds, the same sum.
    let at_stripe = app
        .gateway()
        .list_refunds(after["stripe_payment_intent_id"].as_str().unwrap())
        .await
        .unwrap();
    assert_eq!(at_stripe.iter().map(|r| r.amount).sum::<i64>(), 1000);
    assert_eq!(at_stripe.len(), 2);
}

#[tokio::test]
async fn refunds_of_unpaid_payments_and_bad_bodies_are_refused_and_change_nothing() {
    let app = spawn_app().await;
    let (_, _, pending) = app
        .create(&idem(), &json!({"amount": 500, "currency": "usd"}))
        .await;
    let (status, _, body) = app.refund(&pending, &json!({"amount": 100})).await;
    assert_eq!(status, StatusCode::CONFLICT, "{body}");
    assert_eq!(code(&body), "payment_not_refundable");
    let (_, canceled) = app.cancel(pending["id"].as_str().unwrap()).await;
    assert_eq!(canceled["status"], "canceled");
    let (status, _, body) = app.refund(&canceled, &json!({})).await;
    assert_eq!(
        (status, code(&body)),
        (StatusCode::CONFLICT, "payment_not_refundable")
    );
    // Stripe refuses the payment: failed, nothing to refund.
    let (_, _, failed) = app
        .create(&idem(), &json!({"amount": 1, "currency": "usd"}))
        .await;
    let failed = &failed["payment"];
    assert_eq!(failed["status"], "failed", "{failed}");
    let (status, _, body) = app.refund(failed, &json!({})).await;
    assert_eq!(
        (status, code(&body)),
        (StatusCode::CONFLICT, "payment_not_refundable")
    );

    let paid = app.paid(800, "automatic", "pm_card_visa").await;
    for (bad, want) in [
        (json!({"amount": 0}), "amount_invalid"),
        (json!({"amount": -5}), "amount_invalid"),
        (json!({"amount": 12.5}), "invalid_body"),
        (json!({"amount": "100"}), "invalid_body"),
        (json!({"reason": "because"}), "invalid_body"),
        (json!({"unknown": 1}), "invalid_body"),
        (json!({"metadata": {"": "x"}}), "metadata_invalid"),
    ] {
        let (status, _, body) = app.refund(&paid, &bad).await;
        assert_eq!(
            (status, code(&body)),
            (StatusCode::BAD_REQUEST, want),
            "{bad}"
        );
    }
    let id = paid["id"].as_str().unwrap();
    let (status, _, body) = app
        .post(&format!("/v1/payments/{id}/refunds"), "", &json!({}))
        .await;
    assert_eq!(
        (status, code(&body)),
        (StatusCode::BAD_REQUEST, "idempotency_key_invalid")
    );
    let (status, _, _) = app
        .post(
            &format!("/v1/payments/{}/refunds", Uuid::now_v7()),
            &idem(),
            &json!({}),
        )
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (status, body) = app.get(&format!("/v1/refunds/{}", Uuid::now_v7())).await;
    assert_eq!(
        (status, code(&body)),
        (StatusCode::NOT_FOUND, "refund_not_found")
    );
    let rows: i64 = sqlx::query_scalar("SELECT count(*) FROM refunds WHERE payment_id = ANY($1)")
        .bind(vec![
            Uuid::parse_str(id).unwrap(),
            Uuid::parse_str(pending["id"].as_str().unwrap()).unwrap(),
        ])
        .fetch_one(&app.db)
        .await
        .unwrap();
    assert_eq!(rows, 0, "refused refunds leave no row");
}

#[tokio::test]
async fn a_refund_key_replays_its_first_answer_and_refuses_another_body() {
    let app = spawn_app().await;
    app.instant_refunds().await;
    let p = app.paid(900, "automatic", "pm_card_visa").await;
    let path = format!("/v1/payments/{}/refunds", p["id"].as_str().unwrap());
    let key = idem();
    let (s1, h1, first) = app.post(&path, &key, &json!({"amount": 400})).await;
    assert_eq!(s1, StatusCode::CREATED);
    assert!(h1.get("idempotent-replayed").is_none());
    let (s2, h2, again) = app.post(&path, &key, &json!({"amount": 400})).await;
    assert_eq!(s2, StatusCode::CREATED);
    assert_eq!(h2.get("idempotent-replayed").unwrap(), "true");
    assert_eq!(again["id"], first["id"]);
    let (s3, _, other) = app.post(&path, &key, &json!({"amount": 401})).await;
    assert_eq!(
        (s3, code(&other)),
        (StatusCode::UNPROCESSABLE_ENTITY, "idempotency_key_reused")
    );
    // A payment's create key is not a refund key.
    let (s4, _, reused) = app
        .post(
            &path,
            p["idempotency_key"].as_str().unwrap(),
            &json!({"amount": 1}),
        )
        .await;
    assert_eq!(
        (s4, code(&reused)),
        (StatusCode::UNPROCESSABLE_ENTITY, "idempotency_key_reused")
    );
    let (_, after) = app
        .get(&format!("/v1/payments/{}", p["id"].as_str().unwrap()))
        .await;
    assert_eq!(after["amount_refunded"], 400, "one refund for one key");
}

#[tokio::test]
async fn operators_refund_any_payment_and_clients_only_their_own() {
    let app = spawn_app().await;
    app.instant_refunds().await;
    let p = app.paid(600, "automatic", "pm_card_visa").await;
    let path = format!("/v1/payments/{}/refunds", p["id"].as_str().unwrap());
    let (_, stranger) = app.new_key("other", Role::Client).await;
    let (status, _, _) = app
        .post_as(&app.base, &stranger, &path, &idem(), &json!({}))
        .await;
    assert_eq!(
        status,
        StatusCode::NOT_FOUND,
        "another client's payment does not exist for them"
    );
    let (_, operator) = app.new_key("ops", Role::Operator).await;
    let (status, _, r) = app
        .post_as(
            &app.base,
            &operator,
            &path,
            &idem(),
            &json!({"amount": 100, "reason": "fraudulent"}),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{r}");
    let res = app
        .get_as(
            &format!("/v1/refunds/{}", r["id"].as_str().unwrap()),
            Some(&stranger),
        )
        .await;
    assert_eq!(res.status(), StatusCode::NOT_FOUND);
    let (status, mine) = app
        .get(&format!("/v1/refunds/{}", r["id"].as_str().unwrap()))
        .await;
    assert_eq!(
        status,
        StatusCode::OK,
        "the payment's owner sees refunds an operator made"
    );
    assert_eq!(mine["reason"], "fraudulent");
}

/// Never over-refund: 50 concurrent partial refunds, distinct keys, on two API instances,
/// asking for 1.5 times the payment. What is held (pending or succeeded) never exceeds
/// what was captured, in our database and at Stripe.
#[tokio::test(flavor = "multi_thread")]
async fn fifty_concurrent_refunds_on_two_instances_never_exceed_the_captured_amount() {
    let app = spawn_app().await;
    app.instant_refunds().await;
    let second = serve_api(
        app.db.clone(),
        &app.stripe_base,
        RateLimitConfig {
            per_second: 1000,
            burst: 1000,
        },
    )
    .await;
    let p = app.paid(1000, "automatic", "pm_card_visa").await;
    let path = format!("/v1/payments/{}/refunds", p["id"].as_str().unwrap());
    let answers = futures_util::future::join_all((0..50).map(|i| {
        let base = if i % 2 == 0 {
            app.base.clone()
        } else {
            second.clone()
        };
        let (app, path) = (&app, &path);
        async move {
            app.post_as(&base, &app.key, path, &idem(), &json!({"amount": 30}))
                .await
        }
    }))
    .await;
    let accepted = answers
        .iter()
        .filter(|(s, _, _)| matches!(*s, StatusCode::CREATED | StatusCode::ACCEPTED))
        .count();
    let refused = answers
        .iter()
        .filter(|(s, _, b)| {
            *s == StatusCode::UNPROCESSABLE_ENTITY && code(b) == "refund_exceeds_remaining"
        })
        .count();
    assert_eq!(accepted, 33, "33 x 30 fit in 1000, 34 do not");
    assert_eq!(accepted + refused, 50, "{answers:?}");
    let held: i64 = sqlx::query_scalar(
        "SELECT coalesce(sum(amount), 0)::bigint FROM refunds WHERE payment_id = $1 AND status IN ('pending', 'succeeded')",
    )
    .bind(Uuid::parse_str(p["id"].as_str().unwrap()).unwrap())
    .fetch_one(&app.db)
    .await
    .unwrap();
    assert_eq!(held, 990);
    let at_stripe: i64 = app
        .gateway()
        .list_refunds(p["stripe_payment_intent_id"].as_str().unwrap())
        .await
        .unwrap()
        .iter()
        .filter(|r| r.stripe_status != "failed" && r.stripe_status != "canceled")
        .map(|r| r.amount)
        .sum();
    assert!(at_stripe <= 1000, "Stripe holds {at_stripe}");
    assert_eq!(at_stripe, 990);
}

#[tokio::test]
async fn manual_capture_in_full_in_part_and_after_the_authorization_expired() {
    let app = spawn_app().await;
    app.instant_refunds().await;
    // In full.
    let held = app.paid(1200, "manual", "pm_card_visa").await;
    assert_eq!(held["status"], "pending");
    assert_eq!(held["capture_method"], "manual");
    assert_eq!(held["stripe_status"], "requires_capture");
    let capture = format!("/v1/payments/{}/capture", held["id"].as_str().unwrap());
    let key = idem();
    let (status, _, captured) = app.post(&capture, &key, &json!({})).await;
    assert_eq!(status, StatusCode::OK, "{captured}");
    assert_eq!(
        (
            captured["status"].as_str(),
            captured["amount_captured"].as_i64()
        ),
        (Some("succeeded"), Some(1200))
    );
    let (status, headers, replay) = app.post(&capture, &key, &json!({})).await;
    assert_eq!(
        (status, replay["id"].clone()),
        (StatusCode::OK, captured["id"].clone())
    );
    assert_eq!(headers.get("idempotent-replayed").unwrap(), "true");
    let (status, _, again) = app.post(&capture, &idem(), &json!({})).await;
    assert_eq!(
        (status, code(&again)),
        (StatusCode::CONFLICT, "payment_not_capturable"),
        "a captured payment is not captured twice"
    );
    assert_eq!(again["payment"]["amount_captured"], 1200);

    // In part: the rest is released, and only what was captured can be refunded.
    let part = app.paid(1000, "manual", "pm_card_visa").await;
    let capture = format!("/v1/payments/{}/capture", part["id"].as_str().unwrap());
    let (status, _, over) = app
        .post(&capture, &idem(), &json!({"amount_to_capture": 1001}))
        .await;
    assert_eq!(
        (status, code(&over)),
        (
            StatusCode::UNPROCESSABLE_ENTITY,
            "capture_exceeds_authorized"
        )
    );
    let (status, _, captured) = app
        .post(&capture, &idem(), &json!({"amount_to_capture": 600}))
        .await;
    assert_eq!(status, StatusCode::OK, "{captured}");
    assert_eq!(captured["amount_captured"], 600);
    let (status, _, too_much) = app.refund(&part, &json!({"amount": 601})).await;
    assert_eq!(
        (status, code(&too_much)),
        (StatusCode::UNPROCESSABLE_ENTITY, "refund_exceeds_remaining")
    );
    let (status, _, all) = app.refund(&part, &json!({})).await;
    assert_eq!(
        (status, all["amount"].as_i64()),
        (StatusCode::CREATED, Some(600))
    );

    // An automatic payment is not captured by hand; an unpaid one is not capturable.
    let auto = app.paid(500, "automatic", "pm_card_visa").await;
    let (status, _, body) = app
        .post(
            &format!("/v1/payments/{}/capture", auto["id"].as_str().unwrap()),
            &idem(),
            &json!({}),
        )
        .await;
    assert_eq!(
        (status, code(&body)),
        (StatusCode::CONFLICT, "payment_not_capturable")
    );
    let (_, _, unpaid) = app
        .create(
            &idem(),
            &json!({"amount": 500, "currency": "usd", "capture_method": "manual"}),
        )
        .await;
    let (status, _, body) = app
        .post(
            &format!("/v1/payments/{}/capture", unpaid["id"].as_str().unwrap()),
            &idem(),
            &json!({}),
        )
        .await;
    assert_eq!(
        (status, code(&body)),
        (StatusCode::CONFLICT, "payment_not_capturable"),
        "{body}"
    );
    assert_eq!(body["payment"]["status"], "pending");

    // Stripe drops an uncaptured authorization after 7 days: the capture finds it
    // canceled, and so is ours.
    let expiring = app.paid(700, "manual", "pm_card_visa").await;
    app.advance_stripe_clock(7 * 24 * 3600 + 60).await;
    let (status, _, body) = app
        .post(
            &format!("/v1/payments/{}/capture", expiring["id"].as_str().unwrap()),
            &idem(),
            &json!({}),
        )
        .await;
    assert_eq!(
        (status, code(&body)),
        (StatusCode::CONFLICT, "payment_not_capturable"),
        "{body}"
    );
    assert_eq!(body["payment"]["status"], "canceled");
    let id: paystream_core::PaymentId = expiring["id"].as_str().unwrap().parse().unwrap();
    let row = payments::by_id(&app.primary, id).await.unwrap().unwrap();
    assert_eq!(row.status, PaymentStatus::Canceled);
}
