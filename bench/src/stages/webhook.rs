//! Stage 6, webhook ingest through nginx: signed payment_intent.succeeded events, each for
//! its own pending payment, so every one is verified, stored and applied; against pgbench
//! applying the same events (`webhook.sql`).

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use serde_json::{Value, json};
use sqlx::PgPool;
use uuid::Uuid;

use super::Ctx;
use crate::metrics::{mean_ms, spent_since, time_spent};

/// Enough for three 5 s runs at 1,300/s; the unused rest is deleted after the stage.
const FIXTURES: i64 = 20_000;

pub async fn measure(ctx: &mut Ctx<'_>, client: Uuid) -> anyhow::Result<()> {
    println!("webhook ingest ...");
    let run = Uuid::now_v7().simple().to_string();
    let ids = Arc::new(pending_payments(&ctx.primary, client, &run).await?);
    // Shared by all runs, so no run resends an event an earlier one applied.
    let next = Arc::new(AtomicUsize::new(0));
    let intent = Arc::new(succeeded_intent(ctx).await?);
    // The same body as an event of the load (its intent id aside): the floor stores what
    // the receiver stores.
    let payload = webhook_event(&intent, "evt_floor", "pi_floor", Uuid::nil());
    let (http, api, counter, events) =
        (ctx.http.clone(), ctx.api.clone(), next.clone(), ids.clone());
    let secret = ctx.stack.var("STRIPE_WEBHOOK_SECRET").to_owned();
    let receiver = [ctx.stack.var("WEBHOOK_URL")];
    let before = time_spent(&ctx.http, &receiver, RECEIVER_TIME).await?;
    let r = ctx
        .median_load(32, move |_, _| {
            let request = events
                .get(counter.fetch_add(1, Ordering::Relaxed))
                .map(|(pi, id)| {
                    let body = webhook_event(&intent, &format!("evt_{pi}"), pi, *id);
                    let t = chrono::Utc::now().timestamp();
                    http.post(format!("{api}/webhook/stripe"))
                        .header(
                            "Stripe-Signature",
                            stripe_sim::webhooks::header(&[&secret], t, &body),
                        )
                        .header("Content-Type", "application/json")
                        .body(body)
                });
            async move {
                let Some(request) = request else { return false };
                request.send().await.is_ok_and(|r| r.status().is_success())
            }
        })
        .await;
    let spent = spent_since(
        time_spent(&ctx.http, &receiver, RECEIVER_TIME).await?,
        before,
    );
    let sent = next.load(Ordering::Relaxed).min(ids.len());
    check_applied(&ctx.primary, "wh", &run, sent, r.errors).await?;
    let floor_run = Uuid::now_v7().simple().to_string();
    floor_fixtures(&ctx.primary, client, &floor_run).await?;
    let floor = ctx
        .floor(
            "webhook.sql",
            32,
            &[("run", floor_run.clone()), ("payload", payload)],
        )
        .await?;
    let resolved: i64 = sqlx::query_scalar("SELECT last_value FROM bench_wfloor_seq")
        .fetch_one(&ctx.primary)
        .await?;
    check_applied(&ctx.primary, "wfloor", &floor_run, resolved as usize, 0).await?;
    ctx.report
        .against_floor("6. Webhook ingest, 32 senders", &r, " applied", floor);
    let [receiver, pool, transaction] = spent.map(mean_ms);
    ctx.report.record(
        "6. Webhook ingest, 32 senders, where the receiver's time goes (means)",
        format!(
            "{receiver:.1} ms from request to commit = waiting for a pooled connection {pool:.1} + BEGIN to COMMIT {transaction:.1} + the rest {:.1}",
            receiver - pool - transaction
        ),
        format!("pgbench: {:.1} ms a transaction", 32_000.0 / floor),
        "",
    );
    Ok(())
}

