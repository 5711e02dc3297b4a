//! The analytics reads: rollups for whole hours and for the finished minutes of the hour
//! the rollups were refreshed in, raw rows for a window's partial edges, all in one
//! repeatable-read snapshot so that the freshness reported, the rollups and the raw edges
//! agree.

use chrono::{DateTime, Utc};
use paystream_core::PaymentStatus;
use tokio_postgres::Transaction;
use tokio_postgres::types::ToSql;

use crate::payments::{Source, parse_source, parse_status};
use crate::{DbError, Replica};

/// How series are bucketed (`date_trunc`'s unit).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Trunc {
    Hour,
    Day,
}

impl Trunc {
    fn unit(self) -> &'static str {
        match self {
            Trunc::Hour => "hour",
            Trunc::Day => "day",
        }
    }
}

/// What the replica says of itself when the snapshot is taken.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Freshness {
    pub in_recovery: bool,
    /// `pg_last_xact_replay_timestamp()`.
    pub replayed_at: Option<DateTime<Utc>>,
    /// 0 when it has replayed all it received, else the age of its last replayed commit.
    pub lag_ms: Option<i64>,
    pub streaming: bool,
    pub rollups_refreshed_at: Option<DateTime<Utc>>,
    /// That refresh also rolled up its hour's finished minutes (one of an earlier
    /// release did not).
    pub rollup_minutes: bool,
}

/// Which part of a window is read from where. With `from` and `to` the window's bounds,
/// `from <= start <= hours_end <= minutes_end <= to`:
/// - `[from, start)`: raw rows;
/// - `[start, hours_end)`: the hourly rollups, whole hours;
/// - `[hours_end, minutes_end)`: the minute rollups, whole minutes;
/// - `[minutes_end, to)`: raw rows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Split {
    pub start: DateTime<Utc>,
    pub hours_end: DateTime<Utc>,
    pub minutes_end: DateTime<Utc>,
}

impl Split {
    /// Everything from the rows.
    pub fn raw(to: DateTime<Utc>) -> Split {
        Split {
            start: to,
            hours_end: to,
            minutes_end: to,
        }
    }

    pub fn uses_rollups(&self) -> bool {
        self.start < self.minutes_end
    }
}

/// One group of payments: bucket start (series only), currency, status, resolution source.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Group {
    pub start: Option<DateTime<Utc>>,
    pub currency: String,
    pub status: PaymentStatus,
    pub source: Option<Source>,
    pub count: i64,
    pub volume: i64,
}

/// The money of one group of succeeded payments: bucket start (series only), currency.
/// Refunds count in their payment's group, whenever they were made.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MoneyGroup {
    pub start: Option<DateTime<Utc>>,
    pub currency: String,
    /// Succeeded payments.
    pub payments: i64,
    /// What they captured (gross volume), minor units.
    pub captured: i64,
    /// Those with at least one succeeded refund.
    pub refunded_payments: i64,
    /// Their succeeded refunds.
    pub refunds: i64,
    /// What those refunds gave back, minor units.
    pub refunded: i64,
}

pub struct Request<'a> {
    pub from: DateTime<Utc>,
    pub to: DateTime<Utc>,
    pub currency: Option<&'a str>,
    /// Per bucket (a series), or one total per group (a summary).
    pub trunc: Option<Trunc>,
    /// Also read the creation-to-resolution histogram.
    pub resolution_times: bool,
}

pub struct Answer {
    pub freshness: Freshness,
    /// What was read from the rollups.
    pub split: Split,
    pub groups: Vec<Group>,
    /// Succeeded payments' captured and refunded money, per bucket (series) and currency.
    pub money: Vec<MoneyGroup>,
    /// (bucket's lower bound in ms, payments) of the resolution-time histogram.
    pub resolution_ms: Vec<(i64, i64)>,
}

/// Reads `req` in one snapshot. `plan` sees the replica's freshness first and answers
/// which whole hours to read from the rollups, or refuses (a lagging replica, a primary).
pub async fn read<E: From<DbError>>(
    replica: &Replica,
    req: &Request<'_>,
    plan: impl FnOnce(&Freshness) -> Result<Split, E>,
) -> Result<Answer, E> {
    let mut client = replica.client().await?;
    let tx = client
        .build_transaction()
        .isolation_level(tokio_postgres::IsolationLevel::RepeatableRead)
        .read_only(true)
        .start()
        .await
        .map_err(DbError::from)?;
    let freshness = freshness(&tx).await?;
    // Dropping the transaction on a refusal rolls it back.
    let split = plan(&freshness)?;
    let (groups, resolution_ms) = totals(&tx, req, split).await?;
    let money = money(&tx, req, split).await?;
    tx.commit().await.map_err(DbError::from)?;
    Ok(Answer {
        freshness,
        split,
        groups,
        money,
        resolution_ms,
    })
}

