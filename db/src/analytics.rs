//! Keeps the rollups in step with `payments` and `refunds`, on the primary. Each run
//! recomputes, whole, every hour holding a payment changed since the previous run (or a
//! payment whose refunds changed: refunds count in their payment's hour), in one
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
//! The hour a run happens in is still being filled, so every run would recompute it whole
//! (on a busy hour, hundreds of thousands of rows every few seconds: most of the primary's
//! work during a load). It is rolled up by the minute instead (`analytics_*_minutely`), the
//! same way: the finished minutes holding a change, and those the previous run left out.
//! The minute the run happens in is left to the rows. Once the hour is over, the next run
//! computes it whole and drops its minutes.

use std::collections::BTreeSet;

use chrono::{DateTime, Duration, DurationRound, Utc};

use crate::{DbError, Primary};

/// One instance refreshes at a time; the others skip their turn.
const LOCK_KEY: i64 = 0x7073_5f61_6e61_6c79; // "ps_analy"

/// Rolled up by day from `analytics_resolution_hourly`: the days of the hours a run
/// rewrites are rewritten with them.
const DAILY: &str = "analytics_resolution_daily";

/// The rollups of one grain: three tables keyed by the start of a `unit` (`hour`, `minute`),
/// in a column of that name.
#[derive(Debug, Clone, Copy)]
struct Grain {
    unit: &'static str,
    tables: [&'static str; 3],
}

const HOURS: Grain = Grain {
    unit: "hour",
    tables: [
        "analytics_hourly",
        "analytics_resolution_hourly",
        "analytics_money_hourly",
    ],
};

const MINUTES: Grain = Grain {
    unit: "minute",
    tables: [
        "analytics_minutely",
        "analytics_resolution_minutely",
        "analytics_money_minutely",
    ],
};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Refreshed {
    pub hours: usize,
    pub minutes: usize,
    pub full: bool,
}

/// The previous run, as it recorded itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Previous {
    at: DateTime<Utc>,
    /// It wrote the minute tables (a run of an earlier release did not).
    minutes: bool,
}

/// What the previous run stored: its time, its snapshot, and its time again if it wrote
/// the minute tables.
type LastRun = (DateTime<Utc>, Option<String>, Option<DateTime<Utc>>);

/// The hours and minutes a run recomputes, each sorted.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
struct Plan {
    hours: Vec<DateTime<Utc>>,
    minutes: Vec<DateTime<Utc>>,
}

fn floor(t: DateTime<Utc>, unit: Duration) -> DateTime<Utc> {
    t.duration_trunc(unit).unwrap_or(t)
}

/// Every `unit` from `from` (inclusive) to `to` (exclusive).
fn every(from: DateTime<Utc>, to: DateTime<Utc>, unit: Duration) -> Vec<DateTime<Utc>> {
    std::iter::successors(Some(from), |t| Some(*t + unit))
        .take_while(|t| *t < to)
        .collect()
}

