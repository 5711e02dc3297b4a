//! Stage 1, payment initiation through nginx at 1 to 128 clients, against the floor the
//! design needs: pgbench committing two single-statement transactions per payment on a
//! table of the payments table's shape (`two_commits.sql`). pgbench running the API's own
//! SQL (`create_payment.sql`) is shown beside it: that floor moves with the code. The
//! first run at 128 clients is the table's peak; the first at 32 is where CPU per payment
//! is sampled, and the runs at 32 are where the change stream's and the replicas' lag are
//! read.

use std::time::{Duration, Instant};

use paystream_testkit::Stack;
use sqlx::PgPool;

use super::{Ctx, Keys, create_payment};
use crate::metrics::{CreateTime, mean_ms};
use crate::report::summary;
use crate::{lag, load, procs};

const PEAK_CLIENTS: usize = 128;
const COST_CLIENTS: usize = 32;

/// The two-commit floor's tables: `payments`' shape (LIKE copies columns, defaults,
/// constraints and indexes, not storage parameters nor triggers), and the intent's
/// uniqueness that the `payments_map_intent` trigger keeps in `payment_intents`.
const FLOOR_TABLE: [&str; 6] = [
    "DROP TABLE IF EXISTS bench_floor_payments",
    "DROP TABLE IF EXISTS bench_floor_intents",
    "CREATE TABLE bench_floor_payments (LIKE payments INCLUDING ALL)",
    "ALTER TABLE bench_floor_payments REPLICA IDENTITY FULL",
    "ALTER TABLE bench_floor_payments SET (fillfactor = 90)",
    "CREATE TABLE bench_floor_intents (LIKE payment_intents INCLUDING ALL)",
];

pub async fn measure(ctx: &mut Ctx<'_>, keys: &Keys) -> anyhow::Result<()> {
    // Both floors' payments belong to the run's first client.
    let vars = [("client", keys.client.to_string())];
    for sql in FLOOR_TABLE {
        sqlx::query(sql).execute(&ctx.primary).await?;
    }
    for clients in [1, 8, COST_CLIENTS, PEAK_CLIENTS] {
        println!("payment initiation, {clients} clients ...");
        ctx.quiet().await?;
        let (r, in_the_api) = if clients == 1 {
            let (r, took, api) = timed_in_the_api(ctx, keys).await?;
            (r, Some((took, api)))
        } else if clients == COST_CLIENTS {
            let before = updates(&ctx.primary).await?;
            let lag = lag::Sampler::start(
                ctx.primary.clone(),
                ctx.http.clone(),
                ctx.reconciler.clone(),
            );
            let r = creates(ctx, keys, clients).await;
            let lags = lag.finish().await?;
            ctx.report.record(
                format!("1. Lag through POST /v1/payments, {clients} clients"),
                lags,
                "",
                "",
            );
            kept_on_their_page(ctx, before, updates(&ctx.primary).await?);
            (r, None)
        } else {
            (creates(ctx, keys, clients).await, None)
        };
        let two_commits = ctx.floor("two_commits.sql", clients, &vars).await?;
        if let Some((took, api)) = in_the_api {
            single_client_budget(ctx, took, &api, two_commits);
        }
        let same_sql = ctx.floor("create_payment.sql", clients, &vars).await?;
        ctx.report.record(
            format!("1. POST /v1/payments, {clients} clients"),
            summary(&r, ""),
            format!(
                "2 commits: pgbench {two_commits:.0} tps (same SQL: {same_sql:.0} tps, ratio {:.2})",
                r.per_sec / same_sql
            ),
            format!("{:.2}", r.per_sec / two_commits),
        );
    }
    for sql in &FLOOR_TABLE[..2] {
        sqlx::query(sql).execute(&ctx.primary).await?;
    }
    Ok(())
}

/// The tables a create updates, each updated once per payment (the intent's link, the
/// key's stored answer).
const UPDATED: [&str; 2] = ["payments", "idempotency_keys"];

/// Updates of each `UPDATED` table so far, and how many of them were HOT: PostgreSQL's
/// counters, which each backend publishes about once a second, so a reading misses about
/// the last second of the load; the share is what counts.
async fn updates(primary: &PgPool) -> anyhow::Result<[(i64, i64); 2]> {
    let rows: Vec<(String, i64, i64)> = sqlx::query_as(
        "SELECT relname::text, n_tup_upd, n_tup_hot_upd FROM pg_stat_user_tables
         WHERE schemaname = 'public' AND relname = ANY($1)",
    )
    .bind(UPDATED)
    .fetch_all(primary)
    .await?;
    Ok(UPDATED.map(|table| {
        rows.iter()
            .find(|(name, _, _)| name == table)
            .map_or((0, 0), |&(_, all, hot)| (all, hot))
    }))
}