async fn freshness(tx: &Transaction<'_>) -> Result<Freshness, DbError> {
    let row = tx.query_one(FRESHNESS_SQL, &[]).await?;
    Ok(Freshness {
        in_recovery: row.try_get(0)?,
        replayed_at: row.try_get(1)?,
        lag_ms: row.try_get(2)?,
        streaming: row.try_get(3)?,
        rollups_refreshed_at: row.try_get(4)?,
        rollup_minutes: row.try_get::<_, Option<bool>>(5)?.unwrap_or(false),
    })
}

/// The groups, and the resolution-time histogram if asked for.
async fn totals(
    tx: &Transaction<'_>,
    req: &Request<'_>,
    split: Split,
) -> Result<(Vec<Group>, Vec<(i64, i64)>), DbError> {
    let params = params(req, &split);
    let groups = tx
        .query(&totals_sql(req.trunc), &params)
        .await?
        .iter()
        .map(|r| -> Result<Group, DbError> {
            let source: &str = r.try_get(3)?;
            Ok(Group {
                start: r.try_get(0)?,
                currency: r.try_get(1)?,
                status: parse_status(r.try_get(2)?)?,
                source: (!source.is_empty())
                    .then(|| parse_source(source))
                    .transpose()?,
                count: r.try_get(4)?,
                volume: r.try_get(5)?,
            })
        })
        .collect::<Result<Vec<_>, _>>()?;
    let resolution_ms = if req.resolution_times {
        tx.query(RESOLUTION_SQL, &params)
            .await?
            .iter()
            .map(|r| Ok((r.try_get(0)?, r.try_get(1)?)))
            .collect::<Result<Vec<_>, DbError>>()?
    } else {
        Vec::new()
    };
    Ok((groups, resolution_ms))
}

/// Gross, refunded and refund counts of the succeeded payments, in the same snapshot.
async fn money(
    tx: &Transaction<'_>,
    req: &Request<'_>,
    split: Split,
) -> Result<Vec<MoneyGroup>, DbError> {
    let params = params(req, &split);
    tx.query(&money_sql(req.trunc), &params)
        .await?
        .iter()
        .map(|r| {
            Ok(MoneyGroup {
                start: r.try_get(0)?,
                currency: r.try_get(1)?,
                payments: r.try_get(2)?,
                captured: r.try_get(3)?,
                refunded_payments: r.try_get(4)?,
                refunds: r.try_get(5)?,
                refunded: r.try_get(6)?,
            })
        })
        .collect()
}

const FRESHNESS_SQL: &str = "
SELECT pg_is_in_recovery(),
       pg_last_xact_replay_timestamp(),
       CASE WHEN pg_last_wal_receive_lsn() IS NULL
              OR pg_last_wal_receive_lsn() <= pg_last_wal_replay_lsn() THEN 0::bigint
            ELSE greatest(0, floor(extract(epoch FROM clock_timestamp()
                                   - pg_last_xact_replay_timestamp()) * 1000))::bigint
       END,
       EXISTS (SELECT FROM pg_stat_wal_receiver WHERE status = 'streaming'),
       (SELECT refreshed_at FROM analytics_refresh WHERE id = 1),
       (SELECT minutes_at = refreshed_at FROM analytics_refresh WHERE id = 1)";

/// The parameters of every part's SQL: `$1` from, `$2` the rollups' start, `$3` the end of
/// their hours, `$4` to, `$5` the currency or null, `$6` the end of their minutes.
fn params<'a>(req: &'a Request<'_>, split: &'a Split) -> [&'a (dyn ToSql + Sync); 6] {
    [
        &req.from,
        &split.start,
        &split.hours_end,
        &req.to,
        &req.currency,
        &split.minutes_end,
    ]
}

/// A bucket's start from a time column: null for a summary's one bucket.
fn bucket(trunc: Option<Trunc>, column: &str) -> String {
    match trunc {
        None => "NULL::timestamptz".to_owned(),
        Some(t) => format!("date_trunc('{}', {column}, 'UTC')", t.unit()),
    }
}

/// Parameters as [`params`]. Each part reads through an index range: rollups by hour or
/// minute, raw rows by `created_at` (index-only, the index covers every column read).
fn totals_sql(trunc: Option<Trunc>) -> String {
    let cur = "($5::text IS NULL OR currency = $5::text)";
    let rolled = |table: &str, unit: &str, lo: &str, hi: &str| {
        format!(
            "SELECT {}, currency, status, resolution_source, payments, volume
              FROM {table} WHERE {unit} >= {lo} AND {unit} < {hi} AND {cur}",
            bucket(trunc, unit)
        )
    };
    let raw = |lo: &str, hi: &str| {
        format!(
            "SELECT {}, currency, status, coalesce(resolution_source, ''), 1, amount
              FROM payments WHERE created_at >= {lo} AND created_at < {hi} AND {cur}",
            bucket(trunc, "created_at")
        )
    };
    format!(
        "SELECT start, currency, status, resolution_source, sum(payments)::bigint, sum(volume)::bigint
         FROM ({} UNION ALL {} UNION ALL {} UNION ALL {}) parts (start, currency, status, resolution_source, payments, volume)
         GROUP BY 1, 2, 3, 4",
        rolled("analytics_hourly", "hour", "$2", "$3"),
        rolled("analytics_minutely", "minute", "$3", "$6"),
        raw("$1", "$2"),
        raw("$6", "$4"),
    )
}

