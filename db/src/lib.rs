//! The only crate that speaks SQL. Writes go to the `Primary`; reads that may lag go to
//! a `Replica` through `replica`. Every status change goes through
//! `payments::apply_status`, which asks the core's transition table what to do.

pub mod analytics;
pub mod events;
pub mod idempotency;
pub mod keys;
pub mod payments;
mod pool;
pub mod refunds;
pub mod replica;
pub mod runs;

pub use pool::{Primary, Replica, WalPosition};

#[derive(Debug, thiserror::Error)]
pub enum DbError {
    #[error("database error: {0}")]
    Sql(#[from] sqlx::Error),
    #[error("replica: {0}")]
    Replica(#[from] tokio_postgres::Error),
    #[error("replica: {0}")]
    ReplicaPool(#[from] deadpool_postgres::PoolError),
    #[error("the replica did not replay up to the primary's {lsn} within {waited:?}")]
    ReplicaBehind {
        lsn: String,
        waited: std::time::Duration,
    },
    /// Settings that can never work (a malformed URL): fail at start, not per request.
    #[error("database settings are invalid: {0}")]
    Config(String),
    #[error("stored data is invalid: {0}")]
    Corrupt(String),
    /// The request contradicts what is stored (e.g. a key for a client of another role).
    #[error("{0}")]
    Refused(String),
}