/// An incremental run at `now`. `touched`: the minutes (of `created_at`) of the payments
/// changed since the previous run's snapshot. Finished hours come whole; the current
/// hour's finished minutes one by one. Besides the touched ones, the units the previous
/// run left out: its own hour and minute, and those since. Changes it saw there were not
/// touched for this run, so they would otherwise be lost.
fn plan(now: DateTime<Utc>, previous: Previous, touched: &[DateTime<Utc>]) -> Plan {
    let (h, m) = (Duration::hours(1), Duration::minutes(1));
    let (hour, minute) = (floor(now, h), floor(now, m));
    let mut hours: BTreeSet<_> = touched
        .iter()
        .map(|t| floor(*t, h))
        .filter(|t| *t < hour)
        .collect();
    hours.extend(every(floor(previous.at, h), hour, h));
    let mut minutes: BTreeSet<_> = touched
        .iter()
        .map(|t| floor(*t, m))
        .filter(|t| hour <= *t && *t < minute)
        .collect();
    // Without the previous run's minutes, or in an hour it did not see, every one.
    let left_out = if previous.minutes {
        floor(previous.at, m).max(hour)
    } else {
        hour
    };
    minutes.extend(every(left_out, minute, m));
    Plan {
        hours: hours.into_iter().collect(),
        minutes: minutes.into_iter().collect(),
    }
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
    let last: Option<LastRun> = sqlx::query_as(
        "SELECT refreshed_at, snapshot::text, minutes_at FROM analytics_refresh WHERE id = 1",
    )
    .fetch_optional(&mut *tx)
    .await?;
    // Taken before anything is read, so every change it sees is in what this run reads.
    // `now()` is the transaction's start, and the time this run records.
    let (snapshot, now): (String, DateTime<Utc>) =
        sqlx::query_as("SELECT pg_current_snapshot()::text, now()")
            .fetch_one(&mut *tx)
            .await?;
    // Without a stored snapshot (the first run after the migration that added it), the
    // history rows before it carry no transaction id: recompute everything once.
    let since = last
        .and_then(|(at, seen, minutes_at)| Some((at, seen?, minutes_at == Some(at))))
        .filter(|_| !full);
    let plan = match since {
        Some((at, ref seen, minutes)) => {
            let touched: Vec<DateTime<Utc>> = sqlx::query_scalar(
                "SELECT date_trunc('minute', p.created_at, 'UTC')
                   FROM payment_status_history s JOIN payments p ON p.id = s.payment_id
                  WHERE s.xact >= pg_snapshot_xmin($1::pg_snapshot)
                    AND NOT pg_visible_in_snapshot(s.xact, $1::pg_snapshot)
                 UNION
                 SELECT date_trunc('minute', p.created_at, 'UTC')
                   FROM refund_status_history s JOIN payments p ON p.id = s.payment_id
                  WHERE s.xact >= pg_snapshot_xmin($1::pg_snapshot)
                    AND NOT pg_visible_in_snapshot(s.xact, $1::pg_snapshot)",
            )
            .bind(seen)
            .fetch_all(&mut *tx)
            .await?;
            let plan = plan(now, Previous { at, minutes }, &touched);
            let hour = floor(now, Duration::hours(1));
            if !plan.hours.is_empty() {
                clear(&mut tx, HOURS, &plan.hours, None).await?;
            }
            // Minutes of the hours now rolled up whole go too.
            clear(&mut tx, MINUTES, &plan.minutes, Some(hour)).await?;
            if !plan.hours.is_empty() {
                sqlx::query(&format!(
                    "DELETE FROM {DAILY} WHERE day IN (SELECT date_trunc('day', h, 'UTC') FROM unnest($1::timestamptz[]) h)"
                ))
                .bind(&plan.hours)
                .execute(&mut *tx)
                .await?;
            }
            plan
        }
        None => {
            for table in HOURS.tables.iter().chain(&MINUTES.tables).chain([&DAILY]) {
                sqlx::query(&format!("DELETE FROM {table}"))
                    .execute(&mut *tx)
                    .await?;
            }
            let hour = floor(now, Duration::hours(1));
            Plan {
                hours: sqlx::query_scalar(
                    "SELECT DISTINCT date_trunc('hour', created_at, 'UTC') FROM payments
                     WHERE created_at < $1 ORDER BY 1",
                )
                .bind(hour)
                .fetch_all(&mut *tx)
                .await?,
                minutes: every(hour, floor(now, Duration::minutes(1)), Duration::minutes(1)),
            }
        }
    };
    for (grain, units) in [(HOURS, &plan.hours), (MINUTES, &plan.minutes)] {
        if !units.is_empty() {
            roll_up(&mut tx, grain, units).await?;
        }
    }
    if !plan.hours.is_empty() {
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
        .bind(&plan.hours)
        .execute(&mut *tx)
        .await?;
    }
    sqlx::query(
        "INSERT INTO analytics_refresh (id, refreshed_at, hours, snapshot, minutes_at)
         VALUES (1, now(), $1, $2::pg_snapshot, now())
         ON CONFLICT (id) DO UPDATE
         SET refreshed_at = excluded.refreshed_at, hours = excluded.hours,
             snapshot = excluded.snapshot, minutes_at = excluded.minutes_at",
    )
    .bind(i64::try_from(plan.hours.len()).unwrap_or(i64::MAX))
    .bind(&snapshot)
    .execute(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok(Some(Refreshed {
        hours: plan.hours.len(),
        minutes: plan.minutes.len(),
        full: since.is_none(),
    }))
}

/// Deletes the rows of `units`, and with `older` every row before it.
async fn clear(
    tx: &mut sqlx::PgConnection,
    grain: Grain,
    units: &[DateTime<Utc>],
    older: Option<DateTime<Utc>>,
) -> Result<(), DbError> {
    let unit = grain.unit;
    for table in grain.tables {
        let sql = match older {
            None => format!("DELETE FROM {table} WHERE {unit} = ANY($1)"),
            Some(_) => format!("DELETE FROM {table} WHERE {unit} = ANY($1) OR {unit} < $2"),
        };
        let mut delete = sqlx::query(&sql).bind(units);
        if let Some(older) = older {
            delete = delete.bind(older);
        }
        delete.execute(&mut *tx).await?;
    }
    Ok(())
}

/// Recomputes `units` (each the start of one `grain.unit`) of the three rollups, whose
/// rows for them were deleted first.
async fn roll_up(
    tx: &mut sqlx::PgConnection,
    grain: Grain,
    units: &[DateTime<Utc>],
) -> Result<(), DbError> {
    let Grain {
        unit,
        tables: [totals, resolution, money],
    } = grain;
    sqlx::query(&format!(
        "INSERT INTO {totals} ({unit}, currency, status, resolution_source, payments, volume)
         SELECT h, p.currency, p.status, coalesce(p.resolution_source, ''), count(*), sum(p.amount)
         FROM unnest($1::timestamptz[]) h
         JOIN payments p ON p.created_at >= h AND p.created_at < h + interval '1 {unit}'
         GROUP BY 1, 2, 3, 4"
    ))
    .bind(units)
    .execute(&mut *tx)
    .await?;
    // Histogram rows go in in key order, so that an hour's (a day's) rows share a few
    // pages: hashed out of order, a summary's 23 edge hours at 10 M payments read 8,574
    // heap pages (23 ms); in order, a third of the time.
    sqlx::query(&format!(
        "INSERT INTO {resolution} ({unit}, currency, lo_ms, payments)
         SELECT h, currency, analytics_ms_bucket(ms), count(*) FROM (
            SELECT h, p.currency, analytics_resolution_ms(p.created_at, p.resolved_at)
            FROM unnest($1::timestamptz[]) h
            JOIN payments p ON p.created_at >= h AND p.created_at < h + interval '1 {unit}'
            WHERE p.resolved_at IS NOT NULL
            OFFSET 0 -- RESOLUTION_SQL says why
         ) resolved (h, currency, ms)
         GROUP BY 1, 2, 3 ORDER BY 1, 2, 3"
    ))
    .bind(units)
    .execute(&mut *tx)
    .await?;
    // Gross is what was captured; refunds count in their payment's hour.
    sqlx::query(&format!(
        "INSERT INTO {money} ({unit}, currency, payments, captured, refunded_payments, refunds, refunded)
         SELECT h, p.currency, count(*), sum(coalesce(p.amount_captured, p.amount))::bigint,
                count(*) FILTER (WHERE r.n > 0), sum(r.n)::bigint, coalesce(sum(r.amount), 0)::bigint
         FROM unnest($1::timestamptz[]) h
         JOIN payments p ON p.status = 'succeeded'
                        AND p.created_at >= h AND p.created_at < h + interval '1 {unit}'
         CROSS JOIN LATERAL (
             SELECT count(*) AS n, sum(amount) AS amount FROM refunds
             WHERE payment_id = p.id AND status = 'succeeded'
         ) r
         GROUP BY 1, 2"
    ))
    .bind(units)
    .execute(&mut *tx)
    .await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use proptest::prelude::*;

    use super::*;

    fn at(s: i64) -> DateTime<Utc> {
        // 2026-12-04T00:00:00Z
        DateTime::from_timestamp(1_796_342_400 + s, 0).unwrap()
    }

    #[test]
    fn a_run_recomputes_the_touched_units_and_those_the_previous_run_left_out() {
        let previous = Previous {
            at: at(3_600 + 125),
            minutes: true,
        };
        // Now 01:04:10: minutes 01:02 and 01:03 are finished and new; 01:04 is the rows'.
        let p = plan(
            at(3_600 + 250),
            previous,
            &[at(60), at(3_600), at(3_600 + 240)],
        );
        assert_eq!(p.hours, vec![at(0)]);
        assert_eq!(p.minutes, vec![at(3_600), at(3_600 + 120), at(3_600 + 180)]);
        // The previous run wrote no minutes (an earlier release): all of this hour's.
        let p = plan(
            at(3_600 + 250),
            Previous {
                minutes: false,
                ..previous
            },
            &[],
        );
        assert!(p.hours.is_empty());
        assert_eq!(
            p.minutes,
            (0..4).map(|i| at(3_600 + 60 * i)).collect::<Vec<_>>()
        );
        // The first run of an hour rolls up the previous hour whole, and has no finished
        // minute of its own.
        let p = plan(at(7_200 + 30), previous, &[at(3_600 + 500)]);
        assert_eq!(p.hours, vec![at(3_600)]);
        assert!(p.minutes.is_empty());
    }

    /// One refresh in a simulated history: a run of this release, or of the previous one
    /// (hours only; it leaves the minute tables as they were).
    #[derive(Debug, Clone, Copy)]
    enum Run {
        This,
        Previous,
    }

    proptest! {
        /// Runs at increasing times over a few hours of changes; after each run of this
        /// release, every unit a reader takes from the rollups (the hours before the run's,
        /// its hour's minutes before the run's) was computed after the last change to it
        /// that the run's snapshot saw.
        #[test]
        fn rollups_read_after_a_run_have_every_change_it_saw(
            changes in proptest::collection::vec((0i64..14_400, 0i64..3_600), 0..60),
            gaps in proptest::collection::vec((1i64..1_500, proptest::bool::weighted(0.8)), 1..25),
        ) {
            // A change at `t` to a payment created `back` seconds before (not before 0).
            let changes: Vec<(i64, i64)> = changes.iter().map(|&(t, back)| (t, (t - back).max(0))).collect();
            let (h, m) = (Duration::hours(1), Duration::minutes(1));
            // When each unit was last computed (its start -> the run's time).
            let mut hours: BTreeMap<DateTime<Utc>, i64> = BTreeMap::new();
            let mut minutes: BTreeMap<DateTime<Utc>, i64> = BTreeMap::new();
            let mut previous: Option<Previous> = None;
            let mut now = 0i64;
            for (gap, this_release) in gaps {
                now += gap;
                let run = if this_release { Run::This } else { Run::Previous };
                let seen: Vec<(i64, i64)> = changes.iter().copied().filter(|&(t, _)| t < now).collect();
                let plan = match previous {
                    // The first run is full: every hour with a payment, every minute.
                    None => Plan {
                        hours: seen.iter().map(|&(_, c)| floor(at(c), h)).filter(|u| *u < floor(at(now), h))
                            .collect::<BTreeSet<_>>().into_iter().collect(),
                        minutes: every(floor(at(now), h), floor(at(now), m), m),
                    },
                    Some(p) => {
                        let touched: Vec<_> = seen.iter()
                            .filter(|&&(t, _)| t >= (p.at - at(0)).num_seconds())
                            .map(|&(_, c)| floor(at(c), m))
                            .collect();
                        plan(at(now), p, &touched)
                    }
                };
                for u in &plan.hours {
                    prop_assert!(*u < floor(at(now), h) && floor(*u, h) == *u);
                    hours.insert(*u, now);
                }
                match run {
                    Run::This => {
                        for u in &plan.minutes {
                            prop_assert!(floor(at(now), h) <= *u && *u < floor(at(now), m));
                            minutes.insert(*u, now);
                        }
                        minutes.retain(|u, _| *u >= floor(at(now), h));
                    }
                    Run::Previous => {}
                }
                previous = Some(Previous { at: at(now), minutes: matches!(run, Run::This) });
                if matches!(run, Run::Previous) {
                    continue;
                }
                for &(t, c) in &seen {
                    let created = at(c);
                    if created < floor(at(now), h) {
                        let done = hours.get(&floor(created, h));
                        prop_assert!(done.is_some_and(|d| *d > t), "hour of {c} changed at {t}, run at {now}: {done:?}");
                    } else if created < floor(at(now), m) {
                        let done = minutes.get(&floor(created, m));
                        prop_assert!(done.is_some_and(|d| *d > t), "minute of {c} changed at {t}, run at {now}: {done:?}");
                    }
                }
            }
        }
    }
}
