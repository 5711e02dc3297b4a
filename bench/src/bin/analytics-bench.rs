//! Analytics at 10 million payments: refresh costs, query times through the replicas
//! against the naive GROUP BY over the raw rows (the baseline, same run), and the query
//! plans, checked: no answer may scan the payments table. Then the hour in progress of a
//! busy stack: its finished minutes read from the minute rollups, against the same hour
//! read from the rows (as before they existed), in the same run.
//!
//!   analytics-bench <admin url of the primary> [payments, default 10000000] [runs, default 5]
//!                   [payments this hour, default 400000]
//!
//! It works in its own database (`paystream_analytics_bench`),
//! filled once and kept, and reads a replica on `REPLICA_PORT` (default 6432, the stack's
//! nginx); `make bench` runs it on a cluster of its own, so the fill's WAL never reaches
//! the stack's Debezium slot.
#![allow(clippy::print_stdout, clippy::float_arithmetic)]

use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use chrono::{DateTime, DurationRound, Utc};
use paystream_analytics::{Bucket, Guard, Metric, OnLag, Window};
use paystream_bench::db;
use sqlx::{Connection, PgPool};

const DB: &str = "paystream_analytics_bench";
const DAYS: i64 = 30;

/// Payments spread evenly over `span` from `start`, shaped like production: time-ordered
/// ids, three currencies, every status and resolution source.
async fn fill(
    primary: &PgPool,
    n: i64,
    start: DateTime<Utc>,
    span: chrono::Duration,
) -> anyhow::Result<()> {
    paystream_db::MIGRATOR.run(primary).await?;
    let have: i64 = sqlx::query_scalar("SELECT count(*) FROM payments")
        .fetch_one(primary)
        .await?;
    if have >= n {
        return Ok(());
    }
    let step_us = span.num_microseconds().context("span")? / n;
    let chunk = 1_000_000;
    let mut from = have + 1;
    while from <= n {
        let to = (from + chunk - 1).min(n);
        let started = Instant::now();
        sqlx::query(
            "INSERT INTO payments (id, client_id, idempotency_key, amount, currency, status,
                                   resolution_source, created_at, updated_at, resolved_at)
             SELECT ('00000000-0000-7000-8000-' || lpad(to_hex(g), 12, '0'))::uuid,
                    ('00000000-0000-4000-8000-' || lpad(to_hex(g % 1000), 12, '0'))::uuid,
                    'order-' || g, 100 + abs(hashtext('a' || g)) % 100000,
                    (ARRAY['usd', 'eur', 'jpy'])[1 + abs(hashtext('c' || g)) % 3],
                    s.status,
                    CASE WHEN s.status <> 'pending' THEN
                        (ARRAY['api', 'webhook', 'webhook', 'webhook', 'poll', 'expiry', 'operator'])
                        [1 + abs(hashtext('r' || g)) % 7] END,
                    c.at, c.at,
                    CASE WHEN s.status <> 'pending' THEN c.at
                        + (abs(hashtext('t' || g)) % (10 ^ (1 + abs(hashtext('d' || g)) % 7))::int)
                          * interval '1 millisecond' END
             FROM generate_series($1::bigint, $2::bigint) g,
             LATERAL (SELECT $3 + (g - 1) * $4 * interval '1 microsecond' AS at) c,
             LATERAL (SELECT CASE WHEN c.at > now() - interval '1 day' AND g % 50 = 0 THEN 'pending'
                                  ELSE (ARRAY['succeeded', 'succeeded', 'succeeded', 'succeeded',
                                              'succeeded', 'failed', 'canceled'])
                                       [1 + abs(hashtext('s' || g)) % 7] END AS status) s",
        )
        .bind(from)
        .bind(to)
        .bind(start)
        .bind(step_us)
        .execute(primary)
        .await?;
        println!(
            "filled payments {from}..={to} in {:.1} s",
            started.elapsed().as_secs_f64()
        );
        from = to + 1;
    }
    // Index-only scans need the visibility map, and the planner needs statistics.
    sqlx::query("VACUUM (ANALYZE) payments")
        .execute(primary)
        .await?;
    Ok(())
}

