//! Stage 3, CDC latency: commit on the primary (source.ts_ms) to the change in the
//! reconciler's state, from its histogram, at fixed write rates and flat out.

use std::time::{Duration, Instant};

use sqlx::PgPool;
use uuid::Uuid;

use super::Ctx;
use crate::metrics::{cdc_histogram, drained, quantile};

pub async fn measure(ctx: &mut Ctx<'_>, client: Uuid) -> anyhow::Result<()> {
    // 0: as fast as one connection goes.
    for rate in [100u32, 1000, 0] {
        at_rate(ctx, client, rate).await?;
    }
    Ok(())
}

async fn at_rate(ctx: &mut Ctx<'_>, client: Uuid, rate: u32) -> anyhow::Result<()> {
    let label = if rate == 0 {
        "max".to_owned()
    } else {
        format!("{rate}/s")
    };
    println!("CDC latency at {label} ...");
    let (http, reconciler) = (&ctx.http, ctx.reconciler.as_str());
    // Only this phase's changes may be in the histogram's difference.
    drained(http, reconciler).await?;
    let before = cdc_histogram(http, reconciler).await?;
    let (written, took) = write_at(&ctx.primary, client, rate, ctx.s.length * 2).await?;
    let behind = drained(http, reconciler).await?;
    let after = cdc_histogram(http, reconciler).await?;
    let delta: Vec<(f64, u64)> = after
        .iter()
        .zip(&before)
        .map(|((le, a), (_, b))| (*le, a - b))
        .collect();
    let q =
        |p: f64| quantile(&delta, p).map_or("-".to_owned(), |v| format!("{:.0} ms", v * 1000.0));
    let measured = format!(
        "{:.0} writes/s; p50 {}, p95 {}, p99 {}; drained {:.1} s after the last write",
        written as f64 / took.as_secs_f64(),
        q(0.5),
        q(0.95),
        q(0.99),
        behind.as_secs_f64()
    );
    ctx.report.record(
        format!("3. CDC commit -> reconciler state, {label}"),
        measured,
        "",
        "",
    );
    Ok(())
}

/// Inserts final (already resolved) payments at `rate` a second (0: as fast as one
/// connection goes) for `length`: changes for the CDC pipeline that leave nothing to poll.
async fn write_at(
    primary: &PgPool,
    client: Uuid,
    rate: u32,
    length: Duration,
) -> anyhow::Result<(u64, Duration)> {
    let started = Instant::now();
    let mut written = 0u64;
    // Batches of 10 per statement keep 1,000/s within one connection's reach.
    let batch = 10u32;
    let mut tick = (rate > 0).then(|| tokio::time::interval(Duration::from_secs(1) * batch / rate));
    while started.elapsed() < length {
        if let Some(t) = tick.as_mut() {
            t.tick().await;
        }
        sqlx::query(
            "INSERT INTO payments (id, client_id, idempotency_key, amount, currency, status,
                                   resolution_source, resolved_at)
             SELECT gen_random_uuid(), $1, 'cdc-' || gen_random_uuid(), 1250, 'usd', 'succeeded', 'api', now()
             FROM generate_series(1, $2)",
        )
        .bind(client)
        .bind(i32::try_from(batch).unwrap_or(10))
        .execute(primary)
        .await?;
        written += u64::from(batch);
    }
    Ok((written, started.elapsed()))
}
