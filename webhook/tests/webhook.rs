//! The webhook receiver against the real primary and an in-process stripe-sim that
//! delivers to it, with faults on.

use std::sync::Arc;
use std::time::Duration;

use paystream_core::PaymentStatus;
use paystream_core::gateway::StripeGateway;
use paystream_service::Metrics;
use paystream_testkit::Stack;
use paystream_testkit::sim::SimWorld;
use paystream_webhook::catchup;
use paystream_webhook::{AppState, WebhookSettings, events, router};
use serde_json::{Value, json};
use uuid::Uuid;

struct Env {
    world: SimWorld,
    hook: String,
    secret: String,
    metrics: Arc<Metrics>,
}

impl std::ops::Deref for Env {
    type Target = SimWorld;
    fn deref(&self) -> &SimWorld {
        &self.world
    }
}

async fn setup(faults: Value) -> Env {
    let db = Stack::get().pool("DATABASE_URL").await;
    let world = SimWorld::start(db.clone()).await;
    let secret = format!("whsec_{}", Uuid::now_v7().simple());
    let settings = WebhookSettings {
        secrets: format!("whsec_old_unused,{secret}"),
        tolerance_secs: 300,
    };
    let metrics = Arc::new(Metrics::default());
    let hook = paystream_webhook::spawn_with(db.into(), &settings, metrics.clone())
        .await
        .unwrap();
    world.add_webhook_endpoint(&hook, &secret).await;
    world.set_faults(faults).await;
    Env {
        world,
        hook,
        secret,
        metrics,
    }
}

