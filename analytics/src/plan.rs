//! The pure part of a query: its window, checked, and which parts of it come from the
//! hourly rollups and which from raw rows.

use chrono::{DateTime, Duration, DurationRound, Utc};
use serde::Serialize;

/// Longest window served: a year of hourly points is 8,784 of them.
pub const MAX_WINDOW_DAYS: i64 = 366;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum QueryError {
    #[error("the window must run forward (from < to) and span at most {MAX_WINDOW_DAYS} days")]
    Window,
    #[error("{0:?} is not a supported ISO 4217 currency (lowercase, e.g. usd)")]
    Currency(String),
    #[error("unknown bucket {0:?}: hour or day")]
    Bucket(String),
    #[error(
        "unknown metric {0:?}: count, volume, success_rate, gross_volume, refunded_volume, net_volume, refunds or refund_rate_bps"
    )]
    Metric(String),
    #[error(
        "metrics of amounts (volume, gross_volume, refunded_volume, net_volume) need a currency: amounts in different currencies do not add up"
    )]
    VolumeNeedsCurrency,
}

/// `[from, to)` over payments' `created_at`, optionally one currency.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Window {
    pub from: DateTime<Utc>,
    pub to: DateTime<Utc>,
    pub currency: Option<String>,
}

impl Window {
    pub fn new(
        from: DateTime<Utc>,
        to: DateTime<Utc>,
        currency: Option<&str>,
    ) -> Result<Window, QueryError> {
        if from >= to || to - from > Duration::days(MAX_WINDOW_DAYS) {
            return Err(QueryError::Window);
        }
        let currency = currency
            .map(|c| {
                paystream_core::Currency::parse(c)
                    .map(|cur| cur.code().to_owned())
                    .map_err(|_| QueryError::Currency(c.to_owned()))
            })
            .transpose()?;
        Ok(Window { from, to, currency })
    }

