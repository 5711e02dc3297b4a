//! Refunds through the real pipeline: pending rows committed the API's way (key and
//! reserved amount), Debezium's refunds topic, the reconciler's refund worker as a real
//! process, a Stripe stand-in of each test's own, `refund-status-update` out.

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use paystream_core::gateway::StripeGateway;
use paystream_core::{RefundId, RefundStatus};
use paystream_reconciler::refunds::output;
use paystream_testkit::Stack;
use paystream_testkit::sim::{BeginRefund, SimWorld};
use paystream_webhook::WebhookSettings;
use serde_json::json;
use uuid::Uuid;

mod common;

use common::{Reconciler, group};

static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// Our status, source and Stripe refund id of each refund.
async fn ours(
    world: &SimWorld,
    ids: &[RefundId],
) -> HashMap<Uuid, (String, Option<String>, Option<String>)> {
    let ids: Vec<Uuid> = ids.iter().map(|r| r.as_uuid()).collect();
    let rows: Vec<(Uuid, String, Option<String>, Option<String>)> = sqlx::query_as(
        "SELECT id, status, resolution_source, stripe_refund_id FROM refunds WHERE id = ANY($1)",
    )
    .bind(&ids)
    .fetch_all(&world.db)
    .await
    .unwrap();
    rows.into_iter()
        .map(|(i, s, src, re)| (i, (s, src, re)))
        .collect()
}

