//! The reconciler on the real stack: real primary and replicas, Debezium, the broker, and
//! a Stripe stand-in of each test's own. Reconcilers run as real processes (the built
//! binary), in a consumer group and with an output topic of each test's own, on a short
//! poll schedule, so they can be killed with SIGKILL and rebalanced.

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use paystream_core::PaymentStatus;
use paystream_core::gateway::StripeGateway;
use paystream_db::payments::Source;
use paystream_reconciler::output;
use paystream_reconciler::poll::{self, Outcome, Rules, Target};
use paystream_reconciler::schedule::Schedule;
use paystream_testkit::sim::SimWorld;
use paystream_testkit::{Record, Stack};
use paystream_webhook::WebhookSettings;
use serde_json::json;
use uuid::Uuid;

mod common;

use common::{Reconciler, group};

/// The big runs share two cores with the whole stack: one at a time.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// A stripe-sim that delivers its webhooks, with `faults`, to a receiver of its own on
/// the real primary.
async fn world_with_webhooks(stack: &Stack, faults: serde_json::Value) -> SimWorld {
    let db = stack.pool("DATABASE_URL").await;
    let world = SimWorld::start(db.clone()).await;
    let secret = format!("whsec_{}", Uuid::now_v7().simple());
    let settings = WebhookSettings {
        secrets: secret.clone(),
        tolerance_secs: 300,
    };
    let hook = paystream_webhook::spawn(db.into(), &settings)
        .await
        .unwrap();
    world.add_webhook_endpoint(&hook, &secret).await;
    world.set_faults(faults).await;
    world
}

/// The kinds of payment a run mixes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Success,
    DeclineThenSuccess,
    ThreeDs,
    ThreeDsFailedThenAbandoned,
    Abandoned,
}

const KINDS: [Kind; 5] = [
    Kind::Success,
    Kind::DeclineThenSuccess,
    Kind::ThreeDs,
    Kind::ThreeDsFailedThenAbandoned,
    Kind::Abandoned,
];

async fn act(world: &SimWorld, pi: &str, kind: Kind) {
    match kind {
        Kind::Success => world.confirm(pi, "pm_card_visa").await,
        Kind::DeclineThenSuccess => {
            world.confirm(pi, "pm_card_chargeDeclined").await;
            world.confirm(pi, "pm_card_visa").await;
        }
        Kind::ThreeDs => {
            world.confirm(pi, "pm_card_threeDSecure2Required").await;
            world.authenticate(pi, "succeed").await;
        }
        Kind::ThreeDsFailedThenAbandoned => {
            world.confirm(pi, "pm_card_threeDSecure2Required").await;
            world.authenticate(pi, "fail").await;
        }
        Kind::Abandoned => {}
    }
}

/// Creates payments number `range` of a run (the API's way) and drives each at Stripe,
/// 50 at a time; the kind of each follows its number.
async fn run_payments(
    world: &SimWorld,
    range: std::ops::Range<usize>,
) -> Vec<(Uuid, String, Kind)> {
    let mut out = Vec::with_capacity(range.len());
    for start in range.clone().step_by(50) {
        let made = futures_util::future::join_all((start..range.end.min(start + 50)).map(
            |i| async move {
                let kind = KINDS[i % KINDS.len()];
                let (id, pi) = world.payment().await;
                act(world, &pi, kind).await;
                (id, pi, kind)
            },
        ))
        .await;
        out.extend(made);
    }
    out
}

