//! Keeps the hourly rollups in step with `payments` and `refunds`, on the primary. Each
//! run recomputes, whole, every hour holding a payment changed since the previous run (or
//! a payment whose refunds changed: refunds count in their payment's hour), in one
//! transaction: readers on the replicas see an hour either before or after, never
//! half-made. Their reads are in `replica::analytics`.
//!
//! "Changed since the previous run" is exact, by transaction: every change the rollups
//! count writes a status history row, and each history row holds its transaction's id
//! (`xact`). A run stores the snapshot it started with; the next run recomputes the hours
//! of the history rows that snapshot did not see. A long transaction committed late is
//! picked up like any other, and an hour is not recomputed again for changes the previous
//! run already counted.
//!
//! The hour a run happens in is left out: it is still being filled, so every run would
//! recompute it whole (on a busy hour, hundreds of thousands of rows every few seconds:
//! most of the primary's work during a load). Readers take it from the rows, as they take
//! every hour from the one `refreshed_at` is in (`plan::Window::split`). Once it is
//! over, the next run computes it.

use chrono::{DateTime, Utc};

use crate::{DbError, Primary};

/// The tables a refresh rewrites, hour by hour.
const ROLLUPS: [&str; 3] = [
    "analytics_hourly",
    "analytics_resolution_hourly",
    "analytics_money_hourly",
];

/// Rolled up by day from `analytics_resolution_hourly`: the days of the hours a run
/// rewrites are rewritten with them.
const DAILY: &str = "analytics_resolution_daily";

/// One instance refreshes at a time; the others skip their turn.
const LOCK_KEY: i64 = 0x7073_5f61_6e61_6c79; // "ps_analy"

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Refreshed {
    pub hours: usize,
    pub full: bool,
}