impl Env {
    /// Until every delivery was attempted at least once (faulted ones keep failing).
    async fn settle(&self) {
        for _ in 0..200 {
            if self
                .deliveries()
                .await
                .iter()
                .all(|d| d["state"] == "dropped" || d["attempt"].as_u64() > Some(0))
            {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("deliveries did not settle in 10 s");
    }

    /// A catch-up pass over every undelivered event: how many were new to us.
    async fn catch_up(&self) -> usize {
        let mut pace = catchup::Pace::new(catchup::PAGES_PER_SEC);
        catchup::run_once(&self.stripe, &self.primary, 0, &mut pace)
            .await
            .unwrap()
            .new
    }
}

#[tokio::test]
async fn with_faulty_deliveries_the_database_ends_equal_to_stripe() {
    let env = setup(
        json!({"webhook_duplicate_rate": 0.3, "webhook_reorder_window_ms": 300,
                           "webhook_stale_rate": 0.15, "webhook_bad_signature_rate": 0.15}),
    )
    .await;
    let mut payments = Vec::new();
    for i in 0..25 {
        let (id, pi) = env.payment().await;
        match i % 5 {
            0 => env.confirm(&pi, "pm_card_visa").await,
            1 => {
                env.confirm(&pi, "pm_card_chargeDeclined").await;
                env.confirm(&pi, "pm_card_visa").await;
            }
            2 => {
                env.confirm(&pi, "pm_card_threeDSecure2Required").await;
                env.authenticate(&pi, "succeed").await;
            }
            3 => {
                env.confirm(&pi, "pm_card_threeDSecure2Required").await;
                env.authenticate(&pi, "fail").await;
                env.stripe
                    .cancel_intent(&pi, Some("abandoned"), &format!("x-{pi}"))
                    .await
                    .unwrap();
            }
            _ => env.confirm(&pi, "pm_card_chargeDeclined").await,
        }
        payments.push((id, pi));
    }
    env.settle().await;
    let ids: Vec<Uuid> = payments.iter().map(|(id, _)| *id).collect();
    let by_webhook: i64 = sqlx::query_scalar("SELECT count(*) FROM stripe_events WHERE payment_id = ANY($1) AND source = 'webhook' AND outcome = 'applied'")
        .bind(&ids)
        .fetch_one(&env.db)
        .await
        .unwrap();
    assert!(by_webhook > 0, "webhooks resolved payments");
    // Every event that reached the database says where its time went, in both phases.
    let text = env.metrics.render(&[]);
    let count = |phase: &str| -> i64 {
        paystream_testkit::sample(
            &text,
            &format!("webhook_event_phase_seconds_count{{phase=\"{phase}\"}}"),
        )
    };
    assert!(count("pool") >= by_webhook, "{text}");
    assert_eq!(count("pool"), count("transaction"), "{text}");
    // Deliveries that were forged or stale were refused (and Stripe keeps them pending):
    // catch-up reads those events from Stripe's list.
    assert!(
        env.catch_up().await > 0,
        "catch-up found the refused deliveries' events"
    );

    for (id, pi) in &payments {
        let stripe = env.stripe_status(pi).await;
        let expected = PaymentStatus::from_stripe(&stripe).unwrap();
        let (ours, linked) = env.ours(*id).await;
        assert_eq!(
            ours,
            expected.as_str(),
            "payment {id}: Stripe says {stripe}"
        );
        assert_eq!(linked.as_deref(), Some(pi.as_str()));
        // Exactly one status change at most, never out of a final status.
        let history: Vec<(Option<String>, String)> = sqlx::query_as("SELECT from_status, to_status FROM payment_status_history WHERE payment_id = $1 ORDER BY id")
            .bind(id)
            .fetch_all(&env.db)
            .await
            .unwrap();
        let expected_history = if expected.is_final() { 2 } else { 1 };
        assert_eq!(history.len(), expected_history, "{id}: {history:?}");
    }
    let deliveries = env.deliveries().await;
    for d in deliveries.iter().filter(|d| !d["fault"].is_null()) {
        assert_eq!(
            d["last_status"], 400,
            "a forged or stale delivery must be refused: {d}"
        );
    }
    assert!(
        deliveries.iter().any(|d| d["duplicate"] == true),
        "the run had duplicates"
    );
}

#[tokio::test]
async fn forged_stale_and_malformed_requests_change_nothing() {
    let env = setup(json!({})).await;
    let (id, pi) = env.payment().await;
    let event_id = format!("evt_forged_{}", Uuid::now_v7().simple());
    let event = json!({"id": event_id, "type": "payment_intent.succeeded", "created": 1,
                       "data": {"object": {"id": pi, "status": "succeeded", "metadata": {"payment_id": id.to_string()}}}})
    .to_string();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    let sign = |secret: &str, t: i64, body: &str| {
        format!(
            "t={t},v1={}",
            stripe_sim::webhooks::signature(secret, t, body)
        )
    };
    let cases = [
        (None, event.clone(), "signature_missing"),
        (
            Some(sign("whsec_attacker", now, &event)),
            event.clone(),
            "signature_mismatch",
        ),
        (
            Some(sign(&env.secret, now - 3600, &event)),
            event.clone(),
            "signature_stale",
        ),
        (
            Some(sign(&env.secret, now, &event)),
            event.replace("payment_intent.succeeded", "payment_intent.canceled"),
            "signature_mismatch",
        ),
        (
            Some("t=abc".to_owned()),
            event.clone(),
            "signature_malformed",
        ),
        (
            Some(sign(&env.secret, now, "[1,2]")),
            "[1,2]".to_owned(),
            "event_malformed",
        ),
    ];
    for (sig, body, code) in cases {
        let mut req = env.http.post(&env.hook).body(body);
        if let Some(s) = sig {
            req = req.header("Stripe-Signature", s);
        }
        let res = req.send().await.unwrap();
        assert_eq!(res.status(), 400, "{code}");
        assert_eq!(res.json::<Value>().await.unwrap()["error"]["code"], code);
    }
    assert_eq!(
        env.ours(id).await.0,
        "pending",
        "no forged request changed anything"
    );
    let stored: i64 = sqlx::query_scalar("SELECT count(*) FROM stripe_events WHERE id = $1")
        .bind(&event_id)
        .fetch_one(&env.db)
        .await
        .unwrap();
    assert_eq!(stored, 0);

    // The same event, genuinely signed, is applied once; its duplicate does nothing.
    for expected in ["applied", "duplicate"] {
        let res = env
            .http
            .post(&env.hook)
            .header("Stripe-Signature", sign(&env.secret, now, &event))
            .body(event.clone())
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), 200);
        assert_eq!(res.json::<Value>().await.unwrap()["outcome"], expected);
    }
    assert_eq!(env.ours(id).await.0, "succeeded");
}

