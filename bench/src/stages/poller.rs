//! Stage 5, the poller: with 100,000 payments due at once, the Stripe call rate the
//! reconciler achieves against its limit.

use std::time::{Duration, Instant};

use uuid::Uuid;

use super::Ctx;
use crate::metrics::{drained, polls_total};

/// The stack's reconciler runs with the default poll rate (`APP_POLL__RATE_PER_SEC`).
const POLL_RATE: u32 = 12;

pub async fn measure(ctx: &mut Ctx<'_>, client: Uuid) -> anyhow::Result<()> {
    println!("poller, 100,000 due ...");
    let run = Uuid::now_v7().simple().to_string();
    sqlx::query(
        "INSERT INTO payments (id, client_id, idempotency_key, amount, currency, stripe_payment_intent_id,
                               stripe_status, created_at)
         SELECT gen_random_uuid(), $1, 'due-' || $2 || '-' || g, 1250, 'usd', 'pi_due_' || $2 || '_' || g,
                'requires_payment_method', now() - interval '10 minutes'
         FROM generate_series(1, 100000) g",
    )
    .bind(client)
    .bind(&run)
    .execute(&ctx.primary)
    .await?;
    drained(&ctx.http, &ctx.reconciler).await?;
    // The first second may spend the bucket's burst; the steady rate is what is bounded.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let window = if ctx.s.runs == 1 { 10 } else { 30 };
    let samples = sample_polls(ctx, window).await?;
    let rate = |a: &(Instant, u64), b: &(Instant, u64)| {
        (b.1 - a.1) as f64 / b.0.duration_since(a.0).as_secs_f64()
    };
    let achieved = rate(&samples[0], &samples[window]);
    let max = samples
        .windows(2)
        .map(|w| rate(&w[0], &w[1]))
        .fold(0.0, f64::max);
    sqlx::query("DELETE FROM payments WHERE idempotency_key LIKE 'due-' || $1 || '-%'")
        .bind(&run)
        .execute(&ctx.primary)
        .await?;
    ctx.report.record(
        format!("5. Poller, 100,000 due, limit {POLL_RATE}/s"),
        format!("{achieved:.2} calls/s over {window} s; busiest second {max:.1}/s"),
        format!("limit {POLL_RATE}/s"),
        format!("{:.3}", achieved / f64::from(POLL_RATE)),
    );
    Ok(())
}

/// The polls counter once a second for `window` seconds, with when each was read: rates
/// go over the samples' real spacing, as a scrape takes time and "1 s" is a bit more.
async fn sample_polls(ctx: &Ctx<'_>, window: usize) -> anyhow::Result<Vec<(Instant, u64)>> {
    let mut samples = vec![(
        Instant::now(),
        polls_total(&ctx.http, &ctx.reconciler).await?,
    )];
    for _ in 0..window {
        tokio::time::sleep(Duration::from_secs(1)).await;
        samples.push((
            Instant::now(),
            polls_total(&ctx.http, &ctx.reconciler).await?,
        ));
    }
    Ok(samples)
}
