//! The pure part of a query: its window, checked, and which parts of it come from the
//! rollups (hourly, and by the minute for the hour in progress) and which from raw rows.

use chrono::{DateTime, Duration, DurationRound, Utc};
pub use paystream_db::replica::analytics::Split;
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

    /// Which parts come from the rollups, given their last refresh (`refreshed_at`) and
    /// whether it rolled up its hour's finished minutes (`minutes`). The rollups hold
    /// every hour before the one the refresh ran in and, with `minutes`, that hour's
    /// minutes before the one it ran in. Whole hours of the window come from the hourly
    /// rollups, then whole minutes from the minute ones where they go on from there, and
    /// the edges from rows. Without a refresh, or without a whole rolled-up hour or
    /// minute in the window, everything is raw ([`Split::raw`]).
    pub fn split(&self, refreshed_at: Option<DateTime<Utc>>, minutes: bool) -> Split {
        let (h, m) = (Duration::hours(1), Duration::minutes(1));
        let floor = |t: DateTime<Utc>, unit: Duration| t.duration_trunc(unit).unwrap_or(t);
        let ceil = |t: DateTime<Utc>, unit: Duration| {
            if floor(t, unit) == t {
                t
            } else {
                floor(t, unit) + unit
            }
        };
        let Some(r) = refreshed_at else {
            return Split::raw(self.to);
        };
        // The minutes rolled up: from the refresh's hour to its minute.
        let (rolled_minutes_from, rolled_minutes_to) =
            (floor(r, h), if minutes { floor(r, m) } else { floor(r, h) });
        let (first_hour, last_hour) = (ceil(self.from, h), floor(self.to, h).min(floor(r, h)));
        let minutes_to = floor(self.to, m).min(rolled_minutes_to);
        if first_hour < last_hour {
            return Split {
                start: first_hour,
                hours_end: last_hour,
                minutes_end: if last_hour == rolled_minutes_from {
                    minutes_to.max(last_hour)
                } else {
                    last_hour
                },
            };
        }
        let first_minute = ceil(self.from, m).max(rolled_minutes_from);
        if first_minute < minutes_to {
            return Split {
                start: first_minute,
                hours_end: first_minute,
                minutes_end: minutes_to,
            };
        }
        Split::raw(self.to)
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

    fn split(start: &str, hours_end: &str, minutes_end: &str) -> Split {
        Split {
            start: t(start),
            hours_end: t(hours_end),
            minutes_end: t(minutes_end),
        }
    }

    #[test]
    fn whole_hours_come_from_rollups_and_edges_from_rows() {
        let later = Some(t("2026-02-01T00:00:00Z"));
        let w = Window::new(t("2026-01-01T10:20:00Z"), t("2026-01-01T15:05:00Z"), None).unwrap();
        let hours = split(
            "2026-01-01T11:00:00Z",
            "2026-01-01T15:00:00Z",
            "2026-01-01T15:00:00Z",
        );
        assert_eq!(w.split(later, true), hours);
        assert_eq!(w.split(later, false), hours);
        assert_eq!(w.split(None, true), Split::raw(w.to));
        // Refreshed at 13:40: hours to 13:00, then that hour's minutes to 13:40.
        let at_13_40 = Some(t("2026-01-01T13:40:30Z"));
        assert_eq!(
            w.split(at_13_40, true),
            split(
                "2026-01-01T11:00:00Z",
                "2026-01-01T13:00:00Z",
                "2026-01-01T13:40:00Z"
            )
        );
        // A refresh of an earlier release rolled up no minutes: the hour is read from rows.
        assert_eq!(
            w.split(at_13_40, false),
            split(
                "2026-01-01T11:00:00Z",
                "2026-01-01T13:00:00Z",
                "2026-01-01T13:00:00Z"
            )
        );
        // Refreshed at 11:59: no whole hour, but 11:00-11:59 as minutes (after 50 raw).
        assert_eq!(
            w.split(Some(t("2026-01-01T11:59:00Z")), true),
            split(
                "2026-01-01T11:00:00Z",
                "2026-01-01T11:00:00Z",
                "2026-01-01T11:59:00Z"
            )
        );
        assert_eq!(
            w.split(Some(t("2026-01-01T11:59:00Z")), false),
            Split::raw(w.to)
        );
        let aligned =
            Window::new(t("2026-01-01T10:00:00Z"), t("2026-01-01T12:00:00Z"), None).unwrap();
        assert_eq!(
            aligned.split(later, true),
            split(
                "2026-01-01T10:00:00Z",
                "2026-01-01T12:00:00Z",
                "2026-01-01T12:00:00Z"
            )
        );
        // Within an hour that is over: its hourly row is not read in part, so rows.
        let inside =
            Window::new(t("2026-01-01T10:10:00Z"), t("2026-01-01T10:50:00Z"), None).unwrap();
        assert_eq!(inside.split(later, true), Split::raw(inside.to));
        let across =
            Window::new(t("2026-01-01T10:10:00Z"), t("2026-01-01T11:50:00Z"), None).unwrap();
        assert_eq!(across.split(later, true), Split::raw(across.to));
        // Within the hour in progress: its finished minutes, the edges from rows.
        let now = Some(t("2026-01-01T10:45:10Z"));
        assert_eq!(
            inside.split(now, true),
            split(
                "2026-01-01T10:10:00Z",
                "2026-01-01T10:10:00Z",
                "2026-01-01T10:45:00Z"
            )
        );
        let last_hour =
            Window::new(t("2026-01-01T09:45:10Z"), t("2026-01-01T10:45:10Z"), None).unwrap();
        assert_eq!(
            last_hour.split(now, true),
            split(
                "2026-01-01T10:00:00Z",
                "2026-01-01T10:00:00Z",
                "2026-01-01T10:45:00Z"
            )
        );
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
        /// Raw head + rolled-up hours + rolled-up minutes + raw tail is exactly the window,
        /// in order; the hours are whole and finished before the refresh's hour, the
        /// minutes whole, in that hour and finished before the refresh's minute, and
        /// nothing the rollups hold inside the window is left to the rows.
        #[test]
        fn the_split_partitions_the_window(
            from in 0i64..10_000_000,
            len in 1i64..1_000_000,
            refreshed in proptest::option::of(0i64..12_000_000),
            minutes: bool,
        ) {
            let base = 1_800_000_000i64;
            let at = |s: i64| DateTime::from_timestamp(base + s, 0).unwrap();
            let w = Window::new(at(from), at(from + len), None).unwrap();
            let refreshed = refreshed.map(at);
            let Split { start, hours_end, minutes_end } = w.split(refreshed, minutes);
            prop_assert!(w.from <= start && start <= hours_end && hours_end <= minutes_end && minutes_end <= w.to);
            let (h, m) = (Duration::hours(1), Duration::minutes(1));
            let floor = |t: DateTime<Utc>, unit: Duration| t.duration_trunc(unit).unwrap();
            let Some(r) = refreshed.filter(|_| start < minutes_end) else {
                prop_assert_eq!(w.split(refreshed, minutes), Split::raw(w.to));
                // Nothing whole was there to read: no rolled-up hour, and no rolled-up
                // minute (then, if the refresh rolled up minutes, the window holds none of
                // its hour's finished ones).
                if let Some(r) = refreshed {
                    let first_hour = w.from.duration_round_up(h).unwrap();
                    prop_assert!(first_hour >= floor(w.to, h).min(floor(r, h)));
                    if minutes {
                        let first = w.from.duration_round_up(m).unwrap().max(floor(r, h));
                        prop_assert!(first >= floor(w.to, m).min(floor(r, m)));
                    }
                }
                return Ok(());
            };
            if start < hours_end {
                prop_assert_eq!(floor(start, h), start);
                prop_assert_eq!(floor(hours_end, h), hours_end);
                prop_assert!(hours_end <= floor(r, h));
                prop_assert!(start - w.from < h);
            }
            if hours_end < minutes_end {
                prop_assert!(minutes);
                prop_assert!(floor(r, h) <= hours_end && minutes_end <= floor(r, m));
                prop_assert_eq!(floor(hours_end, m), hours_end);
                prop_assert_eq!(floor(minutes_end, m), minutes_end);
            }
            // The tail holds no whole hour the hourly rollups have, nor a whole minute the
            // minute rollups have.
            prop_assert!(w.to - minutes_end < h || minutes_end >= floor(r, h));
            if minutes && minutes_end >= floor(r, h) {
                prop_assert!(w.to - minutes_end < m || minutes_end == floor(r, m));
            }
        }
    }
}