/// How many of the load's updates stayed on their row's page (HOT: no new index entries).
/// A new index on a column the create updates, or pages too full for the new version,
/// show here first.
fn kept_on_their_page(ctx: &mut Ctx<'_>, before: [(i64, i64); 2], after: [(i64, i64); 2]) {
    let shares: Vec<String> = UPDATED
        .iter()
        .zip(before.iter().zip(after))
        .map(|(table, (&(all0, hot0), (all1, hot1)))| {
            let (all, hot) = (all1 - all0, hot1 - hot0);
            format!(
                "{table} {:.1}% of {all}",
                100.0 * hot as f64 / all.max(1) as f64
            )
        })
        .collect();
    ctx.report.record(
        format!("1. POST /v1/payments, {COST_CLIENTS} clients, updates kept on their page (HOT)"),
        shares.join(", "),
        "",
        "",
    );
}

/// The 1-client runs with the API's own account of them: their wall time, and what the
/// instances' create timings (`CreateTime`) grew by.
async fn timed_in_the_api(
    ctx: &mut Ctx<'_>,
    keys: &Keys,
) -> anyhow::Result<(load::Run, Duration, CreateTime)> {
    let instances = [ctx.stack.var("API_1_URL"), ctx.stack.var("API_2_URL")];
    let before = CreateTime::read(&ctx.http, &instances).await?;
    let started = Instant::now();
    let r = creates(ctx, keys, 1).await;
    let took = started.elapsed();
    let api = CreateTime::read(&ctx.http, &instances)
        .await?
        .since(&before);
    Ok((r, took, api))
}

/// Where one client's request time goes (means over every run at 1 client): outside the
/// API (the load generator, HTTP, nginx) and inside it, by phase, next to what the
/// floor's two commits alone take.
fn single_client_budget(ctx: &mut Ctx<'_>, took: Duration, api: &CreateTime, two_commits_tps: f64) {
    // One client in a closed loop: the wall time is the sum of its requests.
    let client = took.as_secs_f64() * 1000.0 / api.request.1.max(1.0);
    let [request, record, stripe, store] =
        [api.request, api.record, api.stripe, api.store].map(mean_ms);
    ctx.report.record(
        "1. POST /v1/payments, 1 client, where the time goes (means)",
        format!(
            "{client:.2} ms = outside the API {:.2} + inside {request:.2}: record {record:.2}, Stripe {stripe:.2}, store {store:.2}, the rest {:.2}",
            client - request,
            request - record - stripe - store,
        ),
        format!("2 commits: {:.2} ms", 1000.0 / two_commits_tps),
        "",
    );
}

/// The median of the runs at `clients`. Not `Ctx::median_load`: the peak's resource use
/// is sampled around one run.
async fn creates(ctx: &mut Ctx<'_>, keys: &Keys, clients: usize) -> load::Run {
    let mut runs = Vec::new();
    for run in 0..ctx.s.runs {
        let before = procs::sample();
        let (http, api, keys) = (ctx.http.clone(), ctx.api.clone(), keys.all.clone());
        runs.push(
            load::closed_loop(clients, ctx.s.length, move |c, n| {
                create_payment(&http, &api, &keys, c + n as usize)
            })
            .await,
        );
        if run == 0 {
            let usage = procs::between(&before, &procs::sample());
            if clients == COST_CLIENTS {
                let per_sec = runs.last().map_or(0.0, |r| r.per_sec);
                ctx.report.cost = Some((clients, per_sec, usage.clone()));
            }
            if clients == PEAK_CLIENTS {
                ctx.report.peak = Some(usage);
            }
        }
    }
    load::median(runs)
}

/// `--load SECS`: only POST /v1/payments at 32 clients, for a profiler to watch.
pub async fn load_only(
    stack: &Stack,
    http: &reqwest::Client,
    length: Duration,
) -> anyhow::Result<()> {
    let primary = stack.pool("DATABASE_URL").await;
    let keys = Keys::create(&primary, 32).await?;
    let (http, api) = (http.clone(), stack.var("PAYSTREAM_API_URL").to_owned());
    let r = load::closed_loop(32, length, move |c, n| {
        create_payment(&http, &api, &keys.all, c + n as usize)
    })
    .await;
    println!("{}", summary(&r, ""));
    Ok(())
}