/// The receiver's own account of its events: request to commit
/// (`webhook_processing_seconds`), and at the database, waiting for a connection, then
/// BEGIN to COMMIT (`webhook_event_phase_seconds`).
const RECEIVER_TIME: [(&str, &str); 3] = [
    ("webhook_processing_seconds", ""),
    ("webhook_event_phase_seconds", r#"phase="pool""#),
    ("webhook_event_phase_seconds", r#"phase="transaction""#),
];

/// The payments the events resolve: `(intent id, payment id)`.
async fn pending_payments(
    primary: &PgPool,
    client: Uuid,
    run: &str,
) -> anyhow::Result<Vec<(String, Uuid)>> {
    sqlx::query(
        "INSERT INTO payments (id, client_id, idempotency_key, amount, currency, stripe_payment_intent_id, stripe_status)
         SELECT gen_random_uuid(), $1, 'wh-' || $2 || '-' || g, 1250, 'usd', 'pi_wh_' || $2 || '_' || g, 'requires_payment_method'
         FROM generate_series(1, $3::bigint) g",
    )
    .bind(client)
    .bind(run)
    .bind(FIXTURES)
    .execute(primary)
    .await?;
    Ok(sqlx::query_as(
        "SELECT stripe_payment_intent_id, id FROM payments WHERE idempotency_key LIKE 'wh-' || $1 || '-%'",
    )
    .bind(run)
    .fetch_all(primary)
    .await?)
}

/// Fails if accepted events were not applied, then removes the fixtures no event reached.
/// `prefix` tells the load's fixtures (`wh`) from the floor's (`wfloor`).
async fn check_applied(
    primary: &PgPool,
    prefix: &str,
    run: &str,
    sent: usize,
    errors: u64,
) -> anyhow::Result<()> {
    let keys = format!("{prefix}-{run}-%");
    let applied: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM payments WHERE idempotency_key LIKE $1 AND status = 'succeeded'",
    )
    .bind(&keys)
    .fetch_one(primary)
    .await?;
    anyhow::ensure!(
        applied as usize + errors as usize >= sent.saturating_sub(64),
        "webhooks accepted but not applied: {applied} of {sent}"
    );
    // Never shown to a client nor sent to Stripe, so removed rather than left pending for
    // the reconciler to poll.
    sqlx::query("DELETE FROM payments WHERE idempotency_key LIKE $1 AND status = 'pending'")
        .bind(&keys)
        .execute(primary)
        .await?;
    Ok(())
}

/// The floor's payments: pending, like the load's, each resolved by one floor
/// transaction, in the order of `bench_wfloor_seq` (restarted here).
async fn floor_fixtures(primary: &PgPool, client: Uuid, run: &str) -> anyhow::Result<()> {
    sqlx::query("CREATE SEQUENCE IF NOT EXISTS bench_wfloor_seq")
        .execute(primary)
        .await?;
    sqlx::query("ALTER SEQUENCE bench_wfloor_seq RESTART WITH 1")
        .execute(primary)
        .await?;
    sqlx::query(
        "INSERT INTO payments (id, client_id, idempotency_key, amount, currency, stripe_payment_intent_id, stripe_status)
         SELECT gen_random_uuid(), $1, 'wfloor-' || $2 || '-' || g, 1250, 'usd', 'pi_wfloor_' || $2 || '_' || g, 'requires_payment_method'
         FROM generate_series(1, $3::bigint) g",
    )
    .bind(client)
    .bind(run)
    .bind(FIXTURES)
    .execute(primary)
    .await?;
    Ok(())
}

/// A PaymentIntent that succeeded, whole, as the stack's Stripe renders it: the object
/// every event carries, so the receiver reads it as it reads Stripe's (through
/// async-stripe's model, not the fallback for unknown shapes).
async fn succeeded_intent(ctx: &Ctx<'_>) -> anyhow::Result<Value> {
    let intent: Value = ctx
        .http
        .post(format!(
            "{}/v1/payment_intents",
            ctx.stack.var("STRIPE_API_BASE")
        ))
        .bearer_auth(ctx.stack.var("STRIPE_SECRET_KEY"))
        .form(&[
            ("amount", "1250"),
            ("currency", "usd"),
            ("confirm", "true"),
            ("payment_method", "pm_card_visa"),
            ("metadata[payment_id]", "bench"),
        ])
        .send()
        .await?
        .error_for_status()?
        .json()
        .await?;
    anyhow::ensure!(
        intent["status"] == "succeeded",
        "the stand-in's intent did not succeed: {intent}"
    );
    Ok(intent)
}

/// A Stripe event as Stripe sends it for a PaymentIntent that succeeded: `intent`, as
/// our payment `payment`'s intent `pi`.
fn webhook_event(intent: &Value, event_id: &str, pi: &str, payment: Uuid) -> String {
    let mut object = intent.clone();
    object["id"] = json!(pi);
    object["metadata"] = json!({"payment_id": payment.to_string()});
    json!({
        "id": event_id,
        "object": "event",
        "api_version": stripe_sim::state::API_VERSION,
        "type": "payment_intent.succeeded",
        "created": chrono::Utc::now().timestamp(),
        "livemode": false,
        "pending_webhooks": 1,
        "request": {"id": null, "idempotency_key": null},
        "data": {"object": object}
    })
    .to_string()
}