/// Parameters as [`params`]. The raw edges read succeeded payments through their
/// partial covering index and each one's succeeded refunds through theirs (migration
/// 0010); captured is `amount_captured`, or the amount for payments that succeeded before
/// it existed.
fn money_sql(trunc: Option<Trunc>) -> String {
    let cur = "($5::text IS NULL OR currency = $5::text)";
    let rolled = |table: &str, unit: &str, lo: &str, hi: &str| {
        format!(
            "SELECT {}, currency, payments, captured, refunded_payments, refunds, refunded
              FROM {table} WHERE {unit} >= {lo} AND {unit} < {hi} AND {cur}",
            bucket(trunc, unit)
        )
    };
    let raw = bucket(trunc, "p.created_at");
    let raw_part = |lo: &str, hi: &str| {
        format!(
            "SELECT {raw}, p.currency, 1::bigint, coalesce(p.amount_captured, p.amount),
                    (r.n > 0)::int::bigint, r.n, coalesce(r.amount, 0)::bigint
              FROM payments p
              CROSS JOIN LATERAL (
                  SELECT count(*) AS n, sum(amount) AS amount FROM refunds
                  WHERE payment_id = p.id AND status = 'succeeded'
              ) r
              WHERE p.status = 'succeeded' AND p.created_at >= {lo} AND p.created_at < {hi}
                AND ($5::text IS NULL OR p.currency = $5::text)"
        )
    };
    format!(
        "SELECT start, currency, sum(payments)::bigint, sum(captured)::bigint,
                sum(refunded_payments)::bigint, sum(refunds)::bigint, sum(refunded)::bigint
         FROM ({} UNION ALL {} UNION ALL {} UNION ALL {})
              parts (start, currency, payments, captured, refunded_payments, refunds, refunded)
         GROUP BY 1, 2",
        rolled("analytics_money_hourly", "hour", "$2", "$3"),
        rolled("analytics_money_minutely", "minute", "$3", "$6"),
        raw_part("$1", "$2"),
        raw_part("$6", "$4"),
    )
}

/// The rolled-up span [$2, $3) reads whole UTC days from the daily histogram and only
/// the hours before the first and from the last whole day on from the hourly one: a
/// 30-day window sums about 24 times fewer rows. Each part is a range of its table's
/// primary key (a filter excluding the whole days would read every hourly row).
/// The raw edges compute each row's time in a subquery kept apart by `OFFSET 0`: the
/// bucket function reads its argument many times, and PostgreSQL inlines it (migration
/// 0013) only when that argument is a plain column, not the time's whole expression.
const RESOLUTION_SQL: &str = "
SELECT lo_ms, sum(payments)::bigint FROM (
    SELECT lo_ms, payments FROM analytics_resolution_daily
     WHERE day >= (SELECT first FROM analytics_whole_days($2, $3)) AND day < (SELECT last FROM analytics_whole_days($2, $3))
       AND ($5::text IS NULL OR currency = $5::text)
    UNION ALL
    SELECT lo_ms, payments FROM analytics_resolution_hourly
     WHERE hour >= $2 AND hour < least((SELECT first FROM analytics_whole_days($2, $3)), $3)
       AND ($5::text IS NULL OR currency = $5::text)
    UNION ALL
    SELECT lo_ms, payments FROM analytics_resolution_hourly
     WHERE hour >= (SELECT greatest(first, last) FROM analytics_whole_days($2, $3)) AND hour < $3
       AND ($5::text IS NULL OR currency = $5::text)
    UNION ALL
    SELECT lo_ms, payments FROM analytics_resolution_minutely
     WHERE minute >= $3 AND minute < $6 AND ($5::text IS NULL OR currency = $5::text)
    UNION ALL
    SELECT analytics_ms_bucket(ms), 1 FROM (
        SELECT analytics_resolution_ms(created_at, resolved_at) FROM payments
         WHERE created_at >= $1 AND created_at < $2 AND resolved_at IS NOT NULL
           AND ($5::text IS NULL OR currency = $5::text)
        UNION ALL
        SELECT analytics_resolution_ms(created_at, resolved_at) FROM payments
         WHERE created_at >= $6 AND created_at < $4 AND resolved_at IS NOT NULL
           AND ($5::text IS NULL OR currency = $5::text)
        OFFSET 0
    ) raw_edges (ms)
) parts GROUP BY 1";

/// The SQL each answer runs, for `EXPLAIN` in the plan checks and the benchmark.
pub fn sql_for_explain() -> [(&'static str, String); 5] {
    [
        ("summary totals", totals_sql(None)),
        ("summary resolution times", RESOLUTION_SQL.to_owned()),
        ("summary money", money_sql(None)),
        ("hourly series", totals_sql(Some(Trunc::Hour))),
        ("hourly money series", money_sql(Some(Trunc::Hour))),
    ]
}