#[tokio::test]
async fn a_webhook_before_the_payment_row_commits_is_not_lost() {
    let env = setup(json!({})).await;
    // Stripe knows the intent (and our payment id) before our row exists.
    let id = Uuid::now_v7();
    let pi = env.intent_for(id).await;
    env.confirm(&pi, "pm_card_visa").await;
    env.settle().await;
    let outcome: String = sqlx::query_scalar("SELECT outcome FROM stripe_events WHERE payment_intent_id = $1 AND type = 'payment_intent.succeeded'")
        .bind(&pi)
        .fetch_one(&env.db)
        .await
        .unwrap();
    assert_eq!(
        outcome, "unmatched",
        "stored and acknowledged, not an error"
    );

    // Now the row commits (without the intent id: the API died before storing it).
    env.insert_pending(id).await;
    // Other tests' unmatched events may be retried by these calls too; ours must match
    // once its backoff (1 s after the first try) has passed.
    let started = std::time::Instant::now();
    while env.ours(id).await.0 != "succeeded" && started.elapsed() < Duration::from_secs(10) {
        events::retry_unmatched(&env.primary, 10_000, Duration::from_secs(3600))
            .await
            .unwrap();
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(env.ours(id).await, ("succeeded".to_owned(), Some(pi)));
}

/// I4: events that will never match (a payment id we have no row for) back off on their
/// own schedule instead of pinning the retry batch, and age into `orphaned`.
#[tokio::test]
async fn never_matching_events_neither_starve_real_ones_nor_stay_forever() {
    let env = setup(json!({})).await;
    // 600 foreign events, older than the one that matters, all due now: more than a
    // whole batch (500) of the retry loop.
    let tag = Uuid::now_v7().simple().to_string();
    sqlx::query(
        "INSERT INTO stripe_events (id, type, payment_intent_id, payload, source, outcome, stripe_created, received_at, next_attempt_at)
         SELECT 'evt_foreign_' || $1 || '_' || n, 'payment_intent.succeeded', 'pi_foreign_' || $1 || '_' || n,
                jsonb_build_object('id', 'evt_foreign_' || $1 || '_' || n, 'type', 'payment_intent.succeeded',
                    'data', jsonb_build_object('object', jsonb_build_object('id', 'pi_foreign_' || $1 || '_' || n,
                        'status', 'succeeded', 'metadata', jsonb_build_object('payment_id', gen_random_uuid()::text)))),
                'webhook', 'unmatched', 0, now() - interval '10 minutes', now() - interval '10 minutes'
         FROM generate_series(1, 600) n",
    )
    .bind(&tag)
    .execute(&env.db)
    .await
    .unwrap();
    let id = Uuid::now_v7();
    let pi = env.intent_for(id).await;
    env.confirm(&pi, "pm_card_visa").await;
    env.settle().await;
    env.insert_pending(id).await;
    let mut passes = 0;
    while env.ours(id).await.0 != "succeeded" {
        passes += 1;
        assert!(passes <= 20, "the real event was starved by foreign ones");
        events::retry_unmatched(&env.primary, 500, Duration::from_secs(3600))
            .await
            .unwrap();
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    let (attempts, next): (i32, bool) = sqlx::query_as(
        "SELECT min(attempts), bool_and(next_attempt_at > now() - interval '1 minute')
         FROM stripe_events WHERE id LIKE 'evt_foreign_' || $1 || '%'",
    )
    .bind(&tag)
    .fetch_one(&env.db)
    .await
    .unwrap();
    assert!(
        attempts >= 1 && next,
        "each foreign event was tried and rescheduled"
    );
    // Past the age bound they stop being retried and wait for an operator.
    let r = events::retry_unmatched(&env.primary, 500, Duration::from_secs(300))
        .await
        .unwrap();
    assert!(r.orphaned >= 600, "{r:?}");
    let orphaned: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM stripe_events_orphaned WHERE id LIKE 'evt_foreign_' || $1 || '%'",
    )
    .bind(&tag)
    .fetch_one(&env.db)
    .await
    .unwrap();
    assert_eq!(orphaned, 600);
    // They were this test's make-believe: out of the shared stack's reports.
    sqlx::query("DELETE FROM stripe_events WHERE id LIKE 'evt_foreign_' || $1 || '%'")
        .bind(&tag)
        .execute(&env.db)
        .await
        .unwrap();
}

#[tokio::test]
async fn catch_up_heals_a_webhook_outage() {
    let env = setup(json!({"webhook_drop_rate": 1.0})).await;
    let (id, pi) = env.payment().await;
    env.confirm(&pi, "pm_card_visa").await;
    env.settle().await;
    assert_eq!(
        env.ours(id).await.0,
        "pending",
        "every delivery was dropped"
    );
    assert!(env.catch_up().await >= 1);
    assert_eq!(env.ours(id).await.0, "succeeded");
    assert_eq!(env.catch_up().await, 0, "a second pass finds nothing new");
}

/// A pass lists only the events created since the previous pass started (less the
/// overlap), not every undelivered event of the lookback again.
#[tokio::test]
async fn a_catch_up_pass_reads_from_where_the_previous_one_started() {
    let env = setup(json!({"webhook_drop_rate": 1.0})).await;
    let (first, first_pi) = env.payment().await;
    env.confirm(&first_pi, "pm_card_visa").await;
    env.settle().await;
    // Stripe's `created` is in whole seconds: the pass starts in a later second.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let stripe = &env.stripe;
    let hour = Duration::from_secs(3600);
    let mut exact = catchup::Catchup::new(hour, Duration::ZERO);
    let mut overlapping = catchup::Catchup::new(hour, catchup::OVERLAP);
    let pass = exact.pass(stripe, &env.primary).await.unwrap();
    assert!(pass.new >= 1, "{pass:?}");
    assert_eq!(env.ours(first).await.0, "succeeded");
    let first_events = pass.listed;
    assert_eq!(
        overlapping.pass(stripe, &env.primary).await.unwrap(),
        catchup::Pass {
            listed: first_events,
            new: 0
        },
    );
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let (second, second_pi) = env.payment().await;
    env.confirm(&second_pi, "pm_card_visa").await;
    env.settle().await;
    let pass = exact.pass(stripe, &env.primary).await.unwrap();
    assert_eq!(env.ours(second).await.0, "succeeded");
    assert!(pass.new >= 1, "{pass:?}");
    assert_eq!(
        pass.listed, first_events,
        "only the second payment's events, as many as the first's"
    );
    // Within the overlap, both payments' events are read again (and are not new).
    assert_eq!(
        overlapping.pass(stripe, &env.primary).await.unwrap(),
        catchup::Pass {
            listed: 2 * first_events,
            new: 0
        },
    );
}

/// A 429 pauses a pass instead of ending it: under the limit, a pass still completes.
#[tokio::test]
async fn a_rate_limited_catch_up_pass_waits_and_completes() {
    let env = setup(json!({"webhook_drop_rate": 1.0})).await;
    let (id, pi) = env.payment().await;
    env.confirm(&pi, "pm_card_visa").await;
    env.settle().await;
    // One event-list request a second: the pass's second pattern is refused at first.
    env.set_world(json!({"per_endpoint_rate": 1})).await;
    let stripe = &env.stripe;
    assert!(
        matches!(
            stripe
                .list_events("refund.*", 0, true, None)
                .await
                .and(stripe.list_events("refund.*", 0, true, None).await),
            Err(paystream_core::gateway::GatewayError::RateLimited)
        ),
        "two requests at once are over the limit"
    );
    let mut catchup = catchup::Catchup::new(Duration::from_secs(3600), catchup::OVERLAP);
    let pass = catchup.pass(stripe, &env.primary).await.unwrap();
    assert!(pass.new >= 1, "{pass:?}");
    assert_eq!(env.ours(id).await.0, "succeeded");
}

/// The primary down: 503 so that Stripe retries; the event is not lost (nothing was
/// committed, so the retry is processed normally). Its metrics count every step.
#[tokio::test]
async fn a_dead_database_answers_503_so_stripe_retries() {
    let env = setup(json!({})).await;
    let dead = paystream_testkit::unreachable_primary();
    let metrics = Arc::new(Metrics::default());
    let settings = WebhookSettings {
        secrets: env.secret.clone(),
        tolerance_secs: 300,
    };
    let state = AppState::new(dead, &settings, metrics.clone());
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let hook = format!("http://{}/webhook/stripe", l.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(l, router(state)).await.unwrap() });
    let body = json!({"id": "evt_db_down", "type": "payment_intent.succeeded", "created": 1, "data": {"object": {"id": "pi_x", "status": "succeeded"}}}).to_string();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    let sig = format!(
        "t={now},v1={}",
        stripe_sim::webhooks::signature(&env.secret, now, &body)
    );
    let res = env
        .http
        .post(&hook)
        .header("Stripe-Signature", sig)
        .body(body)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 503);
    let bad = env
        .http
        .post(&hook)
        .header("Stripe-Signature", "t=1,v1=00")
        .body("{}")
        .send()
        .await
        .unwrap();
    assert_eq!(bad.status(), 400);
    let text = metrics.render(&[]);
    assert!(text.contains("webhook_received_total 2"), "{text}");
    assert!(text.contains("webhook_verified_total 1"), "{text}");
    assert!(
        text.contains("webhook_rejected_total{reason=\"signature_stale\"} 1"),
        "{text}"
    );
}