/// Refreshes the rollups; `full` (or a first run) recomputes every hour. `None` when
/// another instance is refreshing.
pub async fn refresh(primary: &Primary, full: bool) -> Result<Option<Refreshed>, DbError> {
    let mut tx = primary.pool().begin().await?;
    let locked: bool = sqlx::query_scalar("SELECT pg_try_advisory_xact_lock($1)")
        .bind(LOCK_KEY)
        .fetch_one(&mut *tx)
        .await?;
    if !locked {
        return Ok(None);
    }
    let last: Option<(DateTime<Utc>, Option<String>)> =
        sqlx::query_as("SELECT refreshed_at, snapshot::text FROM analytics_refresh WHERE id = 1")
            .fetch_optional(&mut *tx)
            .await?;
    // Taken before anything is read, so every change it sees is in what this run reads.
    let snapshot: String = sqlx::query_scalar("SELECT pg_current_snapshot()::text")
        .fetch_one(&mut *tx)
        .await?;
    // Without a stored snapshot (the first run after the migration that added it), the
    // history rows before it carry no transaction id: recompute everything once.
    let since = last
        .and_then(|(at, seen)| Some((at, seen?)))
        .filter(|_| !full);
    let hours: Vec<DateTime<Utc>> = match since {
        Some((since, ref seen)) => {
            let hours = sqlx::query_scalar(
                "SELECT h FROM (
                    SELECT date_trunc('hour', p.created_at, 'UTC') AS h
                      FROM payment_status_history s JOIN payments p ON p.id = s.payment_id
                     WHERE s.xact >= pg_snapshot_xmin($2::pg_snapshot)
                       AND NOT pg_visible_in_snapshot(s.xact, $2::pg_snapshot)
                    UNION
                    SELECT date_trunc('hour', p.created_at, 'UTC')
                      FROM refund_status_history s JOIN payments p ON p.id = s.payment_id
                     WHERE s.xact >= pg_snapshot_xmin($2::pg_snapshot)
                       AND NOT pg_visible_in_snapshot(s.xact, $2::pg_snapshot)
                    UNION
                    -- The hours the previous run left out, over since.
                    SELECT generate_series(date_trunc('hour', $1, 'UTC'),
                                           date_trunc('hour', now(), 'UTC') - interval '1 hour',
                                           interval '1 hour')
                 ) touched WHERE h < date_trunc('hour', now(), 'UTC')",
            )
            .bind(since)
            .bind(seen)
            .fetch_all(&mut *tx)
            .await?;
            for table in ROLLUPS.iter().filter(|_| !hours.is_empty()) {
                sqlx::query(&format!("DELETE FROM {table} WHERE hour = ANY($1)"))
                    .bind(&hours)
                    .execute(&mut *tx)
                    .await?;
            }
            if !hours.is_empty() {
                sqlx::query(&format!(
                    "DELETE FROM {DAILY} WHERE day IN (SELECT date_trunc('day', h, 'UTC') FROM unnest($1::timestamptz[]) h)"
                ))
                .bind(&hours)
                .execute(&mut *tx)
                .await?;
            }
            hours
        }
        None => {
            for table in ROLLUPS.iter().chain([&DAILY]) {
                sqlx::query(&format!("DELETE FROM {table}"))
                    .execute(&mut *tx)
                    .await?;
            }
            sqlx::query_scalar(
                "SELECT DISTINCT date_trunc('hour', created_at, 'UTC') FROM payments
                 WHERE created_at < date_trunc('hour', now(), 'UTC')",
            )
            .fetch_all(&mut *tx)
            .await?
        }
    };
    if !hours.is_empty() {
        sqlx::query(
            "INSERT INTO analytics_hourly (hour, currency, status, resolution_source, payments, volume)
             SELECT h, p.currency, p.status, coalesce(p.resolution_source, ''), count(*), sum(p.amount)
             FROM unnest($1::timestamptz[]) h
             JOIN payments p ON p.created_at >= h AND p.created_at < h + interval '1 hour'
             GROUP BY 1, 2, 3, 4",
        )
        .bind(&hours)
        .execute(&mut *tx)
        .await?;
        // Histogram rows go in in key order, so that an hour's (a day's) rows share a few
        // pages: hashed out of order, a summary's 23 edge hours at 10 M payments read
        // 8,574 heap pages (23 ms); in order, a third of the time.
        sqlx::query(
            "INSERT INTO analytics_resolution_hourly (hour, currency, lo_ms, payments)
             SELECT h, currency, analytics_ms_bucket(ms), count(*) FROM (
                SELECT h, p.currency, analytics_resolution_ms(p.created_at, p.resolved_at)
                FROM unnest($1::timestamptz[]) h
                JOIN payments p ON p.created_at >= h AND p.created_at < h + interval '1 hour'
                WHERE p.resolved_at IS NOT NULL
                OFFSET 0 -- RESOLUTION_SQL says why
             ) resolved (h, currency, ms)
             GROUP BY 1, 2, 3 ORDER BY 1, 2, 3",
        )
        .bind(&hours)
        .execute(&mut *tx)
        .await?;
        // Whole days, from the hourly rows just written and those the day already had.
        // Not today: readers take whole days only before the day of the rollups' last
        // hour, so today's row would be rewritten every run and never read; the first run
        // after midnight computes it (it computes the last hour of the day).
        // `+ 24 hours`, not `+ 1 day`: a day of the session's time zone may be 23 or 25.
        sqlx::query(&format!(
            "INSERT INTO {DAILY} (day, currency, lo_ms, payments)
             SELECT d, r.currency, r.lo_ms, sum(r.payments)
             FROM (SELECT DISTINCT date_trunc('day', h, 'UTC') AS d FROM unnest($1::timestamptz[]) h) days
             JOIN analytics_resolution_hourly r ON r.hour >= d AND r.hour < d + interval '24 hours'
             WHERE d < date_trunc('day', now(), 'UTC')
             GROUP BY 1, 2, 3 ORDER BY 1, 2, 3"
        ))
        .bind(&hours)
        .execute(&mut *tx)
        .await?;
        // Gross is what was captured; refunds count in their payment's hour.
        sqlx::query(
            "INSERT INTO analytics_money_hourly
                    (hour, currency, payments, captured, refunded_payments, refunds, refunded)
             SELECT h, p.currency, count(*), sum(coalesce(p.amount_captured, p.amount))::bigint,
                    count(*) FILTER (WHERE r.n > 0), sum(r.n)::bigint, coalesce(sum(r.amount), 0)::bigint
             FROM unnest($1::timestamptz[]) h
             JOIN payments p ON p.status = 'succeeded'
                            AND p.created_at >= h AND p.created_at < h + interval '1 hour'
             CROSS JOIN LATERAL (
                 SELECT count(*) AS n, sum(amount) AS amount FROM refunds
                 WHERE payment_id = p.id AND status = 'succeeded'
             ) r
             GROUP BY 1, 2",
        )
        .bind(&hours)
        .execute(&mut *tx)
        .await?;
    }
    sqlx::query(
        "INSERT INTO analytics_refresh (id, refreshed_at, hours, snapshot) VALUES (1, now(), $1, $2::pg_snapshot)
         ON CONFLICT (id) DO UPDATE
         SET refreshed_at = excluded.refreshed_at, hours = excluded.hours, snapshot = excluded.snapshot",
    )
    .bind(i64::try_from(hours.len()).unwrap_or(i64::MAX))
    .bind(&snapshot)
    .execute(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok(Some(Refreshed {
        hours: hours.len(),
        full: since.is_none(),
    }))
}