/// Until every refund is `want` in our database, or `limit` passes.
async fn wait_all(world: &SimWorld, ids: &[RefundId], want: &str, limit: Duration) {
    let started = Instant::now();
    loop {
        let rows = ours(world, ids).await;
        let behind: Vec<_> = ids
            .iter()
            .filter(|id| rows.get(&id.as_uuid()).map(|r| r.0.as_str()) != Some(want))
            .collect();
        if behind.is_empty() {
            return;
        }
        assert!(
            started.elapsed() < limit,
            "{} of {} refunds not {want} after {limit:?}: {:?}",
            behind.len(),
            ids.len(),
            behind
                .iter()
                .take(3)
                .map(|id| rows.get(&id.as_uuid()))
                .collect::<Vec<_>>()
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}

/// The statuses published for each of `ids`, once each has at least `min` messages.
async fn published(
    stack: &Stack,
    topic: &str,
    ids: &[RefundId],
    min: usize,
) -> HashMap<Uuid, Vec<RefundStatus>> {
    let wanted: HashSet<Uuid> = ids.iter().map(|r| r.as_uuid()).collect();
    let count = |msgs: &[paystream_testkit::Record]| {
        let mut n: HashMap<Uuid, usize> = HashMap::new();
        for u in msgs
            .iter()
            .filter_map(|(_, v)| v.as_deref().and_then(|v| output::decode(v).ok()))
            .filter(|u| wanted.contains(&u.refund_id))
        {
            *n.entry(u.refund_id).or_default() += 1;
        }
        n.len() == wanted.len() && n.values().all(|c| *c >= min)
    };
    let msgs = stack
        .read_topic(topic, Duration::from_secs(20), count)
        .await;
    let mut out: HashMap<Uuid, Vec<RefundStatus>> = HashMap::new();
    for (key, value) in &msgs {
        let u = output::decode(value.as_deref().expect("no tombstones")).expect("avro");
        assert_eq!(key.as_deref(), Some(u.refund_id.to_string().as_bytes()));
        if wanted.contains(&u.refund_id) {
            out.entry(u.refund_id).or_default().push(u.status);
        }
    }
    out
}

async fn reconcilers(stack: &Stack, world: &SimWorld, name: &str) -> (Reconciler, String) {
    let mut g = group(stack, world).await;
    let topic = format!("refund-status-update-test-{}", Uuid::now_v7().simple());
    stack.create_topic(&topic, 4).await;
    g.env
        .push(("APP_KAFKA__REFUND_STATUS_TOPIC".into(), topic.clone()));
    let mut r = Reconciler::start(name, g.env.clone());
    r.wait_loaded().await;
    r.wait_refunds_loaded().await;
    (r, topic)
}

/// Webhooks off: every refund resolves by poll, those the API never sent are sent by the
/// reconciler (found or created with the refund's own key: one Stripe refund each), and a
/// reconciler killed with SIGKILL mid-run loses none.
#[tokio::test(flavor = "multi_thread")]
async fn with_webhooks_off_polls_resolve_refunds_and_a_sigkill_loses_none() {
    let _serial = SERIAL.lock().await;
    let stack = Stack::get();
    let world = SimWorld::start(stack.pool("DATABASE_URL").await).await;
    world.set_world(json!({"refund_ms": 1500})).await;
    let (mut r, topic) = reconcilers(stack, &world, "rec-refunds-poll").await;

    let mut ids = Vec::new();
    let mut pis = HashMap::new();
    for i in 0..12 {
        let (p, pi) = world.paid("pm_card_visa").await;
        // Two partial refunds of each payment; every fourth never reached Stripe.
        for part in [300, 500] {
            let id = world.refund(p, &pi, part, i % 4 != 0).await;
            pis.insert(id, pi.clone());
            ids.push(id);
        }
        if i == 5 {
            tokio::time::sleep(Duration::from_millis(800)).await;
            r.kill9();
            r.restart();
        }
    }
    r.wait_loaded().await;
    r.wait_refunds_loaded().await;
    wait_all(&world, &ids, "succeeded", Duration::from_secs(90)).await;

    let rows = ours(&world, &ids).await;
    for (id, pi) in &pis {
        let (_, source, re) = &rows[&id.as_uuid()];
        assert_eq!(source.as_deref(), Some("poll"), "{id}: webhooks are off");
        // One refund at Stripe per refund of ours, the one we hold.
        let at_stripe: Vec<_> = world
            .stripe
            .list_refunds(pi)
            .await
            .unwrap()
            .into_iter()
            .filter(|x| x.refund_id.as_deref() == Some(id.to_string().as_str()))
            .collect();
        assert_eq!(at_stripe.len(), 1, "{id}: {at_stripe:?}");
        assert_eq!(re.as_deref(), Some(at_stripe[0].id.as_str()));
    }
    // Every payment says what went back.
    let refunded: Vec<(i64, i64)> = sqlx::query_as(
        "SELECT p.amount_refunded, (SELECT sum(amount) FROM refunds r WHERE r.payment_id = p.id AND r.status = 'succeeded')::bigint
         FROM payments p WHERE p.id IN (SELECT payment_id FROM refunds WHERE id = ANY($1))",
    )
    .bind(ids.iter().map(|r| r.as_uuid()).collect::<Vec<_>>())
    .fetch_all(&world.db)
    .await
    .unwrap();
    assert_eq!(refunded.len(), 12);
    assert!(
        refunded.iter().all(|(a, b)| *a == 800 && *b == 800),
        "{refunded:?}"
    );

    let statuses = published(stack, &topic, &ids, 1).await;
    for id in &ids {
        let s = &statuses[&id.as_uuid()];
        assert!(
            s.iter().all(|x| *x == RefundStatus::Succeeded),
            "{id}: published {s:?}"
        );
    }
    let m = r.metrics().await;
    assert!(
        m.contains("reconciler_refund_polls_total{outcome=\"resolved\"}"),
        "{m}"
    );
    r.terminate();
}

/// A refund Stripe reports failed two days after it succeeded (its test card for that):
/// the failure reaches us by webhook, frees the amount for another refund, flags the
/// refund for an operator, and is published.
#[tokio::test(flavor = "multi_thread")]
async fn a_refund_that_fails_days_later_frees_its_amount_and_is_flagged() {
    let _serial = SERIAL.lock().await;
    let stack = Stack::get();
    let db = stack.pool("DATABASE_URL").await;
    let world = SimWorld::start(db.clone()).await;
    let secret = format!("whsec_{}", Uuid::now_v7().simple());
    let hook = paystream_webhook::spawn(
        db.into(),
        &WebhookSettings {
            secrets: secret.clone(),
            tolerance_secs: 300,
        },
    )
    .await
    .unwrap();
    world.add_webhook_endpoint(&hook, &secret).await;
    let (r, topic) = reconcilers(stack, &world, "rec-refunds-late-failure").await;

    let (p, pi) = world.paid("pm_card_refundFail").await;
    let amount: i64 = sqlx::query_scalar("SELECT amount FROM payments WHERE id = $1")
        .bind(p.as_uuid())
        .fetch_one(&world.db)
        .await
        .unwrap();
    let id = world.refund(p, &pi, amount, true).await;
    wait_all(&world, &[id], "succeeded", Duration::from_secs(30)).await;
    let ops = world.operator().await;
    assert!(
        matches!(
            world.begin_refund(ops, p, 1).await,
            BeginRefund::ExceedsRemaining { remaining: 0, .. }
        ),
        "fully refunded"
    );

    world.advance_clock(2 * 24 * 3600 + 60).await;
    wait_all(&world, &[id], "failed", Duration::from_secs(30)).await;
    let (attention, refunded): (Option<String>, i64) = sqlx::query_as(
        "SELECT r.attention, p.amount_refunded FROM refunds r JOIN payments p ON p.id = r.payment_id WHERE r.id = $1",
    )
    .bind(id.as_uuid())
    .fetch_one(&world.db)
    .await
    .unwrap();
    assert_eq!(attention.as_deref(), Some("refund_failed_after_success"));
    assert_eq!(refunded, 0, "the money is back with us");
    assert!(
        matches!(
            world.begin_refund(ops, p, 1).await,
            BeginRefund::Created(..)
        ),
        "the failed refund's amount is free again"
    );
    let statuses = published(stack, &topic, &[id], 2).await;
    assert_eq!(
        statuses[&id.as_uuid()]
            .iter()
            .copied()
            .collect::<HashSet<_>>(),
        HashSet::from([RefundStatus::Succeeded, RefundStatus::Failed])
    );
    drop(r);
}
