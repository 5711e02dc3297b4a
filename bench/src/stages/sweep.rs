//! Stage 6, polls at scale: 100,000 pending payments, 95% of them abandoned (intents
//! Stripe does not know: every poll of theirs a miss), webhooks dropped by Stripe; the
//! other 5% are made through the API and then confirmed at Stripe. How long after its
//! confirmation each one resolves (the target: within its first scheduled poll plus
//! 10 s), and the Stripe calls the reconciler made per resolved payment. Stripe's rate
//! limits stay lifted (as for every stage) so the load can be made; the reconciler keeps
//! to its own budget.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use chrono::{DateTime, Utc};
use futures_util::StreamExt;
use serde_json::{Value, json};
use uuid::Uuid;

use super::{Ctx, Keys, post_payment};
use crate::metrics::{drained, sum};

/// The stack's reconciler polls a payment first a minute after its creation
/// (`Schedule::default().first`).
const FIRST_POLL: Duration = Duration::from_secs(60);
const TARGET_AFTER_FIRST_POLL: Duration = Duration::from_secs(10);

pub async fn measure(ctx: &mut Ctx<'_>, keys: &Keys) -> anyhow::Result<()> {
    let (abandoned, live) = if ctx.s.runs == 1 {
        (9_500_i64, 500_usize)
    } else {
        (95_000, 5_000)
    };
    let total = abandoned as usize + live;
    println!("polls at {total} pending ({abandoned} abandoned), webhooks dropped ...");
    let run = Uuid::now_v7().simple().to_string();
    sqlx::query(
        "INSERT INTO payments (id, client_id, idempotency_key, amount, currency, stripe_payment_intent_id,
                               stripe_status, created_at)
         SELECT gen_random_uuid(), $1, 'abandoned-' || $2 || '-' || g, 1250, 'usd', 'pi_gone_' || $2 || '_' || g,
                'requires_payment_method', now() - interval '10 minutes'
         FROM generate_series(1, $3) g",
    )
    .bind(keys.client)
    .bind(&run)
    .bind(abandoned)
    .execute(&ctx.primary)
    .await?;
    let faults = sim_faults(ctx, None).await?;
    let mut dropped = faults.clone();
    dropped["webhook_drop_rate"] = json!(1.0);
    sim_faults(ctx, Some(&dropped)).await?;
    let measured = resolve_confirmed(ctx, keys, &run, live).await;
    sim_faults(ctx, Some(&faults)).await?;
    sqlx::query("DELETE FROM payments WHERE idempotency_key LIKE 'abandoned-' || $1 || '-%'")
        .bind(&run)
        .execute(&ctx.primary)
        .await?;
    let m = measured?;
    let ms = |d: Duration| format!("{:.1} s", d.as_secs_f64());
    let bound = FIRST_POLL + TARGET_AFTER_FIRST_POLL;
    ctx.report.record(
        format!("6. Polls at {total} pending (95% abandoned), webhooks dropped"),
        format!(
            "{} confirmed at Stripe: resolved p50 {}, p99 {}, max {} after confirmation ({} by the reconciler, {} by the webhook catch-up); latest {} after creation; {:.3} reconciler Stripe calls per resolved payment ({} calls, {} of them event-list pages)",
            m.resolved,
            ms(m.p50),
            ms(m.p99),
            ms(m.max),
            m.by_reconciler,
            m.by_catchup,
            ms(m.max_after_creation),
            m.calls / m.resolved as f64,
            m.calls,
            m.sweep_calls,
        ),
        format!("first poll + 10 s = {}", ms(bound)),
        format!("{:.2}", m.max_after_creation.as_secs_f64() / bound.as_secs_f64()),
    );
    Ok(())
}

struct Measured {
    resolved: usize,
    p50: Duration,
    p99: Duration,
    max: Duration,
    max_after_creation: Duration,
    by_reconciler: usize,
    by_catchup: usize,
    calls: f64,
    sweep_calls: f64,
}