/// Refund events resolve refunds (and the payment's refunded sum) through the same path;
/// a refund whose deliveries were all dropped is healed by the catch-up; a manual capture
/// reaches us as the intent's events say (held, then captured in part).
#[tokio::test]
async fn refund_and_capture_events_resolve_them_and_catch_up_heals_dropped_ones() {
    let env = setup(json!({})).await;
    env.set_world(json!({"refund_ms": 500})).await;
    let (payment, pi) = env.paid("pm_card_visa").await;
    let first = env.refund(payment, &pi, 700, true).await;
    env.advance_clock(2).await;
    for _ in 0..100 {
        if env.refund_status(first).await == "succeeded" {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let (status, source, refunded): (String, Option<String>, i64) = sqlx::query_as(
        "SELECT r.status, r.resolution_source, p.amount_refunded FROM refunds r JOIN payments p ON p.id = r.payment_id WHERE r.id = $1",
    )
    .bind(first.as_uuid())
    .fetch_one(&env.db)
    .await
    .unwrap();
    assert_eq!(
        (status.as_str(), source.as_deref(), refunded),
        ("succeeded", Some("webhook"), 700)
    );

    env.set_faults(json!({"webhook_drop_rate": 1.0})).await;
    let second = env.refund(payment, &pi, 300, true).await;
    env.advance_clock(2).await;
    env.settle().await;
    assert_eq!(
        env.refund_status(second).await,
        "pending",
        "every delivery was dropped"
    );
    assert!(env.catch_up().await >= 1);
    assert_eq!(env.refund_status(second).await, "succeeded");
    let refunded: i64 = sqlx::query_scalar("SELECT amount_refunded FROM payments WHERE id = $1")
        .bind(payment.as_uuid())
        .fetch_one(&env.db)
        .await
        .unwrap();
    assert_eq!(refunded, 1000, "both refunds went back");

    env.set_faults(json!({})).await;
    let (held, held_pi) = env
        .payment_with(paystream_core::CaptureMethod::Manual)
        .await;
    env.confirm(&held_pi, "pm_card_visa").await;
    let stripe_status = || async {
        sqlx::query_scalar::<_, Option<String>>("SELECT stripe_status FROM payments WHERE id = $1")
            .bind(held)
            .fetch_one(&env.db)
            .await
            .unwrap()
    };
    for _ in 0..100 {
        if stripe_status().await.as_deref() == Some("requires_capture") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(stripe_status().await.as_deref(), Some("requires_capture"));
    assert_eq!(env.ours(held).await.0, "pending", "held, not taken");
    // The intent's `created` event, delivered last (deliveries race, retries reorder
    // them), does not put the held intent back to requires_payment_method.
    let late = json!({"id": format!("evt_late_{}", Uuid::now_v7().simple()),
                      "type": "payment_intent.created", "created": 1,
                      "data": {"object": {"object": "payment_intent", "id": held_pi,
                               "status": "requires_payment_method", "amount": 2000,
                               "metadata": {"payment_id": held.to_string()}}}})
    .to_string();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    let res = env
        .http
        .post(&env.hook)
        .header(
            "Stripe-Signature",
            format!(
                "t={now},v1={}",
                stripe_sim::webhooks::signature(&env.secret, now, &late)
            ),
        )
        .body(late)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    assert_eq!(res.json::<Value>().await.unwrap()["outcome"], "ignored");
    assert_eq!(
        stripe_status().await.as_deref(),
        Some("requires_capture"),
        "a late created event regressed the held intent"
    );
    // It can change nothing, so it costs the primary nothing: not even the event's row,
    // neither this delivery's nor stripe-sim's own.
    let stored: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM stripe_events WHERE payment_intent_id = $1 AND type = 'payment_intent.created'",
    )
    .bind(&held_pi)
    .fetch_one(&env.db)
    .await
    .unwrap();
    assert_eq!(stored, 0, "payment_intent.created events were stored");
    env.stripe
        .capture_intent(&held_pi, Some(1500), "test-capture")
        .await
        .unwrap();
    for _ in 0..100 {
        if env.ours(held).await.0 == "succeeded" {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let captured: Option<i64> =
        sqlx::query_scalar("SELECT amount_captured FROM payments WHERE id = $1")
            .bind(held)
            .fetch_one(&env.db)
            .await
            .unwrap();
    assert_eq!(captured, Some(1500), "what Stripe took, not the amount");
}

/// One event delivered many times at once (Stripe retries while the first is still in
/// flight): applied once, stored once, one status change; every other delivery is a
/// duplicate and changes nothing. The same for an event that matches nothing yet: one
/// stored row, waiting for its first retry.
#[tokio::test]
async fn concurrent_deliveries_of_one_event_apply_it_once() {
    let db = Stack::get().pool("DATABASE_URL").await;
    let primary: paystream_db::Primary = db.clone().into();
    let id = Uuid::now_v7();
    let pi = format!("pi_race_{}", id.simple());
    sqlx::query("INSERT INTO payments (id, client_id, idempotency_key, amount, currency, metadata, stripe_payment_intent_id) VALUES ($1, $1, $2, 900, 'usd', '{}', $3)")
        .bind(id)
        .bind(format!("race-{id}"))
        .bind(&pi)
        .execute(&db)
        .await
        .unwrap();
    let event = |event_id: &str, intent: &str, payment: Uuid| {
        json!({"id": event_id, "object": "event", "type": "payment_intent.succeeded", "created": 1_700_000_000,
               "data": {"object": {"id": intent, "object": "payment_intent", "status": "succeeded",
                                   "amount": 900, "amount_received": 900, "currency": "usd",
                                   "metadata": {"payment_id": payment.to_string()}}}})
    };
    let deliver_8_times = |e: Value| {
        let primary = primary.clone();
        async move {
            let deliveries = (0..8).map(|_| {
                let (primary, e) = (primary.clone(), e.clone());
                tokio::spawn(async move {
                    events::process(&primary, &e, paystream_db::events::Via::Webhook)
                        .await
                        .unwrap()
                })
            });
            let mut outcomes = Vec::new();
            for d in deliveries.collect::<Vec<_>>() {
                outcomes.push(d.await.unwrap());
            }
            outcomes.sort_by_key(|o| o.as_str());
            outcomes
        }
    };

    let applied = format!("evt_race_{}", id.simple());
    let outcomes = deliver_8_times(event(&applied, &pi, id)).await;
    let duplicates = vec![events::Outcome::Duplicate; 7];
    assert_eq!(
        outcomes,
        [vec![events::Outcome::Applied], duplicates.clone()].concat()
    );
    let (status, changes): (String, i64) = sqlx::query_as(
        "SELECT p.status, (SELECT count(*) FROM payment_status_history h WHERE h.payment_id = p.id AND h.to_status = 'succeeded')
         FROM payments p WHERE p.id = $1",
    )
    .bind(id)
    .fetch_one(&db)
    .await
    .unwrap();
    assert_eq!((status.as_str(), changes), ("succeeded", 1));
    let stored: (String, Option<Uuid>, i32) =
        sqlx::query_as("SELECT outcome, payment_id, attempts FROM stripe_events WHERE id = $1")
            .bind(&applied)
            .fetch_one(&db)
            .await
            .unwrap();
    assert_eq!(stored, ("applied".into(), Some(id), 0));

    // Our payment id, but no row for it (yet): stored once, unmatched, retried in 1 s.
    let missing = Uuid::now_v7();
    let unmatched = format!("evt_race_{}", missing.simple());
    let outcomes = deliver_8_times(event(
        &unmatched,
        &format!("pi_race_{}", missing.simple()),
        missing,
    ))
    .await;
    assert_eq!(
        outcomes,
        [duplicates, vec![events::Outcome::Unmatched]].concat()
    );
    let (outcome, attempts, wait_ms): (String, i32, f64) = sqlx::query_as(
        "SELECT outcome, attempts, extract(epoch FROM next_attempt_at - processed_at)::float8 * 1000 FROM stripe_events WHERE id = $1",
    )
    .bind(&unmatched)
    .fetch_one(&db)
    .await
    .unwrap();
    assert_eq!((outcome.as_str(), attempts), ("unmatched", 1));
    assert!(
        (wait_ms - 1000.0).abs() < 1.0,
        "first retry after 1 s, not {wait_ms} ms"
    );
}