/// Waits until every payment is final in our database and equal to Stripe's status,
/// then checks the histories and the published updates.
async fn assert_converged(
    stack: &Stack,
    world: &SimWorld,
    status_topic: &str,
    payments: &[(Uuid, String, Kind)],
    limit: Duration,
) {
    let started = Instant::now();
    let ids: Vec<Uuid> = payments.iter().map(|(id, _, _)| *id).collect();
    let mut mismatched = Vec::new();
    loop {
        let rows: Vec<(Uuid, String)> =
            sqlx::query_as("SELECT id, status FROM payments WHERE id = ANY($1)")
                .bind(&ids)
                .fetch_all(&world.db)
                .await
                .unwrap();
        let ours: HashMap<Uuid, String> = rows.into_iter().collect();
        mismatched.clear();
        for (id, pi, kind) in payments {
            let stripe = world.stripe_status(pi).await;
            let want = PaymentStatus::from_stripe(&stripe).expect("known status");
            let have = ours.get(id).map(String::as_str).unwrap_or("missing");
            if !want.is_final() || have != want.as_str() {
                mismatched.push(format!("{id} {kind:?}: stripe {stripe}, ours {have}"));
            }
        }
        if mismatched.is_empty() {
            break;
        }
        assert!(
            started.elapsed() < limit,
            "{} of {} payments not final and equal to Stripe after {limit:?}, e.g. {:?}",
            mismatched.len(),
            payments.len(),
            &mismatched[..mismatched.len().min(5)]
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    // Histories: created pending, then exactly one change, to a final status.
    let bad: Vec<(Uuid, i64, i64)> = sqlx::query_as(
        "SELECT payment_id, count(*) FILTER (WHERE from_status IS NOT NULL),
                count(*) FILTER (WHERE from_status IS NOT NULL AND from_status <> 'pending')
         FROM payment_status_history WHERE payment_id = ANY($1)
         GROUP BY payment_id
         HAVING count(*) FILTER (WHERE from_status IS NOT NULL) <> 1
             OR count(*) FILTER (WHERE from_status IS NOT NULL AND from_status <> 'pending') > 0",
    )
    .bind(&ids)
    .fetch_all(&world.db)
    .await
    .unwrap();
    assert!(bad.is_empty(), "illegal or repeated transitions: {bad:?}");
    // Published updates, deduplicated by payment id: one final status each, ours.
    let wanted: HashSet<Uuid> = ids.iter().copied().collect();
    let seen = |msgs: &[Record]| {
        msgs.iter()
            .filter_map(|(_, v)| v.as_deref().and_then(|v| output::decode(v).ok()))
            .filter(|u| wanted.contains(&u.payment_id))
            .map(|u| u.payment_id)
            .collect::<HashSet<_>>()
            .len()
            == wanted.len()
    };
    let msgs = stack
        .read_topic(status_topic, Duration::from_secs(15), seen)
        .await;
    let mut published: HashMap<Uuid, HashSet<PaymentStatus>> = HashMap::new();
    for (key, value) in &msgs {
        let u = output::decode(value.as_deref().expect("no tombstones")).expect("avro");
        assert_eq!(
            key.as_deref(),
            Some(u.payment_id.to_string().as_bytes()),
            "keyed by payment id"
        );
        if wanted.contains(&u.payment_id) {
            published.entry(u.payment_id).or_default().insert(u.status);
        }
    }
    for (id, _, kind) in payments {
        let (ours, _) = world.ours(*id).await;
        let statuses = published.get(id).cloned().unwrap_or_default();
        assert_eq!(
            statuses.iter().map(|s| s.as_str()).collect::<Vec<_>>(),
            [ours.as_str()],
            "{id} ({kind:?}): published {statuses:?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn with_webhooks_off_polling_alone_reaches_stripes_final_status() {
    let _serial = SERIAL.lock().await;
    let stack = Stack::get();
    let world = SimWorld::start(stack.pool("DATABASE_URL").await).await;
    let g = group(stack, &world).await;
    let mut r = Reconciler::start("rec-nowebhooks", g.env.clone());
    r.wait_loaded().await;

    let mut payments = run_payments(&world, 0..20).await;
    // One whose PaymentIntent the API never managed to create: the reconciler creates it
    // (same idempotency key) once it is older than create_after; then the customer pays.
    let orphan = Uuid::now_v7();
    world.insert_pending(orphan).await;
    let started = Instant::now();
    let pi = loop {
        if let (_, Some(pi)) = world.ours(orphan).await {
            break pi;
        }
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "no intent created for the orphan"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert_eq!(
        world
            .stripe
            .retrieve_intent(&pi)
            .await
            .unwrap()
            .payment_id
            .as_deref(),
        Some(orphan.to_string().as_str())
    );
    world.confirm(&pi, "pm_card_visa").await;
    payments.push((orphan, pi, Kind::Success));

    assert_converged(
        stack,
        &world,
        &g.status_topic,
        &payments,
        Duration::from_secs(90),
    )
    .await;
    for (id, _, kind) in &payments {
        let source: Option<String> =
            sqlx::query_scalar("SELECT resolution_source FROM payments WHERE id = $1")
                .bind(id)
                .fetch_one(&world.db)
                .await
                .unwrap();
        let want = match kind {
            Kind::Abandoned | Kind::ThreeDsFailedThenAbandoned => "expiry",
            _ => "poll",
        };
        assert_eq!(source.as_deref(), Some(want), "{id} {kind:?}");
    }
    let m = r.metrics().await;
    assert!(
        m.contains("reconciler_polls_total{outcome=\"resolved\"}"),
        "{m}"
    );
    assert!(
        m.contains("reconciler_polls_total{outcome=\"expired\"}"),
        "{m}"
    );
    r.terminate();
}

/// With webhooks off and every scheduled poll ten minutes away, payments confirmed (and
/// canceled) at Stripe resolve within seconds: the event sweep puts their polls first,
/// ahead of whatever else is pending (the stack's leftovers, all overdue). Payments
/// Stripe did not move stay pending.
#[tokio::test(flavor = "multi_thread")]
async fn the_event_sweep_resolves_moved_payments_long_before_their_polls() {
    let _serial = SERIAL.lock().await;
    let stack = Stack::get();
    let world = SimWorld::start(stack.pool("DATABASE_URL").await).await;
    let mut g = group(stack, &world).await;
    for (k, v) in [
        ("APP_POLL__FIRST_MS", "600000"),
        ("APP_POLL__FREQUENT_MS", "600000"),
        ("APP_POLL__SLOW_MS", "600000"),
        ("APP_POLL__SWEEP_EVERY_MS", "500"),
    ] {
        g.env.retain(|(name, _)| name != k);
        g.env.push((k.to_owned(), v.to_owned()));
    }
    let mut r = Reconciler::start("rec-sweep", g.env.clone());
    r.wait_loaded().await;

    let mut moved = Vec::new();
    let mut untouched = Vec::new();
    for i in 0..12 {
        let (id, pi) = world.payment().await;
        match i % 3 {
            0 => {
                world.confirm(&pi, "pm_card_visa").await;
                moved.push((id, "succeeded"));
            }
            1 => {
                world
                    .stripe
                    .cancel_intent(&pi, None, &format!("t-{id}"))
                    .await
                    .unwrap();
                moved.push((id, "canceled"));
            }
            _ => untouched.push(id),
        }
    }
    let started = Instant::now();
    for (id, want) in &moved {
        loop {
            let (status, _) = world.ours(*id).await;
            if status == *want {
                break;
            }
            assert!(
                started.elapsed() < Duration::from_secs(20),
                "{id} still {status} after 20 s; its first scheduled poll is 10 min away"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let source: Option<String> =
            sqlx::query_scalar("SELECT resolution_source FROM payments WHERE id = $1")
                .bind(id)
                .fetch_one(&world.db)
                .await
                .unwrap();
        assert_eq!(source.as_deref(), Some("poll"), "{id}");
    }
    for id in &untouched {
        assert_eq!(
            world.ours(*id).await.0,
            "pending",
            "{id} never moved at Stripe"
        );
    }
    let m = r.metrics().await;
    let value = |name: &str| -> u64 {
        m.lines()
            .find_map(|l| l.strip_prefix(name)?.trim().parse().ok())
            .unwrap_or(0)
    };
    assert!(
        value("reconciler_sweep_nudges_total") >= moved.len() as u64,
        "{m}"
    );
    assert!(
        m.contains("stripe_calls_total{operation=\"list_events\",outcome=\"ok\"}"),
        "{m}"
    );
    r.terminate();
}

#[tokio::test(flavor = "multi_thread")]
async fn a_thousand_payments_survive_faulty_webhooks_and_two_sigkills() {
    let _serial = SERIAL.lock().await;
    let stack = Stack::get();
    let world = world_with_webhooks(
        stack,
        json!({"webhook_drop_rate": 0.3, "webhook_duplicate_rate": 0.2, "webhook_reorder_window_ms": 500}),
    )
    .await;
    let g = group(stack, &world).await;
    let mut r = Reconciler::start("rec-sigkill", g.env.clone());
    r.wait_loaded().await;

    // SIGKILL in the middle of the run, twice; each time the replacement starts at once
    // and payments keep coming while it rejoins the group and rebuilds its state.
    let mut payments = run_payments(&world, 0..300).await;
    r.kill9();
    r.restart();
    payments.extend(run_payments(&world, 300..650).await);
    r.wait_loaded().await;
    r.kill9();
    r.restart();
    payments.extend(run_payments(&world, 650..1000).await);
    assert_converged(
        stack,
        &world,
        &g.status_topic,
        &payments,
        Duration::from_secs(240),
    )
    .await;
    let deliveries = world.deliveries().await;
    assert!(
        deliveries.iter().any(|d| d["state"] == "dropped"),
        "the run dropped webhooks"
    );
    assert!(
        deliveries.iter().any(|d| d["duplicate"] == true),
        "the run duplicated webhooks"
    );
    let by_poll: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM payments WHERE id = ANY($1) AND resolution_source = 'poll'",
    )
    .bind(payments.iter().map(|p| p.0).collect::<Vec<_>>())
    .fetch_one(&world.db)
    .await
    .unwrap();
    assert!(
        by_poll > 0,
        "polls resolved the payments whose webhooks were dropped"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn two_instances_share_the_partitions_through_rebalances() {
    let _serial = SERIAL.lock().await;
    let stack = Stack::get();
    let world = world_with_webhooks(stack, json!({"webhook_drop_rate": 0.5})).await;
    let g = group(stack, &world).await;
    let mut a = Reconciler::start("rec-a", g.env.clone());
    a.wait_loaded().await;
    let mut payments = run_payments(&world, 0..100).await;
    let mut b = Reconciler::start("rec-b", g.env.clone());
    payments.extend(run_payments(&world, 100..300).await);
    b.wait_loaded().await;
    // Both hold partitions, and none twice.
    let held = |m: &str| -> HashSet<String> {
        m.lines()
            .filter(|l| l.starts_with("reconciler_pending{"))
            .filter_map(|l| l.split('"').nth(1).map(str::to_owned))
            .collect()
    };
    let started = Instant::now();
    loop {
        let (ha, hb) = (held(&a.metrics().await), held(&b.metrics().await));
        if !ha.is_empty() && !hb.is_empty() && ha.is_disjoint(&hb) && ha.len() + hb.len() == 4 {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "partitions not shared: a {ha:?}, b {hb:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // b leaves gracefully in the middle of the resolutions: a takes its partitions back.
    tokio::time::sleep(Duration::from_secs(3)).await;
    b.terminate();
    assert_converged(
        stack,
        &world,
        &g.status_topic,
        &payments,
        Duration::from_secs(180),
    )
    .await;
    assert_eq!(
        held(&a.metrics().await).len(),
        4,
        "a holds every partition after b left"
    );
}

// The poll itself, called directly against the real primary and a stripe-sim.

fn rules() -> Rules {
    Rules {
        schedule: Schedule {
            expire_after: Duration::from_secs(3600),
            ..Schedule::default()
        },
        create_after: chrono::Duration::seconds(60),
        misses_before_attention: 3,
        attention_after: chrono::Duration::minutes(10),
    }
}

/// One poll of `t` at `now` under the tests' rules.
async fn poll_at(world: &SimWorld, t: &Target, now: DateTime<Utc>) -> Outcome {
    poll::poll(&world.stripe, &world.primary, t, &rules(), now)
        .await
        .unwrap()
}

#[tokio::test]
async fn a_poll_applies_stripes_final_status_and_expiry_cancels_at_stripe_first() {
    let stack = Stack::get();
    let world = SimWorld::start(stack.pool("DATABASE_URL").await).await;
    let now = Utc::now();
    let old = now - chrono::Duration::hours(2);

    let (paid, pi) = world.payment().await;
    world.confirm(&pi, "pm_card_visa").await;
    let target = |id, pi: &str, created_at| Target {
        id,
        intent: Some(pi.to_owned()),
        created_at,
        misses: 0,
    };
    let out = poll_at(&world, &target(paid, &pi, now), now).await;
    assert_eq!(
        out,
        Outcome::Resolved {
            to: PaymentStatus::Succeeded,
            source: Source::Poll
        }
    );
    let again = poll_at(&world, &target(paid, &pi, now), now).await;
    assert_eq!(
        again,
        Outcome::AlreadyFinal,
        "a second poll changes nothing"
    );

    let (open, pi) = world.payment().await;
    let young = poll_at(&world, &target(open, &pi, now), now).await;
    assert_eq!(young, Outcome::Pending);
    let expired = poll_at(&world, &target(open, &pi, old), now).await;
    assert_eq!(
        expired,
        Outcome::Resolved {
            to: PaymentStatus::Canceled,
            source: Source::Expiry
        }
    );
    assert_eq!(
        world.stripe_status(&pi).await,
        "canceled",
        "canceled at Stripe too"
    );

    // An authorization waiting for our capture is not ours to expire: Stripe holds it
    // for 7 days, then cancels it itself, and the poll follows.
    let (held, pi) = world
        .payment_with(paystream_core::CaptureMethod::Manual)
        .await;
    world.confirm(&pi, "pm_card_visa").await;
    let out = poll_at(&world, &target(held, &pi, old), now).await;
    assert_eq!(out, Outcome::Pending, "past our age limit, still held");
    assert_eq!(world.stripe_status(&pi).await, "requires_capture");
    world.advance_clock(7 * 24 * 3600 + 60).await;
    let out = poll_at(&world, &target(held, &pi, old), now).await;
    assert_eq!(
        out,
        Outcome::Resolved {
            to: PaymentStatus::Canceled,
            source: Source::Poll
        },
        "Stripe dropped the authorization"
    );

    // The customer pays just before the expiry's cancel: the success wins.
    let (raced, pi) = world.payment().await;
    world.confirm(&pi, "pm_card_visa").await;
    let out = poll_at(&world, &target(raced, &pi, old), now).await;
    assert_eq!(
        out,
        Outcome::Resolved {
            to: PaymentStatus::Succeeded,
            source: Source::Poll
        }
    );

    let ghost = Uuid::now_v7();
    world.insert_pending(ghost).await;
    let out = poll_at(&world, &target(ghost, "pi_unknown_to_stripe", now), now).await;
    assert_eq!(
        out,
        Outcome::NotFound,
        "a report's missing_at_stripe, never guessed"
    );
    // The third miss in a row of a payment old enough: it goes to an operator and is no
    // longer polled. (A young one's misses may be a Stripe blip: polled on.)
    let young = Target {
        misses: 2,
        ..target(ghost, "pi_unknown_to_stripe", now)
    };
    assert_eq!(poll_at(&world, &young, now).await, Outcome::NotFound);
    let third = Target {
        misses: 2,
        ..target(
            ghost,
            "pi_unknown_to_stripe",
            now - chrono::Duration::minutes(11),
        )
    };
    assert_eq!(
        poll_at(&world, &third, now).await,
        Outcome::Flagged(paystream_db::payments::Attention::UnknownAtStripe)
    );
    let (status, attention): (String, Option<String>) =
        sqlx::query_as("SELECT status, attention FROM payments WHERE id = $1")
            .bind(ghost)
            .fetch_one(&world.db)
            .await
            .unwrap();
    assert_eq!(
        (status.as_str(), attention.as_deref()),
        ("pending", Some("unknown_at_stripe"))
    );
}

#[tokio::test]
async fn an_orphan_gets_the_apis_intent_or_is_expired_without_one() {
    let stack = Stack::get();
    let world = SimWorld::start(stack.pool("DATABASE_URL").await).await;
    let now = Utc::now();
    let orphan = |id| Target {
        id,
        intent: None,
        created_at: now - chrono::Duration::minutes(5),
        misses: 0,
    };

    // The API created the intent at Stripe but died before storing its id.
    let id = Uuid::now_v7();
    world.insert_pending(id).await;
    let pi = world.intent_for(id).await;
    let out = poll_at(&world, &orphan(id), now).await;
    assert_eq!(out, Outcome::Pending);
    assert_eq!(
        world.ours(id).await.1.as_deref(),
        Some(pi.as_str()),
        "the same intent, not a second one"
    );

    // Younger than create_after: the API may still be at it, so nothing is created.
    let young = Uuid::now_v7();
    world.insert_pending(young).await;
    let t = Target {
        created_at: now,
        ..orphan(young)
    };
    assert_eq!(poll_at(&world, &t, now).await, Outcome::Pending);
    assert_eq!(world.ours(young).await.1, None);

    // Past the age limit with no intent anywhere: canceled on our side alone.
    let lost = Uuid::now_v7();
    world.insert_pending(lost).await;
    let t = Target {
        created_at: now - chrono::Duration::hours(2),
        ..orphan(lost)
    };
    let out = poll_at(&world, &t, now).await;
    assert_eq!(
        out,
        Outcome::Resolved {
            to: PaymentStatus::Canceled,
            source: Source::Expiry
        }
    );
}