async fn caught_up(primary: &PgPool, replica: &deadpool_postgres::Pool) -> anyhow::Result<()> {
    let lsn: String = sqlx::query_scalar("SELECT pg_current_wal_lsn()::text")
        .fetch_one(primary)
        .await?;
    let client = replica.get().await?;
    for _ in 0..6000 {
        let row = client
            .query_one(
                "SELECT pg_last_wal_replay_lsn() >= $1::text::pg_lsn",
                &[&lsn],
            )
            .await?;
        if row.get::<_, bool>(0) {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    bail!("the replica did not replay {lsn} in 10 minutes")
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn ms(d: Duration) -> String {
    format!("{:.1}", d.as_secs_f64() * 1000.0)
}

/// The query an analyst would write without the rollups: the whole window, raw.
const NAIVE_SQL: &str = "
SELECT currency, status, resolution_source, count(*), sum(amount)::bigint,
       percentile_disc(ARRAY[0.5, 0.95, 0.99, 1.0]) WITHIN GROUP
           (ORDER BY analytics_resolution_ms(created_at, resolved_at))
FROM payments WHERE created_at >= $1 AND created_at < $2 GROUP BY 1, 2, 3";

/// Node types and relations of a JSON plan, depth first.
fn plan_nodes(plan: &serde_json::Value, out: &mut Vec<String>) {
    let node = plan["Node Type"].as_str().unwrap_or("?");
    let rel = plan["Relation Name"].as_str().unwrap_or("");
    let index = plan["Index Name"].as_str().unwrap_or("");
    out.push(format!("{node} {rel} {index}").trim().to_owned());
    for child in plan["Plans"].as_array().into_iter().flatten() {
        plan_nodes(child, out);
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let admin = args
        .get(1)
        .context("usage: analytics-bench ADMIN_URL [N] [RUNS]")?;
    let n: i64 = args.get(2).map_or(Ok(10_000_000), |s| s.parse())?;
    let runs: usize = args.get(3).map_or(Ok(5), |s| s.parse())?;
    let busy: i64 = args.get(4).map_or(Ok(400_000), |s| s.parse())?;

    let primary = db::primary(admin, DB).await?;
    // The data's days are fixed once filled: read them back rather than from the clock.
    let today = Utc::now()
        .date_naive()
        .and_hms_opt(0, 0, 0)
        .context("midnight")?
        .and_utc();
    fill(
        &primary,
        n,
        today - chrono::Duration::days(DAYS),
        chrono::Duration::days(DAYS),
    )
    .await?;
    let (first, last): (DateTime<Utc>, DateTime<Utc>) =
        sqlx::query_as("SELECT min(created_at), max(created_at) FROM payments")
            .fetch_one(&primary)
            .await?;

    let (full, full_took) = timed_refresh(&primary, true).await?;
    // A realistic increment: 1,000 late resolutions spread over the last day.
    resolve_late(&primary, 1000, "created_at + interval '10 minutes'").await?;
    let (inc, inc_took) = timed_refresh(&primary, false).await?;

    // The answers go through the project's replica reads; the naive baseline and the
    // plans through a connection of their own.
    let (answers, replica) = replica_pools(admin, DB)?;
    caught_up(&primary, &replica).await?;
    let guard = Guard {
        max_lag: Duration::from_secs(3600),
        on_lag: OnLag::Flag,
    };

    println!(
        "\nanalytics over {n} payments ({first} .. {last}), read on a replica, {runs} runs each"
    );
    println!(
        "rollup refresh: full {} hours in {} ms; incremental after 1,000 updates: {} hours in {} ms",
        full.hours,
        ms(full_took),
        inc.hours,
        ms(inc_took)
    );
    // Windows start off the hour, so every answer reads raw edges as well as rollups.
    let end = last + chrono::Duration::seconds(1);
    let windows = [
        (
            "30 days",
            end - chrono::Duration::days(DAYS) + chrono::Duration::minutes(7),
            end,
        ),
        ("24 hours", end - chrono::Duration::hours(24), end),
        ("1 hour", end - chrono::Duration::minutes(60), end),
    ];
    println!(
        "\n{:<34} {:>12} {:>16} {:>8}",
        "query", "median ms", "naive GROUP BY", "speedup"
    );
    let client = replica.get().await?;
    for (name, from, to) in windows {
        let w = Window::new(from, to, None)?;
        let mut ours = Vec::new();
        let mut naive = Vec::new();
        for _ in 0..runs {
            let t = Instant::now();
            let s = paystream_analytics::summary(&answers, guard, &w).await?;
            ours.push(t.elapsed());
            if s.payments == 0 {
                bail!("empty window {name}");
            }
            // The baseline takes seconds per run at 30 days: three runs give its median.
            if naive.len() < 3 {
                let t = Instant::now();
                client.query(NAIVE_SQL, &[&from, &to]).await?;
                naive.push(t.elapsed());
            }
        }
        let (ours, naive) = (median(ours), median(naive));
        println!(
            "{:<34} {:>12} {:>16} {:>7.0}x",
            format!("summary, {name}"),
            ms(ours),
            ms(naive),
            naive.as_secs_f64() / ours.as_secs_f64()
        );
    }
    for (bucket, metric) in [
        (Bucket::Hour, Metric::Count),
        (Bucket::Day, Metric::SuccessRate),
    ] {
        let w = Window::new(windows[0].1, windows[0].2, None)?;
        let mut times = Vec::new();
        for _ in 0..runs {
            let t = Instant::now();
            paystream_analytics::timeseries(&answers, guard, &w, bucket, metric).await?;
            times.push(t.elapsed());
        }
        println!(
            "{:<34} {:>12}",
            format!("timeseries {bucket:?}/{metric:?}, 30 days"),
            ms(median(times))
        );
    }

    // The plans, on the replica, with the 30-day window's parameters.
    let w = Window::new(windows[0].1, windows[0].2, None)?;
    // As right after a refresh: every whole hour of the window is in the rollups.
    let split = w.split(Some(chrono::Utc::now()), true);
    println!("\nplans (30-day window):");
    let mut violations = Vec::new();
    for (name, sql) in paystream_analytics::query::sql_for_explain() {
        let explain = format!("EXPLAIN (ANALYZE, FORMAT JSON) {sql}");
        let row = client
            .query_one(
                &explain,
                &[
                    &w.from,
                    &split.start,
                    &split.hours_end,
                    &w.to,
                    &None::<String>,
                    &split.minutes_end,
                ],
            )
            .await?;
        let json: serde_json::Value = row.get(0);
        let mut nodes = Vec::new();
        plan_nodes(&json[0]["Plan"], &mut nodes);
        let took = json[0]["Execution Time"].as_f64().unwrap_or(0.0);
        println!("  {name} ({took:.1} ms): {}", nodes.join(" > "));
        for n in &nodes {
            if n.starts_with("Seq Scan payments") || n.starts_with("Parallel Seq Scan payments") {
                violations.push(format!("{name}: {n}"));
            }
        }
    }
    if !violations.is_empty() {
        bail!("analytics plans scan the payments table: {violations:?}");
    }
    println!("  no plan scans the payments table");
    drop(client);
    busy_hour(admin, busy, runs).await
}

/// The hour in progress on a busy stack: `n` payments made so far this hour, in a database
/// of their own (dropped after), as after `make test` and `make bench` (409,000 in one
/// hour). The summaries of the last hour and of 30 days, read with the hour's finished
/// minutes from the minute rollups, against the same windows with the hour read from
/// the rows, as before those rollups existed. Both must give the same answer.
async fn busy_hour(admin: &str, n: i64, runs: usize) -> anyhow::Result<()> {
    const BUSY: &str = "paystream_analytics_busy";
    let drop_db = || async {
        let mut conn =
            sqlx::PgConnection::connect_with(&paystream_db::tls::connect_options(admin)?).await?;
        sqlx::query(&format!("DROP DATABASE IF EXISTS {BUSY} WITH (FORCE)"))
            .execute(&mut conn)
            .await?;
        anyhow::Ok(())
    };
    drop_db().await?;
    let hour = |t: DateTime<Utc>| t.duration_trunc(chrono::Duration::hours(1));
    // Finished minutes to read: at least two.
    let start = hour(Utc::now())?;
    if Utc::now() - start < chrono::Duration::minutes(2) {
        tokio::time::sleep((start + chrono::Duration::minutes(2) - Utc::now()).to_std()?).await;
    }
    let primary = db::primary(admin, BUSY).await?;
    fill(&primary, n, start, Utc::now() - start).await?;
    let (full, full_took) = timed_refresh(&primary, true).await?;
    // A minute of a busy hour's late resolutions.
    resolve_late(&primary, n / 60, "now()").await?;
    let (inc, inc_took) = timed_refresh(&primary, false).await?;

    let (answers, replica) = replica_pools(admin, BUSY)?;
    caught_up(&primary, &replica).await?;
    drop(replica);
    println!(
        "\nthe hour in progress: {n} payments since {start}, read on a replica, {runs} runs each"
    );
    println!(
        "rollup refresh: full ({} minutes) in {} ms; after a minute of late resolutions ({}): {} minutes in {} ms",
        full.minutes,
        ms(full_took),
        n / 60,
        inc.minutes,
        ms(inc_took)
    );
    println!(
        "\n{:<34} {:>16} {:>16} {:>8}",
        "query", "minute rollups", "hour from rows", "speedup"
    );
    let now = Utc::now();
    for (name, from) in [
        ("1 hour", now - chrono::Duration::hours(1)),
        ("30 days", now - chrono::Duration::days(DAYS)),
    ] {
        let req = paystream_db::replica::analytics::Request {
            from,
            to: now,
            currency: None,
            trunc: None,
            resolution_times: true,
        };
        let w = Window::new(from, now, None)?;
        let (mut times, mut answers_seen) = ([Vec::new(), Vec::new()], [None, None]);
        for _ in 0..runs {
            for (i, minutes) in [true, false].into_iter().enumerate() {
                let t = Instant::now();
                let a =
                    paystream_db::replica::analytics::read::<anyhow::Error>(&answers, &req, |f| {
                        Ok(w.split(f.rollups_refreshed_at, minutes && f.rollup_minutes))
                    })
                    .await?;
                times[i].push(t.elapsed());
                if minutes && a.split.hours_end == a.split.minutes_end {
                    bail!("{name}: the minute rollups were not read ({:?})", a.split);
                }
                answers_seen[i] = Some(comparable(a));
            }
        }
        if answers_seen[0] != answers_seen[1] {
            bail!("{name}: the minute rollups and the rows disagree");
        }
        let [with, without] = times.map(median);
        println!(
            "{:<34} {:>16} {:>16} {:>7.0}x",
            format!("summary, {name}"),
            ms(with),
            ms(without),
            without.as_secs_f64() / with.as_secs_f64()
        );
    }
    primary.close().await;
    drop(answers);
    drop_db().await
}

/// One refresh of the rollups, timed.
async fn timed_refresh(
    primary: &PgPool,
    full: bool,
) -> anyhow::Result<(paystream_analytics::refresh::Refreshed, Duration)> {
    let started = Instant::now();
    let r = paystream_analytics::refresh::refresh(&primary.clone().into(), full)
        .await?
        .context("another refresh holds the lock")?;
    Ok((r, started.elapsed()))
}

/// The newest `limit` pending payments succeed (resolved at `resolved_at`, an SQL
/// expression), each with its history row as the app writes it: the refresh finds
/// changes through them.
async fn resolve_late(primary: &PgPool, limit: i64, resolved_at: &str) -> anyhow::Result<()> {
    sqlx::query(&format!(
        "WITH changed AS (
            UPDATE payments SET status = 'succeeded', resolution_source = 'poll',
                   resolved_at = {resolved_at}, updated_at = now(), version = version + 1
             WHERE id IN (SELECT id FROM payments WHERE status = 'pending' ORDER BY created_at DESC LIMIT $1)
             RETURNING id
         )
         INSERT INTO payment_status_history (payment_id, from_status, to_status, source)
         SELECT id, 'pending', 'succeeded', 'poll' FROM changed"
    ))
    .bind(limit)
    .execute(primary)
    .await?;
    Ok(())
}

/// `db` on the replica: through the project's replica reads (one connection, for the
/// answers), and a pool of its own (two connections: the naive baseline and the plans).
fn replica_pools(
    admin: &str,
    db: &str,
) -> anyhow::Result<(paystream_db::Replica, deadpool_postgres::Pool)> {
    let url = db::url(admin, db, Some(db::replica_port()?))?;
    let (pg, tls) = paystream_db::tls::tokio_postgres_config(&url)?;
    let pool = deadpool_postgres::Pool::builder(deadpool_postgres::Manager::new(pg, tls))
        .max_size(2)
        .build()?;
    Ok((paystream_db::Replica::new(&url, 1)?, pool))
}

/// An answer's figures in a fixed order (rows come in no particular one).
fn comparable(a: paystream_db::replica::analytics::Answer) -> Vec<String> {
    let mut out: Vec<String> = a
        .groups
        .iter()
        .map(|g| format!("{g:?}"))
        .chain(a.money.iter().map(|m| format!("{m:?}")))
        .chain(a.resolution_ms.iter().map(|r| format!("{r:?}")))
        .collect();
    out.sort();
    out
}