async fn resolve_confirmed(
    ctx: &Ctx<'_>,
    keys: &Keys,
    run: &str,
    live: usize,
) -> anyhow::Result<Measured> {
    drained(&ctx.http, &ctx.reconciler).await?;
    let calls_before = sum(&ctx.http, &ctx.reconciler, "stripe_calls_total{").await?;
    let sweeps_before = sum(&ctx.http, &ctx.reconciler, "reconciler_sweep_calls_total").await?;
    // Each payment as a customer makes it: created through the API, then confirmed at
    // Stripe at once (its webhook dropped).
    let base = ctx.stack.var("STRIPE_API_BASE").to_owned();
    let key = Arc::new(ctx.stack.var("STRIPE_SECRET_KEY").to_owned());
    let (http, api, all) = (ctx.http.clone(), ctx.api.clone(), keys.all.clone());
    let confirmed: Vec<(Uuid, DateTime<Utc>)> = futures_util::stream::iter(0..live)
        .map(|i| {
            let create = post_payment(&http, &api, &all[i % all.len()], format!("sweep-{run}-{i}"));
            let (http, base, key) = (http.clone(), base.clone(), key.clone());
            async move {
                let r = create.send().await.ok()?;
                if r.status() != reqwest::StatusCode::CREATED {
                    return None;
                }
                let p: Value = r.json().await.ok()?;
                let id: Uuid = p["id"].as_str()?.parse().ok()?;
                let pi = p["stripe_payment_intent_id"].as_str()?.to_owned();
                let confirm = http
                    .post(format!("{base}/v1/payment_intents/{pi}/confirm"))
                    .bearer_auth(key.as_str())
                    .header("Stripe-Version", paystream_stripe::STRIPE_VERSION)
                    .form(&[("payment_method", "pm_card_visa")]);
                let ok = confirm.send().await.ok()?.status().is_success();
                ok.then(|| (id, Utc::now()))
            }
        })
        .buffer_unordered(16)
        .filter_map(std::future::ready)
        .collect()
        .await;
    // A create the API answered 202 (Stripe busy) is the reconciler's to finish, not this
    // stage's to measure: at most one in a hundred.
    anyhow::ensure!(
        confirmed.len() * 100 >= live * 99,
        "only {} of {live} payments were created and confirmed",
        confirmed.len()
    );
    let ids: Vec<Uuid> = confirmed.iter().map(|(id, _)| *id).collect();
    let started = Instant::now();
    loop {
        let open: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM payments WHERE id = ANY($1) AND status = 'pending'",
        )
        .bind(&ids)
        .fetch_one(&ctx.primary)
        .await?;
        if open == 0 {
            break;
        }
        anyhow::ensure!(
            started.elapsed() < Duration::from_secs(300),
            "{open} confirmed payments still pending after 300 s"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let calls = sum(&ctx.http, &ctx.reconciler, "stripe_calls_total{").await? - calls_before;
    let sweep_calls =
        sum(&ctx.http, &ctx.reconciler, "reconciler_sweep_calls_total").await? - sweeps_before;
    let rows: Vec<(Uuid, DateTime<Utc>, DateTime<Utc>, String)> = sqlx::query_as(
        "SELECT id, created_at, resolved_at, resolution_source FROM payments WHERE id = ANY($1)",
    )
    .bind(&ids)
    .fetch_all(&ctx.primary)
    .await?;
    let confirmed_at: std::collections::HashMap<Uuid, DateTime<Utc>> =
        confirmed.into_iter().collect();
    let mut after_confirm = Vec::new();
    let mut max_after_creation = Duration::ZERO;
    let (mut by_reconciler, mut by_catchup) = (0, 0);
    for (id, created_at, resolved_at, source) in rows {
        let at = confirmed_at.get(&id).context("a payment not confirmed")?;
        after_confirm.push((resolved_at - *at).to_std().unwrap_or_default());
        max_after_creation = max_after_creation.max((resolved_at - created_at).to_std()?);
        match source.as_str() {
            "poll" => by_reconciler += 1,
            _ => by_catchup += 1,
        }
    }
    after_confirm.sort_unstable();
    let at = |q: f64| {
        after_confirm
            [((after_confirm.len() as f64 * q).ceil() as usize).clamp(1, after_confirm.len()) - 1]
    };
    Ok(Measured {
        resolved: after_confirm.len(),
        p50: at(0.5),
        p99: at(0.99),
        max: at(1.0),
        max_after_creation,
        by_reconciler,
        by_catchup,
        calls,
        sweep_calls,
    })
}

/// stripe-sim's faults; with `set`, replaced by it first.
async fn sim_faults(ctx: &Ctx<'_>, set: Option<&Value>) -> anyhow::Result<Value> {
    let url = format!("{}/_sim/faults", ctx.stack.var("STRIPE_API_BASE"));
    let request = match set {
        Some(f) => ctx.http.put(&url).json(f),
        None => ctx.http.get(&url),
    };
    let r = request.send().await?.error_for_status()?;
    Ok(r.json().await?)
}
