//! Analytics for analysts, read from the replicas (never the primary).
//!
//! At 10 million payments a GROUP BY over the raw table takes seconds, so whole UTC hours
//! are read from rollup tables (`analytics_hourly`, `analytics_resolution_hourly`,
//! `analytics_money_hourly`; the resolution-time histogram also by day,
//! `analytics_resolution_daily`), the hour in progress by the minute
//! (`analytics_minutely`, ...), and only a window's partial edges from the raw rows,
//! through covering indexes. The rollups are refreshed on the primary by
//! [`refresh::refresh`] and replicate like any table. Every answer says how fresh it is
//! ([`query::Freshness`]).
//!
//! The window is over payments' `created_at`: every figure describes the payments created
//! in it. Gross volume is what their succeeded payments captured, refunded volume what
//! those payments' succeeded refunds gave back (whenever they were made), net the
//! difference, per currency; the refund rate is refunded payments per succeeded payment,
//! in integer basis points (money never goes through floats).

pub mod histogram;
pub mod plan;
pub mod query;
pub mod refresh;

pub use plan::{Bucket, Metric, QueryError, Split, Window};
pub use query::{Freshness, Guard, OnLag, Point, Series, Summary, summary, timeseries};

#[derive(Debug, thiserror::Error)]
pub enum AnalyticsError {
    #[error(transparent)]
    Db(#[from] paystream_db::DbError),
    /// Analytics must never load the primary: a misconfigured URL is refused.
    #[error("the analytics database is not a replica (pg_is_in_recovery() is false)")]
    NotReplica,
    #[error(transparent)]
    Query(#[from] crate::plan::QueryError),
    #[error("the replica lags {lag_ms:?} ms behind the primary (bound {max_ms} ms)")]
    Lagging { lag_ms: Option<i64>, max_ms: i64 },
}