    /// Raw rows for `[from, rollup.0)` and `[rollup.1, to)`, rollups for the whole hours
    /// in between. `refreshed_at` is the rollups' last refresh: they hold every hour
    /// before the one it ran in (that hour was still being filled). Without rollups
    /// (never refreshed) or without a whole hour, everything is raw: `rollup` is then the
    /// empty `[to, to)`.
    pub fn split(&self, refreshed_at: Option<DateTime<Utc>>) -> (DateTime<Utc>, DateTime<Utc>) {
        let hour = Duration::hours(1);
        let floor = |t: DateTime<Utc>| t.duration_trunc(hour).unwrap_or(t);
        let first = if floor(self.from) == self.from {
            self.from
        } else {
            floor(self.from) + hour
        };
        match refreshed_at.map(|r| floor(self.to).min(floor(r))) {
            Some(last) if first < last => (first, last),
            _ => (self.to, self.to),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Bucket {
    Hour,
    Day,
}

impl Bucket {
    pub fn parse(s: &str) -> Result<Bucket, QueryError> {
        match s {
            "hour" => Ok(Bucket::Hour),
            "day" => Ok(Bucket::Day),
            _ => Err(QueryError::Bucket(s.to_owned())),
        }
    }

    /// The unit for SQL's `date_trunc(unit, t, 'UTC')`.
    pub fn unit(self) -> &'static str {
        match self {
            Bucket::Hour => "hour",
            Bucket::Day => "day",
        }
    }

    fn length(self) -> Duration {
        match self {
            Bucket::Hour => Duration::hours(1),
            Bucket::Day => Duration::days(1),
        }
    }

    /// The starts of the buckets that overlap `[from, to)`, in UTC like SQL's.
    pub fn starts(self, from: DateTime<Utc>, to: DateTime<Utc>) -> Vec<DateTime<Utc>> {
        let step = self.length();
        let mut t = from.duration_trunc(step).unwrap_or(from);
        let mut out = Vec::new();
        while t < to {
            out.push(t);
            t += step;
        }
        out
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Metric {
    /// Payments created in the bucket.
    Count,
    /// Minor units of the bucket's payments that succeeded (one currency).
    Volume,
    /// Succeeded / (succeeded + failed + canceled) of the bucket's final payments.
    SuccessRate,
    /// Minor units the bucket's succeeded payments captured (one currency).
    GrossVolume,
    /// Minor units given back by the succeeded refunds of the bucket's payments (one
    /// currency). A refund counts in its payment's bucket, whenever it was made.
    RefundedVolume,
    /// Gross less refunded (one currency).
    NetVolume,
    /// Succeeded refunds of the bucket's payments.
    Refunds,
    /// Succeeded payments with a succeeded refund per 10,000 succeeded payments (basis
    /// points, rounded down); `null` with no succeeded payment.
    RefundRateBps,
}

impl Metric {
    pub const ALL: [Metric; 8] = [
        Metric::Count,
        Metric::Volume,
        Metric::SuccessRate,
        Metric::GrossVolume,
        Metric::RefundedVolume,
        Metric::NetVolume,
        Metric::Refunds,
        Metric::RefundRateBps,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Metric::Count => "count",
            Metric::Volume => "volume",
            Metric::SuccessRate => "success_rate",
            Metric::GrossVolume => "gross_volume",
            Metric::RefundedVolume => "refunded_volume",
            Metric::NetVolume => "net_volume",
            Metric::Refunds => "refunds",
            Metric::RefundRateBps => "refund_rate_bps",
        }
    }

    pub fn parse(s: &str) -> Result<Metric, QueryError> {
        Metric::ALL
            .into_iter()
            .find(|m| m.as_str() == s)
            .ok_or_else(|| QueryError::Metric(s.to_owned()))
    }

    /// Amounts: they add up only within one currency.
    pub fn needs_currency(self) -> bool {
        matches!(
            self,
            Metric::Volume | Metric::GrossVolume | Metric::RefundedVolume | Metric::NetVolume
        )
    }
}

/// `part` per 10,000 of `whole`, rounded down; `None` when `whole` is not positive.
/// Integers throughout: rates of money never go through floats.
pub fn basis_points(part: i64, whole: i64) -> Option<i64> {
    (whole > 0)
        .then(|| i64::try_from(i128::from(part) * 10_000 / i128::from(whole)).unwrap_or(i64::MAX))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn t(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s).unwrap().to_utc()
    }

    #[test]
    fn windows_are_checked() {
        let (a, b) = (t("2026-01-01T00:00:00Z"), t("2026-01-02T00:00:00Z"));
        assert!(Window::new(a, b, None).is_ok());
        assert_eq!(Window::new(b, a, None), Err(QueryError::Window));
        assert_eq!(Window::new(a, a, None), Err(QueryError::Window));
        assert_eq!(
            Window::new(a, a + Duration::days(367), None),
            Err(QueryError::Window)
        );
        assert_eq!(
            Window::new(a, b, Some("usd")).unwrap().currency.as_deref(),
            Some("usd")
        );
        for bad in ["USD", "xx", "zzz", "", "us d"] {
            assert_eq!(
                Window::new(a, b, Some(bad)),
                Err(QueryError::Currency(bad.into()))
            );
        }
    }

    #[test]
    fn whole_hours_come_from_rollups_and_edges_from_rows() {
        let later = Some(t("2026-02-01T00:00:00Z"));
        let w = Window::new(t("2026-01-01T10:20:00Z"), t("2026-01-01T15:05:00Z"), None).unwrap();
        assert_eq!(
            w.split(later),
            (t("2026-01-01T11:00:00Z"), t("2026-01-01T15:00:00Z"))
        );
        assert_eq!(w.split(None), (w.to, w.to));
        // Refreshed at 13:40: the rollups end at 13:00, the rest is read from rows.
        assert_eq!(
            w.split(Some(t("2026-01-01T13:40:00Z"))),
            (t("2026-01-01T11:00:00Z"), t("2026-01-01T13:00:00Z"))
        );
        assert_eq!(w.split(Some(t("2026-01-01T11:59:00Z"))), (w.to, w.to));
        let aligned =
            Window::new(t("2026-01-01T10:00:00Z"), t("2026-01-01T12:00:00Z"), None).unwrap();
        assert_eq!(aligned.split(later), (aligned.from, aligned.to));
        let inside =
            Window::new(t("2026-01-01T10:10:00Z"), t("2026-01-01T10:50:00Z"), None).unwrap();
        assert_eq!(inside.split(later), (inside.to, inside.to));
        let across =
            Window::new(t("2026-01-01T10:10:00Z"), t("2026-01-01T11:50:00Z"), None).unwrap();
        assert_eq!(across.split(later), (across.to, across.to));
    }

    #[test]
    fn bucket_starts_cover_the_window() {
        let starts = Bucket::Day.starts(t("2026-01-01T10:00:00Z"), t("2026-01-03T00:00:01Z"));
        assert_eq!(
            starts,
            vec![
                t("2026-01-01T00:00:00Z"),
                t("2026-01-02T00:00:00Z"),
                t("2026-01-03T00:00:00Z")
            ]
        );
        assert_eq!(
            Bucket::Hour
                .starts(t("2026-01-01T10:00:00Z"), t("2026-01-01T12:00:00Z"))
                .len(),
            2
        );
        assert_eq!(
            Bucket::parse("week"),
            Err(QueryError::Bucket("week".into()))
        );
        assert_eq!(Metric::parse("success_rate"), Ok(Metric::SuccessRate));
        assert_eq!(Metric::parse("avg"), Err(QueryError::Metric("avg".into())));
        for m in Metric::ALL {
            assert_eq!(Metric::parse(m.as_str()), Ok(m));
            assert_eq!(
                serde_json::to_value(m).unwrap(),
                serde_json::Value::from(m.as_str())
            );
        }
        assert!(Metric::NetVolume.needs_currency() && !Metric::RefundRateBps.needs_currency());
    }

    #[test]
    fn basis_points_round_down_and_never_divide_by_zero() {
        assert_eq!(basis_points(0, 0), None);
        assert_eq!(basis_points(3, 0), None);
        assert_eq!(basis_points(0, 7), Some(0));
        assert_eq!(basis_points(1, 3), Some(3333));
        assert_eq!(basis_points(2, 3), Some(6666));
        assert_eq!(basis_points(7, 7), Some(10_000));
        assert_eq!(basis_points(i64::MAX, i64::MAX), Some(10_000));
    }

    proptest! {
        /// Raw head + rollup hours + raw tail is exactly the window, with no overlap, and the
        /// rollup part is whole hours.
        #[test]
        fn the_split_partitions_the_window(from in 0i64..10_000_000, len in 1i64..1_000_000, refreshed in proptest::option::of(0i64..12_000_000)) {
            let base = 1_800_000_000i64;
            let w = Window::new(
                DateTime::from_timestamp(base + from, 0).unwrap(),
                DateTime::from_timestamp(base + from + len, 0).unwrap(),
                None,
            ).unwrap();
            let refreshed = refreshed.map(|r| DateTime::from_timestamp(base + r, 0).unwrap());
            let (a, b) = w.split(refreshed);
            prop_assert!(w.from <= a && a <= b && b <= w.to);
            if a < b {
                // Only hours the refresh had finished.
                prop_assert!(refreshed.is_some_and(|r| b <= r));
                prop_assert_eq!(a.timestamp() % 3600, 0);
                prop_assert_eq!(b.timestamp() % 3600, 0);
                prop_assert!(a - w.from < Duration::hours(1));
                prop_assert!(w.to - b < Duration::hours(1) || refreshed.is_some_and(|r| r - b < Duration::hours(1)));
            } else {
                prop_assert_eq!((a, b), (w.to, w.to));
            }
        }
    }
}
