//! PostgreSQL adapter for Paystream's domain. Every status change goes through
//! `payments::apply_status`, which asks the core's transition table what to do.

pub mod idempotency;
pub mod keys;
pub mod payments;

#[derive(Debug, thiserror::Error)]
pub enum DbError {
    #[error("database error: {0}")]
    Sql(#[from] sqlx::Error),
    #[error("stored data is invalid: {0}")]
    Corrupt(String),
    /// The request contradicts what is stored (e.g. a key for a client of another role).
    #[error("{0}")]
    Refused(String),
}
