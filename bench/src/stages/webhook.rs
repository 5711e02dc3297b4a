//! Stage 6, webhook ingest through nginx: signed payment_intent.succeeded events, each for
//! its own pending payment, so every one is verified, stored and applied; against pgbench
//! applying the same events (`webhook.sql`). Each round runs the load and then the floor,
//! back to back, each from a stack at rest (`Ctx::quiet`), and the figure is the round
//! with the median ratio: the machine's speed drifts between minutes, so only a floor
//! measured right beside its load compares with it.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use serde_json::{Value, json};
use sqlx::PgPool;
use uuid::Uuid;

use super::Ctx;
use crate::load;
use crate::metrics::{applied_since, changes_applied, mean_ms, spent_since, time_spent};

/// Each side's fixtures, split between the rounds: enough for three 5 s runs at 1,300/s.
/// The unused rest is deleted after the stage.
const FIXTURES: i64 = 20_000;

pub async fn measure(ctx: &mut Ctx<'_>, client: Uuid) -> anyhow::Result<()> {
    println!("webhook ingest ...");
    let [run, floor_run] = [(); 2].map(|_| Uuid::now_v7().simple().to_string());
    let mark = changes_applied(&ctx.http, &ctx.reconciler).await?;
    let ids = pending_payments(&ctx.primary, client, &run).await?;
    floor_fixtures(&ctx.primary, client, &floor_run).await?;
    // Through the change stream before the first round's `quiet` waits for it to rest.
    applied_since(&ctx.http, &ctx.reconciler, mark, 2 * FIXTURES as u64).await?;
    let intent = succeeded_intent(ctx).await?;
    // The same body as an event of the load (its intent id aside): the floor stores what
    // the receiver stores.
    let payload = webhook_event(&intent, "evt_floor", "pi_floor", Uuid::nil());
    let floor_vars = [("run", floor_run.clone()), ("payload", payload)];
    let secret = ctx.stack.var("STRIPE_WEBHOOK_SECRET").to_owned();
    let receiver = [ctx.stack.var("WEBHOOK_URL")];
    let before = time_spent(&ctx.http, &receiver, RECEIVER_TIME).await?;
    let mut rounds = Vec::new();
    let mut sent = 0;
    for batch in ids.chunks(ids.len().div_ceil(ctx.s.runs)) {
        let events = signed_events(&intent, batch, &secret);
        ctx.quiet().await?;
        let (r, used) = send_events(ctx, events).await;
        sent += used;
        ctx.quiet().await?;
        let floor = ctx.floor_once("webhook.sql", 32, &floor_vars).await?;
        rounds.push((r, floor));
    }
    let spent = spent_since(
        time_spent(&ctx.http, &receiver, RECEIVER_TIME).await?,
        before,
    );
    let errors = rounds.iter().map(|(r, _)| r.errors).sum();
    check_applied(&ctx.primary, "wh", &run, sent, errors).await?;
    let resolved: i64 = sqlx::query_scalar("SELECT last_value FROM bench_wfloor_seq")
        .fetch_one(&ctx.primary)
        .await?;
    check_applied(&ctx.primary, "wfloor", &floor_run, resolved as usize, 0).await?;
    let ratios: Vec<String> = rounds
        .iter()
        .map(|(r, floor)| {
            format!(
                "{:.2} ({:.0}/s, {floor:.0} tps)",
                r.per_sec / floor,
                r.per_sec
            )
        })
        .collect();
    let (r, floor) = median_round(rounds);
    ctx.report
        .against_floor("6. Webhook ingest, 32 senders", &r, " applied", floor);
    let [receiver, pool, transaction] = spent.map(mean_ms);
    ctx.report.record(
        "6. Webhook ingest, 32 senders, where the receiver's time goes (means)",
        format!(
            "{receiver:.1} ms from request to commit = waiting for a pooled connection {pool:.1} + BEGIN to COMMIT {transaction:.1} + the rest {:.1}",
            receiver - pool - transaction
        ),
        format!(
            "pgbench: {:.1} ms a transaction; each round's ratio (load, then floor): {}",
            32_000.0 / floor,
            ratios.join(", ")
        ),
        "",
    );
    Ok(())
}

/// The round whose ratio (load over floor) is the median of the rounds' ratios: not
/// the median load's, whose floor may have been measured in a faster minute.
fn median_round(mut rounds: Vec<(load::Run, f64)>) -> (load::Run, f64) {
    rounds.sort_by(|(a, fa), (b, fb)| (a.per_sec / fa).total_cmp(&(b.per_sec / fb)));
    rounds[rounds.len() / 2]
}

/// Signed webhook requests for `batch`'s payments, each a `(Stripe-Signature, body)`:
/// made before the load, as Stripe makes them on its own machines, so the load's CPU is
/// the sending alone, as pgbench's is.
fn signed_events(intent: &Value, batch: &[(String, Uuid)], secret: &str) -> Vec<(String, String)> {
    let t = chrono::Utc::now().timestamp();
    batch
        .iter()
        .map(|(pi, id)| {
            let body = webhook_event(intent, &format!("evt_{pi}"), pi, *id);
            (stripe_sim::webhooks::header(&[secret], t, &body), body)
        })
        .collect()
}

/// One closed-loop run of 32 senders through `events`, each sent once: the run, and how
/// many events it sent.
async fn send_events(ctx: &Ctx<'_>, events: Vec<(String, String)>) -> (load::Run, usize) {
    let (http, api) = (ctx.http.clone(), ctx.api.clone());
    let (events, next) = (Arc::new(events), Arc::new(AtomicUsize::new(0)));
    let (all, counter) = (events.clone(), next.clone());
    let r = load::closed_loop(32, ctx.s.length, move |_, _| {
        let request = all
            .get(counter.fetch_add(1, Ordering::Relaxed))
            .map(|(signature, body)| {
                http.post(format!("{api}/webhook/stripe"))
                    .header("Stripe-Signature", signature)
                    .header("Content-Type", "application/json")
                    .body(body.clone())
            });
        async move {
            let Some(request) = request else { return false };
            request.send().await.is_ok_and(|r| r.status().is_success())
        }
    })
    .await;
    (r, next.load(Ordering::Relaxed).min(events.len()))
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

#[cfg(test)]
mod tests {
    use super::*;

    fn round(per_sec: f64, floor: f64) -> (load::Run, f64) {
        (
            load::Run {
                per_sec,
                ..Default::default()
            },
            floor,
        )
    }

    #[test]
    fn the_figure_is_the_round_with_the_median_ratio() {
        // Ratios 0.60, 0.75, 0.90: the median rate (800/s) is the 0.90 round's.
        let rounds = vec![
            round(900.0, 1500.0),
            round(600.0, 800.0),
            round(800.0, 889.0),
        ];
        let (r, floor) = median_round(rounds);
        assert_eq!((r.per_sec, floor), (600.0, 800.0));
        let rounds = vec![
            round(700.0, 1000.0),
            round(900.0, 1500.0),
            round(500.0, 1000.0),
        ];
        let (r, floor) = median_round(rounds);
        assert_eq!((r.per_sec, floor), (900.0, 1500.0));
    }
}
